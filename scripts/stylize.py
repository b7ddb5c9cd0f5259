"""Neural style transfer from the command line (flags as jcjohnson/neural-style).

  python scripts/stylize.py --content_image=photo.jpg --style_image=painting.jpg \
      --output_image=out.png
  python scripts/stylize.py --demo            # bundled sample images, ~2 minutes on 2 cores

Every flag is checked before any computation; errors are one line and exit 1
without writing any output. Ctrl-C (or SIGTERM) saves the current image and a
checkpoint, then exits 130; continue with --resume=CHECKPOINT.
"""

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from absl import app
from absl import flags

from nst_jax import cli_support

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


def main(argv):
  if len(argv) > 1:
    return cli_support.fail(f'unexpected arguments {argv[1:]}; all options are --flags')
  cli_support.enable_compilation_cache()
  from nst_jax import image_io
  from nst_jax import stylize as st
  from nst_jax import weights as weights_lib

  stop = threading.Event()
  try:
    if FLAGS.resume:
      config, resume = st.resume_state(FLAGS.resume)
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
        if not FLAGS.content_image:
          return cli_support.fail('--content_image is required (or use --demo)')
        if not FLAGS.style_image:
          return cli_support.fail('--style_image is required (one or more files, comma-separated)')
        content, styles = FLAGS.content_image, FLAGS.style_image
        config = cli_support.config_from_flags()
        output = FLAGS.output_image
      checkpoint = FLAGS.checkpoint or f'{output}.ckpt.npz'
    image_io.check_output_path(output, flag='output_image')
    image_io.check_output_path(checkpoint + '.png', flag='checkpoint')
    # Load every input before the weights or any compilation.
    content_rgb = content if not isinstance(content, str) else image_io.load_image(
        content, what='content image')
    style_rgbs = [s if not isinstance(s, str) else image_io.load_image(s, what=f'style image {i + 1}')
                  for i, s in enumerate(styles)]
    if len(style_rgbs) != len(config.style_blend_weights or style_rgbs):
      return cli_support.fail(
          f'--style_blend_weights has {len(config.style_blend_weights)} values for '
          f'{len(style_rgbs)} style images; give one weight per style image')
    if config.init_image:
      image_io.load_image(config.init_image, what='init image')
    for size in config.sizes:
      st.prepare_images(content_rgb, style_rgbs, size, config)
    cli_support.check_memory(content_rgb.shape[:2], config)
    ws = weights_lib.load(config.weights)
  except cli_support.USER_ERRORS as e:
    return cli_support.fail(str(e))

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
    image_io.save_image(f'{stem}{tag}_{iteration}{ext}', rgb)

  print(f'nst_jax: {Path(str(content)).name if isinstance(content, str) else "demo content"} '
        f'in the style of {len(styles)} image(s); sizes {config.sizes}, '
        f'{config.optimizer}, weights {ws.name}', flush=True)
  t0 = time.perf_counter()
  try:
    result = st.stylize(content_rgb, style_rgbs, config, weights=ws,
                        callback=_print_progress, save_callback=save_intermediate,
                        stop_event=stop, checkpoint_path=checkpoint, resume=resume,
                        checkpoint_extra={'content': content if isinstance(content, str)
                                          else '__demo__',
                                          'styles': [s if isinstance(s, str) else None
                                                     for s in styles],
                                          'output': output})
  except st.NonFiniteError as e:
    image_io.save_image(output, e.image)
    return cli_support.fail(f'{e} Saved the last finite image to {output}.')
  except st.Interrupted as e:
    image_io.save_image(output, e.image)
    print(f'nst_jax: {e}; saved {output} and checkpoint {checkpoint}; continue with '
          f'python scripts/stylize.py --resume={checkpoint}', file=sys.stderr)
    return 130
  except cli_support.USER_ERRORS as e:
    return cli_support.fail(str(e))
  image_io.save_image(output, result.image)
  if os.path.exists(checkpoint) and FLAGS.resume:
    os.unlink(checkpoint)
  print(f'nst_jax: wrote {output} ({result.iterations} iterations, '
        f'{time.perf_counter() - t0:.1f} s)', flush=True)
  return 0


if __name__ == '__main__':
  logging.getLogger('jax').setLevel(logging.WARNING)
  app.run(main)
