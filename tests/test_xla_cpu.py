"""nst_jax.xla_cpu: the XLA_FLAGS edit, and the network computed with it in a fresh process."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

from nst_jax import cin_net
from nst_jax import small_conv
from nst_jax import xla_cpu


def test_parallel_convolutions_adds_the_flag_once(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_enable_fast_math=false')
  assert not xla_cpu.convolutions_are_parallel()
  assert small_conv.default_strip_pixels() == small_conv.STRIP_PIXELS
  assert xla_cpu.parallel_convolutions()
  assert xla_cpu.parallel_convolutions()
  assert os.environ['XLA_FLAGS'].split() == ['--xla_cpu_enable_fast_math=false', xla_cpu.FLAG]
  assert xla_cpu.convolutions_are_parallel()
  assert small_conv.default_strip_pixels() == small_conv.PARALLEL_STRIP_PIXELS
  with small_conv.settings(strip_pixels=7):  # an explicit choice wins
    assert small_conv.default_strip_pixels() == 7


def test_parallel_convolutions_leaves_the_users_choice(monkeypatch):
  chosen = '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'
  monkeypatch.setenv('XLA_FLAGS', chosen)
  assert not xla_cpu.parallel_convolutions()
  assert os.environ['XLA_FLAGS'] == chosen
  monkeypatch.delenv('XLA_FLAGS')
  assert xla_cpu.parallel_convolutions()
  assert os.environ['XLA_FLAGS'] == xla_cpu.FLAG


_CHILD = """
import json, sys
import numpy as np
from nst_jax import xla_cpu
assert xla_cpu.parallel_convolutions()
import jax
from nst_jax import cin_net, small_conv
params = cin_net.init_params(jax.random.key(0), num_styles=2, width=8)
x = np.random.default_rng(0).uniform(size=(2, 300, 260, 3)).astype(np.float32)
out = jax.jit(cin_net.apply)(params, x, np.array([0.3, 0.7], np.float32))
print(json.dumps({'strip_pixels': small_conv.default_strip_pixels(),
                  'out': np.asarray(out).ravel().tolist()}))
"""


def test_network_with_parallel_convolutions_equals_the_default():
  """In a fresh process with the flag (Eigen's convolutions, 64k-pixel strips:
  two per full-resolution layer here) the network computes what this process
  (YNNPACK, 4k strips) does, whose outputs the parity tests hold to
  onnxruntime: float32 rounding, 1e-5."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  child = subprocess.run([sys.executable, '-c', _CHILD], capture_output=True, text=True,
                         env=env, timeout=300, check=True)
  got = json.loads(child.stdout.strip().splitlines()[-1])
  assert got['strip_pixels'] == small_conv.PARALLEL_STRIP_PIXELS
  params = cin_net.init_params(jax.random.key(0), num_styles=2, width=8)
  x = np.random.default_rng(0).uniform(size=(2, 300, 260, 3)).astype(np.float32)
  with small_conv.settings(strip_pixels=small_conv.STRIP_PIXELS):
    want = jax.jit(lambda *a: cin_net.apply(*a))(params, x, np.array([0.3, 0.7], np.float32))
  np.testing.assert_allclose(np.asarray(got['out']).reshape(want.shape), want, atol=1e-5)
