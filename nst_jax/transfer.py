"""Style transfer of one content image, coarse to fine: ``stylize``, on arrays.

A run is three steps, each fed arrays only:

1. ``config.plan(config, content_hw, style_hws)``: every size, blend and
   memory check, from shapes alone, before any weight is loaded;
2. ``prepare``, at each scale: the content at that size, the targets
   (``losses.make_targets``) and the initial image (the previous scale's
   result, upsampled, after the first);
3. ``engine.run_chunks``: the compiled chunk loop, with progress (steady
   speed, the whole run's ETA), snapshots and a clean stop in between.

An interrupted run raises ``Interrupted`` with a ``RunState``; passing it back
as ``resume`` continues bit-identically. ``matrix.stylize_many`` runs many
problems through the same ``plan``, ``prepare`` and loop.

Where things go: a new loss term is maths in ``losses`` plus a
``StyleConfig`` field read by ``engine.loss_spec``; a new optimizer goes in
``optimizers``; a new entry point is a script in ``scripts/`` that loads the
files, calls ``plan`` and ``stylize`` (or ``engine.run_chunks``) and saves
the result.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import color as color_lib
from nst_jax import engine
from nst_jax import image_io
from nst_jax import losses
from nst_jax import optimizers
from nst_jax import weights as weights_lib
from nst_jax.config import ConfigError
from nst_jax.config import Plan
from nst_jax.config import Scale
from nst_jax.config import StyleConfig
from nst_jax.config import plan


class NonFiniteError(RuntimeError):
  """The objective or its gradient became NaN/Inf; ``image`` is the last finite one."""

  def __init__(self, message: str, image: np.ndarray, iteration: int):
    super().__init__(message)
    self.image = image
    self.iteration = iteration


@dataclasses.dataclass
class RunState:
  """Where a stopped run stands: enough to continue it bit-identically."""
  config: StyleConfig
  scale_index: int
  iteration: int                 # iterations done at this scale
  x: np.ndarray                  # [h, w, 3] the image, preprocessed
  opt_leaves: list[np.ndarray]   # the optimizer state's leaves

  def to_dict(self) -> dict[str, Any]:
    """JSON-able settings plus ``'arrays'`` (for ``checkpoint.save_checkpoint``)."""
    return {'config': self.config.to_dict(), 'scale_index': self.scale_index,
            'iteration': self.iteration, 'arrays': [self.x, *self.opt_leaves]}

  @classmethod
  def from_dict(cls, meta: dict[str, Any], arrays: Sequence[np.ndarray]) -> RunState:
    return cls(StyleConfig.from_dict(meta['config']), int(meta['scale_index']),
               int(meta['iteration']), arrays[0], list(arrays[1:]))


class Interrupted(RuntimeError):
  """The run was asked to stop; ``image`` is the current result, ``state`` resumes it."""

  def __init__(self, message: str, image: np.ndarray, iteration: int, state: RunState):
    super().__init__(message)
    self.image = image
    self.iteration = iteration
    self.state = state


@dataclasses.dataclass
class Progress:
  """What a callback sees: before a scale's program compiles, and after chunks."""
  iteration: int            # iterations done at this scale
  total: int                # iterations planned at this scale
  scale_index: int
  num_scales: int
  terms: dict[str, float]   # loss terms at the last evaluation ({} while compiling)
  iters_per_sec: float      # steady rate at this scale, compilation excluded
  eta_seconds: float        # the whole rest of the run, later scales included
  # Current RGB result in [0, 1], computed on demand; valid during the callback.
  image: Callable[[], np.ndarray]
  compiling: bool = False   # the scale's program is about to compile
  compile_seconds: float = 0.0  # on a scale's first line: how long its program compiled


@dataclasses.dataclass
class StyleResult:
  image: np.ndarray                     # [H, W, 3] RGB in [0, 1]
  terms: dict[str, float]
  iterations: int
  seconds: float


def prepare_images(content_rgb: np.ndarray, style_rgbs: Sequence[np.ndarray], scale: Scale,
                   config: StyleConfig) -> tuple[np.ndarray, list[np.ndarray]]:
  """Content and styles resized for ``scale``, coloured by ``config.color`` (RGB)."""
  content = image_io.resize_to(content_rgb, *scale.content_hw)
  styles = [image_io.resize_to(s, *hw) for s, hw in zip(style_rgbs, scale.style_hws)]
  return color_lib.apply_mode(content, styles, config.color)


class Prepared(NamedTuple):
  content_rgb: np.ndarray   # [h, w, 3] the content at this scale, its own colours
  targets: dict             # losses.make_targets
  x0: jax.Array             # [h, w, 3] initial image, preprocessed


def _resize_masks(masks: Sequence[np.ndarray], hw: tuple[int, int]) -> np.ndarray:
  """Masks [H, W] resized to ``hw`` as the images are, [R, h, w] in [0, 1]."""
  return np.stack([np.clip(image_io.resize_to(np.repeat(np.asarray(m, np.float32)[..., None],
                                                        3, -1), *hw)[..., 0], 0.0, 1.0)
                   for m in masks])


def prepare(p: Plan, scale_index: int, content_rgb: np.ndarray,
            style_rgbs: Sequence[np.ndarray], obj: engine.Objective, progs: engine.Programs,
            init_image: np.ndarray | None = None,
            content_masks: Sequence[np.ndarray] | None = None,
            style_masks: Sequence[np.ndarray] | None = None) -> Prepared:
  """The arrays of one scale: resized content, targets and the initial image.

  The initial image is ``init_image`` resized, else the content
  (``config.init='image'``), else N(0, 0.001^2) noise in preprocessed space
  (the reference's), drawn from ``config.seed``. ``content_masks`` (one per
  style, the content's size) and ``style_masks`` (one per style, each its
  style's size) are resized with the images (spatial control).
  """
  config, scale = p.config, p.scales[scale_index]
  content, styles = prepare_images(content_rgb, style_rgbs, scale, config)
  content_pre = obj.prep.apply(content)
  masks = {}
  if content_masks is not None and config.band_rows:
    raise ConfigError('`band_rows` does not support masks (spatial control); set it to 0')
  if content_masks is not None:
    masks['content_masks'] = jnp.asarray(_resize_masks(content_masks, scale.content_hw))
  if style_masks is not None:
    masks['style_masks'] = [jnp.asarray(_resize_masks([m], hw)[0])
                            for m, hw in zip(style_masks, scale.style_hws)]
  targets = progs.targets(obj.params, jnp.asarray(content_pre),
                          [jnp.asarray(obj.prep.apply(s)) for s in styles],
                          jnp.asarray(p.blend_weights, jnp.float32), **masks)
  h, w = scale.content_hw
  if init_image is not None:
    x0 = jnp.asarray(obj.prep.apply(image_io.resize_to(init_image, h, w)))
  elif config.init == 'image':
    x0 = jnp.asarray(content_pre)
  else:
    x0 = 0.001 * jax.random.normal(jax.random.key(config.seed), (h, w, 3), jnp.float32)
  return Prepared(image_io.resize_to(content_rgb, h, w), targets, x0)


def to_rgb(x, prep: weights_lib.Preprocessing, content_rgb: np.ndarray,
           config: StyleConfig) -> np.ndarray:
  """A preprocessed image [h, w, 3] back to a finished RGB result in [0, 1]."""
  return color_lib.finish(np.asarray(prep.invert(np.asarray(x, np.float32)), np.float32),
                         content_rgb, config.color, config.original_colors)


class _Clock:
  """Steady speed and the whole run's ETA; later scales estimated from pixel counts."""

  def __init__(self, scales: Sequence[Scale]):
    self.work = [s.iterations * s.content_hw[0] * s.content_hw[1] for s in scales]
    self.pixels = [s.content_hw[0] * s.content_hw[1] for s in scales]
    self.compile_seconds = 0.0

  def eta(self, scale_index: int, iterations_left: int, rate: float) -> float:
    if not rate > 0:
      return float('inf')
    # Seconds per pixel-iteration as measured now; corrected at each scale.
    later = sum(self.work[scale_index + 1:]) / (rate * self.pixels[scale_index])
    compiles = self.compile_seconds * (len(self.work) - scale_index - 1)
    return iterations_left / rate + later + compiles


def _resumed_optimizer_state(progs, x, leaves):
  """The checkpoint's optimizer leaves in this run's optimizer state, or a clear error."""
  wanted = jax.eval_shape(progs.init, x)
  shapes = [tuple(l.shape) for l in jax.tree.leaves(wanted)]
  if shapes != [tuple(np.shape(l)) for l in leaves]:
    raise ConfigError(
        'the checkpoint\'s optimizer state does not fit the optimizer of its settings '
        '(written by another version of nst_jax?); start the run again without --resume')
  return jax.tree.unflatten(jax.tree.structure(wanted), [jnp.asarray(l) for l in leaves])


def stylize(content: np.ndarray, styles: np.ndarray | Sequence[np.ndarray],
            config: StyleConfig | Plan = StyleConfig(), *,
            init_image: np.ndarray | None = None,
            content_masks: Sequence[np.ndarray] | None = None,
            style_masks: Sequence[np.ndarray] | None = None,
            weights: weights_lib.WeightSet | None = None,
            callback: Callable[[Progress], None] | None = None,
            save_callback: Callable[[int, int, np.ndarray], None] | None = None,
            stop_event: threading.Event | None = None,
            resume: RunState | None = None) -> StyleResult:
  """Renders ``content`` in the style of ``styles`` (Gatys et al. 2016), coarse to fine.

  Args:
    content: RGB [H, W, 3] in [0, 1].
    styles: one or more RGB arrays; blended by ``config.style_blend_weights``.
    config: the run's settings, or the ``plan`` already made from them.
    init_image: RGB array to start from (resized to the first scale).
    content_masks: spatial control (Gatys et al. 2017): one mask [H, W] in
      [0, 1] per style image, the content's size, together covering it;
      region r of the output takes style r (``style_blend_weights`` unused).
    style_masks: optional, one mask per style image (its size): the part of
      the style to use.
    weights: a loaded WeightSet (default: ``weights.load(config.weights)``).
    callback: called with a ``Progress`` every ``config.print_iter``
      iterations, and before a scale's program compiles.
    save_callback: called as ``(scale_index, iteration, rgb)`` every
      ``config.save_iter`` iterations (intermediate results).
    stop_event: when set, the run stops at the end of the current chunk and
      raises ``Interrupted``, whose ``state`` continues it.
    resume: the ``RunState`` of an interrupted run of the same inputs.
  Returns:
    A StyleResult with the final RGB image.
  Raises:
    NonFiniteError, Interrupted, ConfigError.
  """
  styles = [styles] if isinstance(styles, np.ndarray) and styles.ndim == 3 else list(styles)
  content, styles = _rgb(content, 'content'), [_rgb(s, f'styles[{i}]') for i, s in
                                               enumerate(styles)]
  p = config if isinstance(config, Plan) else plan(
      config, content.shape[:2], [s.shape[:2] for s in styles])
  config = p.config
  if style_masks is not None and content_masks is None:
    raise ConfigError('`style_masks` need `content_masks` (which output region takes which '
                      'style)')
  content_masks, style_masks = check_masks(content, styles, content_masks, style_masks)
  obj = engine.objective(config, weights or weights_lib.load(config.weights))
  progs = engine.programs(obj.spec, optimizers.optimizer_key(config))
  start, clock, x, iterations, terms = time.perf_counter(), _Clock(p.scales), None, 0, {}
  for s in range(resume.scale_index if resume else 0, len(p.scales)):
    prepared = prepare(p, s, content, styles, obj, progs,
                       init_image if x is None and not resume else None,
                       content_masks, style_masks)
    if resume and x is None:
      x = jnp.asarray(resume.x)
      opt_state = _resumed_optimizer_state(progs, x, resume.opt_leaves)
      it = resume.iteration
    else:  # The next scale starts from the previous result, upsampled.
      if x is None:
        x = prepared.x0
      elif x.shape != prepared.x0.shape:
        x = jax.image.resize(x, prepared.x0.shape, 'bilinear')
      opt_state, it = progs.init(x), 0
    x, done, terms = _run_scale(p, s, x, opt_state, it, prepared, obj, progs, clock, callback,
                                save_callback, stop_event)
    iterations += done
  final = image_io.resize_to(content, *p.scales[-1].content_hw)
  return StyleResult(to_rgb(x, obj.prep, final, config), terms, iterations,
                     time.perf_counter() - start)


def check_masks(content: np.ndarray, styles: Sequence[np.ndarray],
                content_masks: Sequence[np.ndarray] | None,
                style_masks: Sequence[np.ndarray] | None) -> tuple:
  """Validated (content_masks [R, H, W], style masks) for ``stylize``; ConfigError if bad."""
  try:
    if content_masks is not None:
      content_masks = losses.check_masks(content_masks, count=len(styles),
                                         shape=content.shape[:2], name='`content_masks`')
    if style_masks is not None:
      if len(style_masks) != len(styles):
        raise ValueError(f'`style_masks`: {len(style_masks)} mask(s) for {len(styles)} style '
                         'image(s); give one mask per style image')
      checked = []
      for i, (m, s) in enumerate(zip(style_masks, styles)):
        try:
          checked.append(losses.check_masks([m], count=1, shape=s.shape[:2], coverage=False,
                                            name='`style_masks`')[0])
        except ValueError as e:
          raise ValueError(str(e).replace('mask 1', f'mask {i + 1}')) from None
      style_masks = checked
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return content_masks, style_masks


def _rgb(image, name: str) -> np.ndarray:
  image = np.asarray(image, np.float32)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'`{name}` must be an [H, W, 3] RGB array, got shape {image.shape}')
  return image


def _run_scale(p: Plan, s: int, x, opt_state, it: int, prepared: Prepared, obj: engine.Objective,
               progs: engine.Programs, clock: _Clock, callback, save_callback, stop_event):
  """One scale of ``stylize``: returns (x, iterations done, terms)."""
  config, total, first = p.config, p.scales[s].iterations, it
  current = lambda x: (lambda: to_rgb(x, obj.prep, prepared.content_rgb, config))
  progress = lambda it, terms, rate, **kw: callback(Progress(
      it, total, s, len(p.scales), terms, rate, clock.eta(s, total - it, rate), current(x), **kw))

  def step(x, opt_state, start, n):
    return progs.chunk(x, opt_state, prepared.targets, obj.params, obj.loss_weights, obj.key,
                       jnp.int32(start), jnp.int32(n))

  announce = (lambda: progress(it, {}, float('nan'), compiling=True)) if (
      callback and config.print_iter) else None
  x, opt_state, compile_s = engine.compile_chunk(progs, step, x, opt_state, it, announce)
  clock.compile_seconds = max(clock.compile_seconds, compile_s)
  terms, seconds = {}, 0.0
  for c in engine.run_chunks(step, x, opt_state, it, total, config.chunk_size,
                             (config.print_iter, config.save_iter)):
    x, opt_state, it, seconds = c.x, c.opt_state, c.iteration, seconds + c.seconds
    terms = {k: float(v) for k, v in c.info.terms.items()}
    if bool(c.info.bad):
      # Name the per-layer term first (content/relu4_2 rather than the sum).
      bad = sorted((k for k, v in terms.items() if not math.isfinite(v)),
                   key=lambda k: ('/' not in k and k != 'tv', k))
      raise NonFiniteError(
          f'{f"loss term {bad[0]}" if bad else "the gradient"} became non-finite at iteration '
          f'{it + 1} (scale {s + 1}); the last finite image was kept. Lower `learning_rate` '
          'or the loss weights.', current(c.last_good)(), it)
    if callback and config.print_iter and (it % config.print_iter == 0 or it == total):
      progress(it, terms, (it - first) / max(seconds, 1e-9), compile_seconds=compile_s)
      compile_s = 0.0  # Reported once, on the scale's first line.
    if save_callback and config.save_iter and it % config.save_iter == 0 and it < total:
      save_callback(s, it, current(x)())
    if stop_event is not None and stop_event.is_set() and it < total:
      leaves = [np.asarray(l) for l in jax.tree.leaves(opt_state)]
      state = RunState(optimizers.resolved(config), s, it, np.asarray(x), leaves)
      raise Interrupted(f'interrupted at iteration {it} of {total} (scale {s + 1})',
                        current(x)(), it, state)
  return x, it - first, terms
