"""DeepDream (Mordvintsev, Olah & Tyka 2015, "Inceptionism") on the VGG19 of style transfer.

Style transfer and DeepDream do the same thing: gradient steps on the image
to change the network's activations. Here the objective is to *amplify*
them: the mean squared activation of chosen layers or single channels, or,
with a guide image, the dot product of each position's features with the
best-matching features of the guide (the original notebook's guided dream).

The ascent follows the original recipe: normalised gradient steps
(``step_size / mean|g|``), a random roll (jitter) of the image before each
step and back after it, and octaves: the image is dreamt at sizes growing by
``octave_scale``, coarse to fine, each octave carrying the detail added so
far up to the next size. Steps run on the device in compiled chunks
(``lax.fori_loop``, one program per octave size) driven by the style
engine's chunk loop (``engine.run_chunks``).

Typical use::

    ws = nst_jax.load_weights()
    spec = dream.DreamSpec(layers=('relu4_2',))
    result = dream.dream(ws, rgb, spec, dream.DreamConfig(octaves=4))
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import engine
from nst_jax import image_io
from nst_jax import layers as vgg_layers
from nst_jax import vgg
from nst_jax import weights as weights_lib
from nst_jax.config import ConfigError

Array = jax.Array

# Output channels of each tap (relu4_2 -> conv4_2's, pool3 -> conv3_4's).
_CHANNELS = {}
for _name, _, _cout in vgg_layers.CONV_SPECS:
  _CHANNELS[_name] = _CHANNELS['relu' + _name[4:]] = _cout
for _i, _name in enumerate(vgg_layers.LAYER_NAMES):
  if _name.startswith('pool'):
    _CHANNELS[_name] = _CHANNELS[vgg_layers.LAYER_NAMES[_i - 1]]


def parse_channels(text: str | Sequence[str], name: str = 'channels') -> tuple[tuple[str, int], ...]:
  """``'relu4_2:13,relu5_1:7'`` -> ``(('relu4_2', 13), ('relu5_1', 7))``, validated.

  Raises:
    ConfigError: naming ``--name`` for a malformed entry, an unknown layer or
      a channel index outside the layer.
  """
  items = text.split(',') if isinstance(text, str) else list(text)
  out = []
  for item in items:
    item = item.strip()
    layer, sep, index = item.partition(':')
    if not sep or not index.strip().lstrip('-').isdigit():
      raise ConfigError(f'--{name}: {item!r} is not LAYER:CHANNEL (e.g. relu4_2:13)')
    layer, index = layer.strip(), int(index)
    if layer not in _CHANNELS:
      raise ConfigError(f'--{name}: unknown layer {layer!r} in {item!r}; use one of '
                        f'{", ".join(vgg_layers.TAP_NAMES)}')
    if not 0 <= index < _CHANNELS[layer]:
      raise ConfigError(f'--{name}: {layer} has channels 0..{_CHANNELS[layer] - 1}, got {index}')
    out.append((layer, index))
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class DreamSpec:
  """What to amplify (static: a new spec compiles a new program).

  ``layers``: whole layers (mean squared activation, or the guide's dot
  product when a guide is given); ``channels``: (layer, index) pairs, each
  adding the mean squared activation of that one channel.
  """
  layers: tuple[str, ...] = ('relu4_2',)
  channels: tuple[tuple[str, int], ...] = ()
  pooling: str = 'max'

  def __post_init__(self):
    object.__setattr__(self, 'layers', tuple(self.layers))
    object.__setattr__(self, 'channels', tuple((l, int(c)) for l, c in self.channels))
    if not self.layers and not self.channels:
      raise ConfigError('--layers and --channels are both empty; name at least one layer '
                        '(e.g. --layers=relu4_2) or channel (--channels=relu4_2:13)')
    bad = [l for l in self.layers if l not in _CHANNELS]
    if bad:
      raise ConfigError(f'--layers: unknown layer(s) {", ".join(bad)}; use one of '
                        f'{", ".join(vgg_layers.TAP_NAMES)}')
    parse_channels([f'{l}:{c}' for l, c in self.channels])
    if self.pooling not in vgg_layers.POOLINGS:
      raise ConfigError(f'--pooling must be max or avg, got {self.pooling!r}')

  @property
  def taps(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(self.layers + tuple(l for l, _ in self.channels)))


@dataclasses.dataclass(frozen=True)
class DreamConfig:
  """How the ascent runs (the defaults are the original notebook's)."""
  octaves: int = 4
  octave_scale: float = 1.4
  steps_per_octave: int = 10
  step_size: float = 1.5     # in the weight set's preprocessed units (0-255 for Caffe)
  jitter: int = 32           # largest roll, px
  seed: int = 0
  image_size: int | None = None  # dream at this longest side (None: the input's)
  chunk_size: int = 10

  def __post_init__(self):
    checks = (('octaves', isinstance(self.octaves, int) and self.octaves >= 1, 'an integer >= 1'),
              ('octave_scale', _finite(self.octave_scale) and self.octave_scale > 1, 'a number > 1'),
              ('steps_per_octave', isinstance(self.steps_per_octave, int)
               and self.steps_per_octave >= 0, 'an integer >= 0'),
              ('step_size', _finite(self.step_size) and self.step_size > 0, 'a number > 0'),
              ('jitter', isinstance(self.jitter, int) and self.jitter >= 0, 'an integer >= 0'),
              ('image_size', self.image_size is None or (isinstance(self.image_size, int)
                                                         and self.image_size > 0), 'a size > 0'),
              ('chunk_size', isinstance(self.chunk_size, int) and self.chunk_size >= 1,
               'an integer >= 1'))
    for name, ok, what in checks:
      if not ok:
        raise ConfigError(f'--{name} must be {what}, got {getattr(self, name)!r}')


def _finite(v) -> bool:
  return isinstance(v, (int, float)) and math.isfinite(v)


@dataclasses.dataclass
class DreamProgress:
  """What a callback sees after each chunk."""
  octave: int             # 0-based, coarse to fine
  num_octaves: int
  step: int               # steps done in this octave
  steps: int
  objective: float        # at the current octave's size, after the chunk
  image: Callable[[], np.ndarray]  # the current result at the input's size, RGB [0, 1]


@dataclasses.dataclass
class DreamResult:
  image: np.ndarray                   # RGB [H, W, 3] in [0, 1], the input's size
  objective_per_octave: list[float]   # objective of the full-size image after each octave
  objective_start: float              # ... and of the input itself


# ----------------------------------------------------------------------------
# The objective (pure).


def guide_features(params, guide: Array, spec: DreamSpec) -> dict[str, Array]:
  """Features of a preprocessed guide image [H, W, 3] at ``spec.layers``, as [N, C]."""
  feats = vgg.features(params, guide[None], spec.layers, pooling=spec.pooling)
  return {l: f[0].reshape(-1, f.shape[-1]) for l, f in feats.items()}


def objective(image: Array, params, spec: DreamSpec,
              guide: Mapping[str, Array] | None = None) -> tuple[Array, dict[str, Array]]:
  """The quantity DeepDream maximises, and its parts.

  Args:
    image: [H, W, 3] preprocessed.
    params: VGG19 parameters.
    spec: layers and channels.
    guide: optional ``guide_features`` of a guide image; then each layer's
      part is ``mean_i max_j <f_i, g_j>`` (every position pulled towards the
      guide's best-matching feature vector), else ``mean(f^2)``.
  Returns:
    ``(total, terms)`` with ``terms[layer]`` and ``terms['layer:channel']``.
  """
  feats = vgg.features(params, image[None], spec.taps, pooling=spec.pooling)
  terms = {}
  for layer in spec.layers:
    f = feats[layer][0]
    if guide is None:
      terms[layer] = jnp.mean(jnp.square(f))
    else:
      x = f.reshape(-1, f.shape[-1])
      terms[layer] = jnp.mean(jnp.max(x @ guide[layer].T, axis=-1))
  for layer, c in spec.channels:
    terms[f'{layer}:{c}'] = jnp.mean(jnp.square(feats[layer][0][..., c]))
  return sum(terms.values()), terms


def ascent_step(x: Array, key: Array, params, spec: DreamSpec, guide, step_size, jitter,
                lo: Array, hi: Array) -> Array:
  """One jittered, normalised gradient-ascent step on a preprocessed image [H, W, 3]."""
  shift = jax.random.randint(key, (2,), -jitter, jitter + 1)
  rolled = jnp.roll(x, (shift[0], shift[1]), axis=(0, 1))
  g = jax.grad(lambda z: objective(z, params, spec, guide)[0])(rolled)
  rolled = rolled + step_size * g / (jnp.mean(jnp.abs(g)) + 1e-8)
  return jnp.clip(jnp.roll(rolled, (-shift[0], -shift[1]), axis=(0, 1)), lo, hi)


@functools.lru_cache(maxsize=8)
def _compiled_chunk(spec: DreamSpec) -> Callable:
  """``chunk(x, key, start, n, params, guide, step_size, jitter, lo, hi) -> (x, objective)``."""

  def chunk(x, key, start, n, params, guide, step_size, jitter, lo, hi):
    params = vgg.with_backward_kernels(params)

    def body(i, x):
      return ascent_step(x, jax.random.fold_in(key, start + i), params, spec, guide,
                         step_size, jitter, lo, hi)

    x = jax.lax.fori_loop(0, n, body, x)
    return x, objective(x, params, spec, guide)[0]

  return jax.jit(chunk, donate_argnums=(0,))


@functools.lru_cache(maxsize=8)
def _compiled_objective(spec: DreamSpec) -> Callable:
  return jax.jit(lambda x, params, guide: objective(x, params, spec, guide)[0])


# ----------------------------------------------------------------------------
# The run.


def octave_shapes(hw: tuple[int, int], octaves: int, scale: float) -> list[tuple[int, int]]:
  """(h, w) of each octave, coarse to fine; the last is ``hw``."""
  h, w = hw
  return [(max(1, int(round(h / scale ** k))), max(1, int(round(w / scale ** k))))
          for k in range(octaves - 1, -1, -1)]


def check_sizes(hw: tuple[int, int], spec: DreamSpec, config: DreamConfig) -> None:
  """Refuses octaves smaller than the deepest layer needs; names the flag to change."""
  if config.image_size is not None:
    hw = image_io.longest_side_shape(hw, config.image_size)
  need = vgg.min_input_size(spec.taps)
  fits = [k for k in range(1, config.octaves + 1)
          if min(octave_shapes(hw, k, config.octave_scale)[0]) >= need]
  if len(fits) < config.octaves:
    most = max(fits, default=0)
    hint = (f'use --octaves={most} or fewer' if most else
            'use a larger image or --image_size')
    raise ConfigError(
        f'--octaves={config.octaves} with --octave_scale={config.octave_scale} makes the '
        f'coarsest octave smaller than the {need} px that {vgg.deepest(spec.taps)} needs '
        f'(the image is {hw[1]}x{hw[0]} px); {hint}, or a smaller --octave_scale')


def dream(weights: weights_lib.WeightSet, image: np.ndarray, spec: DreamSpec = DreamSpec(),
          config: DreamConfig = DreamConfig(), *, guide: np.ndarray | None = None,
          callback: Callable[[DreamProgress], None] | None = None,
          progress_every: int = 0) -> DreamResult:
  """Dreams on ``image`` (RGB [H, W, 3] in [0, 1]); returns the result at its size.

  Args:
    weights: a loaded WeightSet (its preprocessing is used).
    image: the input, RGB [H, W, 3] in [0, 1].
    spec: what to amplify.
    config: octaves, steps, step size, jitter, seed, working size.
    guide: optional guide image, RGB [Hg, Wg, 3] in [0, 1]; resized to the
      working size's longest side.
    callback: called with a DreamProgress after every chunk that ends on a
      multiple of ``progress_every`` steps (and at the end of each octave).
    progress_every: 0: only at the end of each octave.
  Returns:
    DreamResult with the image and the objective of the full-size image after
    each octave (the dream's detail carried up to full size).
  """
  image = np.asarray(image, np.float32)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'image must be an RGB array [H, W, 3], got shape {image.shape}')
  in_hw = image.shape[:2]
  check_sizes(in_hw, spec, config)
  prep = weights.preprocessing
  work = (image if config.image_size is None
          else image_io.resize_longest(image, config.image_size))
  hw = work.shape[:2]
  params = jax.device_put(weights.params)
  lo = jnp.asarray(prep.apply(np.zeros(3, np.float32)), jnp.float32)
  hi = jnp.asarray(prep.apply(np.ones(3, np.float32)), jnp.float32)
  lo, hi = jnp.minimum(lo, hi), jnp.maximum(lo, hi)
  guide_f = None
  if guide is not None:
    g = image_io.resize_longest(np.asarray(guide, np.float32), max(hw))
    guide_f = jax.jit(functools.partial(guide_features, spec=spec))(
        params, jnp.asarray(prep.apply(g), jnp.float32))
  chunk_fn = _compiled_chunk(spec)
  objective_fn = _compiled_objective(spec)
  full = jnp.asarray(prep.apply(work), jnp.float32)

  def at_input_size(x):
    rgb = np.clip(np.asarray(prep.invert(np.asarray(x)), np.float32), 0.0, 1.0)
    return rgb if rgb.shape[:2] == in_hw else image_io.resize_to(rgb, *in_hw)

  shapes = octave_shapes(hw, config.octaves, config.octave_scale)
  detail = None
  per_octave = []
  start_value = float(objective_fn(full, params, guide_f))
  base_key = jax.random.key(config.seed)
  for octave, (h, w) in enumerate(shapes):
    base = jnp.asarray(prep.apply(image_io.resize_to(work, h, w)), jnp.float32)
    detail = (jnp.zeros_like(base) if detail is None
              else jax.image.resize(detail, (h, w, 3), 'bilinear'))
    x = base + detail
    key = jax.random.fold_in(base_key, octave)

    def step(x, state, start, n, key=key):
      x, value = chunk_fn(x, key, jnp.int32(start), jnp.int32(n), params, guide_f,
                          jnp.float32(config.step_size), jnp.int32(config.jitter), lo, hi)
      return x, state, x, engine.ChunkInfo(n, False, True, {'objective': value})

    # The style engine's chunk loop: chunks end at progress points.
    for c in engine.run_chunks(step, x, None, 0, config.steps_per_octave, config.chunk_size,
                               (progress_every,)):
      x = c.x
      if callback and ((progress_every and c.iteration % progress_every == 0)
                       or c.iteration == config.steps_per_octave):
        callback(DreamProgress(octave, len(shapes), c.iteration, config.steps_per_octave,
                               float(c.info.terms['objective']),
                               functools.partial(at_input_size, x)))
    detail = x - base
    # The objective of the full-size image with the detail so far.
    up = jnp.clip(full + jax.image.resize(detail, (*hw, 3), 'bilinear'), lo, hi)
    per_octave.append(float(objective_fn(up, params, guide_f)))
  return DreamResult(at_input_size(x), per_octave, start_value)
