"""nst_jax: neural style transfer (Gatys, Ecker & Bethge) in JAX and Flax.

One module per idea:

- the network: ``vgg`` (a pure function), ``module`` (the same as a Flax NNX
  module), ``layers`` (its layer names, no JAX), ``weights`` (weight sets and
  their porting);
- the objective: ``losses`` (pure functions of arrays), ``color`` (colour
  control); the optimizers: ``lbfgs`` (ours), ``optimizers`` (names -> optax);
- the settings: ``config`` (``StyleConfig``, ``StyleSpec`` and ``plan``, every
  check of a run against its input shapes), ``memory`` (the peak-memory
  estimate);
- the run: ``transfer`` (the engine: per-scale preparation, the compiled
  programs, the one chunk loop, ``stylize``), ``matrix`` (many problems at
  once on the same engine);
- files: ``image_io``, ``checkpoint``, ``cli_support`` (the scripts' flags
  and files); ``sheet`` (contact sheets).

A new loss goes in ``losses`` (and ``transfer.loss_spec``), a new optimizer in
``optimizers``, a new entry point in ``scripts/``.

The names below are imported on first use: ``import nst_jax`` alone takes
about a millisecond, while importing JAX and Flax took 2-4 s (measured on 2
CPU cores), which every script would otherwise pay before it can refuse a
mistyped flag.
"""

import importlib
from typing import TYPE_CHECKING

__version__ = '0.1.0'

if TYPE_CHECKING:  # The public names, for readers and IDEs; loaded lazily below.
  from nst_jax.arbitrary import predict_style
  from nst_jax.config import ConfigError
  from nst_jax.config import Plan
  from nst_jax.config import StyleConfig
  from nst_jax.config import StyleSpec
  from nst_jax.config import parse_style_spec
  from nst_jax.config import plan
  from nst_jax.image_io import ImageError
  from nst_jax.image_io import load_image
  from nst_jax.image_io import save_image
  from nst_jax.lbfgs import scale_by_torch_lbfgs
  from nst_jax.losses import LossSpec
  from nst_jax.losses import content_loss
  from nst_jax.losses import default_loss_weights
  from nst_jax.losses import gram
  from nst_jax.losses import make_targets
  from nst_jax.losses import style_loss
  from nst_jax.losses import total_loss
  from nst_jax.losses import tv_loss
  from nst_jax.matrix import CellResult
  from nst_jax.matrix import stylize_many
  from nst_jax.module import VGG19
  from nst_jax.realtime_module import ArbitraryTransformer
  from nst_jax.realtime_module import CINNet
  from nst_jax.realtime_module import StylePredictor
  from nst_jax.realtime_weights import load_arbitrary
  from nst_jax.realtime_weights import load_multistyle26
  from nst_jax.transfer import Interrupted
  from nst_jax.transfer import NonFiniteError
  from nst_jax.transfer import Progress
  from nst_jax.transfer import RunState
  from nst_jax.transfer import StyleResult
  from nst_jax.transfer import stylize
  from nst_jax.vgg import features
  from nst_jax.weights import WeightSet
  from nst_jax.weights import WeightsError
  from nst_jax.weights import load as load_weights

# Public name -> (module, attribute); tests/test_stylize.py checks that this
# map and the imports above list the same names.
_EXPORTS = {
    'predict_style': ('arbitrary', 'predict_style'),
    'ConfigError': ('config', 'ConfigError'),
    'Plan': ('config', 'Plan'),
    'StyleConfig': ('config', 'StyleConfig'),
    'StyleSpec': ('config', 'StyleSpec'),
    'parse_style_spec': ('config', 'parse_style_spec'),
    'plan': ('config', 'plan'),
    'ImageError': ('image_io', 'ImageError'),
    'load_image': ('image_io', 'load_image'),
    'save_image': ('image_io', 'save_image'),
    'scale_by_torch_lbfgs': ('lbfgs', 'scale_by_torch_lbfgs'),
    'LossSpec': ('losses', 'LossSpec'),
    'content_loss': ('losses', 'content_loss'),
    'default_loss_weights': ('losses', 'default_loss_weights'),
    'gram': ('losses', 'gram'),
    'make_targets': ('losses', 'make_targets'),
    'style_loss': ('losses', 'style_loss'),
    'total_loss': ('losses', 'total_loss'),
    'tv_loss': ('losses', 'tv_loss'),
    'CellResult': ('matrix', 'CellResult'),
    'stylize_many': ('matrix', 'stylize_many'),
    'VGG19': ('module', 'VGG19'),
    'ArbitraryTransformer': ('realtime_module', 'ArbitraryTransformer'),
    'CINNet': ('realtime_module', 'CINNet'),
    'StylePredictor': ('realtime_module', 'StylePredictor'),
    'load_arbitrary': ('realtime_weights', 'load_arbitrary'),
    'load_multistyle26': ('realtime_weights', 'load_multistyle26'),
    'Interrupted': ('transfer', 'Interrupted'),
    'NonFiniteError': ('transfer', 'NonFiniteError'),
    'Progress': ('transfer', 'Progress'),
    'RunState': ('transfer', 'RunState'),
    'StyleResult': ('transfer', 'StyleResult'),
    'stylize': ('transfer', 'stylize'),
    'features': ('vgg', 'features'),
    'WeightSet': ('weights', 'WeightSet'),
    'WeightsError': ('weights', 'WeightsError'),
    'load_weights': ('weights', 'load'),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(f'nst_jax.{module}'), attr)
    globals()[name] = value
    return value
  raise AttributeError(f'module nst_jax has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))
