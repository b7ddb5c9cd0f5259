"""The settings of one style transfer, validated where they are built.

``StyleConfig`` is the single list of a run's settings: the scripts generate
their flags from its fields (``cli_support.define_style_flags``), and a
checkpoint stores it. ``StyleSpec`` is one style of a run (images and blend
weights), with its ``a.jpg@2+b.jpg@1`` text form. ``plan`` checks a config
against the input shapes (sizes, blends, memory) once, for the scripts and the
library alike. No JAX is imported here, so a script refuses bad input before
paying for JAX.

Defaults reproduce jcjohnson/neural-style (``neural_style.lua``): Caffe VGG19,
content relu4_2 with weight 5, style relu1_1..relu5_1 with weight 100 each,
TV weight 1e-3, random init, L-BFGS with history 100, 1000 iterations, 512 px.
Field names follow the reference's flags in Python style (README has the map).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from nst_jax import image_io
from nst_jax import layers
from nst_jax import lbfgs
from nst_jax import memory

OPTIMIZERS = ('lbfgs', 'lbfgs_linesearch', 'adam')
COLORS = ('none', 'luminance', 'histogram')
INITS = ('random', 'image')
HISTORY_DTYPES = ('float32', 'bfloat16')
PRECISIONS = ('float32', 'bfloat16')
CONV_ALGORITHMS = ('auto', 'xla', 'winograd')  # nst_jax.winograd

# Help groups of the generated flags, in the order ``--help`` shows them.
GROUPS = OBJECTIVE, OPTIMIZER, COLOR_AND_SCALES, RUN_CONTROL = (
    'the objective', 'the optimizer', 'colour and scales', 'run control')

_INT32_MAX = 2**31 - 1
_FLOAT32_MAX = 3.4028234663852886e38


class ConfigError(ValueError):
  """A bad setting or input; the message names the argument in backticks.

  Library messages say `image_size`; the scripts show the same text with the
  flag, ``--image_size`` (``cli_support.flag_message``).
  """


def _finite_nonneg(name, value):
  if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
    raise ConfigError(f'`{name}` must be a finite number >= 0, got {value!r}')


def _tuple(value) -> tuple:
  if value is None:
    return ()
  if isinstance(value, str):
    return tuple(v.strip() for v in value.split(',') if v.strip())
  if isinstance(value, Sequence):
    return tuple(value)
  return (value,)


def check_blend_weights(weights: Sequence[float], num_styles: int,
                        name: str = 'style_blend_weights') -> None:
  """Refuses blend weights that are not one finite weight >= 0 per style, some positive."""
  if len(weights) != num_styles:
    raise ConfigError(f'`{name}` has {len(weights)} values for {num_styles} style image(s); '
                      'give one weight per style image')
  for w in weights:
    _finite_nonneg(name, w)
  if sum(weights) <= 0:
    raise ConfigError(f'`{name}` are all zero; give at least one positive weight')


STYLE_LOSSES = ('gram', 'sw', 'mean_std')
_STYLE_LOSS_ALIASES = {'sliced_wasserstein': 'sw', 'meanstd': 'mean_std', 'adain': 'mean_std'}


def parse_style_loss(text: str, name: str = 'style_loss') -> tuple[tuple[str, float], ...]:
  """Parses ``'gram'``, ``'sw'`` or a weighted mix such as ``'gram:1,sw:0.5'``.

  Args:
    text: comma-separated kinds (``gram``, ``sw`` or ``sliced_wasserstein``,
      ``mean_std``), each optionally followed by ``:WEIGHT`` (default 1).
    name: the argument's name, used in error messages.
  Returns:
    ``((kind, weight), ...)`` with canonical kind names, in the given order.
  Raises:
    ConfigError: naming ``name``, for an unknown or repeated kind, a weight
      that is not a finite number >= 0, or all weights zero.
  """
  allowed = 'gram, sw (sliced_wasserstein), mean_std'
  out = {}
  for item in str(text).split(','):
    item = item.strip()
    if not item:
      raise ConfigError(f'`{name}`: empty entry in {text!r}; write e.g. gram:1,sw:0.5')
    kind, _, weight = item.partition(':')
    kind = _STYLE_LOSS_ALIASES.get(kind.strip(), kind.strip())
    if kind not in STYLE_LOSSES:
      raise ConfigError(f'`{name}`: unknown style loss {kind!r} in {text!r}; use {allowed}, '
                        'each optionally with :WEIGHT, e.g. gram:1,sw:0.5')
    if kind in out:
      raise ConfigError(f'`{name}`: {kind} appears twice in {text!r}')
    try:
      w = float(weight) if weight.strip() else 1.0
    except ValueError:
      w = float('nan')
    if not math.isfinite(w) or w < 0 or w > _FLOAT32_MAX:
      raise ConfigError(f'`{name}`: the weight of {kind} must be a finite number >= 0, '
                        f'got {weight!r}')
    out[kind] = w
  if not any(out.values()):
    raise ConfigError(f'`{name}`: every weight in {text!r} is zero; give one a positive weight')
  return tuple(out.items())


def _field(default, group: str, help_: str, **metadata):
  """A StyleConfig field; ``cli_support`` makes a flag of it from this metadata."""
  return dataclasses.field(default=default, metadata=dict(group=group, help=help_, **metadata))


@dataclasses.dataclass(frozen=True)
class StyleConfig:
  """Every setting of a run. Each field is also a flag of the scripts.

  To add a setting: add a field here with ``_field`` (its help text and help
  group become the flag's), validate it in ``_validate``, and read it where it
  is used (``transfer.loss_spec`` for the objective).
  """
  image_size: int = _field(512, COLOR_AND_SCALES, 'Longest side of the output, px.')
  style_scale: float = _field(1.0, COLOR_AND_SCALES, 'Style images are resized to '
                              'style_scale * image_size (longest side).')
  style_blend_weights: tuple[float, ...] | None = _field(
      None, OBJECTIVE, 'One weight per style image (normalised to sum 1; default equal).')
  content_weight: float = _field(5.0, OBJECTIVE, 'Content loss weight.')
  style_weight: float = _field(100.0, OBJECTIVE, 'Style loss weight (per layer).')
  tv_weight: float = _field(1e-3, OBJECTIVE, 'Total-variation weight.')
  style_loss: str = _field('gram', OBJECTIVE, 'Style statistics to match: gram, sw (sliced '
                           'Wasserstein: the whole feature distribution), mean_std, or a '
                           'weighted mix such as gram:1,sw:0.5.')
  sw_redraw: int = _field(25, OBJECTIVE, 'Draw new sliced-Wasserstein directions every this '
                          'many iterations (1: every iteration; L-BFGS prefers a steady '
                          'objective).')
  color_weight: float = _field(0.0, OBJECTIVE, 'Weight of the colour-distribution term '
                               '(sliced Wasserstein between output and style pixel colours).')
  content_layers: tuple[str, ...] = _field(('relu4_2',), OBJECTIVE, 'VGG19 content layers.')
  style_layers: tuple[str, ...] = _field(
      ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1'), OBJECTIVE, 'VGG19 style layers.')
  style_layer_weights: tuple[float, ...] | None = _field(
      None, OBJECTIVE, 'Per-style-layer factors (default all 1).')
  init: str = _field('random', OPTIMIZER, 'Start from random noise or the content image.',
                     choices=INITS)
  optimizer: str = _field('lbfgs', OPTIMIZER, 'lbfgs, lbfgs_linesearch, adam, or optax:NAME.')
  learning_rate: float | None = _field(None, OPTIMIZER,
                                       'Step size (default 1 for L-BFGS, 10 for Adam).')
  lbfgs_history: int = _field(100, OPTIMIZER, 'L-BFGS history size.')
  lbfgs_history_dtype: str = _field(
      'float32', OPTIMIZER, 'Storage of the L-BFGS history: bfloat16 halves its memory '
      '(objective within 1% after 300 iterations at 256 px); float32 as the references.',
      choices=HISTORY_DTYPES)
  lbfgs_direction: str = _field(
      'auto', OPTIMIZER, 'How L-BFGS gets its direction: two_loop (pair by pair, fastest on '
      'CPU), compact (a few large products, for GPUs), auto (compact on an accelerator unless '
      'the history is bfloat16).', choices=lbfgs.DIRECTIONS)
  num_iterations: tuple[int, ...] = _field((1000,), OPTIMIZER,
                                           'Iterations (one value, or one per scale).')
  scales: tuple[int, ...] | None = _field(
      None, COLOR_AND_SCALES, 'Coarse-to-fine sizes, e.g. 256,512,1024 (overrides image_size).')
  normalize_gradients: bool = _field(False, OBJECTIVE, "L1-normalise each loss term's "
                                     'gradient (as the Lua original).')
  pooling: str = _field('max', OBJECTIVE, 'VGG pooling.', choices=layers.POOLINGS)
  original_colors: bool = _field(False, COLOR_AND_SCALES,
                                 "Keep the content's colours (post-hoc luminance transfer).")
  color: str = _field('none', COLOR_AND_SCALES, 'Colour control: luminance-only transfer '
                      "or matching the style's colours to the content's.", choices=COLORS)
  seed: int = _field(0, OPTIMIZER, 'Random seed of the noise init.')
  print_iter: int = _field(50, RUN_CONTROL, 'Progress line every N iterations (0: off).')
  save_iter: int = _field(100, RUN_CONTROL, 'Intermediate image every N iterations (0: off).')
  chunk_size: int = _field(50, RUN_CONTROL, 'Most iterations per compiled chunk.')
  weights: str = _field('vgg19-caffe', OBJECTIVE, 'Weight set name or .safetensors path.')
  precision: str = _field('float32', RUN_CONTROL, 'bfloat16: mixed-precision convolutions '
                          '(GPU/TPU).', choices=PRECISIONS)
  conv_algorithm: str = _field(
      'auto', RUN_CONTROL, "VGG19's 3x3 convolutions during optimisation: xla (XLA's own), "
      'winograd (F(4x4,3x3) on the layers of 128 channels and more: 1.3-2x faster on CPU, '
      "float32 error ~1e-5 of a layer's range), auto (winograd on CPU in float32, else xla).",
      choices=CONV_ALGORITHMS)
  remat: bool = _field(False, RUN_CONTROL, 'Recompute activations in the backward pass '
                       '(less memory, more time).')
  band_rows: int = _field(0, RUN_CONTROL, 'Evaluate VGG19 in bands of this many image rows '
                          '(a multiple of 16; 0: the whole image at once): the same result '
                          'in a fraction of the memory, for very large images (Gram '
                          'objective only).')

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_('content_layers', _tuple(self.content_layers))
    set_('style_layers', _tuple(self.style_layers))
    set_('num_iterations', tuple(int(n) for n in _tuple(self.num_iterations)))
    if self.scales is not None:
      set_('scales', tuple(int(s) for s in _tuple(self.scales)) or None)
    for name in ('style_blend_weights', 'style_layer_weights'):
      value = getattr(self, name)
      if value is not None:
        set_(name, tuple(float(v) for v in _tuple(value)))
    self._validate()

  def _validate(self):
    if not isinstance(self.image_size, int) or self.image_size <= 0:
      raise ConfigError(f'`image_size` must be a positive integer, got {self.image_size!r}')
    if not (isinstance(self.style_scale, (int, float)) and math.isfinite(self.style_scale)
            and self.style_scale > 0):
      raise ConfigError(f'`style_scale` must be a finite number > 0, got {self.style_scale!r}')
    self._validate_objective()
    if self.init not in INITS:
      raise ConfigError(f'`init` must be one of {", ".join(INITS)}, got {self.init!r} '
                        '(or pass `init_image`)')
    if not (self.optimizer in OPTIMIZERS or self.optimizer.startswith('optax:')):
      raise ConfigError(f'`optimizer` must be one of {", ".join(OPTIMIZERS)} or optax:NAME '
                        f'(e.g. optax:sgd), got {self.optimizer!r}')
    if self.optimizer.startswith('optax:'):
      import optax
      name = self.optimizer[len('optax:'):]
      if not callable(getattr(optax, name, None)):
        raise ConfigError(f'`optimizer`: optax has no optimizer named {name!r}')
    if self.learning_rate is not None:
      if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
        raise ConfigError(f'`learning_rate` must be a finite number > 0, got {self.learning_rate!r}')
    if not isinstance(self.lbfgs_history, int) or self.lbfgs_history < 1:
      raise ConfigError(f'`lbfgs_history` must be an integer >= 1, got {self.lbfgs_history!r}')
    if not self.num_iterations or any(n < 0 for n in self.num_iterations):
      raise ConfigError(f'`num_iterations` must be integers >= 0, got {self.num_iterations!r}')
    n_scales = len(self.scales) if self.scales else 1
    if len(self.num_iterations) not in (1, n_scales):
      raise ConfigError(f'`num_iterations` has {len(self.num_iterations)} values; give one, '
                        f'or one per scale ({n_scales})')
    if self.scales is not None and any(s <= 0 for s in self.scales):
      raise ConfigError(f'`scales` must be positive sizes, got {self.scales!r}')
    if self.pooling not in layers.POOLINGS:
      raise ConfigError(f'`pooling` must be max or avg, got {self.pooling!r}')
    if self.color not in COLORS:
      raise ConfigError(f'`color` must be one of {", ".join(COLORS)}, got {self.color!r}')
    if self.precision not in PRECISIONS:
      raise ConfigError(f'`precision` must be one of {", ".join(PRECISIONS)}, got {self.precision!r}')
    if self.conv_algorithm not in CONV_ALGORITHMS:
      raise ConfigError(f'`conv_algorithm` must be one of {", ".join(CONV_ALGORITHMS)}, '
                        f'got {self.conv_algorithm!r}')
    if self.conv_algorithm == 'winograd' and self.precision != 'float32':
      raise ConfigError('`conv_algorithm=winograd` needs `precision=float32` (its transforms '
                        'lose too much in bfloat16); use auto or xla')
    for name in ('print_iter', 'save_iter'):
      if getattr(self, name) < 0:
        raise ConfigError(f'`{name}` must be >= 0 (0 disables it)')
    if self.chunk_size < 1:
      raise ConfigError('`chunk_size` must be >= 1')
    # Numbers that parse but overflow the device: counters and sizes live in
    # int32, weights in float32. The one range check (the CLI relies on it).
    for name in ('image_size', 'lbfgs_history', 'print_iter', 'save_iter', 'chunk_size'):
      if getattr(self, name) > _INT32_MAX:
        raise ConfigError(f'`{name}` must be at most {_INT32_MAX}, got {getattr(self, name)}')
    for name in ('num_iterations', 'scales'):
      if any(v > _INT32_MAX for v in getattr(self, name) or ()):
        raise ConfigError(f'`{name}` values must be at most {_INT32_MAX}')
    if not -2**63 <= self.seed < 2**63:
      raise ConfigError(f'`seed` must fit in 64 bits, got {self.seed}')
    for name in ('style_scale', 'content_weight', 'style_weight', 'tv_weight', 'learning_rate',
                 'style_blend_weights', 'style_layer_weights', 'color_weight'):
      value = getattr(self, name)
      values = value if isinstance(value, tuple) else (value,)
      if any(v is not None and abs(v) > _FLOAT32_MAX for v in values):
        raise ConfigError(f'`{name}` must be at most {_FLOAT32_MAX:.3g} (the float32 range), '
                          f'got {value!r}')

  def _validate_objective(self):
    """The checks of the loss settings: weights, style losses, layers, bands."""
    for name in ('content_weight', 'style_weight', 'tv_weight', 'color_weight'):
      _finite_nonneg(name, getattr(self, name))
    parse_style_loss(self.style_loss)
    if not isinstance(self.sw_redraw, int) or self.sw_redraw < 1:
      raise ConfigError(f'`sw_redraw` must be an integer >= 1, got {self.sw_redraw!r}')
    for flag, names in (('content_layers', self.content_layers),
                        ('style_layers', self.style_layers)):
      bad = [l for l in names if l not in layers.LAYER_NAMES]
      if bad:
        raise ConfigError(f'`{flag}`: unknown layer(s) {", ".join(bad)}; valid layers are '
                          f'{", ".join(layers.TAP_NAMES)} (or conv1_1 ... conv5_4)')
    if not self.style_layers and not self.content_layers:
      raise ConfigError('`content_layers` and `style_layers` are both empty')
    if self.style_layer_weights is not None:
      if len(self.style_layer_weights) != len(self.style_layers):
        raise ConfigError(f'`style_layer_weights` has {len(self.style_layer_weights)} values '
                          f'but `style_layers` has {len(self.style_layers)} layers')
      for w in self.style_layer_weights:
        _finite_nonneg('style_layer_weights', w)
    if self.style_blend_weights is not None:
      check_blend_weights(self.style_blend_weights, len(self.style_blend_weights))
    if not isinstance(self.band_rows, int) or self.band_rows < 0 or self.band_rows % 16:
      raise ConfigError(f'`band_rows` must be 0 or a positive multiple of 16, '
                        f'got {self.band_rows!r}')
    if self.band_rows and not self.bands_supported:
      raise ConfigError('`band_rows` supports the Gram objective only: not with `style_loss` '
                        'other than gram, `color_weight` > 0 or `normalize_gradients`')

  @property
  def bands_supported(self) -> bool:
    """Whether the objective can be evaluated in bands of rows (``nst_jax.bands``): Gram only."""
    return ([k for k, _ in parse_style_loss(self.style_loss)] == ['gram']
            and not self.color_weight and not self.normalize_gradients)

  @property
  def sizes(self) -> tuple[int, ...]:
    """Image size (longest side) of each scale, coarse to fine."""
    return self.scales or (self.image_size,)

  def style_size(self, size: int) -> int:
    """Longest side of the style images when the content's is ``size``."""
    return max(1, int(math.ceil(self.style_scale * size)))

  def iterations(self, scale_index: int) -> int:
    its = self.num_iterations
    return its[0] if len(its) == 1 else its[scale_index]

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> 'StyleConfig':
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: (tuple(v) if isinstance(v, list) else v)
                  for k, v in d.items() if k in fields})


@dataclasses.dataclass(frozen=True)
class StyleSpec:
  """One style of a run: one or several images, blended by ``blend_weights``.

  ``images`` are whatever the caller holds: paths in a script, [H, W, 3] RGB
  arrays for the library (``matrix.stylize_many``).
  """
  images: tuple
  blend_weights: tuple[float, ...] | None = None
  name: str | None = None

  @property
  def label(self) -> str:
    """``name``, else the images' file stems joined with '+'."""
    if self.name:
      return self.name
    return '+'.join(Path(str(i)).stem if isinstance(i, (str, os.PathLike)) else 'array'
                    for i in self.images)


def parse_style_spec(text: str) -> StyleSpec:
  """``a.jpg@2+b.jpg@1`` -> StyleSpec(('a.jpg', 'b.jpg'), (2.0, 1.0)); weights default 1."""
  images, weights = [], []
  for part in (p for p in text.split('+') if p):
    path, _, w = part.partition('@')
    images.append(path)
    try:
      weights.append(float(w) if w else 1.0)
    except ValueError:
      raise ConfigError(f'style spec {text!r}: weight {w!r} is not a number') from None
  if not images:
    raise ConfigError(f'empty style spec {text!r}')
  return StyleSpec(tuple(images), tuple(weights))


class Scale(NamedTuple):
  size: int                                 # longest side of the content
  content_hw: tuple[int, int]
  style_hws: tuple[tuple[int, int], ...]
  iterations: int


@dataclasses.dataclass(frozen=True)
class Plan:
  """A checked run: its settings, blend weights and the shapes of every scale."""
  config: StyleConfig
  blend_weights: tuple[float, ...]
  scales: tuple[Scale, ...]
  peak_bytes: int                           # the memory estimate of the largest scale


def plan(config: StyleConfig, content_hw: tuple[int, int],
         style_hws: Sequence[tuple[int, int]], *,
         blend_weights: Sequence[float] | None = None, budget: int | None = None) -> Plan:
  """Checks a run from the input shapes alone, before anything is loaded or compiled.

  Every size, blend and memory check of a run is made here, once: each scale
  must be large enough for the deepest layer, the blend weights must match the
  styles, and the estimated peak memory must fit. Only shapes are computed,
  so this is instant whatever the sizes.

  Args:
    config: the run's settings.
    content_hw: (height, width) of the content image as loaded.
    style_hws: (height, width) of each style image as loaded.
    blend_weights: one per style (default ``config.style_blend_weights``, else equal).
    budget: bytes the run may use (default ``memory.available_bytes()``).
  Returns:
    The Plan that ``transfer.stylize`` runs.
  Raises:
    ConfigError: naming the argument (`image_size`, ...) and what to do.
  """
  style_hws = tuple(tuple(hw) for hw in style_hws)
  if not style_hws:
    raise ConfigError('give at least one style image')
  blend = tuple(blend_weights or config.style_blend_weights or (1.0,) * len(style_hws))
  check_blend_weights(blend, len(style_hws))
  taps = config.content_layers + config.style_layers
  need = layers.min_input_size(taps)
  scales = []
  for index, size in enumerate(config.sizes):
    hw = image_io.longest_side_shape(content_hw, size)
    shws = tuple(image_io.longest_side_shape(s, config.style_size(size)) for s in style_hws)
    for what, (h, w) in [('the content image', hw),
                         *((f'style image {k + 1}', s) for k, s in enumerate(shws))]:
      if min(h, w) < need:
        raise ConfigError(
            f'{what} is {w}x{h} px after resizing, but layer {layers.deepest(taps)} needs at '
            f'least {need} px on the shorter side; increase `image_size` or `scales` (or '
            '`style_scale`) or use shallower layers')
    scales.append(Scale(size, hw, shws, config.iterations(index)))
  peak = memory.run_peak_bytes(content_hw, config, style_hws)
  _check_memory(peak, content_hw, config, style_hws, budget)
  if config.optimizer.startswith('optax:'):
    from nst_jax import optimizers  # Imports JAX, which only this check needs.
    optimizers.check_optimizer(config)
  return Plan(config, blend, tuple(scales), peak)


def _check_memory(peak, content_hw, config, style_hws, budget) -> None:
  budget = memory.available_bytes() if budget is None else budget
  if budget is None or peak <= budget:
    return
  need = f'this run needs about {peak / 2**30:.1f} GiB of memory but'
  fit = memory.largest_fitting_size(content_hw, config, budget, style_hws)
  if fit is None:
    raise ConfigError(f'{need} only {budget / 2**30:.1f} GiB is available, too little even '
                      'for the smallest image; free some memory')
  changes = memory.fitting_changes(content_hw, config, budget, style_hws)
  fixes = ' or '.join(' '.join(f'`{k}`={v}' for k, v in c.items()) for c in changes)
  raise ConfigError(
      f'{need} {budget / 2**30:.1f} GiB is available; use `image_size`={fit} or less (or '
      f'`scales` ending at {fit})' + (f', or keep the size with {fixes}' if fixes else ''))
