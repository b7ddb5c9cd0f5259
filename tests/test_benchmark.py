"""The benchmark harness end to end, at a tiny size (speeds are not asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT


def test_benchmark_script_small(caffe_weights, tmp_path):
  del caffe_weights  # Fetched and ported once by the fixture, not by the children.
  skimage = pytest.importorskip('skimage')
  pytest.importorskip('torch')
  data = Path(skimage.__file__).parent / 'data'
  out_json, out_md = tmp_path / 'bench.json', tmp_path / 'RESULTS.md'
  proc = subprocess.run(
      [sys.executable, str(ROOT / 'scripts' / 'benchmark.py'), '--sizes=64',
       '--optimizers=lbfgs,adam', '--repeats=1', '--chunk=3', '--steady_sizes=64',
       '--steady_warmup=4',
       f'--content={data / "chelsea.png"}', f'--style={data / "ihc.png"}',
       f'--output_json={out_json}', f'--results_md={out_md}'],
      capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out_json.read_text())
  assert [e['optimizer'] for e in report['results']] == ['lbfgs', 'adam']
  for entry in report['results']:
    # The gate: both sides computed the same loss at the shared initial image.
    assert entry['parity']['rel_diff'] < 1e-4
    jax_row, torch_row = entry['rows']
    assert (jax_row['side'], torch_row['side']) == ('jax', 'torch')
    for row in entry['rows']:
      assert row['iter_s'] > 0 and row['finite'] and row['peak_host_rss_bytes'] > 0
      assert row['iterations'] == 6  # warm-up chunk + one timed chunk of 3
  # Same objective after equal Adam steps, within the project's 2% criterion
  # (Adam's per-pixel normalisation turns float32 rounding in tiny gradients
  # into full-size steps, so the sides drift apart slowly: 0.3% here).
  # L-BFGS steady state: 4 more untimed iterations, then a timed chunk, on both
  # sides (pairs that fail the curvature test are skipped, so fewer than 9).
  lbfgs = report['results'][0]
  for row in lbfgs['rows']:
    assert row['steady_iter_s'] > 0 and row['steady_after_iterations'] == 10
    assert 1 <= row['steady_pairs'] <= 9
  assert 'steady_iter_s' not in report['results'][1]['rows'][0]  # Adam: early only
  adam = report['results'][1]
  assert abs(adam['objective_ratio_jax_over_torch'] - 1) < 0.02
  floor = report['conv_floor']['64']
  assert floor['convolutions'] == 13 and floor['total_s'] > 0
  md = out_md.read_text()
  assert '| 64x43 | lbfgs | jax |' in md and '| 64x43 | adam | torch |' in md
  assert 'convolutions of one iteration alone' in md
  assert 'L-BFGS at steady state' in md


def test_benchmark_mode_dispatch():
  # --mode=M runs benchmarks/M.py; an unknown mode is refused, naming the known ones.
  proc = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'benchmark.py'),
                         '--mode=no_such_mode'], capture_output=True, text=True, timeout=120,
                        cwd=ROOT)
  assert proc.returncode == 1
  assert 'no_such_mode' in proc.stderr and 'gatys' in proc.stderr


def test_realtime_gpu_benchmark_runs_small():
  """The GPU frames/s check (scripts/gpu_bench.sh) runs end to end, here on a tiny CPU frame."""
  from benchmarks import realtime_gpu
  results = realtime_gpu.run({'height': 32, 'width': 48, 'frames': 1, 'calls': 1})
  assert {(r['network'], r['dtype']) for r in results['rows']} == {
      (n, d) for n in ('multistyle26', 'arbitrary_transform') for d in ('float32', 'bfloat16')}
  assert all(r['fps'] > 0 for r in results['rows'])
  assert 'frames/s' in realtime_gpu.markdown(results)


def test_whole_process_reads_gnu_time():
  from benchmarks import whole_process
  if not Path('/usr/bin/time').exists():
    pytest.skip('GNU time is not installed')
  # A child that holds ~200 MB and sleeps 1.2 s: both must show in the report.
  res = whole_process._timed([sys.executable, '-c',
                              'import time; b = b"x" * (200 << 20); time.sleep(1.2)'])
  assert 1.2 <= res['seconds'] < 30
  assert 0.19 < res['peak_rss_gib'] < 2
  with pytest.raises(RuntimeError, match='exited 3'):
    whole_process._timed([sys.executable, '-c', 'raise SystemExit(3)'])


def test_realtime_benchmark_rows_and_the_arbitrary_pair():
  """benchmarks/realtime.py side by side with onnxruntime, tiny: every row timed on both
  sides, and the pair row (one painting, one photo) is the predictor plus the transformer."""
  pytest.importorskip('onnxruntime')
  pytest.importorskip('onnx')
  from benchmarks import realtime
  results = realtime.run({'sizes': [64], 'arbitrary_sizes': [64], 'calls': 2, 'batch': 0,
                          'first_call': False, 'large': False, 'keep_freed_memory': False})
  rows = {r['net']: r for r in results['rows']}
  assert set(rows) == {'multistyle26', 'arbitrary_predict', 'arbitrary_transform',
                       'arbitrary pair'}
  for r in rows.values():
    assert r['nst_jax_ms'] > 0 and r['onnxruntime_ms'] > 0
  pair, parts = rows['arbitrary pair'], (rows['arbitrary_predict'], rows['arbitrary_transform'])
  for side in ('nst_jax_ms', 'onnxruntime_ms'):
    assert pair[side] == pytest.approx(sum(p[side] for p in parts))
  assert pair['ratio'] == pytest.approx(pair['onnxruntime_ms'] / pair['nst_jax_ms'])
  assert '| arbitrary pair | 64x64 |' in realtime.markdown(results)


def test_realtime_batch_row_runs_the_same_network_on_both_sides():
  """The batch row's onnxruntime side (the wheel's graph with its batch axis freed)
  computes what nst_jax does, frame by frame, within the parity tolerance 1e-4."""
  pytest.importorskip('onnxruntime')
  pytest.importorskip('onnx')
  import jax.numpy as jnp
  from benchmarks import realtime
  from nst_jax import cin_net, realtime_weights
  models = realtime._models()
  session = realtime._ort_session(realtime._with_batch_axis(models['multistyle26']))
  frames = np.random.default_rng(3).uniform(size=(3, 36, 44, 3)).astype(np.float32)
  weights = np.zeros(26, np.float32)
  weights[7] = 1.0
  got = session.run(None, {'image': np.ascontiguousarray(frames.transpose(0, 3, 1, 2)),
                           'style_weights': weights})[0].transpose(0, 2, 3, 1)
  params, _ = realtime_weights.load_multistyle26()
  want = np.asarray(cin_net.apply(params, jnp.asarray(frames), jnp.asarray(weights)))
  assert got.shape == want.shape
  assert np.max(np.abs(got - want)) <= 1e-4
  row = realtime._batch_row({'batch': 2, 'batch_size': 32, 'calls': 1, 'style_index': 19},
                            models)
  for key in ('batch_ms_per_frame', 'one_by_one_ms_per_frame', 'ort_batch_ms_per_frame',
              'ort_one_by_one_ms_per_frame'):
    assert row[key] > 0, key
  assert 'onnxruntime' in realtime.markdown({**_results_stub(), 'batch': row})


def _results_stub():
  """The header fields `realtime.markdown` reads."""
  return {'device': 'cpu:cpu', 'cpu': 'test', 'cores': 2, 'jax': '0', 'onnxruntime': '0',
          'calls': 1, 'keep_freed_memory': False, 'rows': []}
