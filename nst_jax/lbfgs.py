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
update is ``jit``-, ``vmap``- and ``scan``-friendly; the two-loop recursion
only visits the stored pairs. Each update reads each history twice, one pair
at a time; the compact representation of Byrd, Nocedal & Schnabel (1994)
reads them twice as well (two products with the ``[m, n]`` histories, then one
combination pass over both) and was slower with XLA on CPU, so the two-loop
stays (``benchmarks/lbfgs.py`` times both).

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
  count: jax.Array        # updates done so far (int32)
  s_history: jax.Array    # [m, n] steps taken (uint16: bfloat16 bits)
  y_history: jax.Array    # [m, n] gradient differences (uint16: bfloat16 bits)
  rho: jax.Array          # [m] 1 / (y.s)
  head: jax.Array         # next ring slot to write (int32)
  num_pairs: jax.Array    # stored pairs, <= m (int32)
  h_diag: jax.Array       # initial inverse-Hessian scale
  prev_grad: jax.Array    # [n]
  prev_step: jax.Array    # [n]


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


def scale_by_torch_lbfgs(history_size: int = 100, learning_rate: float = 1.0,
                         history_dtype=None) -> optax.GradientTransformation:
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

  def init_fn(params):
    flat, _ = ravel_pytree(params)
    n = flat.size
    dtype = flat.dtype if history_dtype is None else jnp.dtype(history_dtype)
    if dtype == jnp.bfloat16:
      dtype = jnp.dtype(jnp.uint16)  # bit patterns, see the module docstring
    return LbfgsState(
        count=jnp.zeros((), jnp.int32),
        s_history=jnp.zeros((m, n), dtype),
        y_history=jnp.zeros((m, n), dtype),
        rho=jnp.zeros((m,), flat.dtype),
        head=jnp.zeros((), jnp.int32),
        num_pairs=jnp.zeros((), jnp.int32),
        h_diag=jnp.ones((), flat.dtype),
        prev_grad=jnp.zeros((n,), flat.dtype), prev_step=jnp.zeros((n,), flat.dtype))

  def update_fn(updates, state: LbfgsState, params=None):
    del params
    g, unravel = ravel_pytree(updates)
    y = g - state.prev_grad
    s = state.prev_step
    ys = jnp.vdot(y, s)
    # The pair as stored (rounded when the history is narrower than g): its
    # own curvature scalars keep H consistent with what the two-loop reads.
    dtype = state.s_history.dtype
    s_kept, y_kept = _narrow(s, dtype), _narrow(y, dtype)
    ys_kept = jnp.vdot(_widen(y_kept, g.dtype), _widen(s_kept, g.dtype))
    accept = (state.count > 0) & (ys > _CURVATURE_EPS) & (ys_kept > _CURVATURE_EPS)
    head = state.head
    # Only one ring row changes, so a masked write of that row is cheap.
    s_hist = state.s_history.at[head].set(jnp.where(accept, s_kept, state.s_history[head]))
    y_hist = state.y_history.at[head].set(jnp.where(accept, y_kept, state.y_history[head]))
    rho = state.rho.at[head].set(jnp.where(accept, 1.0 / jnp.where(accept, ys_kept, 1.0),
                                           state.rho[head]))
    yy_kept = jnp.vdot(_widen(y_kept, g.dtype), _widen(y_kept, g.dtype))
    h_diag = jnp.where(accept, ys_kept / jnp.where(accept, yy_kept, 1.0), state.h_diag)
    state = state._replace(
        s_history=s_hist, y_history=y_hist, rho=rho, h_diag=h_diag.astype(g.dtype),
        head=jnp.where(accept, (head + 1) % m, head).astype(jnp.int32),
        num_pairs=jnp.where(accept, jnp.minimum(state.num_pairs + 1, m),
                            state.num_pairs).astype(jnp.int32))
    d = _two_loop(g, state, m)
    first = jnp.minimum(1.0, 1.0 / jnp.sum(jnp.abs(g))) * learning_rate
    t = jnp.where(state.count == 0, first, learning_rate).astype(g.dtype)
    step = t * d
    state = state._replace(count=state.count + 1, prev_grad=g, prev_step=step)
    return unravel(step), state

  return optax.GradientTransformation(init_fn, update_fn)

