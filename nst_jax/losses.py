"""The style-transfer objective as pure functions (Gatys, Ecker & Bethge 2016).

Every function here takes arrays and returns arrays; nothing is captured, so
all of it can be used under ``jax.jit``, ``jax.grad`` and ``jax.vmap``. The
default scalings follow jcjohnson/neural-style (``neural_style.lua``):

* content term: ``w * mean((F - F_target)^2)`` on the content layers;
* style term: ``w * mean((G - G_target)^2)`` per style layer, with the Gram
  matrix ``G = F^T F / (C * H * W)``;
* total variation: ``w * 0.5 * sum(dx^2 + dy^2)`` over the image minus its
  last row and column, whose gradient is exactly the reference's ``TVLoss``
  gradient (the reference never computes the value; we report it).

Images are in the weight set's preprocessed space (for Caffe weights: BGR,
0-255 scale, mean pixel subtracted), one image per problem, ``[H, W, 3]``.

Typical use inside your own JAX code::

    targets = losses.make_targets(params, content, [style], [1.0], spec)
    loss_fn = functools.partial(losses.total_loss, spec=spec)
    (total, terms), grad = jax.value_and_grad(loss_fn, has_aux=True)(
        image, params, targets, loss_weights)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from nst_jax import vgg

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """The static part of the objective: which layers, how the net runs.

  Changing any field changes the compiled program; the loss *weights* are
  passed separately (``LossWeights``) and can change without recompiling.
  """
  content_layers: tuple[str, ...] = ('relu4_2',)
  style_layers: tuple[str, ...] = ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1')
  pooling: str = 'max'
  normalize_gradients: bool = False
  compute_dtype: str | None = None  # e.g. 'bfloat16' for mixed precision
  remat: bool = False

  @property
  def taps(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(self.content_layers + self.style_layers))

  def features(self, params, images: Array) -> dict[str, Array]:
    dtype = None if self.compute_dtype is None else jnp.dtype(self.compute_dtype)
    return vgg.features(params, images, self.taps, pooling=self.pooling,
                        compute_dtype=dtype, remat=self.remat)


def gram(features: Array) -> Array:
  """Gram matrix normalised by the number of feature elements.

  Args:
    features: [..., H, W, C].
  Returns:
    [..., C, C] equal to ``F^T F / (C * H * W)`` with F the [H*W, C] matrix.
  """
  *lead, h, w, c = features.shape
  f = features.reshape(*lead, h * w, c).astype(jnp.float32)
  return jnp.einsum('...nc,...nd->...cd', f, f) / (c * h * w)


def content_loss(features: Array, target: Array) -> Array:
  """Mean squared error between feature maps (any shape)."""
  return jnp.mean(jnp.square(features.astype(jnp.float32) - target))


def style_loss(features: Array, target_gram: Array) -> Array:
  """Mean squared error between the Gram matrix of ``features`` and a target."""
  return jnp.mean(jnp.square(gram(features) - target_gram))


def tv_loss(image: Array) -> Array:
  """Total variation ``0.5 * sum(dx^2 + dy^2)`` over [H-1, W-1] (see module doc).

  Args:
    image: [..., H, W, C]; sums over the last three axes.
  """
  base = image[..., :-1, :-1, :]
  dx = base - image[..., :-1, 1:, :]
  dy = base - image[..., 1:, :-1, :]
  return 0.5 * jnp.sum(jnp.square(dx) + jnp.square(dy), axis=(-3, -2, -1))


@jax.custom_vjp
def _normalize_grad(x: Array, weight: Array) -> Array:
  return x


def _normalize_grad_fwd(x, weight):
  return x, weight


def _normalize_grad_bwd(weight, g):
  # g = weight * d, the weighted gradient of one loss term. The reference
  # (normalize_gradients) uses weight * d / (|d|_1 + 1e-8) instead.
  w = jnp.abs(weight)
  safe = jnp.where(w > 0, w, 1.0)
  scaled = g / (jnp.sum(jnp.abs(g)) / safe + 1e-8)
  return jnp.where(w > 0, scaled, jnp.zeros_like(g)), jnp.zeros_like(weight)


_normalize_grad.defvjp(_normalize_grad_fwd, _normalize_grad_bwd)


def blend_grams(grams: Sequence[Mapping[str, Array]],
                blend_weights: Sequence[float] | Array) -> dict[str, Array]:
  """Weighted average of several style images' Gram matrices.

  The weights are normalised to sum to one, as in the reference.
  """
  w = jnp.asarray(blend_weights, jnp.float32)
  w = w / jnp.sum(w)
  return {layer: sum(w[i] * g[layer] for i, g in enumerate(grams)) for layer in grams[0]}


def make_targets(params, content: Array, styles: Sequence[Array],
                 blend_weights: Sequence[float] | Array, spec: LossSpec) -> dict:
  """Computes the optimisation targets once.

  Args:
    params: VGG19 parameters.
    content: [H, W, 3] preprocessed content image.
    styles: list of [Hs, Ws, 3] preprocessed style images (sizes may differ).
    blend_weights: one weight per style image.
    spec: the objective's layers and network settings.
  Returns:
    ``{'content': {layer: [h, w, C]}, 'style': {layer: [C, C]}}``.
  """
  content_feats = spec.features(params, content[None])
  content_t = {l: content_feats[l][0] for l in spec.content_layers}
  if not spec.style_layers:
    return {'content': content_t, 'style': {}}
  grams = []
  for style in styles:
    feats = vgg.features(params, style[None], spec.style_layers, pooling=spec.pooling,
                         compute_dtype=None if spec.compute_dtype is None
                         else jnp.dtype(spec.compute_dtype))
    grams.append({l: gram(feats[l][0]) for l in spec.style_layers})
  return {'content': content_t, 'style': blend_grams(grams, blend_weights)}


def default_loss_weights(spec: LossSpec, content_weight: float = 5.0,
                         style_weight: float = 100.0, tv_weight: float = 1e-3,
                         style_layer_weights: Sequence[float] | None = None,
                         content_layer_weights: Sequence[float] | None = None) -> dict:
  """Loss weights as a pytree: ``{'content': {layer: w}, 'style': {...}, 'tv': w}``.

  Each layer's weight is the global weight times its per-layer factor
  (1 by default), as in the reference, which gives every style layer the full
  ``style_weight``.
  """
  sl = style_layer_weights or [1.0] * len(spec.style_layers)
  cl = content_layer_weights or [1.0] * len(spec.content_layers)
  return {
      'content': {l: jnp.float32(content_weight * f) for l, f in zip(spec.content_layers, cl)},
      'style': {l: jnp.float32(style_weight * f) for l, f in zip(spec.style_layers, sl)},
      'tv': jnp.float32(tv_weight),
  }


def total_loss(image: Array, params, targets: Mapping, loss_weights: Mapping,
               spec: LossSpec) -> tuple[Array, dict[str, Array]]:
  """The full objective for one image.

  Args:
    image: [H, W, 3] in preprocessed space.
    params: VGG19 parameters.
    targets: from ``make_targets``.
    loss_weights: from ``default_loss_weights`` (a pytree of scalars).
    spec: static settings.
  Returns:
    ``(total, terms)``; ``terms`` holds every weighted part:
    ``content/<layer>``, ``style/<layer>``, ``tv``, and the sums ``content``
    and ``style``.
  """
  feats = spec.features(params, image[None])
  terms = {}

  def weighted(kind, layer, fn, target):
    w = loss_weights[kind][layer]
    f = feats[layer][0]
    if spec.normalize_gradients:
      f = _normalize_grad(f, w)
    return w * fn(f, target)

  for layer in spec.content_layers:
    terms[f'content/{layer}'] = weighted('content', layer, content_loss,
                                         targets['content'][layer])
  for layer in spec.style_layers:
    terms[f'style/{layer}'] = weighted('style', layer, style_loss, targets['style'][layer])
  terms['tv'] = loss_weights['tv'] * tv_loss(image.astype(jnp.float32))
  zero = jnp.zeros((), jnp.float32)
  terms['content'] = sum((terms[f'content/{l}'] for l in spec.content_layers), zero)
  terms['style'] = sum((terms[f'style/{l}'] for l in spec.style_layers), zero)
  total = terms['content'] + terms['style'] + terms['tv']
  return total, terms
