"""nst_jax.bands: the objective and its gradient in bands of rows equal the one-pass ones.

Reference: ``jax.value_and_grad(losses.total_loss)`` on the whole image, with
the real VGG19 weights (random weights would leave the deep layers nearly
constant). Tolerance: 1e-5 relative for the value and every term, and for
the gradient relative to its largest magnitude; the bands only reorder
float32 sums (measured ~1e-6).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import rel_err
from nst_jax import bands
from nst_jax import layers
from nst_jax import losses


def _problem(params, h, w, spec, seed=0):
  rng = np.random.default_rng(seed)
  content = jnp.asarray(rng.uniform(-100, 100, (h, w, 3)).astype(np.float32))
  style = jnp.asarray(rng.uniform(-100, 100, (64, 80, 3)).astype(np.float32))
  targets = losses.make_targets(params, content, [style], [1.0], spec)
  image = jnp.asarray(rng.uniform(-100, 100, (h, w, 3)).astype(np.float32))
  return image, targets, losses.default_loss_weights(spec)


def test_receptive_margin_of_relu5_1():
  # conv: +step above and below; pool: +step below, step doubles.
  assert layers.receptive_margin(['relu5_1']) == 85
  assert layers.receptive_margin(['relu1_1']) == 1
  assert bands.margin(['relu5_1', 'relu4_2']) == 96


@pytest.mark.parametrize('h, w, band_rows', [(372, 40, 96)], ids=str)
def test_bands_equal_one_pass(caffe_weights, h, w, band_rows):
  # 372 is not a multiple of 16: the pools drop rows at the bottom, and the
  # last band must drop the same ones.
  params = caffe_weights.params
  spec = losses.LossSpec(band_rows=band_rows)
  image, targets, lw = _problem(params, h, w, spec)
  assert bands.plan(h, band_rows, spec.taps).count >= 4
  (want, want_terms), want_grad = jax.jit(
      lambda x: jax.value_and_grad(losses.total_loss, has_aux=True)(
          x, params, targets, lw, spec=losses.LossSpec()))(image)
  (got, got_terms), got_grad = jax.jit(
      lambda x: bands.value_and_grad(x, params, targets, lw, spec))(image)
  assert set(got_terms) == set(want_terms)
  assert abs(float(got) - float(want)) <= 1e-5 * abs(float(want))
  for k, v in want_terms.items():
    assert abs(float(got_terms[k]) - float(v)) <= 1e-5 * abs(float(v)) + 1e-30, k
  assert rel_err(got_grad, want_grad) <= 1e-5


def test_bands_refuse_what_they_cannot_split(random_params):
  spec = losses.LossSpec(band_rows=32, style_losses=('sw',))
  image, targets, lw = _problem(random_params, 64, 32, spec)
  with pytest.raises(ValueError, match='band_rows supports the Gram objective'):
    bands.value_and_grad(image, random_params, targets, lw, spec, key=jax.random.key(0))
  with pytest.raises(ValueError, match='multiple of 16'):
    losses.LossSpec(band_rows=40)


def test_banded_targets_and_value_equal_one_pass(caffe_weights):
  params = caffe_weights.params
  spec = losses.LossSpec(band_rows=64)
  rng = np.random.default_rng(1)
  content = jnp.asarray(rng.uniform(-100, 100, (340, 40, 3)).astype(np.float32))
  styles = [jnp.asarray(rng.uniform(-100, 100, hw + (3,)).astype(np.float32))
            for hw in ((300, 56), (48, 48))]  # one in bands, one in a single band
  want = jax.jit(lambda *a: losses.make_targets(*a, spec=losses.LossSpec()))(
      params, content, styles, jnp.array([1.0, 3.0]))
  got = jax.jit(lambda *a: bands.make_targets(*a, spec=spec))(
      params, content, styles, jnp.array([1.0, 3.0]))
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.shape == w.shape
    assert rel_err(g, w) <= 1e-5
  lw = losses.default_loss_weights(spec)
  value, terms = bands.total_loss(content * 0.5, params, want, lw, spec)
  want_value, want_terms = losses.total_loss(content * 0.5, params, want, lw, losses.LossSpec())
  assert abs(float(value) - float(want_value)) <= 1e-5 * float(want_value)
  assert set(terms) == set(want_terms)


def test_estimate_counts_one_window_and_suggests_bands():
  import dataclasses
  from nst_jax import config as config_lib
  from nst_jax import memory
  shape = (3072, 4096)
  config = config_lib.StyleConfig(image_size=4096)
  banded = dataclasses.replace(config, band_rows=512)
  # One 704-row window instead of 3072 rows of activations.
  taps = config.content_layers + config.style_layers
  assert layers.band_window_rows(3072, 512, taps) == 512 + 2 * 96
  saved = memory.estimate_peak_bytes(*shape, config) - memory.estimate_peak_bytes(*shape, banded)
  want = 1.5 * (memory.activation_bytes(3072, 4096, taps) - memory.activation_bytes(704, 4096, taps))
  assert abs(saved - want) <= 1
  budget = 23 * 2**30
  changes = memory.fitting_changes(shape, config, budget, [(640, 1024)])
  assert any('band_rows' in c for c in changes)
  for change in changes:
    assert memory.run_peak_bytes(shape, dataclasses.replace(config, **change),
                                 [(640, 1024)]) <= budget
  with pytest.raises(config_lib.ConfigError, match='`band_rows`=512'):
    config_lib.plan(config, shape, [(640, 1024)], budget=budget)
  # Objectives the bands cannot split get no band suggestion.
  sw = dataclasses.replace(config, style_loss='sw')
  assert not any('band_rows' in c for c in memory.fitting_changes(shape, sw, budget, []))


def test_stylize_in_bands_equals_one_pass(caffe_weights):
  # The engine's chunk loop with band_rows: the same run, a few L-BFGS steps.
  from nst_jax import transfer
  from nst_jax.config import StyleConfig
  rng = np.random.default_rng(2)
  content = rng.uniform(size=(272, 40, 3)).astype(np.float32)
  style = rng.uniform(size=(48, 48, 3)).astype(np.float32)
  # XLA's convolutions: with Winograd the two runs would differ by its own
  # rounding (~1e-5 of a layer's range, tested in test_winograd.py), and the
  # bands' smaller maps take XLA where the whole image takes Winograd
  # (winograd.MIN_PIXELS); this test is about the band arithmetic.
  base = dict(image_size=272, num_iterations=(3,), init='image', print_iter=0, save_iter=0,
              conv_algorithm='xla')
  want = transfer.stylize(content, [style], StyleConfig(**base), weights=caffe_weights)
  got = transfer.stylize(content, [style], StyleConfig(**base, band_rows=64),
                         weights=caffe_weights)
  assert got.iterations == want.iterations == 3
  # The banded program ran: it reorders float32 sums, so the images are not
  # bit-identical, only equal to rounding.
  assert not np.array_equal(got.image, want.image)
  assert abs(got.terms['style'] - want.terms['style']) <= 1e-4 * want.terms['style']
  np.testing.assert_allclose(got.image, want.image, atol=1e-4, rtol=0)
