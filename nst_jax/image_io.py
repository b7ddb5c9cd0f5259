"""Reading and writing images for the command line, with one-line errors.

Every way an input file can be wrong (missing, unreadable, empty, truncated,
not an image, too large) becomes an `ImageError` that names the file and says
what to do, and writing an output never leaves a half-written or truncated
file behind.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import math
import os
import re
import secrets
import stat
import warnings

import numpy as np
from PIL import Image
from PIL import ImageOps

# Shown when an output extension is unknown; Pillow writes many more.
_COMMON_EXTENSIONS = ('.png', '.jpg', '.tif', '.bmp', '.webp')

# Lossy formats default to quality 75 in Pillow, which visibly blurs brush
# strokes; the result of a long optimisation deserves better.
_SAVE_OPTIONS = {
    'JPEG': {'quality': 95},
    'WEBP': {'quality': 95},
}

_ALPHA_MODES = frozenset({'RGBA', 'RGBa', 'LA', 'La', 'PA'})


class ImageError(ValueError):
  """One-line, user-facing message naming the file and what to do."""


def _show(path) -> str:
  # repr() keeps the message on one line whatever characters the name has.
  return repr(os.fspath(path))


def _extension(path) -> str:
  return os.path.splitext(os.fspath(path))[1].lower()


def _check_file(path, shown: str) -> None:
  """Refuses a path that is missing, unreadable, not a regular file or empty."""
  try:
    info = os.stat(path)
  except FileNotFoundError:
    raise ImageError(f'{shown} not found; check the path (relative paths '
                     f'start from {os.getcwd()!r})') from None
  except PermissionError:
    raise ImageError(f'{shown}: permission denied; make the file and its '
                     f'folders readable, or copy it somewhere '
                     f'readable') from None
  except OSError as e:
    raise ImageError(f'{shown} cannot be accessed ({e.strerror or e}); '
                     f'check the path') from None
  if stat.S_ISDIR(info.st_mode):
    raise ImageError(f'{shown} is a directory, not an image file; pass the '
                     f'path of an image file inside it')
  # Opening a FIFO or a device would block or read forever.
  if not stat.S_ISREG(info.st_mode):
    raise ImageError(f'{shown} is not a regular file; pass an image file')
  if info.st_size == 0:
    raise ImageError(f'{shown} is empty (0 bytes); re-export or re-download '
                     f'it')


def load_image(path, *, what: str = 'image') -> np.ndarray:
  """Reads an image file as RGB floats.

  The file is fully decoded here, so a truncated file fails now and not in
  the middle of a run. EXIF orientation is applied, so photographs taken with
  a rotated camera come out upright. Every colour mode is converted to RGB:
  8-bit data is divided by 255; 16-bit data (modes `I;16*` and `I`, e.g.
  16-bit PNG or TIFF) by 65535; float data (mode `F`) is taken to be in
  [0, 1] already. Values are clipped to [0, 1]. Transparent pixels are
  composited over WHITE (the usual look of a transparent image on paper or a
  web page). Of a multi-frame file (animated GIF, multi-page TIFF) only the
  first frame is used, with a warning. Images over `PIL.Image.MAX_IMAGE_PIXELS`
  are refused as possible decompression bombs.

  Args:
    path: the file to read.
    what: what the file is for, e.g. "content image" or "style image 2";
      used in error messages.

  Returns:
    float32 array [H, W, 3], RGB in [0, 1].

  Raises:
    ImageError: the file cannot be used; the message names it and says why.
  """
  shown = f'{what} {_show(path)}'
  _check_file(path, shown)

  try:
    fh = open(path, 'rb')
  except PermissionError:
    raise ImageError(f'{shown}: permission denied; make the file readable '
                     f'(e.g. chmod a+r) or copy it somewhere '
                     f'readable') from None
  except OSError as e:
    raise ImageError(f'{shown} cannot be opened ({e.strerror or e}); check the '
                     f'file') from None

  with fh:
    n_frames = 1
    try:
      # catch_warnings changes process-wide filters; load_image is not meant
      # to be called from several threads at once.
      with warnings.catch_warnings():
        warnings.simplefilter('error', Image.DecompressionBombWarning)
        image = Image.open(fh)
        n_frames = getattr(image, 'n_frames', 1)
        if n_frames > 1:
          image.seek(0)
        image.load()
        image = _upright(image, shown)
        array = _to_rgb_float(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
      raise ImageError(_bomb_message(shown, e)) from None
    except Image.UnidentifiedImageError:
      raise ImageError(_unidentified_message(shown, path)) from None
    except ImageError as e:
      raise ImageError(f'{shown}: {e}') from None
    # Pillow's decoders report corrupt data with many exception types
    # (OSError, SyntaxError, ValueError, EOFError, struct.error, ...); at this
    # boundary they all mean the same thing to the user.
    except Exception as e:  # pylint: disable=broad-except
      detail = ' '.join(str(e).split()) or type(e).__name__
      raise ImageError(f'{shown} could not be decoded, the file is corrupt '
                       f'or truncated ({detail}); re-export or re-download '
                       f'it') from None

  if n_frames > 1:
    warnings.warn(f'{shown} has {n_frames} frames; using only the first',
                  stacklevel=2)
  return array


def _upright(image: Image.Image, shown: str) -> Image.Image:
  """Applies the EXIF orientation; a broken EXIF block only costs a warning."""
  try:
    return ImageOps.exif_transpose(image)
  except Exception as e:  # pylint: disable=broad-except
    detail = ' '.join(str(e).split())
    warnings.warn(f'{shown}: unreadable EXIF orientation ignored ({detail})',
                  stacklevel=3)
    return image


def _bomb_message(shown: str, error: Exception) -> str:
  match = re.search(r'\((\d+) pixels\)', str(error))
  pixels = f'{int(match.group(1)):,} pixels' if match else 'too many pixels'
  return (f"{shown} has {pixels}, over Pillow's limit of "
          f'{Image.MAX_IMAGE_PIXELS:,} (PIL.Image.MAX_IMAGE_PIXELS) that '
          f'guards against decompression bombs; shrink it with an image '
          f'editor, or raise that limit if you trust the file')


def _unidentified_message(shown: str, path) -> str:
  ext = _extension(path)
  fmt = Image.registered_extensions().get(ext)
  if ext and (fmt is None or fmt not in Image.OPEN):
    return (f'{shown}: Pillow cannot read {ext!r} files; convert it to PNG '
            f'or JPEG')
  named = f' although its name ends in {ext!r}' if ext else ''
  return (f'{shown} is not a readable image{named} (Pillow does not '
          f'recognise its contents); check that it is really an image, or '
          f'convert it to PNG or JPEG')


def _to_rgb_float(image: Image.Image) -> np.ndarray:
  """Converts a decoded Pillow image of any mode to float32 [H, W, 3]."""
  mode = image.mode
  if mode.startswith('I;16') or mode == 'I':
    # Pillow has no 16-bit RGB mode, so high bit depths only reach us as one
    # grey channel; mode "I" is how older files and plugins hand 16 bits over.
    grey = np.asarray(image).astype(np.float32) / np.float32(65535.0)
    return _grey_to_rgb(np.clip(grey, 0.0, 1.0))
  if mode == 'F':
    grey = np.asarray(image, dtype=np.float32)
    if not np.all(np.isfinite(grey)):
      raise ImageError('it contains NaN or infinite values; save it again as '
                       'an 8- or 16-bit image')
    return _grey_to_rgb(np.clip(grey, 0.0, 1.0))

  has_alpha = mode in _ALPHA_MODES or 'transparency' in image.info
  if has_alpha:
    # Pillow applies palette transparency and un-premultiplies here.
    rgba = np.asarray(image.convert('RGBA'), dtype=np.float32) / 255.0
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    return np.ascontiguousarray(rgb * alpha + (1.0 - alpha), dtype=np.float32)
  if mode != 'RGB':
    try:
      image = image.convert('RGB')
    except ValueError:
      raise ImageError(f'its colour mode {mode!r} cannot be converted to '
                       f'RGB; convert the image to RGB first') from None
  return np.asarray(image, dtype=np.float32) / np.float32(255.0)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1),
                              dtype=np.float32)


def resize_longest(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes so that the longest side is `size`, keeping the aspect ratio.

  The other side is `other * size / longest` rounded half up, at least 1.
  Resampling is as in `resize_to`.

  Args:
    image: [H, W, 3] float image.
    size: the length of the longest side afterwards, in pixels.

  Returns:
    float32 [h, w, 3] with max(h, w) == size.
  """
  image = _check_image(image)
  return resize_to(image, *longest_side_shape(image.shape[:2], size))


def longest_side_shape(hw: tuple[int, int], size: int) -> tuple[int, int]:
  """(h, w) of an ``hw`` image after ``resize_longest(image, size)``; shapes only."""
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
    raise ValueError(f'size must be an integer, got {size!r}')
  if size < 1:
    raise ValueError(f'size must be at least 1, got {size}')
  h, w = hw
  # Half up rather than Python's half-to-even, so a 3:1 or 5:2 image always
  # gets the same size whatever the parity.
  other = max(1, int(math.floor(min(h, w) * size / max(h, w) + 0.5)))
  return (int(size), other) if h >= w else (other, int(size))


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes to exactly [height, width] (the aspect ratio may change).

  Each channel is resampled by Pillow's BICUBIC filter on 32-bit float data
  (mode "F"), so no precision is lost to 8 bits; when shrinking, the filter is
  widened by the scale factor, which antialiases. Bicubic ringing can
  overshoot, so the result is clipped to the input's own value range.

  Args:
    image: [H, W, 3] float image.
    height: rows afterwards.
    width: columns afterwards.

  Returns:
    float32 [height, width, 3].
  """
  image = _check_image(image)
  for name, value in (('height', height), ('width', width)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise ValueError(f'{name} must be an integer, got {value!r}')
    if value < 1:
      raise ValueError(f'{name} must be at least 1, got {value}')
  height, width = int(height), int(width)
  if image.shape[:2] == (height, width):
    return image.copy()
  channels = [
      np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]))
                 .resize((width, height), Image.Resampling.BICUBIC),
                 dtype=np.float32)
      for c in range(image.shape[-1])
  ]
  out = np.stack(channels, axis=-1)
  return np.clip(out, image.min(), image.max()).astype(np.float32)


def _check_image(image) -> np.ndarray:
  image = np.asarray(image, dtype=np.float32)
  if image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
    raise ValueError(f'expected an image of shape [H, W, 3], got '
                     f'{image.shape}')
  return image


def save_image(path, image: np.ndarray) -> None:
  """Writes an RGB float image, atomically.

  Values are clipped to [0, 1] and rounded to 8 bits. The format comes from
  the extension (any Pillow can write; JPEG and WebP at quality 95). The file
  is written under a temporary name in the same folder, flushed to disk and
  then renamed over the target, so an existing file at `path` is replaced
  whole or not touched at all, and a failure leaves no temporary file. A
  missing output folder is created (as `mkdir -p` would): the path has been
  checked by `check_output_path` before a long run, and losing the result to
  a missing folder at the end would be worse.

  Args:
    path: the output file; its extension chooses the format.
    image: [H, W, 3] float RGB, nominally in [0, 1].

  Raises:
    ImageError: unknown extension, non-finite values, or the write failed
      (disk full, permission denied, ...); the message names the path.
    ValueError: `image` is not [H, W, 3].
  """
  fmt = _output_format(path, 'output image')
  image = np.asarray(image, dtype=np.float32)
  if image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
    raise ValueError(f'expected an image of shape [H, W, 3], got '
                     f'{image.shape}')
  if not np.all(np.isfinite(image)):
    raise ImageError(f'output image {_show(path)}: the image has NaN or '
                     f'infinite values (the optimisation diverged?); nothing '
                     f'was written')
  pixels = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
  picture = Image.fromarray(pixels)

  path = os.fspath(path)
  target = os.path.abspath(path)
  folder = os.path.dirname(target)
  if os.path.isdir(target):
    raise ImageError(f'output image {_show(path)} is a directory; pass a '
                     f'file name')
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise ImageError(f'output image {_show(path)}: cannot create the folder '
                     f'{folder!r} ({e.strerror or e}); choose another '
                     f'path') from None

  # os.open with O_EXCL rather than mkstemp: mkstemp makes the file 0600,
  # which the rename would carry over to the result; this honours the umask
  # like an ordinary write.
  tmp = os.path.join(
      folder, f'.{os.path.basename(target)}.{secrets.token_hex(6)}.tmp')
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_BINARY', 0)
  try:
    fd = os.open(tmp, flags, 0o666)
  except OSError as e:
    raise ImageError(_write_error(path, e)) from None
  try:
    with os.fdopen(fd, 'wb') as fh:
      picture.save(fh, format=fmt, **_SAVE_OPTIONS.get(fmt, {}))
      fh.flush()
      os.fsync(fh.fileno())
    os.replace(tmp, target)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    if isinstance(e, Exception):
      raise ImageError(_write_error(path, e)) from None
    raise
  _fsync_folder(folder)


def _write_error(path, error: Exception) -> str:
  code = getattr(error, 'errno', None)
  if code == errno.ENOSPC:
    why, todo = 'the disk is full', 'free some space or choose another disk'
  elif code in (errno.EACCES, errno.EPERM):
    why, todo = 'permission denied', 'choose a folder you can write to'
  elif code == errno.EROFS:
    why, todo = 'read-only file system', 'choose a writable folder'
  else:
    why = ' '.join(str(getattr(error, 'strerror', None) or error).split())
    why = why or type(error).__name__
    todo = 'check the path and the disk'
  return (f'output image {_show(path)} could not be written ({why}); {todo}; '
          f'no existing file there was changed')


def _fsync_folder(folder: str) -> None:
  # Makes the rename itself durable; POSIX only, and best effort: the data is
  # already safe, so a failure here is no reason to report an error.
  if os.name != 'posix':
    return
  with contextlib.suppress(OSError):
    fd = os.open(folder, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


def _output_format(path, shown: str) -> str:
  """Returns the Pillow format name for `path`'s extension, or raises."""
  ext = _extension(path)
  common = ', '.join(_COMMON_EXTENSIONS)
  if not ext:
    raise ImageError(f'{shown} {_show(path)} has no file extension; add one '
                     f'to choose the format ({common})')
  fmt = Image.registered_extensions().get(ext)
  if fmt is None or not _can_write_rgb(fmt):
    raise ImageError(f'{shown} {_show(path)}: Pillow cannot write {ext!r} '
                     f'files as RGB; use one of {common}')
  return fmt


@functools.lru_cache(maxsize=None)
def _can_write_rgb(fmt: str) -> bool:
  # Image.SAVE also lists stub formats (needing an external handler) and ones
  # that only take other modes (XBM: 1-bit); encoding one pixel is the check
  # that cannot disagree with the real save.
  if fmt not in Image.SAVE:
    return False
  try:
    Image.new('RGB', (1, 1)).save(io.BytesIO(), format=fmt,
                                  **_SAVE_OPTIONS.get(fmt, {}))
  except Exception:  # pylint: disable=broad-except
    return False
  return True


def check_output_path(path, *, flag: str = 'output_image') -> None:
  """Checks, before any computation, that an image can be saved at `path`.

  Nothing is created: the extension must be one Pillow can write, the target
  must not be a directory, and the nearest existing ancestor of its folder
  must be a writable directory (`save_image` creates the missing folders).

  Args:
    path: the output file the user asked for.
    flag: the flag that gave `path`, named in the message.

  Raises:
    ImageError: the message names the flag, the path and the fix.
  """
  shown = flag if flag.startswith('-') else f'--{flag}'
  if not os.fspath(path):
    raise ImageError(f'{shown} is empty; pass an output file such as '
                     f'result.png')
  target = os.path.abspath(os.fspath(path))
  if os.path.isdir(target):
    example = os.path.join(os.fspath(path), 'result.png')
    raise ImageError(f'{shown} {_show(path)} is a directory; pass a file '
                     f'name such as {example!r}')
  _output_format(path, shown)
  ancestor = os.path.dirname(target)
  while not os.path.exists(ancestor):
    parent = os.path.dirname(ancestor)
    if parent == ancestor:
      break
    ancestor = parent
  if not os.path.isdir(ancestor):
    raise ImageError(f'{shown} {_show(path)}: {ancestor!r} is a file, not a '
                     f'folder; choose another path')
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise ImageError(f'{shown} {_show(path)}: the folder {ancestor!r} is not '
                     f'writable; choose a folder you can write to')
