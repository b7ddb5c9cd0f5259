"""The one convolution of the real-time networks: reflect pad, then VALID conv.

Every convolution of the conditional-instance-norm network (``cin_net``) and
of the arbitrary-style transformer (``arbitrary``) goes through ``conv``, so
that a faster formulation for XLA on CPU (the networks have 3-32 channels, where
XLA's generic convolution is slow; see ``../shared/notes/xla-cpu-small-convs.md``)
can be swapped in at one place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  """Reflect-pads the two spatial axes of ``x`` [B, H, W, C] by ``pad`` each side."""
  if pad == 0:
    return x
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')


def conv(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """Reflect pad of k // 2, then a VALID convolution without bias.

  This is the convolution of Johnson et al. (2016) and Dumoulin et al.
  (2017): with an input side that is a multiple of ``stride``, the output side
  is the input side divided by ``stride``.

  Args:
    x: [B, H, W, Cin], with H and W > k // 2 (reflection needs that much image).
    kernel: [k, k, Cin, Cout] (HWIO), k odd; cast to the dtype of ``x``.
    stride: 1 or 2, the same along both axes.
  Returns:
    [B, (H - 1) // stride + 1, (W - 1) // stride + 1, Cout] in the dtype of ``x``.
  """
  k = kernel.shape[0]
  return jax.lax.conv_general_dilated(
      reflect_pad(x, k // 2), kernel.astype(x.dtype), window_strides=(stride, stride),
      padding='VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
