"""DeepDream: the objective against a PyTorch twin, the ascent, and scripts/dream.py.

The objective's value and gradient match a plain PyTorch computation to 1e-4
relative; the layer's objective rises octave after octave; the script writes
the result at the input's size and refuses bad input with one error line,
writing nothing. Images are tiny (<= 64 px) and runs a few steps.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from nst_jax import dream
from nst_jax.config import ConfigError

from conftest import rel_err

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-4


def _torch_features(params, x, taps):
  """Plain PyTorch VGG19 (NCHW), independent of nst_jax.vgg."""
  import torch
  import torch.nn.functional as F
  from nst_jax import layers
  wanted, last = set(taps), max(layers.LAYER_NAMES.index(t) for t in taps)
  out = {}
  for name in layers.LAYER_NAMES[:last + 1]:
    if name.startswith('conv'):
      k = torch.tensor(np.transpose(np.asarray(params[name]['kernel']), (3, 2, 0, 1)),
                       dtype=torch.float64)
      x = F.conv2d(x, k, torch.tensor(np.asarray(params[name]['bias']), dtype=torch.float64),
                   padding=1)
    elif name.startswith('relu'):
      x = F.relu(x)
    else:
      x = F.max_pool2d(x, 2, 2)
    if name in wanted:
      out[name] = x
  return out


@pytest.mark.parametrize('guided', [False, True])
def test_objective_matches_torch_twin(random_params, guided):
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  image = rng.normal(size=(20, 24, 3)).astype(np.float32) * 40
  guide_img = rng.normal(size=(16, 16, 3)).astype(np.float32) * 40
  spec = dream.DreamSpec(layers=('relu2_1',), channels=(('relu1_1', 5),))
  params = jax.tree.map(jnp.asarray, random_params)
  guide = (dream.guide_features(params, jnp.asarray(guide_img), spec) if guided else None)
  value, grad = jax.jit(jax.value_and_grad(lambda x: dream.objective(x, params, spec, guide)[0]))(
      jnp.asarray(image))

  x = torch.tensor(image.transpose(2, 0, 1)[None], dtype=torch.float64, requires_grad=True)
  f = _torch_features(random_params, x, ('relu1_1', 'relu2_1'))
  if guided:
    g = _torch_features(random_params, torch.tensor(guide_img.transpose(2, 0, 1)[None],
                                                    dtype=torch.float64), ('relu2_1',))
    gm = g['relu2_1'][0].reshape(g['relu2_1'].shape[1], -1)        # [C, M]
    xm = f['relu2_1'][0].reshape(f['relu2_1'].shape[1], -1)        # [C, N]
    layer_term = (xm.T @ gm).max(dim=1).values.mean()
  else:
    layer_term = (f['relu2_1'] ** 2).mean()
  ref = layer_term + (f['relu1_1'][0, 5] ** 2).mean()
  ref.backward()
  ref_grad = x.grad.numpy()[0].transpose(1, 2, 0)
  print(f'value {float(value):.7g} twin {float(ref.detach()):.7g} grad rel {rel_err(grad, ref_grad):.2e}')
  assert abs(float(value) - float(ref.detach())) / float(ref.detach()) < RTOL
  assert rel_err(grad, ref_grad) < RTOL


def test_objective_rises_over_octaves_and_size_is_kept(caffe_weights):
  rng = np.random.default_rng(1)
  # A smooth image with some structure (noise alone is a poor start for VGG).
  yy, xx = np.mgrid[0:44, 0:60] / 10.0
  image = np.stack([0.5 + 0.3 * np.sin(xx), 0.5 + 0.3 * np.cos(yy), 0.5 + 0.2 * np.sin(xx + yy)],
                   -1).astype(np.float32) + 0.05 * rng.normal(size=(44, 60, 3)).astype(np.float32)
  image = np.clip(image, 0, 1)
  spec = dream.DreamSpec(layers=('relu4_2',))
  config = dream.DreamConfig(octaves=3, octave_scale=1.4, steps_per_octave=3, jitter=4,
                             chunk_size=2)
  seen = []
  result = dream.dream(caffe_weights, image, spec, config, callback=seen.append)
  values = [result.objective_start, *result.objective_per_octave]
  print('objective: input, then after each octave:', values)
  assert all(b > a for a, b in zip(values, values[1:])), values
  assert result.image.shape == image.shape
  assert result.image.min() >= 0 and result.image.max() <= 1
  assert np.abs(result.image - image).mean() > 0.01  # it did dream
  # Progress at the end of every octave, coarse to fine, with growing objective.
  assert [p.octave for p in seen if p.step == p.steps] == [0, 1, 2]
  assert seen[-1].image().shape == image.shape


def test_config_and_channel_errors_name_the_flag():
  with pytest.raises(ConfigError, match='--channels: relu4_2 has channels 0..511, got 512'):
    dream.parse_channels('relu4_2:512')
  with pytest.raises(ConfigError, match="--channels: 'relu4_2' is not LAYER:CHANNEL"):
    dream.parse_channels('relu4_2')
  with pytest.raises(ConfigError, match='--layers: unknown layer'):
    dream.DreamSpec(layers=('relu9_1',))
  with pytest.raises(ConfigError, match='--layers and --channels are both empty'):
    dream.DreamSpec(layers=())
  with pytest.raises(ConfigError, match='--octave_scale must be a number > 1'):
    dream.DreamConfig(octave_scale=1.0)
  with pytest.raises(ConfigError, match='use --octaves=2 or fewer'):
    dream.check_sizes((12, 16), dream.DreamSpec(layers=('relu4_2',)),
                      dream.DreamConfig(octaves=3, octave_scale=1.4))


def _png(path, h, w):
  rng = np.random.default_rng(2)
  Image.fromarray((rng.uniform(size=(h, w, 3)) * 255).astype(np.uint8)).save(path)
  return str(path)


def _script(*args, cwd):
  return subprocess.run([sys.executable, str(ROOT / 'scripts' / 'dream.py'), *args],
                        capture_output=True, text=True, cwd=cwd, timeout=300,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu',
                             'NST_JAX_CACHE_DIR': str(Path(cwd) / 'cache')})


def test_script_writes_the_input_size_and_refuses_bad_input(tmp_path, caffe_weights):
  del caffe_weights  # Only to skip when the weights are unavailable.
  src = _png(tmp_path / 'in.png', 36, 50)
  out = tmp_path / 'out' / 'dream.png'
  r = _script(f'--input_image={src}', f'--output_image={out}', '--layers=relu3_1',
              '--octaves=2', '--steps_per_octave=2', '--jitter=2', '--image_size=32',
              '--print_iter=1', '--save_iter=2', cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  with Image.open(out) as im:
    assert im.size == (50, 36)
  assert (tmp_path / 'out' / 'dream_o2_2.png').exists()
  progress = [l for l in r.stderr.splitlines() if l.startswith('nst_jax: octave')]
  assert progress and progress[-1].startswith('nst_jax: octave 2/2 step 2/2 objective')

  bad = tmp_path / 'bad.png'
  bad.write_bytes(b'not an image')
  for args, needle in [
      ([f'--input_image={bad}'], 'bad.png'),
      ([f'--input_image={src}', '--channels=relu4_2:600'], '--channels'),
      ([f'--input_image={src}', '--octaves=9'], '--octaves'),
      ([f'--input_image={src}', '--output_image=x.unknownext'], 'x.unknownext'),
  ]:
    target = tmp_path / 'never.png'
    r = _script(*args, *([] if any('output_image' in a for a in args)
                         else [f'--output_image={target}']), cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, (args, r.stderr)
    assert len(lines) == 1 and lines[0].startswith('error: ') and needle in lines[0], lines
    assert not target.exists()
