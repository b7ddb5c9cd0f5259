"""VGG19 layer names and what follows from them, without importing JAX.

Config validation, the run plan and the memory estimate read these, so that a
script can refuse a bad flag before JAX is imported.
"""

from collections.abc import Iterable

# (block, number of convolutions, output channels).
BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))


def _conv_specs():
  cin = 3
  for block, count, cout in BLOCKS:
    for i in range(1, count + 1):
      yield f'conv{block}_{i}', cin, cout
      cin = cout


# (conv name, in channels, out channels) in network order.
CONV_SPECS: tuple[tuple[str, int, int], ...] = tuple(_conv_specs())
CONV_NAMES: tuple[str, ...] = tuple(name for name, _, _ in CONV_SPECS)

# Every layer output in order: conv1_1, relu1_1, conv1_2, relu1_2, pool1, ...
LAYER_NAMES: tuple[str, ...] = tuple(
    name
    for block, count, _ in BLOCKS
    for name in (
        *(n for i in range(1, count + 1)
          for n in (f'conv{block}_{i}', f'relu{block}_{i}')),
        f'pool{block}',
    )
)
RELU_NAMES: tuple[str, ...] = tuple(n for n in LAYER_NAMES if n.startswith('relu'))
POOL_NAMES: tuple[str, ...] = tuple(n for n in LAYER_NAMES if n.startswith('pool'))
TAP_NAMES: tuple[str, ...] = RELU_NAMES + POOL_NAMES
POOLINGS = ('max', 'avg')


def param_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
  """Expected shape of every parameter, used to validate ported weights."""
  return {name: {'kernel': (3, 3, cin, cout), 'bias': (cout,)}
          for name, cin, cout in CONV_SPECS}


_LAYER_INDEX = {name: i for i, name in enumerate(LAYER_NAMES)}


def check_taps(taps: Iterable[str]) -> tuple[str, ...]:
  """Returns ``taps`` as a tuple, raising ValueError on an unknown name."""
  taps = tuple(taps)
  unknown = [t for t in taps if t not in _LAYER_INDEX]
  if unknown:
    raise ValueError(
        f'unknown VGG19 layer(s) {", ".join(unknown)}; valid taps are '
        f'{", ".join(TAP_NAMES)} (and conv1_1 ... conv5_4 before the ReLU)')
  if not taps:
    raise ValueError('no VGG19 layer requested')
  return taps


def layer_index(name: str) -> int:
  """Position of ``name`` in ``LAYER_NAMES``."""
  return _LAYER_INDEX[name]


def deepest(taps: Iterable[str]) -> str:
  """The tap reached last by a forward pass."""
  return max(check_taps(taps), key=_LAYER_INDEX.__getitem__)


def min_input_size(taps: Iterable[str]) -> int:
  """Smallest input side for which every requested tap has at least 1 pixel."""
  last = _LAYER_INDEX[deepest(taps)]
  return 2 ** sum(1 for n in POOL_NAMES if _LAYER_INDEX[n] <= last)


def downsampling(name: str) -> int:
  """How many input pixels one pixel of layer ``name`` steps over: 2 ** (pools up to it)."""
  index = _LAYER_INDEX[name]
  return 2 ** sum(1 for n in POOL_NAMES if _LAYER_INDEX[n] <= index)


def receptive_margin(taps: Iterable[str]) -> int:
  """Input rows beyond its own cell that one output row of the deepest tap reads.

  Output row ``p`` of a layer that steps over ``d`` input rows reads input
  rows ``p * d - above`` to ``p * d + d - 1 + below`` (3x3 convolutions with
  padding 1, 2x2 pooling with stride 2); this returns ``max(above, below)``,
  e.g. 70 and 85 for relu5_1, 85.
  """
  last = _LAYER_INDEX[deepest(taps)]
  above = below = 0
  step = 1
  for name in LAYER_NAMES[:last + 1]:
    if name.startswith('conv'):
      above, below = above + step, below + step
    elif name.startswith('pool'):
      below += step
      step *= 2
  return max(above, below)


# Band edges of nst_jax.bands fall on every layer's pixel grid: VGG19 pools four times.
BAND_MULTIPLE = 16


def band_margin(taps: Iterable[str]) -> int:
  """Rows of context a band needs above and below: ``receptive_margin`` up to a multiple of 16."""
  return -(-receptive_margin(taps) // BAND_MULTIPLE) * BAND_MULTIPLE


def band_window_rows(height: int, band_rows: int, taps: Iterable[str]) -> int:
  """Rows of the highest window VGG19 runs on with bands of ``band_rows`` (0: no bands)."""
  if not band_rows or height <= band_rows:
    return height
  return min(height, band_rows + 2 * band_margin(taps))
