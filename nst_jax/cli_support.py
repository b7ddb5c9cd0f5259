"""Shared pieces of the absl-flag scripts: style flags, input checks, errors, caches.

Every check a script makes before computing (images readable, sizes large
enough, memory sufficient, outputs writable) lives here, so that a bad input
is refused with one line before the weights are loaded or anything compiles.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import flags
from PIL import Image

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
# Largest image (in pixels) the scripts decode; Pillow's default guards against
# decompression bombs (about 89 Mpx, refused outright over twice that). Set it
# to read a larger trusted file, or lower it (the tests do) to exercise the
# check with small files.
MAX_PIXELS_ENV = 'NST_JAX_MAX_IMAGE_PIXELS'


def fail(message: str) -> int:
  """Prints ``error: MESSAGE`` as one line on stderr; returns exit status 1."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
  return 1


def _show_warning(message, category, filename, lineno, file=None, line=None):
  del category, filename, lineno, line
  print(f'warning: {" ".join(str(message).split())}', file=file or sys.stderr, flush=True)


def show_warnings_on_one_line() -> None:
  """Python warnings print as ``warning: MESSAGE`` (no source file or line)."""
  warnings.showwarning = _show_warning


def apply_env_overrides() -> None:
  """Applies ``$NST_JAX_MAX_IMAGE_PIXELS`` to Pillow's decompression-bomb limit."""
  value = os.environ.get(MAX_PIXELS_ENV)
  if not value:
    return
  try:
    limit = int(value)
  except ValueError:
    limit = 0
  if limit <= 0:
    raise config_lib.ConfigError(f'${MAX_PIXELS_ENV} must be a positive number of pixels, '
                                 f'got {value!r}; unset it for the default')
  Image.MAX_IMAGE_PIXELS = limit


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
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
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


def _parse_list(name, values, kind, what):
  if values is None:
    return None
  try:
    return tuple(kind(v) for v in values)
  except ValueError:
    raise config_lib.ConfigError(f'--{name} must be comma-separated {what}, got '
                                 f'{",".join(values)!r}') from None


def _floats(name, values):
  return _parse_list(name, values, float, 'numbers')


def _ints(name, values):
  return _parse_list(name, values, int, 'integers')


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
DEMO_STYLE = 'ihc.png'  # immunohistochemistry stain: a painterly texture


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


def load_image(path, what: str) -> np.ndarray:
  """``image_io.load_image``, with the way to lift the bomb limit from the shell."""
  try:
    return image_io.load_image(path, what=what)
  except image_io.ImageError as e:
    if 'decompression bomb' in str(e):
      raise image_io.ImageError(f'{e} (set {MAX_PIXELS_ENV}=PIXELS)') from None
    raise


def check_sizes(content_hw, style_hws: Sequence[tuple[int, int]], config) -> None:
  """Refuses, from the shapes alone, an image too small for the deepest layer."""
  from nst_jax import transfer as st  # Imports JAX; the flags are checked first.
  for size in config.sizes:
    st.check_size(memory.scaled_hw(content_hw, size), config, 'the content image')
    for i, hw in enumerate(style_hws):
      st.check_size(memory.scaled_hw(hw, memory.style_size(size, config)), config,
                    f'style image {i + 1}')


def check_memory(content_hw, config, style_hws: Sequence[tuple[int, int]] = (),
                 budget: int | None = None) -> None:
  """Refuses a run whose estimated peak memory exceeds what is available.

  Works on shapes only, so even an absurd ``--image_size`` is refused at
  once, before any image is resized.

  Args:
    content_hw: (height, width) of the content image as loaded.
    config: the run's StyleConfig.
    style_hws: (height, width) of each style image as loaded.
    budget: bytes available (default: ``memory.available_bytes()``).
  Raises:
    ConfigError: with the estimate and the largest ``--image_size`` that fits.
  """
  budget = memory.available_bytes() if budget is None else budget
  if budget is None:
    return
  worst = memory.run_peak_bytes(content_hw, config, style_hws)
  if worst > budget:
    fit = memory.largest_fitting_size(content_hw, config, budget, style_hws)
    if fit is None:
      raise config_lib.ConfigError(
          f'this run needs about {worst / 2**30:.1f} GiB of memory but only '
          f'{budget / 2**30:.1f} GiB is available, too little even for the smallest image; '
          'free some memory')
    raise config_lib.ConfigError(
        f'this run needs about {worst / 2**30:.1f} GiB of memory but {budget / 2**30:.1f} GiB '
        f'is available; use --image_size={fit} or less (or --scales ending at {fit}), or '
        '--optimizer=adam / a smaller --lbfgs_history, or --remat')


def load_inputs(content, styles, config) -> tuple[np.ndarray, list[np.ndarray]]:
  """Loads and checks every input of a run before the weights or any compilation.

  Checks, in order of cost: each image decodes, one blend weight per style,
  the init image decodes, every scale is large enough for the deepest layer,
  the run fits in memory, and the images prepare at every scale.

  Args:
    content: path, or an RGB array [H, W, 3] in [0, 1] (the demo's).
    styles: paths or RGB arrays.
    config: the validated StyleConfig.
  Returns:
    (content RGB [H, W, 3], list of style RGB arrays), float32 in [0, 1].
  Raises:
    One of ``USER_ERRORS``, naming the file or flag.
  """
  from nst_jax import transfer as st

  def load(image, what):
    return load_image(image, what) if isinstance(image, (str, os.PathLike)) else image

  content_rgb = load(content, 'content image')
  style_rgbs = [load(s, f'style image {i + 1}') for i, s in enumerate(styles)]
  if not style_rgbs:
    raise config_lib.ConfigError(
        '--style_image is required (one or more files, comma-separated)')
  blend = config.style_blend_weights
  if blend is not None and len(blend) != len(style_rgbs):
    raise config_lib.ConfigError(
        f'--style_blend_weights has {len(blend)} values for {len(style_rgbs)} style '
        'image(s); give one weight per style image')
  if config.init_image:
    load_image(config.init_image, 'init image')
  style_hws = [s.shape[:2] for s in style_rgbs]
  check_sizes(content_rgb.shape[:2], style_hws, config)
  check_memory(content_rgb.shape[:2], config, style_hws)
  for size in config.sizes:  # Cheap now that the sizes are known to be sane.
    st.prepare_images(content_rgb, style_rgbs, size, config)
  return content_rgb, style_rgbs


def resume_state(path) -> tuple[config_lib.StyleConfig, dict]:
  """``stylize.resume_state`` for a checkpoint written by ``scripts/stylize.py``.

  Raises:
    ConfigError: naming ``--resume`` for any unreadable, damaged or foreign file.
  """
  from nst_jax import transfer as st
  if not os.path.isfile(path):
    what = 'is a directory' if os.path.isdir(path) else 'not found'
    raise config_lib.ConfigError(
        f'--resume {str(path)!r} {what}; pass the .ckpt.npz file that an interrupted run '
        'named when it stopped')
  try:
    config, resume = st.resume_state(path)
    meta = resume['meta']
    missing = [k for k in ('content', 'styles', 'output') if k not in meta]
    if missing:
      raise KeyError(', '.join(missing))
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(e if str(e).startswith('--resume') else
                                 f'--resume {str(path)!r}: {e}') from None
  # A damaged file fails in zipfile, json, numpy or pickle, each with its own
  # exception types; at this boundary they all mean the same to the user.
  except Exception as e:  # pylint: disable=broad-except
    detail = ' '.join(str(e).split()) or type(e).__name__
    raise config_lib.ConfigError(
        f'--resume {str(path)!r} is not a readable nst_jax checkpoint ({type(e).__name__}: '
        f'{detail}); pass the .ckpt.npz file written when a run was interrupted') from None
  return config, resume


def check_writable_file(path, flag: str) -> None:
  """Checks, creating nothing, that a file can be written at ``path`` (any extension).

  Raises:
    ConfigError: ``path`` is a directory, or the nearest existing folder above
      it is a file or not writable; the message names ``--flag``.
  """
  shown = f'--{flag} {str(path)!r}'
  target = os.path.abspath(path)
  if os.path.isdir(target):
    raise config_lib.ConfigError(f'{shown} is a directory; pass a file name')
  ancestor = os.path.dirname(target)
  while not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise config_lib.ConfigError(f'{shown}: {ancestor!r} is a file, not a folder; choose '
                                 'another path')
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise config_lib.ConfigError(f'{shown}: the folder {ancestor!r} is not writable; choose a '
                                 'folder you can write to')


def check_optimizer(config) -> None:
  """Refuses an ``--optimizer=optax:NAME`` that is not an optimizer of one image.

  ``optax:NAME`` may name any callable in optax; tracing one step on a tiny
  abstract image (nothing is computed) catches ``optax:chain``,
  ``optax:apply_updates`` or ``optax:lbfgs`` (which needs the loss function)
  before anything runs.
  """
  if not config.optimizer.startswith('optax:'):
    return
  import jax
  from nst_jax import transfer as st

  def step(x):
    optimizer = st.make_optimizer(config)
    return optimizer.update(x, optimizer.init(x), x)

  try:
    jax.eval_shape(step, jax.ShapeDtypeStruct((8, 8, 3), np.float32))
  except Exception as e:  # pylint: disable=broad-except
    detail = (str(e).strip().splitlines() or [''])[0][:160] or type(e).__name__
    raise config_lib.ConfigError(
        f'--optimizer {config.optimizer!r} cannot optimise an image ({type(e).__name__}: '
        f'{detail}); use lbfgs, lbfgs_linesearch, adam, or an optax optimizer that takes a '
        'learning rate, such as optax:sgd or optax:adamw') from None


def check_weights_name(name: str) -> None:
  """Refuses at once a ``--weights`` that names no file and no known weight set."""
  names = ', '.join(weights_lib.SOURCES)
  if name.endswith('.safetensors') or os.sep in name:  # As weights.load tells them apart.
    if not os.path.isfile(name):
      what = 'is a directory' if os.path.isdir(name) else 'not found'
      raise weights_lib.WeightsError(
          f'--weights {name!r} {what}; pass a .safetensors file written by '
          f'scripts/port_weights.py, or one of the names {names}')
  elif name not in weights_lib.SOURCES:
    raise weights_lib.WeightsError(f'--weights: unknown weight set {name!r}; choose one of '
                                   f'{names} or give a .safetensors path')


def load_weights(name: str) -> weights_lib.WeightSet:
  """``weights.load`` with ``--weights`` named in the error."""
  check_weights_name(name)
  try:
    return weights_lib.load(name)
  except weights_lib.WeightsError as e:
    raise weights_lib.WeightsError(f'--weights {name!r}: {e}') from None


def save_or_rescue(path, image: np.ndarray) -> str:
  """Saves ``image`` at ``path``; if that fails, in ``cache_dir()/rescued`` instead.

  A long run's result should not be lost to a full disk or a folder that
  went away while it ran.

  Returns:
    ``path``.
  Raises:
    image_io.ImageError: ``path`` could not be written; the message says
      where the image was saved instead, if anywhere.
  """
  try:
    image_io.save_image(path, image)
    return os.fspath(path)
  except image_io.ImageError as e:
    error = e
  rescue = cache_dir() / 'rescued' / f'{Path(path).stem}-{time.strftime("%Y%m%d-%H%M%S")}.png'
  try:
    image_io.save_image(rescue, image)
  except image_io.ImageError:
    raise error from None
  raise image_io.ImageError(f'{error}; the image was saved to {str(rescue)!r} '
                            'instead') from None
