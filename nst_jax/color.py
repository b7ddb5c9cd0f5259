"""Colour control for style transfer: keep the content's colours.

Gatys, Bethge, Hertzmann & Shechtman (2016), "Preserving Color in Neural
Artistic Style Transfer" (arXiv:1606.05897) give two methods: transfer only
luminance (section 2.2, here `match_luminance`, `to_luminance_rgb` and
`combine_luminance_chroma`; `original_colors` is the post-hoc variant of
jcjohnson/neural-style), and colour histogram matching of the style image
before the transfer (section 2.1, `match_color_histogram`).

``apply_mode`` and ``finish`` are what a run does with them: colour the
inputs of the optimisation by ``color`` mode, and finish its result.

Maths is done in float64 numpy and results are float32. Images are [..., 3]
RGB, nominally in [0, 1].
"""

from __future__ import annotations

import numpy as np

# The YUV of torch7's image.rgb2yuv, which neural-style's -original_colors
# uses; rows give Y, U, V from (R, G, B).
_RGB_TO_YUV = np.array([
    [0.299, 0.587, 0.114],
    [-0.14713, -0.28886, 0.436],
    [0.615, -0.51499, -0.10001],
], dtype=np.float64)
# The exact inverse rather than the rounded textbook one, so that a round
# trip is the identity to float64 precision.
_YUV_TO_RGB = np.linalg.inv(_RGB_TO_YUV)


def _as_rgb(x, name: str) -> np.ndarray:
  x = np.asarray(x, dtype=np.float64)
  if x.ndim < 1 or x.shape[-1] != 3:
    raise ValueError(f'{name} must have shape [..., 3], got {x.shape}')
  return x


def rgb_to_yuv(rgb) -> np.ndarray:
  """Converts RGB to YUV (Y = 0.299 R + 0.587 G + 0.114 B).

  Args:
    rgb: [..., 3] RGB.

  Returns:
    float32 [..., 3] (Y, U, V) with torch7's `image.rgb2yuv` coefficients.
  """
  rgb = _as_rgb(rgb, 'rgb')
  return (rgb @ _RGB_TO_YUV.T).astype(np.float32)


def yuv_to_rgb(yuv) -> np.ndarray:
  """Converts YUV back to RGB; the exact inverse of `rgb_to_yuv`.

  Args:
    yuv: [..., 3] (Y, U, V).

  Returns:
    float32 [..., 3] RGB, not clipped.
  """
  yuv = _as_rgb(yuv, 'yuv')
  return (yuv @ _YUV_TO_RGB.T).astype(np.float32)


def match_luminance(style_y, content_y) -> np.ndarray:
  """Matches the style luminance's mean and spread to the content's.

  Gatys et al. (2016), section 2.2: y_s' = (sigma_c / sigma_s) (y_s - mu_s)
  + mu_c, so that the style's luminance histogram does not shift the
  content's overall brightness and contrast. A constant style (sigma_s = 0)
  becomes the constant mu_c.

  Args:
    style_y: luminance of the style image, any shape (e.g. [Hs, Ws]).
    content_y: luminance of the content image, any shape.

  Returns:
    float32 array of style_y's shape.
  """
  ys = np.asarray(style_y, dtype=np.float64)
  yc = np.asarray(content_y, dtype=np.float64)
  mu_s, sigma_s = ys.mean(), ys.std()
  mu_c, sigma_c = yc.mean(), yc.std()
  if sigma_s <= np.finfo(np.float64).eps * max(1.0, abs(mu_s)):
    return np.full(ys.shape, mu_c, dtype=np.float32)
  return ((sigma_c / sigma_s) * (ys - mu_s) + mu_c).astype(np.float32)


def to_luminance_rgb(rgb) -> np.ndarray:
  """Replaces each pixel by its luminance Y in all three channels.

  The luminance-only transfer of Gatys et al. (2016), section 2.2, feeds the
  network such grey images, since VGG expects three channels.

  Args:
    rgb: [..., 3] RGB.

  Returns:
    float32 [..., 3] with R = G = B = Y.
  """
  rgb = _as_rgb(rgb, 'rgb')
  y = rgb @ _RGB_TO_YUV[0]
  return np.repeat(y[..., None], 3, axis=-1).astype(np.float32)


def combine_luminance_chroma(y, content_rgb) -> np.ndarray:
  """Puts luminance `y` together with the chroma (U, V) of `content_rgb`.

  Gatys et al. (2016), section 2.2: the output has the luminance of the
  stylised image and the colours of the content. A luminance far from the
  content's can leave the RGB gamut; rather than clipping RGB (which changes
  the hue), Y is clamped per pixel into the interval where all three channels
  Y + offset(U, V) lie in [0, 1]. That interval contains the content pixel's
  own Y, so it is non-empty whenever the content pixel is in gamut, and the
  content's chroma is then preserved exactly (before 8-bit quantisation).
  Only out-of-gamut content pixels are clipped in RGB.

  Args:
    y: [...] luminance, the shape of content_rgb without the channel axis.
    content_rgb: [..., 3] RGB in [0, 1] whose chroma is kept.

  Returns:
    float32 [..., 3] RGB in [0, 1].
  """
  content = _as_rgb(content_rgb, 'content_rgb')
  y = np.asarray(y, dtype=np.float64)
  if y.shape != content.shape[:-1]:
    raise ValueError(f'y has shape {y.shape} but content_rgb has '
                     f'{content.shape}; expected y of shape '
                     f'{content.shape[:-1]}')
  uv = content @ _RGB_TO_YUV[1:].T
  # rgb = gain * Y + offset; gain is (1, 1, 1) up to the rounding of the
  # published coefficients (the U row sums to 1e-5, not 0), all positive.
  gain = _YUV_TO_RGB[:, 0]
  offset = uv @ _YUV_TO_RGB[:, 1:].T
  lo = np.max(-offset / gain, axis=-1)
  hi = np.min((1.0 - offset) / gain, axis=-1)
  y = np.minimum(np.maximum(y, lo), hi)
  rgb = gain * y[..., None] + offset
  # Removes float rounding and handles out-of-gamut content (lo > hi).
  return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def original_colors(generated_rgb, content_rgb) -> np.ndarray:
  """Keeps the luminance of the result and the colours of the content.

  The post-hoc `-original_colors 1` of jcjohnson/neural-style (the
  luminance-transfer idea of Gatys et al. 2016, section 2.2, applied after
  an ordinary transfer). Unlike the reference, which clips RGB when saving,
  this clamps luminance so that the content's chroma survives exactly (see
  `combine_luminance_chroma`).

  Args:
    generated_rgb: [H, W, 3] stylised image.
    content_rgb: [H, W, 3] content image in [0, 1].

  Returns:
    float32 [H, W, 3] RGB in [0, 1].
  """
  generated = _as_rgb(generated_rgb, 'generated_rgb')
  y = generated @ _RGB_TO_YUV[0]
  return combine_luminance_chroma(y, content_rgb)


def _sym_power(matrix: np.ndarray, power: float) -> np.ndarray:
  """matrix**power for a symmetric positive (semi)definite matrix."""
  w, v = np.linalg.eigh(matrix)
  w = np.maximum(w, 0.0)
  if power < 0:
    w = np.where(w > 0, w, np.inf)
  return (v * w**power) @ v.T


def match_color_histogram(style_rgb, content_rgb, eps: float = 1e-5
                          ) -> np.ndarray:
  """Recolours the style image so its colour statistics are the content's.

  Gatys et al. (2016), section 2.1, "Image Analogies" variant: x' = A x + b
  with A = Sigma_c^{1/2} Sigma_s^{-1/2} (symmetric square roots, from
  eigendecompositions) and b = mu_c - A mu_s, where mu and Sigma are the
  mean and covariance of the pixels' RGB. The result's mean and covariance
  equal the content's, up to the `eps * I` added to Sigma_s so that a style
  with (nearly) no variance in some colour direction does not divide by zero;
  in such a direction the content's variance cannot be reproduced.

  The result is NOT clipped to [0, 1]: clipping would break the matched
  statistics, and the network accepts values slightly outside [0, 1].

  Args:
    style_rgb: [Hs, Ws, 3] (or [..., 3]) style image.
    content_rgb: [Hc, Wc, 3] (or [..., 3]) content image.
    eps: regularisation added to the diagonal of Sigma_s.

  Returns:
    float32 array of style_rgb's shape.
  """
  style = _as_rgb(style_rgb, 'style_rgb')
  content = _as_rgb(content_rgb, 'content_rgb')
  xs = style.reshape(-1, 3)
  xc = content.reshape(-1, 3)
  if xs.shape[0] == 0 or xc.shape[0] == 0:
    raise ValueError('style_rgb and content_rgb must have at least one pixel')
  mu_s, mu_c = xs.mean(axis=0), xc.mean(axis=0)
  # Population covariance (bias=True), the same convention as the check
  # "the result's covariance equals the content's".
  sigma_s = np.cov(xs, rowvar=False, bias=True) + eps * np.eye(3)
  sigma_c = np.cov(xc, rowvar=False, bias=True)
  a = _sym_power(sigma_c, 0.5) @ _sym_power(sigma_s, -0.5)
  b = mu_c - a @ mu_s
  return (style @ a.T + b).astype(np.float32)


def apply_mode(content_rgb, style_rgbs, mode: str) -> tuple[np.ndarray, list[np.ndarray]]:
  """The optimisation's content and styles for colour ``mode`` (none/luminance/histogram).

  ``'luminance'`` gives grey images carrying the content's luminance and each
  style's luminance matched to it; ``'histogram'`` recolours the styles to the
  content's colour mean and covariance.
  """
  if mode == 'luminance':
    cy = rgb_to_yuv(content_rgb)[..., 0]
    styles = [np.repeat(match_luminance(rgb_to_yuv(s)[..., 0], cy)[..., None], 3,
                        axis=-1).astype(np.float32) for s in style_rgbs]
    return to_luminance_rgb(content_rgb), styles
  if mode == 'histogram':
    return content_rgb, [match_color_histogram(s, content_rgb) for s in style_rgbs]
  return content_rgb, list(style_rgbs)


def finish(rgb, content_rgb, mode: str, keep_original_colors: bool = False) -> np.ndarray:
  """A run's result, clipped to [0, 1], with the content's chroma put back as asked."""
  rgb = np.clip(rgb, 0.0, 1.0)
  if mode == 'luminance':
    rgb = combine_luminance_chroma(rgb_to_yuv(rgb)[..., 0], content_rgb)
  if keep_original_colors:
    rgb = original_colors(rgb, content_rgb)
  return np.clip(rgb, 0.0, 1.0).astype(np.float32)
