"""Reads the tensors of a `torch.save` file into NumPy arrays, without torch and without running its code.

`torch.save` has written two formats, and both are read.

**The zip format** (the default since torch 1.6; timm's `pytorch_model.bin` too) is a zip archive
of records under one folder, `<archive>/`:

* `data.pkl`: a pickle (protocol 2) of the saved object. Each tensor in it is a call
  `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
  backward_hooks[, metadata])` (inside `torch._utils._rebuild_parameter` for an `nn.Parameter`)
  whose storage is a persistent id `("storage", torch.FloatStorage, key, location, numel)`;
  a state dict is a `collections.OrderedDict` whose `_metadata` attribute is set by BUILD.
* `data/<key>`: the raw bytes of each storage, in the byte order that
* `byteorder` names: `little` or `big` (older files have no such record: little);
* records this reader does not need (`version`, `.format_version`, `.data/serialization_id`, ...).

**The legacy format** (torch < 1.6, so weights published before July 2020, and
`_use_new_zipfile_serialization=False` since) is one plain file holding, one after another:

1. a pickle of the magic number `0x1950a86a20f9469cfc6c`, a pickle of the protocol version
   (1001) and a pickle of `sys_info` (a dict of the writer's byte order and C type sizes);
2. the main pickle of the object, as `data.pkl` above, but with a sixth field in each storage id:
   `("storage", torch.FloatStorage, key, location, numel, view)`. `view` is None, or (written by
   old torch for a storage that was a slice of another) `(view_key, offset, size)`: the tensor
   uses `size` elements of the storage `key` from element `offset` on. torch < 0.4 wrote a tensor
   as `torch._utils._rebuild_tensor(storage, storage_offset, size, stride)`;
3. a pickle of the list of storage keys, in the order their data follows;
4. for each key: its element count (8 bytes, little-endian), which must equal the storage id's
   `numel`, then its elements. These are little-endian whatever `sys_info` says: torch
   converts them (and the count) on a big-endian writer, and its reader ignores `sys_info`.

Every storage block is located and checked against the end of the file before any data is read;
a key listed twice, a storage without a block, a block without a storage, a count past the end
of the file and any byte after the last block (torch ignores those; torch.save never writes
them) are refused. The tar archives of torch's earliest releases are refused, naming them.

Every pickle (data.pkl; in the legacy format all five) is read by a restricted unpickler after an
opcode pre-pass: it resolves only the globals a plain state dict names (`ALLOWED_GLOBALS`), each
to a stand-in of our own, so nothing is ever imported or called but our code; any other global,
any persistent id but a storage, any BUILD (`__setstate__`) but on an OrderedDict (torch's
`_metadata`, dropped) and any opcode that instantiates a class is refused with a `ValueError`.
The legacy header pickles and key list may name no global and no persistent id at all (they can
hold only Python's plain values), and are checked to be what torch writes. Every tensor's offset
and strides are checked against its storage before a byte is read, and every array returned is a
contiguous copy that owns its memory. bfloat16 tensors become `ml_dtypes.bfloat16` arrays (the
NumPy dtype TensorFlow uses; `.astype("float32")` widens them exactly).
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import zipfile
import zlib
from collections.abc import Callable
from typing import IO, Any

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

# The legacy format's first pickle holds this number, and its second this protocol version.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

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
        raise ValueError(f"the pickle sets the state of {self!r} (BUILD), which no state dict does")


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
    """One storage of the file, its elements loaded (once) when a tensor that uses it is read."""

    __slots__ = ("name", "dtype", "numel", "_load", "_values")

    def __init__(self, name: str, dtype: np.dtype, numel: int, load: Callable[[], np.ndarray]):
        self.name, self.dtype, self.numel, self._load = name, dtype, numel, load
        self._values = None

    def __repr__(self) -> str:
        return self.name

    def values(self) -> np.ndarray:
        """The storage's elements as unsigned integers of its item size, in the file's byte order."""
        if self._values is None:
            values = self._load()
            if values.size != self.numel:  # what the tensors' bounds were checked against
                raise ValueError(f"{self!r} holds {values.size} elements, not {self.numel}")
            self._values = values
        return self._values


def _elements(data: bytes, dtype: np.dtype, byteorder: str) -> np.ndarray:
    return np.frombuffer(data, np.dtype(f"u{dtype.itemsize}").newbyteorder("<" if byteorder == "little" else ">"))


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


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _Tensor:
    """torch._utils._rebuild_tensor, how torch < 0.4 pickled a tensor: checked as `_rebuild_tensor_v2`."""
    return _rebuild_tensor_v2(storage, storage_offset, size, stride, False, None)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> _Tensor:
    """torch._utils._rebuild_parameter(_with_state): an `nn.Parameter` is its tensor here."""
    del requires_grad, backward_hooks, state  # state: Python attributes set on the parameter
    if not isinstance(data, _Tensor):
        raise ValueError(f"a parameter's data is {data!r:.80}, not a tensor")
    return data


_STAND_INS = {
    "collections.OrderedDict": _Function("collections.OrderedDict", _OrderedDict),
    "torch._utils._rebuild_tensor_v2": _Function("torch._utils._rebuild_tensor_v2", _rebuild_tensor_v2),
    "torch._utils._rebuild_tensor": _Function("torch._utils._rebuild_tensor", _rebuild_tensor),
    "torch._utils._rebuild_parameter": _Function("torch._utils._rebuild_parameter", _rebuild_parameter),
    "torch._utils._rebuild_parameter_with_state": _Function(
        "torch._utils._rebuild_parameter_with_state", _rebuild_parameter
    ),
    **{f"torch.{name}": _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}

ALLOWED_GLOBALS = tuple(_STAND_INS)
"""The globals a `torch.save`d state dict names, and all this reader resolves (each to a stand-in)."""


def _storage_id(pid: Any, fields: int, what: str) -> tuple[np.dtype, str, int, list[Any]]:
    """The dtype, key, numel and further fields of a persistent id `("storage", type, key, location, numel, ...)`."""
    if not (type(pid) is tuple and len(pid) == fields and pid[0] == "storage"):
        raise ValueError(f"{what} has the persistent id {pid!r:.100}, not a storage")
    _, storage_type, key, _location, numel, *rest = pid  # location (cpu, cuda:0, ...): every array is NumPy's
    if not isinstance(storage_type, _StorageType) or type(key) is not str or type(numel) is not int or numel < 0:
        raise ValueError(f"{what} has the malformed storage id {pid!r:.100}")
    return storage_type.dtype, key, numel, rest


def _is_plain(value: Any, depth: int = 3) -> bool:
    """Whether `value` is None, a bool, int or str, or a tuple, list or dict of such (`depth` levels deep)."""
    if value is None or type(value) in (bool, int, str):
        return True
    if depth == 0 or type(value) not in (tuple, list, dict):
        return False
    items = [x for pair in value.items() for x in pair] if type(value) is dict else value
    return all(_is_plain(item, depth - 1) for item in items)


def _check_again(storage: _Storage, dtype: np.dtype, numel: int, key: str, what: str) -> _Storage:
    if storage.dtype != dtype or storage.numel != numel:
        raise ValueError(f"{what} names the storage {key!r} with two types or sizes")
    return storage


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
        self.storages: dict[str, _Storage] = {}

    def read(self, record: str) -> bytes:
        try:
            return self.zip.read(record)
        except _RECORD_ERRORS as error:
            raise ValueError(f"its record {record!r} is corrupt: {error}") from error

    def state(self) -> Any:
        """The object of data.pkl."""
        return _Unpickler(self.read(self.prefix + "data.pkl"), "data.pkl", self.storage).read()

    def storage(self, pid: Any) -> _Storage:
        """The storage of a persistent id of data.pkl: its record `data/<key>` holds exactly its bytes."""
        dtype, key, numel, _ = _storage_id(pid, 5, "data.pkl")
        if key in self.storages:
            return _check_again(self.storages[key], dtype, numel, key, "data.pkl")
        record = f"{self.prefix}data/{key}"
        try:
            size = self.zip.getinfo(record).file_size
        except KeyError:
            raise ValueError(f"the storage record {record!r} is missing") from None
        if size != numel * dtype.itemsize:
            raise ValueError(
                f"the storage record {record!r} holds {size} bytes, not the {numel * dtype.itemsize} of its {numel} "
                f"{dtype} elements"
            )
        storage = _Storage(
            f"the storage {record!r}", dtype, numel, lambda: _elements(self.read(record), dtype, self.byteorder)
        )
        self.storages[key] = storage
        return storage


class _LegacyFile:
    """A file in torch's legacy format: five pickles, then a block of elements per storage.

    It is also the file object `pickletools.genops` scans a pickle of it through, so that no read
    asks for more bytes than the file has left (a forged length in a pickle allocates nothing).
    """

    _MAGIC, _PROTOCOL = "its first pickle (the magic number)", "its second pickle (the protocol version)"
    _SYS_INFO, _MAIN, _KEYS = "its third pickle (sys_info)", "its main pickle", "its pickle of the storage keys"

    def __init__(self, file: IO[bytes]):
        self.file = file
        self.size = os.fstat(file.fileno()).st_size
        self.storages: dict[str, _Storage] = {}  # by key: the storages the main pickle names
        self.views: dict[str, tuple[str, int, int, _Storage]] = {}  # by view key: (key, offset, size, view)
        self.blocks: dict[str, int] = {}  # by key: where its elements start

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.file.tell()
        return self.file.read(left if n is None or n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.file.readline()

    def tell(self) -> int:
        return self.file.tell()

    def unpickle(self, what: str, storage: Callable[[Any], _Storage] | None = None) -> Any:
        """The object of the pickle that starts at the file's position, which is left after it."""
        start = self.file.tell()
        try:
            for _ in pickletools.genops(self):  # stops after the pickle's STOP
                pass
        except ValueError as error:
            raise ValueError(f"{what} is not a pickle (truncated or garbled: {error})") from error
        length = self.file.tell() - start
        self.file.seek(start)
        return _Unpickler(self.read(length), what, storage).read()

    def state(self) -> Any:
        """The object of the main pickle, every storage block located and checked."""
        magic = self.unpickle(self._MAGIC)
        if type(magic) is not int or magic != _LEGACY_MAGIC:
            raise ValueError(f"{self._MAGIC} holds {magic!r:.80}, not {_LEGACY_MAGIC:#x}")
        protocol = self.unpickle(self._PROTOCOL)
        if type(protocol) is not int or protocol != _LEGACY_PROTOCOL:
            raise ValueError(f"{self._PROTOCOL} holds {protocol!r:.80}, not {_LEGACY_PROTOCOL}")
        sys_info = self.unpickle(self._SYS_INFO)  # the writer's byte order and C type sizes: no storage depends on them
        if type(sys_info) is not dict or not _is_plain(sys_info):
            raise ValueError(f"{self._SYS_INFO} holds {sys_info!r:.80}, not a dict of plain values")
        state = self.unpickle(self._MAIN, self.storage)
        keys = self.unpickle(self._KEYS)
        if type(keys) is not list or not all(type(key) is str for key in keys):
            raise ValueError(f"{self._KEYS} holds {keys!r:.80}, not a list of keys")
        self._locate(keys)
        return state

    def storage(self, pid: Any) -> _Storage:
        """The storage (or the view of one) of a persistent id of the main pickle."""
        dtype, key, numel, (view,) = _storage_id(pid, 6, self._MAIN)
        if key in self.storages:
            storage = _check_again(self.storages[key], dtype, numel, key, self._MAIN)
        else:
            storage = self.storages[key] = _Storage(
                f"the storage {key!r}", dtype, numel, lambda: _elements(self._block(key, dtype, numel), dtype, "little")
            )
        if view is None:
            return storage
        if not (type(view) is tuple and len(view) == 3 and type(view[0]) is str and _is_ints(view[1:])):
            raise ValueError(f"{self._MAIN} has the malformed storage view {view!r:.100} of the storage {key!r}")
        view_key, offset, size = view
        if offset < 0 or size < 0 or offset + size > numel:
            raise ValueError(
                f"{self._MAIN} has a view of {size} elements from element {offset} of the storage {key!r}, "
                f"which holds {numel}"
            )
        if view_key in self.views:
            if self.views[view_key][:3] != (key, offset, size):
                raise ValueError(f"{self._MAIN} names the storage view {view_key!r} with two storages or extents")
            return self.views[view_key][3]
        sliced = _Storage(
            f"the view {view_key!r} of the storage {key!r}",
            dtype,
            size,
            lambda: storage.values()[offset : offset + size],
        )
        self.views[view_key] = (key, offset, size, sliced)
        return sliced

    def _locate(self, keys: list[str]) -> None:
        """Finds each storage's block after the key list, and checks the blocks fill the rest of the file."""
        position = self.file.tell()
        for key in keys:
            storage = self.storages.get(key)
            if storage is None:
                raise ValueError(f"{self._KEYS} lists the storage {key!r}, which the main pickle does not name")
            if key in self.blocks:
                raise ValueError(f"{self._KEYS} lists the storage {key!r} twice")
            if self.size - position < 8:
                raise ValueError(f"the file ends inside the element count of the storage {key!r}, at byte {position}")
            self.file.seek(position)
            count = int.from_bytes(self.file.read(8), "little", signed=True)
            position += 8
            if count != storage.numel:
                raise ValueError(
                    f"the block of the storage {key!r} counts {count} elements, but the main pickle gives it "
                    f"{storage.numel}"
                )
            size = count * storage.dtype.itemsize
            if size > self.size - position:
                raise ValueError(
                    f"the {count} {storage.dtype} elements of the storage {key!r} ({size} bytes from byte {position}) "
                    f"run past the end of the file, {self.size - position} bytes on (truncated?)"
                )
            self.blocks[key] = position
            position += size
        missing = [key for key in self.storages if key not in self.blocks]
        if missing:
            raise ValueError(
                f"the storage {missing[0]!r} of the main pickle is missing from {self._KEYS}, so it has no data"
            )
        if position != self.size:
            raise ValueError(
                f"{self.size - position} byte(s) follow the last storage block (at byte {position}), which "
                "torch.save never writes; the file is corrupt or something was appended to it"
            )

    def _block(self, key: str, dtype: np.dtype, numel: int) -> bytes:
        self.file.seek(self.blocks[key])
        return self.file.read(numel * dtype.itemsize)


class _Unpickler(pickle.Unpickler):
    """Unpickles one pickle of a `torch.save` file into our stand-ins, after an opcode pre-pass.

    With `storage` (data.pkl, the legacy main pickle) it resolves `ALLOWED_GLOBALS` and turns
    persistent ids into storages by `storage`; without it (the legacy format's header pickles
    and key list) it resolves no global and no persistent id.
    """

    def __init__(self, data: bytes, what: str, storage: Callable[[Any], _Storage] | None = None):
        try:
            operations = [(opcode.name, arg) for opcode, arg, _ in pickletools.genops(data)]
        except ValueError as error:
            raise ValueError(f"{what} is not a pickle (truncated or garbled: {error})") from error
        refused = sorted({name for name, _ in operations} & _REFUSED_OPCODES)
        if refused:
            raise ValueError(f"{what} uses pickle opcodes that no state dict needs: {', '.join(refused)}")
        # A pickler numbers its memo 0, 1, 2, ...; a larger slot would only make the unpickler allocate.
        slot = max((arg for name, arg in operations if name in ("PUT", "BINPUT", "LONG_BINPUT")), default=0)
        if slot >= len(operations):
            raise ValueError(f"{what} stores into memo slot {slot}, beyond its {len(operations)} opcodes")
        super().__init__(io.BytesIO(data), encoding="utf-8")  # Python 2's str as torch.load decodes it
        self.what, self.storage = what, storage

    def find_class(self, module: str, name: str) -> Any:
        stand_in = _STAND_INS.get(f"{module}.{name}") if self.storage else None
        if stand_in is None:
            needs = (
                f"a state dict needs only {', '.join(ALLOWED_GLOBALS[:5])} and torch's storage types"
                if self.storage
                else "it needs none"
            )
            raise ValueError(
                f"{self.what} names the global '{module}.{name}', which this reader refuses ({needs}); "
                "nothing was imported or run"
            )
        return stand_in

    def persistent_load(self, pid: Any) -> _Storage:
        if self.storage is None:
            raise ValueError(f"{self.what} has the persistent id {pid!r:.100}, and needs none")
        return self.storage(pid)

    def read(self) -> Any:
        """The pickle's object; any failure is a `ValueError` naming the pickle."""
        try:
            return self.load()
        except ValueError:
            raise
        except _PICKLE_ERRORS as error:
            raise ValueError(f"{self.what} is not a well-formed pickle ({type(error).__name__}: {error})") from error


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, _Inert) else f"a {type(value).__name__}"


def _tensors(state: Any) -> dict[str, np.ndarray]:
    if not isinstance(state, dict):
        raise ValueError(f"it holds {_describe(state)}, not a state dict (a mapping of names to tensors)")
    for key in ("state_dict", "model"):
        inner = state.get(key)
        if isinstance(inner, dict) and any(isinstance(v, _Tensor) for v in inner.values()):
            state = inner
            break
    return {k: v.numpy() for k, v in state.items() if isinstance(k, str) and isinstance(v, _Tensor)}


def _is_legacy(head: bytes) -> bool:
    """Whether a file starts as the legacy format does: a pickle of its magic number (protocol 2 and up, or 1)."""
    binary = head.startswith(b"\x80") and _LEGACY_MAGIC.to_bytes(10, "little") in head[:32]
    return binary or head.startswith(b"L%dL\n" % _LEGACY_MAGIC)


def read_torch_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads the tensors of a state dict saved by `torch.save`, with no torch and no code of the file run.

    Both of torch's formats are read: the zip archive (torch >= 1.6) and the legacy one (torch
    < 1.6, or `_use_new_zipfile_serialization=False`). A top-level mapping holding a
    `"state_dict"` (or `"model"`) mapping of tensors (a training checkpoint) is unwrapped; entries
    that are not tensors under string names are left out.

    Example (where `resnet50-11ad3fa6.pth` is torchvision's file):

        state = read_torch_file("resnet50-11ad3fa6.pth")
        state["conv1.weight"].shape  # (64, 3, 7, 7), float32

    Args:
        path: A file written by `torch.save` (`.pth`, `.pt`, `pytorch_model.bin`).

    Returns:
        Name -> a C-contiguous array that owns its memory, of the tensor's dtype (float32/64/16,
        `ml_dtypes.bfloat16`, int64/32/16/8, uint8, bool).

    Raises:
        ValueError: The file is in neither format (the tar archives of torch's earliest
            releases are named), is truncated or corrupt, names a global or a persistent id this
            reader refuses (named), has a tensor outside its storage, a storage's data missing,
            of the wrong size or listed twice, bytes after the legacy format's last storage, or
            holds something that is not a mapping. The message names the file.
        OSError: The file cannot be opened.
    """
    name = os.fspath(path)
    with open(name, "rb") as file:
        head = file.read(512)
        if _is_legacy(head):
            file.seek(0)
            try:
                return _tensors(_LegacyFile(file).state())
            except ValueError as error:
                raise ValueError(
                    f"{name!r} is not a readable torch.save state dict (torch's legacy format): {error}"
                ) from error
    if head[257:262] == b"ustar":
        raise ValueError(
            f"{name!r} is a tar archive, which torch's earliest releases wrote and this reader does not read. "
            "If you trust it, convert it where torch is installed (weights_only=True refuses this format): "
            f"torch.save(torch.load({name!r}, weights_only=False), 'new.pth')"
        )
    try:
        zip_file = zipfile.ZipFile(name)
    except (zipfile.BadZipFile, NotImplementedError, ValueError, EOFError):  # NotImplementedError: "zip file version"
        raise ValueError(
            f"{name!r} is not a torch.save file: not a zip archive (torch's format since 1.6) nor in torch's legacy "
            "format, or truncated or corrupt"
        ) from None
    with zip_file:
        try:
            return _tensors(_Archive(zip_file).state())
        except ValueError as error:
            raise ValueError(f"{name!r} is not a readable torch.save state dict: {error}") from error
