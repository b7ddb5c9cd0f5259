"""L-BFGS transformation against torch.optim.LBFGS(line_search_fn=None) and a numpy two-loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nst_jax import lbfgs


def _rosenbrock_np(x):
  return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def _run_jax(fn, x0, iters, history, lr):
  opt = lbfgs.scale_by_torch_lbfgs(history_size=history, learning_rate=lr)
  x = jnp.asarray(x0)
  state = opt.init(x)
  values = []
  value_and_grad, update = jax.jit(jax.value_and_grad(fn)), jax.jit(opt.update)
  for _ in range(iters):
    v, g = value_and_grad(x)
    values.append(float(v))
    u, state = update(g, state, x)
    x = optax.apply_updates(x, u)
  return np.asarray(x), values


def _run_torch(fn, x0, iters, history, lr):
  torch = pytest.importorskip('torch')
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
    fn_t = lambda x: (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()
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


def _two_loop_np(g, s_hist, y_hist, order):
  """-H g by the textbook two-loop recursion in float64 (Nocedal & Wright, alg. 7.4)."""
  s_hist, y_hist = np.asarray(s_hist, np.float64), np.asarray(y_hist, np.float64)
  q = -np.asarray(g, np.float64)
  rho = {i: 1.0 / (s_hist[i] @ y_hist[i]) for i in order}
  alpha = {}
  for i in reversed(order):  # newest first
    alpha[i] = rho[i] * (s_hist[i] @ q)
    q = q - alpha[i] * y_hist[i]
  newest = order[-1] if order else None
  gamma = 1.0 if newest is None else (s_hist[newest] @ y_hist[newest]) / (
      y_hist[newest] @ y_hist[newest])
  r = gamma * q
  for i in order:  # oldest first
    r = r + (alpha[i] - rho[i] * (y_hist[i] @ r)) * s_hist[i]
  return r


def _random_pairs(rng, n, k):
  """k pairs (s, y = A s) of a random SPD A with eigenvalues in [1, 10]: y.s > 0."""
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  a = (q * rng.uniform(1.0, 10.0, n)) @ q.T
  s = rng.standard_normal((k, n))
  return s, s @ a


@pytest.mark.parametrize('stored,head', [(3, 3), (5, 0), (5, 2)],
                         ids=['partly_filled', 'full', 'wrapped'])
def test_direction_matches_numpy_two_loop(stored, head):
  """The step is -H g from the stored ring (oldest dropped first), float32 within 1e-5."""
  m, n = 5, 64
  rng = np.random.default_rng(stored + head)
  s, y = _random_pairs(rng, n, stored)
  slots = [(head - stored + j) % m for j in range(stored)]  # oldest first
  s_hist, y_hist = np.zeros((m, n)), np.zeros((m, n))
  s_hist[slots], y_hist[slots] = s, y
  # The two-loop's state, which 'auto' would swap for the compact one on a GPU.
  opt = lbfgs.scale_by_torch_lbfgs(history_size=m, learning_rate=0.5, direction='two_loop')
  g = rng.standard_normal(n)
  newest = slots[-1]
  state = opt.init(jnp.zeros(n))._replace(
      count=jnp.int32(7), head=jnp.int32(head), num_pairs=jnp.int32(stored),
      s_history=jnp.asarray(s_hist, jnp.float32), y_history=jnp.asarray(y_hist, jnp.float32),
      rho=jnp.asarray([1.0 / (s_hist[i] @ y_hist[i]) if i in slots else 0.0 for i in range(m)],
                      jnp.float32),
      h_diag=jnp.float32((s_hist[newest] @ y_hist[newest]) / (y_hist[newest] @ y_hist[newest])),
      # prev_step = 0: y.s = 0 fails the curvature test, so no pair is added.
      prev_grad=jnp.asarray(rng.standard_normal(n), jnp.float32))
  u, new_state = opt.update(jnp.asarray(g, jnp.float32), state)
  assert int(new_state.num_pairs) == stored and int(new_state.head) == head
  want = 0.5 * _two_loop_np(g.astype(np.float32), s_hist.astype(np.float32),
                            y_hist.astype(np.float32), slots)
  assert np.linalg.norm(np.asarray(u, np.float64) - want) <= 1e-5 * np.linalg.norm(want)


def _quadratic_run(opt, iters, n=32):
  a = jnp.asarray(np.random.default_rng(0).uniform(1.0, 10.0, n), jnp.float32)
  x = jnp.zeros(n)
  state = opt.init(x)
  update = jax.jit(opt.update)
  for _ in range(iters):
    u, state = update(a * (x - 1.0), state, x)
    x = optax.apply_updates(x, u)
  return x, state


def test_bfloat16_history_is_the_two_loop_on_the_rounded_pairs():
  """bfloat16 storage: half the bytes, and the direction is exact for the pairs kept."""
  opt = lbfgs.scale_by_torch_lbfgs(history_size=4, learning_rate=0.5,
                                   history_dtype=jnp.bfloat16)
  x, state = _quadratic_run(opt, 7)
  assert state.s_history.nbytes == state.y_history.nbytes == 4 * 32 * 2
  assert int(state.num_pairs) == 4 and int(state.head) == 2
  g = np.random.default_rng(1).standard_normal(32).astype(np.float32)
  frozen = state._replace(prev_step=jnp.zeros_like(state.prev_step))  # no new pair
  u, _ = opt.update(jnp.asarray(g), frozen)
  as_f32 = lambda bits: (np.asarray(bits, np.uint32) << 16).view(np.float32)  # bf16 bits
  want = 0.5 * _two_loop_np(g, as_f32(state.s_history), as_f32(state.y_history), [2, 3, 0, 1])
  assert np.linalg.norm(np.asarray(u, np.float64) - want) <= 1e-5 * np.linalg.norm(want)
  x32, _ = _quadratic_run(lbfgs.scale_by_torch_lbfgs(history_size=4, learning_rate=0.5), 7)
  np.testing.assert_allclose(x, x32, rtol=2e-2)
  with pytest.raises(ValueError, match='history_dtype'):
    lbfgs.scale_by_torch_lbfgs(history_dtype=jnp.int8)


@pytest.mark.parametrize('history,iters', [(4, 3), (4, 9), (7, 30)],
                         ids=['partly_filled', 'wrapped_twice', 'long'])
def test_compact_direction_takes_the_two_loop_steps(history, iters):
  """direction='compact' (Byrd, Nocedal & Schnabel) equals the two-loop within 1e-5 relative."""
  make = lambda d: lbfgs.scale_by_torch_lbfgs(history_size=history, learning_rate=0.5,
                                              direction=d)
  x_two, two = _quadratic_run(make('two_loop'), iters)
  x_bns, bns = _quadratic_run(make('compact'), iters)
  assert isinstance(two, lbfgs.LbfgsState) and isinstance(bns, lbfgs.CompactLbfgsState)
  assert int(bns.head) == int(two.head) and int(bns.num_pairs) == int(two.num_pairs)
  np.testing.assert_allclose(x_bns, x_two, rtol=1e-5)
  # One more step from the same (two-loop) history, on a gradient unrelated to it.
  g = jnp.asarray(np.random.default_rng(3).standard_normal(32), jnp.float32)
  frozen = two._replace(prev_step=jnp.zeros_like(two.prev_step))  # no new pair
  s, y = np.asarray(two.s_history, np.float64), np.asarray(two.y_history, np.float64)
  compact_state = bns._replace(
      s_history=two.s_history, y_history=two.y_history, head=two.head,
      num_pairs=two.num_pairs, h_diag=two.h_diag, count=two.count,
      sy=jnp.asarray(s @ y.T, jnp.float32), yy=jnp.asarray(y @ y.T, jnp.float32),
      prev_step=frozen.prev_step, prev_grad=two.prev_grad)
  u_two, _ = make('two_loop').update(g, frozen)
  u_bns, _ = make('compact').update(g, compact_state)
  rel = np.linalg.norm(np.asarray(u_bns) - np.asarray(u_two)) / np.linalg.norm(u_two)
  assert rel <= 1e-5, rel


def test_compact_direction_vmaps_and_auto_picks_the_two_loop_on_cpu():
  opt = lbfgs.scale_by_torch_lbfgs(history_size=3, direction='compact')
  a = jnp.asarray(np.random.default_rng(0).uniform(1.0, 10.0, (2, 8)), jnp.float32)

  def run(ai):
    x = jnp.zeros(8)
    state = opt.init(x)
    for _ in range(6):
      u, state = opt.update(ai * (x - 1.0), state, x)
      x = x + u
    return x

  batched = jax.jit(jax.vmap(run))(a)
  for i in range(2):
    np.testing.assert_allclose(batched[i], run(a[i]), rtol=1e-6)
  auto = lbfgs.scale_by_torch_lbfgs(history_size=3).init(jnp.zeros(4))
  assert isinstance(auto, lbfgs.LbfgsState) == (jax.default_backend() == 'cpu')
  narrow = lbfgs.scale_by_torch_lbfgs(history_size=3, history_dtype=jnp.bfloat16)
  assert isinstance(narrow.init(jnp.zeros(4)), lbfgs.LbfgsState)
  with pytest.raises(ValueError, match='direction'):
    lbfgs.scale_by_torch_lbfgs(direction='three_loop')


def test_bfloat16_history_from_the_config_and_in_the_memory_estimate():
  """`lbfgs_history_dtype` reaches the optimizer; the estimate counts 2 bytes a value and
  its out-of-memory message names settings that fit."""
  import dataclasses
  from nst_jax import config as config_lib
  from nst_jax import memory
  from nst_jax import optimizers
  f32 = config_lib.StyleConfig(image_size=4096)
  bf16 = dataclasses.replace(f32, lbfgs_history_dtype='bfloat16')
  state = optimizers.make_optimizer(bf16).init(jnp.zeros((4, 4, 3)))
  assert state.s_history.nbytes == 100 * 48 * 2
  n = 3072 * 4096 * 3
  saved = memory.estimate_peak_bytes(3072, 4096, f32) - memory.estimate_peak_bytes(3072, 4096, bf16)
  assert saved == 2 * 100 * n * 2  # two [100, n] histories, 2 bytes less per value
  budget, shape = 60 * 2**30, (3072, 4096)
  with pytest.raises(config_lib.ConfigError, match='`lbfgs_history_dtype`=bfloat16'):
    config_lib.plan(f32, shape, [shape], budget=budget)
  changes = memory.fitting_changes(shape, f32, budget, [shape])
  assert changes
  for change in changes:
    assert memory.run_peak_bytes(shape, dataclasses.replace(f32, **change), [shape]) <= budget


def test_update_benchmark_runs_small():
  """benchmarks/lbfgs.py end to end at a tiny size (speeds are not asserted)."""
  from benchmarks import lbfgs as bench_lbfgs
  results = bench_lbfgs.run({'height': 8, 'width': 8, 'histories': [3], 'iterations': 2,
                             'repeats': 1, 'bfloat16': True})
  assert [r['variant'] for r in results['rows']] == ['two_loop', 'compact', 'two_loop_bf16']
  assert all(r['pairs'] == 3 and r['update_s'] > 0 for r in results['rows'])
  assert '| 3 | compact |' in bench_lbfgs.markdown(results)
