"""The objective in nst_jax.losses against a PyTorch twin and numpy closed forms.

Tolerances: loss terms agree with the PyTorch twin to 1e-4 relative and the
image gradient to 1e-3 relative (max abs difference over max abs of the
torch gradient), both in float32 with full-precision matmuls (conftest).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import image_io
from nst_jax import losses

torch = pytest.importorskip('torch')
from benchmarks import torch_twin  # noqa: E402  (needs torch)

from conftest import rel_err, shared_image  # noqa: E402

TERM_RTOL = 1e-4
GRAD_RTOL = 1e-3


# --- Parity with the PyTorch twin, real weights ------------------------------


@pytest.fixture(scope='module')
def problem_64(caffe_weights):
  prep = caffe_weights.preprocessing
  content_rgb = image_io.resize_longest(image_io.load_image(shared_image('tubingen.jpg')), 64)
  style_rgb = image_io.resize_longest(image_io.load_image(shared_image('starry_night.jpg')), 64)
  content = np.asarray(prep.apply(content_rgb), np.float32)
  style = np.asarray(prep.apply(style_rgb), np.float32)
  # A non-trivial image: the content plus strong noise (preprocessed space is
  # 0-255 scale), so every term, TV included, is far from zero.
  noise = np.random.default_rng(0).normal(size=content.shape).astype(np.float32)
  image = content + 10.0 * noise
  return caffe_weights.params, content, style, image


def test_terms_and_gradient_match_torch_twin(problem_64):
  params, content, style, image = problem_64
  spec = losses.LossSpec()
  lw = losses.default_loss_weights(spec)
  jparams = jax.tree.map(jnp.asarray, params)
  targets = jax.jit(functools.partial(losses.make_targets, spec=spec))(
      jparams, jnp.asarray(content), [jnp.asarray(style)], jnp.ones(1))
  loss_fn = functools.partial(losses.total_loss, spec=spec)
  (total, terms), grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      jnp.asarray(image), jparams, targets, lw)

  tp = torch_twin.params_to_torch(params)
  t_targets = torch_twin.make_targets(
      tp, torch_twin.nhwc_to_nchw(content), [torch_twin.nhwc_to_nchw(style)], [1.0],
      spec.content_layers, spec.style_layers)
  x = torch_twin.nhwc_to_nchw(image).requires_grad_(True)
  t_total, t_terms = torch_twin.total_loss(x, tp, t_targets)
  t_total.backward()

  names = ['content/relu4_2'] + [f'style/{l}' for l in spec.style_layers] + ['tv']
  assert set(names) <= set(terms)
  for name in names:
    ours, ref = float(terms[name]), float(t_terms[name].detach())
    print(f'{name}: jax {ours:.7g} torch {ref:.7g} rel {abs(ours - ref) / ref:.2e}')
    assert ref > 0, name
    assert abs(ours - ref) / ref < TERM_RTOL, (name, ours, ref)
  assert abs(float(total) - float(t_total.detach())) / float(t_total.detach()) < TERM_RTOL
  # The sums reported in terms are consistent with the total.
  np.testing.assert_allclose(float(terms['content'] + terms['style'] + terms['tv']),
                             float(total), rtol=1e-6)
  ref_grad = x.grad.numpy()[0].transpose(1, 2, 0)
  print(f'gradient rel err {rel_err(grad, ref_grad):.2e}')
  assert rel_err(grad, ref_grad) < GRAD_RTOL


# --- Closed forms ------------------------------------------------------------


def test_gram_closed_form():
  f = np.random.default_rng(0).normal(size=(2, 5, 7, 4)).astype(np.float32)
  g = np.asarray(losses.gram(jnp.asarray(f)))
  assert g.shape == (2, 4, 4)
  for b in range(2):
    m = f[b].reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(g[b], m.T @ m / (4 * 5 * 7), rtol=1e-5, atol=1e-7)


def test_content_and_style_loss_closed_form():
  rng = np.random.default_rng(1)
  f = rng.normal(size=(6, 5, 3)).astype(np.float32)
  t = rng.normal(size=(6, 5, 3)).astype(np.float32)
  np.testing.assert_allclose(float(losses.content_loss(f, t)),
                             np.mean((f.astype(np.float64) - t) ** 2), rtol=1e-5)
  tg = rng.normal(size=(3, 3)).astype(np.float32)
  m = f.reshape(-1, 3).astype(np.float64)
  g = m.T @ m / f.size
  np.testing.assert_allclose(float(losses.style_loss(f, tg)), np.mean((g - tg) ** 2),
                             rtol=1e-5)


def _tv_numpy(x):
  base = x[:-1, :-1]
  dx = base - x[:-1, 1:]
  dy = base - x[1:, :-1]
  return 0.5 * np.sum(dx ** 2 + dy ** 2)


def _tv_grad_reference(x):
  """neural_style.lua TVLoss:updateGradInput (strength 1), per channel."""
  grad = np.zeros_like(x)
  x_diff = x[:-1, :-1] - x[:-1, 1:]
  y_diff = x[:-1, :-1] - x[1:, :-1]
  grad[:-1, :-1] += x_diff + y_diff
  grad[:-1, 1:] -= x_diff
  grad[1:, :-1] -= y_diff
  return grad


def test_tv_loss_value_and_reference_gradient():
  x = np.random.default_rng(2).normal(size=(9, 11, 3))
  np.testing.assert_allclose(float(losses.tv_loss(jnp.asarray(x, jnp.float32))),
                             _tv_numpy(x), rtol=1e-5)
  g = jax.grad(losses.tv_loss)(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(g), _tv_grad_reference(x), rtol=1e-5, atol=1e-5)
  # Batched input sums per image.
  xb = np.stack([x, 2 * x]).astype(np.float32)
  np.testing.assert_allclose(np.asarray(losses.tv_loss(xb)),
                             [_tv_numpy(x), 4 * _tv_numpy(x)], rtol=1e-5)


# --- normalize_gradients -----------------------------------------------------


@pytest.mark.parametrize('w', [5.0, 0.25])
def test_normalize_grad_is_weighted_l1_normalised_gradient(w):
  rng = np.random.default_rng(3)
  f = jnp.asarray(rng.normal(size=(4, 6, 8)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(4, 6, 8)), jnp.float32)
  w = jnp.float32(w)

  def term(f, w):
    return w * losses.content_loss(losses._normalize_grad(f, w), t)

  value = term(f, w)
  np.testing.assert_allclose(float(value), float(w * losses.content_loss(f, t)), rtol=1e-6)
  g, gw = jax.grad(term, argnums=(0, 1))(f, w)
  d = 2.0 * (np.asarray(f, np.float64) - np.asarray(t)) / f.size  # d mean((f-t)^2) / df
  expected = float(w) * d / (np.sum(np.abs(d)) + 1e-8)
  np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-5, atol=1e-9)
  # Only the outer factor w carries a weight gradient; _normalize_grad adds none.
  np.testing.assert_allclose(float(gw), float(losses.content_loss(f, t)), rtol=1e-6)
  # A zero weight switches the term off without dividing by zero.
  g0 = jax.grad(term)(f, jnp.float32(0.0))
  assert np.all(np.asarray(g0) == 0.0)


def test_normalize_gradients_keeps_values_changes_gradient(random_params):
  rng = np.random.default_rng(4)
  content = jnp.asarray(rng.normal(size=(32, 32, 3)) * 30, jnp.float32)
  style = jnp.asarray(rng.normal(size=(32, 40, 3)) * 30, jnp.float32)
  image = jnp.asarray(rng.normal(size=(32, 32, 3)) * 30, jnp.float32)
  params = jax.tree.map(jnp.asarray, random_params)
  results = {}
  for flag in (False, True):
    spec = losses.LossSpec(normalize_gradients=flag)
    targets = losses.make_targets(params, content, [style], [1.0], spec)
    lw = losses.default_loss_weights(spec)
    fn = jax.jit(jax.value_and_grad(functools.partial(losses.total_loss, spec=spec),
                                    has_aux=True))
    results[flag] = fn(image, params, targets, lw)
  (v0, t0), g0 = results[False]
  (v1, t1), g1 = results[True]
  np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
  for k in t0:
    np.testing.assert_allclose(float(t1[k]), float(t0[k]), rtol=1e-6, err_msg=k)
  # The flag does change the gradient (otherwise the test above proves nothing).
  assert rel_err(g1, g0) > 1e-2


# --- jit / vmap ---------------------------------------------------------------


def _small_problem(params, seed=5, size=32):
  rng = np.random.default_rng(seed)
  content = jnp.asarray(rng.normal(size=(size, size, 3)) * 30, jnp.float32)
  style = jnp.asarray(rng.normal(size=(size, size, 3)) * 30, jnp.float32)
  spec = losses.LossSpec()
  targets = losses.make_targets(params, content, [style], [1.0], spec)
  images = jnp.asarray(rng.normal(size=(2, size, size, 3)) * 30, jnp.float32)
  return spec, targets, images


def test_vmap_over_images_equals_per_image(random_params):
  params = jax.tree.map(jnp.asarray, random_params)
  spec, targets, images = _small_problem(params)
  lw = losses.default_loss_weights(spec)
  fn = functools.partial(losses.total_loss, spec=spec)
  vg = jax.vmap(jax.value_and_grad(fn, has_aux=True), in_axes=(0, None, None, None))
  (totals, terms), grads = jax.jit(vg)(images, params, targets, lw)
  assert totals.shape == (2,)
  single = jax.jit(jax.value_and_grad(fn, has_aux=True))
  for b in range(2):
    (t, tm), g = single(images[b], params, targets, lw)
    np.testing.assert_allclose(float(totals[b]), float(t), rtol=1e-5)
    for k in tm:
      np.testing.assert_allclose(float(terms[k][b]), float(tm[k]), rtol=1e-5, err_msg=k)
    assert rel_err(grads[b], g) < 1e-4


def test_new_loss_weights_and_targets_do_not_retrace(random_params):
  params = jax.tree.map(jnp.asarray, random_params)
  spec, targets, images = _small_problem(params)
  traces = []

  @jax.jit
  def step(image, params, targets, lw):
    traces.append(1)  # Runs only while tracing.
    return losses.total_loss(image, params, targets, lw, spec)[0]

  v1 = step(images[0], params, targets, losses.default_loss_weights(spec))
  v2 = step(images[0], params, targets,
            losses.default_loss_weights(spec, content_weight=1.0, style_weight=7.0,
                                        tv_weight=0.5, style_layer_weights=[1, 2, 3, 4, 5]))
  _, new_targets, _ = _small_problem(params, seed=6)  # a new style image, same size
  v3 = step(images[1], params, new_targets, losses.default_loss_weights(spec))
  assert len(traces) == 1
  assert len({float(v1), float(v2), float(v3)}) == 3  # the weights did take effect
