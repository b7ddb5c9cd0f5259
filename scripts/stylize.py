"""Neural style transfer from the command line (flags as jcjohnson/neural-style).

  python scripts/stylize.py --content_image=photo.jpg --style_image=painting.jpg \
      --output_image=out.png
  python scripts/stylize.py --demo            # bundled sample images, ~2 minutes on 2 cores

Every flag and input file is checked before the weights load or anything
compiles; an error is one line (`error: ...`, naming the flag or file and what
to do), exit status 1, and no file is created or changed. A missing output
folder is created. Ctrl-C (or SIGTERM) finishes the current chunk, saves the
image and a checkpoint, and exits 130; continue with --resume=CHECKPOINT, which
gives the same pixels as an uninterrupted run. A second Ctrl-C stops at once
(exit 130, nothing half-written). If the output cannot be written at the end,
the image is saved in the rescued/ folder of the cache ($NST_JAX_CACHE_DIR,
default ~/.cache/nst_jax) instead.
$NST_JAX_MAX_IMAGE_PIXELS overrides Pillow's decompression-bomb limit.
"""

import concurrent.futures
import logging
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from absl import app
from absl import flags

from nst_jax import cli_support
from nst_jax import config as config_lib
from nst_jax import image_io

FLAGS = flags.FLAGS
cli_support.define_style_flags()
flags.DEFINE_string('content_image', None, 'Content image file.')
flags.DEFINE_list('style_image', None, 'Style image file(s), comma-separated.')
flags.DEFINE_string('output_image', 'out.png', 'Where to write the result (folder is created).')
flags.DEFINE_string('resume', None, 'Continue an interrupted run from this checkpoint.')
flags.DEFINE_string('checkpoint', None,
                    'Checkpoint written on interruption (default: OUTPUT.ckpt.npz).')
flags.DEFINE_bool('demo', False, 'Stylize scikit-image sample images (no other input needed); '
                  'uses --image_size=256 --num_iterations=300 unless given.')

# Flags that --resume ignores (the checkpoint holds the run's settings).
_RUN_FLAGS = ('content_image', 'style_image', 'output_image', 'demo',
              *config_lib.StyleConfig.__dataclass_fields__)


def _format_eta(seconds: float) -> str:
  if seconds == float('inf'):
    return '?'
  m, s = divmod(int(seconds + 0.5), 60)
  return f'{m}m{s:02d}s'


def _print_progress(p) -> None:
  t = p.terms
  scale = f'scale {p.scale_index + 1}/{p.num_scales} ' if p.num_scales > 1 else ''
  print(f'{scale}iter {p.iteration:5d}/{p.total}  total {t["content"] + t["style"] + t["tv"]:.4g}'
        f'  content {t["content"]:.4g}  style {t["style"]:.4g}  tv {t["tv"]:.4g}'
        f'  {p.iters_per_sec:.2f} it/s  ETA {_format_eta(p.eta_seconds)}', flush=True)


def _inputs():
  """Flags (or the checkpoint) -> everything the run needs, all of it checked.

  Returns (config, content, styles, content_rgb, style_rgbs, output,
  checkpoint, resume). Raises one of ``cli_support.USER_ERRORS``.
  """
  cli_support.apply_env_overrides()
  if FLAGS.resume:
    ignored = [f'--{name}' for name in _RUN_FLAGS if FLAGS[name].present]
    if ignored:
      warnings.warn(f'--resume continues with the settings saved in the checkpoint; '
                    f'ignoring {", ".join(ignored)}')
    config, resume = cli_support.resume_state(FLAGS.resume)
    meta = resume['meta']
    content, styles, output = meta['content'], meta['styles'], meta['output']
    if content == '__demo__':
      content, styles = cli_support.demo_images()
    checkpoint = FLAGS.resume
  else:
    resume = None
    if FLAGS.demo:
      content, styles = cli_support.demo_images()
      overrides = {}
      if not FLAGS['image_size'].present:
        overrides['image_size'] = 256
      if not FLAGS['num_iterations'].present:
        overrides['num_iterations'] = (300,)
      config = cli_support.config_from_flags(**overrides)
      output = FLAGS.output_image if FLAGS['output_image'].present else 'outputs/demo.png'
    else:
      config = cli_support.config_from_flags()
      if not FLAGS.content_image:
        raise config_lib.ConfigError('--content_image is required (or use --demo)')
      if not FLAGS.style_image:
        raise config_lib.ConfigError(
            '--style_image is required (one or more files, comma-separated)')
      content, styles = FLAGS.content_image, FLAGS.style_image
      if '' in styles:
        raise config_lib.ConfigError(
            f'--style_image has an empty entry in {",".join(styles)!r}; remove the stray comma')
      output = FLAGS.output_image
    checkpoint = FLAGS.checkpoint or f'{output}.ckpt.npz'
  # Outputs first: a typo there should not cost the time to load anything.
  image_io.check_output_path(output, flag='output_image')
  cli_support.check_writable_file(checkpoint, flag='checkpoint')
  cli_support.check_weights_name(config.weights)
  cli_support.check_optimizer(config)
  content_rgb, style_rgbs = cli_support.load_inputs(content, styles, config)
  return config, content, styles, content_rgb, style_rgbs, output, checkpoint, resume


def _run() -> int:
  config, content, styles, content_rgb, style_rgbs, output, checkpoint, resume = _inputs()
  # Read (and checksum) the weights while JAX is imported: both take a few
  # tenths of a second, and file reads and hashing release the GIL.
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = pool.submit(cli_support.load_weights, config.weights)
    cli_support.enable_compilation_cache()
    from nst_jax import transfer as st
    ws = pending.result()

  stop = threading.Event()

  def on_signal(signum, frame):
    del frame
    if stop.is_set():  # Second Ctrl-C: stop now.
      raise KeyboardInterrupt
    print(f'\nreceived {signal.Signals(signum).name}: finishing the current chunk, '
          'then saving the image and a checkpoint ...', file=sys.stderr, flush=True)
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

  print(f'nst_jax: {Path(str(content)).name if isinstance(content, str) else "demo content"} '
        f'in the style of {len(styles)} image(s); sizes {config.sizes}, '
        f'{config.optimizer}, weights {ws.name}', flush=True)
  t0 = time.perf_counter()
  try:
    try:
      result = st.stylize(content_rgb, style_rgbs, config, weights=ws,
                          callback=_print_progress, save_callback=save_intermediate,
                          stop_event=stop, checkpoint_path=checkpoint, resume=resume,
                          checkpoint_extra={'content': content if isinstance(content, str)
                                            else '__demo__',
                                            'styles': [s if isinstance(s, str) else None
                                                       for s in styles],
                                            'output': output})
    finally:
      # The run is over: a late Ctrl-C must not cut the saving short (or turn
      # exit status 130 into death by SIGINT during shutdown).
      signal.signal(signal.SIGINT, signal.SIG_IGN)
      signal.signal(signal.SIGTERM, signal.SIG_IGN)
  except st.NonFiniteError as e:
    try:
      saved = f'Saved the last finite image to {cli_support.save_or_rescue(output, e.image)}.'
    except image_io.ImageError as save_error:
      saved = f'The last finite image could not be saved: {save_error}'
    return cli_support.fail(f'{e} {saved}')
  except st.Interrupted as e:
    try:
      saved = f'saved {cli_support.save_or_rescue(output, e.image)}'
    except image_io.ImageError as save_error:  # The checkpoint still holds the run.
      cli_support.fail(str(save_error))
      saved = 'could not save the image'
    print(f'nst_jax: {e}; {saved} and checkpoint {checkpoint}; continue with '
          f'python scripts/stylize.py --resume={checkpoint}', file=sys.stderr, flush=True)
    return 130
  except OSError as e:  # E.g. the checkpoint could not be written.
    where = f' {e.filename!r}' if e.filename else ''
    return cli_support.fail(f'could not write{where} ({e.strerror or e}); check the disk '
                            'and the --output_image / --checkpoint folders')
  cli_support.save_or_rescue(output, result.image)
  if FLAGS.resume and os.path.exists(checkpoint):
    os.unlink(checkpoint)
  print(f'nst_jax: wrote {output} ({result.iterations} iterations, '
        f'{time.perf_counter() - t0:.1f} s)', flush=True)
  return 0


def main(argv):
  cli_support.show_warnings_on_one_line()
  if len(argv) > 1:
    return cli_support.fail(f'unexpected arguments {argv[1:]}; all options are --flags')
  try:
    return _run()
  except cli_support.USER_ERRORS as e:
    return cli_support.fail(str(e))
  except KeyboardInterrupt:
    # Before the run, or a second Ctrl-C during it. Every file is written
    # atomically, so nothing half-written is left behind.
    print('\nnst_jax: interrupted; the output image was not written', file=sys.stderr,
          flush=True)
    return 130


if __name__ == '__main__':
  logging.getLogger('jax').setLevel(logging.WARNING)
  app.run(main)
