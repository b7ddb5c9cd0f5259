"""Training batches from a folder of photographs: random crops, flips, prefetch.

Batch ``step`` is a pure function of ``(seed, step)`` and of which files are
readable: the photo order is a fresh permutation per epoch drawn from the seed,
and each crop's position and flip come from a generator seeded by
``(seed, step, slot)``. A run that stores its step in a checkpoint therefore
sees exactly the same batches when it resumes. Decoding happens in background
threads, a few steps ahead of the training loop, so the device does not wait.

A photo that cannot be read is skipped with one warning (``warnings.warn``),
counted in ``PhotoBatches.skipped``, and replaced by the next readable photo of
the same permutation, so the order stays deterministic.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from nst_jax import image_io

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.gif', '.ppm')


def list_photos(folder: str | os.PathLike) -> list[str]:
  """Image files directly in ``folder`` (by extension), sorted by name.

  Raises:
    ValueError: the folder does not exist or holds no image files.
  """
  path = Path(folder)
  if not path.is_dir():
    raise ValueError(f'folder {str(folder)!r} does not exist or is not a folder')
  files = sorted(str(p) for p in path.iterdir()
                 if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
  if not files:
    raise ValueError(f'folder {str(folder)!r} holds no image files '
                     f'({", ".join(IMAGE_EXTENSIONS)})')
  return files


def prepare_photo(rgb: np.ndarray, image_size: int, crop_size: int) -> np.ndarray:
  """Resizes a photo to longest side ``image_size``, at least ``crop_size`` on each side.

  Args:
    rgb: [H, W, 3] float RGB in [0, 1].
    image_size: longest side after resizing (the scale stylization runs at);
      0 keeps the photo's size.
    crop_size: the shorter side is scaled up to this if it would be smaller.
  Returns:
    uint8 [h, w, 3] (uint8 keeps the in-memory cache small).
  """
  if image_size:
    rgb = image_io.resize_longest(rgb, image_size)
  h, w = rgb.shape[:2]
  if min(h, w) < crop_size:
    f = crop_size / min(h, w)
    rgb = image_io.resize_to(rgb, max(crop_size, round(h * f)), max(crop_size, round(w * f)))
  return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def random_crop(photo: np.ndarray, crop_size: int, rng: np.random.Generator,
                flip: bool = True) -> np.ndarray:
  """One random ``crop_size`` square of ``photo`` [h, w, 3], mirrored half the time."""
  h, w = photo.shape[:2]
  top = int(rng.integers(0, h - crop_size + 1))
  left = int(rng.integers(0, w - crop_size + 1))
  crop = photo[top:top + crop_size, left:left + crop_size]
  if flip and rng.random() < 0.5:
    crop = crop[:, ::-1]
  return crop


class PhotoBatches:
  """Deterministic batches of random crops from a list of photo files.

  Args:
    paths: image files (e.g. ``list_photos(folder)``).
    batch_size: crops per batch.
    crop_size: side of each square crop, in pixels.
    seed: fixes the photo order and the crops.
    image_size: each photo is resized to this longest side before cropping
      (0: keep its size).
    flip: mirror half of the crops left-right.
    num_threads: decoding threads.
    prefetch: batches decoded ahead of the one asked for.
    cache_photos: keep up to this many decoded photos in memory (LRU).

  ``batch(step)`` returns float32 [batch_size, crop_size, crop_size, 3] RGB in
  [0, 1]; ``iterate(start_step)`` yields ``(step, batch)`` with prefetching.
  """

  def __init__(self, paths: Sequence[str], batch_size: int, crop_size: int = 256, *,
               seed: int = 0, image_size: int = 512, flip: bool = True,
               num_threads: int = 2, prefetch: int = 4, cache_photos: int = 512):
    if not paths:
      raise ValueError('paths is empty: give at least one photo')
    if batch_size < 1 or crop_size < 1:
      raise ValueError(f'batch_size and crop_size must be positive, got {batch_size}, '
                       f'{crop_size}')
    self.paths = list(paths)
    self.batch_size = batch_size
    self.crop_size = crop_size
    self.seed = seed
    self.image_size = image_size
    self.flip = flip
    self.num_threads = max(1, num_threads)
    self.prefetch = max(0, prefetch)
    self._cache_size = cache_photos
    self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._bad: dict[int, str] = {}
    self._lock = threading.Lock()
    self._perms: dict[int, np.ndarray] = {}

  # -- Which photo, deterministically. -------------------------------------

  def _perm(self, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._perms.get(epoch)
      if perm is None:
        perm = np.random.default_rng([self.seed, 0x5EED, epoch]).permutation(len(self.paths))
        self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 2}
        self._perms[epoch] = perm
      return perm

  def _photo(self, index: int) -> np.ndarray | None:
    """The prepared photo ``index``, or None (warned once) if it cannot be read."""
    with self._lock:
      if index in self._bad:
        return None
      photo = self._cache.get(index)
      if photo is not None:
        self._cache.move_to_end(index)
        return photo
    try:
      rgb = image_io.load_image(self.paths[index], what='training photo')
      photo = prepare_photo(rgb, self.image_size, self.crop_size)
    except (image_io.ImageError, OSError, ValueError) as e:
      with self._lock:
        if index not in self._bad:
          self._bad[index] = str(e)
          warnings.warn(f'skipping unreadable photo {self.paths[index]}: '
                        f'{" ".join(str(e).split())}', stacklevel=2)
      return None
    with self._lock:
      self._cache[index] = photo
      while len(self._cache) > self._cache_size:
        self._cache.popitem(last=False)
    return photo

  def _example(self, step: int, slot: int) -> np.ndarray:
    n = len(self.paths)
    position = step * self.batch_size + slot
    epoch, offset = divmod(position, n)
    perm = self._perm(epoch)
    for k in range(n):  # The next readable photo of the same permutation.
      photo = self._photo(int(perm[(offset + k) % n]))
      if photo is not None:
        rng = np.random.default_rng([self.seed, step, slot])
        return random_crop(photo, self.crop_size, rng, self.flip)
    raise ValueError(f'none of the {n} photos could be read')

  def batch(self, step: int) -> np.ndarray:
    """Batch ``step``: float32 [batch_size, crop_size, crop_size, 3] in [0, 1]."""
    crops = [self._example(step, b) for b in range(self.batch_size)]
    return np.stack(crops).astype(np.float32) / 255.0

  # -- Prefetching. --------------------------------------------------------

  def iterate(self, start_step: int = 0, num_steps: int | None = None
              ) -> Iterator[tuple[int, np.ndarray]]:
    """Yields ``(step, batch(step))`` from ``start_step``, decoded ahead in threads."""
    end = None if num_steps is None else start_step + num_steps
    pool = concurrent.futures.ThreadPoolExecutor(self.num_threads,
                                                 thread_name_prefix='nst_jax-photos')
    pending: collections.deque = collections.deque()
    next_step = start_step
    try:
      while True:
        while len(pending) <= self.prefetch and (end is None or next_step < end):
          pending.append((next_step, pool.submit(self.batch, next_step)))
          next_step += 1
        if not pending:
          return
        step, future = pending.popleft()
        yield step, future.result()
    finally:
      for _, future in pending:
        future.cancel()
      pool.shutdown(wait=False, cancel_futures=True)

  # -- Reporting. ----------------------------------------------------------

  @property
  def skipped(self) -> dict[str, str]:
    """Photos skipped so far: path -> why."""
    with self._lock:
      return {self.paths[i]: why for i, why in sorted(self._bad.items())}

  def check_readable(self, max_workers: int = 2, limit: int | None = 1000) -> int:
    """Decodes photos once (warming the cache); returns how many are readable.

    Args:
      max_workers: decoding threads.
      limit: decode at most this many, the first of the first epoch's order
        (None: all); a large folder's other photos are checked as they come.
    Raises:
      ValueError: none of those decoded is readable.
    """
    order = [int(i) for i in self._perm(0)][:limit]
    with concurrent.futures.ThreadPoolExecutor(max_workers) as pool:
      ok = sum(p is not None for p in pool.map(self._photo, order))
    if not ok:
      tried = 'photos' if len(order) == len(self.paths) else 'photos tried'
      raise ValueError(f'none of the {len(order)} {tried} could be read')
    return ok
