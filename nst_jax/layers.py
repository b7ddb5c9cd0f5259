"""VGG19 layer names, without importing JAX (flag validation stays fast)."""

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
