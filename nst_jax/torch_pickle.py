"""Read files written by `torch.save` into numpy arrays, without importing torch.

Two layouts exist. The zip layout (the default since torch 1.6) is an archive
holding `<prefix>/data.pkl`, one member `<prefix>/data/<key>` of raw bytes per
storage and usually `<prefix>/byteorder`; the pickle names storages by the
persistent id `('storage', storage_type, key, location, numel)`. The legacy
layout (`_use_new_zipfile_serialization=False`) is a run of pickles: the magic
number, the protocol version 1001, a sys_info dict, the object itself (ids
`('storage', storage_type, key, location, numel, view_metadata)`), the sorted
list of storage keys, and then per key a little-endian int64 holding the number
of *elements* (of that storage's dtype) followed by their raw bytes.

`storage_type` is a class global such as `torch.FloatStorage`, or
`torch.storage.UntypedStorage` (raw bytes) for a bare untyped storage. Tensors
are rebuilt by `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
...)`. Unpickling goes through an allow-list, so a file can never run code.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# Storage class name -> little-endian numpy dtype ("bfloat16" is resolved lazily).
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16", "ByteStorage": "|u1", "CharStorage": "|i1",
    "ShortStorage": "<i2", "IntStorage": "<i4", "LongStorage": "<i8",
    "BoolStorage": "|b1", "ComplexFloatStorage": "<c8",
    "ComplexDoubleStorage": "<c16", "UntypedStorage": "|u1",
}
# `torch.float32` and friends pickle as the global `torch.<name>`.
_TORCH_DTYPES = {
    "float32": "<f4", "float": "<f4", "float64": "<f8", "double": "<f8",
    "float16": "<f2", "half": "<f2", "bfloat16": "bfloat16", "uint8": "|u1",
    "int8": "|i1", "int16": "<i2", "short": "<i2", "int32": "<i4", "int": "<i4",
    "int64": "<i8", "long": "<i8", "bool": "|b1", "complex64": "<c8",
    "complex128": "<c16",
}


class TorchFileError(ValueError):
    """Raised with a message that names the file and what is wrong."""


class _FormatError(Exception):
    """Internal: what is wrong, without the path (added by `load`)."""


def _np_dtype(name: str) -> np.dtype:
    if name != "bfloat16":
        return np.dtype(name)
    try:
        import ml_dtypes  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise _FormatError(
            "holds a bfloat16 tensor; install ml_dtypes to read it") from None
    return np.dtype(ml_dtypes.bfloat16)


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """What a storage class global unpickles to: just its element dtype."""
    dtype: np.dtype


@dataclasses.dataclass(frozen=True, eq=False)
class _Storage:
    """A storage whose bytes (`blobs[key]`) may only arrive after the pickle."""
    key: str
    dtype: np.dtype
    numel: int
    byte_offset: int = 0  # Non-zero only for legacy storage views.


@dataclasses.dataclass(frozen=True, eq=False)
class _Tensor:
    """A tensor to cut out of its storage once all storages are read."""
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any,
                    stride: Any) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise _FormatError(f"tensor built from {type(storage).__name__}, not a storage")
    return _Tensor(storage, int(storage_offset), tuple(map(int, size)),
                   tuple(map(int, stride)))


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> _Tensor:
    del requires_grad, backward_hooks  # Meaningless for arrays.
    if metadata:  # conj/neg bits would change the values.
        raise _FormatError(f"tensor metadata {metadata!r} is not supported")
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, state: Any = None) -> Any:
    del requires_grad, backward_hooks, state  # A parameter is just its data.
    return data


def _encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles spell `bytes` as `_codecs.encode(str, 'latin1')`.
    if encoding not in ("latin1", "latin-1"):
        raise _FormatError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_GLOBALS: dict[str, Callable[..., Any]] = {
    "collections.OrderedDict": collections.OrderedDict,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.Size": tuple,
    "_codecs.encode": _encode,
}


class _Unpickler(pickle.Unpickler):
    """Resolves only allow-listed globals; anything else is an error."""

    def __init__(self, file: BinaryIO,
                 persistent_load: Callable[[Any], Any] | None = None) -> None:
        super().__init__(file)
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        if f"{module}.{name}" in _GLOBALS:
            return _GLOBALS[f"{module}.{name}"]
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(_np_dtype(_STORAGE_DTYPES[name]))
        if module == "torch" and name in _TORCH_DTYPES:
            return _np_dtype(_TORCH_DTYPES[name])
        raise _FormatError(f"pickle refers to {module}.{name}, which is not allowed")

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise _FormatError("unexpected persistent id in a header pickle")
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            kind = pid[0] if isinstance(pid, tuple) and pid else pid
            raise _FormatError(f"unsupported persistent id {kind!r} "
                               "(only tensors are supported, not pickled modules)")
        if not isinstance(pid[1], _StorageType):
            raise _FormatError(f"storage type {pid[1]!r} is not a storage class")
        return self._persistent(pid)


def _to_array(t: _Tensor, blobs: Mapping[str, bytes]) -> np.ndarray:
    """Copies the strided view `t` out of its storage into a C-contiguous array."""
    s = t.storage
    if s.key not in blobs:
        raise _FormatError(f"storage {s.key!r} is missing")
    if len(t.shape) != len(t.stride) or min((t.offset, *t.shape, *t.stride)) < 0:
        raise _FormatError(f"bad tensor layout: offset {t.offset}, "
                           f"size {t.shape}, stride {t.stride}")
    if 0 in t.shape:
        return np.zeros(t.shape, s.dtype)
    extent = t.offset + 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride))
    buf, size = blobs[s.key], s.dtype.itemsize
    if extent > s.numel or s.byte_offset + extent * size > len(buf):
        raise _FormatError(f"storage {s.key!r} is shorter than needed: it holds "
                           f"{min(s.numel, (len(buf) - s.byte_offset) // size)} "
                           f"elements, the tensor needs {extent}")
    flat = np.frombuffer(buf, s.dtype, count=extent, offset=s.byte_offset)
    view = np.lib.stride_tricks.as_strided(
        flat[t.offset:], t.shape, [st * size for st in t.stride], writeable=False)
    return np.array(view, order="C", copy=True)


def _materialize(obj: Any, blobs: Mapping[str, bytes], memo: dict[int, Any]) -> Any:
    """Replaces every `_Tensor`/`_Storage` in nested containers by an array."""
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, _Tensor):
        out = _to_array(obj, blobs)
    elif isinstance(obj, _Storage):
        out = _to_array(_Tensor(obj, 0, (obj.numel,), (1,)), blobs)
    elif isinstance(obj, dict):
        out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
        for key, value in obj.items():
            out[key] = _materialize(value, blobs, memo)
    elif isinstance(obj, (list, tuple)):
        out = type(obj)(_materialize(v, blobs, memo) for v in obj)
    else:
        out = obj
    memo[id(obj)] = out
    return out


def _load_zip(data: BinaryIO) -> Any:
    with zipfile.ZipFile(data) as zf:
        pkls = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if not pkls:
            raise _FormatError("zip archive has no data.pkl (not a torch.save file)")
        pkl = min(pkls, key=len)
        prefix = pkl[: -len("data.pkl")]
        if prefix + "byteorder" in zf.namelist():
            order = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if order != "little":
                raise _FormatError(f"byte order {order!r} is not supported "
                                   "(only little-endian files)")
        storages: dict[str, _Storage] = {}

        def persistent_load(pid: tuple[Any, ...]) -> _Storage:
            if len(pid) != 5:
                raise _FormatError(f"storage id has {len(pid)} fields, expected 5")
            _, stype, key, _, numel = pid
            key = str(key)
            if key not in storages:
                storages[key] = _Storage(key, stype.dtype, int(numel))
            return storages[key]

        obj = _Unpickler(io.BytesIO(zf.read(pkl)), persistent_load).load()
        blobs = {}
        for key in storages:
            member = f"{prefix}data/{key}"
            if member not in zf.namelist():
                raise _FormatError(f"zip archive lacks storage member {member!r}")
            blobs[key] = zf.read(member)
    return _materialize(obj, blobs, {})


def _load_legacy(f: BinaryIO) -> Any:
    if _Unpickler(f).load() != _LEGACY_MAGIC:
        raise _FormatError("not a torch.save file (neither a zip archive nor "
                           "the legacy magic number)")
    if (version := _Unpickler(f).load()) != _LEGACY_PROTOCOL:
        raise _FormatError(f"legacy protocol version {version!r}, expected 1001")
    sys_info = _Unpickler(f).load()
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
        raise _FormatError("big-endian (or unknown byte order) files are not supported")
    root_dtypes: dict[str, np.dtype] = {}

    def persistent_load(pid: tuple[Any, ...]) -> _Storage:
        if len(pid) != 6:
            raise _FormatError(f"storage id has {len(pid)} fields, expected 6")
        _, stype, key, _, numel, view = pid
        key = str(key)
        dtype = root_dtypes.setdefault(key, stype.dtype)
        if view is None:
            return _Storage(key, dtype, int(numel))
        _, offset, view_numel = view  # (view key, offset, numel) in elements.
        return _Storage(key, dtype, int(view_numel), int(offset) * dtype.itemsize)

    obj = _Unpickler(f, persistent_load).load()
    keys = _Unpickler(f).load()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _FormatError("storage key list is malformed")
    blobs = {}
    for key in keys:
        if key not in root_dtypes:
            raise _FormatError(f"storage {key!r} is not used by any tensor")
        header = f.read(8)
        numel = struct.unpack("<q", header)[0] if len(header) == 8 else -1
        nbytes = numel * root_dtypes[key].itemsize
        blobs[key] = f.read(nbytes) if numel >= 0 else b""
        if numel < 0 or len(blobs[key]) != nbytes:
            raise _FormatError(f"file is truncated inside storage {key!r}")
    return _materialize(obj, blobs, {})


def load(path: str | os.PathLike) -> object:
    """Loads a `torch.save` file (zip or legacy layout) without torch.

    Args:
      path: the file written by `torch.save`.

    Returns:
      The saved object with every tensor (and bare storage) replaced by a
      C-contiguous numpy array of the same dtype and shape; dicts, OrderedDicts,
      lists and tuples are kept, `torch.Size` becomes a tuple.

    Raises:
      TorchFileError: the file is missing, truncated, corrupt, big-endian, or
        refers to anything outside the allow-list.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TorchFileError(f"{os.fspath(path)}: cannot read file ({e.strerror})") from None
    try:
        if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return _load_zip(io.BytesIO(data))
        return _load_legacy(io.BytesIO(data))
    except _FormatError as e:
        msg = str(e)
    except zipfile.BadZipFile as e:
        msg = f"corrupt or truncated zip archive ({e})"
    except Exception as e:  # pylint: disable=broad-except
        # Malformed pickles fail in many ways (EOFError, UnpicklingError,
        # ValueError, TypeError, ...); all mean the same to the caller.
        msg = f"corrupt or truncated torch file ({type(e).__name__}: {e})"
    raise TorchFileError(f"{os.fspath(path)}: {' '.join(msg.split())}")


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Loads a flat `{name: array}` state dict saved with `torch.save`.

    Args:
      path: the file; its top object is the state dict, or a dict holding it
        under the key `'state_dict'` (as training checkpoints often do).

    Returns:
      A dict from parameter name to numpy array, in file order.

    Raises:
      TorchFileError: as for `load`, or the content is not such a mapping.
    """
    obj = load(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TorchFileError(f"{os.fspath(path)}: expected a state dict, "
                             f"found {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise TorchFileError(f"{os.fspath(path)}: not a flat state dict: entry "
                                 f"{key!r} is a {type(value).__name__}")
    return dict(obj)
