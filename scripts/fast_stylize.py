"""Real-time style transfer: one pass of a feed-forward network per image or frame.

  python scripts/fast_stylize.py --content_image=photo.jpg --style=19
  python scripts/fast_stylize.py --content_image=photo.jpg --style_image=painting.jpg
  python scripts/fast_stylize.py --content_image=photo.jpg --sheet

The first paints the photo in built-in style 19 of the 26-style network of
Dumoulin et al. (2017); the second in the style of any painting, with the
arbitrary-style network of Ghiasi et al. (2017); the third shows all 26
built-in styles on the photo, to choose one. Results go to outputs/ unless
--output_image, --output_dir or --output_video says otherwise.

Every flag and input file is checked before anything is computed: an error is
one line (`error: ...`, naming the flag or file and what to do), exit status 1,
and no file is written. Files are written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from absl import app
from absl import flags
from absl import logging as absl_logging

from nst_jax import cli_support
from nst_jax import config as config_lib
from nst_jax import image_io

FLAGS = flags.FLAGS

# Inputs and outputs.
flags.DEFINE_list('content_image', None, 'Photo(s) to stylize, comma-separated.')
flags.DEFINE_string('input_dir', None, 'Stylize every image in this folder (with --output_dir).')
flags.DEFINE_string('output_image', None, 'Result for one --content_image or --sheet '
                    '(default outputs/PHOTO_STYLE.png).')
flags.DEFINE_string('output_dir', None, 'Folder for the results of several images, named '
                    'PHOTO_STYLE.png (default outputs/).')
flags.DEFINE_string('video', None, 'Video file to stylize, frame by frame.')
flags.DEFINE_string('output_video', None, 'Result of --video (.mp4, .mov, .mkv, .avi; '
                    'default outputs/VIDEO_STYLE.mp4). The audio is not copied.')
# The style.
flags.DEFINE_string('style', None, 'Built-in style 0-25 (e.g. 19), or a blend such as '
                    '3:0.5,12:0.5 (weights normalised to sum 1).')
flags.DEFINE_list('style_image', None, 'Painting(s) to take the style from, comma-separated; '
                  'several average their style vectors.')
flags.DEFINE_list('style_blend_weights', None, 'One weight per --style_image (normalised; '
                  'default equal).')
flags.DEFINE_float('strength', 1.0, 'How much style, 0 to 1. With --style_image: the '
                   'painting\'s style vector mixed with the photo\'s own; with --style: the '
                   'result cross-faded with the photo.')
flags.DEFINE_bool('preserve_colors', False, 'Keep the photo\'s colours (only the '
                  'luminance of the result is kept).')
flags.DEFINE_string('net', None, 'A multi-style (CIN) network trained with '
                    'scripts/train_fast.py, .safetensors, instead of the built-in one (for '
                    '--style and --sheet).')
flags.DEFINE_bool('sheet', False, 'Write a labelled sheet of all built-in styles on one '
                  '--content_image (tiles of --image_size, default 256 px).')
# Size and speed.
flags.DEFINE_integer('image_size', None, 'Longest side of the output, px; 0 keeps the input '
                     'size. Default: the input size, at most 1024.')
flags.DEFINE_enum('precision', 'float32', ['float32', 'bfloat16'], 'bfloat16: faster on '
                  'GPUs and TPUs.')
flags.DEFINE_integer('batch_size', 8, 'Images of one size, video frames or sheet styles per '
                     'compiled call (on a CPU: per round of single-image calls, one per '
                     'core at once).')

HELP_GROUPS = (
    ('Inputs and outputs', ('content_image', 'input_dir', 'output_image', 'output_dir', 'video',
                            'output_video')),
    ('The style', ('style', 'style_image', 'style_blend_weights', 'strength',
                   'preserve_colors', 'net', 'sheet')),
    ('Size and speed', ('image_size', 'precision', 'batch_size')),
)
DEFAULT_MAX_SIZE = 1024
SHEET_TILE = 256
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.gif')
# nst_jax.realtime names arguments in backticks; the user needs the flag that set it.
_ARGUMENT_FLAGS = {'strength': 'strength', 'style': 'style', 'blend_weights':
                   'style_blend_weights', 'batch_size': 'batch_size', 'precision': 'precision'}


def _as_flag_error(error: Exception) -> config_lib.ConfigError:
  """A library message with its `argument` names shown as the flags that set them."""
  return config_lib.ConfigError(re.sub(
      r'`([A-Za-z0-9_]+)`',
      lambda m: f'--{_ARGUMENT_FLAGS[m[1]]}' if m[1] in _ARGUMENT_FLAGS else m[1], str(error)))


def parse_style(text: str) -> dict[int, float]:
  """``--style=19`` or ``--style=3:0.5,12:0.5`` -> {index: weight}."""
  blend = {}
  for part in text.split(','):
    index, _, weight = part.strip().partition(':')
    try:
      i, w = int(index), float(weight) if weight else 1.0
    except ValueError:
      raise config_lib.ConfigError(
          f'--style {text!r}: {part.strip()!r} is not a style index or index:weight; use e.g. '
          '--style=19 or --style=3:0.5,12:0.5') from None
    blend[i] = blend.get(i, 0.0) + w
  return blend


def _style_tag(style: dict[int, float] | None, style_images) -> str:
  if style_images:
    return '+'.join(Path(p).stem for p in style_images)
  if len(style) == 1:
    return f'style{next(iter(style))}'
  return 'style' + '_'.join(f'{i}-{w:g}' for i, w in style.items())


def _check_output_dir(folder: str) -> None:
  target = os.path.abspath(folder)
  if os.path.exists(target) and not os.path.isdir(target):
    raise config_lib.ConfigError(f'--output_dir {folder!r} is a file; pass a folder')
  # The folder may not exist yet (it is created): check where it would be.
  cli_support.check_writable_file(os.path.join(target, 'x'), flag='output_dir')


def _target_size(shape, explicit: bool, size: int) -> int | None:
  """Longest side to resize to, or None to keep the image as it is."""
  longest = max(shape[:2])
  if explicit:
    return None if size == 0 or size == longest else size
  return DEFAULT_MAX_SIZE if longest > DEFAULT_MAX_SIZE else None


def _load_content(path: str, what: str):
  rgb = cli_support.load_image(path, what)
  size = _target_size(rgb.shape, FLAGS['image_size'].present, FLAGS.image_size or 0)
  return image_io.resize_longest(rgb, size) if size else rgb


def _contents() -> list[str]:
  if FLAGS.input_dir:
    folder = FLAGS.input_dir
    if not os.path.isdir(folder):
      what = 'not found' if not os.path.exists(folder) else 'is not a folder'
      raise config_lib.ConfigError(f'--input_dir {folder!r} {what}; pass a folder of images')
    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder)
                   if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith('.'))
    if not paths:
      raise config_lib.ConfigError(f'--input_dir {folder!r} has no images '
                                   f'({", ".join(IMAGE_EXTENSIONS)})')
    return paths
  paths = list(FLAGS.content_image)
  if '' in paths:
    raise config_lib.ConfigError(f'--content_image has an empty entry in {",".join(paths)!r}; '
                                 'remove the stray comma')
  return paths


class _Plan:
  """Everything the flags ask for, checked (no network run yet)."""

  def __init__(self):
    given = [f for f in ('content_image', 'input_dir', 'video') if FLAGS[f].value]
    if len(given) != 1:
      raise config_lib.ConfigError(
          'give one input: --content_image=photo.jpg, --input_dir=FOLDER or --video=clip.mp4'
          if not given else f'give only one of {", ".join("--" + g for g in given)}')
    if FLAGS.image_size is not None and FLAGS.image_size < 0:
      raise config_lib.ConfigError(f'--image_size must be 0 (keep the input size) or a '
                                   f'positive number of pixels, got {FLAGS.image_size}')
    if FLAGS.batch_size < 1:
      raise config_lib.ConfigError(f'--batch_size must be at least 1, got {FLAGS.batch_size}')
    from nst_jax import realtime  # Imports no JAX.
    try:
      self.strength = realtime.check_strength(FLAGS.strength)
    except realtime.RealtimeError as e:
      raise _as_flag_error(e) from None
    self.style_images = FLAGS.style_image or []
    if '' in self.style_images:
      raise config_lib.ConfigError(f'--style_image has an empty entry in '
                                   f'{",".join(self.style_images)!r}; remove the stray comma')
    self.sheet = FLAGS.sheet
    self.style = None
    if self.sheet:
      if FLAGS.style or self.style_images:
        raise config_lib.ConfigError('--sheet shows every built-in style; drop --style and '
                                     '--style_image')
      if FLAGS.video or FLAGS.input_dir or len(FLAGS.content_image) != 1:
        raise config_lib.ConfigError('--sheet takes one --content_image')
    elif FLAGS.style and self.style_images:
      raise config_lib.ConfigError('give --style (a built-in style) or --style_image (a '
                                   'painting), not both')
    elif FLAGS.style:
      self.style = parse_style(FLAGS.style)
      try:  # Range and weights; 26 styles unless --net says otherwise (checked again then).
        realtime.builtin_style_weights(self.style, max(26, max(self.style) + 1)
                                       if FLAGS.net else 26)
      except realtime.RealtimeError as e:
        raise _as_flag_error(e) from None
    elif not self.style_images:
      raise config_lib.ConfigError(
          'choose a style: --style=19 (a built-in style, 0-25; --sheet shows them all) or '
          '--style_image=painting.jpg')
    if FLAGS.style_blend_weights is not None:
      if not self.style_images:
        raise config_lib.ConfigError('--style_blend_weights weighs --style_image files; for '
                                     'built-in styles write --style=3:0.5,12:0.5')
      try:
        weights = [float(w) for w in FLAGS.style_blend_weights]
      except ValueError:
        raise config_lib.ConfigError(f'--style_blend_weights must be numbers, got '
                                     f'{",".join(FLAGS.style_blend_weights)!r}') from None
      if len(weights) != len(self.style_images):
        raise config_lib.ConfigError(
            f'--style_blend_weights has {len(weights)} values for {len(self.style_images)} '
            'style image(s); give one weight per style image')
      if any(not w >= 0 or w == float('inf') for w in weights) or sum(weights) <= 0:
        raise config_lib.ConfigError(f'--style_blend_weights must be finite, non-negative '
                                     f'and not all 0, got {",".join(FLAGS.style_blend_weights)}')
    self.blend_weights = (None if FLAGS.style_blend_weights is None
                          else [float(w) for w in FLAGS.style_blend_weights])
    if FLAGS.net and self.style_images:
      raise config_lib.ConfigError('--net is a 26-style (CIN) network, used with --style or '
                                   '--sheet; --style_image uses the arbitrary-style network')
    if FLAGS.net and not os.path.isfile(FLAGS.net):
      what = 'is a directory' if os.path.isdir(FLAGS.net) else 'not found'
      raise config_lib.ConfigError(f'--net {FLAGS.net!r} {what}; pass a .safetensors file '
                                   'written by the training script')
    self.tag = 'sheet' if self.sheet else _style_tag(self.style, self.style_images)
    self._outputs()

  def _outputs(self) -> None:
    if FLAGS.video:
      from nst_jax import video
      if FLAGS.output_image or FLAGS.output_dir:
        raise config_lib.ConfigError('--video writes --output_video, not --output_image or '
                                     '--output_dir')
      self.output_video = FLAGS.output_video or os.path.join(
          'outputs', f'{Path(FLAGS.video).stem}_{self.tag}.mp4')
      video.check_output_path(self.output_video, flag='output_video')
      if os.path.abspath(self.output_video) == os.path.abspath(FLAGS.video):
        raise config_lib.ConfigError(f'--output_video {self.output_video!r} is the input video; '
                                     'choose another file name')
      self.contents, self.outputs = [], []
      return
    if FLAGS.output_video:
      raise config_lib.ConfigError('--output_video needs --video')
    self.contents = _contents()
    several = FLAGS.input_dir or len(self.contents) > 1
    if several and FLAGS.output_image:
      raise config_lib.ConfigError('--output_image names one result; for several images use '
                                   '--output_dir')
    if several:
      folder = FLAGS.output_dir or 'outputs'
      _check_output_dir(folder)
      suffix = '' if FLAGS.input_dir and FLAGS.output_dir else f'_{self.tag}'
      self.outputs = [os.path.join(folder, f'{Path(p).stem}{suffix}.png') for p in self.contents]
      seen = {os.path.abspath(p): p for p in self.contents}  # Never overwrite an input.
      for path, out in zip(self.contents, self.outputs):
        if os.path.abspath(out) in seen:
          raise config_lib.ConfigError(
              f'the result of {path!r} would overwrite the input {seen[os.path.abspath(out)]!r}; '
              'choose another --output_dir')
      seen = {}
      for path, out in zip(self.contents, self.outputs):
        if out in seen:
          raise config_lib.ConfigError(f'{seen[out]!r} and {path!r} would both be written to '
                                       f'{out!r}; rename one of them')
        seen[out] = path
    else:
      if FLAGS.output_dir:
        raise config_lib.ConfigError('--output_dir is for several images; for one image use '
                                     '--output_image')
      self.outputs = [FLAGS.output_image or os.path.join(
          'outputs', f'{Path(self.contents[0]).stem}_{self.tag}.png')]
      image_io.check_output_path(self.outputs[0], flag='output_image')
      if os.path.abspath(self.outputs[0]) == os.path.abspath(self.contents[0]):
        raise config_lib.ConfigError(f'--output_image {self.outputs[0]!r} is the content image; '
                                     'choose another file name')


def _say(message: str) -> None:
  print(f'nst_jax: {message}', file=sys.stderr, flush=True)


def _style_names(metadata) -> list[str]:
  """Names of a trained net's styles (scripts/train_fast.py's ``trained_styles``)."""
  try:
    trained = {int(k): str(v) for k, v in json.loads(metadata.get('trained_styles', '{}')).items()}
  except (ValueError, TypeError, AttributeError):
    return []
  return [trained.get(k, '') for k in range(max(trained, default=-1) + 1)]


def _load_net(with_metadata: bool = False):
  """The CIN network: --net, or the pretrained 26-style one."""
  from nst_jax import cin_net
  from nst_jax import realtime_weights
  from nst_jax import weights as weights_lib
  if FLAGS.net:
    try:
      params, metadata = cin_net.load(FLAGS.net)
    except weights_lib.WeightsError as e:
      # The loader's advice is for the ported weights; a --net file is the user's own.
      detail = str(e).split('; delete it', 1)[0]
      raise weights_lib.WeightsError(f'--net {FLAGS.net!r}: {detail}; pass a .safetensors '
                                     'file written by the training script') from None
  else:
    params, metadata = realtime_weights.load_multistyle26()
  return (params, metadata) if with_metadata else params


def _stylizer(plan: _Plan, style_rgbs):
  """A function frames [B, H, W, 3] -> stylized frames, with every setting bound."""
  from nst_jax import realtime
  from nst_jax import realtime_weights
  kw = dict(strength=plan.strength, preserve_colors=FLAGS.preserve_colors,
            precision=FLAGS.precision, batch_size=FLAGS.batch_size)
  import jax
  if plan.style_images:
    # On the device once, not copied again for every batch of frames.
    predictor, transformer = jax.device_put(realtime_weights.load_arbitrary()[:2])
    vector = realtime.style_vector(predictor, style_rgbs, plan.blend_weights,
                                   precision=FLAGS.precision)
    return lambda x: realtime.stylize_arbitrary(predictor, transformer, x, vector, **kw)
  from nst_jax import cin_net
  params = jax.device_put(_load_net())
  weights = realtime.builtin_style_weights(plan.style, cin_net.num_styles_of(params))
  return lambda x: realtime.stylize_builtin(params, x, weights, **kw)


def _run() -> int:
  cli_support.apply_env_overrides()
  plan = _Plan()
  from nst_jax import realtime
  # Every input decodes before anything is computed.
  style_rgbs = [cli_support.load_image(p, f'style image {k + 1}')
                for k, p in enumerate(plan.style_images)]
  if FLAGS.video:
    from nst_jax import video
    info = video.probe(FLAGS.video)
  contents = [_load_content(p, 'content image') for p in plan.contents]
  for path, rgb in zip(plan.contents, contents):
    if min(rgb.shape[:2]) < realtime.MIN_SIDE:
      raise config_lib.ConfigError(
          f'content image {path!r} is {rgb.shape[1]}x{rgb.shape[0]} px; the networks need at '
          f'least {realtime.MIN_SIDE} px per side (raise --image_size)')
  cli_support.enable_compilation_cache()

  if plan.sheet:
    from nst_jax import cin_net
    params, metadata = _load_net(with_metadata=True)
    tile = FLAGS.image_size if FLAGS['image_size'].present and FLAGS.image_size else SHEET_TILE
    photo = image_io.resize_longest(contents[0], tile)
    t0 = time.perf_counter()
    result = realtime.style_sheet(params, photo, precision=FLAGS.precision,
                                  batch_size=FLAGS.batch_size,
                                  style_names=_style_names(metadata))
    image_io.save_image(plan.outputs[0], result.image)
    h, w = result.image.shape[:2]
    _say(f'wrote {plan.outputs[0]} ({cin_net.num_styles_of(params)} styles, {w}x{h}, '
         f'{time.perf_counter() - t0:.2f} s incl. compiling)')
    return 0

  stylize = _stylizer(plan, style_rgbs)
  if FLAGS.video:
    return _run_video(plan, info, stylize)
  # Images of one size go through the network together, --batch_size at a time.
  by_shape = {}
  for k, rgb in enumerate(contents):
    by_shape.setdefault(rgb.shape, []).append(k)
  for indices in by_shape.values():
    for start in range(0, len(indices), FLAGS.batch_size):
      chunk = indices[start:start + FLAGS.batch_size]
      t0 = time.perf_counter()
      results = stylize(np.stack([contents[k] for k in chunk]))
      seconds = (time.perf_counter() - t0) / len(chunk)
      # The first call at a size compiles (or loads the program from the cache).
      note = ' incl. compiling' if start == 0 else ''
      for k, result in zip(chunk, results):
        image_io.save_image(plan.outputs[k], result)
        h, w = result.shape[:2]
        _say(f'wrote {plan.outputs[k]} ({w}x{h}, {seconds:.2f} s{note})')
  return 0


def _run_video(plan: _Plan, info, stylize) -> int:
  from nst_jax import video
  size = _target_size((info.height, info.width), FLAGS['image_size'].present,
                      FLAGS.image_size or 0)
  height, width = video.output_size(info.height, info.width, size)
  frames = info.estimated_frames
  _say(f'{Path(FLAGS.video).name}: {info.width}x{info.height}, {info.fps:g} fps, '
       f'{frames or "?"} frames; stylizing at {width}x{height}, {FLAGS.batch_size} frames '
       'per batch')
  if info.audio_codec:
    _say(f'note: the audio track ({info.audio_codec}) is not copied to the output')
  last = [time.perf_counter()]
  first_batch = []  # (frames, time) when the first batch (which compiles) is done.

  def progress(done, total):
    now = time.perf_counter()
    if not first_batch:
      first_batch.append((done, now))
    if now - last[0] >= 2.0 or done == total:
      last[0] = now
      _say(f'frame {done}/{total or "?"}')

  result = video.transform_video(FLAGS.video, plan.output_video, stylize,
                                 batch_size=FLAGS.batch_size, size=size, progress=progress)
  end = time.perf_counter()
  done_first, t_first = first_batch[0]
  rate = (f', {(result.frames - done_first) / (end - t_first):.1f} frames/s after the first '
          'batch' if result.frames > done_first and end > t_first else '')
  flicker = ('n/a' if result.flicker is None else f'{result.flicker:.2f}')
  _say(f'wrote {plan.output_video} ({result.frames} frames, {result.width}x{result.height}, '
       f'{result.seconds:.1f} s{rate}); flicker {flicker} (mean change between consecutive '
       'frames, output / input)')
  return 0


def _show_warning(message, category, filename, lineno, file=None, line=None):
  del category, filename, lineno, line
  print(f'warning: {" ".join(str(message).split())}', file=file or sys.stderr, flush=True)


def main(argv):
  warnings.showwarning = _show_warning
  if not FLAGS['verbosity'].present:  # absl log lines are debug detail.
    absl_logging.set_verbosity(absl_logging.ERROR)
  if len(argv) > 1:
    return cli_support.fail(f'unexpected arguments {argv[1:]}; all options are --flags '
                            '(see --help)')
  from nst_jax import host_memory
  from nst_jax import xla_cpu
  # Both before JAX runs anything (see their module docstrings).
  host_memory.keep_freed_memory()
  xla_cpu.parallel_convolutions()
  from nst_jax import realtime
  from nst_jax import video
  try:
    return _run()
  except (*cli_support.USER_ERRORS, video.VideoError) as e:
    return cli_support.fail(str(e))
  except realtime.RealtimeError as e:
    return cli_support.fail(str(_as_flag_error(e)))
  except KeyboardInterrupt:
    print('\nnst_jax: interrupted; files already reported as written are complete, no '
          'other output was written', file=sys.stderr, flush=True)
    return 130


def _plain_library_messages() -> None:
  """The library's warnings (e.g. fetching weights) as plain lines, not absl log lines."""
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter('%(message)s'))
  logger = logging.getLogger('nst_jax')
  logger.addHandler(handler)
  logger.propagate = False
  logger.setLevel(logging.INFO)


if __name__ == '__main__':
  logging.getLogger('jax').setLevel(logging.WARNING)
  _plain_library_messages()
  warnings.filterwarnings('ignore', message='.*os.fork.*')
  app.run(main, flags_parser=cli_support.flags_parser(lambda: cli_support.grouped_help(
      __doc__, HELP_GROUPS,
      'Also --verbosity=1 for debug logs, --helpfull for every absl flag.')))
