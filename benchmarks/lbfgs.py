"""Cost of one L-BFGS update at a full history: two-loop recursion vs compact representation.

  python -m benchmarks.lbfgs                        # 512x384x3, 20 and 100 pairs
  python -m benchmarks.lbfgs --histories=100 --bfloat16
  python scripts/benchmark.py --mode=lbfgs          # the same, defaults, appended to RESULTS.md

``two_loop`` is ``nst_jax.lbfgs.scale_by_torch_lbfgs`` (the pair-by-pair
two-loop recursion); ``compact`` (below) has the same step rule and state
semantics but computes the direction from the compact representation of Byrd,
Nocedal & Schnabel (1994); ``two_loop_bf16`` (``--bfloat16``) is nst_jax's
optimizer with ``history_dtype=bfloat16``. Each first fills its history on a
synthetic diagonal quadratic (every pair passes the curvature test), then
compiled ``fori_loop``s of ``--iterations`` updates are timed, as the
style-transfer chunk runs them, the variants alternating. The quadratic's
gradient (a few elementwise passes) is in every figure and timed on its own.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from nst_jax import lbfgs

_CURVATURE_EPS = 1e-10

DEFAULTS = {'height': 384, 'width': 512, 'histories': [20, 100], 'iterations': 10,
            'repeats': 3, 'bfloat16': False}


class CompactState(NamedTuple):
  count: jax.Array
  s_history: jax.Array    # [m, n] ring buffer
  y_history: jax.Array    # [m, n]
  sy: jax.Array           # [m, m] s_i . y_j by ring slot
  yy: jax.Array           # [m, m] y_i . y_j by ring slot
  head: jax.Array
  num_pairs: jax.Array
  h_diag: jax.Array
  prev_grad: jax.Array
  prev_step: jax.Array


def _compact_direction(g, s_g, y_g, st: CompactState, m: int):
  """``-H g`` by Byrd, Nocedal & Schnabel (1994), eq. 2.17.

  With the stored pairs oldest first, ``R`` the upper triangle of ``S^T Y``,
  ``D`` its diagonal and ``gamma`` the initial scale:
  ``H g = gamma g + S p - gamma Y u``, ``u = R^-1 S^T g``,
  ``p = R^-T ((D + gamma Y^T Y) u - gamma Y^T g)``.
  """
  order = (st.head + jnp.arange(m)) % m     # oldest first; empty slots first
  valid = jnp.arange(m) >= m - st.num_pairs
  both = valid[:, None] & valid[None, :]
  sy = jnp.where(both, st.sy[order][:, order], 0.0)
  yy = jnp.where(both, st.yy[order][:, order], 0.0)
  a = jnp.where(valid, s_g[order], 0.0)
  b = jnp.where(valid, y_g[order], 0.0)
  r = jnp.triu(sy) + jnp.diag(jnp.where(valid, 0.0, 1.0))  # empty slots decouple
  gamma = st.h_diag
  u = jax.scipy.linalg.solve_triangular(r, a, lower=False)
  p = jax.scipy.linalg.solve_triangular(
      r, jnp.diagonal(sy) * u + gamma * (yy @ u) - gamma * b, lower=False, trans='T')
  p_slot = jnp.zeros_like(p).at[order].set(p)
  u_slot = jnp.zeros_like(u).at[order].set(u)
  return -(gamma * g + p_slot @ st.s_history - gamma * (u_slot @ st.y_history))


def compact_lbfgs(history_size: int, learning_rate: float = 1.0
                  ) -> optax.GradientTransformation:
  """torch's step rule (as nst_jax.lbfgs), direction from the compact representation.

  ``S^T Y`` and ``Y^T Y`` are kept in the state, one new row and column per
  stored pair; each update reads each history twice: ``S [y, g]`` and
  ``Y [s, y, g]``, then the combination ``S p`` and ``Y u``.
  """
  m = int(history_size)

  def init_fn(params):
    flat, _ = ravel_pytree(params)
    n, dt = flat.size, flat.dtype
    return CompactState(jnp.zeros((), jnp.int32), jnp.zeros((m, n), dt),
                        jnp.zeros((m, n), dt), jnp.zeros((m, m), dt), jnp.zeros((m, m), dt),
                        jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                        jnp.ones((), dt), jnp.zeros((n,), dt), jnp.zeros((n,), dt))

  def update_fn(updates, st, params=None):
    del params
    g, unravel = ravel_pytree(updates)
    y, s = g - st.prev_grad, st.prev_step
    ys = jnp.vdot(y, s)
    accept = (st.count > 0) & (ys > _CURVATURE_EPS)
    head = st.head
    s_hist = st.s_history.at[head].set(jnp.where(accept, s, st.s_history[head]))
    y_hist = st.y_history.at[head].set(jnp.where(accept, y, st.y_history[head]))
    s_prod = jnp.einsum('mn,kn->mk', s_hist, jnp.stack([y, g]))      # S y, S g
    y_prod = jnp.einsum('mn,kn->mk', y_hist, jnp.stack([s, y, g]))   # Y s, Y y, Y g
    sy = st.sy.at[:, head].set(jnp.where(accept, s_prod[:, 0], st.sy[:, head]))
    sy = sy.at[head, :].set(jnp.where(accept, y_prod[:, 0], sy[head, :]))
    yy = st.yy.at[:, head].set(jnp.where(accept, y_prod[:, 1], st.yy[:, head]))
    yy = yy.at[head, :].set(jnp.where(accept, y_prod[:, 1], yy[head, :]))
    st = st._replace(
        s_history=s_hist, y_history=y_hist, sy=sy, yy=yy,
        h_diag=jnp.where(accept, ys / jnp.where(accept, jnp.vdot(y, y), 1.0),
                         st.h_diag).astype(g.dtype),
        head=jnp.where(accept, (head + 1) % m, head).astype(jnp.int32),
        num_pairs=jnp.where(accept, jnp.minimum(st.num_pairs + 1, m),
                            st.num_pairs).astype(jnp.int32))
    d = _compact_direction(g, s_prod[:, 1], y_prod[:, 2], st, m)
    first = jnp.minimum(1.0, 1.0 / jnp.sum(jnp.abs(g))) * learning_rate
    step = jnp.where(st.count == 0, first, learning_rate).astype(g.dtype) * d
    return unravel(step), st._replace(count=st.count + 1, prev_grad=g, prev_step=step)

  return optax.GradientTransformation(init_fn, update_fn)


def _quadratic(n: int):
  """Gradient of a diagonal quadratic with curvatures in [1, 10] (y.s > 0 always)."""
  curv = jnp.asarray(np.random.default_rng(0).uniform(1.0, 10.0, n), jnp.float32)
  return lambda x: curv * (x - 1.0)


def _filled_loop(opt, n: int, m: int):
  """(jitted ``loop(x, state, k)``, its carry with a full history) for ``opt``."""
  grad = _quadratic(n)

  def loop(x, state, k):
    def body(_, c):
      x, state = c
      u, state = opt.update(grad(x), state, x)
      return x + u, state
    return jax.lax.fori_loop(0, k, body, (x, state))

  loop = jax.jit(loop, donate_argnums=(0, 1))
  x = jnp.zeros((n,), jnp.float32)
  return loop, jax.block_until_ready(loop(x, jax.jit(opt.init)(x), m + 1))


def _timed_loops(opts: dict, n: int, m: int, iterations: int, repeats: int) -> dict:
  """Median seconds per update of each optimizer, the variants alternating."""
  loops = {name: _filled_loop(opt, n, m) for name, opt in opts.items()}
  carries = {name: c for name, (_, c) in loops.items()}
  times = {name: [] for name in opts}
  for _ in range(repeats):
    for name, (loop, _) in loops.items():
      t0 = time.perf_counter()
      carries[name] = jax.block_until_ready(loop(*carries[name], iterations))
      times[name].append((time.perf_counter() - t0) / iterations)
  return {name: (statistics.median(t), int(carries[name][1].num_pairs))
          for name, t in times.items()}


def _gradient_only(n: int, iterations: int, repeats: int) -> float:
  grad = _quadratic(n)
  run = jax.jit(lambda x, k: jax.lax.fori_loop(0, k, lambda _, x: x - 1e-3 * grad(x), x))
  x = jax.block_until_ready(run(jnp.zeros((n,), jnp.float32), 1))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    x = jax.block_until_ready(run(x, iterations))
    times.append((time.perf_counter() - t0) / iterations)
  return statistics.median(times)


def run(flags: dict) -> dict:
  """Times the update with each history size; returns a JSON-able dict."""
  f = {**DEFAULTS, **(flags or {})}
  n = f['height'] * f['width'] * 3
  variants = {'two_loop': lbfgs.scale_by_torch_lbfgs, 'compact': compact_lbfgs}
  if f['bfloat16']:
    variants['two_loop_bf16'] = lambda m: lbfgs.scale_by_torch_lbfgs(
        m, history_dtype=jnp.bfloat16)
  rows = []
  for m in f['histories']:
    m = int(m)
    timed = _timed_loops({name: make(m) for name, make in variants.items()}, n, m,
                         f['iterations'], f['repeats'])
    for name, (seconds, pairs) in timed.items():
      rows.append({'history': m, 'pairs': pairs, 'variant': name, 'update_s': seconds})
      print(f'  history {m:4d} {name:13s} {1e3 * seconds:8.2f} ms/update', file=sys.stderr,
            flush=True)
  return {'device': f'{jax.devices()[0].platform}:{jax.devices()[0].device_kind}',
          'shape': [f['height'], f['width'], 3], 'n': n, 'iterations': f['iterations'],
          'repeats': f['repeats'], 'rows': rows,
          'gradient_only_s': _gradient_only(n, f['iterations'], f['repeats'])}


def markdown(results: dict) -> str:
  """A table of ms per update, and each variant's speed-up over the two-loop."""
  h, w, _ = results['shape']
  base = {r['history']: r['update_s'] for r in results['rows'] if r['variant'] == 'two_loop'}
  lines = [f'L-BFGS update at {w}x{h}x3 ({results["n"]} values) on {results["device"]}, '
           f'median of {results["repeats"]} alternating compiled loops of '
           f'{results["iterations"]} updates, history full:', '',
           '| history | variant | ms / update | two-loop / variant |', '|---|---|---|---|']
  for r in results['rows']:
    lines.append(f'| {r["history"]} | {r["variant"]} | {1e3 * r["update_s"]:.2f} | '
                 f'{base[r["history"]] / r["update_s"]:.2f}x |')
  lines += ['', f'The synthetic gradient alone (in every figure above): '
            f'{1e3 * results["gradient_only_s"]:.2f} ms.']
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  from benchmarks import cli
  cli.main(DEFAULTS, run, markdown, {
      'height': 'Image height, pixels.',
      'width': 'Image width, pixels.',
      'histories': 'History sizes to time.',
      'iterations': 'Updates per timed loop.',
      'repeats': 'Timed loops (median reported).',
      'bfloat16': 'Also time a bfloat16 history.',
  }, json_flag='output_json')
