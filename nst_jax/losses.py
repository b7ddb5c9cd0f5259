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

Beyond the Gram matrix (issue 13; see docs/objectives.md for when each helps):

* ``sliced_wasserstein_loss``: the whole feature distribution, compared in
  random 1-D projections (Heitz et al. 2021), directions from a PRNG key
  (``LossSpec.key_for``: the run loop's key, new every ``sw_redraw`` iterations);
* ``mean_std_loss``: per-channel mean and standard deviation (the statistics
  AdaIN matches, Huang & Belongie 2017);
* ``color_loss``: sliced Wasserstein between pixel colours (the palette);
* guided (masked) versions of each for spatial control (Gatys et al. 2017):
  every region of the output matches its own style.

The style term is a weighted combination of kinds, chosen by a string such
as ``'gram:1,sw:0.5'`` (``parse_style_loss``); the default, ``'gram'``, runs
exactly the original computation.

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
import numpy as np

from nst_jax import layers as vgg_layers
from nst_jax import vgg
from nst_jax.config import STYLE_LOSSES  # noqa: F401  (re-exported)
from nst_jax.config import parse_style_loss  # noqa: F401  (re-exported)

Array = jax.Array


# Style statistics the style term can match (STYLE_LOSSES) and the parser of
# 'gram:1,sw:0.5' live in the JAX-free config module, which checks flags.
# Random directions for the sliced Wasserstein loss: by default one per
# SW_CHANNELS_PER_DIRECTION channels of the layer (8 at relu1_1 ... 64 at
# relu5_1). Sorting costs pixels x directions, and pixels fall 4x per block
# while channels double, so the deep layers, where a style's structure lives,
# get the most directions and relu1_1, with the most pixels, the fewest; the
# sorts then cost ~15 sorts of the image's pixel count, which keeps an
# iteration within 1.3x of Gram (benchmarks/style_losses.py, docs/objectives.md).
SW_CHANNELS_PER_DIRECTION = 8
# New random directions every SW_REDRAW_EVERY iterations, not every one:
# L-BFGS builds its curvature from gradient differences between iterations,
# which assumes one objective; Heitz et al.'s own code keeps a set of
# directions for a whole L-BFGS run of 64 evaluations. Redrawing every 25
# iterations brought the output's colours closer to a poster's than every 1,
# 5 or never (benchmarks/where_gram_fails.py, docs/objectives.md).
SW_REDRAW_EVERY = 25
DEFAULT_COLOR_DIRECTIONS = 4
# Inside the square root of the per-channel variance: dead ReLU channels have
# zero variance, where the root's gradient would be infinite (AdaIN's epsilon).
_STD_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """The static part of the objective: which layers, which statistics, how the net runs.

  Changing any field changes the compiled program; the loss *weights* are
  passed separately (``default_loss_weights``) and can change without
  recompiling. The defaults are the original Gatys et al. objective.
  """
  content_layers: tuple[str, ...] = ('relu4_2',)
  style_layers: tuple[str, ...] = ('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1')
  pooling: str = 'max'
  normalize_gradients: bool = False
  compute_dtype: str | None = None  # e.g. 'bfloat16' for mixed precision
  remat: bool = False
  # Kinds of style statistics matched at every style layer (STYLE_LOSSES);
  # their relative weights live in the loss weights.
  style_losses: tuple[str, ...] = ('gram',)
  sw_directions: int = 0      # per layer (at most the channels); 0: channels // 8
  # The run loop draws new directions every sw_redraw iterations (key_for).
  sw_redraw: int = SW_REDRAW_EVERY
  color_loss: bool = False    # add the colour-distribution term ('color')
  color_directions: int = 0   # 0: DEFAULT_COLOR_DIRECTIONS
  # Rows per band of nst_jax.bands (0: the whole image in one pass).
  band_rows: int = 0
  # VGG19's wide layers by Winograd (nst_jax.winograd) in the run loop, which
  # attaches the transformed kernels (vgg.with_backward_kernels).
  winograd: bool = False

  def __post_init__(self):
    unknown = [k for k in self.style_losses if k not in STYLE_LOSSES]
    if unknown or not self.style_losses:
      raise ValueError(f'style_losses must be a non-empty tuple of {", ".join(STYLE_LOSSES)}, '
                       f'got {self.style_losses!r}')
    if self.sw_directions < 0 or self.color_directions < 0:
      raise ValueError('sw_directions and color_directions must be >= 0 (0: the default)')
    if self.sw_redraw < 1:
      raise ValueError(f'sw_redraw must be >= 1, got {self.sw_redraw}')
    if self.band_rows < 0 or self.band_rows % 16:
      raise ValueError(f'band_rows must be 0 or a positive multiple of 16, got {self.band_rows}')

  @property
  def taps(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(self.content_layers + self.style_layers))

  @property
  def needs_key(self) -> bool:
    """Whether ``total_loss`` needs a PRNG key (random projections)."""
    return 'sw' in self.style_losses or self.color_loss

  def key_for(self, key: Array, iteration) -> Array:
    """The key of ``iteration`` of a run seeded with ``key``: new every ``sw_redraw``."""
    return jax.random.fold_in(key, iteration // self.sw_redraw)

  def directions(self, channels: int) -> int:
    """Number of sliced-Wasserstein directions at a layer with ``channels`` channels."""
    return min(channels, self.sw_directions) if self.sw_directions else default_directions(
        channels)

  def features(self, params, images: Array, taps: Sequence[str] | None = None
               ) -> dict[str, Array]:
    """VGG19 features of ``images`` at ``taps`` (default: ``self.taps``), run as specified."""
    dtype = None if self.compute_dtype is None else jnp.dtype(self.compute_dtype)
    return vgg.features(params, images, self.taps if taps is None else taps,
                        pooling=self.pooling, compute_dtype=dtype, remat=self.remat)


@jax.custom_vjp
def gram(features: Array) -> Array:
  """Gram matrix normalised by the number of feature elements.

  The backward pass is one matmul, ``dF = F (dG + dG^T) / N``, where autodiff
  of the einsum does two (``F dG`` and ``F dG^T``): about 3% of a CPU
  iteration at 256 px. For a symmetric ``dG`` (every loss here) the result is
  bit-identical to autodiff's.

  Args:
    features: [..., H, W, C].
  Returns:
    [..., C, C] equal to ``F^T F / (C * H * W)`` with F the [H*W, C] matrix.
  """
  return _gram(features)


def _gram(features: Array) -> Array:
  *lead, h, w, c = features.shape
  f = features.reshape(*lead, h * w, c).astype(jnp.float32)
  return jnp.einsum('...nc,...nd->...cd', f, f) / (c * h * w)


def _gram_fwd(features: Array):
  return _gram(features), features


def _gram_bwd(features: Array, g: Array):
  *lead, h, w, c = features.shape
  f = features.reshape(*lead, h * w, c).astype(jnp.float32)
  sym = (g + jnp.swapaxes(g, -1, -2)) / (c * h * w)
  df = jnp.einsum('...nc,...cd->...nd', f, sym)
  return (df.reshape(features.shape).astype(features.dtype),)


gram.defvjp(_gram_fwd, _gram_bwd)


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


# ----------------------------------------------------------------------------
# Distribution losses: sliced Wasserstein, mean and std, colour.


def _pixels(features: Array) -> Array:
  """[..., C] -> [N, C] float32 (every leading axis is a pixel axis)."""
  return features.reshape(-1, features.shape[-1]).astype(jnp.float32)


def default_directions(channels: int) -> int:
  """Default sliced-Wasserstein directions for a layer: channels / 8, at least 1."""
  return max(1, channels // SW_CHANNELS_PER_DIRECTION)


def random_directions(key: Array, channels: int, num: int) -> Array:
  """``num`` random unit vectors in R^channels, uniform on the sphere.

  Returns:
    [channels, num]; column ``d`` is one direction.
  """
  d = jax.random.normal(key, (channels, num), jnp.float32)
  return d / jnp.linalg.norm(d, axis=0, keepdims=True)


# XLA's CPU sort calls a compiled comparator per comparison, except for a
# single integer operand, which it sorts natively: 1.57 M float32 in 282 ms
# (331 ms with the index alongside, as jnp.sort's gradient needs) against
# 50 ms for the same values as order-preserving int32 keys, or as one int64
# key that packs (value key, index). The two functions below sort that way;
# the result is exactly jnp.sort's, and ties are broken by index.
def _order_key(values: Array) -> Array:
  """float32 -> int32 whose integer order is the floats' order (-0.0 < +0.0)."""
  bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.int32)
  return jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def sort_values(values: Array) -> Array:
  """``jnp.sort(values, axis=-1)`` for float32, through integer keys (no gradient)."""
  keys = jnp.sort(_order_key(jax.lax.stop_gradient(values)), axis=-1)
  bits = jnp.where(keys < 0, keys ^ 0x7FFFFFFF, keys)
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def sort_order(values: Array) -> Array:
  """Stable argsort along the last axis (int32), from one sort of int64 keys.

  Each key is ``(order key of the value) << 32 | index``, so a plain integer
  sort orders by value and then by index; the low 32 bits are the order.
  64-bit integers are enabled for these few operations only.
  """
  n = values.shape[-1]
  with jax.enable_x64(True):
    keys = _order_key(jax.lax.stop_gradient(values)).astype(jnp.int64) << 32
    keys = jnp.sort(keys | jnp.arange(n, dtype=jnp.int64), axis=-1)
    return (keys & 0xFFFFFFFF).astype(jnp.int32)


def _sorted_projections(pixels: Array, directions: Array,
                        weights: Array | None = None) -> tuple[Array, Array | None]:
  """Projections [D, N] sorted along N (and the pixel weights in the same order).

  The sorted values are a gather of the projections by their order, so the
  gradient flows back to each pixel's own projection.
  """
  proj = (pixels @ directions).T
  order = sort_order(proj)
  w = None
  if weights is not None:
    w = weights.astype(jnp.float32)[order]
  return jnp.take_along_axis(proj, order, axis=-1), w


def _quantile_positions(sorted_weights: Array) -> Array:
  """Mid-point cumulative weight of each sorted sample, in (0, 1): [D, N]."""
  c = jnp.cumsum(sorted_weights, axis=-1)
  return (c - 0.5 * sorted_weights) / jnp.maximum(c[..., -1:], 1e-30)


def _resample_uniform(sorted_values: Array, n: int) -> Array:
  """Quantiles at (i + 0.5) / n of equally weighted sorted samples [D, M] -> [D, n].

  Linear interpolation between the samples' own quantile positions
  (k + 0.5) / M; with ``n == M`` the samples themselves.
  """
  m = sorted_values.shape[-1]
  if m == n:
    return sorted_values
  pos = (np.arange(n) + 0.5) * (m / n) - 0.5  # Static: computed in float64 once.
  lo = np.clip(np.floor(pos), 0, m - 1).astype(np.int32)
  hi = np.minimum(lo + 1, m - 1)
  frac = np.clip(pos - lo, 0.0, 1.0).astype(np.float32)
  return sorted_values[:, lo] * (1.0 - frac) + sorted_values[:, hi] * frac


def _quantiles_at(sorted_values: Array, sorted_weights: Array | None, q: Array) -> Array:
  """Quantiles at positions q [D, n] of sorted samples [D, M] with optional weights."""
  if sorted_weights is None:
    m = sorted_values.shape[-1]
    pos = q * m - 0.5
    lo = jnp.clip(jnp.floor(pos), 0, m - 1).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, m - 1)
    frac = jnp.clip(pos - lo, 0.0, 1.0)
    take = lambda i: jnp.take_along_axis(sorted_values, i, axis=-1)
    return take(lo) * (1.0 - frac) + take(hi) * frac
  return jax.vmap(jnp.interp)(q, _quantile_positions(sorted_weights), sorted_values)


def _sliced_wasserstein(x: Array, styles: Sequence[Array], blend: Array | None,
                        directions: Array, x_weights: Array | None = None,
                        style_weights: Sequence[Array | None] | None = None) -> Array:
  """Sliced W2^2 between pixels x [N, C] and a (blend of) style pixel sets [M_s, C].

  Several styles are blended by averaging their quantile functions in each
  direction with weights ``blend`` (the 1-D Wasserstein barycentre), as the
  Gram path averages Gram matrices. ``x_weights`` [N] (a region's mask) makes
  x a weighted distribution; ``style_weights`` does the same for each style.
  The style side is a constant (no gradient).
  """
  n, d = x.shape[0], directions.shape[1]
  blend = jnp.ones((1,), jnp.float32) if blend is None else blend
  style_weights = [None] * len(styles) if style_weights is None else style_weights
  xs, xw = _sorted_projections(x, directions, x_weights)
  q = None if xw is None else _quantile_positions(xw)
  target = 0.0
  for i, (style, sw) in enumerate(zip(styles, style_weights)):
    if sw is None:  # The style is a constant: its values alone, sorted.
      sv = sort_values((style @ directions).T)
    else:
      sv, sw = jax.lax.stop_gradient(_sorted_projections(style, directions, sw))
    if q is None and sw is None:
      qs = _resample_uniform(sv, n)
    else:
      qs = _quantiles_at(sv, sw, q if q is not None else
                         jnp.broadcast_to((jnp.arange(n) + 0.5) / n, (d, n)))
    target = target + blend[i] * qs
  target = jax.lax.stop_gradient(target)
  if xw is None:
    return jnp.mean(jnp.square(xs - target))
  return jnp.sum(xw * jnp.square(xs - target)) / (d * jnp.maximum(jnp.sum(x_weights), 1e-30))


def sliced_wasserstein_loss(features: Array, target: Array, key: Array,
                            num_directions: int = 0) -> Array:
  """Sliced Wasserstein loss between two sets of feature vectors (Heitz et al. 2021).

  Projects both sets on ``num_directions`` random unit directions drawn from
  ``key``, sorts each projection and returns the mean squared difference of
  the sorted values. With different pixel counts the style's sorted values are
  linearly interpolated at the output's quantile positions. Zero when the two
  sets are equal up to a permutation of the pixels.

  Args:
    features: [..., C] (e.g. [H, W, C]); every leading axis is a pixel axis.
    target: [..., C] style features, any number of pixels.
    key: PRNG key; draw a fresh one each iteration.
    num_directions: directions (0: ``default_directions(C)``, C / 8).
  Returns:
    Scalar ``mean_{d, i} (sort(F v_d)_i - Q_d(i))^2``.
  """
  c = features.shape[-1]
  dirs = random_directions(key, c, num_directions or default_directions(c))
  return _sliced_wasserstein(_pixels(features), [_pixels(target)], None, dirs)


def moments(features: Array, weights: Array | None = None) -> tuple[Array, Array]:
  """Per-channel mean and standard deviation [C] (optionally pixel-weighted).

  Args:
    features: [..., C].
    weights: optional [...] non-negative pixel weights (a mask).
  Returns:
    (mean, std), std = sqrt(biased variance + 1e-5) as in AdaIN.
  """
  f = _pixels(features)
  if weights is None:
    mean = jnp.mean(f, axis=0)
    var = jnp.mean(jnp.square(f - mean), axis=0)
  else:
    w = weights.reshape(-1).astype(jnp.float32)
    w = w / jnp.maximum(jnp.sum(w), 1e-30)
    mean = w @ f
    var = w @ jnp.square(f - mean)
  return mean, jnp.sqrt(var + _STD_EPS)


def mean_std_loss(features: Array, target: tuple[Array, Array]) -> Array:
  """``mean((mu - mu_t)^2) + mean((sigma - sigma_t)^2)`` over channels (Huang & Belongie 2017).

  Args:
    features: [..., C].
    target: (mean [C], std [C]) of the style, from ``moments``.
  """
  mean, std = moments(features)
  return jnp.mean(jnp.square(mean - target[0])) + jnp.mean(jnp.square(std - target[1]))


def color_loss(image: Array, target: Array, key: Array, num_directions: int = 0) -> Array:
  """Sliced Wasserstein between the pixel colours of ``image`` and of a style.

  Both in the weight set's preprocessed space (for Caffe weights BGR, 0-255,
  mean removed: an affine map of sRGB, so distances are RGB distances x 255).

  Args:
    image: [H, W, 3].
    target: [..., 3] style pixels.
    key: PRNG key.
    num_directions: directions in colour space (0: DEFAULT_COLOR_DIRECTIONS).
  """
  dirs = random_directions(key, 3, num_directions or DEFAULT_COLOR_DIRECTIONS)
  return _sliced_wasserstein(_pixels(image), [_pixels(target)], None, dirs)


# ----------------------------------------------------------------------------
# Spatial control: masks (Gatys et al. 2017, "Controlling Perceptual Factors").


def check_masks(masks, *, count: int, shape: tuple[int, int] | None = None,
                name: str = 'masks', coverage: bool = True) -> np.ndarray:
  """Validates region masks on the host; returns them as [R, H, W] float32.

  Args:
    masks: [R, H, W] array or a sequence of R [H, W] arrays, values in [0, 1].
    count: the number of regions required (one per style image).
    shape: (H, W) every mask must have (the image's), or None.
    name: the argument's name, used in every message.
    coverage: require every pixel to be covered: the masks must sum to at
      least 0.5 at each pixel (content masks; a style mask may pick a part).
  Raises:
    ValueError: naming ``name`` and the mask, for a wrong count, shape, a
      value outside [0, 1] or non-finite, an empty mask, or an uncovered pixel.
  """
  arrays = [np.asarray(m, np.float32) for m in masks]
  if len(arrays) != count:
    raise ValueError(f'{name}: {len(arrays)} mask(s) for {count} style image(s); give one '
                     'mask per style image, in the same order')
  for i, m in enumerate(arrays):
    what = f'{name}: mask {i + 1}'
    if m.ndim != 2:
      raise ValueError(f'{what} must be a 2-D [H, W] array, got shape {m.shape}')
    if shape is not None and m.shape != tuple(shape):
      raise ValueError(f'{what} is {m.shape[1]}x{m.shape[0]} px but the image is '
                       f'{shape[1]}x{shape[0]}; masks must match the image size')
    if not np.all(np.isfinite(m)):
      raise ValueError(f'{what} has values outside [0, 1] (NaN or infinite); masks hold '
                       'weights in [0, 1] (white = in the region)')
    if m.min() < 0 or m.max() > 1:
      raise ValueError(f'{what} has values outside [0, 1] (min {m.min():.3g}, max '
                       f'{m.max():.3g}); scale it to [0, 1] (white = in the region)')
    if not m.any():
      raise ValueError(f'{what} is empty (all zero); every region needs some pixels')
  if arrays and len({m.shape for m in arrays}) > 1:
    raise ValueError(f'{name}: the masks differ in size '
                     f'({", ".join(f"{m.shape[1]}x{m.shape[0]}" for m in arrays)})')
  stacked = np.stack(arrays) if arrays else np.zeros((0, 0, 0), np.float32)
  if coverage and arrays:
    uncovered = np.argwhere(stacked.sum(0) < 0.5)
    if len(uncovered):
      y, x = uncovered[0]
      raise ValueError(f'{name}: {len(uncovered)} pixel(s) belong to no mask (the masks sum to '
                       f'less than 0.5 there, e.g. at row {y}, column {x}); the masks must '
                       'cover the whole image')
  return stacked


def _pools_before(layer: str) -> int:
  names = vgg_layers.LAYER_NAMES
  return sum(1 for p in names[:names.index(layer)] if p.startswith('pool'))


def mask_pyramid(masks: Array, layers: Sequence[str]) -> dict[str, Array]:
  """Masks resized to each layer's grid by 2x2 averaging at every pooling.

  The crop of odd rows and columns follows the network's own pooling, so each
  mask has exactly its layer's height and width.

  Args:
    masks: [R, H, W] on the input grid.
    layers: VGG19 layer names.
  Returns:
    ``{layer: [R, h, w]}``.
  """
  m = jnp.transpose(jnp.asarray(masks, jnp.float32), (1, 2, 0))[None]
  levels = [m]
  out = {}
  for layer in layers:
    k = _pools_before(layer)
    while len(levels) <= k:
      levels.append(vgg.pool2x2(levels[-1], 'avg'))
    out[layer] = jnp.transpose(levels[k][0], (2, 0, 1))
  return out


def guided_gram(features: Array, masks: Array) -> Array:
  """Gram matrix of each masked region, normalised by its channels x mass.

  Args:
    features: [H, W, C].
    masks: [R, H, W] weights in [0, 1] on the same grid.
  Returns:
    [R, C, C] with ``G_r = F^T diag(m_r) F / (C * sum(m_r))``; with one
    all-ones mask this is ``gram(features)``.
  """
  f = _pixels(features)
  m = masks.reshape(masks.shape[0], -1).astype(jnp.float32)
  mass = jnp.maximum(jnp.sum(m, axis=-1), 1e-30)
  return jnp.einsum('rn,nc,nd->rcd', m, f, f) / (f.shape[-1] * mass)[:, None, None]


def guided_style_loss(features: Array, masks: Array, target_grams: Array) -> Array:
  """Sum over regions of the Gram loss of each masked region (Gatys et al. 2017).

  Args:
    features: [H, W, C].
    masks: [R, H, W] on the features' grid.
    target_grams: [R, C, C], region r's style Gram matrix.
  """
  g = guided_gram(features, masks)
  return jnp.sum(jnp.mean(jnp.square(g - target_grams), axis=(-2, -1)))


def guided_sliced_wasserstein_loss(features: Array, masks: Array, targets: Sequence[Array],
                                   key: Array, num_directions: int = 0,
                                   target_weights: Sequence[Array] | None = None) -> Array:
  """Sum over regions of the sliced Wasserstein loss of each masked region.

  Region r of the output (pixels weighted by ``masks[r]``) is compared with
  ``targets[r]`` (weighted by ``target_weights[r]``, a style mask, if given),
  in the same random directions for every region.

  Args:
    features: [H, W, C].
    masks: [R, H, W] on the features' grid.
    targets: R arrays [..., C] of style features.
    key: PRNG key.
    num_directions: as ``sliced_wasserstein_loss``.
    target_weights: optional R arrays with the targets' pixel shape.
  """
  c = features.shape[-1]
  dirs = random_directions(key, c, num_directions or default_directions(c))
  x = _pixels(features)  # One set of directions for every region.
  tw = target_weights or [None] * len(targets)
  return sum(_sliced_wasserstein(x, [_pixels(t)], None, dirs, masks[r].reshape(-1),
                                 [None if tw[r] is None else tw[r].reshape(-1)])
             for r, t in enumerate(targets))


def guided_mean_std_loss(features: Array, masks: Array,
                         target: tuple[Array, Array]) -> Array:
  """Sum over regions of ``mean_std_loss`` with pixel-weighted moments.

  Args:
    features: [H, W, C].
    masks: [R, H, W].
    target: (means [R, C], stds [R, C]).
  """
  total = 0.0
  for r in range(masks.shape[0]):
    mean, std = moments(features, masks[r])
    total = total + (jnp.mean(jnp.square(mean - target[0][r]))
                     + jnp.mean(jnp.square(std - target[1][r])))
  return total


# ----------------------------------------------------------------------------
# The objective.


def _compute_dtype(spec: LossSpec):
  """The network's compute dtype from ``spec`` (None: the parameters' dtype)."""
  return None if spec.compute_dtype is None else jnp.dtype(spec.compute_dtype)


def _style_features(params, styles: Sequence[Array], spec: LossSpec) -> list[dict]:
  """Per style image, ``{layer: [h, w, C]}`` at the style layers ({} without any)."""
  return [{l: f[0] for l, f in vgg.features(params, s[None], spec.style_layers,
                                             pooling=spec.pooling,
                                             compute_dtype=_compute_dtype(spec)).items()}
          if spec.style_layers else {} for s in styles]


def _gram_targets(params, styles: Sequence[Array], blend_weights: Sequence[float] | Array,
                  spec: LossSpec) -> dict:
  """The original objective's style targets: blended Gram matrices per layer."""
  if not spec.style_layers:
    return {}
  grams = []
  for style in styles:
    feats = vgg.features(params, style[None], spec.style_layers, pooling=spec.pooling,
                         compute_dtype=_compute_dtype(spec))
    grams.append({l: gram(feats[l][0]) for l in spec.style_layers})
  return blend_grams(grams, blend_weights)


def _check_target_masks(content: Array, styles: Sequence[Array], content_masks: Array,
                        style_masks: Sequence[Array] | None) -> None:
  """Raises ValueError unless there is one content (and style) mask per style image."""
  if content_masks.shape[0] != len(styles):
    raise ValueError(f'content_masks: {content_masks.shape[0]} masks for {len(styles)} '
                     'style images; give one mask per style image')
  if tuple(content_masks.shape[1:]) != tuple(content.shape[:2]):
    raise ValueError(f'content_masks are {content_masks.shape[2]}x{content_masks.shape[1]} '
                     f'px but the content is {content.shape[1]}x{content.shape[0]}')
  if style_masks is not None and len(style_masks) != len(styles):
    raise ValueError(f'style_masks: {len(style_masks)} masks for {len(styles)} style images')


def _guided_style_targets(feats: Sequence[dict], content_masks: Array,
                          style_masks: Sequence[Array] | None, spec: LossSpec) -> dict:
  """Spatial control's targets: masks per layer and each region's own statistics.

  Returns ``'masks'``, ``'style_weights'`` (with style masks) and, by the
  kinds in ``spec.style_losses``, ``'style'`` ([R, C, C] Gram matrices) and
  ``'mean_std'`` ((means [R, C], stds [R, C])) per style layer.
  """
  kinds = spec.style_losses
  out = {'masks': {**mask_pyramid(content_masks, spec.style_layers), 'image': content_masks}}
  sm = None
  if style_masks is not None:
    sm = [{**mask_pyramid(m[None], spec.style_layers), 'image': m[None]} for m in style_masks]
    out['style_weights'] = {l: tuple(s[l][0] for s in sm)
                            for l in (*spec.style_layers, 'image')}
  region_w = lambda r, l: None if sm is None else sm[r][l][0]
  if 'gram' in kinds:
    out['style'] = {l: jnp.stack([
        gram(f[l]) if sm is None else guided_gram(f[l], sm[r][l])[0]
        for r, f in enumerate(feats)]) for l in spec.style_layers}
  if 'mean_std' in kinds:
    out['mean_std'] = {l: tuple(jnp.stack(a) for a in zip(*[
        moments(f[l], region_w(r, l)) for r, f in enumerate(feats)]))
        for l in spec.style_layers}
  return out


def _blended_style_targets(feats: Sequence[dict], blend_weights: Sequence[float] | Array,
                           spec: LossSpec) -> dict:
  """Targets that blend the style images: ``'blend'`` and, by kind, ``'style'``, ``'mean_std'``."""
  kinds = spec.style_losses
  w = jnp.asarray(blend_weights, jnp.float32)
  out = {'blend': w / jnp.sum(w)}
  if 'gram' in kinds:
    out['style'] = blend_grams([{l: gram(f[l]) for l in spec.style_layers} for f in feats],
                               blend_weights)
  if 'mean_std' in kinds:
    stats = [{l: moments(f[l]) for l in spec.style_layers} for f in feats]
    out['mean_std'] = {l: tuple(sum(out['blend'][i] * s[l][k] for i, s in enumerate(stats))
                                for k in (0, 1)) for l in spec.style_layers}
  return out


def make_targets(params, content: Array, styles: Sequence[Array],
                 blend_weights: Sequence[float] | Array, spec: LossSpec,
                 content_masks: Array | None = None,
                 style_masks: Sequence[Array] | None = None) -> dict:
  """Computes the optimisation targets once.

  Args:
    params: VGG19 parameters.
    content: [H, W, 3] preprocessed content image.
    styles: list of [Hs, Ws, 3] preprocessed style images (sizes may differ).
    blend_weights: one weight per style image (ignored with masks).
    spec: the objective's layers and network settings.
    content_masks: optional [R, H, W] region masks of the output, one per
      style image (spatial control: region r takes style r). Validate them
      first with ``check_masks``.
    style_masks: optional R masks [Hs_r, Ws_r]: the part of style image r
      to use (default: all of it).
  Returns:
    ``{'content': {layer: [h, w, C]}, 'style': {layer: [C, C]}}`` for the
    default spec; other kinds add ``'sw'`` (style features per layer),
    ``'mean_std'``, ``'color'`` (style pixels) and ``'blend'``; masks add
    ``'masks'`` (per layer, and ``'image'``) and ``'style_weights'``.
  """
  content_feats = spec.features(params, content[None])
  content_t = {l: content_feats[l][0] for l in spec.content_layers}
  kinds = spec.style_losses
  guided = content_masks is not None
  if not guided and kinds == ('gram',) and not spec.color_loss:  # The original objective.
    return {'content': content_t, 'style': _gram_targets(params, styles, blend_weights, spec)}

  if guided:
    _check_target_masks(content, styles, content_masks, style_masks)
  feats = _style_features(params, styles, spec)
  out = {'content': content_t,
         **(_guided_style_targets(feats, content_masks, style_masks, spec) if guided
            else _blended_style_targets(feats, blend_weights, spec))}
  if 'sw' in kinds:
    out['sw'] = {l: tuple(_pixels(f[l]) for f in feats) for l in spec.style_layers}
  if spec.color_loss:
    out['color'] = tuple(_pixels(s.astype(jnp.float32)) for s in styles)
  return out


def default_loss_weights(spec: LossSpec, content_weight: float = 5.0,
                         style_weight: float = 100.0, tv_weight: float = 1e-3,
                         style_layer_weights: Sequence[float] | None = None,
                         content_layer_weights: Sequence[float] | None = None,
                         style_loss_weights: Mapping[str, float] | Sequence | None = None,
                         color_weight: float = 0.0) -> dict:
  """Loss weights as a pytree: ``{'content': {layer: w}, 'style': {...}, 'tv': w}``.

  Each layer's weight is the global weight times its per-layer factor
  (1 by default), as in the reference, which gives every style layer the full
  ``style_weight``. ``style_loss_weights`` (e.g. ``parse_style_loss(...)``)
  weighs the kinds in ``spec.style_losses`` (default 1 each); with more than
  the Gram kind they are kept under ``'style_losses'``. ``color_weight``
  (under ``'color'``) is used when ``spec.color_loss``.
  """
  sl = style_layer_weights or [1.0] * len(spec.style_layers)
  cl = content_layer_weights or [1.0] * len(spec.content_layers)
  kinds = dict(style_loss_weights or {})
  missing = [k for k in spec.style_losses if k not in kinds]
  extra = [k for k in kinds if k not in spec.style_losses]
  if style_loss_weights is not None and (missing or extra):
    raise ValueError(f'style_loss_weights names {sorted(kinds)} but spec.style_losses is '
                     f'{spec.style_losses}')
  kinds = {k: float(kinds.get(k, 1.0)) for k in spec.style_losses}
  if spec.style_losses == ('gram',) and kinds['gram'] != 1.0:
    style_weight = style_weight * kinds['gram']  # One kind: its weight scales style_weight.
  out = {
      'content': {l: jnp.float32(content_weight * f) for l, f in zip(spec.content_layers, cl)},
      'style': {l: jnp.float32(style_weight * f) for l, f in zip(spec.style_layers, sl)},
      'tv': jnp.float32(tv_weight),
  }
  if spec.style_losses != ('gram',):
    out['style_losses'] = {k: jnp.float32(w) for k, w in kinds.items()}
  if spec.color_loss:
    out['color'] = jnp.float32(color_weight)
  return out


def _layer_features(feats: Mapping[str, Array], layer: str, weight: Array,
                    spec: LossSpec) -> Array:
  """Layer ``layer``'s [h, w, C] features, gradient-normalised if the spec asks."""
  f = feats[layer][0]
  if spec.normalize_gradients:
    f = _normalize_grad(f, weight)
  return f


def _style_kind_value(kind: str, f: Array, layer: str, targets: Mapping, spec: LossSpec,
                      layer_key: Array | None) -> Array:
  """The unweighted style loss of one kind at one layer (guided if targets have masks)."""
  guided = 'masks' in targets
  m = targets['masks'][layer] if guided else None
  if kind == 'gram':
    return (guided_style_loss(f, m, targets['style'][layer]) if guided
            else style_loss(f, targets['style'][layer]))
  if kind == 'mean_std':
    return (guided_mean_std_loss(f, m, targets['mean_std'][layer]) if guided
            else mean_std_loss(f, targets['mean_std'][layer]))
  styles = targets['sw'][layer]  # sw
  if guided:
    sw_w = targets.get('style_weights', {}).get(layer)
    return guided_sliced_wasserstein_loss(f, m, styles, layer_key,
                                          spec.directions(f.shape[-1]), sw_w)
  dirs = random_directions(layer_key, f.shape[-1], spec.directions(f.shape[-1]))
  return _sliced_wasserstein(_pixels(f), styles, targets['blend'], dirs)


def _style_terms_by_kind(feats: Mapping[str, Array], targets: Mapping,
                         loss_weights: Mapping, spec: LossSpec,
                         key: Array | None) -> dict[str, Array]:
  """Weighted style terms for the kinds in ``spec.style_losses``, guided or blended.

  Returns ``style/<kind>/<layer>``, ``style/<layer>`` (the layer's sum over
  kinds) and ``style/<kind>`` (the kind's sum over layers).
  """
  if spec.needs_key and key is None:
    raise ValueError(f'key: total_loss needs a PRNG key for {spec.style_losses} '
                     f'(color_loss={spec.color_loss}); pass a fresh key each iteration')
  kinds = spec.style_losses
  kind_w = loss_weights.get('style_losses')
  terms = {}
  for li, layer in enumerate(spec.style_layers):
    w = loss_weights['style'][layer]
    f = _layer_features(feats, layer, w if kind_w is None else w * sum(kind_w.values()), spec)
    layer_key = None if key is None else jax.random.fold_in(key, li)
    for kind in kinds:
      value = _style_kind_value(kind, f, layer, targets, spec, layer_key)
      scale = w if kind_w is None else w * kind_w[kind]
      terms[f'style/{kind}/{layer}'] = scale * value
    terms[f'style/{layer}'] = sum(terms[f'style/{k}/{layer}'] for k in kinds)
  zero = jnp.zeros((), jnp.float32)
  for kind in kinds:
    terms[f'style/{kind}'] = sum((terms[f'style/{kind}/{l}'] for l in spec.style_layers), zero)
  return terms


def _color_term(image: Array, targets: Mapping, spec: LossSpec, key: Array) -> Array:
  """The unweighted colour-distribution loss of ``image`` (guided if targets have masks)."""
  color_key = jax.random.fold_in(key, len(spec.style_layers))
  x = image.astype(jnp.float32)
  nd = spec.color_directions or DEFAULT_COLOR_DIRECTIONS
  if 'masks' in targets:
    cw = targets.get('style_weights', {}).get('image')
    return guided_sliced_wasserstein_loss(x, targets['masks']['image'], targets['color'],
                                          color_key, nd, cw)
  dirs = random_directions(color_key, 3, nd)
  return _sliced_wasserstein(_pixels(x), targets['color'], targets['blend'], dirs)


def total_loss(image: Array, params, targets: Mapping, loss_weights: Mapping,
               spec: LossSpec, key: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """The full objective for one image.

  Args:
    image: [H, W, 3] in preprocessed space.
    params: VGG19 parameters.
    targets: from ``make_targets``.
    loss_weights: from ``default_loss_weights`` (a pytree of scalars).
    spec: static settings.
    key: PRNG key for the random projections; required when
      ``spec.needs_key`` (draw a fresh one each iteration).
  Returns:
    ``(total, terms)``; ``terms`` holds every weighted part:
    ``content/<layer>``, ``style/<layer>``, ``tv``, and the sums ``content``
    and ``style``. With other style kinds also ``style/<kind>/<layer>`` and
    ``style/<kind>`` (``style/<layer>`` is then the layer's sum over kinds),
    and ``color`` with the colour term (included in the total).
  """
  feats = spec.features(params, image[None])
  terms = {}
  for layer in spec.content_layers:
    w = loss_weights['content'][layer]
    terms[f'content/{layer}'] = w * content_loss(_layer_features(feats, layer, w, spec),
                                                 targets['content'][layer])
  if spec.style_losses == ('gram',) and 'masks' not in targets:  # The original objective.
    for layer in spec.style_layers:
      w = loss_weights['style'][layer]
      terms[f'style/{layer}'] = w * style_loss(_layer_features(feats, layer, w, spec),
                                               targets['style'][layer])
  else:
    terms.update(_style_terms_by_kind(feats, targets, loss_weights, spec, key))
  terms['tv'] = loss_weights['tv'] * tv_loss(image.astype(jnp.float32))
  zero = jnp.zeros((), jnp.float32)
  terms['content'] = sum((terms[f'content/{l}'] for l in spec.content_layers), zero)
  terms['style'] = sum((terms[f'style/{l}'] for l in spec.style_layers), zero)
  total = terms['content'] + terms['style'] + terms['tv']
  if spec.color_loss:
    terms['color'] = loss_weights['color'] * _color_term(image, targets, spec, key)
    total = total + terms['color']
  return total, terms
