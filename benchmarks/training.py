"""Training throughput: nst_jax's train step against its PyTorch twin, same run.

One step of mode ``new`` (every parameter of the CIN network trained with
Adam on the perceptual loss of a batch of crops), timed for nst_jax
(``nst_jax.train.make_train_step``) and for the plain-PyTorch twin
(``benchmarks.torch_cin_net``), alternating, after a warm-up step that
compiles. Reports training images per second (median of the repeats) and the
ratio.

    python -m benchmarks.training                 # 256-px crops, batch 4, width 32
    python scripts/benchmark.py --mode=training   # the same through the one entry point
    python -m benchmarks.training --batch_size=16 --precision=bfloat16   # GPU
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

DEFAULTS = {'crop_size': 256, 'batch_size': 4, 'width': 32, 'repeats': 3,
            'steps': 2, 'precision': 'float32', 'conv_algorithm': 'auto', 'torch': True, 'json': None}


def _jax_step(config, ws, images, styles, num_styles):
  import jax
  import numpy as np
  from nst_jax import cin_net, train
  rng = np.random.default_rng(0)
  style_rgbs = [[rng.random((256, 256, 3)).astype(np.float32)] for _ in range(num_styles)]
  setup = train.prepare(config, style_rgbs, [[1.0]] * num_styles, weights=ws)
  batch = train.shard_batch({'images': images, 'styles': styles}, setup.mesh)
  state = {'s': setup.state}
  del cin_net

  def step():
    state['s'], m = setup.train_step(state['s'], batch)
    jax.block_until_ready(m['loss'])
  return step, setup.state.objective['grams']


def _torch_step(params, ws, grams, images, styles, num_styles, learning_rate,
                device='cpu', bf16=False):
  import numpy as np
  import torch
  from benchmarks import torch_cin_net as tc
  p = tc.params_to_torch({k: np.array(v) for k, v in params.items()}, device=device)
  vgg_t = tc.torch_twin.params_to_torch(ws.params, device)
  tg = {k: torch.from_numpy(np.array(v)).to(device) for k, v in grams.items()}
  step_fn = tc.make_train_step(p, vgg_t, tg, ws.preprocessing.mean, num_styles, learning_rate,
                               autocast_bf16=bf16)
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
  s = torch.from_numpy(styles).long().to(device)
  if device == 'cpu':
    return lambda: step_fn(x, s)

  def step():
    step_fn(x, s)
    torch.cuda.synchronize()
  return step


def _time(fn, steps):
  t = time.perf_counter()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - t) / steps


def run(flags: dict | None = None) -> dict:
  """Times both steps; returns JSON-able results (images/s, ratio, device)."""
  # scripts/benchmark.py --mode=training passes all its flags: keep ours.
  f = {**DEFAULTS, **{k: v for k, v in (flags or {}).items()
                      if k in DEFAULTS and v is not None}}
  from nst_jax import host_memory
  # As scripts/train_fast.py does, before JAX runs anything; the PyTorch twin
  # shares the process, so it gets the same malloc settings.
  kept = host_memory.keep_freed_memory()
  import jax
  import numpy as np
  from nst_jax import cin_net, train, weights
  ws = weights.load()
  config = train.TrainConfig(crop_size=f['crop_size'], batch_size=f['batch_size'],
                             width=f['width'], precision=f['precision'],
                             conv_algorithm=f['conv_algorithm'])
  num_styles = 2
  rng = np.random.default_rng(1)
  images = rng.random((f['batch_size'], f['crop_size'], f['crop_size'], 3)).astype(np.float32)
  styles = train.batch_styles(0, f['batch_size'], range(num_styles))
  jax_step, grams = _jax_step(config, ws, images, styles, num_styles)
  sides = {'nst_jax': jax_step}
  platform = jax.devices()[0].platform
  if f['torch'] and platform in ('cpu', 'gpu', 'cuda'):
    # The twin runs where JAX runs: CPU threads, or the CUDA card (bfloat16
    # through torch.autocast when nst_jax runs in bfloat16).
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    device = 'cpu' if platform == 'cpu' else 'cuda'
    params = cin_net.init_params(jax.random.key(config.seed), num_styles, config.width)
    sides['pytorch'] = _torch_step(params, ws, grams, images, styles, num_styles,
                                   config.learning_rate, device,
                                   bf16=f['precision'] == 'bfloat16')
  for fn in sides.values():  # Warm-up: compiles (JAX), allocates (both).
    fn()
  times = {k: [] for k in sides}
  for _ in range(f['repeats']):
    for k, fn in sides.items():
      times[k].append(_time(fn, f['steps']))
  result = {
      'device': f'{jax.devices()[0].platform}: {jax.devices()[0].device_kind} x '
                f'{len(jax.devices())}, {os.cpu_count()} CPU cores',
      'crop_size': f['crop_size'], 'batch_size': f['batch_size'], 'width': f['width'],
      'precision': f['precision'], 'conv_algorithm': f['conv_algorithm'],
      'keep_freed_memory': kept,
      'seconds_per_step': {k: statistics.median(v) for k, v in times.items()},
      'all_seconds_per_step': times,
  }
  result['images_per_sec'] = {k: f['batch_size'] / v
                              for k, v in result['seconds_per_step'].items()}
  if 'pytorch' in sides:
    result['speedup_vs_pytorch'] = (result['seconds_per_step']['pytorch']
                                    / result['seconds_per_step']['nst_jax'])
  return result


def markdown(results: dict) -> str:
  """A short markdown table of ``run``'s results."""
  r = results
  lines = [f'Training step, {r["crop_size"]}-px crops, batch {r["batch_size"]}, width '
           f'{r["width"]}, {r["precision"]}, nst_jax conv_algorithm='
           f'{r.get("conv_algorithm", "auto")} ({r["device"]}):', '',
           '| | s/step | images/s |', '|---|---|---|']
  for k, v in r['seconds_per_step'].items():
    lines.append(f'| {k} | {v:.2f} | {r["images_per_sec"][k]:.2f} |')
  if 'speedup_vs_pytorch' in r:
    lines.append(f'| **nst_jax / PyTorch** | | **{r["speedup_vs_pytorch"]:.2f}x** |')
  return '\n'.join(lines)


def main(argv: list[str]) -> int:
  flags = {}
  for arg in argv:
    if not arg.startswith('--') or '=' not in arg:
      print(f'error: unexpected argument {arg!r}; use --name=value '
            f'({", ".join(DEFAULTS)})', file=sys.stderr)
      return 1
    name, value = arg[2:].split('=', 1)
    if name not in DEFAULTS:
      print(f'error: unknown flag --{name}; known: {", ".join(DEFAULTS)}', file=sys.stderr)
      return 1
    default = DEFAULTS[name]
    flags[name] = (value.lower() in ('1', 'true', 'yes') if isinstance(default, bool)
                   else type(default)(value) if default is not None else value)
  results = run(flags)
  print(markdown(results))
  if flags.get('json'):
    with open(flags['json'], 'w') as fh:
      json.dump(results, fh, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
