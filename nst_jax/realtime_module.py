"""The real-time networks as Flax NNX modules, thin wrappers around pure functions.

``CINNet`` wraps ``nst_jax.cin_net.apply`` (Dumoulin et al. 2017),
``StylePredictor`` and ``ArbitraryTransformer`` wrap
``nst_jax.arbitrary.predict_style`` and ``nst_jax.arbitrary.transform``
(Ghiasi et al. 2017). The modules only hold the parameters, as ``nnx.Param``
values in an ``nnx.Dict`` keyed by the flat parameter names; the computation
is the pure function. ``module.params()`` gives the plain dict back, and
``nnx.split(module)`` gives ``(graphdef, state)``. Kept apart from the
functional modules because importing Flax costs about 0.4 s.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from nst_jax import arbitrary
from nst_jax import cin_net


class _Params(nnx.Module):
  """Holds a flat parameter dict as ``self.weights[name]`` (``nnx.Param``)."""

  def __init__(self, params: Mapping[str, jax.Array]):
    self.weights = nnx.Dict({k: nnx.Param(jnp.asarray(v)) for k, v in params.items()})

  def params(self) -> dict[str, jax.Array]:
    """The parameters as a plain flat dict of arrays."""
    return {k: v[...] for k, v in self.weights.items()}


class CINNet(_Params):
  """The N-style conditional-instance-norm network; ``model(images, style_weights)``.

  Args:
    params: ``cin_net`` parameters, e.g. from
      ``nst_jax.realtime_weights.load_multistyle26()[0]``; if None, fresh ones
      from ``cin_net.init_params`` with ``num_styles`` and ``width``.
    num_styles, width: only used when ``params`` is None.
    rngs: only used when ``params`` is None.
  """

  def __init__(self, params: Mapping[str, jax.Array] | None = None, *,
               num_styles: int = 26, width: int = 32, rngs: nnx.Rngs | None = None):
    if params is None:
      params = cin_net.init_params((rngs or nnx.Rngs(0)).params(), num_styles, width)
    cin_net.check_params(params)
    super().__init__(params)

  def __call__(self, images: jax.Array, style_weights: jax.Array, *,
               dtype: jnp.dtype | None = None) -> jax.Array:
    """[B, H, W, 3] in [0, 1], style weights [B, N] or [N] -> [B, H, W, 3]."""
    return cin_net.apply(self.params(), images, style_weights, dtype=dtype)


class StylePredictor(_Params):
  """MobileNetV2 style predictor; ``model(style_images)`` -> [B, 100] style vectors.

  Args:
    params: predictor parameters, e.g. ``realtime_weights.load_arbitrary()[0]``;
      if None, random ones (shape checks only).
    rngs: only used when ``params`` is None.
  """

  def __init__(self, params: Mapping[str, jax.Array] | None = None, *,
               rngs: nnx.Rngs | None = None):
    if params is None:
      params = arbitrary.init_predictor_params((rngs or nnx.Rngs(0)).params())
    arbitrary.check_params(params, arbitrary.predictor_param_shapes())
    super().__init__(params)

  def __call__(self, images: jax.Array, *, dtype: jnp.dtype | None = None) -> jax.Array:
    """[B, H, W, 3] in [0, 1] (256x256 center crops match the reference) -> [B, 100]."""
    return arbitrary.predict_style(self.params(), images, dtype=dtype)


class ArbitraryTransformer(_Params):
  """Ghiasi et al. style transformer; ``model(images, style_vectors)``.

  Args:
    params: transformer parameters, e.g. ``realtime_weights.load_arbitrary()[1]``;
      if None, random ones (shape checks only).
    rngs: only used when ``params`` is None.
  """

  def __init__(self, params: Mapping[str, jax.Array] | None = None, *,
               rngs: nnx.Rngs | None = None):
    if params is None:
      params = arbitrary.init_transformer_params((rngs or nnx.Rngs(0)).params())
    arbitrary.check_params(params, arbitrary.transformer_param_shapes())
    super().__init__(params)

  def __call__(self, images: jax.Array, style_vectors: jax.Array, *,
               dtype: jnp.dtype | None = None) -> jax.Array:
    """[B, H, W, 3] in [0, 1], style vectors [B, 100] or [100] -> [B, H, W, 3]."""
    return arbitrary.transform(self.params(), images, style_vectors, dtype=dtype)
