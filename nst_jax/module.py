"""VGG19 as a Flax NNX module, a thin wrapper around ``nst_jax.vgg.features``.

Kept apart from ``nst_jax.vgg`` because importing Flax costs about 0.4 s,
which the command-line tools would otherwise pay before every run.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from nst_jax.layers import CONV_NAMES
from nst_jax.layers import POOLINGS
from nst_jax.vgg import Params
from nst_jax.vgg import features
from nst_jax.vgg import init_params


class Conv3x3(nnx.Module):
  """One VGG convolution: an HWIO kernel and a bias."""

  def __init__(self, kernel: jax.Array, bias: jax.Array):
    self.kernel = nnx.Param(jnp.asarray(kernel))
    self.bias = nnx.Param(jnp.asarray(bias))


class VGG19(nnx.Module):
  """VGG19 as a Flax NNX module; ``model(images, taps)`` returns a tap dict.

  The module only stores the parameters; the computation is ``features``. Use
  ``nnx.split(model)`` to get ``(graphdef, state)`` when a pure pytree is
  wanted, or simply ``model.params()``.
  """

  def __init__(self, params: Params | None = None, *, pooling: str = 'max',
               rngs: nnx.Rngs | None = None):
    if pooling not in POOLINGS:
      raise ValueError(f'unknown pooling {pooling!r}; use one of {POOLINGS}')
    if params is None:
      key = (rngs or nnx.Rngs(0)).params()
      params = init_params(key)
    self.pooling = pooling
    for name in CONV_NAMES:
      setattr(self, name, Conv3x3(params[name]['kernel'], params[name]['bias']))

  def params(self) -> dict[str, dict[str, jax.Array]]:
    """The parameters as a plain nested dict of arrays."""
    return {name: {'kernel': getattr(self, name).kernel[...],
                   'bias': getattr(self, name).bias[...]}
            for name in CONV_NAMES}

  def __call__(self, images: jax.Array, taps: Sequence[str] = ('relu4_2',),
               **kwargs) -> dict[str, jax.Array]:
    return features(self.params(), images, taps, pooling=self.pooling, **kwargs)
