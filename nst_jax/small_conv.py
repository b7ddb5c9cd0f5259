"""The convolutions of the real-time networks, fast on XLA's CPU backend.

Every convolution of the conditional-instance-norm network (``cin_net``) and
of the arbitrary-style transformer (``arbitrary``) goes through this module:
``conv`` (a reflect pad of k // 2, then a VALID convolution), ``upsample_conv``
(the same after a nearest 2x upsampling), and, for the first two layers,
``conv_to_blocks`` and ``strided_conv_from_blocks``. The networks have 3-32
channels, where XLA's CPU convolution is fast on small images (~150 GFLOP/s
per core at 128x128) but four to ten times slower on large ones
(``../shared/notes/xla-cpu-small-convs.md``; ``benchmarks/realtime.py``).
On CPU, therefore, the same arithmetic is rearranged:

* **Row strips.** The output is computed a strip of rows at a time
  (``lax.map`` over (image, strip) pairs), each strip from its input rows
  plus a halo of k - stride rows. Strips of ~4k output pixels keep XLA on its
  fast path and bound the temporary memory of a large photograph; where a
  program sends XLA's convolutions to Eigen on all cores
  (``nst_jax.xla_cpu``), strips of 64k pixels are faster
  (``default_strip_pixels``). Padding
  (reflect or edge) is gathered strip by strip, so no padded copy of an
  activation is laid out (``jnp.pad``'s reflect copy alone cost ~1/3 of a
  layer).
* **Space-to-depth.** A 9x9 convolution with 3-8 input channels is a 5x5
  (3x3) convolution with 4x (16x) the channels on the image in 2x2 (4x4)
  blocks: output phase r and input phase s pick kernel tap f * dq + s - r,
  taps off the kernel are zero. 4x4 blocks for the last layer (-> 3 channels),
  2x2 for the first.
* **Blocks between the first two layers.** The first layer's full-resolution
  output stays in 2x2 blocks; the 3x3 stride-2 second layer reads them as a
  2x2 convolution over 4x the channels, and applies the first layer's
  instance norm (or bias) and ReLU strip by strip as it reads (``relu_of``):
  the largest activation of the network is written once and read twice
  (statistics, then the convolution).
* **Sub-pixel upsampling.** Nearest 2x upsampling then a reflect-padded 3x3
  convolution equals a 3x3 convolution on the edge-padded low-resolution
  image with 4x the output channels (one set per output phase), followed by
  depth-to-space: a quarter of the pixels, none of them duplicated.
* **Depthwise convolutions** (the arbitrary-style predictor's MobileNetV2):
  k * k shifted slices times per-channel weights, one elementwise fusion,
  instead of XLA's grouped convolution (7x faster for the whole predictor).

Every rewrite equals ``lax.conv_general_dilated`` on the padded input up to
float32 rounding (``tests/test_small_conv.py``), and so does its gradient:
``strip_conv`` has its own VJP, with strips as well (the kernel gradient as
an im2col matmul per strip, the input gradient as a strip convolution with
the flipped kernel), because differentiating the strips directly made a
training step ~14x slower. The rest (blocks, sub-pixel upsampling, the fused
instance norm) differentiates as written. Strips are per layer and
instance-norm statistics are over the whole image, so there are no seams.
On GPU and TPU (``jax.default_backend() != 'cpu'``) XLA's own convolution is
good at these shapes, and the plain formulation is
used; ``settings`` overrides the choice for tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')

# Output pixels per strip, by which library runs XLA's CPU convolutions.
# YNNPACK (jaxlib 0.10.2's default, one thread per convolution): below ~10k
# output pixels it stays fast for 8-128 channels (2-6x less CPU time than one
# call on 256^2 and larger); 4096 measured best for the whole 26-style
# network at 256^2 and 512^2.
STRIP_PIXELS = 4096
# Eigen on all cores (``nst_jax.xla_cpu.parallel_convolutions``): larger
# strips give each convolution more to share out; 65536 measured best for
# multistyle26 at 256^2-1024^2 and the arbitrary transformer (2026-12-05,
# swept with YNNPACK off altogether; not re-swept with its reductions kept).
PARALLEL_STRIP_PIXELS = 65536


# Trace-time choices, changed only through ``settings`` (tests and benchmarks).
_SETTINGS = {'fast': None, 'strip_pixels': None}


def default_strip_pixels() -> int:
  """Output pixels per strip for functions traced now.

  The ``settings`` override if any; else ``PARALLEL_STRIP_PIXELS`` where the
  process's ``XLA_FLAGS`` send convolutions to Eigen's thread pool
  (``nst_jax.xla_cpu``), ``STRIP_PIXELS`` otherwise.
  """
  if _SETTINGS['strip_pixels'] is not None:
    return _SETTINGS['strip_pixels']
  from nst_jax import xla_cpu
  return PARALLEL_STRIP_PIXELS if xla_cpu.convolutions_are_parallel() else STRIP_PIXELS


@contextlib.contextmanager
def settings(*, fast: bool | None = None,
             strip_pixels: int | None = None) -> Iterator[None]:
  """Overrides the plan while functions are traced inside the ``with`` block.

  Like ``jax.default_matmul_precision``, this acts when a function is traced:
  a function jitted earlier keeps the plan it was traced with.

  Args:
    fast: True or False forces the rewrites on or off (default: on for CPU).
    strip_pixels: output pixels per strip (default: ``default_strip_pixels()``);
      small values exercise the strips on small images.
  """
  if strip_pixels is not None and strip_pixels < 1:
    raise ValueError(f'strip_pixels must be positive, got {strip_pixels}')
  saved = dict(_SETTINGS)
  if fast is not None:
    _SETTINGS['fast'] = fast
  if strip_pixels is not None:
    _SETTINGS['strip_pixels'] = strip_pixels
  try:
    yield
  finally:
    _SETTINGS.update(saved)


def use_fast_path() -> bool:
  """True where the rewrites pay: XLA's CPU backend. GPU and TPU use the plain conv."""
  if _SETTINGS['fast'] is not None:
    return _SETTINGS['fast']
  return jax.default_backend() == 'cpu'


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  """Reflect-pads the two spatial axes of ``x`` [B, H, W, C] by ``pad`` each side."""
  if pad == 0:
    return x
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')


def upsample2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling of [B, H, W, C] to [B, 2H, 2W, C]."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


def valid_conv(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """The plain VALID convolution of [B, H, W, Cin] with an HWIO kernel."""
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), window_strides=(stride, stride), padding='VALID',
      dimension_numbers=_DIMENSIONS)


def conv(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """Reflect pad of k // 2, then a VALID convolution without bias.

  This is the convolution of Johnson et al. (2016) and Dumoulin et al.
  (2017): with an input side that is a multiple of ``stride``, the output side
  is the input side divided by ``stride``.

  Args:
    x: [B, H, W, Cin], with H and W > k // 2 (reflection needs that much image).
    kernel: [k, k, Cin, Cout] (HWIO), k odd; cast to the dtype of ``x``.
    stride: 1 or 2, the same along both axes.
  Returns:
    [B, (H - 1) // stride + 1, (W - 1) // stride + 1, Cout] in the dtype of ``x``.
  """
  kernel = kernel.astype(x.dtype)
  if not use_fast_path():
    return _plain_conv(x, kernel, stride)
  return _fast_conv(x, kernel, stride)


def _plain_conv(x, kernel, stride):
  return valid_conv(reflect_pad(x, kernel.shape[0] // 2), kernel, stride)


def _fast_conv(x, kernel, stride):
  k = kernel.shape[0]
  if k >= 7 and kernel.shape[2] <= 8 and stride == 1:
    # 4x4 blocks when 2x2 blocks would leave the convolution too few output
    # channels (the last layer, -> 3): measured 30-40% less CPU time there.
    f = 4 if 4 * kernel.shape[3] < 32 else 2
    return _space_to_depth_conv(reflect_pad(x, k // 2), kernel, f)
  p = k // 2
  return strip_conv(x, kernel, stride, pad=((p, p), (p, p)), mode='reflect')


def upsample_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``conv(upsample2x(x), kernel)``, computed on the low-resolution grid on CPU.

  Args:
    x: [B, H, W, Cin], H and W >= 1.
    kernel: [3, 3, Cin, Cout] (HWIO); other sizes take the plain route.
  Returns:
    [B, 2H, 2W, Cout] in the dtype of ``x``.
  """
  kernel = kernel.astype(x.dtype)
  if not use_fast_path() or kernel.shape[0] != 3 or min(x.shape[1:3]) < 2:
    return conv(upsample2x(x), kernel)
  return _fast_upsample_conv(x, kernel)


def _fast_upsample_conv(x, kernel):
  # Reflect-padding the upsampled image by 1 repeats its edge rows, which are
  # the low-resolution edge rows: the padded upsampled image is the upsampled
  # edge-padded image, less one row and column each side. Output phase r
  # (row 2q + r) reads upsampled rows 2q + r + 1 + t, t in 0..2, which are
  # edge-padded low-resolution rows q + (r + 1 + t) // 2.
  taps = np.zeros((2, 3, 3), np.float32)  # [phase r, low-res tap d, tap t]
  for r in range(2):
    for t in range(3):
      taps[r, (r + 1 + t) // 2, t] = 1.0
  taps = jnp.asarray(taps, x.dtype)
  cin, cout = kernel.shape[2:]
  low = jnp.einsum('rat,sbu,tuio->abirso', taps, taps, kernel,
                   precision=jax.lax.Precision.HIGHEST)
  low = low.reshape(3, 3, cin, 4 * cout)
  y = strip_conv(x, low, 1, pad=((1, 1), (1, 1)), mode='edge')
  return depth_to_space(y, 2)


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """Depthwise convolution with TensorFlow "SAME" zero padding (MobileNetV2's).

  On CPU, XLA's grouped convolution (``feature_group_count`` = channels) is
  slow; the same sum is written as k * k shifted, strided slices times a
  per-channel weight, which XLA fuses into one elementwise loop.

  Args:
    x: [B, H, W, C].
    kernel: [k, k, 1, C] (HWIO with one input channel per group).
    stride: the same along both axes.
  Returns:
    [B, ceil(H / stride), ceil(W / stride), C] in the dtype of ``x``.
  """
  kernel = kernel.astype(x.dtype)
  k, _, _, c = kernel.shape
  if not use_fast_path():
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding='SAME',
        dimension_numbers=_DIMENSIONS, feature_group_count=c)
  total = None
  for (i, j), tap in same_taps(x, k, stride):
    term = tap * kernel[i, j, 0]
    total = term if total is None else total + term
  return total


def same_taps(x: jax.Array, k: int, stride: int = 1):
  """The ``k * k`` shifted, strided views of ``x`` that a k x k convolution with
  TensorFlow "SAME" zero padding (extra padding at the bottom and right) sums.

  Returns:
    ``[((i, j), view)]`` in kernel order; each view is [B, ceil(H / stride),
    ceil(W / stride), C].
  """
  _, h, w, _ = x.shape
  out_h, out_w = -(-h // stride), -(-w // stride)
  pad_h = max((out_h - 1) * stride + k - h, 0)
  pad_w = max((out_w - 1) * stride + k - w, 0)
  x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                  (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
  return [((i, j), x[:, i:i + stride * (out_h - 1) + 1:stride,
                     j:j + stride * (out_w - 1) + 1:stride])
          for i in range(k) for j in range(k)]


def _source_index(size: int, before: int, length: int, mode: str) -> np.ndarray:
  """Which of ``size`` rows feeds each of ``length`` rows of the padded axis.

  Row ``i`` of the padded axis is source row ``i - before``, reflected
  (``reflect``, as ``jnp.pad``) or clamped (``edge``) into range. Rows past
  the padded extent (strips rounded up) are clamped: they feed only outputs
  that are cropped off, or kernel taps that are zero.
  """
  i = np.arange(length) - before
  if mode == 'reflect':
    i = np.abs(i)
    i = np.where(i > size - 1, 2 * (size - 1) - i, i)
  elif mode != 'edge':
    raise ValueError(f"mode must be 'reflect' or 'edge', got {mode!r}")
  return np.clip(i, 0, size - 1).astype(np.int32)


def strip_conv(x: jax.Array, kernel: jax.Array, stride: int = 1, *,
               pad: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0)),
               mode: str = 'reflect',
               relu_of: tuple[jax.Array, jax.Array, jax.Array] | None = None,
               strip_pixels: int | None = None) -> jax.Array:
  """Pad, then ``valid_conv``, computed one strip of output rows at a time.

  Every (image, strip) pair is one step of a ``lax.map``. A strip gathers its
  input rows plus a halo of k - stride rows, padded on the way (reflected or
  repeated rows and columns), so the padded image is never laid out and the
  result is exactly the convolution of the whole padded image (no seams).

  The gradient is computed with strips too (a custom VJP, see
  ``_strip_conv_backward``): differentiating the strips directly would make
  every strip's gathered window add into a whole-image cotangent.

  Args:
    x: [B, H, W, Cin].
    kernel: [kh, kw, Cin, Cout] (HWIO).
    stride: the same along both axes.
    pad: ((top, bottom), (left, right)) rows and columns of padding.
    mode: ``reflect`` or ``edge``, as for ``jnp.pad``.
    relu_of: ``(subtract, multiply, add)``, each [B, Cin], or None: if given,
      the input is ``relu((x - subtract) * multiply + add)`` (an instance
      norm or a bias, then ReLU), applied strip by strip; padding commutes
      with it.
    strip_pixels: output pixels per strip (default: the ``settings`` value).
  Returns:
    [B, (H + top + bottom - kh) // stride + 1, (W + left + right - kw) // stride + 1,
    Cout].
  """
  if mode not in ('reflect', 'edge'):
    raise ValueError(f"mode must be 'reflect' or 'edge', got {mode!r}")
  x = jnp.asarray(x)
  kernel = kernel.astype(x.dtype)
  b, _, _, cin = x.shape
  terms = ()
  if relu_of is not None:
    terms = tuple(jnp.broadcast_to(t, (b, cin)).astype(x.dtype) for t in relu_of)
  pixels = default_strip_pixels() if strip_pixels is None else strip_pixels
  (top, bottom), (left, right) = pad
  plan = _Strips(stride, ((top, bottom), (left, right)), mode, pixels)
  return _strip_conv(plan, x, kernel, *terms)


class _Strips(NamedTuple):
  """The static part of a strip convolution: how it pads and cuts."""
  stride: int
  pad: tuple[tuple[int, int], tuple[int, int]]
  mode: str
  pixels: int


class _Layout(NamedTuple):
  """Where each strip reads: ``num`` strips of ``rows`` output rows per image."""
  out_h: int
  out_w: int
  rows: int
  num: int
  row_index: np.ndarray  # [num, in_rows]: source row of each padded window row
  col_index: np.ndarray | None  # [W + left + right] or None without column padding


def _layout(plan: _Strips, h: int, w: int, kh: int, kw: int) -> _Layout:
  (top, bottom), (left, right) = plan.pad
  stride = plan.stride
  out_h = (h + top + bottom - kh) // stride + 1
  out_w = (w + left + right - kw) // stride + 1
  rows = max(1, min(out_h, plan.pixels // max(out_w, 1)))
  num = -(-out_h // rows)
  rows = -(-out_h // num)  # the same number of strips, as even as they go
  in_rows = stride * (rows - 1) + kh
  row_index = np.stack([_source_index(h, top - strip * rows * stride, in_rows, plan.mode)
                        for strip in range(num)])
  col_index = _source_index(w, left, w + left + right, plan.mode) if left or right else None
  return _Layout(out_h, out_w, rows, num, row_index, col_index)


def _relu_of(x, subtract, multiply, add):
  """``relu((x - subtract) * multiply + add)``: the ``relu_of`` terms, broadcast against ``x``."""
  return jax.nn.relu((x - subtract) * multiply + add)


def _activation(x, subtract, multiply, add):
  """``relu_of`` applied to the whole of ``x`` [B, H, W, C]; the terms are [B, C]."""
  return _relu_of(x, subtract[:, None, None], multiply[:, None, None], add[:, None, None])


def _window(x, layout, image, strip, terms):
  """The padded input rows of one strip: [in_rows, W + left + right, Cin]."""
  window = x[image, jnp.asarray(layout.row_index)[strip]]
  if layout.col_index is not None:
    window = window[:, layout.col_index]
  if terms:
    window = _relu_of(window, *(t[image] for t in terms))
  return window


def _map_strips(fn, count, *xs):
  """``lax.map`` of ``fn`` over strip indices 0..count - 1 (and ``xs``), a call if one."""
  index = jnp.arange(count)
  if count == 1:
    return jax.tree.map(lambda y: y[None], fn(index[0], *(t[0] for t in xs)))
  return jax.lax.map(lambda args: fn(*args), (index, *xs))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _strip_conv(plan, x, kernel, *terms):
  b, h, w, _ = x.shape
  layout = _layout(plan, h, w, *kernel.shape[:2])

  def one_strip(index):
    window = _window(x, layout, index // layout.num, index % layout.num, terms)
    return valid_conv(window[None], kernel, plan.stride)[0]

  y = _map_strips(one_strip, b * layout.num)  # [B * num, rows, out_w, Cout]
  y = y.reshape(b, layout.num * layout.rows, layout.out_w, y.shape[-1])
  return y[:, :layout.out_h]


def _strip_conv_forward(plan, x, kernel, *terms):
  return _strip_conv(plan, x, kernel, *terms), (x, kernel, terms)


def _strip_conv_backward(plan, residuals, dy):
  """The VJP of ``_strip_conv``, with strips.

  * Kernel: each strip's padded window is cut into its kh * kw shifted
    (strided) views, side by side along channels (im2col, [strip pixels,
    kh kw Cin]), and contracted with the strip's output gradient; the
    strips' [kh kw Cin, Cout] products are summed.
  * Input, stride 1: the gradient of the padded input is the "full"
    correlation of the output gradient with the flipped kernel, itself a
    strip convolution (of the zero-padded output gradient); the padding is
    then folded back onto the rows and columns it was copied from (the
    transpose of ``jnp.pad``). Stride 2 (one small layer per network) uses
    XLA's transpose of the plain convolution.
  * ``relu_of``: the activation is computed whole, and its terms get their
    gradients by ordinary autodiff.
  """
  x, kernel, terms = residuals
  if terms:
    a, activation_vjp = jax.vjp(_activation, x, *terms)
  else:
    a = x
  da = _input_gradient(plan, dy, kernel, a.shape)
  dk = _kernel_gradient(plan, a, dy, kernel.shape)
  if terms:
    dx, *dterms = activation_vjp(da)
    return (dx, dk, *dterms)
  return da, dk


_strip_conv.defvjp(_strip_conv_forward, _strip_conv_backward)


def _kernel_gradient(plan, a, dy, kernel_shape):
  kh, kw, cin, cout = kernel_shape
  b, h, w, _ = a.shape
  layout = _layout(plan, h, w, kh, kw)
  rows, num, out_w, s = layout.rows, layout.num, layout.out_w, plan.stride
  # Output rows rounded up to whole strips are zero: they contribute nothing.
  dy = jnp.pad(dy, ((0, 0), (0, num * rows - layout.out_h), (0, 0), (0, 0)))
  dy = dy.reshape(b * num, rows * out_w, cout)

  def one_strip(index, dy_strip):
    window = _window(a, layout, index // num, index % num, ())
    views = [window[i:i + s * (rows - 1) + 1:s, j:j + s * (out_w - 1) + 1:s]
             for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(views, axis=-1).reshape(rows * out_w, kh * kw * cin)
    return jax.lax.dot_general(patches, dy_strip, (((0,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32)

  dk = jnp.sum(_map_strips(one_strip, b * num, dy), axis=0)
  return dk.reshape(kernel_shape).astype(a.dtype)


def _input_gradient(plan, dy, kernel, shape):
  (top, bottom), (left, right) = plan.pad
  padding = ((0, 0), (top, bottom), (left, right), (0, 0))

  def pad(a):
    return jnp.pad(a, padding, mode=plan.mode) if top or bottom or left or right else a

  kh, kw = kernel.shape[:2]
  b, h, w, cin = shape
  if plan.stride != 1:
    plain = lambda a: valid_conv(pad(a), kernel, plan.stride)
    return jax.linear_transpose(plain, jax.ShapeDtypeStruct(shape, dy.dtype))(dy)[0]
  flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
  dy = jnp.pad(dy, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
  dpadded = strip_conv(dy, flipped, 1, strip_pixels=plan.pixels)
  # Rows of the padded input past h + top + bottom (none at stride 1) are not read.
  dpadded = dpadded[:, :h + top + bottom, :w + left + right]
  return jax.linear_transpose(pad, jax.ShapeDtypeStruct(shape, dy.dtype))(dpadded)[0]


def space_to_depth(x: jax.Array, f: int) -> jax.Array:
  """[B, H, W, C] -> [B, H / f, W / f, f * f * C], channels ordered (row phase, column phase, C)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // f, f, w // f, f, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // f, w // f, f * f * c)


def depth_to_space(x: jax.Array, f: int) -> jax.Array:
  """The inverse of ``space_to_depth``: [B, H, W, f * f * C] -> [B, f H, f W, C]."""
  b, h, w, c = x.shape
  c //= f * f
  x = x.reshape(b, h, w, f, f, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * f, w * f, c)


def space_to_depth_kernel(kernel: jax.Array, f: int) -> jax.Array:
  """The stride-1 kernel [k, k, Cin, Cout] as one on the f x f blocked grid.

  Output phase r and input phase s of a block select tap ``f * dq + s - r``
  (zero where that is off the kernel).

  Returns:
    [k', k', f * f * Cin, f * f * Cout] with k' = (k + 2 f - 2) // f, channels
    ordered as ``space_to_depth`` orders them.
  """
  k, _, cin, cout = kernel.shape
  size = (k + 2 * f - 2) // f
  index = np.zeros((size, f, f), np.int64)  # [dq, s, r] -> tap, k meaning zero
  for dq in range(size):
    for s in range(f):
      for r in range(f):
        t = f * dq + s - r
        index[dq, s, r] = t if 0 <= t < k else k
  padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
  big = padded[index[:, None, :, None, :, None], index[None, :, None, :, None, :]]
  # [dq, dp, s_h, s_w, r_h, r_w, Cin, Cout] -> [dq, dp, (s_h, s_w, Cin), (r_h, r_w, Cout)]
  big = big.transpose(0, 1, 2, 3, 6, 4, 5, 7)
  return big.reshape(size, size, f * f * cin, f * f * cout)


def _space_to_depth_conv(x, kernel, f):
  """Stride-1 VALID conv of padded ``x`` through the f x f blocked grid."""
  out_h, out_w = x.shape[1] - kernel.shape[0] + 1, x.shape[2] - kernel.shape[1] + 1
  y = _blocked_conv(x, kernel, f)
  return depth_to_space(y, f)[:, :out_h, :out_w]


def _blocked_conv(x, kernel, f):
  """Stride-1 VALID conv of padded ``x``, left in f x f blocks.

  Returns:
    [B, ceil(out_h / f), ceil(out_w / f), f * f * Cout]; blocks that run past
    the output hold values to be cropped.
  """
  k = kernel.shape[0]
  out_h, out_w = x.shape[1] - k + 1, x.shape[2] - k + 1
  big = space_to_depth_kernel(kernel, f)
  size = big.shape[0]
  # Blocked output rows q read blocked input rows q .. q + size - 1: pad (or
  # crop) the input to exactly that many rows and columns. The padding only
  # meets zero taps or outputs that are cropped off.
  blocks_h, blocks_w = -(-out_h // f), -(-out_w // f)
  need_h, need_w = f * (blocks_h + size - 1), f * (blocks_w + size - 1)
  x = x[:, :need_h, :need_w]
  x = jnp.pad(x, ((0, 0), (0, need_h - x.shape[1]), (0, need_w - x.shape[2]), (0, 0)))
  # Each blocked pixel is f * f image pixels.
  strip_pixels = max(1, default_strip_pixels() // (f * f))
  return strip_conv(space_to_depth(x, f), big, 1, strip_pixels=strip_pixels)


# Full-resolution layers in 2x2 blocks. The first layer of both networks is a
# 9x9 convolution at full resolution, followed by a per-channel operation
# (instance norm or bias, then ReLU) and a 3x3 stride-2 convolution. Done in
# 2x2 blocks, neither the full-resolution activation nor its reflect-padded
# copy is ever laid out: the 9x9 convolution writes blocks, and the stride-2
# convolution reads them as a 2x2 convolution over 4x the channels.
#
# Blocks are stored as [B, H / 2, 2 W, C]: for each row of blocks, the four
# pixels of each block (row phase, column phase) one after another. Every
# pixel appears once, so anything per channel (instance-norm statistics over
# axes 1 and 2, a bias, a ReLU) can be applied to the blocks as to the image.


def conv_to_blocks(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``conv(x, kernel)`` (stride 1), returned in 2x2 blocks.

  Args:
    x: [B, H, W, Cin], H and W even.
    kernel: [k, k, Cin, Cout] (HWIO), k odd.
  Returns:
    [B, H / 2, 2 W, Cout]: the blocks of the [B, H, W, Cout] result (see
    ``blocks_to_image``).
  """
  b, h, w, _ = x.shape
  if h % 2 or w % 2:
    raise ValueError(f'x must have even height and width, got shape {x.shape}')
  kernel = kernel.astype(x.dtype)
  if not use_fast_path():
    return _plain_conv_to_blocks(x, kernel)
  return _fast_conv_to_blocks(x, kernel)


def _plain_conv_to_blocks(x, kernel):
  b, h, w, _ = x.shape
  y = space_to_depth(_plain_conv(x, kernel, 1), 2)
  return y.reshape(b, h // 2, 2 * w, kernel.shape[-1])


def _fast_conv_to_blocks(x, kernel):
  b, h, w, _ = x.shape
  y = _blocked_conv(reflect_pad(x, kernel.shape[0] // 2), kernel, 2)
  return y.reshape(b, h // 2, 2 * w, kernel.shape[-1])


def blocks_to_image(blocks: jax.Array) -> jax.Array:
  """[B, H / 2, 2 W, C] blocks (from ``conv_to_blocks``) -> the [B, H, W, C] image."""
  b, hb, w2, c = blocks.shape
  return depth_to_space(blocks.reshape(b, hb, w2 // 4, 4 * c), 2)


def strided_conv_from_blocks(blocks: jax.Array, kernel: jax.Array, *,
                             relu_of: tuple[jax.Array, jax.Array, jax.Array] | None = None
                             ) -> jax.Array:
  """``conv(blocks_to_image(blocks), kernel, stride=2)`` for a 3x3 kernel, without the image.

  Output row q reads image rows 2q - 1, 2q, 2q + 1 of the reflect-padded image,
  which are phase 1 of block row q - 1 and both phases of block row q; the
  reflected row -1 is image row 1, phase 1 of block row 0, so padding the
  blocks by repeating their first row and column is exact. The 3x3 stride-2
  kernel becomes a 2x2 kernel over the 4 C channels of the blocks.

  Args:
    blocks: [B, H / 2, 2 W, Cin].
    kernel: [3, 3, Cin, Cout] (HWIO).
    relu_of: ``(subtract, multiply, add)``, each [B, Cin], or None: if given,
      the convolution reads ``relu((blocks - subtract) * multiply + add)``,
      computed strip by strip (an instance norm, see ``instance_norm_terms``,
      or a bias, then ReLU), so that the activation is never laid out.
  Returns:
    [B, H / 2, W / 2, Cout].
  """
  b, hb, w2, cin = blocks.shape
  kernel = kernel.astype(blocks.dtype)
  if kernel.shape[:2] != (3, 3):
    raise ValueError(f'kernel must be 3x3, got shape {kernel.shape}')
  terms = ()
  if relu_of is not None:
    terms = tuple(jnp.broadcast_to(jnp.asarray(t), (b, cin)).astype(blocks.dtype)
                  for t in relu_of)
  if not use_fast_path():
    return _plain_strided_conv_from_blocks(blocks, kernel, *terms)
  return _fast_strided_conv_from_blocks(blocks, kernel, *terms)


def _plain_strided_conv_from_blocks(blocks, kernel, *terms):
  if terms:
    blocks = _activation(blocks, *terms)
  return _plain_conv(blocks_to_image(blocks), kernel, 2)


def _fast_strided_conv_from_blocks(blocks, kernel, *terms):
  b, hb, w2, cin = blocks.shape
  x = blocks.reshape(b, hb, w2 // 4, 4 * cin)
  terms = [jnp.tile(t, (1, 4)) for t in terms] or None  # the same in each phase
  index = np.array([[3, 0], [1, 2]])  # [block offset dq, phase s] -> tap 2 dq + s - 1; 3: zero
  padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
  big = padded[index[:, None, :, None], index[None, :, None, :]]  # [dq, dp, s_h, s_w, Cin, Cout]
  big = big.reshape(2, 2, 4 * cin, kernel.shape[-1])
  return strip_conv(x, big, 1, pad=((1, 0), (1, 0)), mode='edge', relu_of=terms)


def instance_norm_terms(x: jax.Array, gamma: jax.Array, beta: jax.Array,
                        eps: float = 1e-5) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(mean, gamma / sqrt(var + eps), beta)`` [B, C] of an instance norm of ``x``.

  The statistics of ``nst_jax.cin_net.instance_norm`` (float32 mean and biased
  variance over axes 1 and 2), for ``relu_of``: ``(x - mean) * scale + beta``
  is that instance norm.

  Args:
    x: [B, H, W, C] (or 2x2 blocks of an image, which have its statistics).
    gamma, beta: [B, C] or [C].
    eps: added to the variance.
  """
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=(1, 2))
  var = jnp.mean(jnp.square(x32 - mean[:, None, None]), axis=(1, 2))
  scale = jax.lax.rsqrt(var + eps) * jnp.asarray(gamma, jnp.float32)
  return mean, scale, jnp.broadcast_to(jnp.asarray(beta, jnp.float32), scale.shape)
