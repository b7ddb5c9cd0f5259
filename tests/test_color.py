"""Tests for nst_jax.color against closed forms and independent references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from nst_jax import color


def _random(shape, seed=0):
  return np.random.default_rng(seed).random(shape)


def _structured(h=24, w=32):
  """A smooth image with strongly correlated channels, like a photograph."""
  yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w),
                       indexing='ij')
  base = 0.5 + 0.4 * np.sin(3 * xx + 2 * yy)
  # Enough noise that no colour direction has a tiny variance, which the
  # eps regularisation of match_color_histogram would visibly distort.
  noise = 0.15 * _random((h, w, 3), seed=7)
  return np.clip(np.stack([base, 0.8 * base + 0.1 * yy, 0.3 + 0.2 * xx], -1)
                 + noise, 0, 1)


def _mean_cov(x):
  x = np.asarray(x, np.float64).reshape(-1, 3)
  return x.mean(0), np.cov(x, rowvar=False, bias=True)


# --- YUV --------------------------------------------------------------------


def test_rgb_to_yuv_coefficients():
  rgb = _random((5, 4, 3))
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  expected = np.stack([
      0.299 * r + 0.587 * g + 0.114 * b,
      -0.14713 * r - 0.28886 * g + 0.436 * b,
      0.615 * r - 0.51499 * g - 0.10001 * b,
  ], -1)
  out = color.rgb_to_yuv(rgb)
  assert out.dtype == np.float32 and out.shape == rgb.shape
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_yuv_round_trip():
  rgb = _random((7, 6, 3), seed=1)
  np.testing.assert_allclose(color.yuv_to_rgb(color.rgb_to_yuv(rgb)), rgb,
                             atol=1e-6)
  yuv = color.rgb_to_yuv(rgb)
  np.testing.assert_allclose(color.rgb_to_yuv(color.yuv_to_rgb(yuv)), yuv,
                             atol=1e-6)


def test_yuv_to_rgb_textbook_values():
  # The rounded textbook inverse: R = Y + 1.13983 V, G = Y - 0.39465 U
  # - 0.58060 V, B = Y + 2.03211 U.
  yuv = np.array([0.5, 0.1, -0.2])
  y, u, v = yuv
  expected = [y + 1.13983 * v, y - 0.39465 * u - 0.58060 * v, y + 2.03211 * u]
  np.testing.assert_allclose(color.yuv_to_rgb(yuv), expected, atol=1e-4)


def test_bad_shape():
  with pytest.raises(ValueError, match='3'):
    color.rgb_to_yuv(np.zeros((4, 4)))


# --- luminance --------------------------------------------------------------


def test_match_luminance_statistics():
  ys = 0.3 * _random((20, 30), seed=2) + 0.1
  yc = _random((16, 16), seed=3)
  out = color.match_luminance(ys, yc)
  assert out.shape == ys.shape and out.dtype == np.float32
  np.testing.assert_allclose(out.mean(), yc.mean(), atol=1e-6)
  np.testing.assert_allclose(out.std(), yc.std(), atol=1e-6)
  # An affine map with positive gain: order is kept.
  np.testing.assert_allclose(np.corrcoef(out.ravel(), ys.ravel())[0, 1], 1,
                             atol=1e-6)


def test_match_luminance_constant_style():
  yc = _random((8, 8), seed=4)
  out = color.match_luminance(np.full((5, 5), 0.7), yc)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, yc.mean(), atol=1e-6)


def test_to_luminance_rgb():
  rgb = _random((6, 5, 3), seed=5)
  out = color.to_luminance_rgb(rgb)
  y = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
  for c in range(3):
    np.testing.assert_allclose(out[..., c], y, atol=1e-6)


@pytest.mark.parametrize('y_range', [(0.0, 1.0), (-0.5, 1.5)])
def test_combine_luminance_chroma_keeps_chroma(y_range):
  content = _random((32, 32, 3), seed=6)
  lo, hi = y_range
  y = lo + (hi - lo) * _random((32, 32), seed=8)
  out = color.combine_luminance_chroma(y, content)
  assert out.shape == content.shape and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_allclose(color.rgb_to_yuv(out)[..., 1:],
                             color.rgb_to_yuv(content)[..., 1:], atol=1e-6)
  # Where the requested luminance is reachable it is used unchanged.
  out_y = color.rgb_to_yuv(out)[..., 0]
  chroma = color.rgb_to_yuv(content) * np.array([0, 1, 1])
  offset = color.yuv_to_rgb(chroma)  # RGB of each pixel at Y = 0
  candidate = y[..., None] + offset
  reachable = np.all((candidate >= 1e-4) & (candidate <= 1 - 1e-4), -1)
  assert reachable.mean() > 0.2  # the check below is not vacuous
  np.testing.assert_allclose(out_y[reachable], y[reachable], atol=1e-5)
  # Saved as 8 bits, the chroma moves by less than one level.
  quantised = np.rint(out * 255) / 255
  np.testing.assert_array_less(
      np.abs(color.rgb_to_yuv(quantised)[..., 1:]
             - color.rgb_to_yuv(content)[..., 1:]), 1 / 255)


def test_combine_luminance_chroma_extremes():
  # Saturated content colours leave only one feasible luminance.
  content = np.array([[[1, 0, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0]]], float)
  for y_value in (0.0, 1.0):
    out = color.combine_luminance_chroma(np.full((1, 4), y_value), content)
    np.testing.assert_allclose(out[0, :2], content[0, :2], atol=1e-5)
  # Greys become grey (to 1e-4: the published U row sums to 1e-5, not 0).
  np.testing.assert_allclose(
      color.combine_luminance_chroma(np.full((1, 4), 0.5), content)[0, 2:],
      np.full((2, 3), 0.5), atol=1e-4)


def test_combine_luminance_chroma_shape_mismatch():
  with pytest.raises(ValueError, match='shape'):
    color.combine_luminance_chroma(np.zeros((4, 5)), np.zeros((5, 4, 3)))


def test_original_colors():
  content = _structured()
  generated = _random(content.shape, seed=9)
  out = color.original_colors(generated, content)
  expected = color.combine_luminance_chroma(
      color.rgb_to_yuv(generated)[..., 0], content)
  np.testing.assert_allclose(out, expected, atol=1e-6)
  np.testing.assert_allclose(color.original_colors(content, content), content,
                             atol=1e-6)


# --- colour histogram matching -----------------------------------------------


@pytest.mark.parametrize('style, content', [
    (_random((40, 30, 3), seed=10), _random((32, 32, 3), seed=11)),
    (_structured(24, 32), _random((20, 20, 3), seed=12) ** 2),
    (_random((30, 30, 3), seed=13), _structured(24, 32)),
    (_structured(24, 32)[::-1, :, ::-1], _structured(16, 20)),
])
def test_match_color_histogram_statistics(style, content):
  out = color.match_color_histogram(style, content)
  assert out.shape == style.shape and out.dtype == np.float32
  mu_o, cov_o = _mean_cov(out)
  mu_c, cov_c = _mean_cov(content)
  np.testing.assert_allclose(mu_o, mu_c, atol=1e-3)
  np.testing.assert_allclose(cov_o, cov_c, atol=1e-3)


def test_match_color_histogram_nearly_grey_style():
  # Variance ~1e-6 across channels: matched only once eps is far below it.
  grey = _random((24, 24, 1), seed=19)
  style = grey + 0.003 * _random((24, 24, 3), seed=20)
  content = _random((16, 16, 3), seed=21)
  out = color.match_color_histogram(style, content, eps=1e-12)
  np.testing.assert_allclose(_mean_cov(out)[1], _mean_cov(content)[1],
                             atol=1e-3)


def test_match_color_histogram_closed_form():
  style = _structured()
  content = _random((16, 16, 3), seed=14)
  eps = 1e-5
  mu_s, cov_s = _mean_cov(style)
  mu_c, cov_c = _mean_cov(content)
  a = np.real(scipy.linalg.sqrtm(cov_c)) @ np.linalg.inv(
      np.real(scipy.linalg.sqrtm(cov_s + eps * np.eye(3))))
  expected = style @ a.T + (mu_c - a @ mu_s)
  out = color.match_color_histogram(style, content, eps=eps)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_match_color_histogram_not_clipped():
  # A low-contrast style stretched to a high-contrast content overshoots.
  style = 0.45 + 0.1 * _random((16, 16, 3), seed=15)
  content = np.zeros((16, 16, 3))
  content[::2] = 1.0
  content += 0.02 * _random((16, 16, 3), seed=16)
  out = color.match_color_histogram(style, content)
  assert out.min() < 0.0 or out.max() > 1.0


def test_match_color_histogram_same_image():
  image = _structured()
  np.testing.assert_allclose(color.match_color_histogram(image, image), image,
                             atol=1e-3)


def test_match_color_histogram_degenerate_style():
  content = _random((8, 8, 3), seed=17)
  for style in (np.full((6, 6, 3), 0.3),
                np.repeat(_random((6, 6, 1), seed=18), 3, -1)):
    out = color.match_color_histogram(style, content)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(_mean_cov(out)[0], content.reshape(-1, 3)
                               .mean(0), atol=1e-3)
