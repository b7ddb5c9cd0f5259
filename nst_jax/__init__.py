"""nst_jax: neural style transfer (Gatys, Ecker & Bethge) in JAX and Flax.

The pieces, one module each: ``vgg`` (the network as a pure function),
``module`` (the same network as a Flax NNX module), ``weights`` (weight sets
and porting), ``losses`` (the objective as pure functions), ``lbfgs`` (the
optimizer), ``color`` (colour control), ``image_io`` (files), ``config`` (the
settings), ``transfer`` (the run loop: ``stylize``) and ``matrix`` (many
images at once).

Names are imported on first use, so ``import nst_jax`` (and the scripts'
flag checking) does not pay for importing JAX until something needs it.
"""

import importlib

__version__ = '0.1.0'

# Public name -> (module, attribute).
_EXPORTS = {
    'ConfigError': ('config', 'ConfigError'),
    'StyleConfig': ('config', 'StyleConfig'),
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
    'StyleSpec': ('matrix', 'StyleSpec'),
    'stylize_many': ('matrix', 'stylize_many'),
    'Interrupted': ('transfer', 'Interrupted'),
    'NonFiniteError': ('transfer', 'NonFiniteError'),
    'StyleResult': ('transfer', 'StyleResult'),
    'stylize': ('transfer', 'stylize'),
    'VGG19': ('module', 'VGG19'),
    'features': ('vgg', 'features'),
    'WeightSet': ('weights', 'WeightSet'),
    'WeightsError': ('weights', 'WeightsError'),
    'load_weights': ('weights', 'load'),
    'ArbitraryTransformer': ('realtime_module', 'ArbitraryTransformer'),
    'CINNet': ('realtime_module', 'CINNet'),
    'StylePredictor': ('realtime_module', 'StylePredictor'),
    'predict_style': ('arbitrary', 'predict_style'),
    'load_arbitrary': ('realtime_weights', 'load_arbitrary'),
    'load_multistyle26': ('realtime_weights', 'load_multistyle26'),
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
