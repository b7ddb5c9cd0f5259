"""The CPU rewrites of nst_jax.small_conv against the plain lax convolution.

Reference: ``lax.conv_general_dilated`` on the reflect-padded (or upsampled,
then padded) input, float32 at HIGHEST precision. Tolerance: max relative
error 1e-5 (the rewrites reorder float32 sums; measured ~1e-6).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import cin_net
from nst_jax import small_conv

TOL = 1e-5


def _reference(x, kernel, stride=1):
  k = kernel.shape[0]
  padded = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode='reflect')
  return jax.lax.conv_general_dilated(
      padded, kernel, (stride, stride), 'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=jax.lax.Precision.HIGHEST)


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(b).max()


def _random(rng, *shape):
  return rng.standard_normal(shape).astype(np.float32)


# (batch, height, width, kernel, in, out, stride): the layers of both networks
# (W = 32 and the arbitrary transformer's 8/16/32), odd sizes, batch > 1.
CONV_SHAPES = [
    (1, 24, 20, 9, 3, 32, 1),
    (2, 17, 13, 9, 3, 8, 1),
    (1, 16, 16, 3, 32, 32, 2),
    (2, 21, 19, 3, 8, 16, 2),
    (1, 11, 9, 3, 16, 32, 2),
    (1, 9, 11, 3, 32, 32, 1),
    (3, 12, 10, 3, 32, 8, 1),
    (1, 15, 15, 9, 4, 3, 1),
    (2, 14, 12, 9, 8, 3, 1),
]


@pytest.mark.parametrize('strip_pixels', [24])
@pytest.mark.parametrize('shape', CONV_SHAPES, ids=str)
def test_conv_equals_plain_conv(shape, strip_pixels):
  b, h, w, k, cin, cout, stride = shape
  rng = np.random.default_rng(0)
  x, kernel = _random(rng, b, h, w, cin), _random(rng, k, k, cin, cout)
  with small_conv.settings(fast=True, strip_pixels=strip_pixels):
    got = small_conv.conv(x, kernel, stride)
  want = _reference(x, kernel, stride)
  assert got.shape == want.shape
  assert _rel_err(got, want) <= TOL


@pytest.mark.parametrize('shape', [(1, 8, 6, 32, 8), (2, 7, 9, 8, 4), (1, 5, 4, 32, 16),
                                   (1, 2, 3, 16, 8)], ids=str)
def test_upsample_conv_equals_conv_of_upsampled(shape):
  b, h, w, cin, cout = shape
  rng = np.random.default_rng(1)
  x, kernel = _random(rng, b, h, w, cin), _random(rng, 3, 3, cin, cout)
  with small_conv.settings(fast=True, strip_pixels=20):
    got = small_conv.upsample_conv(x, kernel)
  want = _reference(small_conv.upsample2x(x), kernel)
  assert got.shape == want.shape
  assert _rel_err(got, want) <= TOL


@pytest.mark.parametrize('fast', [True, False])
@pytest.mark.parametrize('shape', [(1, 16, 12, 3, 32, 32), (2, 10, 14, 3, 8, 16)], ids=str)
def test_blocks_round_trip_through_the_strided_conv(shape, fast):
  b, h, w, cin, mid, cout = shape
  rng = np.random.default_rng(2)
  x = _random(rng, b, h, w, cin)
  k0, k1 = _random(rng, 9, 9, cin, mid), _random(rng, 3, 3, mid, cout)
  with small_conv.settings(fast=fast, strip_pixels=30):
    blocks = small_conv.conv_to_blocks(x, k0)
    image = small_conv.blocks_to_image(blocks)
    got = small_conv.strided_conv_from_blocks(jax.nn.relu(blocks - 0.5), k1)
  full = _reference(x, k0)
  assert blocks.shape == (b, h // 2, 2 * w, mid)
  assert _rel_err(image, full) <= TOL
  # Per-channel statistics are those of the image.
  np.testing.assert_allclose(blocks.mean(axis=(1, 2)), full.mean(axis=(1, 2)), atol=1e-4)
  want = _reference(jax.nn.relu(full - 0.5), k1, 2)
  assert got.shape == want.shape
  assert _rel_err(got, want) <= TOL
  # The instance norm and ReLU applied strip by strip, as cin_net applies them.
  gamma, beta = _random(rng, b, mid), _random(rng, b, mid)
  with small_conv.settings(fast=fast, strip_pixels=30):
    terms = small_conv.instance_norm_terms(blocks, gamma, beta)
    got = small_conv.strided_conv_from_blocks(blocks, k1, relu_of=terms)
  want = _reference(jax.nn.relu(cin_net.instance_norm(full, gamma, beta)), k1, 2)
  assert _rel_err(got, want) <= TOL


@pytest.mark.parametrize('shape', CONV_SHAPES, ids=str)
def test_conv_gradients_equal_plain_gradients(shape):
  # The strips have their own VJP (im2col for the kernel, the flipped-kernel
  # strip convolution for the input): compare both with the plain conv's.
  b, h, w, k, cin, cout, stride = shape
  rng = np.random.default_rng(1)
  x, kernel = _random(rng, b, h, w, cin), _random(rng, k, k, cin, cout)
  cotangent = _random(rng, *_reference(x, kernel, stride).shape)
  with small_conv.settings(fast=True, strip_pixels=24):
    got = jax.vjp(lambda a, f: small_conv.conv(a, f, stride), x, kernel)[1](cotangent)
  want = jax.vjp(lambda a, f: _reference(a, f, stride), x, kernel)[1](cotangent)
  for g, r in zip(got, want):
    assert g.shape == r.shape
    assert _rel_err(g, r) <= TOL


def test_conv_to_blocks_names_odd_sizes():
  with pytest.raises(ValueError, match='even height and width'):
    small_conv.conv_to_blocks(jnp.zeros((1, 9, 8, 3)), jnp.zeros((9, 9, 3, 8)))


def test_network_in_small_strips_equals_the_plain_network():
  # Strips are per layer and instance-norm statistics are over the whole
  # image, so a network run in strips of a few pixels has no seams.
  params = cin_net.init_params(jax.random.key(0), num_styles=3, width=8)
  rng = np.random.default_rng(3)
  images = rng.uniform(size=(2, 22, 18, 3)).astype(np.float32)
  weights = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], np.float32)
  # A fresh lambda per plan: jit caches traces per function.
  with small_conv.settings(fast=False):
    want = jax.jit(lambda *a: cin_net.apply(*a))(params, images, weights)
  with small_conv.settings(fast=True, strip_pixels=16):
    got = jax.jit(lambda *a: cin_net.apply(*a))(params, images, weights)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_network_gradient_equals_the_plain_network_gradient():
  # Training (issue 12) differentiates cin_net.apply through the plan: the
  # strips' own VJP, the blocks, the sub-pixel upsampling and the fused
  # instance norm + ReLU of relu_of, against XLA's gradient of the plain net.
  params = cin_net.init_params(jax.random.key(1), num_styles=2, width=8)
  images = np.random.default_rng(4).uniform(size=(1, 16, 12, 3)).astype(np.float32)
  weights = np.array([[0.5, 0.5]], np.float32)

  def loss(p):
    return jnp.sum(jnp.square(cin_net.apply(p, images, weights) - 0.5))

  with small_conv.settings(fast=False):
    want = jax.jit(jax.grad(lambda p: loss(p)))(params)
  with small_conv.settings(fast=True, strip_pixels=16):
    got = jax.jit(jax.grad(lambda p: loss(p)))(params)
  # Float32 rounding, relative to the largest gradient: some gradients are
  # zero in exact arithmetic (a bias followed by an instance norm).
  scale = max(float(np.abs(g).max()) for g in want.values())
  for name in want:
    assert np.abs(np.asarray(got[name]) - np.asarray(want[name])).max() <= 2e-5 * scale, name


@pytest.mark.parametrize('shape', [(1, 16, 16, 32, 1), (2, 15, 9, 24, 2), (1, 7, 8, 16, 2)], ids=str)
def test_depthwise_conv_equals_grouped_conv(shape):
  b, h, w, c, stride = shape
  rng = np.random.default_rng(5)
  x, kernel = _random(rng, b, h, w, c), _random(rng, 3, 3, 1, c)
  with small_conv.settings(fast=True):
    got = small_conv.depthwise_conv(x, kernel, stride)
  want = jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=c, precision=jax.lax.Precision.HIGHEST)
  assert got.shape == want.shape
  assert _rel_err(got, want) <= TOL
