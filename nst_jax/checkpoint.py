"""Checkpoint files: a pytree of arrays plus JSON metadata in one .npz, written atomically.

The run engine never touches files: an interrupted ``transfer.stylize`` hands
back a ``transfer.RunState``, and whoever holds it (a script, a training loop)
decides what to store beside it and where.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np


class CheckpointError(ValueError):
  """The file is not a readable checkpoint."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
  """Writes ``state['arrays']`` (a list of arrays) and the rest of ``state`` (JSON).

  The file is written to a temporary name in the same folder and renamed, so
  an existing checkpoint is never left half-written.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  meta = json.dumps({k: v for k, v in state.items() if k != 'arrays'})
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, meta=np.frombuffer(meta.encode(), np.uint8),
               **{f'leaf{i}': np.asarray(a) for i, a in enumerate(state['arrays'])})
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, list[np.ndarray]]:
  """Returns (metadata, arrays) of a file written by ``save_checkpoint``.

  Raises:
    CheckpointError: the file is missing, damaged or not a checkpoint.
  """
  try:
    with np.load(path) as z:
      meta = json.loads(z['meta'].tobytes().decode())
      arrays = [z[f'leaf{i}'] for i in range(len(z.files) - 1)]
  # A damaged file fails in zipfile, json, numpy or pickle, each with its own
  # exception types; to the caller they all mean the same.
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
          pickle.UnpicklingError) as e:
    detail = ' '.join(str(e).split()) or type(e).__name__
    raise CheckpointError(f'{str(path)!r} is not a readable nst_jax checkpoint '
                          f'({type(e).__name__}: {detail})') from None
  if not isinstance(meta, dict):
    raise CheckpointError(f'{str(path)!r} is not a readable nst_jax checkpoint (no metadata)')
  return meta, arrays
