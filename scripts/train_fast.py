"""Train your own real-time style network (Johnson et al. 2016, Dumoulin et al. 2017).

The three common invocations:

  # 1. A new network, two styles (a style may be several paintings, weighted):
  python scripts/train_fast.py --content_dir=photos/ --output_net=my.safetensors \\
      --styles='starry.jpg;monet1.jpg@1+monet2.jpg@1+monet3.jpg@1'
  # 2. Add a style to the ported 26-style network (only its gamma/beta rows
  #    train; styles 0-25 stay bit-identical); it becomes style 26:
  python scripts/train_fast.py --mode=add --base_net=multistyle26 \\
      --content_dir=photos/ --styles=the_scream.jpg --output_net=scream27.safetensors
  # 3. Continue an interrupted run (Ctrl-C saves a checkpoint):
  python scripts/train_fast.py --resume=my.safetensors.ckpt.npz

Then: python scripts/fast_stylize.py --net=my.safetensors --style=K ...

Flag groups:
  data:    --content_dir --crop_size --image_size --batch_size --seed
  styles:  --styles (';' between styles, '+' between paintings, '@W' weights)
           --style_size
  network: --mode (new|add|finetune) --base_net --width
  loss:    --content_weight --style_weight --tv_weight --content_layers
           --style_layers --style_layer_weights --pooling --precision
           --conv_algorithm
  run:     --steps --learning_rate --lr_schedule --lr_decay_steps --print_every
           --preview_every --preview_photos --preview_image --checkpoint_every
           --checkpoint --resume --output_net

Every input is checked before anything compiles: an error is one line
(`error: ...`), exit status 1, and nothing is written. An unreadable photo in
--content_dir is skipped with one warning and counted in the final line.
"""

import json
import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path

from absl import app
from absl import flags

from nst_jax import cli_support
from nst_jax import config as config_lib

FLAGS = flags.FLAGS

# Data.
flags.DEFINE_string('content_dir', None, '[data] Folder of photographs to train on.')
flags.DEFINE_integer('crop_size', 256, '[data] Side of the random square crops, px.')
flags.DEFINE_integer('image_size', 512, '[data] Photos are resized to this longest side '
                     'before cropping (the scale you will stylize at); 0 keeps their size.')
flags.DEFINE_integer('batch_size', 4, '[data] Crops per step (a multiple of the device count).')
flags.DEFINE_integer('seed', 0, '[data] Fixes the network init, photo order and crops.')
# Styles.
flags.DEFINE_string('styles', None, "[styles] Styles, ';'-separated; each is one or more "
                    "paintings joined by '+', with optional weights: a.jpg@2+b.jpg@1.")
flags.DEFINE_integer('style_size', 512, '[styles] Paintings are resized to this longest side '
                     'for the Gram targets.')
# Network.
flags.DEFINE_enum('mode', None, ['new', 'add', 'finetune'], '[network] new: from scratch; '
                  'add: append --styles to --base_net, training only their gamma/beta; '
                  'finetune: train all of --base_net. Default: add with --base_net, else new.')
flags.DEFINE_string('base_net', None, '[network] Existing network (.safetensors from this '
                    "script, or 'multistyle26' for the ported 26-style one).")
flags.DEFINE_integer('width', 32, '[network] Channels of the network (--mode=new); '
                     '16 is ~3x faster to train and run.')
# Loss.
flags.DEFINE_float('content_weight', 5.0, '[loss] Content loss weight (as stylize).')
flags.DEFINE_float('style_weight', 100.0, '[loss] Style loss weight per layer (as stylize).')
flags.DEFINE_float('tv_weight', 1e-3, '[loss] Total-variation weight (as stylize).')
flags.DEFINE_list('content_layers', ['relu4_2'], '[loss] VGG19 content layers.')
flags.DEFINE_list('style_layers', ['relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1'],
                  '[loss] VGG19 style layers.')
flags.DEFINE_list('style_layer_weights', None, '[loss] Per-style-layer factors (default 1).')
flags.DEFINE_enum('pooling', 'max', ['max', 'avg'], '[loss] VGG19 pooling.')
flags.DEFINE_enum('precision', 'float32', ['float32', 'bfloat16'],
                  '[loss] bfloat16: mixed-precision convolutions (GPU/TPU).')
flags.DEFINE_enum('conv_algorithm', 'auto', ['auto', 'xla', 'winograd'],
                  "[loss] VGG19's layers of 128+ channels as Winograd F(4x4,3x3) convolutions "
                  '(auto: on CPU in float32, where they are faster) or XLA\'s own.')
# Run.
flags.DEFINE_integer('steps', 2000, '[run] Training steps in all.')
flags.DEFINE_float('learning_rate', 1e-3, '[run] Adam step size (1e-2 suits --mode=add).')
flags.DEFINE_enum('lr_schedule', 'constant', ['constant', 'cosine'], '[run] constant, or '
                  'cosine: the step size falls from --learning_rate to 0 over the run, which '
                  'allows a larger starting rate for a fixed budget of steps.')
flags.DEFINE_integer('lr_decay_steps', 0, '[run] Steps of the cosine decay (0: --steps); '
                     'fixed by the checkpoint, so --resume with more --steps keeps it.')
flags.DEFINE_string('output_net', None, '[run] Where to write the trained network '
                    '(.safetensors, the format of the ported nets).')
flags.DEFINE_integer('print_every', 10, '[run] Progress line every N steps.')
flags.DEFINE_integer('preview_every', 0, '[run] Preview sheet every N steps (0: only at the end).')
flags.DEFINE_list('preview_photos', None, '[run] Photos for the preview sheet (default: the '
                  'first 3 of --content_dir).')
flags.DEFINE_string('preview_image', None, '[run] Preview sheet file (default: '
                    'OUTPUT_NET.preview.jpg).')
flags.DEFINE_integer('checkpoint_every', 200, '[run] Checkpoint every N steps (0: only on '
                     'Ctrl-C).')
flags.DEFINE_string('checkpoint', None, '[run] Checkpoint file (default: '
                    'OUTPUT_NET.ckpt.npz).')
flags.DEFINE_string('resume', None, '[run] Continue from this checkpoint (its settings are '
                    'used; --steps may be raised).')
flags.DEFINE_integer('threads', 2, '[run] Photo-decoding threads.')

# What a checkpoint fixes; --resume ignores these flags (with a warning).
_RUN_FLAGS = ('content_dir', 'crop_size', 'image_size', 'batch_size', 'seed', 'styles',
              'style_size', 'mode', 'base_net', 'width', 'content_weight', 'style_weight',
              'tv_weight', 'content_layers', 'style_layers', 'style_layer_weights',
              'pooling', 'precision', 'conv_algorithm', 'learning_rate', 'lr_schedule',
              'lr_decay_steps')


def _say(msg: str) -> None:
  print(f'nst_jax: {msg}', file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
  if seconds == float('inf'):
    return '?'
  m, s = divmod(int(seconds + 0.5), 60)
  h, m = divmod(m, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def _floats(name, values):
  if values is None:
    return None
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise config_lib.ConfigError(f'--{name} must be comma-separated numbers') from None


def parse_styles(text: str | None) -> list:
  """--styles -> list of StyleSpec (the blend syntax of nst_jax.matrix)."""
  from nst_jax import matrix
  if not text or not text.strip():
    raise config_lib.ConfigError("--styles is required, e.g. --styles='a.jpg;b.jpg@1+c.jpg@1'")
  specs = []
  for part in text.split(';'):
    if not part.strip():
      raise config_lib.ConfigError(f'--styles {text!r}: empty style between \';\'')
    try:
      spec = matrix.parse_style_spec(part.strip())
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(f'--styles: {e}') from None
    weights = spec.blend_weights or (1.0,) * len(spec.images)
    if any(not (w >= 0 and w < float('inf')) for w in weights) or sum(weights) <= 0:
      raise config_lib.ConfigError(f'--styles {part!r}: weights must be >= 0 and not all 0')
    specs.append(spec)
  return specs


def _load_base_net(name: str):
  from nst_jax import cin_net
  from nst_jax import realtime_weights
  from nst_jax import weights as weights_lib
  try:
    if name == 'multistyle26':
      return realtime_weights.load_multistyle26()[0]
    if not os.path.isfile(name):
      raise config_lib.ConfigError(f'--base_net {name!r}: no such file; pass a .safetensors '
                                   "network or 'multistyle26'")
    return cin_net.load(name)[0]
  except weights_lib.WeightsError as e:
    raise config_lib.ConfigError(f'--base_net {name!r}: {e}') from None


def _settings_from_flags() -> dict:
  """The run's settings (what a checkpoint stores), validated."""
  from nst_jax import train
  mode = FLAGS.mode or ('add' if FLAGS.base_net else 'new')
  config = train.TrainConfig(
      mode=mode, steps=FLAGS.steps, batch_size=FLAGS.batch_size, crop_size=FLAGS.crop_size,
      image_size=FLAGS.image_size, style_size=FLAGS.style_size,
      learning_rate=FLAGS.learning_rate, lr_schedule=FLAGS.lr_schedule,
      lr_decay_steps=FLAGS.lr_decay_steps, width=FLAGS.width,
      content_weight=FLAGS.content_weight, style_weight=FLAGS.style_weight,
      tv_weight=FLAGS.tv_weight, content_layers=tuple(FLAGS.content_layers),
      style_layers=tuple(FLAGS.style_layers),
      style_layer_weights=_floats('style_layer_weights', FLAGS.style_layer_weights),
      pooling=FLAGS.pooling, precision=FLAGS.precision, conv_algorithm=FLAGS.conv_algorithm,
      seed=FLAGS.seed)
  if not FLAGS.content_dir:
    raise config_lib.ConfigError('--content_dir is required: a folder of photographs')
  if mode != 'new' and not FLAGS.base_net:
    raise config_lib.ConfigError(f'--mode={mode} needs --base_net')
  if mode == 'new' and FLAGS.base_net:
    raise config_lib.ConfigError('--base_net is for --mode=add or --mode=finetune')
  return {'config': config.to_dict(), 'content_dir': FLAGS.content_dir,
          'styles': FLAGS.styles, 'base_net': FLAGS.base_net}


def _preview_sheet(photos, outputs):
  """Rows: one photo, then it in each style; white 4-px gaps."""
  import numpy as np
  gap = 4
  rows = []
  for photo, outs in zip(photos, outputs):
    cells = [photo] + list(outs)
    h = photo.shape[0]
    row = [np.ones((h, gap, 3), np.float32)] * (2 * len(cells) - 1)
    row[::2] = cells
    rows.append(np.concatenate(row, axis=1))
  w = rows[0].shape[1]
  sheet = [np.ones((gap, w, 3), np.float32)] * (2 * len(rows) - 1)
  sheet[::2] = rows
  return np.concatenate(sheet, axis=0)


def _run() -> int:
  import numpy as np
  from nst_jax import image_io
  from nst_jax import photo_data
  from nst_jax import train

  t_start = time.perf_counter()
  # --- Settings: from the checkpoint, or from the flags. ---
  if FLAGS.resume:
    if not os.path.isfile(FLAGS.resume):
      raise config_lib.ConfigError(f'--resume {FLAGS.resume!r}: no such checkpoint file')
    meta, leaves = train.read_checkpoint(FLAGS.resume)
    ignored = [f for f in _RUN_FLAGS if FLAGS[f].present]
    if ignored:
      warnings.warn(f'--resume uses the checkpoint\'s settings; ignoring --{", --".join(ignored)}')
    settings = meta['settings']
    output_net = FLAGS.output_net or meta['output_net']
  else:
    settings = _settings_from_flags()
    output_net = FLAGS.output_net
    leaves = None
  if not output_net:
    raise config_lib.ConfigError('--output_net is required: where to write the network')
  if not output_net.endswith('.safetensors'):
    raise config_lib.ConfigError(f'--output_net {output_net!r}: use a .safetensors name')
  config = train.TrainConfig.from_dict(settings['config'])
  if FLAGS.resume and FLAGS['steps'].present:
    config = train.TrainConfig.from_dict({**settings['config'], 'steps': FLAGS.steps})
  checkpoint = FLAGS.checkpoint or (FLAGS.resume if FLAGS.resume else output_net + '.ckpt.npz')
  preview_path = FLAGS.preview_image or output_net + '.preview.jpg'
  cli_support.check_writable_file(output_net, 'output_net')
  cli_support.check_writable_file(checkpoint, 'checkpoint')
  cli_support.check_writable_file(preview_path, 'preview_image')
  if FLAGS.print_every < 1:
    raise config_lib.ConfigError('--print_every must be at least 1')
  for name in ('preview_every', 'checkpoint_every', 'threads'):
    if FLAGS[name].value < 0:
      raise config_lib.ConfigError(f'--{name} must be >= 0')

  # --- Inputs, all checked before anything compiles. ---
  specs = parse_styles(settings['styles'])
  style_rgbs = [[cli_support.load_image(p, f'style image {p!r} (--styles)') for p in s.images]
                for s in specs]
  blends = [s.blend_weights or (1.0,) * len(s.images) for s in specs]
  try:
    paths = photo_data.list_photos(settings['content_dir'])
  except ValueError as e:
    raise config_lib.ConfigError(f'--content_dir: {e}') from None
  data = photo_data.PhotoBatches(paths, config.batch_size, config.crop_size, seed=config.seed,
                                 image_size=config.image_size, num_threads=max(1, FLAGS.threads))
  try:
    readable = data.check_readable(max_workers=max(1, FLAGS.threads))
  except ValueError as e:
    raise config_lib.ConfigError(f'--content_dir {settings["content_dir"]!r}: {e}') from None
  preview_files = FLAGS.preview_photos or [p for p in paths if p not in data.skipped][:3]
  preview = np.stack([photo_data.random_crop(
      photo_data.prepare_photo(cli_support.load_image(p, f'preview photo {p!r}'),
                               config.image_size, config.crop_size),
      config.crop_size, np.random.default_rng(0), flip=False) for p in preview_files]
  ).astype(np.float32) / 255.0
  # On --resume the checkpoint holds the whole network; the base still gives its shapes.
  base = _load_base_net(settings['base_net']) if settings['base_net'] else None

  # --- Build, restore, train. ---
  import jax
  setup = train.prepare(config, style_rgbs, blends, base_params=base)
  state = setup.state
  if leaves is not None:
    state = train.replicate(train.restore_state(state, leaves, meta['step']), setup.mesh)
  start = int(state.step)
  devices = setup.mesh.devices.size
  from nst_jax import cin_net
  width = cin_net.width_of(state.params)  # --width applies to --mode=new only
  _say(f'{config.mode} network, width {width}, {len(specs)} style(s) as '
       f'{", ".join(map(str, setup.style_ids))}; {len(paths)} photos ({readable} decoded '
       f'so far); {devices} {jax.devices()[0].platform} device(s); steps '
       f'{start}..{config.steps}')

  meta_out = {'settings': settings, 'output_net': output_net}

  def save_checkpoint(state):
    train.save_checkpoint(checkpoint, state, meta_out)

  def write_preview(state):
    outs = train.stylize_preview(jax.device_get(state.params), preview, setup.style_ids)
    image_io.save_image(preview_path, _preview_sheet(preview, outs))

  schedule = train.learning_rate_schedule(config)

  def progress(p):
    m = p.metrics
    lr = f'  lr {float(schedule(p.step)):.3g}' if config.lr_schedule != 'constant' else ''
    _say(f'step {p.step}/{p.steps}{lr}  loss {m["loss"]:.4g}  content {m["content"]:.4g}  '
         f'style {m["style"]:.4g}  tv {m["tv"]:.4g}  {p.steps_per_sec:.2f} steps/s '
         f'({p.steps_per_sec * config.batch_size:.1f} img/s)  ETA {_duration(p.eta_seconds)}')

  stop = {'flag': False}

  def on_signal(signum, frame):
    del frame
    if stop['flag']:
      raise KeyboardInterrupt
    stop['flag'] = True
    print(file=sys.stderr)
    _say(f'received {signal.Signals(signum).name}: finishing the current step and saving '
         'a checkpoint (again to stop at once)')

  signal.signal(signal.SIGINT, on_signal)
  signal.signal(signal.SIGTERM, on_signal)
  every = [(FLAGS.checkpoint_every, save_checkpoint), (FLAGS.preview_every, write_preview)]
  state = train.run(state, setup.train_step, data.iterate(start), steps=config.steps,
                    batch_size=config.batch_size, style_ids=setup.style_ids,
                    mesh=setup.mesh, print_every=FLAGS.print_every, on_progress=progress,
                    every=every, should_stop=lambda: stop['flag'])
  done = int(state.step)
  skipped = data.skipped
  if done < config.steps:
    save_checkpoint(state)
    _say(f'stopped at step {done} of {config.steps}; checkpoint {checkpoint}; continue '
         f'with python scripts/train_fast.py --resume={checkpoint}')
    return 130

  # --- Export. ---
  from nst_jax import cin_net
  names = [s.label for s in specs]
  metadata = {'network': 'Dumoulin, Shlens & Kudlur 2017 conditional instance norm network, '
                         f'trained by nst_jax ({config.mode})',
              'num_styles': str(cin_net.num_styles_of(state.params)),
              'trained_styles': json.dumps(dict(zip(map(str, setup.style_ids), names))),
              'base_net': str(settings['base_net'] or ''), 'steps': str(done),
              'train_config': json.dumps(config.to_dict())}
  cin_net.save(output_net, jax.device_get(state.params), metadata)
  write_preview(state)
  if os.path.exists(checkpoint) and not FLAGS.checkpoint:
    os.unlink(checkpoint)
  note = (f'; skipped {len(skipped)} unreadable photo(s): {", ".join(skipped)}'
          if skipped else '')
  _say(f'wrote {output_net} (styles {", ".join(map(str, setup.style_ids))}; run it with '
       f'python scripts/fast_stylize.py --net={output_net} --style={setup.style_ids[0]}) '
       f'and {preview_path} in {_duration(time.perf_counter() - t_start)}{note}')
  return 0


def main(argv):
  cli_support.show_warnings_on_one_line()
  if len(argv) > 1:
    return cli_support.fail(f'unexpected arguments {argv[1:]}; all options are --flags')
  # Before JAX runs anything (see its docstring): a training step allocates
  # ~600 MB of temporaries, which glibc would otherwise unmap and page-fault
  # afresh every step (1.55 -> 1.87 steps/s at 256 px, width 16, 2 cores).
  from nst_jax import host_memory
  host_memory.keep_freed_memory()
  try:
    return _run()
  except (*cli_support.USER_ERRORS, FloatingPointError) as e:
    return cli_support.fail(str(e))
  except KeyboardInterrupt:
    print('\nnst_jax: interrupted; nothing was written', file=sys.stderr, flush=True)
    return 130


if __name__ == '__main__':
  logging.getLogger('jax').setLevel(logging.WARNING)
  app.run(main, flags_parser=cli_support.flags_parser())
