"""Many style transfers at once: the content x style matrix, on the run engine.

Every (content, style) cell is an independent problem with its own image and
its own optimizer state (its own L-BFGS history). Problems whose content has
the same shape after resizing form a group; a group is optimised by the
engine's batched program (``engine.programs(..., batched=True)``:
``jax.vmap`` of the single-image chunk), driven by the same
``engine.run_chunks`` loop as ``stylize``, so the problems never couple. The
batch axis is sharded over all local devices with a
``jax.sharding.Mesh``/``NamedSharding``: the same call uses one CPU, several
GPUs or a TPU slice. Across hosts, call ``jax.distributed.initialize()``
first (see the README); the mesh then spans every process's devices.

Resize policy: each content keeps its aspect ratio with its longest side at
``config.image_size``; contents that end up with equal shapes share a group.
Gram targets do not depend on the style image's shape, so styles of any size
batch together.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nst_jax import engine
from nst_jax import image_io
from nst_jax import memory
from nst_jax import optimizers
from nst_jax import transfer
from nst_jax import weights as weights_lib
from nst_jax.config import ConfigError
from nst_jax.config import StyleConfig
from nst_jax.config import StyleSpec
from nst_jax.config import parse_style_spec  # noqa: F401  (re-exported)
from nst_jax.config import plan

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CellResult:
  content_index: int
  style_index: int
  image: np.ndarray | None     # [H, W, 3] RGB in [0, 1], None on failure
  terms: dict[str, float]
  error: str | None = None


@dataclasses.dataclass
class MatrixProgress:
  problems_done: int
  problems_total: int
  group_iteration: int
  group_iterations: int
  iters_per_sec: float          # problem-iterations per second, compilation excluded
  eta_seconds: float
  # How the batch is laid out: the devices holding a shard and each shard's
  # batch size (e.g. 4 devices x 2 problems).
  batch_devices: int = 1
  shard_batch: int = 0
  compiling: bool = False       # the group's program is about to compile


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named 'batch' over ``devices`` (default: all devices)."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), ('batch',))


# On a CPU the cores are already busy with one image's convolutions, so a
# batch gains nothing from parallelism and loses once its working set falls out
# of the caches. Measured on 2 cores, 4x4 matrix at 256x192 (benchmarks/
# RESULTS.md): batches of 16 ran at 0.81x the one-by-one speed, batches of 4 at
# 0.96-1.04x. So a CPU batch holds about this many pixels in all (four 256 px
# problems, one 512x384 image), however many CPU devices share the cores.
CPU_BATCH_PIXELS = 4 * 256 * 192


def default_batch_size(h: int, w: int, config: StyleConfig, num_devices: int,
                       platform: str | None = None, budget: int | None = None) -> int:
  """How many problems of shape ``h`` x ``w`` one compiled batch holds.

  The batch is limited by memory (``nst_jax.memory``'s per-problem estimate
  against ``budget``, default the available memory, with a 20% margin) and,
  on CPU, to about ``CPU_BATCH_PIXELS`` in all (CPU devices share the host's
  cores). It is a multiple of ``num_devices`` so that the batch splits evenly.
  """
  platform = platform or jax.devices()[0].platform
  fixed = memory.fixed_bytes(config)
  per_problem = max(1, memory.estimate_peak_bytes(h, w, config) - fixed)
  budget = memory.available_bytes() if budget is None else budget
  per_device = 1 << 30
  if budget is not None:
    usable = 0.8 * budget - fixed
    # Accelerators report one device's memory; a CPU's devices share the host's.
    share = usable if platform != 'cpu' else usable / num_devices
    per_device = max(1, int(share // per_problem))
  if platform == 'cpu':  # CPU devices share the host's cores: cap the total.
    per_device = min(per_device, max(1, CPU_BATCH_PIXELS // (h * w) // num_devices))
  return per_device * num_devices


def stylize_many(contents: Sequence[np.ndarray], styles: Sequence[StyleSpec],
                 config: StyleConfig = StyleConfig(), *,
                 init_image: np.ndarray | None = None,
                 weights: weights_lib.WeightSet | None = None, devices=None,
                 on_cell: Callable[[CellResult], None] | None = None,
                 callback: Callable[[MatrixProgress], None] | None = None,
                 max_batch: int | None = None) -> list[CellResult]:
  """Stylizes every content with every style, batched and sharded.

  Args:
    contents: N RGB arrays [H, W, 3] in [0, 1].
    styles: M StyleSpecs whose ``images`` are RGB arrays.
    config: shared settings (one scale: ``config.scales`` must be unset).
    init_image: RGB array every problem starts from (default ``config.init``).
    weights: a loaded WeightSet (default ``weights.load(config.weights)``).
    devices: devices to shard the batch over (default all).
    on_cell: called with each CellResult as soon as its group finishes.
    callback: progress after each chunk, and before a group compiles.
    max_batch: most problems per compiled batch (default:
      ``default_batch_size``: what fits in memory, and on CPU about one
      512x384 image's worth of pixels).
  Returns:
    N*M CellResults, row-major (content-major). A cell that cannot run (its
    plan fails: too small, bad blend weights) has ``image=None`` and
    ``error`` set; the other cells still run.
  """
  if config.scales:
    raise ConfigError('stylize_many runs one scale; leave `scales` unset')
  obj = engine.objective(config, weights or weights_lib.load(config.weights))
  progs = engine.programs(obj.spec, optimizers.optimizer_key(config), batched=True)
  mesh = make_mesh(devices)
  obj = dataclasses.replace(obj, params=jax.device_put(obj.params, NamedSharding(mesh, P())))
  results: dict[tuple[int, int], CellResult] = {}

  def report(cell):
    results[cell.content_index, cell.style_index] = cell
    if on_cell:
      on_cell(cell)

  # Each image is resized once per size, not once per cell: with large photos
  # this host work, not the device, dominated a 4x4 matrix at 256 px on a GPU.
  resized: dict[tuple, np.ndarray] = {}

  def at_size(key, image, hw):
    if (key, hw) not in resized:
      resized[key, hw] = image_io.resize_to(image, *hw)
    return resized[key, hw]

  groups: dict[tuple, list] = {}  # (content shape, target shapes) -> [(i, j, Prepared)].
  for i, content in enumerate(contents):
    for j, spec in enumerate(styles):
      try:
        p = plan(config, content.shape[:2], [s.shape[:2] for s in spec.images],
                 blend_weights=spec.blend_weights)
      except ConfigError as e:
        report(CellResult(i, j, None, {}, str(e)))
        continue
      scale = p.scales[0]
      prepared = transfer.prepare(
          p, 0, at_size(('content', i), content, scale.content_hw),
          [at_size(('style', j, k), s, hw)
           for k, (s, hw) in enumerate(zip(spec.images, scale.style_hws))],
          obj, progs, init_image)
      # Problems batch when their shapes agree: the content's, and the targets'
      # (Gram targets have one shape; sliced-Wasserstein targets keep the style's pixels).
      shapes = tuple(t.shape for t in jax.tree.leaves(prepared.targets))
      groups.setdefault((p.scales[0].content_hw, shapes), []).append((i, j, prepared))
  total = sum(len(g) for g in groups.values())
  counts = {'done': 0, 'work': 0, 'seconds': 0.0}
  for ((h, w), _), group in groups.items():
    cap = max_batch or default_batch_size(h, w, config, mesh.devices.size,
                                          mesh.devices.flat[0].platform)
    for start in range(0, len(group), cap):
      t0 = time.perf_counter()
      for cell in _run_batch(group[start:start + cap], mesh, obj, progs, config, total,
                             counts, callback):
        report(cell)
      log.info('group %dx%d: %d problems in %.1f s', h, w, len(group[start:start + cap]),
               time.perf_counter() - t0)
  return [results[k] for k in sorted(results)]


def _run_batch(batch, mesh, obj, progs, config, total, counts, callback) -> list[CellResult]:
  """Optimises one batch of same-shaped problems; returns their cells."""
  b, ndev = len(batch), mesh.devices.size
  # Pad with copies of the last problem so the batch splits evenly.
  members = batch + [batch[-1]] * (int(math.ceil(b / ndev) * ndev) - b)
  sharding = NamedSharding(mesh, P('batch'))
  targets = jax.device_put(jax.tree.map(lambda *t: jnp.stack(t),
                                        *[m[2].targets for m in members]), sharding)
  x = jax.device_put(jnp.stack([m[2].x0 for m in members]), sharding)
  n = config.iterations(0)

  def step(x, opt_state, start, k):
    return progs.chunk(x, opt_state, targets, obj.params, obj.loss_weights, obj.key,
                       jnp.int32(start), jnp.int32(k))

  def progress(it, **kw):
    rate = counts['work'] / max(counts['seconds'], 1e-9)
    remaining = (total - counts['done']) * n - it * b
    shards = x.addressable_shards
    callback(MatrixProgress(counts['done'], total, it, n, rate,
                            remaining / rate if rate > 0 else float('inf'),
                            len({sh.device for sh in shards}), shards[0].data.shape[0], **kw))

  announce = (lambda: progress(0, compiling=True)) if callback else None
  x, opt_state, _ = engine.compile_chunk(progs, step, x, progs.init(x), 0, announce)
  last_good, done, bad, terms = x, np.zeros(len(members), int), np.zeros(len(members), bool), {}
  for c in engine.run_chunks(step, x, opt_state, 0, n, config.chunk_size,
                               (config.print_iter,)):
    x, last_good, done, bad = c.x, c.last_good, np.asarray(c.info.done), np.asarray(c.info.bad)
    terms = {k: np.asarray(v) for k, v in c.info.terms.items()}
    counts['work'] += int(done[:b].sum())
    counts['seconds'] += c.seconds
    if callback and not bad.all():
      progress(c.iteration)
  x_host = np.asarray(jnp.where(jnp.asarray(bad)[:, None, None, None], last_good, x))
  counts['done'] += b
  return [CellResult(i, j, transfer.to_rgb(x_host[k], obj.prep, prepared.content_rgb, config),
                     {name: float(v[k]) for name, v in terms.items()},
                     f'non-finite objective after {int(done[k])} iterations' if bad[k] else None)
          for k, (i, j, prepared) in enumerate(batch)]
