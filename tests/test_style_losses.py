"""The distribution style losses and spatial control against plain PyTorch twins.

Each twin below is written independently in float64 PyTorch from the
definitions (sort and interpolate with numpy, gradients by torch autograd),
fed the same random directions as nst_jax. Values and gradients must agree to
1e-4 relative (max abs difference over max abs of the twin's gradient), with
full-precision float32 matmuls (conftest).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import losses

torch = pytest.importorskip('torch')

from conftest import rel_err  # noqa: E402

RTOL = 1e-4


# --- Twins --------------------------------------------------------------------


def _t(a):
  return torch.tensor(np.asarray(a, np.float64))


def _quantiles_np(values, weights, q):
  """Quantiles at q of 1-D samples with weights: interpolation between mid-points."""
  order = np.argsort(values, kind='stable')
  v, w = values[order], weights[order]
  c = np.cumsum(w)
  return np.interp(q, (c - 0.5 * w) / c[-1], v)


def sw_twin(x, styles, blend, dirs, x_weights=None, style_weights=None):
  """Sliced W2^2 (Heitz et al. 2021) with the barycentre of several styles; torch scalar.

  x: torch [N, C] (requires grad); styles: numpy [M_s, C]; dirs: numpy [C, D].
  """
  n, d = x.shape[0], dirs.shape[1]
  xw = np.ones(n) if x_weights is None else np.asarray(x_weights, np.float64)
  proj = x @ _t(dirs)                       # [N, D]
  total = 0.0
  for k in range(d):
    col = proj[:, k]
    order = np.argsort(col.detach().numpy(), kind='stable')
    w = xw[order]
    c = np.cumsum(w)
    q = (c - 0.5 * w) / c[-1]
    target = np.zeros(n)
    for s, (style, b) in enumerate(zip(styles, blend)):
      sv = np.asarray(style, np.float64) @ np.asarray(dirs[:, k], np.float64)
      sw = np.ones(len(sv)) if style_weights is None else np.asarray(style_weights[s], np.float64)
      target += b * _quantiles_np(sv, sw, q)
    total = total + torch.sum(_t(w) * (col[order] - _t(target)) ** 2)
  return total / (d * xw.sum())


def moments_twin(f, w=None):
  """f: torch [N, C]; weighted biased moments, std = sqrt(var + 1e-5)."""
  w = torch.ones(f.shape[0], dtype=f.dtype) if w is None else _t(w)
  w = w / w.sum()
  mean = w @ f
  var = w @ (f - mean) ** 2
  return mean, torch.sqrt(var + 1e-5)


def guided_gram_twin(f, masks):
  """f: torch [N, C]; masks numpy [R, N] -> torch [R, C, C]."""
  m = _t(masks)
  return torch.einsum('rn,nc,nd->rcd', m, f, f) / (f.shape[1] * m.sum(1))[:, None, None]


def _jax_value_and_grad(fn, x):
  value, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(x, jnp.float32))
  return float(value), np.asarray(grad)


def _torch_value_and_grad(fn, x):
  xt = _t(x).requires_grad_(True)
  value = fn(xt)
  value.backward()
  return float(value.detach()), xt.grad.numpy()


def _check(ours, ref):
  (v, g), (tv, tg) = ours, ref
  print(f'value {v:.7g} twin {tv:.7g}; gradient rel err {rel_err(g, tg):.2e}')
  assert tv > 0
  assert abs(v - tv) / tv < RTOL
  assert rel_err(g, tg) < RTOL


# --- Sliced Wasserstein -------------------------------------------------------


@pytest.mark.parametrize('style_hw', [(6, 5), (9, 7)])  # same and different pixel counts
def test_sliced_wasserstein_matches_twin(style_hw):
  rng = np.random.default_rng(0)
  x = np.maximum(rng.normal(size=(6, 5, 16)), 0).astype(np.float32)  # ReLU-like
  style = (2.0 * np.maximum(rng.normal(size=(*style_hw, 16)), 0) + 0.5).astype(np.float32)
  key = jax.random.key(3)
  ours = _jax_value_and_grad(
      lambda f: losses.sliced_wasserstein_loss(f, jnp.asarray(style), key, 12), x)
  dirs = np.asarray(losses.random_directions(key, 16, 12))
  np.testing.assert_allclose(np.linalg.norm(dirs, axis=0), 1.0, rtol=1e-6)
  ref = _torch_value_and_grad(
      lambda f: sw_twin(f.reshape(-1, 16), [style.reshape(-1, 16)], [1.0], dirs), x)
  _check(ours, (ref[0], ref[1].reshape(x.shape)))


def test_sliced_wasserstein_blend_and_weights_match_twin():
  """Two styles blended (barycentre), a weighted output region, a weighted style."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(40, 8)).astype(np.float32)
  styles = [rng.normal(size=(30, 8)).astype(np.float32) + 1,
            2 * rng.normal(size=(50, 8)).astype(np.float32)]
  blend = np.array([0.25, 0.75], np.float32)
  xw = rng.uniform(0.1, 1.0, size=40).astype(np.float32)
  sws = [rng.uniform(0.0, 1.0, size=30).astype(np.float32), None]
  dirs = np.asarray(losses.random_directions(jax.random.key(5), 8, 6))
  ours = _jax_value_and_grad(lambda f: losses._sliced_wasserstein(
      f, [jnp.asarray(s) for s in styles], jnp.asarray(blend), jnp.asarray(dirs)), x)
  ref = _torch_value_and_grad(lambda f: sw_twin(f, styles, blend, dirs), x)
  _check(ours, ref)
  ours = _jax_value_and_grad(lambda f: losses._sliced_wasserstein(
      f, [jnp.asarray(styles[0])], None, jnp.asarray(dirs), jnp.asarray(xw),
      [jnp.asarray(sws[0])]), x)
  ref = _torch_value_and_grad(
      lambda f: sw_twin(f, [styles[0]], [1.0], dirs, xw, [sws[0]]), x)
  _check(ours, ref)


def test_redraw_default_is_one_number():
  from nst_jax.config import StyleConfig
  assert StyleConfig().sw_redraw == losses.LossSpec().sw_redraw == losses.SW_REDRAW_EVERY
  spec = losses.LossSpec(sw_redraw=3)
  keys = [jax.random.key_data(spec.key_for(jax.random.key(0), i)) for i in range(7)]
  assert [int(np.array_equal(keys[i], keys[i + 1])) for i in range(6)] == [1, 1, 0, 1, 1, 0]
  with pytest.raises(ValueError, match='sw_redraw'):
    losses.LossSpec(sw_redraw=0)


def test_integer_key_sorts_equal_numpy_with_ties_signs_and_infinities():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(3, 1001)).astype(np.float32)
  x[:, ::7] = 0.0  # ReLU features: many exact ties at zero ...
  x[0, 1::11] = -0.0  # ... both zeros ...
  x[1, :4] = [np.inf, -np.inf, 1e-38, -1e-38]  # ... extremes and denormal-adjacent values.
  x[2, 100:200] = 2.5  # A long tie block away from zero.
  want_order = np.argsort(x, axis=-1, kind='stable')
  got_order = np.asarray(jax.jit(losses.sort_order)(x))
  # Stable argsort with -0.0 before +0.0 (numpy treats them as equal).
  np.testing.assert_array_equal(np.take_along_axis(x, got_order, -1),
                                np.take_along_axis(x, want_order, -1))
  zeros = x == 0
  np.testing.assert_array_equal(got_order[~np.take_along_axis(zeros, got_order, -1)],
                                want_order[~np.take_along_axis(zeros, want_order, -1)])
  tie = got_order[2][np.take_along_axis(x, got_order, -1)[2] == 2.5]
  np.testing.assert_array_equal(tie, np.arange(100, 200))  # A tie block keeps index order.
  np.testing.assert_array_equal(np.asarray(jax.jit(losses.sort_values)(x)), np.sort(x, -1))
  assert sorted(got_order[0]) == list(range(1001))


def test_sliced_wasserstein_zero_for_same_set_and_permutation():
  rng = np.random.default_rng(2)
  f = rng.normal(size=(8, 8, 32)).astype(np.float32) * 10
  perm = rng.permutation(64)
  shuffled = f.reshape(64, 32)[perm].reshape(8, 8, 32)
  key = jax.random.key(0)
  other = losses.sliced_wasserstein_loss(f, f + 1.0, key)  # a shift costs ~1 per direction
  assert float(other) > 0.5
  for target in (f, shuffled):
    value = float(losses.sliced_wasserstein_loss(jnp.asarray(f), jnp.asarray(target), key))
    assert value <= 1e-10 * float(other), value
  # Fresh directions each key; the default is one per 8 channels.
  a = losses.random_directions(jax.random.key(0), 32, losses.default_directions(32))
  b = losses.random_directions(jax.random.key(1), 32, losses.default_directions(32))
  assert a.shape == (32, 4)
  assert not np.allclose(a, b)
  assert [losses.LossSpec().directions(c) for c in (3, 64, 512)] == [1, 8, 64]
  assert losses.LossSpec(sw_directions=100).directions(64) == 64


def test_color_loss_is_sliced_wasserstein_on_pixels():
  rng = np.random.default_rng(3)
  image = rng.normal(size=(7, 9, 3)).astype(np.float32) * 50
  style = rng.uniform(-100, 100, size=(11, 6, 3)).astype(np.float32)
  key = jax.random.key(9)
  ours = _jax_value_and_grad(lambda x: losses.color_loss(x, jnp.asarray(style), key), image)
  dirs = np.asarray(losses.random_directions(key, 3, losses.DEFAULT_COLOR_DIRECTIONS))
  ref = _torch_value_and_grad(
      lambda x: sw_twin(x.reshape(-1, 3), [style.reshape(-1, 3)], [1.0], dirs), image)
  _check(ours, (ref[0], ref[1].reshape(image.shape)))


# --- Mean and std --------------------------------------------------------------


def test_mean_std_matches_twin():
  rng = np.random.default_rng(4)
  x = np.maximum(rng.normal(size=(6, 7, 10)), 0).astype(np.float32)
  s = rng.gamma(2.0, size=(9, 5, 10)).astype(np.float32)
  target = losses.moments(jnp.asarray(s))
  ours = _jax_value_and_grad(lambda f: losses.mean_std_loss(f, target), x)

  def twin(f):
    mean, std = moments_twin(f.reshape(-1, 10))
    tm, ts = moments_twin(_t(s.reshape(-1, 10)))
    return torch.mean((mean - tm) ** 2) + torch.mean((std - ts) ** 2)

  _check(ours, _torch_value_and_grad(twin, x))


def test_mean_std_zero_for_equal_moments():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(12, 12, 6)) * 3 + 2
  y = rng.exponential(size=(20, 9, 6))  # another distribution and pixel count
  mu_x, sd_x = x.reshape(-1, 6).mean(0), x.reshape(-1, 6).std(0)
  mu_y, sd_y = y.reshape(-1, 6).mean(0), y.reshape(-1, 6).std(0)
  y = (y - mu_y) / sd_y * sd_x + mu_x
  value = losses.mean_std_loss(jnp.asarray(x, jnp.float32),
                               losses.moments(jnp.asarray(y, jnp.float32)))
  assert float(value) < 1e-9
  assert float(losses.sliced_wasserstein_loss(jnp.asarray(x, jnp.float32),
                                              jnp.asarray(y, jnp.float32),
                                              jax.random.key(0))) > 1e-2


# --- Spatial control -----------------------------------------------------------


def test_guided_gram_matches_twin_and_reduces_to_gram():
  rng = np.random.default_rng(6)
  f = rng.normal(size=(6, 8, 5)).astype(np.float32)
  masks = np.zeros((2, 6, 8), np.float32)
  masks[0, :, :3] = 1.0
  masks[0, :, 3] = 0.4   # a soft edge
  masks[1] = 1.0 - masks[0]
  targets = rng.normal(size=(2, 5, 5)).astype(np.float32) * 0.1
  ours = _jax_value_and_grad(
      lambda x: losses.guided_style_loss(x, jnp.asarray(masks), jnp.asarray(targets)), f)

  def twin(x):
    g = guided_gram_twin(x.reshape(-1, 5), masks.reshape(2, -1))
    return torch.sum(torch.mean((g - _t(targets)) ** 2, dim=(1, 2)))

  _check(ours, _torch_value_and_grad(twin, f))
  one = losses.guided_gram(jnp.asarray(f), jnp.ones((1, 6, 8)))[0]
  np.testing.assert_allclose(np.asarray(one), np.asarray(losses.gram(jnp.asarray(f))),
                             rtol=1e-6, atol=1e-7)


def test_guided_sliced_wasserstein_and_mean_std_match_twins():
  rng = np.random.default_rng(7)
  f = rng.normal(size=(5, 6, 4)).astype(np.float32)
  masks = np.stack([np.linspace(0, 1, 30).reshape(5, 6)] * 1).astype(np.float32)
  masks = np.concatenate([masks, 1 - masks])
  styles = [rng.normal(size=(7, 7, 4)).astype(np.float32) + 2,
            rng.normal(size=(4, 9, 4)).astype(np.float32) * 3]
  key = jax.random.key(2)
  ours = _jax_value_and_grad(lambda x: losses.guided_sliced_wasserstein_loss(
      x, jnp.asarray(masks), [jnp.asarray(s) for s in styles], key, 5), f)
  dirs = np.asarray(losses.random_directions(key, 4, 5))

  def twin(x):
    x = x.reshape(-1, 4)
    return sum(sw_twin(x, [s.reshape(-1, 4)], [1.0], dirs, masks[r].reshape(-1))
               for r, s in enumerate(styles))

  _check(ours, _torch_value_and_grad(twin, f))

  stats = [losses.moments(jnp.asarray(s)) for s in styles]
  target = (jnp.stack([m for m, _ in stats]), jnp.stack([s for _, s in stats]))
  ours = _jax_value_and_grad(
      lambda x: losses.guided_mean_std_loss(x, jnp.asarray(masks), target), f)

  def twin_ms(x):
    x = x.reshape(-1, 4)
    total = 0.0
    for r, s in enumerate(styles):
      mean, std = moments_twin(x, masks[r].reshape(-1))
      tm, ts = moments_twin(_t(s.reshape(-1, 4)))
      total = total + torch.mean((mean - tm) ** 2) + torch.mean((std - ts) ** 2)
    return total

  _check(ours, _torch_value_and_grad(twin_ms, f))


def test_mask_pyramid_matches_layer_grids(random_params):
  image = jnp.zeros((1, 37, 29, 3))
  layers = ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1')
  feats = jax.eval_shape(functools.partial(losses.vgg.features, taps=layers),
                         random_params, image)
  masks = np.zeros((2, 37, 29), np.float32)
  masks[0, :20] = 1.0
  masks[1] = 1 - masks[0]
  pyramid = losses.mask_pyramid(jnp.asarray(masks), layers)
  for layer in layers:
    assert pyramid[layer].shape == (2, *feats[layer].shape[1:3]), layer
    np.testing.assert_allclose(np.asarray(pyramid[layer]).sum(0), 1.0, rtol=1e-6)
  # 2x2 averaging: relu2_1's first row pools input rows 0-1 (both in mask 0).
  np.testing.assert_allclose(np.asarray(pyramid['relu2_1'][0, 0]), 1.0)


@pytest.mark.parametrize('masks, kwargs, message', [
    ([np.ones((4, 4))], dict(count=2), 'content_masks: 1 mask(s) for 2 style image(s)'),
    ([np.ones((4, 4)), np.ones((4, 5))], dict(count=2, shape=(4, 4)),
     'content_masks: mask 2 is 5x4 px but the image is 4x4'),
    ([np.full((4, 4), 1.5)], dict(count=1), 'content_masks: mask 1 has values outside [0, 1]'),
    ([np.full((4, 4), np.nan)], dict(count=1), 'content_masks: mask 1 has values outside'),
    ([np.ones((4, 4)), np.zeros((4, 4))], dict(count=2), 'content_masks: mask 2 is empty'),
    ([np.eye(4), np.eye(4)], dict(count=2), 'content_masks: 12 pixel(s) belong to no mask'),
    ([np.ones((2, 4, 4))], dict(count=1), 'content_masks: mask 1 must be a 2-D'),
])
def test_check_masks_errors_name_the_argument(masks, kwargs, message):
  with pytest.raises(ValueError, match=message.replace('[', r'\[').replace(']', r'\]')
                     .replace('(', r'\(').replace(')', r'\)')):
    losses.check_masks(masks, name='content_masks', **kwargs)


def test_check_masks_accepts_a_partition_and_style_masks_need_no_coverage():
  a = np.zeros((4, 6), np.float32)
  a[:, :2] = 1.0
  out = losses.check_masks([a, 1 - a], count=2, shape=(4, 6), name='content_masks')
  assert out.shape == (2, 4, 6)
  losses.check_masks([a], count=1, name='style_masks', coverage=False)


# --- Choosing and combining kinds ----------------------------------------------


def test_parse_style_loss():
  assert losses.parse_style_loss('gram') == (('gram', 1.0),)
  assert losses.parse_style_loss('gram:1, sliced_wasserstein:0.5') == (('gram', 1.0), ('sw', 0.5))
  assert losses.parse_style_loss('adain:2') == (('mean_std', 2.0),)
  for bad, message in [('gram,foo', "unknown style loss 'foo'"), ('sw:x', 'the weight of sw'),
                       ('sw:-1', 'the weight of sw'), ('gram,gram', 'gram appears twice'),
                       ('gram:0', 'every weight'), ('gram,', 'empty entry')]:
    with pytest.raises(ValueError, match=f'`style_loss`: {message}'):
      losses.parse_style_loss(bad)


# Integration tests use two shallow layers: the same code paths, much less to compile.
SMALL = dict(content_layers=('relu2_1',), style_layers=('relu1_1', 'relu2_1'))


def _problem(params, size=16, styles=1, seed=0):
  rng = np.random.default_rng(seed)
  content = jnp.asarray(rng.normal(size=(size, size, 3)) * 30, jnp.float32)
  style = [jnp.asarray(rng.normal(size=(size + 8 * i, size, 3)) * 30, jnp.float32)
           for i in range(styles)]
  image = jnp.asarray(rng.normal(size=(size, size, 3)) * 30, jnp.float32)
  return content, style, image


def test_combined_objective_terms(random_params):
  params = jax.tree.map(jnp.asarray, random_params)
  content, styles, image = _problem(params, styles=2)
  spec = losses.LossSpec(style_losses=('gram', 'sw', 'mean_std'), color_loss=True, **SMALL)
  targets = losses.make_targets(params, content, styles, [1.0, 3.0], spec)
  lw = losses.default_loss_weights(spec, style_loss_weights=losses.parse_style_loss(
      'gram:1,sw:0.5,mean_std:2'), color_weight=0.1)
  fn = jax.jit(jax.value_and_grad(functools.partial(losses.total_loss, spec=spec),
                                  has_aux=True))
  (total, terms), grad = fn(image, params, targets, lw, key=jax.random.key(0))
  assert np.all(np.isfinite(np.asarray(grad)))
  for kind in ('gram', 'sw', 'mean_std'):
    parts = [float(terms[f'style/{kind}/{l}']) for l in spec.style_layers]
    assert all(p > 0 for p in parts), kind
    np.testing.assert_allclose(float(terms[f'style/{kind}']), sum(parts), rtol=1e-5)
  np.testing.assert_allclose(
      float(terms['content'] + terms['style'] + terms['tv'] + terms['color']), float(total),
      rtol=1e-5)
  # The kind weights act: the sw parts at weight 0.5 are half those at weight 1.
  lw1 = losses.default_loss_weights(spec, color_weight=0.1)
  _, terms1 = jax.jit(functools.partial(losses.total_loss, spec=spec))(
      image, params, targets, lw1, key=jax.random.key(0))
  np.testing.assert_allclose(float(terms['style/sw']), 0.5 * float(terms1['style/sw']),
                             rtol=1e-5)
  # Another key, other directions, another value.
  _, terms2 = jax.jit(functools.partial(losses.total_loss, spec=spec))(
      image, params, targets, lw, key=jax.random.key(1))
  assert float(terms2['style/sw']) != float(terms['style/sw'])
  with pytest.raises(ValueError, match='key: total_loss needs a PRNG key'):
    losses.total_loss(image, params, targets, lw, spec)


def test_default_spec_keeps_original_terms(random_params):
  params = jax.tree.map(jnp.asarray, random_params)
  content, styles, image = _problem(params)
  spec = losses.LossSpec(**SMALL)
  targets = losses.make_targets(params, content, styles, [1.0], spec)
  assert set(targets) == {'content', 'style'}
  lw = losses.default_loss_weights(spec)
  assert set(lw) == {'content', 'style', 'tv'}
  _, terms = losses.total_loss(image, params, targets, lw, spec)
  assert not any(k.startswith('style/gram') for k in terms)
  # 'gram:2' alone doubles the style weight.
  lw2 = losses.default_loss_weights(spec, style_loss_weights={'gram': 2.0})
  assert float(lw2['style']['relu1_1']) == 200.0


def test_one_full_mask_equals_unguided(random_params):
  params = jax.tree.map(jnp.asarray, random_params)
  content, styles, image = _problem(params)
  for kinds in (('gram',), ('gram', 'sw', 'mean_std')):
    spec = losses.LossSpec(style_losses=kinds, color_loss=True, **SMALL)
    lw = losses.default_loss_weights(spec, color_weight=1.0)
    plain = losses.make_targets(params, content, styles, [1.0], spec)
    guided = losses.make_targets(params, content, styles, [1.0], spec,
                                 content_masks=jnp.ones((1, 16, 16)))
    key = jax.random.key(4)
    fn = jax.jit(functools.partial(losses.total_loss, spec=spec))
    _, t_plain = fn(image, params, plain, lw, key=key)
    _, t_guided = fn(image, params, guided, lw, key=key)
    for name in ('style', 'color', *(f'style/{k}' for k in kinds if len(kinds) > 1)):
      np.testing.assert_allclose(float(t_guided[name]), float(t_plain[name]), rtol=1e-4,
                                 err_msg=f'{kinds} {name}')


def test_two_regions_pull_towards_their_own_style(random_params):
  """Guided targets: region r's statistics come from style r (style masks narrow them)."""
  params = jax.tree.map(jnp.asarray, random_params)
  content, styles, image = _problem(params, styles=2)
  masks = np.zeros((2, 16, 16), np.float32)
  masks[0, :, :8] = 1.0
  masks[1] = 1 - masks[0]
  style_masks = [jnp.ones(s.shape[:2]) for s in styles]
  spec = losses.LossSpec(style_losses=('gram', 'sw'), **SMALL)
  t = losses.make_targets(params, content, styles, [1.0, 1.0], spec,
                          content_masks=jnp.asarray(masks), style_masks=style_masks)
  for r, style in enumerate(styles):
    f = losses.vgg.features(params, style[None], ('relu2_1',))['relu2_1'][0]
    np.testing.assert_allclose(np.asarray(t['style']['relu2_1'][r]),
                               np.asarray(losses.gram(f)), rtol=1e-5, atol=1e-6)
  lw = losses.default_loss_weights(spec)
  value, terms = jax.jit(functools.partial(losses.total_loss, spec=spec))(
      image, params, t, lw, key=jax.random.key(0))
  assert np.isfinite(float(value)) and float(terms['style/sw']) > 0
  with pytest.raises(ValueError, match='content_masks: 1 masks for 2 style images'):
    losses.make_targets(params, content, styles, [1.0, 1.0], spec,
                        content_masks=jnp.ones((1, 16, 16)))


# --- Through the engine: stylize, multi-scale, stylize_many, masks --------------


def _tiny_config(**kw):
  from nst_jax.config import StyleConfig
  base = dict(image_size=32, num_iterations=(4,), chunk_size=2, print_iter=0, save_iter=0,
              content_layers=('relu2_1',), style_layers=('relu1_1', 'relu2_1'))
  return StyleConfig(**{**base, **kw})


def _images(n, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.uniform(size=(24 + 8 * i, 32, 3)).astype(np.float32) for i in range(n)]


def test_engine_wires_style_loss_and_color_weight(caffe_weights):
  from nst_jax import engine, transfer, winograd
  assert engine.loss_spec(_tiny_config()) == losses.LossSpec(
      ('relu2_1',), ('relu1_1', 'relu2_1'), winograd=winograd.enabled('auto'))
  assert set(engine.loss_weights(_tiny_config(), engine.loss_spec(_tiny_config()))) == {
      'content', 'style', 'tv'}
  content, s1, s2 = _images(3)
  config = _tiny_config(style_loss='gram:1,sw:1,mean_std:1', color_weight=1.0)
  a = transfer.stylize(content, [s1, s2], config, weights=caffe_weights)
  for name in ('style/gram', 'style/sw', 'style/mean_std', 'color'):
    assert np.isfinite(a.terms[name]) and a.terms[name] > 0, name
  # The key comes from the seed and the iteration, not the chunking: one
  # iteration per chunk gives the same pixels (so a resumed run does too).
  b = transfer.stylize(content, [s1, s2], _tiny_config(style_loss='gram:1,sw:1,mean_std:1',
                                                       color_weight=1.0, chunk_size=1),
                       weights=caffe_weights)
  np.testing.assert_array_equal(a.image, b.image)
  c = transfer.stylize(content, [s1, s2], _tiny_config(style_loss='gram:1,sw:1,mean_std:1',
                                                       color_weight=1.0, seed=1),
                       weights=caffe_weights)
  assert not np.array_equal(a.image, c.image)


def test_multiscale_and_masks_through_stylize(caffe_weights):
  from nst_jax import transfer
  from nst_jax.config import ConfigError
  content, s1, s2 = _images(3, seed=1)
  r = transfer.stylize(content, [s1], _tiny_config(style_loss='sw', scales=(24, 32),
                                                   num_iterations=(2, 2)),
                       weights=caffe_weights)
  assert r.image.shape == (24, 32, 3) and r.iterations == 4 and 'style/sw' in r.terms
  masks = np.zeros((2, 24, 32), np.float32)
  masks[0, :, :16] = 1.0
  masks[1] = 1 - masks[0]
  style_masks = [np.ones(s1.shape[:2], np.float32), np.ones(s2.shape[:2], np.float32)]
  r = transfer.stylize(content, [s1, s2], _tiny_config(style_loss='sw', num_iterations=(2,)),
                       content_masks=list(masks), style_masks=style_masks, weights=caffe_weights)
  assert np.isfinite(r.terms['style/sw'])
  with pytest.raises(ConfigError, match='`content_masks`: 8 pixel'):
    bad = masks.copy()
    bad[1, 0, 16:24] = 0.0
    transfer.stylize(content, [s1, s2], _tiny_config(), content_masks=list(bad),
                     weights=caffe_weights)
  with pytest.raises(ConfigError, match='`style_masks`: mask 2 is empty'):
    transfer.stylize(content, [s1, s2], _tiny_config(), content_masks=list(masks),
                     style_masks=[style_masks[0], 0 * style_masks[1]], weights=caffe_weights)


def test_stylize_many_with_sliced_wasserstein(caffe_weights):
  from nst_jax import matrix
  from nst_jax.config import StyleSpec
  c1, c2, s1, s2 = _images(4, seed=2)
  cells = matrix.stylize_many([c1, c1], [StyleSpec((s1,)), StyleSpec((s2,))],
                              _tiny_config(style_loss='sw', color_weight=1.0),
                              weights=caffe_weights)
  assert len(cells) == 4
  for cell in cells:
    assert cell.error is None and np.isfinite(cell.terms['style/sw']), cell
