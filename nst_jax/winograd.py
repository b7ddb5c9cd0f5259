"""3x3 convolutions by Winograd's minimal filtering, F(4x4, 3x3).

Lavin & Gray (2016), "Fast Algorithms for Convolutional Neural Networks":
each 4x4 block of outputs is computed from a 6x6 tile of the input as
``A^T [(G g G^T) * (B^T d B)] A``. Over a whole layer that turns the 3x3
convolution into 36 independent matrix products ``[tiles, Cin] x [Cin, Cout]``
(one per position in the 6x6 tile), with cheap additions before and after:
2.25x fewer multiplications than the direct convolution.

Why it is here: XLA's own CPU convolution reaches about the speed of its
float32 matrix products, so on CPU the 36 products plus the transforms beat
it on VGG19's wide layers (128 channels and more): measured on a 2-core Intel
Xeon at 512x384, 1.3x to 2x per layer for the forward and input-gradient pair;
on a 2-core AMD EPYC (Zen 4), forward alone, 1.8x at 96x128x256 and 2.8x at
48x64x512, even at 190x254x128; VGG19 forward and image gradient to relu5_1
at 512x384, 975 ms against XLA's 1492.
On the narrow early layers the transforms' memory traffic costs more than the
multiplications saved, and on GPUs cuDNN picks its own algorithms, so
``vgg.with_backward_kernels(params, winograd=True)`` attaches Winograd
kernels to the wide layers only (``wide_enough``), and the run loop asks for
them where ``enabled(config.conv_algorithm, config.precision)``.

The tiles are cut with reshapes and two concatenations, the transforms are
additions along one tile axis at a time, and the 36 products are one batched
``dot_general``: written as 36 strided slices and 36 separate products (the
first version) the same network took 13 s to compile instead of 3 s.

Accuracy: the transforms' constants (1/4, 1/6, 1/24, ...) cost some float32
precision. Against a float64 reference a layer's error is about 1e-5 of its
largest output, where XLA's direct convolution gives about 5e-7 (TF32 on a
GPU gives ~1e-3). Only for float32: in bfloat16 the error would be visible.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Interpolation points 0, 1, -1, 2, -2 and infinity.
_BT = np.array([[4, 0, -5, 0, 1, 0],
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1]], np.float64)
_G = np.array([[1 / 4, 0, 0],
               [-1 / 6, -1 / 6, -1 / 6],
               [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6],
               [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 1, 1, 0],
                [0, 1, -1, 2, -2, 0],
                [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float64)
M, T = 4, 6  # output block and input tile sizes

# Layers at least this wide on both sides gain from Winograd on CPU (see the
# module docstring): VGG19's conv2_2 and everything after it.
MIN_CHANNELS = 128


def enabled(algorithm: str, precision: str = 'float32') -> bool:
  """What ``StyleConfig.conv_algorithm`` means here: ``'auto'`` is Winograd on
  CPU in float32, where it is faster; ``'winograd'`` and ``'xla'`` mean themselves."""
  if algorithm == 'auto':
    return jax.default_backend() == 'cpu' and precision == 'float32'
  return algorithm == 'winograd'


def wide_enough(cin: int, cout: int) -> bool:
  """Whether a ``cin -> cout`` layer gains from Winograd (on CPU)."""
  return min(cin, cout) >= MIN_CHANNELS


# Below this many pixels per image a layer has too few tiles to pay for the
# transforms: measured forward+input gradient at 512 channels, XLA vs
# Winograd, 8.2 vs 11.3 ms at 6x8 and 18.8 vs 14.3 ms at 12x16.
MIN_PIXELS = 128


def large_enough(h: int, w: int) -> bool:
  """Whether an ``h`` x ``w`` feature map has enough tiles for Winograd to pay."""
  return h * w >= MIN_PIXELS


def kernel_transform(kernel: jax.Array) -> jax.Array:
  """``G g G^T`` for every (Cin, Cout) pair.

  Args:
    kernel: [3, 3, Cin, Cout] (HWIO).
  Returns:
    float32 [36, Cin, Cout]; entry ``6 r + s`` is tile position (r, s).
  """
  # As additions of the kernel's rows, then columns: the same einsum with a
  # constant [6, 3] matrix took 73 ms per 512x512 kernel on CPU, this 17 ms.
  u = _transform_axis(_G, _transform_axis(_G, kernel.astype(jnp.float32), 0), 1)
  return u.reshape(T * T, kernel.shape[2], kernel.shape[3])


def _combine(coeffs, terms):
  """``sum_k coeffs[k] * terms[k]`` for constant coefficients, zeros skipped."""
  out = None
  for c, t in zip(coeffs, terms):
    c = float(c)
    if c == 0.0:
      continue
    t = t if c == 1.0 else (-t if c == -1.0 else t * np.float32(c))
    out = t if out is None else out + t
  return out


def _tiles(xp: jax.Array, th: int, tw: int) -> jax.Array:
  """The overlapping 6x6 input tiles of ``xp``, [B, 4 th + 2, 4 tw + 2, C].

  Returns [B, th, 6, tw, 6, C]: tile (i, j) starts at row 4 i, column 4 j.
  Built from blocks of 4 plus the first 2 rows (columns) of the next block,
  a handful of reshapes and concatenations rather than 36 strided slices.
  """
  xp = jnp.pad(xp, ((0, 0), (0, 2), (0, 2), (0, 0)))
  b, _, wp, c = xp.shape
  head = xp[:, :M * th].reshape(b, th, M, wp, c)
  tail = xp[:, M:M * th + M].reshape(b, th, M, wp, c)[:, :, :T - M]
  rows = jnp.concatenate([head, tail], axis=2)  # [B, th, 6, Wp, C]
  head = rows[:, :, :, :M * tw].reshape(b, th, T, tw, M, c)
  tail = rows[:, :, :, M:M * tw + M].reshape(b, th, T, tw, M, c)[..., :T - M, :]
  return jnp.concatenate([head, tail], axis=4)


def _transform_axis(matrix: np.ndarray, x: jax.Array, axis: int) -> jax.Array:
  """``matrix @ x`` along ``axis``, written as additions of slices."""
  parts = [lax.index_in_dim(x, a, axis, keepdims=False) for a in range(x.shape[axis])]
  return jnp.stack([_combine(row, parts) for row in matrix], axis=axis)


def conv(x: jax.Array, u: jax.Array) -> jax.Array:
  """3x3 stride-1 convolution with zero padding 1 (SAME), no bias.

  Args:
    x: [B, H, W, Cin] float32, any H and W.
    u: ``kernel_transform(kernel)``, [36, Cin, Cout].
  Returns:
    [B, H, W, Cout] float32.
  """
  b, h, w, c = x.shape
  th, tw = -(-h // M), -(-w // M)
  # Pad 1 on top and left, and at the bottom and right 1 plus whatever
  # completes the last tile; the extra outputs are cropped at the end.
  xp = jnp.pad(x, ((0, 0), (1, th * M - h + 1), (1, tw * M - w + 1), (0, 0)))
  d = _tiles(xp, th, tw)
  v = _transform_axis(_BT, _transform_axis(_BT, d, 2), 4)  # B^T d B per tile
  v = v.transpose(2, 4, 0, 1, 3, 5).reshape(T * T, b * th * tw, c)
  # One batched product, [36, P, Cin] x [36, Cin, Cout]. 36 separate products
  # run at about the same speed but take 4x longer to compile.
  prods = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))),
                          precision=lax.Precision.HIGHEST)
  prods = prods.reshape(T, T, b, th, tw, -1)
  y = _transform_axis(_AT, _transform_axis(_AT, prods, 0), 1)  # A^T m A: [4, 4, B, th, tw, Co]
  y = y.transpose(2, 3, 0, 4, 1, 5).reshape(b, th * M, tw * M, -1)
  return y[:, :h, :w, :]


@jax.custom_vjp
def conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array, u: jax.Array,
            u_t: jax.Array) -> jax.Array:
  """``vgg.conv3x3`` by Winograd, the input gradient by Winograd as well.

  Args:
    x: [B, H, W, Cin] float32.
    kernel: [3, 3, Cin, Cout] (HWIO): only for the kernel gradient.
    bias: [Cout].
    u: ``kernel_transform(kernel)``.
    u_t: ``kernel_transform(vgg.backward_kernel(kernel))``, [36, Cout, Cin].
  Returns:
    [B, H, W, Cout]. The kernel gradient is exact (XLA's own convolution,
    dead code when only the image is differentiated); ``u`` and ``u_t`` are
    treated as constants.
  """
  del kernel, u_t
  return conv(x, u) + bias


def _conv3x3_fwd(x, kernel, bias, u, u_t):
  return conv3x3(x, kernel, bias, u, u_t), (x, kernel, u, u_t)


def _conv3x3_bwd(res, g):
  x, kernel, u, u_t = res
  dx = conv(g, u_t)
  _, vjp_kernel = jax.vjp(
      lambda k: lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=('NHWC', 'HWIO', 'NHWC')), kernel)
  (dk,) = vjp_kernel(g)
  return dx, dk, jnp.sum(g, axis=(0, 1, 2)), jnp.zeros_like(u), jnp.zeros_like(u_t)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)
