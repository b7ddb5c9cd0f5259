"""Video in and out for real-time stylization: frames through a function, batch by batch.

Frames are decoded and encoded by ffmpeg through imageio (the
``imageio-ffmpeg`` wheel carries an ffmpeg binary: ``pip install -e
'.[video]'``). `transform_video` feeds fixed-size batches of frames to a
function (one compiled program serves them all: the last batch is padded),
writes H.264 to a temporary file that is renamed over the output only when
every frame is written, and measures flicker. The audio track is not copied
(the result says whether there was one).

Errors about files are `VideoError` (a ValueError) naming the file.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import queue
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from nst_jax import image_io

# Containers that take the H.264 stream written here.
OUTPUT_EXTENSIONS = ('.mp4', '.mov', '.mkv', '.avi')


class VideoError(ValueError):
  """One-line, user-facing message naming the video file and what to do."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What ffmpeg reports about a video file.

  Attributes:
    fps: frames per second.
    width, height: frame size in pixels.
    duration: seconds (0 if unknown).
    codec: the video codec.
    audio_codec: the audio codec, or None if there is no audio track.
  """
  fps: float
  width: int
  height: int
  duration: float
  codec: str
  audio_codec: str | None

  @property
  def estimated_frames(self) -> int | None:
    """Frame count from duration x fps (ffmpeg does not know it exactly)."""
    frames = int(round(self.duration * self.fps))
    return frames if frames > 0 else None


@dataclasses.dataclass(frozen=True)
class VideoResult:
  """What `transform_video` did.

  Attributes:
    frames: frames written.
    fps: frames per second of the output (the input's).
    width, height: output frame size.
    seconds: wall time of the whole pass (decode, compute, encode).
    flicker: mean |difference of consecutive output frames| divided by the
      same for the input frames (at the output size); 1 means the output
      changes as much from frame to frame as the input, above 1 that the
      stylization adds flicker. None for fewer than two frames or a still
      input.
    audio_codec: the input's audio codec (not copied), or None.
  """
  frames: int
  fps: float
  width: int
  height: int
  seconds: float
  flicker: float | None
  audio_codec: str | None


def _show(path) -> str:
  return repr(os.fspath(path))


def _check_input_file(path, what: str) -> None:
  shown = f'{what} {_show(path)}'
  try:
    info = os.stat(path)
  except FileNotFoundError:
    raise VideoError(f'{shown} not found; check the path (relative paths start from '
                     f'{os.getcwd()!r})') from None
  except OSError as e:
    raise VideoError(f'{shown} cannot be accessed ({e.strerror or e}); check the path') from None
  if stat.S_ISDIR(info.st_mode):
    raise VideoError(f'{shown} is a directory; pass a video file')
  if not stat.S_ISREG(info.st_mode):
    raise VideoError(f'{shown} is not a regular file; pass a video file')
  if info.st_size == 0:
    raise VideoError(f'{shown} is empty (0 bytes); re-export or re-download it')
  if not os.access(path, os.R_OK):
    raise VideoError(f'{shown}: permission denied; make the file readable')


def _ffmpeg_reason(error: Exception) -> str:
  """The last line of ffmpeg's complaint (e.g. "moov atom not found"), not its banner."""
  text = str(error)
  if '=== stderr ===' in text:
    lines = [line.strip() for line in text.split('=== stderr ===', 1)[1].splitlines()]
    lines = [re.sub(r'^\[[^\]]*\]\s*', '', line) for line in lines if line.startswith('[')]
    if lines:
      return '; '.join(dict.fromkeys(lines))[:200]
    text = text.split('=== stderr ===', 1)[0]
  return ' '.join(text.split())[:200] or type(error).__name__


def _imageio():
  try:
    import imageio.v2 as iio
    import imageio_ffmpeg  # pylint: disable=unused-import
  except ImportError:
    raise VideoError("video needs imageio and imageio-ffmpeg: pip install -e '.[video]'") \
        from None
  return iio


def _reader(path, what: str):
  iio = _imageio()
  try:
    return iio.get_reader(os.fspath(path), format='FFMPEG')
  except Exception as e:  # pylint: disable=broad-except
    # imageio/ffmpeg report an unreadable file with OSError, RuntimeError,
    # IndexError...; to the user they all mean "not a video it can decode".
    detail = _ffmpeg_reason(e)
    raise VideoError(f'{what} {_show(path)} could not be read as a video ({detail}); '
                     'check that it is a video file (e.g. MP4), or re-encode it') from None


def probe(path, *, what: str = 'video') -> VideoInfo:
  """Reads a video file's metadata (and checks that ffmpeg can open it).

  Raises:
    VideoError: missing, empty, unreadable or not a video; names the file.
  """
  _check_input_file(path, what)
  reader = _reader(path, what)
  try:
    meta = reader.get_meta_data()
  finally:
    reader.close()
  width, height = meta.get('size') or (0, 0)
  fps = float(meta.get('fps') or 0.0)
  if not width or not height or not fps or not np.isfinite(fps):
    raise VideoError(f'{what} {_show(path)} has no readable video stream; pass a video file')
  duration = float(meta.get('duration') or 0.0)
  return VideoInfo(fps=fps, width=int(width), height=int(height),
                   duration=duration if np.isfinite(duration) else 0.0,
                   codec=str(meta.get('codec', '?')), audio_codec=meta.get('audio_codec'))


def read_frames(path, *, what: str = 'video') -> Iterator[np.ndarray]:
  """Yields the frames of a video as float32 [H, W, 3] RGB in [0, 1].

  Raises:
    VideoError: the file cannot be decoded (also part-way through).
  """
  _check_input_file(path, what)
  reader = _reader(path, what)
  try:
    frames = iter(reader)
    while True:
      try:
        frame = next(frames)
      except StopIteration:
        return
      except Exception as e:  # pylint: disable=broad-except
        detail = _ffmpeg_reason(e)
        raise VideoError(f'{what} {_show(path)} could not be decoded ({detail}); the file '
                         'may be truncated or damaged; re-encode it') from None
      yield np.asarray(frame, np.float32)[..., :3] / np.float32(255.0)
  finally:
    reader.close()


def check_output_path(path, *, flag: str = 'output_video') -> None:
  """Checks, creating nothing, that a video can be written at ``path``.

  Raises:
    VideoError: an extension other than OUTPUT_EXTENSIONS, a directory, or a
      folder that cannot be written; the message names ``--flag``.
  """
  shown = f'--{flag} {_show(path)}'
  if not os.fspath(path):
    raise VideoError(f'--{flag} is empty; pass an output file such as out.mp4')
  target = os.path.abspath(os.fspath(path))
  if os.path.isdir(target):
    raise VideoError(f'{shown} is a directory; pass a file name such as '
                     f'{os.path.join(os.fspath(path), "out.mp4")!r}')
  ext = os.path.splitext(target)[1].lower()
  if ext not in OUTPUT_EXTENSIONS:
    raise VideoError(f'{shown}: cannot write {ext or "extension-less"!r} videos; use one of '
                     f'{", ".join(OUTPUT_EXTENSIONS)}')
  ancestor = os.path.dirname(target)
  while not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise VideoError(f'{shown}: {ancestor!r} is a file, not a folder; choose another path')
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise VideoError(f'{shown}: the folder {ancestor!r} is not writable; choose a folder you '
                     'can write to')


def output_size(height: int, width: int, size: int | None) -> tuple[int, int]:
  """Frame size for longest side ``size`` (None: keep), rounded down to even sides.

  H.264 in the widely playable yuv420p format needs even sides; at most one
  row and one column of the scaled frame are lost.
  """
  if size:
    scale = size / max(height, width)
    height = max(2, int(np.floor(height * scale + 0.5)))
    width = max(2, int(np.floor(width * scale + 0.5)))
  return max(2, height - height % 2), max(2, width - width % 2)


class _Writer:
  """H.264 writer to a temporary file in the target's folder, renamed on success."""

  def __init__(self, path, fps: float, quality: int):
    self.path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(self.path)
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(name)
    # The extension stays last: ffmpeg picks the container from it.
    self.tmp = os.path.join(folder, f'.{stem}.{secrets.token_hex(6)}.tmp{ext}')
    self.fps, self.quality, self.writer = fps, quality, None

  def write(self, frames_uint8: np.ndarray) -> None:
    if self.writer is None:
      iio = _imageio()
      self.writer = iio.get_writer(self.tmp, format='FFMPEG', fps=self.fps, codec='libx264',
                                   quality=self.quality, pixelformat='yuv420p',
                                   macro_block_size=1, ffmpeg_log_level='error')
    for frame in frames_uint8:
      self.writer.append_data(frame)

  def commit(self) -> None:
    self.writer.close()
    os.replace(self.tmp, self.path)

  def abort(self) -> None:
    if self.writer is not None:
      with contextlib.suppress(Exception):
        self.writer.close()
    with contextlib.suppress(OSError):
      os.unlink(self.tmp)


def _frame_batches(src, height: int, width: int, batch_size: int
                   ) -> Iterator[list[np.ndarray]]:
  """Lists of up to ``batch_size`` frames of ``src``, resized to (height, width)."""
  batch = []
  for frame in read_frames(src):
    if frame.shape[:2] != (height, width):
      frame = image_io.resize_to(frame, height, width)
    batch.append(frame)
    if len(batch) == batch_size:
      yield batch
      batch = []
  if batch:
    yield batch


class _Prefetch:
  """Runs an iterator in a background thread, ``depth`` items ahead.

  Iterating yields its items in order and re-raises its exception; ``close``
  stops the thread (and closes the iterator) early.
  """

  _DONE = object()

  def __init__(self, iterator: Iterator, depth: int = 2):
    self._queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, args=(iterator,), daemon=True,
                                    name='nst_jax_decode')
    self._thread.start()

  def _fill(self, iterator: Iterator) -> None:
    try:
      for item in iterator:
        if not self._put(item):
          break
    except BaseException as e:  # pylint: disable=broad-except
      self._put(e)
      return
    finally:
      close = getattr(iterator, 'close', None)
      if close:
        close()
    self._put(self._DONE)

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def __iter__(self):
    while True:
      item = self._queue.get()
      if item is self._DONE:
        return
      if isinstance(item, BaseException):
        raise item
      yield item

  def close(self) -> None:
    self._stop.set()
    self._thread.join()


def _step_differences(frames: np.ndarray, previous: np.ndarray | None) -> float:
  """Sum over consecutive pairs (``previous`` first, if any) of mean |difference|."""
  if previous is not None:
    frames = np.concatenate([previous[None], frames])
  if len(frames) < 2:
    return 0.0
  return float(np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3)).sum())


class _FlickerMeter:
  """Counts frames and sums frame-to-frame change of the input and the output.

  Batches are added in order; each batch's first frame is compared with the
  previous batch's last.
  """

  def __init__(self):
    self.frames = 0
    self._diff_in = self._diff_out = 0.0
    self._prev_in = self._prev_out = None

  def add(self, frames_in: np.ndarray, frames_out: np.ndarray) -> None:
    self._diff_in += _step_differences(frames_in, self._prev_in)
    self._diff_out += _step_differences(frames_out, self._prev_out)
    self._prev_in, self._prev_out = frames_in[-1], frames_out[-1]
    self.frames += len(frames_in)

  def flicker(self) -> float | None:
    """Output change / input change (None with under two frames or a still input)."""
    if self.frames > 1 and self._diff_in > 0:
      return self._diff_out / self._diff_in
    return None


def _apply_padded(fn: Callable[[np.ndarray], np.ndarray], batch: list[np.ndarray],
                  batch_size: int, height: int, width: int) -> np.ndarray:
  """``fn`` on ``batch`` padded to ``batch_size`` (its last frame repeated); the real outputs.

  Raises:
    ValueError: ``fn`` returned frames other than [height, width, 3].
  """
  n = len(batch)
  padded = np.stack(batch + [batch[-1]] * (batch_size - n))
  out = np.asarray(fn(padded), np.float32)[:n]
  if out.shape != (n, height, width, 3):
    raise ValueError(f'fn returned frames of shape {out.shape[1:]}, expected '
                     f'{(height, width, 3)}')
  return out


def _to_uint8(frames: np.ndarray) -> np.ndarray:
  """Frames in [0, 1] (clipped) as rounded 8-bit values."""
  return np.rint(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)


def _map_overlapped(batches: _Prefetch, process: Callable[[list[np.ndarray]], np.ndarray],
                    write: Callable[[np.ndarray], None]) -> None:
  """``write(process(batch))`` for every batch, each write in a thread one batch behind.

  Decoding (in ``batches``' thread) runs one batch ahead and encoding one
  behind, so that ffmpeg's pipes overlap the computation. Re-raises the
  first error of either; both threads have stopped when this returns.
  """
  encoder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='nst_jax_encode')
  pending = None
  try:
    for batch in batches:
      out = process(batch)
      if pending is not None:
        pending.result()  # Raises the encoder's error, if any.
      pending = encoder.submit(write, out)
    if pending is not None:
      pending.result()
  finally:
    batches.close()
    encoder.shutdown(wait=True)


def transform_video(src, dst, fn: Callable[[np.ndarray], np.ndarray], *,
                    batch_size: int = 8, size: int | None = None, quality: int = 7,
                    progress: Callable[[int, int | None], None] | None = None) -> VideoResult:
  """Decodes ``src``, maps batches of frames through ``fn``, encodes ``dst``.

  Args:
    src: input video file.
    dst: output video file (OUTPUT_EXTENSIONS); written under a temporary
      name and renamed at the end, so a failure leaves no partial file and an
      existing ``dst`` untouched.
    fn: [B, h, w, 3] float32 frames in [0, 1] -> [B, h, w, 3] in [0, 1]; always
      called with B = ``batch_size`` (the last batch is padded by repeating
      its last frame), so a jitted ``fn`` compiles once.
    batch_size: frames per call of ``fn``.
    size: longest side of the processed frames (None: the input's); sides
      are rounded down to even numbers (`output_size`).
    quality: imageio's 0-10 quality for libx264 (7: CRF 15, visually lossless
      for most material).
    progress: called as ``progress(frames_done, estimated_total_or_None)``
      after each batch.
  Returns:
    A `VideoResult` (frames, fps, size, seconds, flicker, audio codec).
  Raises:
    VideoError: ``src`` cannot be read or has no frames, or ``dst`` cannot be
      written; names the file.
  """
  t0 = time.perf_counter()
  info = probe(src)
  height, width = output_size(info.height, info.width, size)
  writer = _Writer(dst, info.fps, quality)
  meter = _FlickerMeter()

  def process(batch: list[np.ndarray]) -> np.ndarray:
    out = _apply_padded(fn, batch, batch_size, height, width)
    meter.add(np.stack(batch), out)
    if progress:
      progress(meter.frames, info.estimated_frames)
    return _to_uint8(out)

  batches = _Prefetch(_frame_batches(src, height, width, batch_size))
  try:
    _map_overlapped(batches, process, writer.write)
    if meter.frames == 0:
      raise VideoError(f'video {_show(src)} has no frames that could be decoded; pass a '
                       'video file with a video stream')
    writer.commit()
  except OSError as e:
    writer.abort()
    raise VideoError(f'output video {_show(dst)} could not be written '
                     f'({e.strerror or e}); check the folder and the disk') from None
  except BaseException:
    writer.abort()
    raise
  return VideoResult(frames=meter.frames, fps=info.fps, width=width, height=height,
                     seconds=time.perf_counter() - t0, flicker=meter.flicker(),
                     audio_codec=info.audio_codec)
