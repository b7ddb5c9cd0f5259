"""Tests for nst_jax.image_io: every bad input gives a clear ImageError, every
unusual but valid input decodes correctly, and saving is atomic."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from nst_jax import image_io
from nst_jax.image_io import ImageError


def _rgb(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def _write(path, array_or_image, **kwargs):
  image = array_or_image
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  image.save(path, **kwargs)
  return path


def _assert_error(excinfo, path, *words):
  message = str(excinfo.value)
  assert '\n' not in message
  assert str(path) in message
  for word in words:
    assert word in message.lower(), (word, message)


# --- load_image: errors -----------------------------------------------------


def test_missing_file(tmp_path):
  path = tmp_path / 'nope.jpg'
  with pytest.raises(ImageError) as e:
    image_io.load_image(path, what='content image')
  _assert_error(e, path, 'content image', 'not found', 'check the path')


def test_directory(tmp_path):
  with pytest.raises(ImageError) as e:
    image_io.load_image(tmp_path, what='style image 2')
  _assert_error(e, tmp_path, 'style image 2', 'directory')


def test_permission_denied_simulated(tmp_path, monkeypatch):
  path = _write(tmp_path / 'a.png', _rgb(4, 4))

  def deny(file, *args, **kwargs):
    raise PermissionError(13, 'Permission denied', str(file))

  # Tests run as root, which ignores file modes; the module-level name
  # shadows the builtin for image_io only.
  monkeypatch.setattr(image_io, 'open', deny, raising=False)
  with pytest.raises(ImageError) as e:
    image_io.load_image(path, what='content image')
  _assert_error(e, path, 'permission denied', 'readable')


@pytest.mark.skipif(not hasattr(os, 'geteuid') or os.geteuid() == 0,
                    reason='root can read files whatever their mode')
def test_permission_denied_real(tmp_path):
  path = _write(tmp_path / 'a.png', _rgb(4, 4))
  os.chmod(path, 0)
  with pytest.raises(ImageError) as e:
    image_io.load_image(path)
  _assert_error(e, path, 'permission denied')


def test_empty_file(tmp_path):
  path = tmp_path / 'empty.png'
  path.write_bytes(b'')
  with pytest.raises(ImageError) as e:
    image_io.load_image(path)
  _assert_error(e, path, 'empty', '0 bytes')


@pytest.mark.parametrize('fmt', ['png', 'jpg'])
def test_truncated(tmp_path, fmt):
  full = _write(tmp_path / f'full.{fmt}', _rgb(64, 64))
  data = full.read_bytes()
  path = tmp_path / f'cut.{fmt}'
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ImageError) as e:
    image_io.load_image(path, what='style image')
  _assert_error(e, path, 'style image', 'corrupt or truncated',
                're-download')


def test_corrupt_png_data(tmp_path):
  data = bytearray(_write(tmp_path / 'ok.png', _rgb(64, 64)).read_bytes())
  middle = len(data) // 2
  data[middle:middle + 64] = bytes(64)
  path = tmp_path / 'bad.png'
  path.write_bytes(bytes(data))
  with pytest.raises(ImageError) as e:
    image_io.load_image(path)
  _assert_error(e, path, 'corrupt')


def test_garbage_with_image_extension(tmp_path):
  path = tmp_path / 'photo.png'
  path.write_bytes(b'this is a text file, not a picture\n' * 10)
  with pytest.raises(ImageError) as e:
    image_io.load_image(path)
  _assert_error(e, path, 'not a readable image', "'.png'")


def test_format_pillow_cannot_read(tmp_path):
  path = tmp_path / 'drawing.svg'
  path.write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
  with pytest.raises(ImageError) as e:
    image_io.load_image(path)
  _assert_error(e, path, 'cannot read', "'.svg'", 'png')


@pytest.mark.parametrize('shape, pixels', [((20, 20), 400), ((10, 15), 150)])
def test_decompression_bomb(tmp_path, monkeypatch, shape, pixels):
  # 400 > 2 * limit raises DecompressionBombError; 150 only warns, which
  # must be refused too.
  path = _write(tmp_path / 'bomb.png', _rgb(*shape))
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)
  with pytest.raises(ImageError) as e:
    image_io.load_image(path)
  _assert_error(e, path, f'{pixels} pixels', 'max_image_pixels',
                'decompression bomb')


# --- load_image: unusual but valid inputs ------------------------------------


def test_rgb_png_exact(tmp_path):
  pixels = _rgb(5, 7)
  out = image_io.load_image(_write(tmp_path / 'a.png', pixels))
  assert out.dtype == np.float32 and out.shape == (5, 7, 3)
  np.testing.assert_allclose(out, pixels / 255.0, atol=1e-7)


def test_exif_orientation_applied(tmp_path):
  # Stored 48 wide x 32 tall with a red top-left block; orientation 6 means
  # "rotate 90 degrees clockwise to display", so the upright image is 32 wide
  # x 48 tall with the red block at the top right.
  stored = np.zeros((32, 48, 3), np.uint8)
  stored[:16, :16] = (255, 0, 0)
  exif = Image.Exif()
  exif[0x0112] = 6
  path = _write(tmp_path / 'rotated.jpg', stored, exif=exif, quality=95,
                subsampling=0)
  out = image_io.load_image(path)
  assert out.shape == (48, 32, 3)
  expected = np.rot90(stored, k=-1) / 255.0
  np.testing.assert_allclose(out, expected, atol=0.1)
  assert out[2:14, -14:-2, 0].min() > 0.9  # top right is red
  assert out[2:14, 2:14].max() < 0.1  # top left is black


def test_sixteen_bit_png(tmp_path):
  grey = np.full((4, 5), 40000, np.uint16)
  grey[0, 0] = 65535
  grey[0, 1] = 300  # would be clipped to white if treated as 8-bit
  image = Image.fromarray(grey)
  assert image.mode == 'I;16'
  out = image_io.load_image(_write(tmp_path / 'deep.png', image))
  assert out.shape == (4, 5, 3)
  np.testing.assert_allclose(out[1, 1], [40000 / 65535] * 3, atol=1e-6)
  np.testing.assert_allclose(out[0, 0], [1, 1, 1], atol=1e-6)
  np.testing.assert_allclose(out[0, 1], [300 / 65535] * 3, atol=1e-6)


@pytest.mark.parametrize('dtype, value, expected', [
    (np.uint16, 40000, 40000 / 65535),  # I;16 TIFF
    (np.int32, 40000, 40000 / 65535),  # mode I
    (np.float32, 0.25, 0.25),  # mode F
])
def test_tiff_high_depth(tmp_path, dtype, value, expected):
  path = _write(tmp_path / 'deep.tif', np.full((3, 4), value, dtype))
  out = image_io.load_image(path)
  np.testing.assert_allclose(out, np.full((3, 4, 3), expected), atol=1e-6)


def test_float_tiff_with_nan(tmp_path):
  data = np.full((3, 4), 0.5, np.float32)
  data[1, 1] = np.nan
  path = _write(tmp_path / 'nan.tif', data)
  with pytest.raises(ImageError) as e:
    image_io.load_image(path, what='style image')
  _assert_error(e, path, 'style image', 'nan')


def test_broken_exif_only_warns(tmp_path, monkeypatch):
  path = _write(tmp_path / 'a.png', _rgb(4, 6))

  def broken(image):
    raise SyntaxError('not a TIFF file')

  monkeypatch.setattr(image_io.ImageOps, 'exif_transpose', broken)
  with pytest.warns(UserWarning, match='EXIF') as record:
    out = image_io.load_image(path)
  assert str(path) in str(record[0].message)
  assert out.shape == (4, 6, 3)


def test_rgba_alpha_over_white(tmp_path):
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[0, 0] = (10, 20, 30, 0)  # fully transparent: white
  rgba[0, 1] = (255, 0, 0, 255)  # opaque red
  rgba[1, 0] = (255, 0, 0, 128)  # half transparent red
  rgba[1, 1] = (0, 0, 0, 255)
  out = image_io.load_image(_write(tmp_path / 'a.png', rgba))
  a = 128 / 255
  np.testing.assert_allclose(out[0, 0], [1, 1, 1], atol=1e-6)
  np.testing.assert_allclose(out[0, 1], [1, 0, 0], atol=1e-6)
  np.testing.assert_allclose(out[1, 0], [1, 1 - a, 1 - a], atol=1e-6)
  np.testing.assert_allclose(out[1, 1], [0, 0, 0], atol=1e-6)


def test_grey_modes(tmp_path):
  grey = np.array([[0, 100], [200, 255]], np.uint8)
  out = image_io.load_image(_write(tmp_path / 'l.png', grey))
  np.testing.assert_allclose(out, np.repeat(grey[..., None], 3, -1) / 255,
                             atol=1e-7)
  bw = Image.fromarray(np.array([[True, False]]))
  assert bw.mode == '1'
  out = image_io.load_image(_write(tmp_path / 'bw.png', bw))
  np.testing.assert_allclose(out, [[[1, 1, 1], [0, 0, 0]]])


def test_la(tmp_path):
  la = Image.new('LA', (2, 1))
  la.putpixel((0, 0), (100, 255))
  la.putpixel((1, 0), (100, 0))
  out = image_io.load_image(_write(tmp_path / 'la.png', la))
  np.testing.assert_allclose(out[0, 0], [100 / 255] * 3, atol=1e-6)
  np.testing.assert_allclose(out[0, 1], [1, 1, 1], atol=1e-6)


def test_palette_with_transparency(tmp_path):
  p = Image.new('P', (3, 1))
  p.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0] + [0] * (256 * 3 - 9))
  p.putdata([0, 1, 2])
  out = image_io.load_image(_write(tmp_path / 'p.png', p))
  np.testing.assert_allclose(out[0], [[1, 0, 0], [0, 0, 1], [0, 1, 0]])
  out = image_io.load_image(_write(tmp_path / 'pt.gif', p, transparency=1))
  np.testing.assert_allclose(out[0], [[1, 0, 0], [1, 1, 1], [0, 1, 0]])


def test_pa_mode():
  # No common format stores PA, so the conversion is checked directly.
  pa = Image.new('PA', (2, 1))
  pa.putpalette([0, 0, 255] + [0] * 765)
  pa.putpixel((0, 0), (0, 255))
  pa.putpixel((1, 0), (0, 0))
  out = image_io._to_rgb_float(pa)
  np.testing.assert_allclose(out[0], [[0, 0, 1], [1, 1, 1]], atol=1e-6)


@pytest.mark.parametrize('ext', ['tif', 'jpg'])
def test_cmyk(tmp_path, ext):
  cmyk = Image.new('CMYK', (8, 8), (0, 255, 255, 0))  # red
  out = image_io.load_image(_write(tmp_path / f'c.{ext}', cmyk))
  np.testing.assert_allclose(out, np.broadcast_to([1, 0, 0], out.shape),
                             atol=0.03)


@pytest.mark.parametrize('ext', ['gif', 'tif'])
def test_multi_frame_uses_first(tmp_path, ext):
  red = Image.new('RGB', (4, 4), (255, 0, 0))
  green = Image.new('RGB', (4, 4), (0, 255, 0))
  path = _write(tmp_path / f'anim.{ext}', red, save_all=True,
                append_images=[green])
  with pytest.warns(UserWarning, match='2 frames') as record:
    out = image_io.load_image(path, what='style image')
  assert str(path) in str(record[0].message)
  np.testing.assert_allclose(out, np.broadcast_to([1, 0, 0], out.shape),
                             atol=0.01)


def test_single_frame_no_warning(tmp_path):
  path = _write(tmp_path / 'a.gif', Image.new('RGB', (4, 4), (0, 0, 255)))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    image_io.load_image(path)


# --- resize -----------------------------------------------------------------


@pytest.mark.parametrize('shape, size, expected', [
    ((30, 60), 20, (10, 20)),
    ((60, 30), 20, (20, 10)),
    ((61, 20), 30, (30, 10)),  # 20 * 30 / 61 = 9.84
    ((20, 20), 7, (7, 7)),
    ((3, 1000), 10, (1, 10)),  # would round to 0
    ((8, 8), 8, (8, 8)),
])
def test_resize_longest_shape(shape, size, expected):
  image = np.random.default_rng(0).random(shape + (3,), dtype=np.float32)
  out = image_io.resize_longest(image, size)
  assert out.shape == expected + (3,)
  assert out.dtype == np.float32
  assert out.min() >= image.min() and out.max() <= image.max()


def test_resize_constant_stays_constant():
  image = np.full((17, 23, 3), [0.2, 0.5, 0.9], np.float32)
  for out in (image_io.resize_longest(image, 64),
              image_io.resize_longest(image, 5)):
    np.testing.assert_allclose(out, np.broadcast_to([0.2, 0.5, 0.9],
                                                    out.shape), atol=1e-6)


@pytest.mark.parametrize('src, dst', [((48, 64), (24, 32)),
                                      ((24, 32), (45, 60))])
def test_resize_samples_smooth_function(src, dst):
  # A smooth image resampled must match the function at the new pixel
  # centres (x + 0.5) * scale - 0.5: checks geometry (no half-pixel shift)
  # and the filter, independently of Pillow.
  def smooth(h, w, out_h, out_w):
    y = (np.arange(out_h) + 0.5) * h / out_h - 0.5
    x = (np.arange(out_w) + 0.5) * w / out_w - 0.5
    yy, xx = np.meshgrid(y / h, x / w, indexing='ij')
    base = 0.5 + 0.3 * np.sin(2.0 * yy + 1.0) * np.cos(1.5 * xx)
    return np.stack([base, 1 - base, 0.5 * base], -1).astype(np.float32)

  image = smooth(*src, *src)
  out = image_io.resize_to(image, *dst)
  expected = smooth(*src, *dst)
  inner = (slice(3, -3), slice(3, -3))
  np.testing.assert_allclose(out[inner], expected[inner], atol=2e-3)


def test_resize_bad_arguments():
  image = np.zeros((4, 4, 3), np.float32)
  with pytest.raises(ValueError):
    image_io.resize_longest(image, 0)
  with pytest.raises(ValueError):
    image_io.resize_longest(image, 2.5)
  with pytest.raises(ValueError):
    image_io.resize_to(image, 0, 3)
  with pytest.raises(ValueError):
    image_io.resize_longest(np.zeros((4, 4)), 2)


# --- save_image -------------------------------------------------------------


def test_save_round_trip_png(tmp_path):
  pixels = _rgb(6, 9)
  path = tmp_path / 'out.png'
  image_io.save_image(path, pixels / 255.0)
  assert np.array_equal(np.asarray(Image.open(path)), pixels)
  assert os.listdir(tmp_path) == ['out.png']


def test_save_clips_and_rounds(tmp_path):
  image = np.array([[[-0.5, 1.5, 0.2 / 255],
                     [0.7 / 255, 254.4 / 255, 254.6 / 255]]], np.float32)
  path = tmp_path / 'out.png'
  image_io.save_image(path, image)
  np.testing.assert_array_equal(np.asarray(Image.open(path)),
                                [[[0, 255, 0], [1, 254, 255]]])


@pytest.mark.parametrize('ext, fmt', [('jpg', 'JPEG'), ('JPEG', 'JPEG'),
                                      ('tif', 'TIFF'), ('bmp', 'BMP'),
                                      ('webp', 'WEBP')])
def test_save_format_from_extension(tmp_path, ext, fmt):
  path = tmp_path / f'out.{ext}'
  image = np.full((8, 8, 3), [0.2, 0.4, 0.6], np.float32)
  image_io.save_image(path, image)
  with Image.open(path) as saved:
    assert saved.format == fmt
  np.testing.assert_allclose(image_io.load_image(path), image, atol=0.02)


def test_save_respects_umask(tmp_path):
  old = os.umask(0o022)
  try:
    image_io.save_image(tmp_path / 'out.png', np.zeros((2, 2, 3)))
  finally:
    os.umask(old)
  assert os.stat(tmp_path / 'out.png').st_mode & 0o777 == 0o644


def test_save_creates_missing_folder(tmp_path):
  path = tmp_path / 'a' / 'b' / 'out.png'
  image_io.save_image(path, np.zeros((2, 2, 3)))
  assert path.is_file()


@pytest.mark.parametrize('name', ['out.xyz', 'out', 'out.xbm'])
def test_save_unknown_extension(tmp_path, name):
  path = tmp_path / name
  with pytest.raises(ImageError) as e:
    image_io.save_image(path, np.zeros((2, 2, 3)))
  _assert_error(e, path, '.png', '.jpg', '.tif', '.bmp', '.webp')
  assert os.listdir(tmp_path) == []


def test_save_non_finite(tmp_path):
  path = tmp_path / 'out.png'
  image = np.zeros((2, 2, 3))
  image[0, 0, 0] = np.nan
  with pytest.raises(ImageError) as e:
    image_io.save_image(path, image)
  _assert_error(e, path, 'nan', 'nothing was written')
  assert os.listdir(tmp_path) == []


def test_save_disk_full_keeps_existing_file(tmp_path, monkeypatch):
  path = tmp_path / 'out.png'
  image_io.save_image(path, _rgb(4, 4) / 255.0)
  before = path.read_bytes()

  def full_disk(self, fp, *args, **kwargs):
    fp.write(b'\x89PNG half an image')
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(Image.Image, 'save', full_disk)
  with pytest.raises(ImageError) as e:
    image_io.save_image(path, np.ones((4, 4, 3)))
  _assert_error(e, path, 'disk is full', 'no existing file')
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ['out.png']


def test_save_rename_denied_keeps_existing_file(tmp_path, monkeypatch):
  path = tmp_path / 'out.png'
  path.write_bytes(b'precious')

  def deny(src, dst):
    raise PermissionError(13, 'Permission denied', str(dst))

  monkeypatch.setattr(image_io.os, 'replace', deny)
  with pytest.raises(ImageError) as e:
    image_io.save_image(path, np.ones((4, 4, 3)))
  _assert_error(e, path, 'permission denied')
  assert path.read_bytes() == b'precious'
  assert os.listdir(tmp_path) == ['out.png']


def test_save_interrupted_removes_temp(tmp_path, monkeypatch):
  def interrupt(self, fp, *args, **kwargs):
    fp.write(b'partial')
    raise KeyboardInterrupt

  monkeypatch.setattr(Image.Image, 'save', interrupt)
  with pytest.raises(KeyboardInterrupt):
    image_io.save_image(tmp_path / 'out.png', np.ones((4, 4, 3)))
  assert os.listdir(tmp_path) == []


def test_save_over_directory(tmp_path):
  path = tmp_path / 'out.png'
  path.mkdir()
  with pytest.raises(ImageError) as e:
    image_io.save_image(path, np.ones((2, 2, 3)))
  _assert_error(e, path, 'directory')


# --- check_output_path --------------------------------------------------------


def test_check_output_path_ok(tmp_path):
  image_io.check_output_path(tmp_path / 'out.jpg')
  image_io.check_output_path(tmp_path / 'new' / 'deeper' / 'out.png')
  assert os.listdir(tmp_path) == []  # nothing created


def test_check_output_path_bad_extension(tmp_path):
  path = tmp_path / 'out.txt'
  with pytest.raises(ImageError) as e:
    image_io.check_output_path(path, flag='output_image')
  _assert_error(e, path, '--output_image', '.png', '.jpg')


def test_check_output_path_parent_is_file(tmp_path):
  (tmp_path / 'file').write_bytes(b'x')
  path = tmp_path / 'file' / 'sub' / 'out.png'
  with pytest.raises(ImageError) as e:
    image_io.check_output_path(path, flag='out')
  _assert_error(e, path, '--out', 'not a folder')


def test_check_output_path_is_directory(tmp_path):
  path = tmp_path / 'out.png'
  path.mkdir()
  with pytest.raises(ImageError) as e:
    image_io.check_output_path(path)
  _assert_error(e, path, '--output_image', 'directory')


def test_check_output_path_not_writable(tmp_path, monkeypatch):
  path = tmp_path / 'new' / 'out.png'
  checked = []

  def no_access(p, mode, *args, **kwargs):
    checked.append(os.fspath(p))
    return False

  monkeypatch.setattr(image_io.os, 'access', no_access)
  with pytest.raises(ImageError) as e:
    image_io.check_output_path(path)
  _assert_error(e, path, '--output_image', 'not writable')
  assert checked == [str(tmp_path)]  # the nearest existing ancestor
