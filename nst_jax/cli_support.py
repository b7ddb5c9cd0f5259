"""Shared pieces of the absl-flag scripts: style flags, errors, caches, demo images."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from absl import flags

from nst_jax import config as config_lib
from nst_jax import image_io
from nst_jax import memory
from nst_jax import torch_pickle
from nst_jax import weights as weights_lib

FLAGS = flags.FLAGS

# Errors that are the user's to fix: printed as one line, exit status 1.
USER_ERRORS = (config_lib.ConfigError, image_io.ImageError, weights_lib.WeightsError,
               torch_pickle.TorchFileError)

CACHE_DIR_ENV = 'NST_JAX_CACHE_DIR'


def fail(message: str) -> int:
  print(f'error: {message}', file=sys.stderr)
  return 1


def cache_dir() -> Path:
  """``$NST_JAX_CACHE_DIR`` or ``~/.cache/nst_jax``."""
  return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / '.cache' / 'nst_jax')


def enable_compilation_cache() -> None:
  """Turns on JAX's persistent compilation cache in ``cache_dir()/jax``.

  A second run at a size already seen loads its programs from disk instead
  of compiling them again.
  """
  import jax
  path = cache_dir() / 'jax'
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError:
    return  # An unwritable cache only costs compile time.
  jax.config.update('jax_compilation_cache_dir', str(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def define_style_flags() -> None:
  """Flags for every StyleConfig field (names: the reference's, Python style)."""
  d = config_lib.StyleConfig()
  flags.DEFINE_integer('image_size', d.image_size, 'Longest side of the output, px.')
  flags.DEFINE_float('style_scale', d.style_scale, 'Style images are resized to '
                     'style_scale * image_size (longest side).')
  flags.DEFINE_list('style_blend_weights', None, 'One weight per style image (normalised).')
  flags.DEFINE_float('content_weight', d.content_weight, 'Content loss weight.')
  flags.DEFINE_float('style_weight', d.style_weight, 'Style loss weight (per layer).')
  flags.DEFINE_float('tv_weight', d.tv_weight, 'Total-variation weight.')
  flags.DEFINE_list('content_layers', list(d.content_layers), 'VGG19 content layers.')
  flags.DEFINE_list('style_layers', list(d.style_layers), 'VGG19 style layers.')
  flags.DEFINE_list('style_layer_weights', None, 'Per-style-layer factors (default all 1).')
  flags.DEFINE_enum('init', d.init, list(config_lib.INITS), 'random noise or the content image.')
  flags.DEFINE_string('init_image', None, 'Start from this image file instead.')
  flags.DEFINE_string('optimizer', d.optimizer, 'lbfgs, lbfgs_linesearch, adam, or optax:NAME.')
  flags.DEFINE_float('learning_rate', None, 'Step size (default 1 for L-BFGS, 10 for Adam).')
  flags.DEFINE_integer('lbfgs_history', d.lbfgs_history, 'L-BFGS history size.')
  flags.DEFINE_list('num_iterations', [str(n) for n in d.num_iterations],
                    'Iterations (one value, or one per scale).')
  flags.DEFINE_list('scales', None, 'Coarse-to-fine sizes, e.g. 256,512,1024 (overrides '
                    '--image_size).')
  flags.DEFINE_bool('normalize_gradients', d.normalize_gradients,
                    'L1-normalise each loss term\'s gradient (as the Lua original).')
  flags.DEFINE_enum('pooling', d.pooling, ['max', 'avg'], 'VGG pooling.')
  flags.DEFINE_bool('original_colors', d.original_colors,
                    'Keep the content\'s colours (post-hoc luminance transfer).')
  flags.DEFINE_enum('color', d.color, list(config_lib.COLORS),
                    'Colour control: luminance-only transfer or style colour matching.')
  flags.DEFINE_integer('seed', d.seed, 'Random seed for the noise init.')
  flags.DEFINE_integer('print_iter', d.print_iter, 'Progress line every N iterations (0: off).')
  flags.DEFINE_integer('save_iter', d.save_iter, 'Intermediate image every N iterations (0: off).')
  flags.DEFINE_integer('chunk_size', d.chunk_size, 'Most iterations per compiled chunk.')
  flags.DEFINE_string('weights', d.weights, 'Weight set name or .safetensors path.')
  flags.DEFINE_enum('precision', d.precision, list(config_lib.PRECISIONS),
                    'bfloat16: mixed precision convolutions (GPU/TPU).')
  flags.DEFINE_bool('remat', d.remat, 'Recompute activations in the backward pass '
                    '(less memory, more time).')


def _floats(name, values):
  if values is None:
    return None
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise config_lib.ConfigError(f'--{name} must be comma-separated numbers, got '
                                 f'{",".join(values)!r}') from None


def _ints(name, values):
  if values is None:
    return None
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise config_lib.ConfigError(f'--{name} must be comma-separated integers, got '
                                 f'{",".join(values)!r}') from None


def config_from_flags(**overrides) -> config_lib.StyleConfig:
  """Builds a validated StyleConfig from the parsed flags."""
  kw = dict(
      image_size=FLAGS.image_size, style_scale=FLAGS.style_scale,
      style_blend_weights=_floats('style_blend_weights', FLAGS.style_blend_weights),
      content_weight=FLAGS.content_weight, style_weight=FLAGS.style_weight,
      tv_weight=FLAGS.tv_weight, content_layers=tuple(FLAGS.content_layers),
      style_layers=tuple(FLAGS.style_layers),
      style_layer_weights=_floats('style_layer_weights', FLAGS.style_layer_weights),
      init=FLAGS.init, init_image=FLAGS.init_image, optimizer=FLAGS.optimizer,
      learning_rate=FLAGS.learning_rate, lbfgs_history=FLAGS.lbfgs_history,
      num_iterations=_ints('num_iterations', FLAGS.num_iterations),
      scales=_ints('scales', FLAGS.scales), normalize_gradients=FLAGS.normalize_gradients,
      pooling=FLAGS.pooling, original_colors=FLAGS.original_colors, color=FLAGS.color,
      seed=FLAGS.seed, print_iter=FLAGS.print_iter, save_iter=FLAGS.save_iter,
      chunk_size=FLAGS.chunk_size, weights=FLAGS.weights, precision=FLAGS.precision,
      remat=FLAGS.remat)
  kw.update(overrides)
  return config_lib.StyleConfig(**kw)


DEMO_CONTENT = 'chelsea.png'
DEMO_STYLE = 'hubble_deep_field.jpg'


def demo_images() -> tuple[np.ndarray, list[np.ndarray]]:
  """The demo's content and style, bundled in scikit-image's wheel (no download)."""
  try:
    import skimage
  except ImportError:
    raise config_lib.ConfigError('--demo needs scikit-image: pip install -e ".[demo]"') from None
  folder = Path(skimage.__file__).parent / 'data'
  content = image_io.load_image(folder / DEMO_CONTENT, what='demo content image')
  style = image_io.load_image(folder / DEMO_STYLE, what='demo style image')
  return content, [style]


def check_memory(content_hw, config) -> None:
  """Refuses a run whose estimated peak memory exceeds what is available."""
  budget = memory.available_bytes()
  if budget is None:
    return
  worst = 0
  for size in config.sizes:
    s = size / max(content_hw)
    h, w = max(1, round(content_hw[0] * s)), max(1, round(content_hw[1] * s))
    worst = max(worst, memory.estimate_peak_bytes(h, w, config))
  if worst > budget:
    fit = memory.largest_fitting_size(content_hw, config, budget)
    raise config_lib.ConfigError(
        f'this run needs about {worst / 2**30:.1f} GiB but {budget / 2**30:.1f} GiB is '
        f'available; use --image_size={fit} or less, or --scales ending at {fit}, or '
        '--optimizer=adam / a smaller --lbfgs_history, or --remat')
