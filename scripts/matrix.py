"""Stylize every content image with every style: a content x style matrix.

  python scripts/matrix.py --content_images=a.jpg,b.jpg \
      --styles=starry.jpg,monet1.jpg@1+monet2.jpg@1+monet3.jpg@1 --output_dir=matrix/

Writes one PNG per cell as soon as its group finishes, and grid.png (rows =
contents, columns = styles, originals in the first row and column). A style
spec joins several images with '+', each optionally weighted with '@W'.
Problems with the same content shape are optimised together, sharded over
all local devices. All style flags of stylize.py apply.
"""

import logging
import sys
import time
from pathlib import Path

from absl import app
from absl import flags

from nst_jax import cli_support

FLAGS = flags.FLAGS
cli_support.define_style_flags()
flags.DEFINE_list('content_images', None, 'Content image files (rows).')
flags.DEFINE_list('styles', None, 'Style specs (columns): a.jpg or a.jpg@2+b.jpg@1.')
flags.DEFINE_string('output_dir', 'matrix_out', 'Folder for the cells and grid.png.')
flags.DEFINE_integer('grid_cell', 192, 'Size of one grid cell, px.')
flags.DEFINE_integer('max_batch', 0, 'Most problems per compiled batch (0: what fits in '
                     'memory; on CPU about one 512x384 image of pixels).')


def main(argv):
  if len(argv) > 1:
    return cli_support.fail(f'unexpected arguments {argv[1:]}; all options are --flags')
  if not FLAGS.content_images or not FLAGS.styles:
    return cli_support.fail('--content_images and --styles are required')
  cli_support.enable_compilation_cache()
  import jax
  from nst_jax import image_io
  from nst_jax import matrix
  from nst_jax import weights as weights_lib
  try:
    config = cli_support.config_from_flags()
    specs = [matrix.parse_style_spec(s) for s in FLAGS.styles]
    out = Path(FLAGS.output_dir)
    image_io.check_output_path(out / 'grid.png', flag='output_dir')
    ws = weights_lib.load(config.weights)
  except cli_support.USER_ERRORS as e:
    return cli_support.fail(str(e))
  print(f'nst_jax matrix: {len(FLAGS.content_images)} contents x {len(specs)} styles on '
        f'{len(jax.devices())} device(s) ({jax.devices()[0].platform})', flush=True)
  stem = lambda p: Path(p).stem
  failures = []

  def on_cell(cell):
    name = f'{stem(FLAGS.content_images[cell.content_index])}__{specs[cell.style_index].label}.png'
    if cell.image is None:
      failures.append(cell.error)
      print(f'  failed: {name}: {cell.error}', file=sys.stderr, flush=True)
      return
    image_io.save_image(out / name, cell.image)
    print(f'  wrote {out / name}', flush=True)

  def on_progress(p):
    eta = '?' if p.eta_seconds == float('inf') else f'{p.eta_seconds:.0f}s'
    print(f'problems {p.problems_done}/{p.problems_total}  group iter {p.group_iteration}/'
          f'{p.group_iterations}  {p.iters_per_sec:.2f} problem-it/s  ETA {eta}  '
          f'({p.batch_devices} device(s) x {p.shard_batch})', flush=True)

  t0 = time.perf_counter()
  cells = matrix.stylize_many(FLAGS.content_images, specs, config, weights=ws, on_cell=on_cell,
                              callback=on_progress if config.print_iter else None,
                              max_batch=FLAGS.max_batch or None)
  contents = [_try_load(image_io, p) for p in FLAGS.content_images]
  styles = [_try_load(image_io, s.images[0]) for s in specs]
  grid = matrix.grid_image(contents, styles, cells, cell_size=FLAGS.grid_cell,
                           content_labels=[stem(p) for p in FLAGS.content_images],
                           style_labels=[s.label for s in specs])
  image_io.save_image(out / 'grid.png', grid)
  ok = sum(c.image is not None for c in cells)
  print(f'nst_jax matrix: {ok}/{len(cells)} images in {time.perf_counter() - t0:.1f} s; '
        f'grid at {out / "grid.png"}', flush=True)
  return 1 if failures else 0


def _try_load(image_io, path):
  try:
    return image_io.load_image(path)
  except image_io.ImageError:
    return None


if __name__ == '__main__':
  logging.getLogger('jax').setLevel(logging.WARNING)
  app.run(main)
