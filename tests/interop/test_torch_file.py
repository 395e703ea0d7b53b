"""`torch.save` files read into NumPy without torch: every value bit for bit, and no code of the file run.

The first half builds files in torch's exact layouts (the zip format and the legacy one) with
pickles written opcode by opcode, and needs no torch; the second half reads files written by
`torch.save` and compares them with `torch.load(weights_only=True)` where torch is installed (CI
installs it and fails on a skip).
"""

import io
import os
import pickle
import struct
import tarfile
import zipfile

import ml_dtypes
import numpy as np
import pytest

import resnet
from conftest import torchvision_resnet18_state
from resnet import interop
from resnet.interop import pytorch
from resnet.interop.torch_file import ALLOWED_GLOBALS, read_torch_file

STORAGE_DTYPES = {
    "FloatStorage": np.dtype("float32"),
    "DoubleStorage": np.dtype("float64"),
    "HalfStorage": np.dtype("float16"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("int64"),
    "IntStorage": np.dtype("int32"),
    "ShortStorage": np.dtype("int16"),
    "CharStorage": np.dtype("int8"),
    "ByteStorage": np.dtype("uint8"),
    "BoolStorage": np.dtype("bool"),
}


# ------------------------------------------------------------- torch's layout, written by hand


class G:
    """A global, pickled as GLOBAL 'module name'."""

    def __init__(self, path):
        self.path = path


class Op:
    """The pickle of each of `items` (bytes as raw opcodes), then `opcode`."""

    def __init__(self, opcode, *items):
        self.opcode, self.items = opcode, items


def pickled(obj):
    """Protocol 2 bytes of `obj`: G, Op, None, bool, int, str, tuple, list and dict, as torch's pickler writes them."""
    out = bytearray(b"\x80\x02")

    def emit(x):
        if isinstance(x, G):
            module, name = x.path.rsplit(".", 1)
            out.extend(b"c" + f"{module}\n{name}\n".encode())
        elif isinstance(x, Op):
            for item in x.items:
                emit(item)
            out.extend(x.opcode)
        elif isinstance(x, bytes):
            out.extend(x)
        elif x is None:
            out.extend(b"N")
        elif isinstance(x, bool):
            out.extend(b"\x88" if x else b"\x89")
        elif isinstance(x, int):
            data = x.to_bytes((x.bit_length() + 8) // 8, "little", signed=True)
            out.extend(b"\x8a" + bytes([len(data)]) + data)  # LONG1
        elif isinstance(x, str):
            data = x.encode()
            out.extend(b"X" + struct.pack("<I", len(data)) + data)
        elif isinstance(x, tuple):
            out.extend(b"(")
            for item in x:
                emit(item)
            out.extend(b"t")
        elif isinstance(x, list):
            out.extend(b"](")
            for item in x:
                emit(item)
            out.extend(b"e")
        else:
            out.extend(b"}(")
            for key, value in x.items():
                emit(key)
                emit(value)
            out.extend(b"u")

    emit(obj)
    return bytes(out + b".")


def ordered(items, state=None):
    """An OrderedDict as torch pickles a state dict: REDUCE, SETITEMS, then BUILD of its `_metadata`."""
    flat = [x for item in items.items() for x in item]
    node = Op(b"u", Op(b"R", G("collections.OrderedDict"), ()), b"(", *flat)
    return node if state is None else Op(b"b", node, state)


def storage(key, numel, kind="FloatStorage", *, legacy=False, view=None):
    """A storage's persistent id; the legacy format's has a sixth field, `view` (None or (view_key, offset, size))."""
    return Op(b"Q", ("storage", G(f"torch.{kind}"), key, "cpu", numel, *((view,) if legacy else ())))


def tensor(key, numel, offset, size, stride, kind="FloatStorage", *extra, legacy=False, view=None):
    hooks = Op(b"R", G("collections.OrderedDict"), ())
    return Op(
        b"R",
        G("torch._utils._rebuild_tensor_v2"),
        (storage(key, numel, kind, legacy=legacy, view=view), offset, size, stride, False, hooks, *extra),
    )


def write(path, obj, storages=None, byteorder="little", records=()):
    """A zip in torch.save's layout: `obj` (pickled unless bytes) as data.pkl, `storages` {key: array}."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", obj if isinstance(obj, bytes) else pickled(obj))
        if byteorder is not None:
            archive.writestr("archive/byteorder", byteorder)
        for key, values in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", raw(values, byteorder or "little"))
        archive.writestr("archive/version", "3\n")
        for name in records:
            archive.writestr(f"archive/{name}", b"")
    return path


def raw(values, byteorder):
    """The bytes torch writes for `values` on a `byteorder` machine."""
    unsigned = f"u{values.dtype.itemsize}"
    return (
        values.view(unsigned).astype(np.dtype(unsigned).newbyteorder("<" if byteorder == "little" else ">")).tobytes()
    )


MAGIC, PROTOCOL = 0x1950A86A20F9469CFC6C, 1001
SYS_INFO = {"protocol_version": PROTOCOL, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}


def write_legacy(
    path, obj, storages=None, *, blocks=None, keys=None, header=(MAGIC, PROTOCOL, SYS_INFO), counts=(), tail=b""
):
    """A file in torch.save's legacy layout: the three `header` pickles, `obj`, the list `keys` (each pickled
    unless bytes), then for each of `blocks` (the keys of `storages` by default) its element count (8 bytes,
    `counts` overrides some) and its elements, both little-endian whatever sys_info says, as torch writes them."""
    storages = storages or {}
    blocks = list(storages) if blocks is None else blocks
    data = b"".join(x if isinstance(x, bytes) else pickled(x) for x in (*header, obj, blocks if keys is None else keys))
    for key in blocks:
        values = storages[key]
        data += struct.pack("<q", dict(counts).get(key, values.size)) + raw(values, "little")
    path.write_bytes(data + tail)
    return path


ARANGE = np.arange(12, dtype="float32")


def owned(array):
    return array.flags.c_contiguous and array.flags.owndata


# ------------------------------------------------------------------------------- without torch


def test_a_torch_state_dict_reads_to_arrays(tmp_path):
    metadata = {"_metadata": ordered({"": {"version": 1}, "0": {"version": 1}})}
    state = ordered(
        {
            "0.weight": tensor("0", 6, 0, (2, 3, 1, 1), (3, 1, 1, 1)),
            "1.num_batches_tracked": tensor("1", 1, 0, (), (), "LongStorage"),
        },
        metadata,  # BUILD on the state dict: accepted, and the metadata dropped
    )
    path = write(tmp_path / "w.pth", state, {"0": ARANGE[:6], "1": np.array([7], "int64")})
    result = read_torch_file(path)
    assert list(result) == ["0.weight", "1.num_batches_tracked"]
    np.testing.assert_array_equal(result["0.weight"], ARANGE[:6].reshape(2, 3, 1, 1))
    assert result["0.weight"].dtype == np.float32 and owned(result["0.weight"])
    assert result["1.num_batches_tracked"].shape == () and result["1.num_batches_tracked"].dtype == np.int64
    assert result["1.num_batches_tracked"] == 7


@pytest.mark.parametrize("byteorder", ["little", "big", None])
@pytest.mark.parametrize("kind", sorted(STORAGE_DTYPES))
def test_every_storage_type_in_either_byte_order(tmp_path, kind, byteorder):
    """A file without a byteorder record (older torch) is little-endian."""
    dtype = STORAGE_DTYPES[kind]
    values = np.array([0, 1, 2, 3.5, 127, -0.0] if dtype.kind in "ub" else [0, 1, -2, 3.5, 127, -0.0]).astype(dtype)
    path = write(tmp_path / "w.pth", {"x": tensor("0", 6, 0, (2, 3), (3, 1), kind)}, {"0": values}, byteorder)
    result = read_torch_file(path)["x"]
    assert result.dtype == dtype and result.shape == (2, 3) and owned(result)
    assert result.tobytes() == values.tobytes()


def test_strided_and_shared_tensors_are_copied_out_of_one_read(tmp_path, monkeypatch):
    """Views read their elements through offset and strides; a storage shared by many is read once."""
    views = {
        "transposed": (0, (4, 3), (1, 4)),
        "strided_slice": (1, (2, 2), (4, 2)),
        "first": (2, (3,), (1,)),
        "second": (8, (4,), (1,)),
        "expanded": (0, (2, 3), (0, 1)),
        "scalar": (5, (), ()),
        "empty": (12, (0, 3), (3, 1)),
    }
    path = write(tmp_path / "w.pth", {k: tensor("0", 12, *v) for k, v in views.items()}, {"0": ARANGE})
    reads = []
    original = zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, name, *a: reads.append(name) or original(self, name, *a))
    result = read_torch_file(path)
    matrix = ARANGE.reshape(3, 4)
    expected = {
        "transposed": matrix.T,
        "strided_slice": matrix[:2, 1::2],
        "first": ARANGE[2:5],
        "second": ARANGE[8:],
        "expanded": np.broadcast_to(ARANGE[:3], (2, 3)),
        "scalar": ARANGE[5],
        "empty": np.zeros((0, 3), "float32"),
    }
    for name, value in expected.items():
        np.testing.assert_array_equal(result[name], value, err_msg=name)
        assert result[name].shape == np.shape(value) and owned(result[name]), name
    assert reads.count("archive/data/0") == 1


def test_parameters_and_checkpoints(tmp_path):
    """`nn.Parameter`s are their tensors; a checkpoint's "state_dict" or "model" is unwrapped; non-tensors
    (and tensors deeper down) are left out."""
    weight = tensor("0", 12, 0, (3,), (1,))
    hooks = ordered({})
    parameter = Op(b"R", G("torch._utils._rebuild_parameter"), (weight, True, hooks))
    with_state = Op(b"R", G("torch._utils._rebuild_parameter_with_state"), (weight, True, hooks, {"tag": "x"}))
    inner = ordered({"w": parameter, "v": with_state})
    cases = {
        "plain": ({"w": parameter, "v": with_state, "note": "text", "n": 3, "deeper": {"x": weight}}, ["w", "v"]),
        "state_dict": ({"state_dict": inner, "epoch": 3, "w": weight}, ["w", "v"]),
        "model": ({"model": inner, "optimizer": {"state": {"0": weight}}, "args": ("x",)}, ["w", "v"]),
        "model_not_tensors": ({"model": "resnet50", "w": weight}, ["w"]),
    }
    for name, (obj, keys) in cases.items():
        result = read_torch_file(write(tmp_path / f"{name}.pth", obj, {"0": ARANGE}))
        assert sorted(result) == sorted(keys), name
        np.testing.assert_array_equal(result["w"], ARANGE[:3])


@pytest.mark.parametrize(
    "obj, holds",
    [
        (("a", "b"), "it holds a tuple, not a state dict (a mapping of names to tensors)"),
        (tensor("0", 12, 0, (2,), (1,)), "it holds a tensor of shape (2,), not a state dict"),
    ],
)
def test_a_file_that_holds_no_mapping_is_refused(tmp_path, obj, holds):
    with pytest.raises(ValueError, match=r"'.*w.pth' is not a readable torch.save state dict: ") as info:
        read_torch_file(write(tmp_path / "w.pth", obj, {"0": ARANGE}))
    assert holds in str(info.value)


class _RunsCode:
    """Unpickled by plain pickle, this calls `function(*args)`."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def test_globals_beyond_a_state_dict_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    attempts = {
        "os.system": (f"touch {marker}",),
        "posix.system": (f"touch {marker}",),
        "builtins.eval": (f"open({str(marker)!r}, 'w')",),
        "__builtin__.eval": (f"open({str(marker)!r}, 'w')",),
        "builtins.open": (str(marker), "w"),
        "subprocess.call": (("touch", str(marker)),),
        "torch._utils._rebuild_qtensor": (),  # torch's own, but no state dict needs it
        "torch.storage.UntypedStorage": (),
    }
    for name, args in attempts.items():
        path = write(tmp_path / "evil.pth", {"w": Op(b"R", G(name), args)})
        with pytest.raises(ValueError, match=f"names the global '{name}', which this reader refuses") as info:
            read_torch_file(path)
        assert "nothing was imported or run" in str(info.value)
        assert not marker.exists(), name
    # What Python's own pickler writes for such an object, at torch's protocol and the newest (STACK_GLOBAL).
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        for function, args in ((os.system, (f"touch {marker}",)), (open, (str(marker), "w"))):
            data = pickle.dumps({"w": _RunsCode(function, *args)}, protocol=protocol)
            with pytest.raises(ValueError, match=f"the global '{function.__module__}.{function.__name__}'"):
                read_torch_file(write(tmp_path / "evil.pth", data))
            assert not marker.exists()
    pickle.loads(pickle.dumps(_RunsCode(open, str(marker), "w"))).close()  # the same bytes do run under pickle
    assert marker.exists()


@pytest.mark.parametrize(
    "obj, problem",
    [
        (Op(b"b", G("torch._utils._rebuild_tensor_v2"), {"x": 1}), "sets the state of torch._utils._rebuild_tensor_v2"),
        (Op(b"b", G("collections.OrderedDict"), (None, {"__call__": 1})), "sets the state of collections.OrderedDict"),
        (Op(b"b", G("torch.FloatStorage"), {"dtype": 1}), "sets the state of torch.FloatStorage"),
        (Op(b"b", tensor("0", 12, 0, (2,), (1,)), {"x": 1}), "sets the state of a tensor of shape (2,)"),
        (Op(b"b", storage("0", 12), {"x": 1}), "sets the state of the storage 'archive/data/0'"),
        (Op(b"b", Op(b"R", G("torch.FloatStorage"), ()), {}), "'_StorageType' object is not callable"),
        (Op(b"\x81", G("collections.OrderedDict"), ()), "pickle opcodes that no state dict needs: NEWOBJ"),
        (b"\x82\x01", "pickle opcodes that no state dict needs: EXT1"),
        (b"Nr\xff\xff\xff\x7f", "stores into memo slot 2147483647, beyond its"),  # LONG_BINPUT: 16 GB of memo
        (Op(b"Q", ("module", "os", "system")), "has the persistent id ('module', 'os', 'system'), not a storage"),
        (Op(b"Q", "storage"), "has the persistent id 'storage', not a storage"),
        (Op(b"Q", ("storage", G("collections.OrderedDict"), "0", "cpu", 12)), "malformed storage id"),
        (Op(b"Q", ("storage", G("torch.FloatStorage"), "0", "cpu", -1)), "malformed storage id"),
        (tensor("0", 12, 0, (13,), (1,)), "reaches element 12 of the storage 'archive/data/0', which holds 12"),
        (tensor("0", 12, 11, (2,), (1,)), "at offset 11 reaches element 12"),
        (tensor("0", 12, 0, (2, 2), (11, 1)), "size (2, 2) and stride (11, 1) at offset 0 reaches element 12"),
        (tensor("0", 12, 13, (0,), (1,)), "at offset 13 reaches element 12"),
        (tensor("0", 12, 4, (2,), (-1,)), "negative offset, size or stride"),
        (tensor("0", 12, 0, (2,), (1, 1)), "geometry is not integers"),
        (tensor("0", 12, 0, ("2",), (1,)), "geometry is not integers"),
        (tensor("0", 12, 0, (2,), (1,), "FloatStorage", {"neg": True}), "metadata {'neg': True}"),
        (Op(b"R", G("torch._utils._rebuild_tensor_v2"), ("x", 0, (1,), (1,), False, None)), "storage is 'x'"),
        (Op(b"R", G("torch._utils._rebuild_parameter"), ("x", True, None)), "parameter's data is 'x'"),
        (tensor("9", 12, 0, (2,), (1,)), "the storage record 'archive/data/9' is missing"),
        (tensor("0", 13, 0, (2,), (1,)), "'archive/data/0' holds 48 bytes, not the 52 of its 13 float32 elements"),
        ((tensor("0", 12, 0, (1,), (1,)), tensor("0", 6, 0, (1,), (1,), "DoubleStorage")), "with two types or sizes"),
    ],
)
def test_malformed_pickles_and_tensors_are_refused(tmp_path, obj, problem):
    path = write(tmp_path / "w.pth", {"w": obj}, {"0": ARANGE})
    with pytest.raises(ValueError, match=r"'.*w.pth' is not a readable torch.save state dict: ") as info:
        read_torch_file(path)
    assert problem in str(info.value)


def test_malformed_archives_are_refused_naming_the_file(tmp_path):
    good = write(tmp_path / "good.pth", {"w": tensor("0", 12, 0, (12,), (1,))}, {"0": ARANGE})
    data = good.read_bytes()
    cases = {
        "truncated.pth": data[: len(data) * 2 // 3],
        "text.pth": b"hello",
        "empty.pth": b"",
    }
    corrupt = bytearray(data)
    corrupt[data.index(ARANGE.tobytes()) + 5] ^= 0xFF
    cases["corrupt.pth"] = bytes(corrupt)
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    problems = {
        "truncated.pth": "is not a torch.save file: not a zip archive (torch's format since 1.6) nor in torch's "
        "legacy format, or truncated or corrupt",
        "text.pth": "is not a torch.save file: not a zip archive",
        "empty.pth": "is not a torch.save file: not a zip archive",
        "corrupt.pth": "is not a readable torch.save state dict: its record 'archive/data/0' is corrupt: Bad CRC-32",
        "nopickle.pth": "this zip has none",
        "two.pth": "this zip has a/data.pkl, b/data.pkl",
        "script.pth": "it is a TorchScript archive (torch.jit.save), not a state dict",
        "endian.pth": "its byteorder record says b'middle', not 'little' or 'big'",
        "garbled.pth": "data.pkl is not a pickle (truncated or garbled: ",
        "stack.pth": "data.pkl is not a well-formed pickle (UnpicklingError: ",
    }
    with zipfile.ZipFile(tmp_path / "nopickle.pth", "w") as archive:
        archive.writestr("archive/data/0", b"")
    with zipfile.ZipFile(tmp_path / "two.pth", "w") as archive:
        archive.writestr("a/data.pkl", pickled({}))
        archive.writestr("b/data.pkl", pickled({}))
    write(tmp_path / "script.pth", {}, records=["constants.pkl"])
    write(tmp_path / "endian.pth", {}, byteorder="middle")
    write(tmp_path / "garbled.pth", pickled({"w": tensor("0", 12, 0, (12,), (1,))})[:-20], {"0": ARANGE})
    write(tmp_path / "stack.pth", b"\x80\x02t.")  # TUPLE without a MARK: the unpickler's own error
    for name, problem in problems.items():
        with pytest.raises(ValueError) as info:
            read_torch_file(tmp_path / name)
        assert str(info.value).startswith(repr(str(tmp_path / name))), name
        assert problem in str(info.value), name


@pytest.mark.parametrize("dtype, suffix", [("float32", ".pth"), ("bfloat16", ".bin")])
def test_a_torch_file_loads_into_the_model(tmp_path, dtype, suffix):
    """torchvision's resnet18 layout as torch.save writes it, and as timm's pytorch_model.bin in bfloat16."""
    state = {k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in torchvision_resnet18_state().items()}
    kind = {"float32": "FloatStorage", "bfloat16": "BFloat16Storage", "int64": "LongStorage"}
    tensors, storages = {}, {}
    for index, (name, value) in enumerate(state.items()):
        strides = tuple(s // value.itemsize for s in value.strides)
        tensors[name] = tensor(str(index), value.size, 0, value.shape, strides, kind[value.dtype.name])
        storages[str(index)] = value.reshape(-1)
    path = write(tmp_path / f"pytorch_model{suffix}", ordered(tensors, {"_metadata": ordered({})}), storages)
    ours = resnet.build("resnet18")
    report = interop.load_torch_state_dict(ours, path)
    assert report.source == str(path) and len(report.loaded) == len(ours.weights)
    torch_name = pytorch._torch_name(ours)
    for variable in ours.weights:
        expected = pytorch._from_torch_layout(variable.path, state[torch_name(variable.path)].astype("float32"))
        np.testing.assert_array_equal(variable.numpy(), expected, err_msg=variable.path)


def test_the_allowed_globals_are_a_state_dicts():
    assert ALLOWED_GLOBALS == (
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        *(f"torch.{kind}" for kind in STORAGE_DTYPES),
    )


# ------------------------------------------------------------------ the legacy format, by hand


def test_a_legacy_state_dict_reads_to_arrays(tmp_path):
    """torch < 1.6's layout: its blocks follow the key list's order (not the pickle's); tensors share and stride
    through storages, through a storage view (old torch) and by torch < 0.4's `_rebuild_tensor`."""
    half = np.arange(6).astype(ml_dtypes.bfloat16)
    old = Op(b"R", G("torch._utils._rebuild_tensor"), (storage("140", 12, legacy=True), 2, (3,), (1,)))
    state = ordered(
        {
            "weight": tensor("140", 12, 0, (3, 4), (4, 1), legacy=True),
            "transposed": tensor("140", 12, 0, (4, 3), (1, 4), legacy=True),
            "strided_slice": tensor("140", 12, 1, (2, 2), (4, 2), legacy=True),
            "expanded": tensor("140", 12, 0, (2, 3), (0, 1), legacy=True),
            "num_batches_tracked": tensor("9", 1, 0, (), (), "LongStorage", legacy=True),
            "half": tensor("23", 6, 0, (2, 3), (3, 1), "BFloat16Storage", legacy=True),
            "view": tensor("140", 12, 1, (2, 2), (3, 1), legacy=True, view=("141", 4, 6)),  # of elements 4 to 9
            "old": old,
            "note": "not a tensor",
        },
        {"_metadata": ordered({"": {"version": 1}})},
    )
    path = write_legacy(tmp_path / "w.pth", state, {"9": np.array([7], "int64"), "23": half, "140": ARANGE})
    result = read_torch_file(path)
    matrix = ARANGE.reshape(3, 4)
    expected = {
        "weight": matrix,
        "transposed": matrix.T,
        "strided_slice": matrix[:2, 1::2],
        "expanded": np.broadcast_to(ARANGE[:3], (2, 3)),
        "num_batches_tracked": np.array(7, "int64"),
        "half": half.reshape(2, 3),
        "view": np.array([[5, 6], [8, 9]], "float32"),
        "old": ARANGE[2:5],
    }
    assert list(result) == list(expected)
    for name, value in expected.items():
        assert result[name].dtype == value.dtype and result[name].shape == value.shape, name
        assert result[name].tobytes() == np.ascontiguousarray(value).tobytes() and owned(result[name]), name


def test_a_python2_legacy_file(tmp_path):
    """Python 2 pickled an OrderedDict as a call on a list of pairs, and its str as SHORT_BINSTRING (b"U")."""
    pairs = [[b"U\x01w", tensor("0", 12, 0, (12,), (1,), legacy=True)]]
    state = Op(b"b", Op(b"R", G("collections.OrderedDict"), (pairs,)), {"_metadata": ordered({})})
    path = write_legacy(tmp_path / "w.pth", state, {"0": ARANGE}, keys=[b"U\x010"])
    np.testing.assert_array_equal(read_torch_file(path)["w"], ARANGE)


@pytest.mark.parametrize("little_endian", [True, False])
@pytest.mark.parametrize("kind", sorted(STORAGE_DTYPES))
def test_every_storage_type_in_the_legacy_format(tmp_path, kind, little_endian):
    """Blocks are little-endian even where sys_info says the writer was big-endian: torch's writer converts them
    (THPStorage_writeFileRaw) and its reader ignores sys_info."""
    dtype = STORAGE_DTYPES[kind]
    values = np.array([0, 1, 2, 3.5, 127, -0.0] if dtype.kind in "ub" else [0, 1, -2, 3.5, 127, -0.0]).astype(dtype)
    header = (MAGIC, PROTOCOL, {**SYS_INFO, "little_endian": little_endian})
    path = write_legacy(
        tmp_path / "w.pth", {"x": tensor("0", 6, 0, (2, 3), (3, 1), kind, legacy=True)}, {"0": values}, header=header
    )
    result = read_torch_file(path)["x"]
    assert result.dtype == dtype and result.shape == (2, 3) and owned(result)
    assert result.tobytes() == values.tobytes()


LEGACY_W = {"w": tensor("0", 12, 0, (12,), (1,), legacy=True)}


def _view(view, size=(2,)):
    return tensor("0", 12, 0, size, (1,), legacy=True, view=view)


@pytest.mark.parametrize(
    "changes, problem",
    [
        (
            {"cut": 4},
            "the 12 float32 elements of the storage '0' (48 bytes from byte 289) run past the end of the file, 44",
        ),
        (
            {"obj": {"w": tensor("0", 2**61, 0, (12,), (1,), legacy=True)}, "counts": {"0": 2**61}},
            f"the {2**61} float32 elements of the storage '0' ({2**63} bytes from byte ",
        ),
        ({"counts": {"0": 11}}, "the block of the storage '0' counts 11 elements, but the main pickle gives it 12"),
        (
            {"blocks": [], "keys": ["0"], "tail": b"\x0c\x00\x00"},
            "the file ends inside the element count of the storage '0'",
        ),
        (
            {"blocks": [], "keys": []},
            "the storage '0' of the main pickle is missing from its pickle of the storage keys",
        ),
        ({"blocks": ["0", "0"]}, "its pickle of the storage keys lists the storage '0' twice"),
        ({"storages": {"0": ARANGE, "1": ARANGE}}, "lists the storage '1', which the main pickle does not name"),
        ({"keys": ("0",)}, "its pickle of the storage keys holds ('0',), not a list of keys"),
        ({"keys": [0]}, "its pickle of the storage keys holds [0], not a list of keys"),
        ({"tail": b"\x00"}, "1 byte(s) follow the last storage block (at byte 337), which torch.save never writes"),
        (
            {"header": ((MAGIC,), PROTOCOL, SYS_INFO)},
            "its first pickle (the magic number) holds (119547037146038801333356,), not 0x1950a86a20f9469cfc6c",
        ),
        ({"header": (MAGIC, 1000, SYS_INFO)}, "its second pickle (the protocol version) holds 1000, not 1001"),
        ({"header": (MAGIC, PROTOCOL, [SYS_INFO])}, "its third pickle (sys_info) holds [{'protocol_version'"),
        (
            {"header": (MAGIC, PROTOCOL, pickle.dumps({"x": 1.5}, protocol=2))},
            "(sys_info) holds {'x': 1.5}, not a dict of plain values",
        ),
        (
            {"header": (MAGIC, PROTOCOL, b"\x80\x02X\xff\xff\xff\x7f")},  # a string of 2 GB: nothing is allocated
            "its third pickle (sys_info) is not a pickle (truncated or garbled: expected 2147483647 bytes",
        ),
        (
            {"obj": b"\x80\x04\x8e" + (2**62).to_bytes(8, "little")},  # BINBYTES8 of 4 EB
            f"its main pickle is not a pickle (truncated or garbled: expected {2**62} bytes in a bytes8, but only",
        ),
        (
            {"header": (MAGIC, PROTOCOL, Op(b"Q", ("storage",)))},
            "its third pickle (sys_info) has the persistent id ('storage',), and needs none",
        ),
        (
            {"header": (MAGIC, b"\x80\x02\x82\x01.", SYS_INFO)},
            "(the protocol version) uses pickle opcodes that no state dict needs: EXT1",
        ),
        (
            {"keys": Op(b"\x81", G("collections.OrderedDict"), ())},
            "storage keys uses pickle opcodes that no state dict needs: NEWOBJ",
        ),
        (
            {"obj": {"w": tensor("0", 12, 0, (12,), (1,))}},
            "its main pickle has the persistent id ('storage', torch.FloatStorage, '0', 'cpu', 12), not",
        ),
        (
            {"obj": {"w": _view(("v", 8, 6))}},
            "its main pickle has a view of 6 elements from element 8 of the storage '0', which holds 12",
        ),
        ({"obj": {"w": _view(("v", 1))}}, "its main pickle has the malformed storage view ('v', 1) of the storage '0'"),
        (
            {"obj": {"w": _view(("v", 0, 6)), "x": _view(("v", 1, 6))}},
            "names the storage view 'v' with two storages or extents",
        ),
        (
            {"obj": {"w": _view(("v", 0, 6), (7,))}},
            "reaches element 6 of the view 'v' of the storage '0', which holds 6",
        ),
        (
            {"obj": {"w": LEGACY_W["w"], "x": tensor("0", 6, 0, (1,), (1,), "DoubleStorage", legacy=True)}},
            "its main pickle names the storage '0' with two types or sizes",
        ),
        ({"obj": ("a", "b"), "storages": {}}, "it holds a tuple, not a state dict (a mapping of names to tensors)"),
    ],
)
def test_malformed_legacy_files_are_refused(tmp_path, changes, problem):
    arguments = {"obj": LEGACY_W, "storages": {"0": ARANGE}, **changes}
    cut = arguments.pop("cut", 0)
    path = write_legacy(tmp_path / "w.pth", arguments.pop("obj"), arguments.pop("storages"), **arguments)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut])
    with pytest.raises(
        ValueError, match=r"'.*w.pth' is not a readable torch.save state dict \(torch's legacy format\): "
    ) as info:
        read_torch_file(path)
    assert problem in str(info.value)


def test_globals_in_any_legacy_pickle_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    payload = Op(b"R", G("os.system"), (f"touch {marker}",))
    python_pickled = pickle.dumps({"x": _RunsCode(os.system, f"touch {marker}")}, protocol=2)
    system = f"{os.system.__module__}.system"
    attempts = [
        (
            {"header": (MAGIC, payload, SYS_INFO)},
            "its second pickle (the protocol version) names the global 'os.system'",
        ),
        (
            {"header": (MAGIC, PROTOCOL, {**SYS_INFO, "x": payload})},
            "its third pickle (sys_info) names the global 'os.system'",
        ),
        ({"header": (MAGIC, PROTOCOL, python_pickled)}, f"its third pickle (sys_info) names the global '{system}'"),
        ({"keys": ["0", payload]}, "its pickle of the storage keys names the global 'os.system'"),
        ({"obj": {**LEGACY_W, "x": payload}}, "its main pickle names the global 'os.system'"),
        ({"obj": python_pickled}, f"its main pickle names the global '{system}'"),
    ]
    for changes, problem in attempts:
        arguments = {"obj": LEGACY_W, **changes}
        path = write_legacy(tmp_path / "evil.pth", arguments.pop("obj"), {"0": ARANGE}, **arguments)
        with pytest.raises(ValueError, match="which this reader refuses") as info:
            read_torch_file(path)
        assert problem in str(info.value) and "nothing was imported or run" in str(info.value)
        assert not marker.exists(), problem


def test_files_in_no_format_or_an_older_one_are_refused_naming_the_file(tmp_path):
    good = write_legacy(tmp_path / "good.pth", LEGACY_W, {"0": ARANGE}).read_bytes()
    cases = {
        "headers_only.pth": (
            pickle.dumps(MAGIC, protocol=2) + pickle.dumps(PROTOCOL, protocol=2),
            "(torch's legacy format): its third pickle (sys_info) is not a pickle (truncated or garbled: pickle "
            "exhausted before seeing STOP)",
        ),
        "wrong_magic.pth": (
            pickle.dumps(MAGIC + 1, protocol=2) + good[len(pickle.dumps(MAGIC, protocol=2)) :],
            "is not a torch.save file: not a zip archive (torch's format since 1.6) nor in torch's legacy format",
        ),
    }
    for name, (content, _) in cases.items():
        (tmp_path / name).write_bytes(content)
    with tarfile.open(
        tmp_path / "tar.pth", "w:", format=tarfile.PAX_FORMAT
    ) as archive:  # as torch's earliest releases did
        for member in ("sys_info", "pickle", "storages", "tensors"):
            archive.addfile(tarfile.TarInfo(member), io.BytesIO(b""))
    cases["tar.pth"] = (
        None,
        "is a tar archive, which torch's earliest releases wrote and this reader does not read",
    )
    for name, (_, problem) in cases.items():
        with pytest.raises(ValueError) as info:
            read_torch_file(tmp_path / name)
        assert str(info.value).startswith(repr(str(tmp_path / name))), name
        assert problem in str(info.value), name


# -------------------------------------------------------------------- files written by torch.save


def _torch_cases(torch):
    generator = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.normal_(generator=generator)
        net[1].running_var.uniform_(0.5, 1.5, generator=generator)
        net[1].num_batches_tracked += 5
    flat = torch.arange(24.0)
    matrix = flat.reshape(4, 6)
    dtypes = [
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    ]
    tagged = torch.nn.Parameter(torch.randn(2, 2, generator=generator))
    tagged.tag = "with python state"
    return {
        "state_dict": net.state_dict(),
        "dtypes": {str(d): (torch.randn(3, 5, generator=generator) * 50).to(d) for d in dtypes},
        "views": {
            "transposed": matrix.t(),
            "strided_slice": matrix[::2, 1::3],
            "first": flat[2:5],
            "second": flat[7:13],
            "expanded": torch.arange(3.0).expand(2, 3),
            "scalar": torch.tensor(3.5),
            "empty": torch.empty(0, 3),
        },
        "parameters": {"plain": torch.nn.Parameter(torch.randn(3, generator=generator)), "tagged": tagged},
        "checkpoint": {"state_dict": net.state_dict(), "epoch": 3, "optimizer": {"lr": 0.1}},
        "model": {"model": net.state_dict(), "args": {"arch": "tiny"}},
    }


NUMPY_DTYPES = {f"torch.{dtype.name}": dtype for dtype in STORAGE_DTYPES.values()}  # torch.float32: float32, ...


def _bits(torch, value):
    value = value.detach().contiguous()
    return value.view(torch.int16).numpy().tobytes() if value.dtype == torch.bfloat16 else value.numpy().tobytes()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("case", ["state_dict", "dtypes", "views", "parameters", "checkpoint", "model"])
def test_torch_save_files_read_bit_for_bit(tmp_path, case, legacy):
    """Both of torch.save's formats: the zip archive and the legacy one (_use_new_zipfile_serialization=False)."""
    torch = pytest.importorskip("torch")
    path = tmp_path / f"{case}.pth"
    torch.save(_torch_cases(torch)[case], path, _use_new_zipfile_serialization=not legacy)
    assert zipfile.is_zipfile(path) is not legacy
    if case == "parameters":
        assert b"_rebuild_parameter_with_state" in path.read_bytes()  # data.pkl is stored uncompressed
    if case == "views" and not legacy:
        assert sum("/data/" in n for n in zipfile.ZipFile(path).namelist()) == 4  # `flat` and its five views share one
    expected = torch.load(path, weights_only=True)
    expected = expected.get("state_dict", expected.get("model", expected))
    expected = {k: v for k, v in expected.items() if isinstance(v, torch.Tensor)}
    result = read_torch_file(path)
    assert list(result) == list(expected)
    for name, value in expected.items():
        ours = result[name]
        assert ours.dtype == NUMPY_DTYPES[str(value.dtype)], name
        assert ours.shape == tuple(value.shape) and owned(ours), name
        assert ours.tobytes() == _bits(torch, value), name


def test_hand_built_files_are_torchs_layout(tmp_path):
    """What the tests above write by hand, torch reads to the same tensors (so they test torch's format)."""
    torch = pytest.importorskip("torch")
    state = ordered(
        {
            "transposed": tensor("0", 12, 0, (4, 3), (1, 4)),
            "count": tensor("1", 1, 0, (), (), "LongStorage"),
            "half": tensor("2", 6, 0, (2, 3), (3, 1), "BFloat16Storage"),
        },
        {"_metadata": ordered({"": {"version": 1}})},
    )
    half = np.arange(6, dtype=ml_dtypes.bfloat16)
    path = write(tmp_path / "hand.pth", state, {"0": ARANGE, "1": np.array([7], "int64"), "2": half})
    expected = torch.load(path, weights_only=True)
    result = read_torch_file(path)
    assert list(result) == list(expected)
    for name, value in expected.items():
        assert result[name].tobytes() == _bits(torch, value), name


def test_hand_built_legacy_files_are_torchs_layout(tmp_path):
    """The legacy files written by hand above, torch reads to the same tensors: blocks in the key list's order,
    little-endian under a big-endian sys_info, a storage view, and torch < 0.4's `_rebuild_tensor`."""
    torch = pytest.importorskip("torch")
    old = Op(b"R", G("torch._utils._rebuild_tensor"), (storage("140", 12, legacy=True), 2, (3,), (1,)))
    state = ordered(
        {
            "transposed": tensor("140", 12, 0, (4, 3), (1, 4), legacy=True),
            "count": tensor("9", 1, 0, (), (), "LongStorage", legacy=True),
            "half": tensor("23", 6, 0, (2, 3), (3, 1), "BFloat16Storage", legacy=True),
            "view": tensor("140", 12, 1, (2, 2), (3, 1), legacy=True, view=("141", 4, 6)),
            "old": old,
        },
        {"_metadata": ordered({"": {"version": 1}})},
    )
    half = np.arange(6, dtype=ml_dtypes.bfloat16)
    storages = {"9": np.array([7], "int64"), "23": half, "140": ARANGE}
    header = (MAGIC, PROTOCOL, {**SYS_INFO, "little_endian": False})
    path = write_legacy(tmp_path / "hand.pth", state, storages, header=header)
    expected = torch.load(path, weights_only=True)
    result = read_torch_file(path)
    assert list(result) == list(expected)
    for name, value in expected.items():
        assert result[name].shape == tuple(value.shape), name
        assert result[name].tobytes() == _bits(torch, value), name


@pytest.mark.parametrize("protocol", [1, 4])
def test_legacy_files_in_other_pickle_protocols(tmp_path, protocol):
    """torch.save(..., pickle_protocol=p): 1 pickles the magic number as text, 4 adds frames (torch.load's
    weights_only refuses both)."""
    torch = pytest.importorskip("torch")
    state = _torch_cases(torch)["state_dict"]
    path = tmp_path / "w.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    result = read_torch_file(path)
    assert list(result) == list(state)
    for name, value in state.items():
        assert result[name].tobytes() == _bits(torch, value), name


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_saved_code_is_refused_and_never_run(tmp_path, legacy):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save(
        {"w": torch.ones(2), "x": _RunsCode(os.system, f"touch {marker}")},
        path,
        _use_new_zipfile_serialization=not legacy,
    )
    pickle_name = "its main pickle" if legacy else "data.pkl"
    with pytest.raises(
        ValueError, match=f"evil.pth' is not a readable torch.save state dict.*: {pickle_name} names"
    ) as info:
        read_torch_file(path)
    assert f"'{os.system.__module__}.system'" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_torch_saved_resnet18_loads_into_the_model(tmp_path, legacy):
    torch = pytest.importorskip("torch")
    state = torchvision_resnet18_state()
    path = tmp_path / "resnet18.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path, _use_new_zipfile_serialization=not legacy)
    ours = resnet.build("resnet18")
    assert interop.load_torch_state_dict(ours, path).source == str(path)
    torch_name = pytorch._torch_name(ours)
    for variable in ours.weights:
        expected = pytorch._from_torch_layout(variable.path, state[torch_name(variable.path)])
        np.testing.assert_array_equal(variable.numpy(), expected, err_msg=variable.path)
