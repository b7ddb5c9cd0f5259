"""L-BFGS as an optax GradientTransformation, with PyTorch's fixed-step behaviour.

``torch.optim.LBFGS(line_search_fn=None)`` and Lua ``optim.lbfgs`` (which
jcjohnson/neural-style and its PyTorch ports use) take one function evaluation
per iteration: the step is the two-loop L-BFGS direction times a fixed
learning rate, except the very first step, which is scaled by
``min(1, 1 / |g|_1)``. optax's own ``scale_by_lbfgs`` with unit steps has no
such first-step scaling, and on the style-transfer objective (gradients of
order 1e6) its first step throws the image far away; ``optax.lbfgs`` fixes that
with a zoom line search that costs several evaluations per iteration.

Details reproduced from the references:
* a curvature pair ``(s, y)`` is stored only when ``y.s > 1e-10``;
* the initial inverse Hessian is ``(y.s / y.y) I`` from the newest stored pair;
* the history is a ring of ``history_size`` pairs, oldest dropped first.

The state has fixed shapes (a ``[history_size, n]`` ring buffer), so the
update is ``jit``-, ``vmap``- and ``scan``-friendly. Two ways to get the
direction, with the same results up to float32 round-off (``direction=``):

* ``'two_loop'``: the recursion visits the stored pairs one at a time, two
  dot products and two vector updates each. Each update reads each history
  twice. Fastest with XLA on CPU.
* ``'compact'``: the compact representation of Byrd, Nocedal & Schnabel
  (1994). The state also keeps ``S^T Y`` and ``Y^T Y`` (one new row and
  column per stored pair); an update is two matrix products with the
  ``[m, n]`` histories, two ``m x m`` triangular solves and one combination
  pass. It reads the histories twice as well, but in a handful of large
  operations instead of ~4 small ones per pair: on a GPU, the two-loop's
  100 pairs cost about 2.7 ms of a 6.8 ms iteration at 512x384 (an H200),
  nearly all of it kernel launches. With the compact form, 500 iterations at
  512x512 take 1.36 s there instead of 3.50 s, at the same objective. Slower
  than the two-loop with XLA on CPU (``benchmarks/lbfgs.py`` times both).
* ``'auto'`` (default): ``'compact'`` on an accelerator, ``'two_loop'`` on
  CPU or with a bfloat16 history (the compact products want float32 rows).

``history_dtype=jnp.bfloat16`` stores the two histories in bfloat16, halving
their memory (the largest part of the state: ``2 * history_size`` image-sized
vectors); every product and the direction stay in float32. The rows are kept
as their bit patterns (uint16) and widened with a shift: XLA's CPU backend
computes on bfloat16 arrays through float32 copies, which made each update
about 4x slower, and it leaves integer arrays alone.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

_CURVATURE_EPS = 1e-10
DIRECTIONS = ('auto', 'two_loop', 'compact')  # ``direction=``; the module docstring


def _narrow(v, stored_dtype):
  """``v`` as stored: bfloat16 rounding (nearest even), kept as uint16 bits."""
  if stored_dtype == jnp.uint16:
    return jax.lax.bitcast_convert_type(v.astype(jnp.bfloat16), jnp.uint16)
  return v.astype(stored_dtype)


def _widen(v, dtype):
  """A stored row back in ``dtype`` (bfloat16 bits -> the float32 of equal value)."""
  if v.dtype == jnp.uint16:
    v = jax.lax.bitcast_convert_type(v.astype(jnp.uint32) << 16, jnp.float32)
  return v.astype(dtype)


class LbfgsState(NamedTuple):
  """State of the two-loop direction (``direction='two_loop'``)."""
  count: jax.Array        # updates done so far (int32)
  s_history: jax.Array    # [m, n] steps taken (uint16: bfloat16 bits)
  y_history: jax.Array    # [m, n] gradient differences (uint16: bfloat16 bits)
  rho: jax.Array          # [m] 1 / (y.s)
  head: jax.Array         # next ring slot to write (int32)
  num_pairs: jax.Array    # stored pairs, <= m (int32)
  h_diag: jax.Array       # initial inverse-Hessian scale
  prev_grad: jax.Array    # [n]
  prev_step: jax.Array    # [n]


class CompactLbfgsState(NamedTuple):
  """State of the compact direction: ``LbfgsState``'s fields, ``rho`` replaced
  by the ``[m, m]`` inner products of the stored pairs, by ring slot."""
  count: jax.Array
  s_history: jax.Array    # [m, n]
  y_history: jax.Array    # [m, n]
  sy: jax.Array           # [m, m] s_i . y_j
  yy: jax.Array           # [m, m] y_i . y_j
  head: jax.Array
  num_pairs: jax.Array
  h_diag: jax.Array
  prev_grad: jax.Array
  prev_step: jax.Array


_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 in the inner products on GPUs


def _compact_direction(g, s_g, y_g, s_rows, y_rows, state: CompactLbfgsState, m: int):
  """``-H g`` by Byrd, Nocedal & Schnabel (1994), eq. 2.17.

  With the stored pairs oldest first, ``R`` the upper triangle of ``S^T Y``,
  ``D`` its diagonal and ``gamma`` the initial scale:
  ``H g = gamma g + S p - gamma Y u`` where ``u = R^-1 S^T g`` and
  ``p = R^-T ((D + gamma Y^T Y) u - gamma Y^T g)``. ``s_g`` and ``y_g`` are
  ``S g`` and ``Y g`` by ring slot; ``s_rows`` and ``y_rows`` the histories
  in ``g``'s dtype.
  """
  order = (state.head + jnp.arange(m)) % m     # oldest first; empty slots first
  valid = jnp.arange(m) >= m - state.num_pairs
  both = valid[:, None] & valid[None, :]
  sy = jnp.where(both, state.sy[order][:, order], 0.0)
  yy = jnp.where(both, state.yy[order][:, order], 0.0)
  a = jnp.where(valid, s_g[order], 0.0)
  b = jnp.where(valid, y_g[order], 0.0)
  r = jnp.triu(sy) + jnp.diag(jnp.where(valid, 0.0, 1.0))  # empty slots decouple
  gamma = state.h_diag
  u = jax.scipy.linalg.solve_triangular(r, a, lower=False)
  p = jax.scipy.linalg.solve_triangular(
      r, jnp.diagonal(sy) * u + gamma * jnp.dot(yy, u, precision=_HIGHEST) - gamma * b,
      lower=False, trans='T')
  p_slot = jnp.zeros_like(p).at[order].set(p)
  u_slot = jnp.zeros_like(u).at[order].set(u)
  # Two vector-matrix products; stacking S and Y for one would copy both.
  s_part = jnp.dot(p_slot, s_rows, precision=_HIGHEST)
  y_part = jnp.dot(u_slot, y_rows, precision=_HIGHEST)
  return -(gamma * g + s_part - gamma * y_part)


def _two_loop(g, state: LbfgsState, m: int):
  """Returns the direction ``-H g`` with H the L-BFGS inverse Hessian."""
  row = lambda history, i: _widen(history[i], g.dtype)
  k = state.num_pairs

  def slot(j):  # j-th newest pair
    return (state.head - 1 - j) % m

  def backward(j, carry):
    q, alphas = carry
    i = slot(j)
    a = state.rho[i] * jnp.vdot(row(state.s_history, i), q)
    return q - a * row(state.y_history, i), alphas.at[j].set(a)

  q, alphas = jax.lax.fori_loop(0, k, backward, (-g, jnp.zeros((m,), g.dtype)))
  r = q * state.h_diag

  def forward(jj, r):
    j = k - 1 - jj  # oldest first
    i = slot(j)
    b = state.rho[i] * jnp.vdot(row(state.y_history, i), r)
    return r + (alphas[j] - b) * row(state.s_history, i)

  return jax.lax.fori_loop(0, k, forward, r)


class _Pair(NamedTuple):
  """The newest pair as the direction reads it, and whether it was stored."""
  s: jax.Array          # float, as stored (rounded when the history is narrower)
  y: jax.Array
  ys: jax.Array         # y.s of the stored pair
  accept: jax.Array     # bool: the pair passed the curvature test and was stored
  slot: jax.Array       # its ring slot (int32)


def _store_pair(state, g, y, s, m: int):
  """Writes ``(s, y)`` into the ring if it passes the curvature test; updates the scale."""
  ys = jnp.vdot(y, s)
  # The pair as stored (rounded when the history is narrower than g): its own
  # curvature scalars keep H consistent with what the direction reads.
  dtype = state.s_history.dtype
  s_kept, y_kept = _narrow(s, dtype), _narrow(y, dtype)
  s_wide, y_wide = _widen(s_kept, g.dtype), _widen(y_kept, g.dtype)
  ys_kept = jnp.vdot(y_wide, s_wide)
  accept = (state.count > 0) & (ys > _CURVATURE_EPS) & (ys_kept > _CURVATURE_EPS)
  head = state.head
  # Only one ring row changes, so a masked write of that row is cheap.
  s_hist = state.s_history.at[head].set(jnp.where(accept, s_kept, state.s_history[head]))
  y_hist = state.y_history.at[head].set(jnp.where(accept, y_kept, state.y_history[head]))
  yy_kept = jnp.vdot(y_wide, y_wide)
  h_diag = jnp.where(accept, ys_kept / jnp.where(accept, yy_kept, 1.0), state.h_diag)
  state = state._replace(
      s_history=s_hist, y_history=y_hist, h_diag=h_diag.astype(g.dtype),
      head=jnp.where(accept, (head + 1) % m, head).astype(jnp.int32),
      num_pairs=jnp.where(accept, jnp.minimum(state.num_pairs + 1, m),
                          state.num_pairs).astype(jnp.int32))
  return state, _Pair(s_wide, y_wide, ys_kept, accept, head)


def _two_loop_step(state: LbfgsState, g, pair: _Pair, m: int):
  """The two-loop direction, after recording the new pair's ``rho``."""
  rho = state.rho.at[pair.slot].set(
      jnp.where(pair.accept, 1.0 / jnp.where(pair.accept, pair.ys, 1.0), state.rho[pair.slot]))
  state = state._replace(rho=rho)
  return state, _two_loop(g, state, m)


def _compact_step(state: CompactLbfgsState, g, pair: _Pair, m: int):
  """The compact direction, after adding the new pair's row and column to S^T Y and Y^T Y.

  One pass over each history gives both: ``S [y, g]`` and ``Y [s, y, g]``.
  """
  # Widened once (a no-op for float32 histories), read by both passes.
  s_rows, y_rows = _widen(state.s_history, g.dtype), _widen(state.y_history, g.dtype)
  s_prod = jnp.einsum('mn,kn->mk', s_rows, jnp.stack([pair.y, g]), precision=_HIGHEST)
  y_prod = jnp.einsum('mn,kn->mk', y_rows, jnp.stack([pair.s, pair.y, g]), precision=_HIGHEST)
  head, accept = pair.slot, pair.accept
  sy = state.sy.at[:, head].set(jnp.where(accept, s_prod[:, 0], state.sy[:, head]))
  sy = sy.at[head, :].set(jnp.where(accept, y_prod[:, 0], sy[head, :]))
  yy = state.yy.at[:, head].set(jnp.where(accept, y_prod[:, 1], state.yy[:, head]))
  yy = yy.at[head, :].set(jnp.where(accept, y_prod[:, 1], yy[head, :]))
  state = state._replace(sy=sy, yy=yy)
  return state, _compact_direction(g, s_prod[:, 1], y_prod[:, 2], s_rows, y_rows, state, m)


def resolve_direction(direction: str, history_dtype=None) -> str:
  """``'two_loop'`` or ``'compact'``: what ``direction`` means on this backend.

  ``'auto'`` is ``'compact'`` on an accelerator and ``'two_loop'`` on CPU or
  with a bfloat16 history; the other two mean themselves.
  """
  if direction != 'auto':
    return direction
  narrow = history_dtype is not None and jnp.dtype(history_dtype) == jnp.bfloat16
  return 'two_loop' if narrow or jax.default_backend() == 'cpu' else 'compact'


def scale_by_torch_lbfgs(history_size: int = 100, learning_rate: float = 1.0,
                         history_dtype=None, direction: str = 'auto'
                         ) -> optax.GradientTransformation:
  """L-BFGS updates with PyTorch's ``LBFGS(line_search_fn=None)`` step rule.

  Args:
    history_size: curvature pairs kept (torch ``history_size``, Lua
      ``nCorrection``); 100 in the references.
    learning_rate: fixed step length after the first iteration.
    history_dtype: storage dtype of the ``[history_size, n]`` step and
      gradient-difference histories; default the parameters' dtype.
      ``jnp.bfloat16`` halves their memory; the curvature scalars are then
      computed from the rounded pairs, so the inverse Hessian stays positive
      definite.
    direction: ``'two_loop'``, ``'compact'`` or ``'auto'`` (the module
      docstring says which is faster where). The state's type follows it
      (``LbfgsState`` or ``CompactLbfgsState``).
  Returns:
    An optax GradientTransformation whose ``update(grads, state, params)``
    returns the step to add to the parameters (use ``optax.apply_updates``).
  """
  m = int(history_size)
  if m < 1:
    raise ValueError(f'history_size must be >= 1, got {history_size}')
  if history_dtype is not None and jnp.dtype(history_dtype) not in (
      jnp.dtype(jnp.float32), jnp.dtype(jnp.float64), jnp.dtype(jnp.bfloat16)):
    raise ValueError(f'history_dtype must be None, float32, float64 or bfloat16, '
                     f'got {history_dtype!r}')
  if direction not in DIRECTIONS:
    raise ValueError(f'direction must be one of {DIRECTIONS}, got {direction!r}')
  compact = resolve_direction(direction, history_dtype) == 'compact'

  def init_fn(params):
    flat, _ = ravel_pytree(params)
    n = flat.size
    dtype = flat.dtype if history_dtype is None else jnp.dtype(history_dtype)
    if dtype == jnp.bfloat16:
      dtype = jnp.dtype(jnp.uint16)  # bit patterns, see the module docstring
    common = dict(
        count=jnp.zeros((), jnp.int32),
        s_history=jnp.zeros((m, n), dtype),
        y_history=jnp.zeros((m, n), dtype),
        head=jnp.zeros((), jnp.int32),
        num_pairs=jnp.zeros((), jnp.int32),
        h_diag=jnp.ones((), flat.dtype),
        prev_grad=jnp.zeros((n,), flat.dtype), prev_step=jnp.zeros((n,), flat.dtype))
    if compact:
      return CompactLbfgsState(sy=jnp.zeros((m, m), flat.dtype),
                               yy=jnp.zeros((m, m), flat.dtype), **common)
    return LbfgsState(rho=jnp.zeros((m,), flat.dtype), **common)

  def update_fn(updates, state, params=None):
    del params
    g, unravel = ravel_pytree(updates)
    y = g - state.prev_grad
    s = state.prev_step
    state, pair = _store_pair(state, g, y, s, m)
    if compact:
      state, d = _compact_step(state, g, pair, m)
    else:
      state, d = _two_loop_step(state, g, pair, m)
    first = jnp.minimum(1.0, 1.0 / jnp.sum(jnp.abs(g))) * learning_rate
    t = jnp.where(state.count == 0, first, learning_rate).astype(g.dtype)
    step = t * d
    state = state._replace(count=state.count + 1, prev_grad=g, prev_step=step)
    return unravel(step), state

  return optax.GradientTransformation(init_fn, update_fn)
