"""Many style transfers at once: the content x style matrix.

Every (content, style) cell is an independent problem with its own image and
its own optimizer state (its own L-BFGS history). Problems whose content has
the same shape after resizing form a group; a group is optimised by one
compiled program, ``jax.vmap`` of the single-image chunk, so the problems
never couple. The batch axis is sharded over all local devices with a
``jax.sharding.Mesh``/``NamedSharding``: the same call uses one CPU, several
GPUs or a TPU slice. Across hosts, call ``jax.distributed.initialize()`` first
(see the README); the mesh then spans every process's devices.

Resize policy: each content keeps its aspect ratio with its longest side at
``config.image_size``; contents that end up with equal shapes share a group.
Gram targets do not depend on the style image's shape, so styles of any size
batch together.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nst_jax import image_io
from nst_jax import transfer as st
from nst_jax import weights as weights_lib
from nst_jax.config import ConfigError, StyleConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StyleSpec:
  """One column of the matrix: one or several style images with blend weights."""
  images: tuple            # paths or RGB arrays
  blend_weights: tuple[float, ...] | None = None
  name: str | None = None

  @property
  def label(self) -> str:
    if self.name:
      return self.name
    return '+'.join(Path(str(i)).stem if isinstance(i, (str, os.PathLike)) else 'array'
                    for i in self.images)


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
  iters_per_sec: float          # problem-iterations per second
  eta_seconds: float
  # How the batch is laid out: the devices holding a shard and each shard's
  # batch size (e.g. 4 devices x 2 problems).
  batch_devices: int = 1
  shard_batch: int = 0


def parse_style_spec(text: str) -> StyleSpec:
  """``a.jpg@2+b.jpg@1`` -> StyleSpec((a.jpg, b.jpg), (2, 1)); weights default 1."""
  parts = [p for p in text.split('+') if p]
  images, weights = [], []
  for p in parts:
    path, _, w = p.partition('@')
    images.append(path)
    try:
      weights.append(float(w) if w else 1.0)
    except ValueError:
      raise ConfigError(f'style spec {text!r}: weight {w!r} is not a number') from None
  if not images:
    raise ConfigError(f'empty style spec {text!r}')
  return StyleSpec(tuple(images), tuple(weights))


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
  from nst_jax import memory
  platform = platform or jax.devices()[0].platform
  per_problem = max(1, memory.estimate_peak_bytes(h, w, config) - memory.OVERHEAD_BYTES)
  budget = memory.available_bytes() if budget is None else budget
  per_device = 1 << 30
  if budget is not None:
    usable = 0.8 * budget - memory.OVERHEAD_BYTES
    # Accelerators report one device's memory; a CPU's devices share the host's.
    share = usable if platform != 'cpu' else usable / num_devices
    per_device = max(1, int(share // per_problem))
  if platform == 'cpu':  # CPU devices share the host's cores: cap the total.
    per_device = min(per_device, max(1, CPU_BATCH_PIXELS // (h * w) // num_devices))
  return per_device * num_devices


@functools.lru_cache(maxsize=8)
def _batched_chunk(spec, config_key, needs_value):
  optimizer = st.make_optimizer(StyleConfig(**dict(config_key)))
  chunk = st.make_chunk_fn(spec, optimizer, needs_value=needs_value, for_vmap=True)
  batched = jax.vmap(chunk, in_axes=(0, 0, None, 0, None, None))
  return (jax.jit(batched, donate_argnums=(0, 1)), jax.jit(jax.vmap(optimizer.init)))


def stylize_many(contents: Sequence, styles: Sequence[StyleSpec | str], config: StyleConfig = StyleConfig(),
                 *, weights: weights_lib.WeightSet | None = None, devices=None,
                 on_cell: Callable[[CellResult], None] | None = None,
                 callback: Callable[[MatrixProgress], None] | None = None,
                 max_batch: int | None = None) -> list[CellResult]:
  """Stylizes every content with every style, batched and sharded.

  Args:
    contents: N paths or RGB arrays.
    styles: M StyleSpecs (or spec strings for ``parse_style_spec``).
    config: shared settings (single scale: ``config.scales`` must be unset).
    weights: a loaded WeightSet (default ``weights.load(config.weights)``).
    devices: devices to shard the batch over (default all).
    on_cell: called with each CellResult as soon as its group finishes.
    callback: progress after each chunk.
    max_batch: most problems per compiled batch (default:
      ``default_batch_size``: what fits in memory, and on CPU about one
      512x384 image's worth of pixels).
  Returns:
    N*M CellResults, row-major (content-major). A cell whose inputs failed to
    load has ``image=None`` and ``error`` set; the other cells still run.
  """
  if config.scales:
    raise ConfigError('stylize_many runs one scale; leave --scales unset')
  styles = [parse_style_spec(s) if isinstance(s, str) else s for s in styles]
  n, m = len(contents), len(styles)
  results: list[CellResult | None] = [None] * (n * m)

  def failed(i, j, msg):
    cell = CellResult(i, j, None, {}, msg)
    results[i * m + j] = cell
    if on_cell:
      on_cell(cell)

  content_rgbs: dict[int, np.ndarray] = {}
  for i, c in enumerate(contents):
    try:
      content_rgbs[i] = st._as_rgb(c, f'content image {i + 1}')
    except (image_io.ImageError, ValueError) as e:
      log.error('%s', e)
      for j in range(m):
        failed(i, j, str(e))
  style_rgbs: dict[int, list[np.ndarray]] = {}
  for j, spec in enumerate(styles):
    try:
      if spec.blend_weights is not None and len(spec.blend_weights) != len(spec.images):
        raise ConfigError(f'style {spec.label}: {len(spec.blend_weights)} weights for '
                          f'{len(spec.images)} images')
      if spec.blend_weights is not None and sum(spec.blend_weights) <= 0:
        raise ConfigError(f'style {spec.label}: blend weights are all zero')
      style_rgbs[j] = [st._as_rgb(s, f'style {spec.label}') for s in spec.images]
    except (image_io.ImageError, ValueError) as e:
      log.error('%s', e)
      for i in content_rgbs:
        failed(i, j, str(e))

  ws = weights or weights_lib.load(config.weights)
  prep = ws.preprocessing
  params, spec, loss_weights = st.objective(config, ws)
  targets_fn = st.compiled_targets(spec)
  chunk_fn, init_fn = _batched_chunk(spec, st._optimizer_key(config), st._needs_value(config))
  mesh = make_mesh(devices)
  ndev = mesh.devices.size
  batch_sharding = NamedSharding(mesh, P('batch'))
  replicated = NamedSharding(mesh, P())
  params = jax.device_put(params, replicated)

  # Prepare every problem, then group by content shape.
  problems: dict[tuple, list] = {}
  size = config.image_size
  for i, c_rgb in content_rgbs.items():
    for j, s_rgbs in style_rgbs.items():
      try:
        content_s, styles_s = st.prepare_images(c_rgb, s_rgbs, size, config)
      except ConfigError as e:
        failed(i, j, str(e))
        continue
      blend = styles[j].blend_weights or (1.0,) * len(s_rgbs)
      targets = targets_fn(params, jnp.asarray(prep.apply(content_s)),
                           [jnp.asarray(prep.apply(s)) for s in styles_s],
                           jnp.asarray(blend, jnp.float32))
      problems.setdefault(content_s.shape[:2], []).append((i, j, targets))

  total = sum(len(v) for v in problems.values())
  done_problems = 0
  n_iters = config.iterations(0)
  t_start = time.perf_counter()
  work_done = 0
  # Decoded once for the whole matrix, not once per batch.
  init_rgb = (st._as_rgb(config.init_image, 'init image')
              if config.init_image and problems else None)
  for (h, w), group in problems.items():
    cap = max_batch or default_batch_size(h, w, config, ndev, mesh.devices.flat[0].platform)
    for start in range(0, len(group), cap):
      batch = group[start:start + cap]
      b = len(batch)
      padded = int(math.ceil(b / ndev) * ndev)
      # Pad with copies of the last problem so the batch splits evenly.
      members = batch + [batch[-1]] * (padded - b)
      targets = jax.tree.map(lambda *t: jnp.stack(t), *[t for _, _, t in members])
      targets = jax.device_put(targets, batch_sharding)
      if config.init == 'image' or config.init_image:
        x0 = []
        for i, _, _ in members:
          content_full = image_io.resize_longest(content_rgbs[i], size)
          src = (image_io.resize_to(init_rgb, h, w)
                 if config.init_image else content_full)
          x0.append(prep.apply(src))
        x = jnp.asarray(np.stack(x0), jnp.float32)
      else:
        noise = 0.001 * jax.random.normal(jax.random.key(config.seed), (h, w, 3), jnp.float32)
        x = jnp.broadcast_to(noise, (padded, h, w, 3))
      x = jax.device_put(x, batch_sharding)
      opt_state = init_fn(x)
      it = 0
      t0 = time.perf_counter()
      while it < n_iters:
        step = min(config.chunk_size, n_iters - it)
        if config.print_iter:
          step = min(step, (it // config.print_iter + 1) * config.print_iter - it)
        x, opt_state, last_good, info = chunk_fn(x, opt_state, params, targets, loss_weights,
                                                 jnp.int32(step))
        done = np.asarray(info.done)
        it += int(done.max())
        work_done += int(done[:b].sum())
        if np.asarray(info.bad).all():
          break
        if callback:
          elapsed = time.perf_counter() - t_start
          rate = work_done / max(elapsed, 1e-9)
          remaining = (total - done_problems) * n_iters - (it * b)
          shards = x.addressable_shards
          callback(MatrixProgress(done_problems, total, it, n_iters, rate,
                                  remaining / rate if rate > 0 else float('inf'),
                                  len({sh.device for sh in shards}), shards[0].data.shape[0]))
      bad = np.asarray(info.bad)
      x_host = np.asarray(jnp.where(jnp.asarray(bad)[:, None, None, None], last_good, x))
      terms = {k: np.asarray(v) for k, v in info.terms.items()}
      for k, (i, j, _) in enumerate(batch):
        content_full = image_io.resize_longest(content_rgbs[i], size)
        image = st.finish_image(np.asarray(prep.invert(x_host[k]), np.float32),
                                content_full, config)
        cell = CellResult(i, j, image, {name: float(v[k]) for name, v in terms.items()},
                          f'non-finite objective after {int(done[k])} iterations'
                          if bad[k] else None)
        results[i * m + j] = cell
        if on_cell:
          on_cell(cell)
      done_problems += b
      log.info('group %dx%d: %d problems in %.1f s', h, w, b, time.perf_counter() - t0)
  return [r for r in results if r is not None]


def grid_image(contents_rgb: Sequence[np.ndarray | None], styles_rgb: Sequence[np.ndarray | None],
               cells: Sequence[CellResult], *, cell_size: int = 192,
               content_labels: Sequence[str] = (), style_labels: Sequence[str] = ()) -> np.ndarray:
  """A labelled contact sheet: first row styles, first column contents.

  Returns an RGB float image [(N+1)*cell, (M+1)*cell, 3].
  """
  from PIL import Image, ImageDraw
  n, m = len(contents_rgb), len(styles_rgb)
  pad = 4
  sheet = Image.new('RGB', ((m + 1) * cell_size, (n + 1) * cell_size), 'white')
  draw = ImageDraw.Draw(sheet)

  def paste(img, r, c, label=None):
    x0, y0 = c * cell_size, r * cell_size
    if img is None:
      draw.text((x0 + pad, y0 + cell_size // 2), 'failed', fill='red')
      return
    thumb = image_io.resize_longest(np.asarray(img, np.float32), cell_size - 2 * pad)
    th, tw = thumb.shape[:2]
    pil = Image.fromarray(np.round(np.clip(thumb, 0, 1) * 255).astype(np.uint8))
    sheet.paste(pil, (x0 + (cell_size - tw) // 2, y0 + (cell_size - th) // 2))
    if label:
      draw.rectangle([x0 + pad, y0 + pad, x0 + pad + 7 * len(label), y0 + pad + 12],
                     fill='white')
      draw.text((x0 + pad + 1, y0 + pad), label, fill='black')

  for j, s in enumerate(styles_rgb):
    paste(s, 0, j + 1, style_labels[j] if j < len(style_labels) else None)
  for i, c in enumerate(contents_rgb):
    paste(c, i + 1, 0, content_labels[i] if i < len(content_labels) else None)
  for cell in cells:
    paste(cell.image, cell.content_index + 1, cell.style_index + 1)
  return np.asarray(sheet, np.float32) / 255.0
