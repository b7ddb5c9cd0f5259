"""DeepDream ("Inceptionism") with the VGG19 of style transfer.

  python scripts/dream.py --input_image=photo.jpg --output_image=dream.png
  python scripts/dream.py --input_image=photo.jpg --channels=relu4_2:13 --output_image=dog.png
  python scripts/dream.py --input_image=photo.jpg --guide_image=flowers.jpg --output_image=g.png

Amplifies what VGG19 sees in the image: gradient ascent on the mean squared
activation of --layers (or of single --channels), or, with --guide_image, on
the match between the image's features and the guide's. Octaves run coarse
to fine; the result has the input's size. Every flag and file is checked
before the weights load; an error is one `error: ...` line and exit status 1,
and no file is written. Images are written atomically.
"""

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging as absl_logging

from nst_jax import cli_support
from nst_jax import config as config_lib
from nst_jax import image_io

FLAGS = flags.FLAGS
# Inputs and outputs.
flags.DEFINE_string('input_image', None, 'The image to dream on.')
flags.DEFINE_string('output_image', 'dream.png', 'Where to write the result (folder is created).')
flags.DEFINE_string('guide_image', None, 'Optional guide: pull the image\'s features towards '
                    'this image\'s (e.g. flowers, eyes).')
# What to amplify.
flags.DEFINE_list('layers', ['relu4_2'], 'VGG19 layers whose activations are amplified '
                  '(shallow: strokes and textures; deep: eyes, fur, objects).')
flags.DEFINE_list('channels', [], 'Single channels LAYER:INDEX, e.g. relu4_2:13 (without '
                  '--layers, only these).')
# The ascent.
flags.DEFINE_integer('octaves', 4, 'Number of scales, coarse to fine.')
flags.DEFINE_float('octave_scale', 1.4, 'Size ratio between octaves.')
flags.DEFINE_integer('steps_per_octave', 10, 'Gradient steps at each octave.')
flags.DEFINE_float('step_size', 1.5, 'Step in 0-255 pixel units (the gradient is normalised).')
flags.DEFINE_integer('jitter', 32, 'Largest random shift before each step, px.')
flags.DEFINE_integer('seed', 0, 'Seed of the jitter.')
flags.DEFINE_integer('image_size', None, 'Dream at this longest side (the output keeps the '
                     'input\'s size); default the input\'s size.')
# Progress and weights.
flags.DEFINE_integer('print_iter', 5, 'Progress line every N steps (0: only per octave).')
flags.DEFINE_integer('save_iter', 0, 'Save OUTPUT_o<octave>_<step>.<ext> every N steps '
                     '(0: off).')
flags.DEFINE_string('weights', 'vgg19-caffe', 'Weight set name or .safetensors path.')

HELP_GROUPS = (
    ('Inputs and outputs', ('input_image', 'output_image', 'guide_image')),
    ('What to amplify', ('layers', 'channels')),
    ('The ascent', ('octaves', 'octave_scale', 'steps_per_octave', 'step_size', 'jitter',
                    'seed', 'image_size')),
    ('Progress and weights', ('print_iter', 'save_iter', 'weights')),
)


say = cli_support.say


def _inputs():
  """Flags -> (spec, config, image, guide, output), everything checked. Raises USER_ERRORS."""
  from nst_jax import dream as dream_lib  # Imports JAX: after the cheap flag checks.
  if not FLAGS.input_image:
    raise config_lib.ConfigError('--input_image is required (the image to dream on)')
  for name in ('print_iter', 'save_iter'):
    if FLAGS[name].value < 0:
      raise config_lib.ConfigError(f'--{name} must be >= 0 (0 turns it off)')
  channels = dream_lib.parse_channels(FLAGS.channels) if FLAGS.channels else ()
  layers = tuple(FLAGS.layers) if (FLAGS['layers'].present or not channels) else ()
  if '' in layers:
    raise config_lib.ConfigError(f'--layers has an empty entry in {",".join(layers)!r}')
  spec = dream_lib.DreamSpec(layers=layers, channels=channels)
  config = dream_lib.DreamConfig(
      octaves=FLAGS.octaves, octave_scale=FLAGS.octave_scale,
      steps_per_octave=FLAGS.steps_per_octave, step_size=FLAGS.step_size, jitter=FLAGS.jitter,
      seed=FLAGS.seed, image_size=FLAGS.image_size)
  if FLAGS.guide_image and not spec.layers:
    raise config_lib.ConfigError('--guide_image needs --layers (the guide is matched on whole '
                                 'layers, not single --channels)')
  image_io.check_output_path(FLAGS.output_image, flag='output_image')
  cli_support.check_weights_name(FLAGS.weights)
  image = cli_support.load_image(FLAGS.input_image, 'input image')
  guide = cli_support.load_image(FLAGS.guide_image, 'guide image') if FLAGS.guide_image else None
  dream_lib.check_sizes(image.shape[:2], spec, config)
  return spec, config, image, guide


def _run() -> int:
  spec, config, image, guide = _inputs()
  ws = cli_support.load_weights(FLAGS.weights)
  cli_support.enable_compilation_cache()
  from nst_jax import dream as dream_lib
  output = FLAGS.output_image
  stem, ext = os.path.splitext(output)
  every = [n for n in (FLAGS.print_iter, FLAGS.save_iter) if n]
  progress_every = min(every) if every else 0

  def on_progress(p):
    if not FLAGS.print_iter or p.step % FLAGS.print_iter == 0 or p.step == p.steps:
      say(f'octave {p.octave + 1}/{p.num_octaves} step {p.step}/{p.steps} '
          f'objective {p.objective:.4g}')
    if FLAGS.save_iter and p.step % FLAGS.save_iter == 0:
      path = f'{stem}_o{p.octave + 1}_{p.step}{ext}'
      try:
        image_io.save_image(path, p.image())
      except image_io.ImageError as e:  # The run is worth more than a snapshot.
        say(f'warning: {e}; the run continues')

  what = ', '.join(spec.layers + tuple(f'{l}:{c}' for l, c in spec.channels))
  say(f'dreaming on {os.path.basename(FLAGS.input_image)} ({image.shape[1]}x{image.shape[0]}) '
      f'at {what}{" guided by " + os.path.basename(FLAGS.guide_image) if guide is not None else ""}'
      f'; {config.octaves} octaves x {config.steps_per_octave} steps, weights {ws.name}')
  t0 = time.perf_counter()
  result = dream_lib.dream(ws, image, spec, config, guide=guide, callback=on_progress,
                           progress_every=progress_every)
  cli_support.save_or_rescue(output, result.image)
  rise = ' -> '.join(f'{v:.4g}' for v in [result.objective_start, *result.objective_per_octave])
  say(f'objective at full size, input then after each octave: {rise}')
  say(f'wrote {output} ({time.perf_counter() - t0:.1f} s)')
  return 0


def main(argv):
  if not FLAGS['verbosity'].present:  # absl log lines are debug detail.
    absl_logging.set_verbosity(absl_logging.ERROR)
  cli_support.show_warnings_on_one_line()
  if len(argv) > 1:
    return cli_support.fail(f'unexpected arguments {argv[1:]}; all options are --flags')
  try:
    return _run()
  except cli_support.USER_ERRORS as e:
    return cli_support.fail(str(e))
  except KeyboardInterrupt:
    print('\nnst_jax: interrupted; the output image was not written', file=sys.stderr,
          flush=True)
    return 130


if __name__ == '__main__':
  app.run(main, flags_parser=cli_support.flags_parser(lambda: cli_support.grouped_help(
      __doc__, HELP_GROUPS, 'Also --helpfull for every absl flag.')))
