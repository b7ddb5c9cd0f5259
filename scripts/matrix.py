"""Stylize every content image with every style: a content x style matrix.

Writes one PNG per cell as soon as its group finishes, and grid.png (rows =
contents, columns = styles, originals in the first row and column; a cell
that failed says why). A style spec joins several images with '+', each
optionally weighted with '@W'. Problems with the same content shape are
optimised together, sharded over all local devices. Exit status 1 if any cell
failed (the others are still written).
"""

import re
import time
from pathlib import Path

from absl import flags

from nst_jax import cli_support
from nst_jax import config as config_lib
from nst_jax import image_io

EXAMPLES = '''
Stylize every content with every style (python scripts/matrix.py --helpfull for every flag):

  python scripts/matrix.py --content_images=a.jpg,b.jpg --styles=starry.jpg,scream.jpg \\
      --output_dir=matrix/
  python scripts/matrix.py --content_images=a.jpg,b.jpg \\
      --styles=starry.jpg,monet1.jpg@1+monet2.jpg@1 --image_size=256 --output_dir=matrix/
  python scripts/matrix.py --content_images=a.jpg,b.jpg,c.jpg --styles=starry.jpg --init=image \\
      --num_iterations=300 --max_batch=8 --output_dir=matrix/
'''

FLAGS = flags.FLAGS
cli_support.define_style_flags()
flags.DEFINE_list('content_images', None, 'Content image files (rows).')
flags.DEFINE_list('styles', None, 'Style specs (columns): a.jpg or a.jpg@2+b.jpg@1.')
flags.DEFINE_string('output_dir', 'matrix_out', 'Folder for the cells and grid.png.')
flags.DEFINE_string('init_image', None, 'Start every cell from this image file.')
flags.DEFINE_integer('grid_cell', 192, 'Size of one grid cell, px.')
flags.DEFINE_integer('max_batch', 0, 'Most problems per compiled batch (0: what fits in '
                     'memory; on CPU about one 512x384 image of pixels).')
GROUPS = {cli_support.INPUTS: ['content_images', 'styles', 'output_dir', 'init_image',
                               'grid_cell', 'max_batch']}


def _load(paths, what):
  """Loads each file: (images, errors); a failed one is None with its error."""
  images, errors = [], []
  for k, path in enumerate(paths):
    try:
      images.append(cli_support.load_image(path, f'{what} {k + 1}'))
      errors.append(None)
    except image_io.ImageError as e:
      images.append(None)
      errors.append(str(e))
  return images, errors


def _short(error: str) -> str:
  """``content image 2 '/x/a.png' is empty (0 bytes); ...`` -> ``a.png is empty (0 bytes)``."""
  match = re.match(r".*?'([^']+)'(.*)", error)
  if not match:
    return error
  return (Path(match[1]).name + match[2]).split(';')[0].split(' (Pillow')[0]


def main(argv):
  del argv
  if not FLAGS.content_images or not FLAGS.styles:
    return cli_support.fail('--content_images and --styles are required')
  cli_support.apply_env_overrides()
  config = cli_support.config_from_flags()
  specs = [config_lib.parse_style_spec(s) for s in FLAGS.styles]
  out = Path(FLAGS.output_dir)
  image_io.check_output_path(out / 'grid.png', flag='output_dir')
  init = cli_support.load_image(FLAGS.init_image, 'init image') if FLAGS.init_image else None
  contents, content_errors = _load(FLAGS.content_images, 'content image')
  style_sets = [_load(s.images, f'style {s.label} image') for s in specs]
  ws = cli_support.load_weights(config.weights)
  cli_support.enable_compilation_cache()
  import jax
  from nst_jax import matrix
  cli_support.say(f'{len(contents)} contents x {len(specs)} styles on {len(jax.devices())} '
                  f'device(s) ({jax.devices()[0].platform})')
  for error in content_errors + [e for _, errors in style_sets for e in errors]:
    if error:  # Its row or column fails; the other cells still run.
      cli_support.say(f'failed: {error}')
  good_c = [i for i, c in enumerate(contents) if c is not None]
  good_s = [j for j, (images, _) in enumerate(style_sets)
            if all(i is not None for i in images)]
  stem = lambda p: Path(p).stem
  cells = {}

  def on_cell(cell):  # Its indices count the inputs that loaded.
    i, j = good_c[cell.content_index], good_s[cell.style_index]
    cells[i, j] = cell.image if cell.error is None else cell.error
    name = f'{stem(FLAGS.content_images[i])}__{specs[j].label}.png'
    if cell.error is not None:
      cli_support.say(f'failed: {name}: {cli_support.flag_message(cell.error)}')
    else:
      image_io.save_image(out / name, cell.image)
      cli_support.say(f'wrote {out / name}')

  def on_progress(p):
    if p.compiling:
      cli_support.say(f'problems {p.problems_done}/{p.problems_total}  compiling ...')
      return
    eta = '?' if p.eta_seconds == float('inf') else f'{p.eta_seconds:.0f}s'
    cli_support.say(f'problems {p.problems_done}/{p.problems_total}  group iter '
                    f'{p.group_iteration}/{p.group_iterations}  {p.iters_per_sec:.2f} '
                    f'problem-it/s  ETA {eta}  ({p.batch_devices} device(s) x {p.shard_batch})')

  t0 = time.perf_counter()
  matrix.stylize_many(
      [contents[i] for i in good_c],
      [config_lib.StyleSpec(tuple(style_sets[j][0]), specs[j].blend_weights, specs[j].label)
       for j in good_s], config, init_image=init, weights=ws, on_cell=on_cell,
      callback=on_progress if config.print_iter else None, max_batch=FLAGS.max_batch or None)
  _write_grid(out, contents, content_errors, specs, style_sets, cells)
  ok = sum(not isinstance(c, str) for c in cells.values())
  total = len(contents) * len(specs)
  cli_support.say(f'{ok}/{total} images in {time.perf_counter() - t0:.1f} s; grid at '
                  f'{out / "grid.png"}')
  return 0 if ok == total else 1


def _write_grid(out, contents, content_errors, specs, style_sets, cells):
  """grid.png: a failed input says why in its header and in each of its cells."""
  from nst_jax import sheet
  styles = [images[0] if all(i is not None for i in images) else
            _short(next(e for e in errors if e)) for images, errors in style_sets]
  rows = [c if c is not None else _short(e) for c, e in zip(contents, content_errors)]
  grid = [[cells.get((i, j), rows[i] if isinstance(rows[i], str) else styles[j]
                     if isinstance(styles[j], str) else None)
           for j in range(len(specs))] for i in range(len(contents))]
  result = sheet.grid(rows, styles, grid, cell_size=FLAGS.grid_cell,
                      row_labels=[Path(p).name for p in FLAGS.content_images],
                      column_labels=[s.label for s in specs])
  image_io.save_image(out / 'grid.png', result.image)


if __name__ == '__main__':
  cli_support.run(main, EXAMPLES, GROUPS)
