"""Winograd F(4x4, 3x3) convolutions against a float64 direct convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import engine
from nst_jax import vgg
from nst_jax import winograd
from nst_jax.config import ConfigError
from nst_jax.config import StyleConfig

from conftest import rel_err

# A layer's error relative to its largest output: ~1e-6 at 16 channels, 1e-5
# to 2e-5 at VGG19's 512 (float32 XLA: ~5e-7).
TOL = 1e-4


def _direct(x, kernel):
  """SAME 3x3 correlation in float64, the textbook sum over the nine taps."""
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  b, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(np.einsum('bhwi,io->bhwo', xp[:, i:i + h, j:j + w], kernel[i, j])
             for i in range(3) for j in range(3))


def _problem(shape, seed=0):
  b, h, w, cin, cout = shape
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((b, h, w, cin)).astype(np.float32)
  k = (rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
  return x, k


@pytest.mark.parametrize('shape', [(1, 8, 8, 4, 4), (2, 13, 9, 16, 8), (1, 1, 1, 3, 5),
                                   (1, 6, 23, 8, 16), (1, 24, 32, 128, 128)])
def test_conv_matches_float64_direct(shape):
  x, k = _problem(shape)
  y = jax.jit(winograd.conv)(x, winograd.kernel_transform(k))
  assert y.shape == shape[:3] + (shape[4],)
  assert rel_err(y, _direct(x, k)) < TOL


def test_gradients_match_xla():
  """Input gradient by Winograd with the backward kernel; kernel and bias
  gradients by XLA; all against JAX differentiating XLA's convolution."""
  x, k = _problem((2, 11, 14, 16, 24), seed=1)
  bias = np.linspace(-1, 1, 24).astype(np.float32)
  u, u_t = winograd.kernel_transform(k), winograd.kernel_transform(vgg.backward_kernel(k))
  g = np.random.default_rng(2).standard_normal((2, 11, 14, 24)).astype(np.float32)

  def xla(x, k, b):
    return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        precision=jax.lax.Precision.HIGHEST) + b

  y, vjp = jax.vjp(lambda x, k, b: winograd.conv3x3(x, k, b, u, u_t), x, k, bias)
  y_ref, vjp_ref = jax.vjp(xla, x, k, bias)
  assert rel_err(y, y_ref) < TOL
  for got, want in zip(vjp(g), vjp_ref(g)):
    assert rel_err(got, want) < TOL


def test_vgg_features_and_input_gradient_with_winograd_kernels(random_params):
  # Large enough for Winograd at every wide layer: conv5_1 sees 12x12.
  x = np.random.default_rng(3).normal(size=(1, 197, 203, 3)).astype(np.float32) * 50
  taps = ('relu2_1', 'relu3_1', 'relu4_2', 'relu5_1')
  plain = vgg.with_backward_kernels(random_params)
  fast = vgg.with_backward_kernels(random_params, winograd=True)
  # The wide layers only: conv2_2 (128 -> 128) on, not conv2_1 (64 -> 128).
  assert 'winograd' not in fast['conv2_1'] and fast['conv2_2']['winograd'].shape == (36, 128, 128)
  assert fast['conv4_1']['winograd_t'].shape == (36, 512, 256)

  def scalar(p, x):
    f = vgg.features(p, x, taps)
    return sum(jnp.mean(f[t] ** 2) for t in taps), f

  (_, f_plain), g_plain = jax.jit(jax.value_and_grad(scalar, argnums=1, has_aux=True))(plain, x)
  (_, f_fast), g_fast = jax.jit(jax.value_and_grad(scalar, argnums=1, has_aux=True))(fast, x)
  for t in taps:
    assert rel_err(f_fast[t], f_plain[t]) < TOL, t
  assert rel_err(g_fast, g_plain) < TOL
  # The Winograd path is really taken: of the five layers up to relu3_1, XLA
  # convolves conv1_1, conv1_2 and conv2_1 only.
  count = lambda x: str(jax.make_jaxpr(lambda p, x: vgg.features(p, x, ('relu3_1',)))(
      fast, x)).count('conv_general_dilated')
  assert count(x) == 3
  # Small maps stay with XLA: at 37x45 conv3_1 sees 9x11, under winograd.MIN_PIXELS.
  assert count(x[:, :37, :45]) == 4


def test_conv_algorithm_setting():
  on_cpu = jax.default_backend() == 'cpu'
  assert engine.loss_spec(StyleConfig()).winograd == on_cpu
  assert engine.loss_spec(StyleConfig(conv_algorithm='winograd')).winograd
  assert not engine.loss_spec(StyleConfig(conv_algorithm='xla')).winograd
  assert not engine.loss_spec(StyleConfig(precision='bfloat16')).winograd
  with pytest.raises(ConfigError, match='conv_algorithm=winograd.*precision=float32'):
    StyleConfig(conv_algorithm='winograd', precision='bfloat16')
  with pytest.raises(ConfigError, match='conv_algorithm'):
    StyleConfig(conv_algorithm='fft')


def test_memory_estimate_counts_the_transformed_kernels(random_params):
  from nst_jax import memory
  fast = vgg.with_backward_kernels(random_params, winograd=True)
  held = sum(p[k].nbytes for name, p in fast.items() if name <= 'conv5_1'
             for k in ('winograd', 'winograd_t') if k in p)
  assert memory.winograd_kernel_bytes(('relu5_1',)) == held
  base = StyleConfig(conv_algorithm='xla')
  assert (memory.estimate_peak_bytes(384, 512, StyleConfig())
          - memory.estimate_peak_bytes(384, 512, base)) == held
