"""VGG19 feature extractor: the 16 convolutions of Simonyan & Zisserman (2014).

The network is a pure function of a plain parameter pytree,
``{'conv1_1': {'kernel': [3, 3, Cin, Cout], 'bias': [Cout]}, ...}``, so it can
be called inside ``jax.jit``, ``jax.grad`` and ``jax.vmap`` with the weights
passed in as an argument rather than folded into the program as constants.
``nst_jax.module.VGG19`` is a thin Flax NNX module around the same function
for users who prefer the module style; it is kept out of this module so that
the functional path does not import Flax.

Images are NHWC and already preprocessed for the weight set (see
``nst_jax.weights.Preprocessing``): the network applies no normalisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import layers
from nst_jax import winograd as winograd_lib
from nst_jax.layers import CONV_NAMES  # noqa: F401  (re-exported)
from nst_jax.layers import CONV_SPECS
from nst_jax.layers import LAYER_NAMES
from nst_jax.layers import POOLINGS
from nst_jax.layers import RELU_NAMES  # noqa: F401  (re-exported)
from nst_jax.layers import TAP_NAMES  # noqa: F401  (re-exported)
from nst_jax.layers import check_taps
from nst_jax.layers import deepest
from nst_jax.layers import min_input_size  # noqa: F401  (re-exported)
from nst_jax.layers import param_shapes  # noqa: F401  (re-exported)

Params = Mapping[str, Mapping[str, jax.Array]]


def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """3x3 stride-1 convolution, zero padding 1, no bias: [B, H, W, Cin] -> [B, H, W, Cout]."""
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), window_strides=(1, 1),
      padding=((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def backward_kernel(kernel: jax.Array) -> jax.Array:
  """The kernel of a 3x3 convolution's input gradient: flipped, in and out swapped.

  Args:
    kernel: [3, 3, Cin, Cout] (HWIO).
  Returns:
    [3, 3, Cout, Cin].
  """
  return jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))


def with_backward_kernels(params: Params, winograd: bool = False) -> dict:
  """``params`` with each layer's ``backward_kernel`` added as ``'kernel_t'``.

  ``features`` uses a layer's ``'kernel_t'`` for the input gradient instead of
  flipping ``'kernel'`` on every call. Inside a ``lax.while_loop`` XLA does
  not hoist that flip out of the loop, and at the conv4 layers (9 MB kernels)
  it costs ~5 ms per layer and iteration on CPU, so the run loop calls this
  once per chunk, outside the loop. ``'kernel_t'`` is treated as a constant:
  gradients with respect to the parameters flow through ``'kernel'`` only.

  With ``winograd=True`` the wide layers (``winograd.wide_enough``) also get
  their Winograd-transformed kernels, ``'winograd'`` and ``'winograd_t'``,
  and ``features`` runs those layers by ``nst_jax.winograd`` in float32 where
  the feature map is large enough (``winograd.large_enough``).

  Layers that already carry these entries keep them, so a caller may attach
  them once (e.g. training, where VGG19 is frozen) and a callee that attaches
  them again costs nothing.
  """
  out = {}
  for name, p in params.items():
    if 'kernel' not in p:
      out[name] = p
      continue
    q = dict(p)
    if 'kernel_t' not in q:
      q['kernel_t'] = backward_kernel(p['kernel'])
    if (winograd and 'winograd' not in q
        and winograd_lib.wide_enough(*p['kernel'].shape[2:])):
      q['winograd'] = winograd_lib.kernel_transform(p['kernel'])
      q['winograd_t'] = winograd_lib.kernel_transform(q['kernel_t'])
    out[name] = q
  return out


# One compiled program per parameter structure and ``winograd``, shared by every
# caller (a fresh ``jax.jit`` per run would compile again each time).
with_backward_kernels_jitted = jax.jit(with_backward_kernels, static_argnames=('winograd',))


@jax.custom_vjp
def conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array,
            kernel_t: jax.Array | None = None) -> jax.Array:
  """3x3 stride-1 convolution with zero padding 1 (Caffe/PyTorch semantics).

  The gradient with respect to ``x`` is written out as an ordinary forward
  convolution with the flipped, transposed kernel. It is the same maths as
  JAX's own transpose rule, but in that form XLA on CPU hands the backward
  convolution to its fast convolution library also inside loops; JAX's
  generic form (an ``oi`` kernel layout) falls back to a ~4x slower path when
  the step runs in a ``lax.while_loop``.

  Args:
    x: [B, H, W, Cin].
    kernel: [3, 3, Cin, Cout] (HWIO).
    bias: [Cout].
    kernel_t: optional ``backward_kernel(kernel)``, precomputed (see
      ``with_backward_kernels``); it receives a zero gradient.
  Returns:
    [B, H, W, Cout] in the dtype of ``x``.
  """
  del kernel_t  # Only the backward pass uses it.
  return conv(x, kernel) + bias.astype(x.dtype)


def _conv3x3_fwd(x, kernel, bias, kernel_t=None):
  return conv3x3(x, kernel, bias), (x, kernel, bias, kernel_t)


def _conv3x3_bwd(res, g):
  x, kernel, bias, kernel_t = res
  flipped = backward_kernel(kernel) if kernel_t is None else kernel_t
  dx = conv(g, flipped.astype(g.dtype))
  # Kernel and bias gradients (dead code, removed by XLA, when only the
  # image is differentiated, as in style transfer).
  _, vjp_kernel = jax.vjp(lambda k: conv(x, k), kernel.astype(x.dtype))
  (dk,) = vjp_kernel(g)
  db = jnp.sum(g, axis=(0, 1, 2))
  dk_t = None if kernel_t is None else jnp.zeros_like(kernel_t)
  return dx.astype(x.dtype), dk.astype(kernel.dtype), db.astype(bias.dtype), dk_t


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def pool2x2(x: jax.Array, pooling: str = 'max') -> jax.Array:
  """2x2 stride-2 pooling; odd trailing rows/columns are dropped (floor mode).

  Written as a reshape and a reduction rather than ``reduce_window``: XLA on
  CPU runs the backward of a max ``reduce_window`` (``select_and_scatter``) on
  one thread, while the reshape form's backward is an ordinary elementwise
  program. Max pooling's gradient goes to the first maximum of each window in
  row-major order, as PyTorch's and Caffe's do (``_max_pool``).

  Args:
    x: [B, H, W, C].
    pooling: 'max' or 'avg'.
  Returns:
    [B, H // 2, W // 2, C].
  """
  b, h, w, c = x.shape
  h2, w2 = h // 2, w // 2
  x = x[:, :2 * h2, :2 * w2, :]
  if pooling == 'max':
    return _max_pool(x)
  if pooling == 'avg':
    return x.reshape(b, h2, 2, w2, 2, c).mean(axis=(2, 4))
  raise ValueError(f'unknown pooling {pooling!r}; use one of {POOLINGS}')


def _windows(x: jax.Array) -> jax.Array:
  """[B, 2 H, 2 W, C] -> [B, H, 2, W, 2, C]: the 2x2 windows."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def _max_pool(x: jax.Array) -> jax.Array:
  return _windows(x).max(axis=(2, 4))


def _max_pool_fwd(x):
  y = _max_pool(x)
  return y, (x, y)


def _max_pool_bwd(res, g):
  # JAX's own rule for a max reduction splits the gradient over every tied
  # maximum, which costs a count over each window and a division; routing it
  # to the first maximum is one comparison chain, and it is PyTorch's rule.
  x, y = res
  win = _windows(x)
  y, g = y[:, :, None, :, None, :], g[:, :, None, :, None, :]
  hit = win == y
  first = []
  taken = jnp.zeros_like(hit[:, :, 0:1, :, 0:1, :])
  for i in range(2):
    for j in range(2):
      h = hit[:, :, i:i + 1, :, j:j + 1, :] & ~taken
      first.append(h)
      taken = taken | h
  mask = jnp.concatenate([jnp.concatenate(first[0:2], axis=4),
                          jnp.concatenate(first[2:4], axis=4)], axis=2)
  return (jnp.where(mask, g, jnp.zeros((), g.dtype)).reshape(x.shape),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def features(
    params: Params,
    images: jax.Array,
    taps: Sequence[str],
    *,
    pooling: str = 'max',
    compute_dtype: jnp.dtype | None = None,
    remat: bool = False,
) -> dict[str, jax.Array]:
  """Runs VGG19 up to the deepest requested tap.

  Args:
    params: ``{'conv1_1': {'kernel': [3, 3, Cin, Cout], 'bias': [Cout]}, ...}``;
      only the layers up to the deepest tap are read. A layer may also hold
      ``'kernel_t'``, ``'winograd'`` and ``'winograd_t'`` (see
      ``with_backward_kernels``).
    images: [B, H, W, 3] preprocessed for the weight set.
    taps: layer names, e.g. ``('relu1_1', 'relu4_2')``.
    pooling: 'max' (the original network) or 'avg' (Gatys et al. suggest it
      gives slightly smoother results).
    compute_dtype: dtype of the convolutions, e.g. ``jnp.bfloat16`` for mixed
      precision; returned features are float32 either way.
    remat: recompute each block's activations in the backward pass instead of
      keeping them (``jax.checkpoint``), trading compute for memory.
  Returns:
    A dict with exactly the requested taps, each [B, h, w, C] float32.
  """
  taps = check_taps(taps)
  if pooling not in POOLINGS:
    raise ValueError(f'unknown pooling {pooling!r}; use one of {POOLINGS}')
  wanted = set(taps)
  last = layers.layer_index(deepest(taps))
  x = images if compute_dtype is None else images.astype(compute_dtype)
  out: dict[str, jax.Array] = {}

  def run_block(x, block_params, names):
    block_out = {}
    for name in names:
      kind = name[:4]
      if kind == 'conv':
        p = block_params[name]
        if ('winograd' in p and x.dtype == jnp.float32
            and winograd_lib.large_enough(x.shape[1], x.shape[2])):
          x = winograd_lib.conv3x3(x, p['kernel'], p['bias'], p['winograd'], p['winograd_t'])
        else:
          x = conv3x3(x, p['kernel'], p['bias'], p.get('kernel_t'))
      elif kind == 'relu':
        x = jax.nn.relu(x)
      else:
        x = pool2x2(x, pooling)
      if name in wanted:
        block_out[name] = x.astype(jnp.float32)
    return x, block_out

  # Group the layer sequence into blocks so that remat can wrap each block.
  for block, _, _ in layers.BLOCKS:
    names = [n for n in LAYER_NAMES[:last + 1] if _block_of(n) == block]
    if not names:
      break
    block_params = {n: params[n] for n in names if n.startswith('conv')}
    fn = run_block
    if remat:
      fn = jax.checkpoint(run_block, static_argnums=(2,))
    x, block_out = fn(x, block_params, tuple(names))
    out.update(block_out)
  return {t: out[t] for t in taps}


def _block_of(name: str) -> int:
  """conv3_2 -> 3, relu5_1 -> 5, pool2 -> 2."""
  return int(name[4])


def init_params(key: jax.Array, dtype=jnp.float32) -> dict[str, dict[str, jax.Array]]:
  """Random He-normal parameters (for tests and shape checks, not for style)."""
  params = {}
  for (name, cin, cout), k in zip(CONV_SPECS, jax.random.split(key, len(CONV_SPECS))):
    kk, kb = jax.random.split(k)
    std = np.sqrt(2.0 / (9 * cin))
    params[name] = {
        'kernel': (jax.random.normal(kk, (3, 3, cin, cout)) * std).astype(dtype),
        'bias': (jax.random.normal(kb, (cout,)) * 0.01).astype(dtype),
    }
  return params

