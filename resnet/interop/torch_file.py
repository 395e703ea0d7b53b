"""Reads the tensors of a `torch.save` file into NumPy arrays, without torch and without running its code.

`torch.save` (its zip format, the default since torch 1.6; timm's `pytorch_model.bin` too) writes
a zip archive of records under one folder, `<archive>/`:

* `data.pkl`: a pickle (protocol 2) of the saved object. Each tensor in it is a call
  `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
  backward_hooks[, metadata])` (inside `torch._utils._rebuild_parameter` for an `nn.Parameter`)
  whose storage is a persistent id `("storage", torch.FloatStorage, key, location, numel)`;
  a state dict is a `collections.OrderedDict` whose `_metadata` attribute is set by BUILD.
* `data/<key>`: the raw bytes of each storage, in the byte order that
* `byteorder` names: `little` or `big` (older files have no such record: little);
* records this reader does not need (`version`, `.format_version`, `.data/serialization_id`, ...).

The pickle is read by a restricted unpickler: it resolves only the globals a plain state dict
names (`ALLOWED_GLOBALS`), each to a stand-in of our own, so nothing is ever imported or called
but our code; any other global, any persistent id but a storage, any BUILD (`__setstate__`) but
on an OrderedDict (torch's `_metadata`, dropped) and any opcode that instantiates a class is
refused with a `ValueError`. Every tensor's offset and strides are
checked against its storage before a byte is read, and every array returned is a contiguous copy
that owns its memory. bfloat16 tensors become `ml_dtypes.bfloat16` arrays (the NumPy dtype
TensorFlow uses; `.astype("float32")` widens them exactly).
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
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

# `torch.save(..., _use_new_zipfile_serialization=False)` (and torch < 1.6) starts with a pickle of this.
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

# Opcodes a torch.save pickle never has: EXT* fetch objects registered with copyreg (a cache that
# another unpickler may have filled, bypassing find_class), the others instantiate classes.
_REFUSED_OPCODES = {"EXT1", "EXT2", "EXT4", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"}

# What an unreadable record raises (zipfile: bad CRC or header, encrypted, unknown compression),
# and what the C unpickler raises for a malformed pickle.
_RECORD_ERRORS = (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError)
_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    RecursionError,
)


class _Inert:
    """Base of the unpickler's stand-ins: a pickle's BUILD on one is refused, not applied."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise ValueError(f"data.pkl sets the state of {self!r} (BUILD), which no state dict does")


class _StorageType(_Inert):
    """Stands in for `torch.FloatStorage` and its kin: names the dtype of a storage, nothing more."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Function(_Inert):
    """Stands in for an allowed callable global: calling it calls our `function`, never torch's."""

    __slots__ = ("name", "function")

    def __init__(self, name: str, function: Callable[..., Any]):
        self.name, self.function = name, function

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)

    def __repr__(self) -> str:
        return self.name


class _OrderedDict(dict):
    """`collections.OrderedDict` as unpickled here (a dict keeps its order too).

    torch sets a state dict's `_metadata` (module version numbers) by BUILD; it is dropped.
    """

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        del state


class _Storage(_Inert):
    """One storage record, read (once) when a tensor that uses it is."""

    __slots__ = ("archive", "record", "dtype", "numel", "_values")

    def __init__(self, archive: _Archive, record: str, dtype: np.dtype, numel: int):
        self.archive, self.record, self.dtype, self.numel = archive, record, dtype, numel
        self._values = None

    def __repr__(self) -> str:
        return f"the storage {self.record!r}"

    def values(self) -> np.ndarray:
        """The storage's elements as unsigned integers of its item size, in the file's byte order."""
        if self._values is None:
            data = self.archive.read(self.record)
            order = "<" if self.archive.byteorder == "little" else ">"
            self._values = np.frombuffer(data, np.dtype(f"u{self.dtype.itemsize}").newbyteorder(order))
        return self._values


class _Tensor(_Inert):
    """A tensor of the file: a checked view of a storage, copied into an array when asked."""

    __slots__ = ("storage", "offset", "shape", "strides")

    def __init__(self, storage: _Storage, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]):
        self.storage, self.offset, self.shape, self.strides = storage, offset, shape, strides

    def __repr__(self) -> str:
        return f"a tensor of shape {self.shape}"

    def numpy(self) -> np.ndarray:
        """A C-contiguous copy in native byte order."""
        out = np.empty(self.shape, self.storage.dtype)
        if out.size == 0:
            return out
        values = self.storage.values()
        view = np.lib.stride_tricks.as_strided(
            values[self.offset :],
            self.shape,
            tuple(s * values.itemsize for s in self.strides),
            writeable=False,
        )
        if out.dtype == bool:
            np.not_equal(view, 0, out=out)  # any byte but 0 is True, as in torch
        else:
            out.view(view.dtype.newbyteorder("="))[...] = view  # byte-swaps if the file's order is not ours
        return out


def _is_ints(value: Any) -> bool:
    return type(value) is tuple and all(type(v) is int for v in value)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    metadata: Any = None,
) -> _Tensor:
    """torch._utils._rebuild_tensor_v2, checked: the tensor must lie inside its storage."""
    del requires_grad, backward_hooks  # torch never saves hooks (an empty OrderedDict); neither matters here
    if not isinstance(storage, _Storage):
        raise ValueError(f"a tensor's storage is {storage!r:.80}, not a storage")
    if type(storage_offset) is not int or not _is_ints(size) or not _is_ints(stride) or len(size) != len(stride):
        raise ValueError(
            f"a tensor's geometry is not integers: offset {storage_offset!r:.40}, size {size!r:.80}, "
            f"stride {stride!r:.80}"
        )
    if metadata:
        raise ValueError(
            f"a tensor carries torch metadata {metadata!r:.80} (a lazily negated or conjugated view); "
            "save t.resolve_neg().resolve_conj() instead"
        )
    if storage_offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
        raise ValueError(f"a tensor has a negative offset, size or stride: {storage_offset}, {size}, {stride}")
    if 0 in size:
        last = storage_offset - 1  # an empty tensor reads nothing; its offset must still be in range
    else:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.numel or storage_offset > storage.numel:
        raise ValueError(
            f"a tensor of size {size} and stride {stride} at offset {storage_offset} reaches element {last} of "
            f"{storage!r}, which holds {storage.numel}"
        )
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> _Tensor:
    """torch._utils._rebuild_parameter(_with_state): an `nn.Parameter` is its tensor here."""
    del requires_grad, backward_hooks, state  # state: Python attributes set on the parameter
    if not isinstance(data, _Tensor):
        raise ValueError(f"a parameter's data is {data!r:.80}, not a tensor")
    return data


_STAND_INS = {
    "collections.OrderedDict": _Function("collections.OrderedDict", _OrderedDict),
    "torch._utils._rebuild_tensor_v2": _Function("torch._utils._rebuild_tensor_v2", _rebuild_tensor_v2),
    "torch._utils._rebuild_parameter": _Function("torch._utils._rebuild_parameter", _rebuild_parameter),
    "torch._utils._rebuild_parameter_with_state": _Function(
        "torch._utils._rebuild_parameter_with_state", _rebuild_parameter
    ),
    **{f"torch.{name}": _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}

ALLOWED_GLOBALS = tuple(_STAND_INS)
"""The globals a `torch.save`d state dict names, and all this reader resolves (each to a stand-in)."""


class _Archive:
    """The records of one `torch.save` zip archive, under its one `<archive>/` folder."""

    def __init__(self, zip_file: zipfile.ZipFile):
        self.zip = zip_file
        names = zip_file.namelist()
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            found = "none" if not pickles else ", ".join(pickles)
            raise ValueError(f"a torch.save archive has one '<archive>/data.pkl' record; this zip has {found}")
        self.prefix = pickles[0].removesuffix("data.pkl")
        if self.prefix + "constants.pkl" in names:
            raise ValueError(
                "it is a TorchScript archive (torch.jit.save), not a state dict; save the model's weights with "
                "torch.save(model.state_dict(), path)"
            )
        byteorder = self.read(self.prefix + "byteorder") if self.prefix + "byteorder" in names else b"little"
        if byteorder not in (b"little", b"big"):
            raise ValueError(f"its byteorder record says {byteorder[:20]!r}, not 'little' or 'big'")
        self.byteorder = byteorder.decode()

    def size(self, record: str) -> int | None:
        try:
            return self.zip.getinfo(record).file_size
        except KeyError:
            return None

    def read(self, record: str) -> bytes:
        try:
            return self.zip.read(record)
        except _RECORD_ERRORS as error:
            raise ValueError(f"its record {record!r} is corrupt: {error}") from error


class _Unpickler(pickle.Unpickler):
    """Unpickles `data.pkl` into our stand-ins: `ALLOWED_GLOBALS` only, storages only as persistent ids."""

    def __init__(self, archive: _Archive):
        data = archive.read(archive.prefix + "data.pkl")
        try:
            operations = [(opcode.name, arg) for opcode, arg, _ in pickletools.genops(data)]
        except ValueError as error:
            raise ValueError(f"data.pkl is not a pickle (truncated or garbled: {error})") from error
        refused = sorted({name for name, _ in operations} & _REFUSED_OPCODES)
        if refused:
            raise ValueError(f"data.pkl uses pickle opcodes that no state dict needs: {', '.join(refused)}")
        # A pickler numbers its memo 0, 1, 2, ...; a larger slot would only make the unpickler allocate.
        slot = max((arg for name, arg in operations if name in ("PUT", "BINPUT", "LONG_BINPUT")), default=0)
        if slot >= len(operations):
            raise ValueError(f"data.pkl stores into memo slot {slot}, beyond its {len(operations)} opcodes")
        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        stand_in = _STAND_INS.get(f"{module}.{name}")
        if stand_in is None:
            raise ValueError(
                f"data.pkl names the global '{module}.{name}', which this reader refuses (a state dict needs only "
                f"{', '.join(ALLOWED_GLOBALS[:4])} and torch's storage types); nothing was imported or run"
            )
        return stand_in

    def persistent_load(self, pid: Any) -> _Storage:
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"data.pkl has the persistent id {pid!r:.100}, not a storage")
        _, storage_type, key, _location, numel = pid  # location (cpu, cuda:0, ...): every array is NumPy's
        if not isinstance(storage_type, _StorageType) or type(key) is not str or type(numel) is not int or numel < 0:
            raise ValueError(f"data.pkl has the malformed storage id {pid!r:.100}")
        storage = self.storages.get(key)
        if storage is None:
            record = f"{self.archive.prefix}data/{key}"
            size, expected = self.archive.size(record), numel * storage_type.dtype.itemsize
            if size is None:
                raise ValueError(f"the storage record {record!r} is missing")
            if size != expected:
                raise ValueError(
                    f"the storage record {record!r} holds {size} bytes, not the {expected} of its {numel} "
                    f"{storage_type.dtype} elements"
                )
            storage = self.storages[key] = _Storage(self.archive, record, storage_type.dtype, numel)
        elif storage.dtype != storage_type.dtype or storage.numel != numel:
            raise ValueError(f"data.pkl names the storage {key!r} with two types or sizes")
        return storage


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, _Inert) else f"a {type(value).__name__}"


def _tensors(state: dict) -> dict[str, np.ndarray]:
    for key in ("state_dict", "model"):
        inner = state.get(key)
        if isinstance(inner, dict) and any(isinstance(v, _Tensor) for v in inner.values()):
            state = inner
            break
    return {k: v.numpy() for k, v in state.items() if isinstance(k, str) and isinstance(v, _Tensor)}


def _read(zip_file: zipfile.ZipFile) -> dict[str, np.ndarray]:
    unpickler = _Unpickler(_Archive(zip_file))
    try:
        state = unpickler.load()
    except ValueError:
        raise
    except _PICKLE_ERRORS as error:
        raise ValueError(f"data.pkl is not a pickle of a state dict ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict):
        raise ValueError(f"it holds {_describe(state)}, not a state dict (a mapping of names to tensors)")
    return _tensors(state)


def read_torch_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads the tensors of a state dict saved by `torch.save`, with no torch and no code of the file run.

    A top-level mapping holding a `"state_dict"` (or `"model"`) mapping of tensors (a training
    checkpoint) is unwrapped; entries that are not tensors under string names are left out.

    Example (where `resnet50-11ad3fa6.pth` is torchvision's file):

        state = read_torch_file("resnet50-11ad3fa6.pth")
        state["conv1.weight"].shape  # (64, 3, 7, 7), float32

    Args:
        path: A file written by `torch.save` in its zip format (`.pth`, `.pt`, `pytorch_model.bin`).

    Returns:
        Name -> a C-contiguous array that owns its memory, of the tensor's dtype (float32/64/16,
        `ml_dtypes.bfloat16`, int64/32/16/8, uint8, bool).

    Raises:
        ValueError: The file is not a zip archive (torch's legacy format is named, with how to
            convert it), is truncated or corrupt, names a global or a persistent id this reader
            refuses (named), has a tensor outside its storage or a storage record missing, or
            holds something that is not a mapping. The message names the file.
        OSError: The file cannot be opened.
    """
    name = os.fspath(path)
    try:
        zip_file = zipfile.ZipFile(name)
    except (zipfile.BadZipFile, NotImplementedError, ValueError, EOFError):  # NotImplementedError: "zip file version"
        with open(name, "rb") as file:
            head = file.read(32)
        if head.startswith(b"\x80") and _LEGACY_MAGIC in head:
            raise ValueError(
                f"{name!r} is in torch's legacy format (torch < 1.6, or _use_new_zipfile_serialization=False), "
                "which this reader does not read. Convert it where torch is installed: "
                f"torch.save(torch.load({name!r}, weights_only=True), 'new.pth')"
            ) from None
        raise ValueError(
            f"{name!r} is not a torch.save file: not a zip archive (torch's format since 1.6), or truncated or corrupt"
        ) from None
    with zip_file:
        try:
            return _read(zip_file)
        except ValueError as error:
            raise ValueError(f"{name!r} is not a readable torch.save state dict: {error}") from error
