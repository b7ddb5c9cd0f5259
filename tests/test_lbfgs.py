"""L-BFGS transformation against torch.optim.LBFGS(line_search_fn=None)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nst_jax import lbfgs

torch = pytest.importorskip('torch')


def _rosenbrock_np(x):
  return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def _run_jax(fn, x0, iters, history, lr):
  opt = lbfgs.scale_by_torch_lbfgs(history_size=history, learning_rate=lr)
  x = jnp.asarray(x0)
  state = opt.init(x)
  values = []
  for _ in range(iters):
    v, g = jax.value_and_grad(fn)(x)
    values.append(float(v))
    u, state = opt.update(g, state, x)
    x = optax.apply_updates(x, u)
  return np.asarray(x), values


def _run_torch(fn, x0, iters, history, lr):
  x = torch.tensor(np.asarray(x0, np.float64), requires_grad=True)
  opt = torch.optim.LBFGS([x], lr=lr, max_iter=iters,
                          history_size=history, tolerance_grad=-1,
                          tolerance_change=-1, line_search_fn=None)
  values = []

  def closure():
    opt.zero_grad()
    loss = fn(x)
    loss.backward()
    values.append(float(loss.detach()))
    return loss

  opt.step(closure)
  return x.detach().numpy(), values


@pytest.mark.parametrize('history', [3, 100])
def test_matches_torch_on_rosenbrock(history):
  """Same trajectory as torch in float64: the step rule and ring buffer agree."""
  with jax.enable_x64(True):
    x0 = np.linspace(-1.2, 1.0, 6)
    fn_j = lambda x: jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    fn_t = lambda x: torch.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    xj, vj = _run_jax(fn_j, x0, 40, history, 0.5)
    xt, vt = _run_torch(fn_t, x0, 40, history, 0.5)
  assert len(vj) == len(vt) == 40
  np.testing.assert_allclose(vj, vt, rtol=1e-7)
  np.testing.assert_allclose(xj, xt, rtol=1e-7, atol=1e-9)


def test_first_step_scaled_by_l1_norm():
  opt = lbfgs.scale_by_torch_lbfgs(history_size=5)
  g = jnp.array([300.0, -100.0])
  u, _ = opt.update(g, opt.init(jnp.zeros(2)))
  np.testing.assert_allclose(u, -g / 400.0, rtol=1e-6)


def test_skips_pairs_without_curvature():
  """On a linear function y = 0, so no pair is stored and H stays identity."""
  opt = lbfgs.scale_by_torch_lbfgs(history_size=5, learning_rate=0.1)
  x = jnp.zeros(3)
  state = opt.init(x)
  g = jnp.array([1.0, 2.0, 3.0])
  for _ in range(4):
    u, state = opt.update(g, state, x)
    x = x + u
  assert int(state.num_pairs) == 0
  np.testing.assert_allclose(u, -0.1 * g, rtol=1e-6)


def test_vmaps_over_independent_problems():
  """Two problems in one vmapped update equal two separate updates."""
  opt = lbfgs.scale_by_torch_lbfgs(history_size=4)
  fn = lambda x, a: jnp.sum(a * (x - 1.0) ** 2)
  a = jnp.array([[1.0, 3.0], [2.0, 0.5]])

  def run(a):
    x = jnp.zeros(2)
    state = opt.init(x)
    for _ in range(6):
      u, state = opt.update(jax.grad(fn)(x, a), state, x)
      x = x + u
    return x

  batched = jax.jit(jax.vmap(run))(a)
  for i in range(2):
    np.testing.assert_allclose(batched[i], run(a[i]), rtol=1e-6)
