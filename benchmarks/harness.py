"""Side-by-side benchmark of nst_jax and its PyTorch twin on the same objective (harness).

Both sides get the same weights, the same preprocessed images and the same
initial image (written by the parent to a shared .npy). Each measurement runs
in a child process so that its peak memory is its own. Used by
``scripts/benchmark.py``; each function here is one step of that script.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from nst_jax import image_io
from nst_jax import losses
from nst_jax import weights as weights_lib


def load_problem(content_path, style_path, size: int, style_scale: float = 1.0):
  """Preprocessed (content, style) at ``size`` with the default Caffe weights."""
  ws = weights_lib.load()
  content = image_io.resize_longest(image_io.load_image(content_path), size)
  style = image_io.resize_longest(image_io.load_image(style_path),
                                  int(np.ceil(style_scale * size)))
  prep = ws.preprocessing
  return ws, prep.apply(content).astype(np.float32), prep.apply(style).astype(np.float32)


def _peak_rss_bytes() -> int:
  """This process's peak RSS (VmHWM; unlike ru_maxrss it is not inherited over exec)."""
  try:
    for line in Path('/proc/self/status').read_text().splitlines():
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_jax(args: dict) -> dict:
  """Times nst_jax on one (size, optimizer); returns a JSON-able dict."""
  import jax
  import jax.numpy as jnp
  from nst_jax import optimizers
  from nst_jax import engine
  from nst_jax.config import StyleConfig
  if args.get('matmul_precision'):
    jax.config.update('jax_default_matmul_precision', args['matmul_precision'])
  ws, content, style = load_problem(args['content'], args['style'], args['size'])
  config = StyleConfig(optimizer=args['optimizer'], precision=args.get('precision', 'float32'),
                       remat=args.get('remat', False), lbfgs_history=args['history'],
                       conv_algorithm=args.get('conv_algorithm', 'auto'))
  spec = engine.loss_spec(config)
  params = engine.vgg_params(spec, ws)  # as the engine's runs: kernels attached once
  lw = losses.default_loss_weights(spec)
  targets = jax.jit(functools.partial(losses.make_targets, spec=spec))(
      params, jnp.asarray(content), [jnp.asarray(style)], jnp.ones((1,), jnp.float32))
  loss_fn = jax.jit(functools.partial(losses.total_loss, spec=spec))
  x = jnp.asarray(np.load(args['init']))
  loss0 = float(loss_fn(x, params, targets, lw)[0])
  optimizer = optimizers.make_optimizer(config)
  chunk = jax.jit(engine.make_chunk_fn(spec, optimizer), donate_argnums=(0, 1))
  opt_state = jax.jit(optimizer.init)(x)
  k = jnp.int32(args['chunk'])
  key, start = jax.random.key(0), jnp.int32(0)
  t0 = time.perf_counter()
  compiled = chunk.lower(x, opt_state, targets, params, lw, key, start, k).compile()
  compile_s = time.perf_counter() - t0
  def run_chunk(n=k):
    nonlocal x, opt_state
    x, opt_state, _, _ = compiled(x, opt_state, targets, params, lw, key, start, n)
    jax.block_until_ready(x)

  def timed_chunks() -> list[float]:
    """Seconds per iteration of ``args['repeats']`` chunks."""
    times = []
    for _ in range(args['repeats']):
      t0 = time.perf_counter()
      run_chunk()
      times.append((time.perf_counter() - t0) / args['chunk'])
    return times

  run_chunk()  # Warm-up chunk (first execution), then timed chunks.
  times = timed_chunks()
  final = float(loss_fn(x, params, targets, lw)[0])
  steady = {}
  if args.get('steady_warmup'):
    # A real run spends most iterations with a full L-BFGS history: fill it
    # (untimed), then time as above.
    run_chunk(jnp.int32(args['steady_warmup']))
    steady_times = timed_chunks()
    steady = {'steady_iter_s': statistics.median(steady_times),
              'steady_iter_s_all': steady_times,
              'steady_pairs': int(getattr(opt_state, 'num_pairs', -1)),
              'steady_after_iterations': args['chunk'] * (args['repeats'] + 1)
                                         + args['steady_warmup']}
  dev = jax.devices()[0]
  mem = None
  if dev.platform != 'cpu':
    mem = (dev.memory_stats() or {}).get('peak_bytes_in_use')
  return {**steady, 'side': 'jax', 'loss0': loss0, 'final_loss': final, 'compile_s': compile_s,
          'iter_s': statistics.median(times), 'iter_s_all': times,
          'iterations': args['chunk'] * (args['repeats'] + 1),
          'finite': bool(np.isfinite(final)),
          'peak_host_rss_bytes': _peak_rss_bytes(), 'peak_device_bytes': mem,
          'device': f'{dev.platform}:{getattr(dev, "device_kind", "")}',
          'versions': {'jax': jax.__version__, 'jaxlib': jax.lib.__version__ if hasattr(
              jax.lib, '__version__') else '', 'python': platform.python_version()},
          'threads': os.cpu_count()}


def run_torch(args: dict) -> dict:
  """Times the PyTorch twin on one (size, optimizer)."""
  import torch
  from benchmarks import torch_twin as tt
  ws, content, style = load_problem(args['content'], args['style'], args['size'])
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  tp = tt.params_to_torch(ws.params, device)
  to = lambda a: tt.nhwc_to_nchw(a).to(device)
  cl, sl = ['relu4_2'], ['relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1']
  targets = tt.make_targets(tp, to(content), [to(style)], [1.0], cl, sl)
  loss_fn = lambda img: tt.total_loss(img, tp, targets)[0]
  if args.get('torch_compile'):
    loss_fn = torch.compile(loss_fn)
  x = to(np.load(args['init'])).requires_grad_(True)
  with torch.no_grad():
    loss0 = float(tt.total_loss(x, tp, targets)[0])
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  k = args['chunk']
  if args['optimizer'] == 'lbfgs':
    # tolerance_change=-inf: never stop on a non-descent direction
    # (``gtd > -tolerance_change``), as nst_jax's L-BFGS, which always steps;
    # with -1 a step() could end early and stall at one image.
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=k, history_size=args['history'],
                            tolerance_grad=-1, tolerance_change=-math.inf,
                            line_search_fn=None)
  else:
    opt = torch.optim.Adam([x], lr=10.0)

  evaluations = [0]

  def closure():
    evaluations[0] += 1
    opt.zero_grad()
    loss = loss_fn(x)
    loss.backward()
    return loss

  def run_chunk(n=k) -> int:
    """``n`` iterations; returns the evaluations made (one per iteration).

    A step() of torch's LBFGS evaluates once at its start, then once after
    every update but its last: ``max_iter=m`` makes m updates with m
    evaluations, and the next step() starts by evaluating the last update's
    point, as one long step() would. ``max_eval`` is set above that: equal to
    ``max_iter`` it ended a step() one update early, and the next step()
    evaluated the same point again (19 updates per 20 evaluations).
    """
    start = evaluations[0]
    if args['optimizer'] == 'lbfgs':
      group = opt.param_groups[0]
      while evaluations[0] - start < n:
        group['max_iter'] = n - (evaluations[0] - start)
        group['max_eval'] = group['max_iter'] + 1
        opt.step(closure)
    else:
      for _ in range(n):
        opt.step(closure)
    return evaluations[0] - start

  t0 = time.perf_counter()
  run_chunk()
  sync()
  first_s = time.perf_counter() - t0
  times = []
  for _ in range(args['repeats']):
    t0 = time.perf_counter()
    done = run_chunk()
    sync()
    times.append((time.perf_counter() - t0) / done)
  with torch.no_grad():
    final = float(tt.total_loss(x, tp, targets)[0])
  steady = {}
  if args.get('steady_warmup') and args['optimizer'] == 'lbfgs':
    # torch.optim.LBFGS keeps its history across step() calls: fill it
    # (untimed), then time chunks as above.
    run_chunk(args['steady_warmup'])
    sync()
    steady_times = []
    for _ in range(args['repeats']):
      t0 = time.perf_counter()
      done = run_chunk()
      sync()
      steady_times.append((time.perf_counter() - t0) / done)
    steady = {'steady_iter_s': statistics.median(steady_times),
              'steady_iter_s_all': steady_times,
              'steady_pairs': len(opt.state[x].get('old_dirs', [])),
              'steady_after_iterations': evaluations[0] - k * args['repeats']}
  mem = torch.cuda.max_memory_allocated() if device == 'cuda' else None
  return {**steady, 'side': 'torch' + ('_compile' if args.get('torch_compile') else ''),
          'loss0': loss0, 'final_loss': final,
          'compile_s': max(first_s - statistics.median(times) * k, 0.0),
          'iter_s': statistics.median(times), 'iter_s_all': times,
          'iterations': k * (args['repeats'] + 1), 'finite': bool(np.isfinite(final)),
          'peak_host_rss_bytes': _peak_rss_bytes(), 'peak_device_bytes': mem,
          'device': device if device == 'cpu' else torch.cuda.get_device_name(),
          'versions': {'torch': torch.__version__}, 'threads': torch.get_num_threads()}


def run_conv_floor(args: dict) -> dict:
  """Time of the convolutions of one iteration alone: a lower bound per iteration.

  One iteration of the default objective runs 13 convolutions forward
  (conv1_1 ... conv5_1) and their 13 input-gradient convolutions backward;
  everything else (biases, ReLU, pooling, Gram matrices, the optimizer) comes
  on top. This runs exactly those convolutions, with the real weights at the
  benchmark's image shape, in a ``fori_loop`` as the real chunk does
  (separate calls measured 5-15% slower): forward with 2x2 subsampling where
  the pools are, backward with the flipped kernels (as ``vgg.conv3x3``'s
  VJP) and the subsampling's transpose. The wide layers run by Winograd
  where ``args['conv_algorithm']`` (default ``'auto'``, the engine's default)
  makes them.
  """
  import jax
  import jax.numpy as jnp
  from nst_jax import vgg
  from nst_jax import winograd
  ws, content, _ = load_problem(args['content'], args['style'], args['size'])
  use_winograd = winograd.enabled(args.get('conv_algorithm', 'auto'))
  params = jax.jit(lambda p: vgg.with_backward_kernels(p, winograd=use_winograd))(
      jax.device_put(ws.params))
  names = vgg.CONV_NAMES[:vgg.CONV_NAMES.index('conv5_1') + 1]
  pooled = {n for n in names if n.endswith('_1') and n != 'conv1_1'}

  def conv(x, layer, backward=False):
    if 'winograd' in layer:
      return winograd.conv(x, layer['winograd_t' if backward else 'winograd'])
    return vgg.conv(x, layer['kernel_t' if backward else 'kernel'])

  def forward(x, p):
    shapes = []
    for name in names:
      if name in pooled:
        shapes.append(x.shape)
        x = x[:, ::2, ::2]
      x = conv(x, p[name])
    return x, shapes

  def forward_backward(x, p):
    g, shapes = forward(x, p)
    for name in reversed(names):
      g = conv(g, p[name], backward=True)
      if name in pooled:
        g = jnp.zeros(shapes.pop(), g.dtype).at[:, ::2, ::2].set(g)
    return g

  def looped(step):
    # Each iteration feeds on the last so that nothing is hoisted out of the loop.
    def run(x, p, n):
      return jax.lax.fori_loop(0, n, lambda i, x: x + 1e-9 * jnp.mean(step(x, p)), x)
    return jax.jit(run)

  x = jnp.asarray(content)[None]
  n = args.get('iterations', 5)

  def per_iteration_s(f):
    jax.block_until_ready(f(x, params, 1))
    times = []
    for _ in range(args.get('repeats', 3)):
      t0 = time.perf_counter()
      jax.block_until_ready(f(x, params, n))
      times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)

  f = per_iteration_s(looped(lambda x, p: forward(x, p)[0]))
  total = per_iteration_s(looped(forward_backward))
  return {'forward_s': f, 'backward_s': total - f, 'total_s': total,
          'convolutions': len(names), 'winograd': use_winograd}


def run_child(side: str, args: dict, timeout: float = 3600) -> dict:
  """Runs one measurement in a fresh interpreter and returns its JSON."""
  code = ('import json, sys; from benchmarks import harness as b; '
          f'print("BENCH_JSON " + json.dumps(b.run_{side}(json.loads(sys.argv[1]))))')
  proc = subprocess.run([sys.executable, '-c', code, json.dumps(args)], capture_output=True,
                        text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[1])
  for line in proc.stdout.splitlines():
    if line.startswith('BENCH_JSON '):
      return json.loads(line[len('BENCH_JSON '):])
  raise RuntimeError(f'{side} benchmark failed (exit {proc.returncode}): '
                     f'{proc.stderr.strip()[-2000:]}')


def parity_check(content_path, style_path, size: int, init: np.ndarray) -> dict:
  """Loss at the shared initial image on both sides (forward only)."""
  import jax
  import jax.numpy as jnp
  import torch
  from benchmarks import torch_twin as tt
  ws, content, style = load_problem(content_path, style_path, size)
  spec = losses.LossSpec()
  params = jax.device_put(ws.params)
  with jax.default_matmul_precision('float32'):
    targets = losses.make_targets(params, jnp.asarray(content), [jnp.asarray(style)],
                                  [1.0], spec)
    j = float(losses.total_loss(jnp.asarray(init), params, targets,
                                losses.default_loss_weights(spec), spec)[0])
  tp = tt.params_to_torch(ws.params)
  with torch.no_grad():
    t_targets = tt.make_targets(tp, tt.nhwc_to_nchw(content), [tt.nhwc_to_nchw(style)], [1.0],
                                ['relu4_2'], ['relu1_1', 'relu2_1', 'relu3_1', 'relu4_1',
                                              'relu5_1'])
    t = float(tt.total_loss(tt.nhwc_to_nchw(init), tp, t_targets)[0])
  return {'jax': j, 'torch': t, 'rel_diff': abs(j - t) / abs(t)}


def cpu_model() -> str:
  try:
    for line in Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def run_jax_end_to_end(args: dict) -> dict:
  """``iterations`` L-BFGS iterations on a square ``size`` image, compile excluded.

  Chunks of ``chunk`` iterations with a host sync after each, as the CLI runs
  them (progress points included).
  """
  import jax
  import jax.numpy as jnp
  from nst_jax import optimizers
  from nst_jax import engine
  from nst_jax.config import StyleConfig
  ws = weights_lib.load()
  prep = ws.preprocessing
  size = args['size']
  content = image_io.resize_to(image_io.load_image(args['content']), size, size)
  style = image_io.resize_longest(image_io.load_image(args['style']), size)
  config = optimizers.resolved(StyleConfig(precision=args.get('precision', 'float32'),
                                           lbfgs_direction=args.get('direction', 'auto')))
  spec = engine.loss_spec(config)
  params = engine.vgg_params(spec, ws)
  lw = losses.default_loss_weights(spec)
  targets = jax.jit(functools.partial(losses.make_targets, spec=spec))(
      params, jnp.asarray(prep.apply(content)), [jnp.asarray(prep.apply(style))],
      jnp.ones((1,), jnp.float32))
  optimizer = optimizers.make_optimizer(config)
  chunk = jax.jit(engine.make_chunk_fn(spec, optimizer), donate_argnums=(0, 1))
  x = 0.001 * jax.random.normal(jax.random.key(0), (size, size, 3), jnp.float32)
  opt_state = jax.jit(optimizer.init)(x)
  n = jnp.int32(args['chunk'])
  key, start = jax.random.key(0), jnp.int32(0)
  t0 = time.perf_counter()
  compiled = chunk.lower(x, opt_state, targets, params, lw, key, start, n).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  done = 0
  while done < args['iterations']:
    x, opt_state, _, info = compiled(x, opt_state, targets, params, lw, key, start, n)
    done += int(info.done)  # host sync, as the CLI's progress line
  seconds = time.perf_counter() - t0
  return {'iterations': done, 'seconds': seconds, 'compile_s': compile_s,
          'final_terms': {k: float(v) for k, v in info.terms.items()},
          'device': str(jax.devices()[0].device_kind), 'precision': config.precision,
          'direction': config.lbfgs_direction}
