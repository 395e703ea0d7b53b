"""CIFAR-10 and CIFAR-100 from the official "python version" batches, read with a safe unpickler."""

from __future__ import annotations

import codecs
import functools
import os
import pickle
from typing import Any

import gin
import numpy as np
import tensorflow as tf

from resnet.data.base import DataError, _check_directory, _check_split
from resnet.data.in_memory import _ArraySource


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays, and refuses every other global.

    A pickle can name any importable callable and call it while loading (`os.system` is the
    classic). CIFAR batches only need what rebuilds a numpy array, so that is all this allows.
    """

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, 'latin1').
        ("_codecs", "encode"): codecs.encode,
        **{
            (module, function.__name__): function
            # The reconstructors numpy itself pickles arrays and scalars with, under both names
            # the module has had (numpy.core before numpy 2, numpy._core since).
            for module in ("numpy.core.multiarray", "numpy._core.multiarray")
            for function in (np.empty(0).__reduce__()[0], np.int64(0).__reduce__()[0])
        },
    }

    def __init__(self, file, path: str):
        super().__init__(file, encoding="bytes")  # the official batches were pickled by Python 2
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._path}: refused to unpickle the global '{module}.{name}'. A CIFAR batch holds only "
                "numpy arrays, lists and numbers; this file is not one (and could run code if loaded "
                "with pickle.load)."
            ) from None


def _load_pickled_dict(path: str, what: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """Reads a CIFAR python file (a pickled dict) with the safe unpickler; keys become `str`.

    Args:
        path: The file.
        what: What the file is, for messages ("CIFAR batch").
        keys: Keys the dict must have.
    """
    try:
        with tf.io.gfile.GFile(path, "rb") as file:
            content = _ArrayUnpickler(file, path).load()
    except DataError:
        raise
    except tf.errors.OpError as error:  # e.g. no permission to read it
        raise DataError(f"{path}: cannot be read: {error.message}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise DataError(f"{path}: not a readable {what} (a pickled dict), or truncated: {error}") from None
    expected = " and ".join(f"'{key}'" for key in keys)
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a pickled dict with {expected}; found {type(content).__name__}.")
    content = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}
    missing = [key for key in keys if key not in content]
    if missing:
        raise DataError(f"{path}: missing key(s) {missing}; the {what} has {sorted(map(str, content))}.")
    return content


def _load_cifar_batch(path: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR python batch into images uint8 [N, 32, 32, 3] and labels int32 [N]."""
    batch = _load_pickled_dict(path, "CIFAR batch", ("data", label_key))
    data = batch["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(
            f"{path}: 'data' must be a uint8 array of shape (N, 3072) (3x32x32 pixels a row); found {found}."
        )
    labels = np.asarray(batch[label_key])
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: '{label_key}' must be {len(data)} integers, one per row of 'data'; found {labels.dtype} "
            f"of shape {labels.shape}."
        )
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DataError(
            f"{path}: '{label_key}' holds {int(labels[bad][0])}, outside [0, {num_classes}) "
            f"({int(bad.sum())} such labels). Is `CifarData.num_classes` right?"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are channel-major (CHW)
    return np.ascontiguousarray(images), labels.astype(np.int32)


@gin.configurable(module="resnet")
class CifarData(_ArraySource):
    """CIFAR-10 or CIFAR-100 from the official "python version" batches in a local directory.

    CIFAR-10 (`cifar-10-python.tar.gz`, unpacked to `cifar-10-batches-py/`) has `data_batch_1` ..
    `data_batch_5` for training and `test_batch` for evaluation, labels under `labels`; CIFAR-100
    (`cifar-100-python/`) has `train` and `test`, labels under `fine_labels`. Each file is a
    pickled dict whose `data` is a uint8 array (N, 3072), rows of 3x32x32 pixels in channel-major
    order. Files are read with an unpickler that only rebuilds numpy arrays (a file that names
    any other global is refused, never run), and checked for shape and label range when a split is
    first used. The directory layout is checked at construction. The class names (`class_names`,
    `read_class_names`) come from `batches.meta` (CIFAR-10) or `meta` (CIFAR-100), where the
    directory has it.

    Args:
        data_dir: The directory holding the batch files.
        num_classes: 10 for CIFAR-10, 100 for CIFAR-100.

    Example:

    >>> source = CifarData("/data/cifar-10-batches-py")          # doctest: +SKIP
    >>> source.name, source.num_examples("train")                 # doctest: +SKIP
    ('cifar10', 50000)
    """

    _LAYOUTS = {
        10: ({"train": [f"data_batch_{i}" for i in range(1, 6)], "eval": ["test_batch"]}, "labels"),
        100: ({"train": ["train"], "eval": ["test"]}, "fine_labels"),
    }
    # The file naming the classes, and its key: CIFAR-100's `meta` also has 'coarse_label_names'.
    _META = {10: ("batches.meta", "label_names"), 100: ("meta", "fine_label_names")}

    def __init__(self, data_dir: str, num_classes: int = 10):
        if num_classes not in self._LAYOUTS:
            raise ValueError(f"`num_classes` must be 10 (CIFAR-10) or 100 (CIFAR-100); received {num_classes!r}.")
        self.data_dir = str(data_dir)
        self.num_classes = num_classes
        self.name = f"cifar{num_classes}"
        self._files, self._label_key = self._LAYOUTS[num_classes]
        _check_directory("CifarData.data_dir", self.data_dir)
        missing = [f for files in self._files.values() for f in files if not tf.io.gfile.exists(self._path(f))]
        if missing:
            raise DataError(
                f"`CifarData.data_dir` {self.data_dir!r} is not a {self.name} directory: missing {missing}. "
                f"{self._layout_hint()}"
            )
        folders = [self._path(f) for files in self._files.values() for f in files if tf.io.gfile.isdir(self._path(f))]
        if folders:
            raise DataError(
                f"`CifarData.data_dir` {self.data_dir!r} is not a {self.name} directory: "
                f"{', '.join(map(repr, folders))} {'is a directory' if len(folders) == 1 else 'are directories'}, "
                "not a batch file. "
                f"{self._layout_hint()}"
            )
        self._loaded: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _path(self, filename: str) -> str:
        return os.path.join(self.data_dir, filename)

    def _layout_hint(self) -> str:
        expected = ", ".join(f for files in self._files.values() for f in files)
        hint = f"Expected the files {expected} of the official python-version archive."
        for other, (layout, _) in self._LAYOUTS.items():
            if other != self.num_classes and all(tf.io.gfile.exists(self._path(f)) for f in layout["train"]):
                hint += f" This looks like CIFAR-{other}: set `CifarData.num_classes = {other}`."
        for folder in ("cifar-10-batches-py", "cifar-100-python"):
            if tf.io.gfile.isdir(self._path(folder)):
                hint += f" Did you mean {self._path(folder)!r}?"
        return hint

    def batches(self, split: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """The batch files of `split` ('train' or 'eval'), each read and checked, in the order of
        `examples(split)`: `(file name, images uint8 [N, 32, 32, 3], labels int32 [N])`.

        Example:

        >>> source = CifarData("/data/cifar-10-batches-py")                    # doctest: +SKIP
        >>> [(name, len(labels)) for name, _, labels in source.batches("eval")]  # doctest: +SKIP
        [('test_batch', 10000)]
        """
        return [
            (name, *_load_cifar_batch(self._path(name), self._label_key, self.num_classes))
            for name in self._files[_check_split(split)]
        ]

    @functools.cached_property
    def class_names(self) -> list[str] | None:
        """The names in the directory's meta file (`read_class_names`, read on first use),
        `class_names[label]` naming a label; None without that file.

        Raises:
            DataError: The meta file cannot be read, or does not hold `num_classes` names.
        """
        return self.read_class_names()

    def read_class_names(self) -> list[str] | None:
        """The class names in the directory's meta file (`batches.meta` for CIFAR-10, the fine label
        names of `meta` for CIFAR-100), `names[label]` naming a label; None without that file.

        Raises:
            DataError: The meta file cannot be read, or does not hold `num_classes` names.

        Example:

        >>> CifarData("/data/cifar-10-batches-py").read_class_names()[:3]   # doctest: +SKIP
        ['airplane', 'automobile', 'bird']
        """
        filename, key = self._META[self.num_classes]
        path = self._path(filename)
        if not tf.io.gfile.exists(path):
            return None
        names = _load_pickled_dict(path, "CIFAR meta file", (key,))[key]
        if not (
            isinstance(names, list)
            and len(names) == self.num_classes
            and all(isinstance(n, (bytes, str)) for n in names)
        ):
            found = f"{len(names)} items" if isinstance(names, list) else type(names).__name__
            raise DataError(f"{path}: '{key}' must be a list of {self.num_classes} class names; found {found}.")
        return [name.decode("utf-8", errors="replace") if isinstance(name, bytes) else name for name in names]

    def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self._loaded:
            parts = [(images, labels) for _, images, labels in self.batches(split)]
            self._loaded[split] = tuple(np.concatenate(arrays) for arrays in zip(*parts, strict=True))
        return self._loaded[split]
