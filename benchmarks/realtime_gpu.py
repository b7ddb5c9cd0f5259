"""Frames per second of the real-time networks on an accelerator (issue 11's GPU line).

  python -m benchmarks.realtime_gpu --output_json=OUT/realtime_gpu.json
  python -m benchmarks.realtime_gpu --height=64 --width=96 --frames=4   # a CPU smoke run

multistyle26 (``cin_net.apply``) and the arbitrary-style transformer
(``arbitrary.transform``) at 1920x1080 (a game frame), in float32 and in
bfloat16, batches of ``--frames`` frames through one compiled program; the
median of ``--calls`` warm calls, each ended by ``block_until_ready``.
Frames per second = frames / median seconds. The targets (one H100/H200):
multistyle26 >= 120 frames/s in bfloat16, the transformer >= 60.
Writes the device's name beside every figure.
"""

from __future__ import annotations

import statistics
import time

DEFAULTS = {'height': 1080, 'width': 1920, 'frames': 8, 'calls': 10}


def _fps(function, args, frames: int, calls: int) -> float:
  import jax
  jax.block_until_ready(function(*args))  # compile
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(function(*args))
    times.append(time.perf_counter() - start)
  return frames / statistics.median(times)


def run(flags: dict) -> dict:
  """Frames/s of both networks in float32 and bfloat16; JSON-able."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from nst_jax import arbitrary
  from nst_jax import cin_net
  from nst_jax import realtime_weights

  f = {**DEFAULTS, **(flags or {})}
  n, h, w = f['frames'], f['height'], f['width']
  frames = jax.device_put(np.random.default_rng(0).random((n, h, w, 3), np.float32))
  cin_params = jax.device_put(realtime_weights.load_multistyle26()[0])
  predictor, transformer, _ = realtime_weights.load_arbitrary()
  predictor, transformer = jax.device_put(predictor), jax.device_put(transformer)
  style = jnp.zeros((n, 26)).at[:, 19].set(1.0)
  vector = arbitrary.predict_style(predictor, frames[:1, :256, :256])
  vectors = jnp.broadcast_to(vector, (n, vector.shape[-1]))
  rows = []
  for dtype in ('float32', 'bfloat16'):
    dt = jnp.dtype(dtype)
    cin = jax.jit(lambda p, x, s, dt=dt: cin_net.apply(p, x, s, dtype=dt))
    transform = jax.jit(lambda p, x, v, dt=dt: arbitrary.transform(p, x, v, dtype=dt))
    rows.append({'network': 'multistyle26', 'dtype': dtype,
                 'fps': _fps(cin, (cin_params, frames, style), n, f['calls'])})
    rows.append({'network': 'arbitrary_transform', 'dtype': dtype,
                 'fps': _fps(transform, (transformer, frames, vectors), n, f['calls'])})
  device = jax.devices()[0]
  return {'device': getattr(device, 'device_kind', str(device)), 'platform': device.platform,
          'height': h, 'width': w, 'frames_per_batch': n, 'rows': rows}


def markdown(results: dict) -> str:
  lines = [f"Real-time networks at {results['width']}x{results['height']}, "
           f"{results['frames_per_batch']} frames per call, on {results['device']}:", '',
           '| network | dtype | frames/s |', '|---|---|---|']
  lines += [f"| {r['network']} | {r['dtype']} | {r['fps']:.1f} |" for r in results['rows']]
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  from benchmarks import cli
  cli.main(DEFAULTS, run, markdown, {
      'height': 'Frame height, px.',
      'width': 'Frame width, px.',
      'frames': 'Frames per compiled call.',
      'calls': 'Timed calls (median).',
  }, json_flag='output_json', json_default='realtime_gpu.json')
