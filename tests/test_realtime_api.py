"""nst_jax.realtime against the networks called directly (random weights, tiny images)."""

import threading

import jax
import numpy as np
import pytest
from PIL import Image

from nst_jax import arbitrary
from nst_jax import cin_net
from nst_jax import color
from nst_jax import realtime

TOL = 1e-5  # float32, different batch shapes: XLA may pick other conv algorithms.

# The references: the networks themselves, jitted (eager MobileNetV2 is slow).
_cin_apply = jax.jit(cin_net.apply)
_predict = jax.jit(arbitrary.predict_style)
_transform = jax.jit(arbitrary.transform)


@pytest.fixture(scope='module')
def cin_params():
  params = cin_net.init_params(jax.random.key(0), num_styles=26, width=8)
  # Distinct per-style gamma/beta, so that styles and blends really differ.
  keys = jax.random.split(jax.random.key(1), len(params))
  out = {}
  for (name, value), key in zip(sorted(params.items()), keys):
    value = np.asarray(value)
    if name.endswith('.gamma') or name.endswith('.beta'):
      value = value + 0.5 * np.asarray(jax.random.normal(key, value.shape))
    out[name] = value
  return out


@pytest.fixture(scope='module')
def arbitrary_params():
  predictor = jax.tree.map(np.asarray, arbitrary.init_predictor_params(jax.random.key(2)))
  transformer = jax.tree.map(np.asarray, arbitrary.init_transformer_params(jax.random.key(3)))
  return predictor, transformer


def _images(n, h=24, w=32, seed=0):
  return np.random.default_rng(seed).random((n, h, w, 3)).astype(np.float32)


def _one_hot(i, n=26):
  v = np.zeros(n, np.float32)
  v[i] = 1
  return v


def test_builtin_strength_one_is_the_network_and_zero_the_photo(cin_params):
  x = _images(2)
  reference = np.asarray(_cin_apply(cin_params, x, _one_hot(7)))
  np.testing.assert_allclose(realtime.stylize_builtin(cin_params, x, 7), reference, atol=TOL)
  np.testing.assert_array_equal(realtime.stylize_builtin(cin_params, x, 7, strength=0.0), x)
  np.testing.assert_allclose(realtime.stylize_builtin(cin_params, x, 7, strength=0.25),
                             0.25 * reference + 0.75 * x, atol=TOL)


def test_builtin_blend_mixes_norm_parameters_linearly(cin_params):
  # Reference: a one-style network whose gamma and beta are the blend's mix.
  mix = 0.25 * _one_hot(3) + 0.75 * _one_hot(12)
  single = {k: (mix @ v)[None] if k.endswith(('.gamma', '.beta')) else v
            for k, v in cin_params.items()}
  x = _images(1)
  reference = np.asarray(_cin_apply(single, x, np.ones(1, np.float32)))
  for style in ({3: 0.25, 12: 0.75}, {3: 1, 12: 3}, [(3, 1.0), (12, 3.0)], mix * 4):
    np.testing.assert_allclose(realtime.stylize_builtin(cin_params, x, style), reference,
                               atol=TOL, err_msg=str(style))


def test_builtin_batch_equals_one_by_one(cin_params):
  x = _images(5, seed=1)
  batched = realtime.stylize_builtin(cin_params, x, {3: 0.5, 12: 0.5}, batch_size=2)
  singles = np.stack([realtime.stylize_builtin(cin_params, xi, {3: 0.5, 12: 0.5}) for xi in x])
  assert batched.shape == x.shape
  np.testing.assert_allclose(batched, singles, atol=TOL)
  # One row of weights per image: image k in style k.
  per_image = realtime.stylize_builtin(cin_params, x, np.eye(26, dtype=np.float32)[:5])
  np.testing.assert_allclose(per_image[4], realtime.stylize_builtin(cin_params, x[4], 4),
                             atol=TOL)


def test_cpu_batch_runs_one_call_per_core_and_equals_one_call_at_a_time(cin_params,
                                                                      monkeypatch):
  # On the CPU a chunk is split into one call per core, made from that many
  # threads; the result must be the sequential one, image for image.
  monkeypatch.setattr(realtime.os, 'sched_getaffinity', lambda pid: {0, 1}, raising=False)
  calls = []
  program = realtime._builtin_program

  def recording(dtype_name):
    run = program(dtype_name)

    def wrapped(params, images, *args):
      calls.append((images.shape[0], threading.get_ident()))
      return run(params, images, *args)
    return wrapped

  monkeypatch.setattr(realtime, '_builtin_program', recording)
  x = _images(5, seed=3)
  style = np.eye(26, dtype=np.float32)[[1, 7, 2, 9, 4]]  # a different style per image
  concurrent = realtime.stylize_builtin(cin_params, x, style, batch_size=4)
  assert [n for n, _ in calls] == [1] * 5, calls  # one call per image
  assert len({thread for _, thread in calls}) >= 2, 'the calls were not made from two threads'
  calls.clear()
  monkeypatch.setattr(realtime, 'CONCURRENT_MAX_PIXELS', 0)  # one call per chunk, in order
  sequential = realtime.stylize_builtin(cin_params, x, style, batch_size=4)
  assert sorted(n for n, _ in calls) == [4, 4], calls
  np.testing.assert_allclose(concurrent, sequential, atol=TOL)
  for i in range(5):
    np.testing.assert_allclose(concurrent[i], realtime.stylize_builtin(cin_params, x[i], style[i]),
                               atol=TOL)


def test_preserve_colors_keeps_the_content_chroma(cin_params):
  x = 0.1 + 0.8 * _images(1, seed=2)[0]  # Inside the gamut with room to spare.
  out = realtime.stylize_builtin(cin_params, x, 5, preserve_colors=True)
  plain = realtime.stylize_builtin(cin_params, x, 5)
  uv_out, uv_in = color.rgb_to_yuv(out)[..., 1:], color.rgb_to_yuv(x)[..., 1:]
  assert np.abs(uv_out - uv_in).max() < 1e-4
  # ... and the result's luminance where the gamut allows it.
  y_out, y_plain = color.rgb_to_yuv(out)[..., 0], color.rgb_to_yuv(plain)[..., 0]
  assert np.median(np.abs(y_out - y_plain)) < 1e-4


def test_bfloat16_is_close_to_float32(cin_params):
  x = _images(1, seed=3)
  f32 = realtime.stylize_builtin(cin_params, x, 1)
  bf16 = realtime.stylize_builtin(cin_params, x, 1, precision='bfloat16')
  assert bf16.dtype == np.float32
  assert np.abs(bf16 - f32).mean() < 0.02


def test_predictor_input_is_the_centre_square_at_256():
  image = np.random.default_rng(4).random((60, 90, 3)).astype(np.float32)
  crop = realtime.predictor_input(image)
  assert crop.shape == (256, 256, 3)
  # Independent reference: Pillow bicubic on each float channel of image[:, 15:75].
  square = image[:, 15:75]
  reference = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(square[..., c]))
                                   .resize((256, 256), Image.Resampling.BICUBIC))
                        for c in range(3)], axis=-1)
  np.testing.assert_allclose(crop, np.clip(reference, square.min(), square.max()), atol=1e-6)


def test_style_vector_averages_with_blend_weights(arbitrary_params):
  predictor, _ = arbitrary_params
  rng = np.random.default_rng(5)
  a, b = rng.random((40, 30, 3)).astype(np.float32), rng.random((32, 32, 3)).astype(np.float32)
  va, vb = (np.asarray(_predict(predictor, realtime.predictor_input(s)[None]))[0]
            for s in (a, b))
  np.testing.assert_allclose(realtime.style_vector(predictor, a), va, atol=1e-4)
  np.testing.assert_allclose(realtime.style_vector(predictor, [a, b], [1, 3]),
                             0.25 * va + 0.75 * vb, atol=1e-4)


def test_arbitrary_strength_interpolates_with_the_content_vector(arbitrary_params):
  predictor, transformer = arbitrary_params
  x = _images(3, seed=6)
  style = np.random.default_rng(7).normal(size=100).astype(np.float32)
  own = np.asarray(_predict(
      predictor, np.stack([realtime.predictor_input(xi) for xi in x])))
  for strength in (1.0, 0.0, 0.3):
    vectors = strength * style + (1 - strength) * own
    reference = np.asarray(_transform(transformer, x, vectors))
    out = realtime.stylize_arbitrary(predictor, transformer, x, style, strength=strength)
    np.testing.assert_allclose(out, reference, atol=1e-4, err_msg=f'strength {strength}')


def test_style_sheet_has_every_style(cin_params):
  x = _images(1, h=20, w=28)[0]
  result = realtime.style_sheet(cin_params, x, columns=9)
  assert len(result.image_boxes) == 27
  left, top, right, bottom = result.image_boxes[('tile', 13)]  # style 12
  expected = realtime.stylize_builtin(cin_params, x, 12)
  np.testing.assert_allclose(result.image[top:bottom, left:right],
                             np.rint(expected * 255) / 255, atol=1 / 255 + 1e-6)


@pytest.mark.parametrize('kwargs, message', [
    (dict(style=26), r'^`style`: index 26 is out of range; the built-in styles are 0 to 25'),
    (dict(style=-1), r'^`style`: index -1'),
    (dict(style={}), r'^`style`: the blend is empty'),
    (dict(style={3: -1.0}), r'^`style`: the weight of style 3'),
    (dict(style={3: 0.0}), r'^`style`: the weights sum to 0'),
    (dict(style=np.ones(25)), r'^`style` must be'),
    (dict(style=1, strength=1.5), r'^`strength` must be in \[0, 1\]'),
    (dict(style=1, strength=float('nan')), r'^`strength` must be in \[0, 1\]'),
    (dict(style=1, precision='float16'), r'^`precision` must be one of'),
    (dict(style=1, batch_size=0), r'^`batch_size` must be a positive integer'),
])
def test_bad_arguments_name_the_argument(cin_params, kwargs, message):
  style = kwargs.pop('style')
  with pytest.raises(realtime.RealtimeError, match=message):
    realtime.stylize_builtin(cin_params, _images(1), style, **kwargs)
  assert issubclass(realtime.RealtimeError, ValueError)


@pytest.mark.parametrize('images, message', [
    (np.zeros((8, 8, 3), np.float32), 'too small'),
    (np.zeros((32, 32), np.float32), r'must be an RGB image \[H, W, 3\]'),
    (np.full((32, 32, 3), 2.0, np.float32), r'in \[0, 1\]'),
    (np.zeros((32, 32, 3), np.uint8), 'divide 8-bit images by 255'),
])
def test_bad_images(cin_params, images, message):
  with pytest.raises(realtime.RealtimeError, match=message):
    realtime.stylize_builtin(cin_params, images, 0)
