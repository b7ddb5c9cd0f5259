"""Cost of one L-BFGS update at a full history: two-loop recursion vs compact representation.

  python -m benchmarks.lbfgs                        # 512x384x3, 20 and 100 pairs
  python -m benchmarks.lbfgs --histories=100 --bfloat16
  python scripts/benchmark.py --mode=lbfgs          # the same, defaults, appended to RESULTS.md

``two_loop`` and ``compact`` are ``nst_jax.lbfgs.scale_by_torch_lbfgs`` with
``direction='two_loop'`` (the pair-by-pair recursion) and ``'compact'`` (the
compact representation of Byrd, Nocedal & Schnabel, 1994); ``two_loop_bf16`` (``--bfloat16``) is nst_jax's
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

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import lbfgs


DEFAULTS = {'height': 384, 'width': 512, 'histories': [20, 100], 'iterations': 10,
            'repeats': 3, 'bfloat16': False}


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
  variants = {'two_loop': lambda m: lbfgs.scale_by_torch_lbfgs(m, direction='two_loop'),
              'compact': lambda m: lbfgs.scale_by_torch_lbfgs(m, direction='compact')}
  if f['bfloat16']:
    variants['two_loop_bf16'] = lambda m: lbfgs.scale_by_torch_lbfgs(
        m, history_dtype=jnp.bfloat16, direction='two_loop')
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
