"""The settings of one style transfer, validated where they are built.

Defaults reproduce jcjohnson/neural-style (``neural_style.lua``): Caffe VGG19,
content relu4_2 with weight 5, style relu1_1..relu5_1 with weight 100 each,
TV weight 1e-3, random init, L-BFGS with history 100, 1000 iterations, 512 px.
Field names follow the reference's flags in Python style (README has the map).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from nst_jax import layers as vgg  # names only: no JAX import

OPTIMIZERS = ('lbfgs', 'lbfgs_linesearch', 'adam')
COLORS = ('none', 'luminance', 'histogram')
INITS = ('random', 'image')
PRECISIONS = ('float32', 'bfloat16')


_INT32_MAX = 2**31 - 1
_FLOAT32_MAX = 3.4028234663852886e38


class ConfigError(ValueError):
  """A bad setting; the message names the flag and says what is allowed."""


def _finite_nonneg(name, value):
  if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
    raise ConfigError(f'--{name} must be a finite number >= 0, got {value!r}')


def _tuple(value) -> tuple:
  if value is None:
    return ()
  if isinstance(value, str):
    return tuple(v.strip() for v in value.split(',') if v.strip())
  if isinstance(value, Sequence):
    return tuple(value)
  return (value,)


@dataclasses.dataclass(frozen=True)
class StyleConfig:
  """Every option of a run. See the README for the flag of each field."""
  image_size: int = 512
  style_scale: float = 1.0
  style_blend_weights: tuple[float, ...] | None = None
  content_weight: float = 5.0
  style_weight: float = 100.0
  tv_weight: float = 1e-3
  content_layers: tuple[str, ...] = ('relu4_2',)
  style_layers: tuple[str, ...] = ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1')
  style_layer_weights: tuple[float, ...] | None = None
  init: str = 'random'
  init_image: str | None = None
  optimizer: str = 'lbfgs'
  learning_rate: float | None = None  # None: 1 for L-BFGS, 10 for Adam.
  lbfgs_history: int = 100
  num_iterations: tuple[int, ...] = (1000,)
  scales: tuple[int, ...] | None = None
  normalize_gradients: bool = False
  pooling: str = 'max'
  original_colors: bool = False
  color: str = 'none'
  seed: int = 0
  print_iter: int = 50
  save_iter: int = 100
  chunk_size: int = 50
  weights: str = 'vgg19-caffe'
  precision: str = 'float32'
  remat: bool = False

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
      raise ConfigError(f'--image_size must be a positive integer, got {self.image_size!r}')
    if not (isinstance(self.style_scale, (int, float)) and math.isfinite(self.style_scale)
            and self.style_scale > 0):
      raise ConfigError(f'--style_scale must be a finite number > 0, got {self.style_scale!r}')
    for name in ('content_weight', 'style_weight', 'tv_weight'):
      _finite_nonneg(name, getattr(self, name))
    for flag, layers in (('content_layers', self.content_layers),
                         ('style_layers', self.style_layers)):
      bad = [l for l in layers if l not in vgg.LAYER_NAMES]
      if bad:
        raise ConfigError(f'--{flag}: unknown layer(s) {", ".join(bad)}; valid layers are '
                          f'{", ".join(vgg.TAP_NAMES)} (or conv1_1 ... conv5_4)')
    if not self.style_layers and not self.content_layers:
      raise ConfigError('--content_layers and --style_layers are both empty')
    if self.style_layer_weights is not None:
      if len(self.style_layer_weights) != len(self.style_layers):
        raise ConfigError(f'--style_layer_weights has {len(self.style_layer_weights)} values '
                          f'but --style_layers has {len(self.style_layers)} layers')
      for w in self.style_layer_weights:
        _finite_nonneg('style_layer_weights', w)
    if self.style_blend_weights is not None:
      for w in self.style_blend_weights:
        _finite_nonneg('style_blend_weights', w)
      if sum(self.style_blend_weights) <= 0:
        raise ConfigError('--style_blend_weights are all zero; give at least one positive weight')
    if self.init not in INITS:
      raise ConfigError(f'--init must be one of {", ".join(INITS)}, got {self.init!r} '
                        '(use --init_image=FILE to start from a file)')
    if not (self.optimizer in OPTIMIZERS or self.optimizer.startswith('optax:')):
      raise ConfigError(f'--optimizer must be one of {", ".join(OPTIMIZERS)} or optax:NAME '
                        f'(e.g. optax:sgd), got {self.optimizer!r}')
    if self.optimizer.startswith('optax:'):
      import optax
      name = self.optimizer[len('optax:'):]
      if not callable(getattr(optax, name, None)):
        raise ConfigError(f'--optimizer: optax has no optimizer named {name!r}')
    if self.learning_rate is not None:
      if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
        raise ConfigError(f'--learning_rate must be a finite number > 0, got {self.learning_rate!r}')
    if not isinstance(self.lbfgs_history, int) or self.lbfgs_history < 1:
      raise ConfigError(f'--lbfgs_history must be an integer >= 1, got {self.lbfgs_history!r}')
    if not self.num_iterations or any(n < 0 for n in self.num_iterations):
      raise ConfigError(f'--num_iterations must be integers >= 0, got {self.num_iterations!r}')
    n_scales = len(self.scales) if self.scales else 1
    if len(self.num_iterations) not in (1, n_scales):
      raise ConfigError(f'--num_iterations has {len(self.num_iterations)} values; give one, '
                        f'or one per scale ({n_scales})')
    if self.scales is not None and any(s <= 0 for s in self.scales):
      raise ConfigError(f'--scales must be positive sizes, got {self.scales!r}')
    if self.pooling not in vgg.POOLINGS:
      raise ConfigError(f'--pooling must be max or avg, got {self.pooling!r}')
    if self.color not in COLORS:
      raise ConfigError(f'--color must be one of {", ".join(COLORS)}, got {self.color!r}')
    if self.precision not in PRECISIONS:
      raise ConfigError(f'--precision must be one of {", ".join(PRECISIONS)}, got {self.precision!r}')
    for name in ('print_iter', 'save_iter'):
      if getattr(self, name) < 0:
        raise ConfigError(f'--{name} must be >= 0 (0 disables it)')
    if self.chunk_size < 1:
      raise ConfigError('--chunk_size must be >= 1')
    # Numbers that parse but overflow the device: counters and sizes live in
    # int32, weights in float32. The one range check (the CLI relies on it).
    for name in ('image_size', 'lbfgs_history', 'print_iter', 'save_iter', 'chunk_size'):
      if getattr(self, name) > _INT32_MAX:
        raise ConfigError(f'--{name} must be at most {_INT32_MAX}, got {getattr(self, name)}')
    for name in ('num_iterations', 'scales'):
      if any(v > _INT32_MAX for v in getattr(self, name) or ()):
        raise ConfigError(f'--{name} values must be at most {_INT32_MAX}')
    if not -2**63 <= self.seed < 2**63:
      raise ConfigError(f'--seed must fit in 64 bits, got {self.seed}')
    for name in ('style_scale', 'content_weight', 'style_weight', 'tv_weight', 'learning_rate',
                 'style_blend_weights', 'style_layer_weights'):
      value = getattr(self, name)
      values = value if isinstance(value, tuple) else (value,)
      if any(v is not None and abs(v) > _FLOAT32_MAX for v in values):
        raise ConfigError(f'--{name} must be at most {_FLOAT32_MAX:.3g} (the float32 range), '
                          f'got {value!r}')

  @property
  def sizes(self) -> tuple[int, ...]:
    """Image size (longest side) of each scale, coarse to fine."""
    return self.scales or (self.image_size,)

  def iterations(self, scale_index: int) -> int:
    its = self.num_iterations
    return its[0] if len(its) == 1 else its[scale_index]

  @property
  def lr(self) -> float:
    if self.learning_rate is not None:
      return self.learning_rate
    return 10.0 if self.optimizer == 'adam' else 1.0

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> 'StyleConfig':
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: (tuple(v) if isinstance(v, list) else v)
                  for k, v in d.items() if k in fields})
