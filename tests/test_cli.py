"""End-to-end tests of scripts/stylize.py: bad input fails clearly, no work is lost.

Every bad input (a file or a flag) must exit non-zero with a one-line error
naming it, print no traceback, and create or change no file. Unusual but
valid images must work. Ctrl-C must save the image and a checkpoint, and
resuming must give the same pixels as a run never interrupted. Images are
tiny (48-64 px) and runs a few iterations, so the file runs in minutes on two
CPU cores.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_jax import cli_support
from nst_jax import config as config_lib
from nst_jax import image_io
from nst_jax import memory

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = 'scripts/stylize.py'
IS_ROOT = hasattr(os, 'geteuid') and os.geteuid() == 0

# Runs the script with open() refusing one path, as a chmod 000 file would for
# a normal user (root, which runs these tests in CI containers, reads anything).
_DENY_WRAPPER = '''
import builtins, os, runpy, sys
deny = os.environ['NST_TEST_DENY_READ']
real_open = builtins.open
def guarded_open(file, *args, **kwargs):
  if isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)) == deny:
    raise PermissionError(13, 'Permission denied', os.fspath(file))
  return real_open(file, *args, **kwargs)
builtins.open = guarded_open
sys.argv = ['scripts/stylize.py'] + sys.argv[1:]
runpy.run_path('scripts/stylize.py', run_name='__main__')
'''


@pytest.fixture(scope='session')
def cache_dir(tmp_path_factory):
  """One compilation cache for the whole file: each image shape compiles once."""
  return tmp_path_factory.mktemp('nst_cache')


def _env(cache_dir, extra=None):
  env = dict(os.environ)
  env[cli_support.CACHE_DIR_ENV] = str(cache_dir)
  env.pop(cli_support.MAX_PIXELS_ENV, None)
  env['JAX_PLATFORMS'] = env.get('JAX_PLATFORMS', 'cpu')
  env.update(extra or {})
  return env


def run_cli(args, cache_dir, env=None, deny=None, timeout=240):
  """Runs the script; returns the CompletedProcess (text stdout/stderr)."""
  cmd = [sys.executable, SCRIPT, *args]
  env = _env(cache_dir, env)
  if deny is not None:
    cmd = [sys.executable, '-c', _DENY_WRAPPER, *args]
    env['NST_TEST_DENY_READ'] = os.path.abspath(deny)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)


def _rgb(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def _save(path, image, **kwargs):
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  image.save(path, **kwargs)
  return path


def make_inputs(folder: Path) -> dict[str, str]:
  """Good and bad input files in ``folder``; returns {placeholder: path}."""
  f = folder
  p = {}
  p['content'] = _save(f / 'content.png', _rgb(48, 64, 0))
  p['style'] = _save(f / 'style.png', _rgb(64, 64, 1))
  p['style2'] = _save(f / 'style2.jpg', _rgb(64, 48, 2))
  data = (f / 'content.png').read_bytes()
  (f / 'truncated.png').write_bytes(data[:len(data) // 2])
  p['truncated'] = f / 'truncated.png'
  (f / 'garbage.jpg').write_bytes(np.random.default_rng(3).bytes(2000))
  p['garbage'] = f / 'garbage.jpg'
  (f / 'empty.png').write_bytes(b'')
  p['empty'] = f / 'empty.png'
  (f / 'folder').mkdir()
  p['folder'] = f / 'folder'
  p['missing'] = f / 'missing.png'
  p['locked'] = _save(f / 'locked.png', _rgb(48, 64, 4))
  if not IS_ROOT:
    os.chmod(p['locked'], 0)
  (f / 'notes.png').write_text('these are notes, not a picture\n')
  p['text_png'] = f / 'notes.png'
  (f / 'drawing.svg').write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" '
                                 'height="64"><rect width="64" height="64"/></svg>\n')
  p['svg'] = f / 'drawing.svg'
  p['bomb'] = _save(f / 'bomb.png', _rgb(128, 128, 5))  # 16384 px: over a limit of 5000.
  (f / 'file.txt').write_text('a file, not a folder\n')
  p['file'] = f / 'file.txt'
  (f / 'corrupt.safetensors').write_bytes(np.random.default_rng(6).bytes(4096))
  p['corrupt_weights'] = f / 'corrupt.safetensors'
  (f / 'corrupt.ckpt.npz').write_bytes(b'PK\x03\x04' + np.random.default_rng(7).bytes(500))
  p['corrupt_ckpt'] = f / 'corrupt.ckpt.npz'
  (f / 'out').mkdir()
  p['out'] = f / 'out' / 'result.png'
  return {k: str(v) for k, v in p.items()}


def snapshot(folder: Path) -> dict[str, bytes | None]:
  """Every file and folder under ``folder`` with its bytes (None for a folder)."""
  state = {}
  for path in sorted(folder.rglob('*')):
    if path.is_dir():
      state[str(path.relative_to(folder))] = None
    elif path.is_file() and os.access(path, os.R_OK):
      state[str(path.relative_to(folder))] = path.read_bytes()
    else:
      state[str(path.relative_to(folder))] = b'<unreadable>'
  return state


# --- Bad input: a table ------------------------------------------------------

BASE = {
    'content_image': '{content}', 'style_image': '{style}', 'output_image': '{out}',
    'image_size': '64', 'num_iterations': '3', 'print_iter': '0', 'save_iter': '0',
}


@dataclasses.dataclass(frozen=True)
class Bad:
  id: str
  flags: dict                 # Overrides BASE; a value of None drops the flag.
  words: tuple[str, ...]      # All must appear (any case) in the error line.
  env: dict | None = None
  existing: bool = False      # An output file exists beforehand and must survive.
  deny: str | None = None     # Placeholder of a file made unreadable.
  extra_args: tuple = ()
  absl: bool = False          # Rejected by absl's flag parser (its own wording).
  max_seconds: float | None = None

  def argv(self, paths):
    flags = {**BASE, **self.flags}
    args = [f'--{k}={v.format(**paths)}' for k, v in flags.items() if v is not None]
    return args + [a.format(**paths) for a in self.extra_args]


BOMB_ENV = {cli_support.MAX_PIXELS_ENV: '5000'}  # The other inputs have <= 4096 px.

BAD_INPUTS = [
    # The content image.
    Bad('content_missing', {'content_image': '{missing}'}, ('content image', 'missing.png',
                                                            'not found', 'check the path')),
    Bad('content_truncated', {'content_image': '{truncated}'},
        ('content image', 'truncated.png', 'truncated', 're-export'), existing=True),
    Bad('content_garbage_jpg', {'content_image': '{garbage}'},
        ('content image', 'garbage.jpg', 'not a readable image', "'.jpg'")),
    Bad('content_empty', {'content_image': '{empty}'},
        ('content image', 'empty.png', 'empty', '0 bytes'), existing=True),
    Bad('content_directory', {'content_image': '{folder}'},
        ('content image', 'folder', 'directory', 'image file inside')),
    Bad('content_unreadable', {'content_image': '{locked}'},
        ('content image', 'locked.png', 'permission denied', 'readable'), deny='locked',
        existing=True),
    Bad('content_text_named_png', {'content_image': '{text_png}'},
        ('content image', 'notes.png', 'not a readable image', 'convert it')),
    Bad('content_svg', {'content_image': '{svg}'},
        ('content image', 'drawing.svg', "cannot read '.svg'", 'convert it to png')),
    Bad('content_decompression_bomb', {'content_image': '{bomb}'},
        ('content image', 'bomb.png', 'decompression bomb', cli_support.MAX_PIXELS_ENV),
        env=BOMB_ENV, existing=True),
    # The style images.
    Bad('style_missing', {'style_image': '{missing}'}, ('style image 1', 'not found')),
    Bad('style_list_stray_comma', {'style_image': '{style},'},
        ('--style_image', 'empty entry', 'stray comma')),
    Bad('style2_missing', {'style_image': '{style},{missing}'},
        ('style image 2', 'missing.png', 'not found'), existing=True),
    Bad('style_truncated', {'style_image': '{truncated}'}, ('style image 1', 'truncated')),
    Bad('style_garbage_jpg', {'style_image': '{garbage}'},
        ('style image 1', 'not a readable image'), existing=True),
    Bad('style_empty', {'style_image': '{empty}'}, ('style image 1', 'empty')),
    Bad('style_directory', {'style_image': '{folder}'}, ('style image 1', 'directory')),
    Bad('style_unreadable', {'style_image': '{locked}'},
        ('style image 1', 'permission denied'), deny='locked'),
    Bad('style_svg', {'style_image': '{svg}'}, ('style image 1', "cannot read '.svg'"),
        existing=True),
    Bad('style_decompression_bomb', {'style_image': '{style},{bomb}'},
        ('style image 2', 'decompression bomb'), env=BOMB_ENV),
    # The init image.
    Bad('init_missing', {'init_image': '{missing}'}, ('init image', 'not found')),
    Bad('init_truncated', {'init_image': '{truncated}'}, ('init image', 'truncated'),
        existing=True),
    Bad('init_text_named_png', {'init_image': '{text_png}'}, ('init image', 'not a readable')),
    Bad('init_directory', {'init_image': '{folder}'}, ('init image', 'directory')),
    # Layers and weights.
    Bad('unknown_content_layer', {'content_layers': 'relu9_9'},
        ('--content_layers', 'relu9_9', 'valid layers', 'relu4_2', 'relu5_1')),
    Bad('unknown_style_layer', {'style_layers': 'relu1_1,pool9'},
        ('--style_layers', 'pool9', 'valid layers', 'relu1_1'), existing=True),
    Bad('negative_content_weight', {'content_weight': '-1'}, ('--content_weight', '>= 0')),
    Bad('nan_style_weight', {'style_weight': 'nan'}, ('--style_weight', 'finite')),
    Bad('inf_tv_weight', {'tv_weight': 'inf'}, ('--tv_weight', 'finite'), existing=True),
    Bad('sw_redraw_zero', {'sw_redraw': '0'}, ('--sw_redraw', '>= 1')),
    Bad('band_rows_not_16', {'band_rows': '40'}, ('--band_rows', 'multiple of 16')),
    Bad('band_rows_with_sw', {'band_rows': '512', 'style_loss': 'sw'},
        ('--band_rows', 'Gram objective')),
    Bad('style_layer_weights_count', {'style_layer_weights': '1,2'},
        ('--style_layer_weights', '2 values', '5 layers')),
    Bad('style_layer_weights_nan', {'style_layer_weights': '1,1,nan,1,1'},
        ('--style_layer_weights', 'finite')),
    # Blend weights.
    Bad('blend_count', {'style_image': '{style},{style2}', 'style_blend_weights': '1'},
        ('--style_blend_weights', '1 values', '2 style', 'one weight per style image'),
        existing=True),
    Bad('blend_all_zero', {'style_image': '{style},{style2}', 'style_blend_weights': '0,0'},
        ('--style_blend_weights', 'all zero', 'positive')),
    Bad('blend_negative', {'style_image': '{style},{style2}', 'style_blend_weights': '1,-1'},
        ('--style_blend_weights', '>= 0')),
    Bad('blend_not_numbers', {'style_image': '{style},{style2}', 'style_blend_weights': 'a,b'},
        ('--style_blend_weights', 'numbers', "'a,b'")),
    # Sizes and iterations.
    Bad('image_size_zero', {'image_size': '0'}, ('--image_size', 'positive')),
    Bad('image_size_negative', {'image_size': '-64'}, ('--image_size', 'positive'),
        existing=True),
    Bad('image_size_not_a_number', {'image_size': 'big'}, ('image_size', 'big'), absl=True),
    Bad('scales_zero', {'scales': '0,64'}, ('--scales', 'positive')),
    Bad('style_scale_zero', {'style_scale': '0'}, ('--style_scale', '> 0')),
    Bad('too_small_for_relu5_1', {'image_size': '8'},
        ('content image', 'relu5_1', 'at least 16 px', '--image_size'), existing=True),
    Bad('style_too_small', {'style_scale': '0.1'},
        ('style image 1', 'relu5_1', 'at least 16 px', '--style_scale')),
    Bad('too_large_for_memory', {'image_size': '60000'},
        ('gib of memory', 'available', '--image_size='), existing=True, max_seconds=30),
    Bad('too_large_last_scale', {'scales': '64,60000', 'num_iterations': '3'},
        ('gib', '--scales ending at'), max_seconds=30),
    Bad('num_iterations_negative', {'num_iterations': '-1'}, ('--num_iterations', '>= 0')),
    Bad('num_iterations_not_a_number', {'num_iterations': 'ten'},
        ('--num_iterations', 'integers')),
    Bad('num_iterations_per_scale_count', {'scales': '32,64', 'num_iterations': '1,2,3'},
        ('--num_iterations', '3 values', 'per scale')),
    Bad('num_iterations_over_int32', {'num_iterations': '3000000000'},
        ('--num_iterations', 'at most 2147483647')),
    Bad('image_size_over_int32', {'image_size': str(10**20)}, ('--image_size', 'at most')),
    Bad('seed_over_64_bits', {'seed': str(10**20)}, ('--seed', '64 bits')),
    Bad('content_weight_over_float32', {'content_weight': '1e39'},
        ('--content_weight', 'float32')),
    Bad('blend_weight_over_float32', {'style_image': '{style},{style2}',
                                      'style_blend_weights': '1,1e39'},
        ('--style_blend_weights', 'float32')),
    Bad('chunk_size_zero', {'chunk_size': '0'}, ('--chunk_size', '>= 1')),
    Bad('print_iter_negative', {'print_iter': '-1'}, ('--print_iter', '>= 0')),
    # Optimizer.
    Bad('unknown_optimizer', {'optimizer': 'sgdd'}, ('--optimizer', 'sgdd', 'lbfgs', 'adam'),
        existing=True),
    Bad('unknown_optax_optimizer', {'optimizer': 'optax:nosuch'},
        ('--optimizer', 'nosuch')),
    Bad('optax_callable_not_an_optimizer', {'optimizer': 'optax:chain'},
        ('--optimizer', 'optax:chain', 'cannot optimise an image', 'optax:sgd')),
    Bad('optax_lbfgs_needs_the_loss', {'optimizer': 'optax:lbfgs'},
        ('--optimizer', 'optax:lbfgs', 'lbfgs_linesearch'), existing=True),
    Bad('learning_rate_zero', {'learning_rate': '0'}, ('--learning_rate', '> 0')),
    Bad('learning_rate_nan', {'learning_rate': 'nan'}, ('--learning_rate', 'finite')),
    Bad('lbfgs_history_zero', {'lbfgs_history': '0'}, ('--lbfgs_history', '>= 1')),
    Bad('pooling_unknown', {'pooling': 'min'}, ('pooling', 'min'), absl=True),
    # Outputs.
    Bad('output_extension_unwritable', {'output_image': '{out}.xyz'},
        ('--output_image', "'.xyz'", '.png')),
    Bad('output_without_extension', {'output_image': '{folder}/result'},
        ('--output_image', 'no file extension')),
    Bad('output_folder_is_a_file', {'output_image': '{file}/out.png'},
        ('--output_image', 'file.txt', 'not a folder')),
    Bad('output_is_a_directory', {'output_image': '{folder}'},
        ('--output_image', 'directory', 'result.png')),
    Bad('save_iter_folder_is_a_file', {'output_image': '{file}/sub/out.png', 'save_iter': '1'},
        ('--output_image', 'file.txt', 'not a folder')),
    Bad('checkpoint_folder_is_a_file', {'checkpoint': '{file}/run.ckpt.npz'},
        ('--checkpoint', 'run.ckpt.npz', 'file.txt', 'not a folder'), existing=True),
    Bad('checkpoint_is_a_directory', {'checkpoint': '{folder}'},
        ('--checkpoint', 'folder', 'directory')),
    # Required flags and stray arguments.
    Bad('content_not_given', {'content_image': None}, ('--content_image', 'required')),
    Bad('style_not_given', {'style_image': None}, ('--style_image', 'required')),
    Bad('positional_argument', {}, ('unexpected arguments', 'stray.png'),
        extra_args=('stray.png',)),
    Bad('unknown_flag', {'colour': 'blue'}, ('colour',), absl=True),
    # Weights.
    Bad('weights_missing_file', {'weights': '{folder}/nonexistent.safetensors'},
        ('--weights', 'nonexistent.safetensors', 'not found', 'port_weights.py'),
        existing=True),
    Bad('weights_corrupt_file', {'weights': '{corrupt_weights}'},
        ('--weights', 'corrupt.safetensors', 'not a readable safetensors',
         'port the weights again')),
    Bad('weights_unknown_name', {'weights': 'vgg99'},
        ('--weights', 'unknown weight set', 'vgg99', 'vgg19-caffe')),
    # Resume.
    Bad('resume_missing', {'resume': '{missing}.ckpt.npz'},
        ('--resume', 'missing.png.ckpt.npz', 'not found', 'interrupted run')),
    Bad('resume_corrupt', {'resume': '{corrupt_ckpt}'},
        ('--resume', 'corrupt.ckpt.npz', 'not a readable nst_jax checkpoint'), existing=True),
    # The environment.
    Bad('max_pixels_env_not_a_number', {}, (cli_support.MAX_PIXELS_ENV, 'positive'),
        env={cli_support.MAX_PIXELS_ENV: 'lots'}),
]


def test_bad_input_ids_unique():
  ids = [c.id for c in BAD_INPUTS]
  assert len(ids) == len(set(ids))


@dataclasses.dataclass
class _Outcome:
  proc: subprocess.CompletedProcess
  before: dict
  after: dict
  seconds: float


def _run_bad(case: Bad, folder: Path, cache_dir) -> _Outcome:
  paths = make_inputs(folder)
  if case.existing:
    _save(paths['out'], _rgb(10, 12, 9))
  before = snapshot(folder)
  deny = paths[case.deny] if (case.deny and IS_ROOT) else None
  t0 = time.perf_counter()
  proc = run_cli(case.argv(paths), cache_dir, env=case.env, deny=deny)
  return _Outcome(proc, before, snapshot(folder), time.perf_counter() - t0)


@pytest.fixture(scope='module')
def bad_outcomes(request, tmp_path_factory, cache_dir):
  """Runs the selected bad-input cases side by side, two or more at a time.

  Each case is mostly interpreter start-up (importing JAX), which runs on one
  core, so on two otherwise idle cores this halves the wall time of the table.
  """
  selected = {item.callspec.params['case'].id for item in request.session.items
              if item.originalname == 'test_bad_input'}
  cases = [c for c in BAD_INPUTS if c.id in selected]
  root = tmp_path_factory.mktemp('bad')
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
    futures = {}
    for c in cases:
      (root / c.id).mkdir()
      futures[c.id] = pool.submit(_run_bad, c, root / c.id, cache_dir)
    return {k: f.result() for k, f in futures.items()}


@pytest.mark.parametrize('case', BAD_INPUTS, ids=lambda c: c.id)
def test_bad_input(case, bad_outcomes):
  outcome = bad_outcomes[case.id]
  proc = outcome.proc
  output = proc.stdout + proc.stderr

  assert proc.returncode != 0, output
  assert 'Traceback' not in output, output
  if case.absl:
    lines = [l for l in proc.stderr.splitlines() if 'error' in l.lower()]
  else:
    lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
    assert proc.returncode == 1, output
  assert len(lines) == 1, output
  for word in case.words:
    assert word.lower() in lines[0].lower(), (word, lines[0])
  # Nothing written: no output, no checkpoint, no temporary file, no change.
  assert outcome.after == outcome.before
  if case.max_seconds is not None:
    assert outcome.seconds < case.max_seconds, f'took {outcome.seconds:.1f} s: refused too late'


# --- Unusual but valid input -------------------------------------------------


def _exif_rotated_jpeg(path):
  image = Image.fromarray(_rgb(48, 64, 10))  # Stored 64 wide, 48 high ...
  exif = Image.Exif()
  exif[0x0112] = 6  # ... shown rotated 90 degrees clockwise: 48 wide, 64 high.
  image.save(path, exif=exif, quality=95)
  return path, (64, 48)


def _grey(path):
  return _save(path, Image.fromarray(_rgb(48, 64, 11)[..., 0])), (48, 64)


def _palette(path):
  return _save(path, Image.fromarray(_rgb(48, 64, 12)).convert('P')), (48, 64)


def _rgba(path):
  rgba = np.concatenate([_rgb(48, 64, 13), _rgb(48, 64, 14)[..., :1]], axis=-1)
  return _save(path, Image.fromarray(rgba, 'RGBA')), (48, 64)


def _cmyk_jpeg(path):
  return _save(path, Image.fromarray(_rgb(48, 64, 15)).convert('CMYK'), quality=95), (48, 64)


def _png16(path):
  values = np.random.default_rng(16).integers(0, 65536, (48, 64)).astype(np.uint16)
  image = Image.fromarray(values)  # uint16 -> mode I;16
  assert image.mode == 'I;16'
  return _save(path, image), (48, 64)


def _gif_frames(path):
  frames = [Image.fromarray(_rgb(48, 64, 17 + i)).convert('P') for i in range(3)]
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
  return path, (48, 64)


VALID = [
    ('exif_rotated.jpg', _exif_rotated_jpeg),
    ('grey.png', _grey),
    ('palette.png', _palette),
    ('rgba.png', _rgba),
    ('cmyk.jpg', _cmyk_jpeg),
    ('sixteen_bit.png', _png16),
    ('animated.gif', _gif_frames),
]

QUICK = ['--num_iterations=2', '--image_size=64', '--print_iter=0', '--save_iter=0']


@pytest.mark.parametrize('name,make', VALID, ids=[n for n, _ in VALID])
def test_unusual_valid_input(name, make, tmp_path, cache_dir):
  path, upright_hw = make(tmp_path / name)
  mode = Image.open(path).mode
  out = tmp_path / 'out' / 'result.png'
  # The same file as content and as style exercises both loaders.
  proc = run_cli([f'--content_image={path}', f'--style_image={path}',
                  f'--output_image={out}', *QUICK], cache_dir)
  output = proc.stdout + proc.stderr
  assert proc.returncode == 0, output
  assert 'Traceback' not in output
  result = np.asarray(Image.open(out))
  assert result.shape == (*upright_hw, 3), (mode, result.shape)
  if name.endswith('.gif'):
    warnings = [l for l in proc.stderr.splitlines() if l.startswith('warning:')]
    assert any('3 frames' in l and 'first' in l for l in warnings), proc.stderr


# --- Determinism, divergence, interruption ----------------------------------


def test_same_flags_same_bytes_and_missing_folder_created(tmp_path, cache_dir):
  paths = make_inputs(tmp_path)
  # A missing output folder is created (as mkdir -p would), not an error.
  outs = [tmp_path / f'new{i}' / 'deeper' / 'result.png' for i in range(2)]
  for out in outs:
    proc = run_cli([f'--content_image={paths["content"]}', f'--style_image={paths["style"]}',
                    f'--output_image={out}', '--num_iterations=4', '--image_size=64',
                    '--print_iter=0', '--save_iter=0', '--seed=3'], cache_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # User messages are plain lines on stderr: no absl/log prefix, nothing on stdout.
    assert not proc.stdout and proc.stderr.startswith('nst_jax: '), proc.stderr
    assert not re.search(r'^[IWEF]\d{4} ', proc.stderr, re.M), proc.stderr
  assert np.asarray(Image.open(outs[0])).shape == (48, 64, 3)
  assert outs[0].read_bytes() == outs[1].read_bytes()


def test_divergence_names_term_and_keeps_finite_image(tmp_path, cache_dir):
  paths = make_inputs(tmp_path)
  out = Path(paths['out'])
  proc = run_cli([f'--content_image={paths["content"]}', f'--style_image={paths["style"]}',
                  f'--output_image={out}', '--optimizer=adam', '--learning_rate=1e30',
                  '--num_iterations=10', '--image_size=64', '--print_iter=0',
                  '--save_iter=0'], cache_dir)
  output = proc.stdout + proc.stderr
  assert proc.returncode == 1, output
  assert 'Traceback' not in output
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1, output
  assert re.search(r'(loss term (content|style|tv)[a-z0-9_/]*|the gradient) became non-finite at '
                   r'iteration \d+', lines[0]), lines[0]
  assert str(out) in lines[0]
  pixels = np.asarray(Image.open(out), np.float32)
  assert pixels.shape == (48, 64, 3) and np.all(np.isfinite(pixels))


def _wait_for_iteration(proc, at_least, timeout=180):
  """Reads stderr until a progress line reports iteration >= at_least."""
  seen = []
  watchdog = threading.Timer(timeout, proc.kill)  # A hung run must not hang the tests.
  watchdog.start()
  try:
    for line in proc.stderr:
      seen.append(line)
      m = re.search(r'iter\s+(\d+)/', line)
      if m and int(m.group(1)) >= at_least:
        return int(m.group(1))
  finally:
    watchdog.cancel()
  raise AssertionError(f'no progress line at iteration >= {at_least}: {"".join(seen)}')


def test_sigint_checkpoint_resume_bit_identical(tmp_path, cache_dir):
  paths = make_inputs(tmp_path)
  out = tmp_path / 'interrupted' / 'result.png'
  ckpt = Path(f'{out}.ckpt.npz')
  common = [f'--content_image={paths["content"]}', f'--style_image={paths["style"]}',
            '--num_iterations=40', '--chunk_size=5', '--print_iter=5', '--save_iter=0',
            '--image_size=64', '--seed=1']

  proc = subprocess.Popen([sys.executable, SCRIPT, *common, f'--output_image={out}'],
                          cwd=ROOT, env=_env(cache_dir), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    at = _wait_for_iteration(proc, 10)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 130, stdout + stderr
  assert 'Traceback' not in stdout + stderr
  stopped = int(re.search(r'interrupted at iteration (\d+) of 40', stderr).group(1))
  assert at <= stopped < 40 and stopped % 5 == 0, stderr
  assert out.is_file() and ckpt.is_file()
  assert np.asarray(Image.open(out)).shape == (48, 64, 3)

  resumed = run_cli([f'--resume={ckpt}'], cache_dir)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert f'{40 - stopped} iterations' in resumed.stderr, resumed.stderr
  assert not ckpt.exists()  # Consumed by the successful resume.

  straight = tmp_path / 'straight.png'
  proc = run_cli([*common, f'--output_image={straight}'], cache_dir)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  a, b = np.asarray(Image.open(out)), np.asarray(Image.open(straight))
  assert np.array_equal(a, b), f'max difference {np.abs(a.astype(int) - b).max()}'


def test_resume_warns_about_ignored_flags(tmp_path, cache_dir):
  # A checkpoint holds the run's settings; flags given beside --resume are
  # ignored, and the user is told which.
  paths = make_inputs(tmp_path)
  before = snapshot(tmp_path)
  proc = run_cli([f'--resume={paths["corrupt_ckpt"]}', '--image_size=128'], cache_dir)
  assert proc.returncode == 1
  assert any(l.startswith('warning:') and '--image_size' in l
             for l in proc.stderr.splitlines()), proc.stderr
  assert snapshot(tmp_path) == before


# --- Library level: the checks and the rescue -------------------------------


def test_memory_refusal_states_largest_fitting_size():
  config = config_lib.StyleConfig(image_size=4096)
  budget = memory.estimate_peak_bytes(*image_io.longest_side_shape((48, 64), 500), config) + 1
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.plan(config, (48, 64), [(48, 64)], budget=budget)
  fit = int(re.search(r'`image_size`=(\d+)', str(e.value)).group(1))
  assert fit >= 500
  assert memory.estimate_peak_bytes(*image_io.longest_side_shape((48, 64), fit), config) <= budget
  assert memory.estimate_peak_bytes(*image_io.longest_side_shape((48, 64), fit + 1),
                                    config) > budget
  config_lib.plan(dataclasses.replace(config, image_size=fit), (48, 64), [(48, 64)],
                  budget=budget)


def test_memory_refusal_when_nothing_fits():
  with pytest.raises(config_lib.ConfigError, match='free some memory'):
    config_lib.plan(config_lib.StyleConfig(), (48, 64), [(48, 64)], budget=1)


def test_longest_side_shape_matches_resize_longest():
  for hw in [(48, 64), (64, 48), (3, 1000), (999, 1001), (5, 2)]:
    for size in (16, 63, 64, 257):
      image = np.zeros((*hw, 3), np.float32)
      assert image_io.resize_longest(image, size).shape[:2] == image_io.longest_side_shape(hw, size)


def test_flags_are_generated_from_the_config_fields():
  # Every StyleConfig field is a flag of both scripts, with the field's help text.
  for script in (SCRIPT, 'scripts/matrix.py'):
    proc = subprocess.run([sys.executable, script, '--helpfull'], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    for f in dataclasses.fields(config_lib.StyleConfig):
      assert re.search(rf'--(\[no\])?{f.name}:', proc.stdout), (script, f.name)
      assert f.metadata['help'].split()[0] in proc.stdout


def test_help_leads_with_examples_and_groups_the_flags():
  proc = subprocess.run([sys.executable, SCRIPT, '--help'], cwd=ROOT, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  text = proc.stdout
  assert text.lstrip().startswith('Stylize a photo')
  assert text.count('python scripts/stylize.py --') >= 3
  order = [text.index(f'\n{g}:\n') for g in ('inputs and output', 'the objective',
                                              'the optimizer', 'colour and scales', 'run control')]
  assert order == sorted(order)
  assert text.index('--content_image') < order[1] < text.index('--style_weight') < order[2]


def _fail_first_saves(monkeypatch, n):
  """Saving to a file raises ENOSPC the first ``n`` times, as a full disk would."""
  real_save = Image.Image.save
  calls = {'n': 0}

  def save(self, fp, *args, **kwargs):
    if isinstance(fp, io.BytesIO):  # image_io's in-memory probe of the format.
      return real_save(self, fp, *args, **kwargs)
    calls['n'] += 1
    if calls['n'] <= n:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_save(self, fp, *args, **kwargs)

  monkeypatch.setattr(Image.Image, 'save', save)


def test_disk_full_keeps_existing_output_and_rescues(tmp_path, monkeypatch):
  monkeypatch.setenv(cli_support.CACHE_DIR_ENV, str(tmp_path / 'cache'))
  out = tmp_path / 'out' / 'result.png'
  out.parent.mkdir()
  _save(out, _rgb(10, 12, 9))
  original = out.read_bytes()
  image = _rgb(8, 8, 1).astype(np.float32) / 255
  _fail_first_saves(monkeypatch, 1)
  with pytest.raises(image_io.ImageError) as e:
    cli_support.save_or_rescue(out, image)
  message = str(e.value)
  assert 'disk is full' in message and 'saved to' in message, message
  assert out.read_bytes() == original
  assert os.listdir(out.parent) == ['result.png']  # No temporary file left.
  rescued = list((tmp_path / 'cache' / 'rescued').glob('result-*.png'))
  assert len(rescued) == 1 and rescued[0].name in message
  np.testing.assert_array_equal(np.asarray(Image.open(rescued[0])),
                                np.rint(image * 255).astype(np.uint8))


def test_disk_full_everywhere_keeps_existing_output(tmp_path, monkeypatch):
  monkeypatch.setenv(cli_support.CACHE_DIR_ENV, str(tmp_path / 'cache'))
  out = tmp_path / 'result.png'
  _save(out, _rgb(10, 12, 9))
  original = out.read_bytes()
  _fail_first_saves(monkeypatch, 2)
  with pytest.raises(image_io.ImageError, match='disk is full') as e:
    cli_support.save_or_rescue(out, np.zeros((8, 8, 3), np.float32))
  assert 'saved to' not in str(e.value)
  assert out.read_bytes() == original


def test_demo_writes_a_labelled_sheet(tmp_path, cache_dir):
  """--demo: the sheet goes to --output_image, the optimised image beside it."""
  pytest.importorskip('skimage')
  pytest.importorskip('onnx')  # ports the real-time network on first use
  out = tmp_path / 'demo.png'
  proc = run_cli(['--demo', '--num_iterations=2', '--image_size=64',
                  f'--output_image={out}'], cache_dir)
  assert proc.returncode == 0, proc.stderr
  assert 'Traceback' not in proc.stderr
  sheet = image_io.load_image(out)
  optimised = image_io.load_image(tmp_path / 'demo_optimised.png')
  assert max(optimised.shape[:2]) == 64
  # Six 256 px panels in three columns, with title bands: far larger than one panel.
  assert sheet.shape[0] > 2 * 170 and sheet.shape[1] > 3 * 256
  assert sorted(p.name for p in tmp_path.iterdir()) == ['demo.png', 'demo_optimised.png']
