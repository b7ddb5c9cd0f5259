"""The style-transfer run: images in, optimised image out.

``stylize`` prepares the images (size, colour mode), computes the targets once,
and drives an optax optimizer on the image. Iterations run on the device in
chunks: one chunk is one compiled ``lax.while_loop`` with the image and the
optimizer state donated, so nothing returns to the host until the chunk ends
at a progress, save or checkpoint point.

A chunk stops early if a loss term or the gradient stops being finite; the
image of the last finite evaluation is kept, and ``NonFiniteError`` says which
term failed and at which iteration.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pickle
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nst_jax import color as color_lib
from nst_jax import image_io
from nst_jax import lbfgs
from nst_jax import losses
from nst_jax import vgg
from nst_jax import weights as weights_lib
from nst_jax.config import ConfigError, StyleConfig

ImageLike = str | os.PathLike | np.ndarray


class NonFiniteError(RuntimeError):
  """The objective or its gradient became NaN/Inf; ``image`` is the last finite one."""

  def __init__(self, message: str, image: np.ndarray, iteration: int):
    super().__init__(message)
    self.image = image
    self.iteration = iteration


class Interrupted(RuntimeError):
  """The run was asked to stop; ``image`` is the current result."""

  def __init__(self, message: str, image: np.ndarray, iteration: int):
    super().__init__(message)
    self.image = image
    self.iteration = iteration


@dataclasses.dataclass
class Progress:
  """What a callback sees at the end of each chunk."""
  iteration: int            # iterations done at this scale
  total: int                # iterations planned at this scale
  scale_index: int
  num_scales: int
  terms: dict[str, float]   # loss terms at the last evaluation
  iters_per_sec: float
  eta_seconds: float
  # Current RGB result in [0, 1], computed on demand; valid during the callback.
  image: Callable[[], np.ndarray]


@dataclasses.dataclass
class StyleResult:
  image: np.ndarray                     # [H, W, 3] RGB in [0, 1]
  terms: dict[str, float]
  iterations: int
  seconds: float


# ----------------------------------------------------------------------------
# Optimizers.


def make_optimizer(config: StyleConfig) -> optax.GradientTransformation:
  """The optax transformation named by ``config.optimizer``."""
  name = config.optimizer
  if name == 'lbfgs':
    return lbfgs.scale_by_torch_lbfgs(config.lbfgs_history, config.lr)
  if name == 'lbfgs_linesearch':
    return optax.lbfgs(learning_rate=None if config.learning_rate is None else config.lr,
                       memory_size=config.lbfgs_history)
  if name == 'adam':
    return optax.adam(config.lr)
  return getattr(optax, name[len('optax:'):])(config.lr)


def _needs_value(config: StyleConfig) -> bool:
  return config.optimizer == 'lbfgs_linesearch'


# ----------------------------------------------------------------------------
# The compiled chunk.


class ChunkInfo(NamedTuple):
  done: jax.Array          # iterations completed in this chunk
  bad: jax.Array           # a non-finite evaluation stopped the chunk
  grad_finite: jax.Array
  terms: dict[str, jax.Array]


def make_chunk_fn(spec: losses.LossSpec, optimizer: optax.GradientTransformation,
                  *, needs_value: bool = False, for_vmap: bool = False) -> Callable:
  """Builds ``chunk(x, opt_state, params, targets, loss_weights, n)``.

  Runs up to ``n`` optimizer iterations (a traced int, so any chunk length
  reuses one program) and returns ``(x, opt_state, last_finite_x, info)``.
  A non-finite evaluation stops the chunk and ``last_finite_x`` is the image
  of the last finite one. Not jitted: callers jit (and vmap) it.

  With ``for_vmap=True`` the loop's stopping test depends only on the shared
  counter, so under ``jax.vmap`` it is not batched and JAX does not select
  over every problem's whole carry (the L-BFGS history) each iteration; a
  problem that went non-finite just stops changing its image.
  """
  loss_fn = functools.partial(losses.total_loss, spec=spec)

  def chunk(x, opt_state, params, targets, loss_weights, n):
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
    # Flip the kernels for the backward convolutions once, not every iteration.
    params = vgg.with_backward_kernels(params)

    def cond(c):
      k, bad = c[0], c[5]
      return k < n if for_vmap else (k < n) & ~bad

    def body(c):
      k, i, x, opt_state, last_good, bad, prev_grad_ok, terms = c
      (value, new_terms), g = value_and_grad(x, params, targets, loss_weights)
      grad_ok = jnp.all(jnp.isfinite(g))
      ok = jnp.isfinite(value) & grad_ok & ~bad
      # The update runs unconditionally and only the image is masked: a
      # lax.cond here would become a select over the whole optimizer state
      # under vmap. After a non-finite evaluation the state is not used again.
      if needs_value:
        updates, new_state = optimizer.update(
            g, opt_state, x, value=value, grad=g,
            value_fn=lambda z: loss_fn(z, params, targets, loss_weights)[0])
      else:
        updates, new_state = optimizer.update(g, opt_state, x)
      new_x = jnp.where(ok, optax.apply_updates(x, updates), x)
      new_terms = jax.tree.map(lambda a, b: jnp.where(bad, b, a), new_terms, terms)
      return (k + 1, i + ok.astype(jnp.int32), new_x, new_state,
              jnp.where(ok, x, last_good), bad | ~ok, jnp.where(bad, prev_grad_ok, grad_ok),
              new_terms)

    _, terms0 = jax.eval_shape(loss_fn, x, params, targets, loss_weights)
    terms0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), terms0)
    init = (jnp.int32(0), jnp.int32(0), x, opt_state, x, jnp.bool_(False), jnp.bool_(True),
            terms0)
    _, i, x, opt_state, last_good, bad, grad_ok, terms = jax.lax.while_loop(cond, body, init)
    return x, opt_state, last_good, ChunkInfo(i, bad, grad_ok, terms)

  return chunk


@functools.lru_cache(maxsize=16)
def _compiled_chunk(spec, config_key, needs_value):
  optimizer = make_optimizer(StyleConfig(**dict(config_key)))
  chunk = make_chunk_fn(spec, optimizer, needs_value=needs_value)
  return jax.jit(chunk, donate_argnums=(0, 1)), jax.jit(optimizer.init)


def objective(config: StyleConfig, ws: weights_lib.WeightSet):
  """(params as device arrays, LossSpec, loss-weight pytree) for ``config``."""
  spec = losses.LossSpec(config.content_layers, config.style_layers, config.pooling,
                         config.normalize_gradients,
                         None if config.precision == 'float32' else config.precision,
                         config.remat)
  loss_weights = losses.default_loss_weights(
      spec, config.content_weight, config.style_weight, config.tv_weight,
      config.style_layer_weights)
  return jax.device_put(ws.params), spec, loss_weights


@functools.lru_cache(maxsize=16)
def compiled_targets(spec: losses.LossSpec) -> Callable:
  """``make_targets`` jitted once per spec (a new jit per call would recompile)."""
  return jax.jit(functools.partial(losses.make_targets, spec=spec))


def _optimizer_key(config: StyleConfig):
  return (('optimizer', config.optimizer), ('learning_rate', config.learning_rate),
          ('lbfgs_history', config.lbfgs_history))


# ----------------------------------------------------------------------------
# Images.


def _as_rgb(image: ImageLike, what: str) -> np.ndarray:
  if isinstance(image, (str, os.PathLike)):
    return image_io.load_image(image, what=what)
  arr = np.asarray(image, np.float32)
  if arr.ndim != 3 or arr.shape[-1] != 3:
    raise ValueError(f'{what} must be an [H, W, 3] RGB array, got shape {arr.shape}')
  return arr


def scaled_shape(shape: tuple[int, int], size: int) -> tuple[int, int]:
  """(h, w) with the longest side equal to ``size``, aspect ratio kept."""
  h, w = shape
  s = size / max(h, w)
  return max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5))


def check_size(shape: tuple[int, int], config: StyleConfig, what: str) -> None:
  """Refuses an image too small for the deepest requested layer."""
  layers = config.content_layers + config.style_layers
  need = vgg.min_input_size(layers)
  if min(shape) < need:
    raise ConfigError(
        f'{what} is {shape[1]}x{shape[0]} px after resizing, but layer '
        f'{vgg.deepest(layers)} needs at least {need} px on the shorter side; '
        'increase --image_size (or --style_scale) or use shallower layers')


def prepare_images(content_rgb: np.ndarray, style_rgbs: Sequence[np.ndarray], size: int,
                   config: StyleConfig) -> tuple[np.ndarray, list[np.ndarray]]:
  """Resizes content and styles for one scale and applies the colour mode.

  Returns RGB arrays (the content at ``size``, each style at
  ``style_scale * size``); for ``color='luminance'`` both are grey images
  carrying the (matched) luminance, for ``'histogram'`` the styles are
  recoloured to the content's colour mean and covariance.
  """
  content = image_io.resize_longest(content_rgb, size)
  check_size(content.shape[:2], config, 'the content image')
  style_size = max(1, int(math.ceil(config.style_scale * size)))
  styles = []
  for i, s in enumerate(style_rgbs):
    s = image_io.resize_longest(s, style_size)
    check_size(s.shape[:2], config, f'style image {i + 1}')
    styles.append(s)
  if config.color == 'luminance':
    cy = color_lib.rgb_to_yuv(content)[..., 0]
    styles = [np.repeat(color_lib.match_luminance(color_lib.rgb_to_yuv(s)[..., 0], cy)[..., None],
                        3, axis=-1).astype(np.float32) for s in styles]
    content = color_lib.to_luminance_rgb(content)
  elif config.color == 'histogram':
    styles = [color_lib.match_color_histogram(s, content) for s in styles]
  return content, styles


def finish_image(rgb: np.ndarray, content_rgb: np.ndarray, config: StyleConfig) -> np.ndarray:
  """Applies the output colour options to a result in RGB [0, 1]."""
  rgb = np.clip(rgb, 0.0, 1.0)
  if config.color == 'luminance':
    rgb = color_lib.combine_luminance_chroma(color_lib.rgb_to_yuv(rgb)[..., 0], content_rgb)
  if config.original_colors:
    rgb = color_lib.original_colors(rgb, content_rgb)
  return np.clip(rgb, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------
# Checkpoints.


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
  """Writes a resumable checkpoint (npz of arrays + JSON metadata), atomically."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  leaves, _ = jax.tree.flatten(state['arrays'])
  meta = json.dumps({k: v for k, v in state.items() if k != 'arrays'})
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, meta=np.frombuffer(meta.encode(), np.uint8),
               **{f'leaf{i}': np.asarray(l) for i, l in enumerate(leaves)})
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, list[np.ndarray]]:
  """Returns (metadata, array leaves) of a checkpoint."""
  try:
    with np.load(path) as z:
      meta = json.loads(z['meta'].tobytes().decode())
      leaves = [z[f'leaf{i}'] for i in range(len(z.files) - 1)]
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
          pickle.UnpicklingError) as e:  # JSONDecodeError is a ValueError.
    raise ConfigError(f'--resume: {path} is not a readable nst_jax checkpoint ({e})') from None
  return meta, leaves


# ----------------------------------------------------------------------------
# The run.


def _deprocess(x, prep: weights_lib.Preprocessing) -> np.ndarray:
  return np.asarray(prep.invert(np.asarray(x, np.float32)), np.float32)


def stylize(content: ImageLike, styles: ImageLike | Sequence[ImageLike],
            config: StyleConfig = StyleConfig(), *,
            weights: weights_lib.WeightSet | None = None,
            callback: Callable[[Progress], None] | None = None,
            save_callback: Callable[[int, int, np.ndarray], None] | None = None,
            stop_event: threading.Event | None = None,
            checkpoint_path: str | os.PathLike | None = None,
            resume: dict | None = None,
            checkpoint_extra: dict | None = None) -> StyleResult:
  """Renders ``content`` in the style of ``styles`` (Gatys et al. 2016).

  Args:
    content: path or RGB array [H, W, 3] in [0, 1].
    styles: one or more paths/arrays; blended by ``config.style_blend_weights``.
    config: the run's settings.
    weights: a loaded WeightSet (default: ``weights.load(config.weights)``).
    callback: called with a ``Progress`` every ``config.print_iter`` iterations.
    save_callback: called as ``(scale_index, iteration, rgb)`` every
      ``config.save_iter`` iterations (intermediate results).
    stop_event: when set, the run stops at the end of the current chunk,
      writes ``checkpoint_path`` and raises ``Interrupted``.
    checkpoint_path: where an interrupted run saves its state.
    resume: the state returned by ``resume_state`` to continue from.
    checkpoint_extra: JSON-able values stored in the checkpoint (e.g. paths).
  Returns:
    A StyleResult with the final RGB image.
  Raises:
    NonFiniteError, Interrupted, ConfigError, image_io.ImageError.
  """
  if isinstance(styles, (str, os.PathLike, np.ndarray)):
    styles = [styles]
  styles = list(styles)
  if not styles:
    raise ConfigError('give at least one style image')
  blend = config.style_blend_weights or (1.0,) * len(styles)
  if len(blend) != len(styles):
    raise ConfigError(f'--style_blend_weights has {len(blend)} values for {len(styles)} '
                      'style images; give one weight per style image')
  content_rgb = _as_rgb(content, 'content image')
  style_rgbs = [_as_rgb(s, f'style image {i + 1}') for i, s in enumerate(styles)]
  init_rgb = None
  if config.init_image is not None:
    init_rgb = _as_rgb(config.init_image, 'init image')
  for size in config.sizes:  # Refuse a too-small size before any computation.
    prepare_images(content_rgb, style_rgbs, size, config)

  ws = weights or weights_lib.load(config.weights)
  prep = ws.preprocessing
  params, spec, loss_weights = objective(config, ws)
  chunk_fn, init_fn = _compiled_chunk(spec, _optimizer_key(config), _needs_value(config))
  targets_fn = compiled_targets(spec)

  start = time.perf_counter()
  x = None
  total_iters = 0
  terms: dict[str, float] = {}
  first_scale = resume['scale_index'] if resume else 0
  for scale_index, size in enumerate(config.sizes):
    if scale_index < first_scale:
      continue
    content_s, styles_s = prepare_images(content_rgb, style_rgbs, size, config)
    h, w = content_s.shape[:2]
    targets = targets_fn(params, jnp.asarray(prep.apply(content_s)),
                         [jnp.asarray(prep.apply(s)) for s in styles_s],
                         jnp.asarray(blend, jnp.float32))
    n_iters = config.iterations(scale_index)
    if resume and scale_index == first_scale:
      x = jnp.asarray(resume['x'])
      opt_state = jax.tree.unflatten(jax.tree.structure(init_fn(x)),
                                     [jnp.asarray(l) for l in resume['opt_leaves']])
      it = resume['iteration']
    else:
      if x is None:
        if init_rgb is not None:
          x = jnp.asarray(prep.apply(image_io.resize_to(init_rgb, h, w)))
        elif config.init == 'image':
          x = jnp.asarray(prep.apply(content_s))
        else:  # N(0, 0.001^2) in preprocessed space, as the reference.
          x = 0.001 * jax.random.normal(jax.random.key(config.seed), (h, w, 3), jnp.float32)
      elif x.shape[:2] != (h, w):  # Next scale: start from the upsampled result.
        x = jax.image.resize(x, (h, w, 3), 'bilinear')
      opt_state = init_fn(x)
      it = 0
    content_full = image_io.resize_longest(content_rgb, size)
    chunk_start, chunk_it = time.perf_counter(), it
    start_it = it
    while it < n_iters:
      boundary = min(n_iters, it + config.chunk_size)
      for every in (config.print_iter, config.save_iter):
        if every:
          boundary = min(boundary, (it // every + 1) * every)
      x, opt_state, last_good, info = chunk_fn(x, opt_state, params, targets, loss_weights,
                                               jnp.int32(boundary - it))
      done = int(info.done)
      it += done
      total_iters += done
      terms = {k: float(v) for k, v in info.terms.items()}
      if bool(info.bad):
        # Name the per-layer term first (content/relu4_2 rather than the sum).
        bad = sorted((k for k, v in terms.items() if not math.isfinite(v)),
                     key=lambda k: ('/' not in k and k != 'tv', k))
        what = f'loss term {bad[0]}' if bad else 'the gradient'
        img = finish_image(_deprocess(last_good, prep), content_full, config)
        raise NonFiniteError(
            f'{what} became non-finite at iteration {it + 1} (scale {scale_index + 1}); '
            'the last finite image was kept. Lower --learning_rate or the loss weights.',
            img, it)
      now = time.perf_counter()
      rate = (it - chunk_it) / max(now - chunk_start, 1e-9)
      if chunk_it == start_it:  # The first chunk includes compilation: time from its end.
        chunk_start, chunk_it = now, it
      remaining = (n_iters - it) + sum(config.iterations(j) for j in
                                       range(scale_index + 1, len(config.sizes)))
      current = lambda x=x: finish_image(_deprocess(x, prep), content_full, config)
      if callback and config.print_iter and (it % config.print_iter == 0 or it == n_iters):
        callback(Progress(it, n_iters, scale_index, len(config.sizes), terms, rate,
                          remaining / rate if rate > 0 else float('inf'), current))
      if save_callback and config.save_iter and it % config.save_iter == 0 and it < n_iters:
        save_callback(scale_index, it, current())
      if stop_event is not None and stop_event.is_set() and it < n_iters:
        note = ''
        if checkpoint_path is not None:
          try:
            save_checkpoint(checkpoint_path, {
                **(checkpoint_extra or {}), 'config': config.to_dict(),
                'scale_index': scale_index, 'iteration': it,
                'arrays': [x, *jax.tree.leaves(opt_state)]})
          except OSError as e:  # Keep the image even when the disk is full.
            note = f'; checkpoint not written: {e}'
        raise Interrupted(f'interrupted at iteration {it} of {n_iters} (scale {scale_index + 1})'
                          f'{note}', current(), it)
  content_final = image_io.resize_longest(content_rgb, config.sizes[-1])
  image = finish_image(_deprocess(x, prep), content_final, config)
  return StyleResult(image, terms, total_iters, time.perf_counter() - start)


def resume_state(path: str | os.PathLike) -> tuple[StyleConfig, dict]:
  """Loads a checkpoint written by an interrupted run: (config, resume dict)."""
  meta, leaves = load_checkpoint(path)
  config = StyleConfig.from_dict(meta['config'])
  return config, {'scale_index': meta['scale_index'], 'iteration': meta['iteration'],
                  'x': leaves[0], 'opt_leaves': leaves[1:], 'meta': meta}
