"""The content x style matrix: batched and sharded equals one-by-one."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from conftest import ROOT

# Runs in a fresh interpreter: the fake devices must be set before JAX starts.
_SCRIPT = textwrap.dedent('''
    import json, os, sys
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
    import jax, numpy as np
    jax.config.update('jax_default_matmul_precision', 'float32')
    from nst_jax import matrix, transfer, weights
    from nst_jax.config import StyleConfig, StyleSpec
    rng = np.random.default_rng(0)
    def img(h, w, k):
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = np.stack([np.sin(k * xx) ** 2, np.cos(k * yy) ** 2, (xx * yy * k) % 1], -1)
        return (0.8 * base + 0.2 * rng.random((h, w, 3))).astype(np.float32)
    contents = [img(96, 128, 3), img(120, 160, 5)]          # same shape at 64 px
    styles = [img(80, 80, 9), img(100, 60, 13), img(64, 90, 17)]
    cfg = StyleConfig(image_size=64, num_iterations=20, print_iter=5, save_iter=0)
    ws = weights.load()
    layouts = []
    cells = matrix.stylize_many(contents, [StyleSpec((s,)) for s in styles], cfg,
                                weights=ws, callback=layouts.append)
    diffs = []
    for c in cells:
        ref = transfer.stylize(contents[c.content_index], [styles[c.style_index]], cfg, weights=ws)
        diffs.append(float(np.abs(c.image - ref.image).max()))
    print(json.dumps({'devices': len(jax.devices()), 'cells': len(cells), 'diffs': diffs,
                      'batch_devices': [p.batch_devices for p in layouts],
                      'shard_batch': [p.shard_batch for p in layouts],
                      'compiling': [p.compiling for p in layouts]}))
''')


def test_sharded_matrix_equals_sequential(caffe_weights):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run([sys.executable, '-c', _SCRIPT], capture_output=True, text=True,
                        env=env, cwd=ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['devices'] == 4 and out['cells'] == 6
  # 6 problems of one shape padded to 8, laid out as 4 devices x 2 problems.
  assert set(out['batch_devices']) == {4}
  assert set(out['shard_batch']) == {2}
  assert out['compiling'][0] and not any(out['compiling'][1:])
  assert max(out['diffs']) <= 1e-4, out['diffs']


def test_parse_style_spec():
  from nst_jax.config import parse_style_spec
  s = parse_style_spec('a.jpg@2+b.jpg')
  assert s.images == ('a.jpg', 'b.jpg') and s.blend_weights == (2.0, 1.0)
  assert s.label == 'a+b'


def test_a_cell_that_cannot_run_is_reported_and_the_rest_run(caffe_weights):
  from nst_jax import matrix
  from nst_jax.config import StyleConfig, StyleSpec
  good = np.random.default_rng(1).random((48, 64, 3)).astype(np.float32)
  style = np.random.default_rng(2).random((40, 40, 3)).astype(np.float32)
  cfg = StyleConfig(image_size=32, num_iterations=3, print_iter=0, save_iter=0,
                    style_layers=('relu1_1', 'relu2_1'), content_layers=('relu2_2',))
  seen = []
  cells = matrix.stylize_many([good], [StyleSpec((style,)), StyleSpec((style,), (1.0, 2.0))],
                              cfg, weights=caffe_weights, on_cell=seen.append)
  assert [(c.content_index, c.style_index) for c in cells] == [(0, 0), (0, 1)]
  assert cells[0].image is not None and np.isfinite(cells[0].image).all()
  assert cells[1].image is None and '2 values for 1 style image' in cells[1].error
  assert len(seen) == 2


def test_default_batch_size_caps_cpu_pixels_and_memory():
  from nst_jax import matrix
  from nst_jax import memory
  from nst_jax.config import StyleConfig
  cfg = StyleConfig()
  big = 1 << 40
  # CPU: about CPU_BATCH_PIXELS in all, whatever the number of (fake) devices.
  assert matrix.default_batch_size(192, 256, cfg, 1, 'cpu', budget=big) == 4
  assert matrix.default_batch_size(192, 256, cfg, 4, 'cpu', budget=big) == 4
  assert matrix.default_batch_size(48, 64, cfg, 1, 'cpu', budget=big) == 64
  # At least one problem per device, and always a multiple of the device count.
  assert matrix.default_batch_size(384, 512, cfg, 1, 'cpu', budget=big) == 1
  assert matrix.default_batch_size(768, 1024, cfg, 4, 'cpu', budget=big) == 4
  # Accelerators: memory is the only limit, per device.
  # The fixed part (overhead, Winograd kernels) is paid once, not per problem.
  fixed = memory.fixed_bytes(cfg)
  assert fixed > memory.OVERHEAD_BYTES  # conv_algorithm='auto' counts Winograd's kernels
  per_problem = memory.estimate_peak_bytes(384, 512, cfg) - fixed
  budget = int((10 * per_problem + fixed) / 0.8) + 1
  assert matrix.default_batch_size(384, 512, cfg, 1, 'gpu', budget=budget) == 10
  assert matrix.default_batch_size(384, 512, cfg, 8, 'gpu', budget=budget) == 80
  # A CPU host's memory is shared by its devices.
  assert matrix.default_batch_size(48, 64, cfg, 2, 'cpu', budget=budget) == 64
  small = int((3 * (memory.estimate_peak_bytes(48, 64, cfg) - fixed) + fixed) / 0.8) + 1
  assert matrix.default_batch_size(48, 64, cfg, 1, 'cpu', budget=small) == 3
