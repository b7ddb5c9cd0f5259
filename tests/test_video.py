"""nst_jax.video: batches, sizes, the flicker figure (closed forms), atomic output, errors."""

import os

import numpy as np
import pytest

from nst_jax import video

iio = pytest.importorskip('imageio.v2', reason="video needs the '.[video]' extra")


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
  """5 frames of 33x47 px (odd sides) at 10 fps: a bar moving right."""
  path = tmp_path_factory.mktemp('video') / 'clip.mp4'
  with iio.get_writer(path, format='FFMPEG', fps=10, codec='libx264', quality=8,
                      pixelformat='yuv444p', macro_block_size=1) as writer:
    for k in range(5):
      frame = np.full((33, 47, 3), 40, np.uint8)
      frame[:, 6 * k:6 * k + 10] = 220
      writer.append_data(frame)
  return str(path)


def test_probe(clip):
  info = video.probe(clip)
  assert (info.width, info.height, info.fps) == (47, 33, 10.0)
  assert info.audio_codec is None
  assert info.estimated_frames == 5


def test_batches_of_fixed_size_and_flicker_closed_form(clip, tmp_path):
  calls = []

  def half(frames):
    calls.append(frames.shape)
    return 0.5 * frames

  result = video.transform_video(clip, tmp_path / 'out.mp4', half, batch_size=2)
  # 5 frames in batches of 2: the last batch is padded to 2, one shape throughout.
  assert calls == [(2, 32, 46, 3)] * 3  # Odd sides rounded down to even.
  assert (result.frames, result.width, result.height) == (5, 46, 32)
  # Halving every frame halves every difference between consecutive frames.
  assert result.flicker == pytest.approx(0.5, rel=1e-6)
  frames = [f for f in iio.get_reader(tmp_path / 'out.mp4', format='FFMPEG')]
  assert len(frames) == 5 and frames[0].shape == (32, 46, 3)
  identity = video.transform_video(clip, tmp_path / 'same.mp4', lambda x: x, batch_size=3,
                                   size=24)
  assert identity.flicker == pytest.approx(1.0, rel=1e-6)
  assert (identity.width, identity.height) == (24, 16)  # 47x33 -> 24x17 -> even.


def test_failure_leaves_no_file_and_keeps_existing_output(clip, tmp_path):
  target = tmp_path / 'out.mp4'
  target.write_bytes(b'previous result')

  def fail_on_second(frames, calls=[]):  # pylint: disable=dangerous-default-value
    calls.append(1)
    if len(calls) == 2:
      raise RuntimeError('stop')
    return frames

  with pytest.raises(RuntimeError, match='stop'):
    video.transform_video(clip, target, fail_on_second, batch_size=2)
  assert target.read_bytes() == b'previous result'
  assert os.listdir(tmp_path) == ['out.mp4']


@pytest.mark.parametrize('make, message', [
    (lambda d: d / 'missing.mp4', 'not found'),
    (lambda d: d, 'is a directory'),
    (lambda d: _write(d / 'empty.mp4', b''), 'is empty'),
    (lambda d: _write(d / 'noise.mp4', bytes(range(256)) * 8), 'could not be read as a video'),
])
def test_unreadable_inputs(tmp_path, make, message):
  with pytest.raises(video.VideoError, match=message):
    video.probe(make(tmp_path))


def _write(path, data):
  path.write_bytes(data)
  return path


@pytest.mark.parametrize('name, message', [
    ('out.gif', "cannot write '.gif' videos"),
    ('out', 'cannot write'),
    ('', 'is empty'),
])
def test_output_path_checks(tmp_path, name, message):
  with pytest.raises(video.VideoError, match=message):
    video.check_output_path(str(tmp_path / name) if name else '')
