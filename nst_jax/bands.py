"""The Gatys objective and its gradient in bands of rows, for images too large for one pass.

VGG19's forward and backward at 4096x3072 keep ~20 GB of activations. The
Gram objective needs none of them at once: a Gram matrix is a sum over
pixels (``S = sum F^T F``) and the content loss a sum over pixels, so the
value and the gradient are assembled band by band, exactly:

1. **Sums.** For each band of ``spec.band_rows`` image rows, VGG19 runs on
   the band plus a margin of rows above and below (the receptive field of the
   deepest tap, ``layers.receptive_margin``, rounded up to a multiple of 16
   so that every band starts on every layer's pixel grid). Only the band's own
   rows of each tap are kept: their ``F^T F`` is added to the layer's Gram
   sum, their squared difference from the content target to the content sum.
   Those rows read nothing but real image rows, so they equal the same rows
   of the whole image's features.
2. **The loss** of the global sums (``losses.style_loss`` and
   ``losses.content_loss`` terms, normalised by the whole image's size), and
   its derivatives ``dL/dS`` per style layer and ``dL/dsum`` per content layer.
3. **The gradient.** For each band again, the gradient of
   ``sum <dL/dS, F^T F> + dL/dsum * sum (F - target)^2`` over the band's own
   rows with respect to the band's window, added into the image's gradient.
   By the chain rule this is the band's share of the whole gradient.

Total variation, a pixel term, is computed on the whole image. The bands are
the steps of a ``lax.scan``: every window has the same height (the band plus
two margins, plus ``height % 16`` rows so that the last one ends at the
image's bottom on the 16-row grid), and a band's own rows are picked by a
mask, so one compiled body runs them all and one band's activations are live
at a time. Per iteration this costs one more forward pass, on windows of
704 rows per 512 (``band_rows=512`` with relu5_1).

Supported: the original objective (content, Gram style, TV) without masks or
gradient normalisation; anything else raises ValueError when a band is asked
for. The result equals ``jax.value_and_grad(losses.total_loss)`` up to
float32 rounding (``tests/test_bands.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import layers
from nst_jax import losses

BAND_MULTIPLE = layers.BAND_MULTIPLE


def margin(taps) -> int:
  """Rows of context above and below a band: the receptive margin, to a multiple of 16."""
  return layers.band_margin(taps)


class Bands(NamedTuple):
  """How an image of ``height`` rows is cut: ``count`` bands of ``rows`` own rows.

  Every band reads a window of the same ``window`` rows (so that one compiled
  loop body runs them all), starting at ``starts[k]``: its own rows
  ``k * rows ..`` plus at least ``margin`` rows above and below, or up to the
  image's edge.
  """
  rows: int
  count: int
  window: int
  margin: int
  starts: np.ndarray  # [count] first window row of each band, multiples of 16


def plan(height: int, band_rows: int, taps) -> Bands:
  """The bands of an image ``height`` rows high."""
  if band_rows <= 0 or band_rows % BAND_MULTIPLE:
    raise ValueError(f'band_rows must be a positive multiple of {BAND_MULTIPLE}, '
                     f'got {band_rows}')
  m = margin(taps)
  count = -(-height // band_rows)
  # The extra height % 16 rows let the last window end at the image's bottom
  # and still start on the 16-row grid.
  window = min(height, band_rows + 2 * m + height % BAND_MULTIPLE)
  starts = np.clip(np.arange(count) * band_rows - m, 0, height - window)
  return Bands(band_rows, count, window, m, starts.astype(np.int32))


def check_supported(spec: losses.LossSpec, targets: Mapping) -> None:
  """Raises ValueError unless the objective is one the bands compute exactly."""
  unsupported = []
  if spec.style_losses != ('gram',):
    unsupported.append(f'style losses {spec.style_losses}')
  if spec.color_loss:
    unsupported.append('the colour loss')
  if spec.normalize_gradients:
    unsupported.append('normalize_gradients')
  if 'masks' in targets:
    unsupported.append('masks')
  if unsupported:
    raise ValueError('band_rows supports the Gram objective (content, Gram style, TV) '
                     f'only, not {", ".join(unsupported)}; set band_rows=0')


def total_loss(image: jax.Array, params, targets: Mapping, loss_weights: Mapping,
               spec: losses.LossSpec, key: jax.Array | None = None):
  """``losses.total_loss``, in bands if ``spec.band_rows`` (steps 1 and 2 only)."""
  if not spec.band_rows or image.shape[0] <= spec.band_rows:
    return losses.total_loss(image, params, targets, loss_weights, spec=spec, key=key)
  check_supported(spec, targets)
  total, terms = _terms_of_sums(_sums(image, params, targets, spec), image.shape[:2],
                                targets, loss_weights, spec)
  terms['tv'] = loss_weights['tv'] * losses.tv_loss(image.astype(jnp.float32))
  return total + terms['tv'], terms


def value_and_grad(image: jax.Array, params, targets: Mapping, loss_weights: Mapping,
                   spec: losses.LossSpec, key: jax.Array | None = None):
  """``jax.value_and_grad(losses.total_loss, has_aux=True)``, in bands if ``spec.band_rows``.

  Args: as ``losses.total_loss``; ``image`` is [H, W, 3].
  Returns:
    ``((total, terms), gradient)`` with the terms of ``losses.total_loss``.
  """
  if not spec.band_rows or image.shape[0] <= spec.band_rows:
    return jax.value_and_grad(losses.total_loss, has_aux=True)(
        image, params, targets, loss_weights, spec=spec, key=key)
  check_supported(spec, targets)
  sums = _sums(image, params, targets, spec)
  (vgg_total, terms), dsums = jax.value_and_grad(_terms_of_sums, has_aux=True)(
      sums, image.shape[:2], targets, loss_weights, spec)
  grad = _gradient(image, params, targets, spec, dsums)
  tv, tv_grad = jax.value_and_grad(losses.tv_loss)(image.astype(jnp.float32))
  terms['tv'] = loss_weights['tv'] * tv
  grad = grad + loss_weights['tv'] * tv_grad.astype(grad.dtype)
  return (vgg_total + terms['tv'], terms), grad


def make_targets(params, content: jax.Array, styles, blend_weights, spec: losses.LossSpec,
                 content_masks=None, style_masks=None) -> dict:
  """``losses.make_targets``, with every image higher than ``spec.band_rows`` done in bands.

  XLA lays out a forward pass's buffers at once: at 4096x3072 even the
  targets' forward pass alone asks for 24 GiB. In bands, each content target
  row comes from the band that owns it, and each style's Gram matrix is the
  sum of its bands' ``F^T F``, normalised by the whole image's size.
  """
  if not spec.band_rows or content_masks is not None or style_masks is not None:
    return losses.make_targets(params, content, styles, blend_weights, spec,
                               content_masks=content_masks, style_masks=style_masks)
  check_supported(spec, {})
  content_t = {}
  if spec.content_layers:
    if content.shape[0] <= spec.band_rows:
      feats = _features(params, content, spec, spec.content_layers)
      content_t = {l: feats[l][0] for l in spec.content_layers}
    else:
      content_t = _in_bands(content, params, spec, spec.content_layers, _place_rows,
                            _zero_features(content, params, spec, spec.content_layers))
  grams = []
  for style in styles:
    h, w = style.shape[:2]
    sums = _gram_sums(style, params, spec)
    grams.append({l: g / (g.shape[0] * (h // layers.downsampling(l)) * (w // layers.downsampling(l)))
                  for l, g in sums.items()})
  style_t = losses.blend_grams(grams, blend_weights) if spec.style_layers else {}
  return {'content': content_t, 'style': style_t}


def _features(params, window, spec, taps):
  """``spec``'s VGG19 features of one [h, W, 3] window at ``taps``."""
  return spec.features(params, window[None], taps)


def _zero_features(image, params, spec, taps):
  """Zeros shaped like the whole image's features at ``taps``: {layer: [h, w, C]}."""
  shapes = jax.eval_shape(lambda x: _features(params, x, spec, taps), image)
  return {l: jnp.zeros(s.shape[1:], s.dtype) for l, s in shapes.items()}


def _in_bands(image, params, spec, taps, fn, init):
  """Folds ``acc = fn(acc, band)`` over the bands of ``image`` (a ``lax.scan``).

  ``band`` is a ``_Window`` of the band's features at ``taps``. One band's
  activations are live at a time: XLA's CPU backend reuses a loop body's
  buffers, where it gives every band of an unrolled loop its own.
  """
  bands = plan(image.shape[0], spec.band_rows, taps)

  def body(acc, k_start):
    k, start = k_start
    window = jax.lax.dynamic_slice_in_dim(image, start, bands.window, axis=0)
    return fn(acc, _window(params, window, spec, taps, k, start, bands)), None

  acc, _ = jax.lax.scan(body, init, (jnp.arange(bands.count), jnp.asarray(bands.starts)))
  return acc


class _Window(NamedTuple):
  """One band's window, per layer: features with other bands' rows zeroed, and where."""
  own: dict        # layer -> [h, w, C], rows other bands own set to zero
  mask: dict       # layer -> [h, 1, 1] bool, the band's own rows
  first_row: dict  # layer -> the window's first row in the layer's grid of the image


def _window(params, window, spec, taps, k, start, bands):
  feats = _features(params, window, spec, taps)
  own, mask, first_row = {}, {}, {}
  for layer in taps:
    f = feats[layer][0]
    d = layers.downsampling(layer)
    row = start // d + jnp.arange(f.shape[0])  # in the layer's grid of the image
    m = ((row >= k * bands.rows // d) & (row < (k + 1) * bands.rows // d))[:, None, None]
    own[layer], mask[layer], first_row[layer] = jnp.where(m, f, 0), m, start // d
  return _Window(own, mask, first_row)


def _place_rows(acc, band):
  """Adds each layer's own rows into the whole image's features ``acc`` at their place."""
  return {l: jax.lax.dynamic_update_slice_in_dim(
      acc[l], jax.lax.dynamic_slice_in_dim(acc[l], band.first_row[l], f.shape[0]) + f,
      band.first_row[l], axis=0) for l, f in band.own.items()}


def _gram_sum(f):
  f = f.reshape(-1, f.shape[-1])
  return jnp.einsum('nc,nd->cd', f, f)


def _gram_sums(image, params, spec):
  """``{layer: F^T F}`` over the whole image at the style layers, in bands if it is high."""
  if not spec.style_layers:
    return {}
  if image.shape[0] <= spec.band_rows:
    feats = _features(params, image, spec, spec.style_layers)
    return {l: _gram_sum(feats[l][0]) for l in spec.style_layers}
  shapes = jax.eval_shape(lambda x: _features(params, x[:32], spec, spec.style_layers), image)
  init = {l: jnp.zeros((s.shape[-1],) * 2, jnp.float32) for l, s in shapes.items()}
  return _in_bands(image, params, spec, spec.style_layers,
                   lambda acc, band: {l: acc[l] + _gram_sum(f) for l, f in band.own.items()},
                   init)


def _band_statistics(band, targets, spec):
  """Each style layer's ``F^T F`` and each content layer's squared error over own rows."""
  grams = {l: _gram_sum(band.own[l]) for l in spec.style_layers}
  content = {}
  for layer in spec.content_layers:
    f = band.own[layer]
    target = jax.lax.dynamic_slice_in_dim(targets['content'][layer], band.first_row[layer],
                                          f.shape[0])
    content[layer] = jnp.sum(jnp.where(band.mask[layer], jnp.square(f - target), 0))
  return grams, content


def _sums(image, params, targets, spec):
  """Step 1: the Gram and content sums over all bands."""
  shapes = jax.eval_shape(lambda x: _features(params, x[:32], spec, spec.taps), image)
  init = ({l: jnp.zeros((shapes[l].shape[-1],) * 2, jnp.float32) for l in spec.style_layers},
          {l: jnp.zeros((), jnp.float32) for l in spec.content_layers})
  return _in_bands(image, params, spec, spec.taps,
                   lambda acc, band: jax.tree.map(jnp.add, acc,
                                                  _band_statistics(band, targets, spec)),
                   init)


def _terms_of_sums(sums, image_hw, targets, loss_weights, spec):
  """Step 2: the content and style terms of ``losses.total_loss`` from the sums."""
  grams, content = sums
  h, w = image_hw
  terms = {}
  for layer in spec.content_layers:
    size = targets['content'][layer].size
    terms[f'content/{layer}'] = loss_weights['content'][layer] * content[layer] / size
  for layer in spec.style_layers:
    d = layers.downsampling(layer)
    c = grams[layer].shape[-1]
    gram = grams[layer] / (c * (h // d) * (w // d))
    terms[f'style/{layer}'] = loss_weights['style'][layer] * jnp.mean(
        jnp.square(gram - targets['style'][layer]))
  zero = jnp.zeros((), jnp.float32)
  terms['content'] = sum((terms[f'content/{l}'] for l in spec.content_layers), zero)
  terms['style'] = sum((terms[f'style/{l}'] for l in spec.style_layers), zero)
  return terms['content'] + terms['style'], terms


def _gradient(image, params, targets, spec, dsums):
  """Step 3: the image gradient, band by band, from the loss's derivatives in the sums."""
  dgrams, dcontent = dsums
  bands = plan(image.shape[0], spec.band_rows, spec.taps)

  def band_objective(window, k, start):
    grams, content = _band_statistics(_window(params, window, spec, spec.taps, k, start, bands),
                                      targets, spec)
    total = sum(jnp.sum(dgrams[l] * grams[l]) for l in spec.style_layers)
    return total + sum(dcontent[l] * content[l] for l in spec.content_layers)

  def body(grad, k_start):
    k, start = k_start
    window = jax.lax.dynamic_slice_in_dim(image, start, bands.window, axis=0)
    g = jax.grad(band_objective)(window, k, start)
    g = g + jax.lax.dynamic_slice_in_dim(grad, start, bands.window, axis=0)
    return jax.lax.dynamic_update_slice_in_dim(grad, g, start, axis=0), None

  grad, _ = jax.lax.scan(body, jnp.zeros_like(image),
                         (jnp.arange(bands.count), jnp.asarray(bands.starts)))
  return grad
