"""scripts/fast_stylize.py end to end on tiny images: errors, outputs, a video, the sheet.

The built-in-style runs use a tiny random 26-style network (--net), so they
need no downloaded weights; the style-image run uses the ported arbitrary
networks and is skipped where they cannot be loaded.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from nst_jax import cin_net
from nst_jax import cli_support

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'scripts', 'fast_stylize.py')


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """A tiny net, two photos, a painting, a corrupt image and a 3-frame video."""
  folder = tmp_path_factory.mktemp('fast')
  rng = np.random.default_rng(0)
  net = folder / 'tiny.safetensors'
  cin_net.save(net, cin_net.init_params(jax.random.key(0), num_styles=26, width=8))
  photos = folder / 'photos'
  photos.mkdir()
  for name, (h, w) in (('a.png', (24, 32)), ('b.jpg', (32, 20))):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(photos / name)
  Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(folder / 'painting.png')
  import imageio.v2 as iio
  clip = folder / 'clip.mp4'
  with iio.get_writer(clip, format='FFMPEG', fps=5, codec='libx264', quality=8,
                      pixelformat='yuv420p', macro_block_size=1) as writer:
    for k in range(3):
      frame = np.zeros((32, 48, 3), np.uint8)
      frame[:, 8 * k:8 * k + 16] = 200  # A bar moving right.
      writer.append_data(frame)
  # Truncated copies: a damaged photo and a damaged video.
  (folder / 'corrupt.png').write_bytes((photos / 'a.png').read_bytes()[:200])
  (folder / 'corrupt.mp4').write_bytes(clip.read_bytes()[:300])
  return {'net': str(net), 'a': str(photos / 'a.png'), 'b': str(photos / 'b.jpg'),
          'photos': str(photos), 'painting': str(folder / 'painting.png'),
          'corrupt': str(folder / 'corrupt.png'), 'corrupt_video': str(folder / 'corrupt.mp4'),
          'clip': str(clip), 'folder': folder}


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('fast_cache')


def run(args, cache_dir, timeout=240):
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'))
  env[cli_support.CACHE_DIR_ENV] = str(cache_dir)
  return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _listing(folder):
  return sorted(os.path.relpath(os.path.join(d, f), folder)
                for d, _, names in os.walk(folder) for f in names)


@pytest.mark.parametrize('args, message', [
    ([], 'give one input: --content_image'),
    (['--content_image={a}'], 'choose a style: --style=19'),
    (['--content_image={a}', '--video={clip}', '--style=1'], 'give only one of'),
    (['--content_image={folder}/missing.jpg', '--style=1'], "missing.jpg' not found"),
    (['--content_image={corrupt}', '--style=1'], 'could not be decoded'),
    (['--content_image={a}', '--style=26'], '--style: index 26 is out of range'),
    (['--content_image={a}', '--style=3:x'], "--style '3:x'"),
    (['--content_image={a}', '--style=3:0,4:0'], '--style: the weights sum to 0'),
    (['--content_image={a}', '--style=1', '--strength=1.5'], '--strength must be in [0, 1]'),
    (['--content_image={a}', '--style_image={painting},{painting}',
      '--style_blend_weights=1'], '--style_blend_weights has 1 values for 2'),
    (['--content_image={a}', '--style=1', '--style_blend_weights=1'],
     '--style_blend_weights weighs --style_image'),
    (['--content_image={a}', '--style=1', '--output_image={folder}/out.xyz'],
     "Pillow cannot write '.xyz'"),
    (['--content_image={a}', '--style=1', '--output_image={a}/x.png'], 'is a file, not a folder'),
    (['--content_image={a},{b}', '--style=1', '--output_image={folder}/out.png'],
     'for several images use --output_dir'),
    (['--content_image={a}', '--style=1', '--net={folder}/none.safetensors'],
     "--net '{folder}/none.safetensors' not found"),
    (['--content_image={a}', '--style=1', '--net={painting}'], 'not a readable safetensors'),
    (['--video={corrupt_video}', '--style=1', '--net={net}'], 'could not be read as a video'),
    (['--video={clip}', '--style=1', '--output_video={folder}/out.gif'],
     "cannot write '.gif' videos"),
    (['--content_image={a}', '--sheet', '--style=2'], '--sheet shows every built-in style'),
    (['--content_image={a}', '--style=1', '--image_size=-1'], '--image_size must be 0'),
    (['--input_dir={photos}', '--output_dir={photos}', '--style=1'], 'would overwrite the input'),
    (['--video={clip}', '--output_video={clip}', '--style=1'], 'is the input video'),
])
def test_input_errors_are_one_line_and_write_nothing(files, cache_dir, args, message):
  before = _listing(files['folder'])
  proc = run([a.format(**files) for a in args], cache_dir)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1, proc.stderr
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
  assert message.format(**files) in lines[0]
  assert _listing(files['folder']) == before


def test_one_image_blend_strength_and_colors(files, cache_dir, tmp_path):
  out = tmp_path / 'new' / 'a_blend.png'
  proc = run([f'--content_image={files["a"]}', '--style=3:0.5,12:0.5', '--strength=0.7',
              '--preserve_colors', f'--net={files["net"]}', f'--output_image={out}'], cache_dir)
  assert proc.returncode == 0, proc.stderr
  assert Image.open(out).size == (32, 24)  # Smaller than 1024: kept as it is.
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith(f'nst_jax: wrote {out} (32x24, ')
  assert not any(line[:1] in 'IWE' and line[1:5].isdigit() for line in lines)  # No log prefixes.


def test_input_dir_to_output_dir_at_image_size(files, cache_dir, tmp_path):
  proc = run([f'--input_dir={files["photos"]}', f'--output_dir={tmp_path}', '--style=19',
              f'--net={files["net"]}', '--image_size=40'], cache_dir)
  assert proc.returncode == 0, proc.stderr
  assert sorted(os.listdir(tmp_path)) == ['a.png', 'b.png']
  assert Image.open(tmp_path / 'a.png').size == (40, 30)
  assert Image.open(tmp_path / 'b.png').size == (25, 40)
  assert proc.stderr.count('nst_jax: wrote') == 2


def test_sheet_of_all_styles(files, cache_dir, tmp_path):
  out = tmp_path / 'sheet.png'
  proc = run([f'--content_image={files["a"]}', '--sheet', '--image_size=32',
              f'--net={files["net"]}', f'--output_image={out}', '--batch_size=27'], cache_dir)
  assert proc.returncode == 0, proc.stderr
  assert '26 styles' in proc.stderr
  w, h = Image.open(out).size
  assert w > 7 * 32 and h > 4 * 24  # 27 tiles in 7 columns, with title bands.


def test_video_round_trip(files, cache_dir, tmp_path):
  import imageio.v2 as iio
  out = tmp_path / 'clip_style1.mp4'
  proc = run([f'--video={files["clip"]}', '--style=1', f'--net={files["net"]}',
              f'--output_video={out}', '--batch_size=2'], cache_dir)
  assert proc.returncode == 0, proc.stderr
  assert 'flicker' in proc.stderr and '3 frames, 48x32' in proc.stderr
  frames = [f for f in iio.get_reader(out, format='FFMPEG')]  # list() asks len(): inf.
  assert len(frames) == 3 and frames[0].shape == (32, 48, 3)
  assert [p for p in os.listdir(tmp_path) if p.endswith('.tmp.mp4')] == []


def test_style_images(files, cache_dir, tmp_path):
  from nst_jax import realtime_weights
  from nst_jax import weights
  try:
    realtime_weights.load_arbitrary()
  except weights.WeightsError as e:
    pytest.skip(f'arbitrary-style weights unavailable: {e}')
  out = tmp_path / 'a_painting.png'
  proc = run([f'--content_image={files["a"]}',
              f'--style_image={files["painting"]},{files["painting"]}',
              '--style_blend_weights=1,2', '--strength=0.5', f'--output_image={out}'], cache_dir)
  assert proc.returncode == 0, proc.stderr
  assert Image.open(out).size == (32, 24)


def test_help_leads_with_the_common_invocations(cache_dir):
  proc = run(['--help'], cache_dir)
  assert proc.returncode == 0
  head = proc.stdout.splitlines()[:5]
  assert sum('scripts/fast_stylize.py --content_image=' in line for line in head) == 3
  for group in ('Inputs and outputs:', 'The style:', 'Size and speed:'):
    assert group in proc.stdout
