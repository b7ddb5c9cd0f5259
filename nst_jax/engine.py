"""The compiled chunk loop that every optimisation in nst_jax runs on.

- ``objective(config, weights)``: what the programs read besides the image:
  the static loss settings (``loss_spec``: StyleConfig -> LossSpec, the one
  place a new loss setting is wired in), the loss weights (a pytree: new
  values do not recompile), the VGG19 parameters and the run's PRNG key.
- ``programs(spec, optimizer_key, batched)``: the jitted chunk, optimizer
  init and targets, cached by what changes the program (the static loss
  settings, the optimizer's settings, batched or not); shapes are jit's.
- ``run_chunks``: the one loop. A chunk is one compiled ``lax.while_loop`` of
  optimizer iterations with the image and optimizer state donated; it ends
  at progress and snapshot points, where the host looks at the result.
  ``compile_chunk`` compiles a new shape first, so that speeds exclude it.

``transfer.stylize`` (one problem, coarse to fine) and
``matrix.stylize_many`` (vmapped groups of problems) both drive this loop.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nst_jax import bands
from nst_jax import losses
from nst_jax import optimizers
from nst_jax import vgg
from nst_jax import weights as weights_lib
from nst_jax import winograd
from nst_jax.config import StyleConfig
from nst_jax.config import parse_style_loss


def loss_spec(config: StyleConfig) -> losses.LossSpec:
  """The static part of the objective for ``config`` (changing it recompiles).

  The one place where settings become the objective's program: a new loss
  setting (a ``StyleConfig`` field) is wired in here.
  """
  return losses.LossSpec(
      content_layers=config.content_layers, style_layers=config.style_layers,
      pooling=config.pooling, normalize_gradients=config.normalize_gradients,
      compute_dtype=None if config.precision == 'float32' else config.precision,
      remat=config.remat,
      style_losses=tuple(kind for kind, _ in parse_style_loss(config.style_loss)),
      color_loss=config.color_weight > 0, sw_redraw=config.sw_redraw,
      band_rows=config.band_rows,
      winograd=winograd.enabled(config.conv_algorithm, config.precision))


def loss_weights(config: StyleConfig, spec: losses.LossSpec) -> dict:
  """The loss-weight pytree for ``config`` (an argument: changing it does not recompile)."""
  return losses.default_loss_weights(
      spec, content_weight=config.content_weight, style_weight=config.style_weight,
      tv_weight=config.tv_weight, style_layer_weights=config.style_layer_weights,
      style_loss_weights=parse_style_loss(config.style_loss), color_weight=config.color_weight)


@dataclasses.dataclass(frozen=True)
class Objective:
  """What the compiled programs read besides the image, built once per run."""
  spec: losses.LossSpec
  params: Any                  # VGG19 parameters on the device
  loss_weights: dict
  prep: weights_lib.Preprocessing
  key: jax.Array               # the run's PRNG key (``config.seed``)


def vgg_params(spec: losses.LossSpec, ws: weights_lib.WeightSet):
  """``ws``'s VGG19 parameters on the device, with the kernels ``spec`` runs
  (``vgg.with_backward_kernels``) attached once for the whole run. The chunk
  attaches them itself when given plain parameters, once per chunk: at 512 px
  with 5-iteration chunks that was ~90 ms per iteration on 2 CPU cores."""
  return vgg.with_backward_kernels_jitted(jax.device_put(ws.params),
                                         winograd=getattr(spec, 'winograd', False))


def objective(config: StyleConfig, ws: weights_lib.WeightSet) -> Objective:
  spec = loss_spec(config)
  return Objective(spec, vgg_params(spec, ws), loss_weights(config, spec),
                   ws.preprocessing, jax.random.key(config.seed))


class ChunkInfo(NamedTuple):
  done: jax.Array          # iterations completed in this chunk
  bad: jax.Array           # a non-finite evaluation stopped the chunk
  grad_finite: jax.Array
  terms: dict[str, jax.Array]


def make_chunk_fn(spec: losses.LossSpec, optimizer: optax.GradientTransformation,
                  *, needs_value: bool = False, for_vmap: bool = False) -> Callable:
  """Builds ``chunk(x, opt_state, targets, params, loss_weights, key, start, n)``.

  Runs up to ``n`` optimizer iterations (a traced int, so any chunk length
  reuses one program) and returns ``(x, opt_state, last_finite_x, info)``.
  A non-finite evaluation stops the chunk and ``last_finite_x`` is the image
  of the last finite one. When ``spec.needs_key``, the objective gets
  ``key=spec.key_for(key, iteration)`` (new every ``spec.sw_redraw``
  iterations) with ``iteration`` counted from ``start``, so a resumed or
  differently chunked run sees the same keys. Not jitted: callers jit (and
  vmap) it.

  With ``for_vmap=True`` the loop's stopping test depends only on the shared
  counter, so under ``jax.vmap`` it is not batched and JAX does not select
  over every problem's whole carry (the L-BFGS history) each iteration; a
  problem that went non-finite just stops changing its image.
  """
  # A LossSpec may not know about keys (losses adds ``needs_key`` with its
  # stochastic terms); without one the key is unused and XLA drops it.
  needs_key = getattr(spec, 'needs_key', False)

  def chunk(x, opt_state, targets, params, loss_weights, key, start, n):
    # Flip (and Winograd-transform) the kernels once, not every iteration
    # (nothing to do when the caller attached them: `vgg_params`).
    params = vgg.with_backward_kernels(params, winograd=getattr(spec, 'winograd', False))

    def loss_fn(z, k):
      extra = {'key': spec.key_for(key, start + k)} if needs_key else {}
      return bands.total_loss(z, params, targets, loss_weights, spec, **extra)

    def value_and_grad(z, k):
      extra = {'key': spec.key_for(key, start + k)} if needs_key else {}
      return bands.value_and_grad(z, params, targets, loss_weights, spec, **extra)

    def cond(c):
      k, bad = c[0], c[5]
      return k < n if for_vmap else (k < n) & ~bad

    def body(c):
      k, i, x, opt_state, last_good, bad, prev_grad_ok, terms = c
      (value, new_terms), g = value_and_grad(x, k)
      grad_ok = jnp.all(jnp.isfinite(g))
      ok = jnp.isfinite(value) & grad_ok & ~bad
      # The update runs unconditionally and only the image is masked: a
      # lax.cond here would become a select over the whole optimizer state
      # under vmap. After a non-finite evaluation the state is not used again.
      if needs_value:
        updates, new_state = optimizer.update(g, opt_state, x, value=value, grad=g,
                                              value_fn=lambda z: loss_fn(z, k)[0])
      else:
        updates, new_state = optimizer.update(g, opt_state, x)
      new_x = jnp.where(ok, optax.apply_updates(x, updates), x)
      new_terms = jax.tree.map(lambda a, b: jnp.where(bad, b, a), new_terms, terms)
      return (k + 1, i + ok.astype(jnp.int32), new_x, new_state,
              jnp.where(ok, x, last_good), bad | ~ok, jnp.where(bad, prev_grad_ok, grad_ok),
              new_terms)

    _, terms0 = jax.eval_shape(loss_fn, x, jnp.int32(0))
    terms0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), terms0)
    init = (jnp.int32(0), jnp.int32(0), x, opt_state, x, jnp.bool_(False), jnp.bool_(True),
            terms0)
    _, i, x, opt_state, last_good, bad, grad_ok, terms = jax.lax.while_loop(cond, body, init)
    return x, opt_state, last_good, ChunkInfo(i, bad, grad_ok, terms)

  return chunk


class Programs(NamedTuple):
  chunk: Callable         # jitted chunk (vmapped over problems when batched)
  init: Callable          # jitted optimizer init (vmapped likewise)
  targets: Callable       # jitted bands.make_targets (losses.make_targets, in bands if asked)
  compiled: set           # (shape, sharding) of every image the chunk was compiled for


@functools.lru_cache(maxsize=16)
def programs(spec: losses.LossSpec, optimizer: tuple, batched: bool = False) -> Programs:
  """The compiled programs of one objective, optimizer (``optimizer_key``) and layout."""
  opt = optimizers.optimizer_from_key(optimizer)
  chunk = make_chunk_fn(spec, opt, needs_value=optimizer[0] == 'lbfgs_linesearch',
                        for_vmap=batched)
  init = opt.init
  if batched:  # Image, state and targets are per problem; the rest is shared.
    chunk = jax.vmap(chunk, in_axes=(0, 0, 0, None, None, None, None, None))
    init = jax.vmap(init)
  return Programs(jax.jit(chunk, donate_argnums=(0, 1)), jax.jit(init),
                  jax.jit(functools.partial(bands.make_targets, spec=spec)), set())


class Chunk(NamedTuple):
  x: jax.Array
  opt_state: Any
  last_good: jax.Array
  info: ChunkInfo
  iteration: int            # iterations done after this chunk
  seconds: float            # its wall time (no compilation in it)


def run_chunks(step: Callable, x, opt_state, start: int, total: int, chunk_size: int,
               every: Sequence[int] = ()) -> Iterator[Chunk]:
  """Runs ``step(x, opt_state, start, n) -> (x, opt_state, last_good, info)`` in chunks.

  Iterates from ``start`` to ``total``; a chunk is at most ``chunk_size``
  iterations and ends at each multiple of every nonzero value of ``every``
  (progress lines, snapshots). Yields after each chunk and stops once every
  problem has gone non-finite.
  """
  it = start
  while it < total:
    boundary = min(total, it + chunk_size, *((it // e + 1) * e for e in every if e))
    t0 = time.perf_counter()
    x, opt_state, last_good, info = step(x, opt_state, it, boundary - it)
    it += int(np.max(info.done))  # Waits for the device.
    yield Chunk(x, opt_state, last_good, info, it, time.perf_counter() - t0)
    if np.all(np.asarray(info.bad)):
      return


def compile_chunk(progs: Programs, step: Callable, x, opt_state, start: int = 0,
                  before: Callable[[], None] | None = None):
  """Compiles the chunk for ``x``'s shape by running 0 iterations: (x, opt_state, seconds).

  ``before`` is called first if the program is new (to say it is compiling).
  """
  key = (x.shape, x.sharding)
  if key in progs.compiled:
    return x, opt_state, 0.0
  if before is not None:
    before()
  t0 = time.perf_counter()
  x, opt_state, _, info = step(x, opt_state, start, 0)
  jax.block_until_ready(info.done)
  progs.compiled.add(key)
  return x, opt_state, time.perf_counter() - t0
