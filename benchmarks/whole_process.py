"""The whole process, as a user runs it: nst_jax's stylize.py against pastiche 1.6.0.

  pip install -e '.[bench]'        # pastiche==1.6.0 runs on the pinned torch
  python -m benchmarks.whole_process                       # 512 px, 30 iterations, 3 rounds
  python -m benchmarks.whole_process --size=256 --iterations=10 --rounds=1

Each round starts both programs in fresh processes under ``/usr/bin/time -v``,
alternating which goes first, and reads the wall time and the peak resident
memory it reports. Everything a user waits for is inside: Python start-up,
imports, reading the images, loading the weights, compiling (nst_jax keeps
JAX's persistent compilation cache, so round 1 compiles and later rounds load
the program; both figures are reported) and writing the result. Both
programs run L-BFGS from random noise with their default objective for
``--iterations`` iterations at ``--size`` px (longest side) on the CPU with
every core. The ratio is pastiche's median wall time over nst_jax's.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

DEFAULTS = {
    'size': 512,
    'iterations': 30,
    'rounds': 3,
    'content': None,  # default: ../shared/data/images/golden_gate.jpg
    'style': None,    # default: ../shared/data/images/starry_night_crop.png
}

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
_IMAGES = os.path.join(_ROOT, '..', 'shared', 'data', 'images')
_TIME = '/usr/bin/time'


def _commands(f: dict, out: str) -> dict[str, list[str]]:
  content = f['content'] or os.path.join(_IMAGES, 'golden_gate.jpg')
  style = f['style'] or os.path.join(_IMAGES, 'starry_night_crop.png')
  n, size = str(f['iterations']), str(f['size'])
  return {
      'nst_jax': [sys.executable, os.path.join(_ROOT, 'scripts', 'stylize.py'),
                  f'--content_image={content}', f'--style_image={style}',
                  f'--image_size={size}', f'--num_iterations={n}', '--init=random',
                  '--print_iter=0', '--save_iter=0',
                  f'--output_image={os.path.join(out, "nst_jax.png")}'],
      'pastiche': [sys.executable, '-m', 'pastiche', '--device=cpu', '--random-init',
                   f'--num-steps={n}', f'--size={size}', '--no-verbose',
                   '--content', content, '--styles', style,
                   '--output', os.path.join(out, 'pastiche.png')],
  }


def _timed(cmd: list[str]) -> dict:
  """Runs ``cmd`` under ``/usr/bin/time -v``; wall seconds and peak RSS in GiB."""
  proc = subprocess.run([_TIME, '-v', *cmd], capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f'{" ".join(cmd[:3])} ... exited {proc.returncode}:\n'
                       f'{proc.stderr[-2000:]}')
  wall = re.search(r'Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)', proc.stderr)
  rss = re.search(r'Maximum resident set size \(kbytes\): (\d+)', proc.stderr)
  h, m, s = wall.groups()
  return {'seconds': int(h or 0) * 3600 + int(m) * 60 + float(s),
          'peak_rss_gib': int(rss.group(1)) / 2 ** 20}


def run(flags: dict) -> dict:
  """Alternating rounds of both programs; returns a JSON-able dict."""
  f = {**DEFAULTS, **(flags or {})}
  if not os.path.exists(_TIME):
    raise RuntimeError(f'{_TIME} is needed (GNU time: apt install time)')
  probe = subprocess.run([sys.executable, '-c', 'import pastiche'], capture_output=True)
  if probe.returncode != 0:
    raise RuntimeError("pastiche is not installed: pip install -e '.[bench]' "
                       '(or pip install --no-deps pastiche==1.6.0)')
  out = tempfile.mkdtemp(prefix='nst_whole_')
  try:
    cmds = _commands(f, out)
    runs = {name: [] for name in cmds}
    for r in range(int(f['rounds'])):
      order = list(cmds) if r % 2 == 0 else list(cmds)[::-1]
      for name in order:
        runs[name].append(_timed(cmds[name]))
        print(f'round {r + 1} {name}: {runs[name][-1]}', file=sys.stderr, flush=True)
  finally:
    shutil.rmtree(out, ignore_errors=True)
  med = {k: statistics.median(x['seconds'] for x in v) for k, v in runs.items()}
  return {'size': f['size'], 'iterations': f['iterations'], 'rounds': f['rounds'],
          'runs': runs, 'median_seconds': med,
          'ratio': med['pastiche'] / med['nst_jax'],
          'peak_rss_gib': {k: max(x['peak_rss_gib'] for x in v) for k, v in runs.items()}}


def markdown(res: dict) -> str:
  lines = [f'Whole process, {res["iterations"]} L-BFGS iterations at {res["size"]} px, '
           f'median of {res["rounds"]} alternating rounds (`/usr/bin/time -v`).', '',
           '| program | wall s per round | median s | peak RSS GiB |', '|---|---|---|---|']
  for name, runs in res['runs'].items():
    walls = ', '.join(f'{x["seconds"]:.1f}' for x in runs)
    lines.append(f'| {name} | {walls} | {res["median_seconds"][name]:.1f} | '
                 f'{res["peak_rss_gib"][name]:.2f} |')
  lines += ['', f'pastiche / nst_jax: **{res["ratio"]:.2f}x**']
  return '\n'.join(lines)


if __name__ == '__main__':
  from benchmarks import cli
  cli.main(DEFAULTS, run, markdown, {
      'size': 'Longest side, px.',
      'iterations': 'L-BFGS iterations.',
      'rounds': 'Alternating rounds.',
      'content': 'Content image.',
      'style': 'Style image.',
  })
