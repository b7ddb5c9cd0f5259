"""Benchmark nst_jax against its PyTorch twin on the same objective and weights.

  python scripts/benchmark.py                       # 256, 512, 1024 px; L-BFGS and Adam
  python scripts/benchmark.py --sizes=512 --optimizers=lbfgs --startup --matrix
  python scripts/benchmark.py --mode=realtime       # another benchmark: benchmarks/realtime.py

--mode=gatys (the default) is the optimisation benchmark described here; any
other mode M runs ``benchmarks/M.py``: its ``run(flags_dict) -> dict`` (JSON-able
results, written to --output_json) and ``markdown(results) -> str`` (appended
to --results_md).

For each size and optimizer: compile time, median time per iteration over
timed chunks (after a warm-up chunk, device synchronised; for L-BFGS at
--steady_sizes also at steady state, once --steady_warmup more untimed
iterations have filled the history on both sides), the PyTorch/nst_jax
ratio, peak memory, and the objective after the same iterations from the same
initial image. It first checks that both sides compute the same loss at the
initial image (1e-4 relative) and refuses to report speeds otherwise.
Writes JSON (--output_json) and appends a markdown table to
benchmarks/RESULTS.md (--results_md; empty to skip).
"""

import datetime
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app
from absl import flags
from absl import logging as absl_logging

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # The benchmarks package beside nst_jax.
SHARED = ROOT.parent / 'shared' / 'data' / 'images'

from nst_jax.config import CONV_ALGORITHMS  # pylint: disable=wrong-import-position

flags.DEFINE_string('mode', 'gatys', 'gatys (this script\'s own benchmark) or the name of a '
                    'module in benchmarks/ with run(flags_dict) and markdown(results).')
flags.DEFINE_list('sizes', ['256', '512', '1024'], 'Image sizes (longest side).')
flags.DEFINE_list('optimizers', ['lbfgs', 'adam'], 'lbfgs and/or adam.')
flags.DEFINE_string('content', None, 'Content image (default: golden_gate from '
                    '../shared/data/images, else a scikit-image sample).')
flags.DEFINE_string('style', None, 'Style image (default: starry_night_crop, else a sample).')
flags.DEFINE_integer('repeats', 3, 'Timed chunks per measurement (median reported).')
flags.DEFINE_integer('chunk', 0, 'Iterations per timed chunk (0: 10 at <=256 px, 5 at '
                     '<=512, 3 above).')
flags.DEFINE_integer('history', 100, 'L-BFGS history on both sides.')
flags.DEFINE_integer('steady_warmup', -1, 'L-BFGS steady state: after the early timing, run '
                     'this many more iterations untimed (-1: --history, so the history is '
                     'full on both sides), then time again. 0: early figures only.')
flags.DEFINE_list('steady_sizes', ['512'], 'Sizes at which the L-BFGS steady state is timed '
                  '(filling a history of 100 costs 100 iterations per side).')
flags.DEFINE_bool('mixed_precision', False, 'Also run nst_jax with bfloat16 convolutions.')
flags.DEFINE_enum('conv_algorithm', 'auto', list(CONV_ALGORITHMS),
                  "nst_jax's VGG19 convolutions (StyleConfig.conv_algorithm): auto is "
                  'Winograd on CPU in float32.')
flags.DEFINE_bool('torch_compile', False, 'Also time torch.compile (GPU only is useful).')
flags.DEFINE_bool('conv_floor', True, 'Also time the convolutions of one iteration alone '
                  '(a lower bound on nst_jax time per iteration).')
flags.DEFINE_bool('startup', False, 'Time the CLI cold (empty cache) and warm (5 runs) at 512 px.')
flags.DEFINE_bool('matrix', False, 'Throughput of a 4x4 matrix at 256 px, batched vs one-by-one.')
flags.DEFINE_integer('matrix_iterations', 20, 'Iterations per problem in --matrix.')
flags.DEFINE_integer('matrix_repeats', 3, 'Alternating batched/one-by-one runs in --matrix '
                     '(medians reported).')
flags.DEFINE_integer('end_to_end', 0, 'Also time this many L-BFGS iterations at 512x512 '
                     'end to end (compile excluded), e.g. 500 on a GPU.')
flags.DEFINE_list('end_to_end_directions', ['auto'], 'L-BFGS directions (auto, two_loop, '
                  'compact) timed by --end_to_end, one run each.')
flags.DEFINE_string('output_json', 'benchmarks/last_run.json', 'Where to write the JSON.')
flags.DEFINE_string('results_md', 'benchmarks/RESULTS.md', 'Markdown file to append to.')
flags.DEFINE_string('note', '', 'Free text stored with the results (e.g. the machine).')
FLAGS = flags.FLAGS


def _default_images():
  if FLAGS.content and FLAGS.style:
    return FLAGS.content, FLAGS.style
  content = FLAGS.content or SHARED / 'golden_gate.jpg'
  style = FLAGS.style or SHARED / 'starry_night_crop.png'
  if Path(content).is_file() and Path(style).is_file():
    return str(content), str(style)
  import skimage
  data = Path(skimage.__file__).parent / 'data'
  return str(data / 'chelsea.png'), str(data / 'ihc.png')


def _chunk(size):
  if FLAGS.chunk:
    return FLAGS.chunk
  return 10 if size <= 256 else 5 if size <= 512 else 3


def _mb(b):
  return None if b is None else round(b / 2**20)


def _bench_pair(content, style, size, optimizer, init_path, tmp):
  from benchmarks import harness as bm
  args = dict(content=content, style=style, size=size, optimizer=optimizer, init=init_path,
              chunk=_chunk(size), repeats=FLAGS.repeats, history=FLAGS.history,
              conv_algorithm=FLAGS.conv_algorithm)
  if optimizer == 'lbfgs' and str(size) in FLAGS.steady_sizes and FLAGS.steady_warmup:
    args['steady_warmup'] = FLAGS.history if FLAGS.steady_warmup < 0 else FLAGS.steady_warmup
  rows = [bm.run_child('jax', args)]
  rows.append(bm.run_child('torch', args))
  if FLAGS.torch_compile:
    rows.append(bm.run_child('torch', dict(args, torch_compile=True)))
  if FLAGS.mixed_precision:
    r = bm.run_child('jax', dict(args, precision='bfloat16', conv_algorithm='auto'))  # XLA's
    r['side'] = 'jax_bf16'
    rows.append(r)
  return rows


def _steady_words(jax_row, torch_row) -> str:
  return (f'nst_jax {1000 * jax_row["steady_iter_s"]:.1f} ms/it with {jax_row["steady_pairs"]} '
          f'pairs, PyTorch {1000 * torch_row["steady_iter_s"]:.1f} ms/it with '
          f'{torch_row["steady_pairs"]} pairs, after {jax_row["steady_after_iterations"]} '
          'iterations')


def _startup(content, style, warm_runs=5):
  """The CLI at 512 px, cold (empty cache) then warm: time before the first iteration.

  Each run does two iterations, one per chunk, and prints a progress line after
  each; the second line's delay is one iteration, so the first iteration began
  at ``2 * t1 - t2`` after the process started. Warm runs repeat (this machine's
  timing noise is about +-0.1 s) and the median is reported.
  """
  out = {}
  with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as outdir:
    env = dict(os.environ, NST_JAX_CACHE_DIR=cache)
    for label in ['cold'] + [f'warm{k}' for k in range(warm_runs)]:
      cmd = [sys.executable, str(ROOT / 'scripts' / 'stylize.py'), f'--content_image={content}',
             f'--style_image={style}', '--image_size=512', '--num_iterations=2',
             '--print_iter=1', '--save_iter=0', f'--output_image={outdir}/o.png']
      t0 = time.perf_counter()
      proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env)
      lines = [time.perf_counter() - t0 for line in proc.stdout
               if line.lstrip().startswith('iter')]
      proc.wait()
      t1, t2 = (lines + [float('nan')] * 2)[:2]
      out[label] = {'seconds_to_first_progress_line': t1, 'iteration_s': t2 - t1,
                    'seconds_before_first_iteration': 2 * t1 - t2, 'exit': proc.returncode}
  warm = sorted(out[f'warm{k}']['seconds_before_first_iteration'] for k in range(warm_runs))
  out['warm_runs'] = warm_runs
  out['warm_median_before_first_iteration'] = warm[len(warm) // 2]
  out['warm_range'] = [warm[0], warm[-1]]
  return out


def _matrix_throughput(content, style):
  """Images per minute for a 4x4 matrix at 256 px: batched vs one-by-one."""
  code = f'''
import dataclasses, json, sys, time, numpy as np, jax
from nst_jax import matrix, transfer, weights, image_io
T0 = time.perf_counter()
def progress(what):  # on stderr, which the parent passes through: a killed run still shows
  print(f'matrix: {{time.perf_counter() - T0:7.1f}} s  {{what}}', file=sys.stderr, flush=True)
from nst_jax.config import StyleConfig, StyleSpec
ws = weights.load()
base_c = image_io.load_image({content!r}); base_s = image_io.load_image({style!r})
rng = np.random.default_rng(0)
# Four contents of one shape and four styles: flips and colour permutations.
contents = [base_c, base_c[:, ::-1], base_c[..., ::-1], base_c[:, ::-1, ::-1]]
styles = [base_s, base_s[::-1], base_s[..., [1, 2, 0]], base_s[::-1, ::-1]]
cfg = StyleConfig(image_size=256, num_iterations={FLAGS.matrix_iterations}, print_iter=0,
                  save_iter=0)
# Warm-up (compile) both paths at the shapes timed below, with the whole matrix:
# its batches differ by device (4 problems on CPU, all 16 on a GPU). The
# iteration count is not part of what is compiled.
progress('weights and images loaded')
warm = dataclasses.replace(cfg, num_iterations=2)
matrix.stylize_many(contents, [StyleSpec((s,)) for s in styles], warm, weights=ws)
progress('batched path warm')
transfer.stylize(contents[0], [styles[0]], warm, weights=ws)
progress('single path warm')
batched_runs, single_runs = [], []
for _ in range({FLAGS.matrix_repeats}):  # Alternate the two, report medians.
  t0 = time.perf_counter()
  matrix.stylize_many(contents, [StyleSpec((s,)) for s in styles], cfg, weights=ws)
  batched_runs.append(time.perf_counter() - t0)
  progress(f'batched run: {{batched_runs[-1]:.2f}} s')
  t0 = time.perf_counter()
  for c in contents:
    for s in styles:
      transfer.stylize(c, [s], cfg, weights=ws)
  single_runs.append(time.perf_counter() - t0)
  progress(f'one-by-one run: {{single_runs[-1]:.2f}} s')
batched, single = float(np.median(batched_runs)), float(np.median(single_runs))
print("BENCH_JSON " + json.dumps({{"batched_s": batched, "one_by_one_s": single,
      "batched_runs_s": batched_runs, "one_by_one_runs_s": single_runs,
      "devices": len(jax.devices()), "device": str(jax.devices()[0].platform)}}))
'''
  # This process may hold most of an accelerator's memory (the parity check):
  # the child allocates as it goes instead of claiming its own 75% up front.
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE='false')
  proc = subprocess.run([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                        env=env)
  for line in proc.stdout.splitlines():
    if line.startswith('BENCH_JSON '):
      r = json.loads(line[len('BENCH_JSON '):])
      r['batched_images_per_min'] = 16 * 60 / r['batched_s']
      r['one_by_one_images_per_min'] = 16 * 60 / r['one_by_one_s']
      r['speedup'] = r['one_by_one_s'] / r['batched_s']
      return r
  raise RuntimeError(f'matrix benchmark failed (exit {proc.returncode}); its stderr is above')


def _run_mode(mode: str) -> int:
  """``--mode=M``: ``benchmarks/M.py``'s run(flags) and markdown(results)."""
  if not (ROOT / 'benchmarks' / f'{mode}.py').is_file():
    modes = sorted(p.stem for p in (ROOT / 'benchmarks').glob('*.py')
                   if 'def run(' in p.read_text())
    print(f'error: --mode {mode!r}: no benchmarks/{mode}.py; choose gatys or one of '
          f'{", ".join(modes)}', file=sys.stderr)
    return 1
  module = importlib.import_module(f'benchmarks.{mode}')
  results = module.run({name: FLAGS[name].value for name in FLAGS})
  if FLAGS.output_json:
    Path(FLAGS.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.output_json).write_text(json.dumps(results, indent=1))
  md = module.markdown(results)
  print(md)
  if FLAGS.results_md:
    _append_markdown(FLAGS.results_md, md)
  return 0


def main(argv):
  del argv
  if not FLAGS['verbosity'].present:  # absl log lines are debug detail.
    absl_logging.set_verbosity(absl_logging.ERROR)
  if FLAGS.mode != 'gatys':
    return _run_mode(FLAGS.mode)
  from benchmarks import harness as bm
  content, style = _default_images()
  sizes = [int(s) for s in FLAGS.sizes]
  report = {'date': datetime.datetime.now().isoformat(timespec='seconds'),
            'cpu': bm.cpu_model(), 'cores': os.cpu_count(), 'content': content, 'style': style,
            'note': FLAGS.note, 'conv_algorithm': FLAGS.conv_algorithm, 'results': []}
  print(f'nst_jax: benchmark on {report["cpu"]} ({report["cores"]} cores); '
        f'{Path(content).name} + {Path(style).name}', file=sys.stderr, flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    for size in sizes:
      _, c, _ = bm.load_problem(content, style, size)
      init = (0.001 * np.random.default_rng(0).standard_normal(c.shape)).astype(np.float32)
      # A noise init makes the content term dominate; check parity on a mix too.
      init_path = os.path.join(tmp, f'init{size}.npy')
      np.save(init_path, init)
      parity = bm.parity_check(content, style, size, init)
      print(f'{size}px loss at init: jax {parity["jax"]:.6g} torch {parity["torch"]:.6g} '
            f'(rel diff {parity["rel_diff"]:.1e})', flush=True)
      if parity['rel_diff'] > 1e-4:
        print(f'error: the two sides disagree at {size}px by {parity["rel_diff"]:.2e} '
              '(> 1e-4); not reporting speeds', file=sys.stderr)
        return 1
      if FLAGS.conv_floor:
        floor = bm.run_child('conv_floor', dict(content=content, style=style, size=size,
                                                conv_algorithm=FLAGS.conv_algorithm))
        report.setdefault('conv_floor', {})[str(size)] = floor
        print(f'{size}px convolutions alone: {1000 * floor["total_s"]:.1f} ms per iteration '
              f'(forward {1000 * floor["forward_s"]:.1f}, backward '
              f'{1000 * floor["backward_s"]:.1f})', flush=True)
      for optimizer in FLAGS.optimizers:
        rows = _bench_pair(content, style, size, optimizer, init_path, tmp)
        jax_row, torch_row = rows[0], rows[1]
        entry = {'size': size, 'shape': list(c.shape[:2]), 'optimizer': optimizer,
                 'parity': parity, 'rows': rows,
                 'speedup_torch_over_jax': torch_row['iter_s'] / jax_row['iter_s'],
                 'objective_ratio_jax_over_torch':
                     jax_row['final_loss'] / torch_row['final_loss']}
        if 'steady_iter_s' in jax_row and 'steady_iter_s' in torch_row:
          entry['steady_speedup_torch_over_jax'] = (torch_row['steady_iter_s']
                                                    / jax_row['steady_iter_s'])
        report['results'].append(entry)
        for r in rows:
          print(f'  {size:5d}px {optimizer:6s} {r["side"]:13s} {1000 * r["iter_s"]:8.1f} ms/it  '
                f'compile {r["compile_s"]:6.1f} s  peak {_mb(r["peak_host_rss_bytes"])} MB  '
                f'loss after {r["iterations"]} it {r["final_loss"]:.4g}', flush=True)
        print(f'  -> PyTorch/nst_jax time per iteration: {entry["speedup_torch_over_jax"]:.2f}x; '
              f'objective jax/torch {entry["objective_ratio_jax_over_torch"]:.4f}', flush=True)
        if 'steady_speedup_torch_over_jax' in entry:
          print(f'  -> steady state ({_steady_words(jax_row, torch_row)}): '
                f'{entry["steady_speedup_torch_over_jax"]:.2f}x', flush=True)
  if FLAGS.end_to_end:
    report['end_to_end'] = []
    precisions = ['float32', 'bfloat16'] if FLAGS.mixed_precision else ['float32']
    for direction in FLAGS.end_to_end_directions:
      for precision in precisions:
        r = bm.run_child('jax_end_to_end', dict(
            content=content, style=style, size=512, iterations=FLAGS.end_to_end, chunk=50,
            precision=precision, direction=direction))
        report['end_to_end'].append(r)
        print(f'end to end: {r["iterations"]} L-BFGS iterations at 512x512 ({r["precision"]}, '
              f'{r["direction"]} direction) in {r["seconds"]:.2f} s (compile '
              f'{r["compile_s"]:.1f} s) on {r["device"]}', flush=True)
  if FLAGS.startup:
    report['startup'] = _startup(content, style)
    print('startup:', json.dumps(report['startup']), flush=True)
  if FLAGS.matrix:
    report['matrix'] = _matrix_throughput(content, style)
    print('matrix:', json.dumps(report['matrix']), flush=True)
  if FLAGS.output_json:
    Path(FLAGS.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.output_json).write_text(json.dumps(report, indent=1))
  md = _markdown(report)
  print(md)
  if FLAGS.results_md:
    _append_markdown(FLAGS.results_md, md)
  return 0


def _append_markdown(path: str, md: str) -> None:
  """Appends ``md`` to the file at ``path`` as a section of its own (a blank line before it)."""
  p = Path(path)
  tail = p.read_bytes()[-2:] if p.exists() else b''
  sep = '' if not tail or tail == b'\n\n' else ('\n' if tail.endswith(b'\n') else '\n\n')
  with open(p, 'a') as f:
    f.write(sep + md + '\n')


def _markdown(report):
  first = report['results'][0]['rows'] if report['results'] else [{}]
  lines = [f'### {report["date"]} — {report["cpu"]}, {report["cores"]} cores'
           f'{" — " + report["note"] if report["note"] else ""}'
           f' — nst_jax conv_algorithm={report.get("conv_algorithm", "auto")}']
  if report['results']:
    lines += ['', f'Device: {first[0].get("device", "?")}; versions: '
              f'{json.dumps({k: v for r in first for k, v in r.get("versions", {}).items()})}; '
              f'threads: jax {first[0].get("threads")}, torch '
              f'{first[1].get("threads") if len(first) > 1 else "?"}. Images: '
              f'{Path(report["content"]).name} + {Path(report["style"]).name}.', '',
              '| size | optimizer | side | ms/iter | compile s | peak MB | MB/MPix | objective after N it | PyTorch/nst_jax |',
              '|---|---|---|---|---|---|---|---|---|']
  for e in report['results']:
    mpix = e['shape'][0] * e['shape'][1] / 1e6
    for r in e['rows']:
      peak = r.get('peak_device_bytes') or r['peak_host_rss_bytes']
      ratio = (e['rows'][1]['iter_s'] / r['iter_s']) if r['side'] != 'torch' else 1.0
      size = f'{e["shape"][1]}x{e["shape"][0]}'
      lines.append(f'| {size} | {e["optimizer"]} | {r["side"]} | {1000 * r["iter_s"]:.1f} | '
                   f'{r["compile_s"]:.1f} | {_mb(peak)} | {_mb(peak) / mpix:.0f} | '
                   f'{r["final_loss"]:.4g} (N={r["iterations"]}) | {ratio:.2f}x |')
  for e in report['results']:
    if 'steady_speedup_torch_over_jax' in e:
      lines.append('')
      lines.append(f'{e["shape"][1]}x{e["shape"][0]} L-BFGS at steady state '
                   f'({_steady_words(e["rows"][0], e["rows"][1])}): PyTorch/nst_jax '
                   f'{e["steady_speedup_torch_over_jax"]:.2f}x (early, above: '
                   f'{e["speedup_torch_over_jax"]:.2f}x).')
  for e in report['results']:
    floor = report.get('conv_floor', {}).get(str(e['size']))
    if floor and e['optimizer'] == 'lbfgs':
      torch_ms = 1000 * e['rows'][1]['iter_s']
      lines.append('')
      lines.append(
          f'{e["shape"][1]}x{e["shape"][0]}: the {floor["convolutions"]} forward and '
          f'{floor["convolutions"]} backward convolutions of one iteration alone take '
          f'{1000 * floor["total_s"]:.1f} ms (forward {1000 * floor["forward_s"]:.1f}, backward '
          f'{1000 * floor["backward_s"]:.1f}) with '
          f'{"Winograd on the wide layers, XLA on the rest" if floor.get("winograd") else "XLA"}'
          f'; against the twin\'s {torch_ms:.1f} ms '
          f'per L-BFGS iteration that caps the ratio at {torch_ms / (1000 * floor["total_s"]):.2f}x '
          'even if everything else were free.')
  for r in report.get('end_to_end', []):
    lines.append('')
    lines.append(f'End to end: {r["iterations"]} L-BFGS iterations at 512x512 ({r["precision"]}, '
                 f'{r.get("direction", "two_loop")} direction) '
                 f'in {r["seconds"]:.2f} s, compile {r["compile_s"]:.1f} s excluded, on '
                 f'{r["device"]}; final total {sum(v for k, v in r["final_terms"].items() if "/" not in k):.4g}.')
  if 'startup' in report:
    s = report['startup']
    lines.append('')
    lines.append(f'CLI start-up at 512 px (golden_gate), seconds from process start to the start '
                 f'of the first iteration: cold {s["cold"]["seconds_before_first_iteration"]:.2f}, '
                 f'warm median {s["warm_median_before_first_iteration"]:.2f} (range '
                 f'{s["warm_range"][0]:.2f}-{s["warm_range"][1]:.2f} over '
                 f'{s["warm_runs"]} runs); one iteration {s["warm0"]["iteration_s"]:.2f} s.')
  if 'matrix' in report:
    m = report['matrix']
    lines.append('')
    ratios = sorted(o / b for b, o in zip(m['batched_runs_s'], m['one_by_one_runs_s']))
    lines.append(f'4x4 matrix at 256 px, {FLAGS.matrix_iterations} iterations each, '
                 f'median of {len(ratios)} alternating runs (per-run ratios '
                 f'{", ".join(f"{r:.2f}" for r in ratios)}), '
                 f'{m["devices"]} {m["device"]} device(s): batched {m["batched_images_per_min"]:.1f} '
                 f'images/min vs one-by-one {m["one_by_one_images_per_min"]:.1f} '
                 f'({m["speedup"]:.2f}x).')
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  app.run(main)
