"""Labelled image datasets read from their standard formats, as unbatched `tf.data` pipelines.

Every source is a `DataSource`: `examples(split)` gives `(image, label)` pairs, image `uint8
[H, W, 3]` (grayscale and RGBA are converted to RGB), label `int32` in `[0, num_classes)`, in a
fixed order (the training pipeline shuffles). A split is read in two stages, so that a pipeline
can reorder and skip what is cheap before it pays for decoding: `records(split)` gives the
split's undecoded records in that fixed order (image paths, serialized TFRecord Examples, the
indices of synthetic images; the examples themselves for arrays held in memory and for TFDS,
which decodes as it reads), and `decode(records, split)` reads and decodes any reordering,
subset or repetition of them, in the order given. `examples(split)` is the two in a row.
Sources are gin configurables:

    Trainer.data = @CifarData()
    CifarData.data_dir = '/data/cifar-10-batches-py'

Mistakes that can be seen without reading the data (a missing directory, a pattern that matches
no file, a directory in the wrong layout, TFRecords with other feature names) raise `DataError`,
a `ValueError`, when the source is constructed.

Corrupt files only show while the data is read. `ImageFolderData` and `TFRecordData` decode
inside the `tf.data` graph, with no Python per image, and check what they read:

* `decode` takes the records it is given in groups of 32, sends each group through as a header
  naming its records (their stream, a TFRecord shard or the image folder, and their numbers in
  it) followed by the records, each with its slot in the group, and decodes them with one
  parallel `map` followed by `ignore_errors`: a record that cannot be read, parsed or decoded
  drops out instead of stopping the stream, while the header, which cannot fail, gets through.
  A sequential `scan` after it sees the slots that are missing and names what fell out: the
  image path, or the shard and record index. A marker closes the records given, so a bad last
  record is seen too. Only the records given to `decode` are read and checked: records that a
  training pipeline skips to resume an epoch are never decoded, so never reported. TensorFlow
  logs the error that caused a drop as a warning.
* A TFRecord shard is also checked for truncation and corruption of its framing, which make
  `TFRecordDataset` stop with an error that does not name the file (or, for a cut inside a
  record header, stop silently): while `records` reads a shard, the bytes of the records read
  must add up to the file's size, else a marker record follows the shard's last readable
  record, and `decode` reports the shard with the first record that could not be read.
* By default a problem stops iteration with `tf.errors.InvalidArgumentError` whose message names
  the file ("assertion failed: [could not read or decode /data/train/cat/1.jpg ...]"). With
  `skip_corrupt=True` the record is dropped instead: the TF runtime prints a warning naming it
  to stderr, and the source's `skipped_count()` counts it (a damaged shard counts once: the
  records after the damage cannot be recovered).
* Labels outside `[0, num_classes)` always stop iteration, whatever `skip_corrupt` says.

The checks add a few dataset stages, all in TensorFlow's C++ runtime; benchmarks/RESULTS.md
gives what they cost.
"""

from __future__ import annotations

import abc
import codecs
import concurrent.futures
import os
import pickle
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import gin
import numpy as np
import tensorflow as tf

from resnet.validation import check_int

SPLITS = ("train", "eval")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# TFRecord framing around each record: length (8 bytes), its CRC (4), data, data CRC (4).
_TFRECORD_FRAMING_BYTES = 16
# Shards read at once. Fixed (not AUTOTUNE), so the order of examples is the same on every machine.
_INTERLEAVE_CYCLE = 16
# Tags of marker records (see `_CorruptPolicy.decode_in_order`): the end of the records given to
# `decode`, and the place of a TFRecord shard that could not be read to its end.
_END_TAG = -1
_DAMAGED_TAG = -2
# Records announced by one header element in `_CorruptPolicy.decode_in_order`.
_GROUP = 32
_IMAGE_FEATURE = "image/encoded"
_LABEL_FEATURE = "image/class/label"


class DataError(ValueError):
    """A dataset that cannot be read as configured: a missing path, wrong layout or bad content."""


def _check_split(split: Any) -> str:
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {', '.join(map(repr, SPLITS))}; received {split!r}.")
    return split


class DataSource(abc.ABC):
    """A labelled image dataset with a 'train' and an 'eval' split.

    A split is read in two stages: `records(split)` gives its undecoded records in a fixed
    order, cheap to shuffle, repeat and skip, and `decode(records, split)` reads and decodes
    those it is given, in their order. `examples(split)` is both in a row. A subclass implements
    `_records`, `_num_examples` and, if its records are not examples already, `_decode`.

    Attributes:
        name: Short name used in run-directory names, e.g. "digits", "cifar10".
        num_classes: Labels are integers in `[0, num_classes)`.

    Example:

    >>> source = DigitsData()
    >>> image, label = next(iter(source.examples("train")))
    >>> image.dtype, image.shape, label.dtype
    (tf.uint8, TensorShape([32, 32, 3]), tf.int32)
    >>> tail = source.records("train").shuffle(64, seed=0).skip(1000)   # nothing decoded yet
    >>> len(list(source.decode(tail, "train")))
    437
    """

    name: str
    num_classes: int

    def examples(self, split: str) -> tf.data.Dataset:
        """Unbatched `(image uint8 [H, W, 3], label int32)` pairs of `split` ('train' or 'eval'), in a fixed order."""
        return self.decode(self.records(split), split)

    def records(self, split: str) -> tf.data.Dataset:
        """The undecoded records of `split`, in the order of `examples(split)`.

        What a record holds is the source's own business (a path, a serialized Example, an
        index, or the example itself); a pipeline may shuffle, repeat, skip or take them, then
        gives them to `decode`.
        """
        return self._records(_check_split(split))

    def decode(self, records: tf.data.Dataset, split: str) -> tf.data.Dataset:
        """`(image, label)` pairs of `records`, elements of `records(split)`, in the order given.

        Only the records given are read and decoded (and checked, see the module docstring).
        """
        return self._decode(records, _check_split(split))

    def num_examples(self, split: str) -> int | None:
        """Number of examples in `split`, or None where it cannot be known without reading everything."""
        return self._num_examples(_check_split(split))

    @abc.abstractmethod
    def _records(self, split: str) -> tf.data.Dataset: ...

    def _decode(self, records: tf.data.Dataset, split: str) -> tf.data.Dataset:
        return records  # records that are examples already

    @abc.abstractmethod
    def _num_examples(self, split: str) -> int | None: ...


class _ArraySource(DataSource):
    """A source whose splits are uint8 image and int label arrays held in memory; records are examples."""

    @abc.abstractmethod
    def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Returns images uint8 [N, H, W, 3] and labels int32 [N]."""

    def _records(self, split: str) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(self._arrays(split))

    def _num_examples(self, split: str) -> int:
        return len(self._arrays(split)[1])


@gin.configurable(module="resnet")
class DigitsData(_ArraySource):
    """The 1,797 8x8 handwritten digits that ship with scikit-learn, upscaled to RGB images.

    No download: `sklearn.datasets.load_digits()` reads them from the installed package. The
    0..16 intensities are scaled to 0..255 and each whole 8x8 image is resized (bilinear) to
    `image_size` x `image_size`, so the digit stays centred and fills the canvas, then repeated
    over 3 channels. The split is stratified by class and fixed by `seed`; within a split the
    examples keep the dataset's order.

    Args:
        validation_fraction: Share of the examples in the 'eval' split, in (0, 1).
        image_size: Side of the square output images, in pixels.
        seed: Seed of the train/eval split.

    Example:

    >>> source = DigitsData(validation_fraction=0.2)
    >>> source.num_examples("train"), source.num_examples("eval")
    (1437, 360)
    """

    name = "digits"
    num_classes = 10

    def __init__(self, validation_fraction: float = 0.2, image_size: int = 32, seed: int = 0):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if isinstance(validation_fraction, bool) or not (
            isinstance(validation_fraction, (int, float)) and 0 < validation_fraction < 1
        ):
            raise ValueError(f"`validation_fraction` must be a number in (0, 1); received {validation_fraction!r}.")
        self.image_size = check_int("image_size", image_size)
        digits = load_digits()
        labels = digits.target.astype(np.int32)
        try:
            train, evaluation = train_test_split(
                np.arange(len(labels)), test_size=validation_fraction, stratify=labels, random_state=seed
            )
        except ValueError as error:
            raise ValueError(
                f"`validation_fraction` {validation_fraction!r} leaves a split with fewer examples than the "
                f"10 classes ({len(labels)} examples in all): {error}"
            ) from None
        scaled = digits.images[..., None].astype(np.float32) * (255.0 / 16.0)
        resized = tf.image.resize(scaled, [image_size, image_size], method="bilinear", antialias=True).numpy()
        images = np.repeat(np.clip(np.round(resized), 0, 255).astype(np.uint8), 3, axis=-1)
        self._splits = {
            split: (images[indices], labels[indices])
            for split, indices in (("train", np.sort(train)), ("eval", np.sort(evaluation)))
        }

    def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return self._splits[split]


@gin.configurable(module="resnet")
class SyntheticData(DataSource):
    """Random images and labels made inside the `tf.data` graph, for benchmarks.

    Element `i` of a split is drawn by stateless random ops keyed on (`seed`, split, `i`), so the
    data is the same on every run and every machine, and costs no I/O. Its record is `i`.

    Args:
        train_examples: Size of the 'train' split.
        eval_examples: Size of the 'eval' split.
        image_size: Side of the square images.
        num_classes: Labels are uniform in `[0, num_classes)`.
        seed: Changes every image and label.

    Example:

    >>> source = SyntheticData(train_examples=8, eval_examples=4, image_size=64, num_classes=10)
    >>> [image.shape for image, _ in source.examples("eval")][0]
    TensorShape([64, 64, 3])
    """

    name = "synthetic"

    def __init__(
        self,
        train_examples: int = 1024,
        eval_examples: int = 256,
        image_size: int = 224,
        num_classes: int = 1000,
        seed: int = 0,
    ):
        self._sizes = {
            "train": check_int("train_examples", train_examples),
            "eval": check_int("eval_examples", eval_examples),
        }
        self.image_size = check_int("image_size", image_size)
        self.num_classes = check_int("num_classes", num_classes)
        self.seed = check_int("seed", seed, minimum=0)

    def _records(self, split: str) -> tf.data.Dataset:
        return tf.data.Dataset.range(self._sizes[split])

    def _decode(self, records: tf.data.Dataset, split: str) -> tf.data.Dataset:
        split_key = tf.constant([self.seed, SPLITS.index(split)], tf.int64)
        shape = [self.image_size, self.image_size, 3]

        def make(index):
            key = tf.random.experimental.stateless_fold_in(split_key, index)
            image_key, label_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
            image = tf.random.stateless_uniform(shape, image_key, maxval=256, dtype=tf.int32)
            label = tf.random.stateless_uniform([], label_key, maxval=self.num_classes, dtype=tf.int32)
            return tf.cast(image, tf.uint8), label

        return records.map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def _num_examples(self, split: str) -> int:
        return self._sizes[split]


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


def _load_cifar_batch(path: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR python batch into images uint8 [N, 32, 32, 3] and labels int32 [N]."""
    try:
        with tf.io.gfile.GFile(path, "rb") as file:
            batch = _ArrayUnpickler(file, path).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise DataError(f"{path}: not a readable CIFAR batch (a pickled dict), or truncated: {error}") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict with 'data' and '{label_key}'; found {type(batch).__name__}.")
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    missing = [key for key in ("data", label_key) if key not in batch]
    if missing:
        raise DataError(f"{path}: missing key(s) {missing}; the batch has {sorted(map(str, batch))}.")
    data = batch["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072) (3x32x32 pixels a row); found {found}.")
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
    first used. The directory layout is checked at construction.

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

    def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self._loaded:
            batches = [_load_cifar_batch(self._path(f), self._label_key, self.num_classes) for f in self._files[split]]
            self._loaded[split] = tuple(np.concatenate(parts) for parts in zip(*batches))
        return self._loaded[split]


def _check_directory(argument: str, path: str) -> None:
    if not tf.io.gfile.isdir(path):
        what = "is not a directory" if tf.io.gfile.exists(path) else "does not exist"
        raise DataError(f"`{argument}` {path!r} {what}.")


def _decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/GIF/BMP bytes -> uint8 [H, W, 3]; grayscale is replicated, alpha dropped."""
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def _fail_unless(ok: tf.Tensor, message: Callable[[], tf.Tensor]) -> tf.Operation:
    """An op that raises InvalidArgumentError with `message()` (built only on failure) unless `ok`."""
    return tf.cond(ok, tf.no_op, lambda: tf.debugging.Assert(False, [message()]))


class _CorruptPolicy:
    """What a source does with a record it cannot read: fail naming it, or drop and count it."""

    def __init__(self, owner: str, counter: tf.Variable | None):
        self.owner = owner
        self.counter = counter

    def check(self, ok: tf.Tensor, message: Callable[[], tf.Tensor], count: tf.Tensor) -> tf.Operation:
        """An op that does nothing if `ok`; else fails with `message()`, or counts `count` skipped records."""
        if self.counter is None:
            hint = f" Fix or remove it, or set `{self.owner}.skip_corrupt = True` to skip unreadable records."
            return _fail_unless(ok, lambda: tf.strings.join([message(), hint]))

        def skip():
            with tf.control_dependencies([self.counter.assign_add(tf.cast(count, tf.int64))]):
                return tf.print(f"WARNING: {self.owner} skipped:", message(), output_stream=sys.stderr)

        return tf.cond(ok, tf.no_op, skip)

    def decode_in_order(
        self,
        records: tf.data.Dataset,
        decode: Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]],
        describe: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
        check_label: Callable[[tf.Tensor], tuple[tf.Tensor, Callable[[], tf.Tensor]]] | None = None,
    ) -> tf.data.Dataset:
        """Decodes records in parallel, keeping their order, and reports those that fail.

        Args:
            records: `(stream, index, data, tag)` elements, in any order: the record's stream
                (a file or shard) and number in it, its data (a path, or a serialized record)
                and a tag (a label, or 0). A tag `_DAMAGED_TAG` marks a stream that could not
                be read to its end, `index` being its first record lost.
            decode: `decode(data, tag) -> (image, label)`; may raise any TF error.
            describe: `describe(streams, indices)` names the records of `streams` [K] and
                `indices` [K], [K] strings.
            check_label: `check_label(label) -> (ok, message)`, `message()` explaining a bad
                label; a bad label always fails, whatever the policy. None: no check.

        Returns:
            `(image, label)` of the records that decoded, in order.
        """
        end = tf.data.Dataset.from_tensors(
            (tf.constant(0, tf.int32), tf.constant(0, tf.int64), tf.constant(""), tf.constant(_END_TAG, tf.int32))
        )

        def announce(streams, indices, data, tags):
            """A group of records as a header (no data: it cannot fail) followed by the records.

            Every element carries the group's streams and indices, and its slot in the group
            (-1 for the header).
            """
            size = tf.size(tags)

            def each(values):
                return tf.tile(values[None], [size + 1, 1])

            return (
                tf.range(-1, size), each(streams), each(indices), tf.concat([[""], data], 0),
                tf.concat([[_END_TAG], tags], 0),
            )

        def decode_element(slot, streams, indices, data, tag):
            def marker():  # a header, an end or a damage marker: a negative label, filtered out at the end
                return tf.zeros([0, 0, 3], tf.uint8), tf.minimum(tag, _END_TAG)

            image, label = tf.cond(tf.logical_or(slot < 0, tag < 0), marker, lambda: decode(data, tag))
            return slot, streams, indices, tag, image, label

        def find_losses(state, element):
            # State: the streams and indices of the current group, the slot expected next in it,
            # and the run of records lost since the last one that decoded (count, names).
            group_streams, group_indices, expected, lost, names = state
            slot, streams, indices, tag, image, label = element
            header = slot < 0
            # A header ends the previous group: the rest of it was lost; a record, those before it.
            missing_end = tf.where(header, tf.size(group_streams), slot)
            missing = missing_end > expected
            lost += tf.cast(missing_end - expected, tf.int64)
            payload = tf.logical_not(header)
            losses_end = tf.logical_and(payload, lost > 0)
            damaged = tf.logical_and(payload, tf.equal(tag, _DAMAGED_TAG))
            is_record = tf.logical_and(payload, tag >= 0)
            label_ok = tf.logical_or(tf.logical_not(is_record), check_label(label)[0]) if check_label else tf.constant(True)

            def name():
                return describe(streams[slot][None], indices[slot][None])[0]

            def damage_message():
                return tf.strings.join([
                    "could not read ", name(), " or any record after it: the file is truncated or "
                    "corrupt (TensorFlow logs the cause as a warning).",
                ])

            def label_message():
                return tf.strings.join([name(), ": ", check_label(label)[1]()])

            def handle():
                """Names the records just found missing, and reports what ends here."""
                new = tf.strings.reduce_join(
                    describe(group_streams[expected:missing_end], group_indices[expected:missing_end]), separator=", "
                )
                separator = tf.where(tf.logical_and(missing, names != ""), ", ", "")
                all_names = tf.strings.join([names, separator, new])

                def gap_message():
                    return tf.strings.join(["could not read or decode ", all_names, " (TensorFlow logs the cause as a warning)."])

                reports = [
                    self.check(tf.logical_not(losses_end), gap_message, lost),
                    self.check(tf.logical_not(damaged), damage_message, 1),
                ]
                if check_label is not None:
                    reports.append(_fail_unless(label_ok, label_message))
                with tf.control_dependencies(reports):
                    return tf.identity(all_names)

            # One cond per element: names and reports are only built when something is wrong.
            trouble = tf.reduce_any(tf.stack([missing, losses_end, damaged, tf.logical_not(label_ok)]))
            names = tf.cond(trouble, handle, lambda: names)
            state = (
                streams, indices, tf.where(header, 0, slot + 1), tf.where(payload, tf.constant(0, tf.int64), lost),
                tf.where(payload, tf.constant(""), names),
            )
            with tf.control_dependencies([names]):
                return state, (tf.identity(image), label)

        start = (
            tf.zeros([0], tf.int32), tf.zeros([0], tf.int64), tf.constant(0, tf.int32), tf.constant(0, tf.int64),
            tf.constant(""),
        )
        # Only headers and markers have a negative label here: check_label has failed on any other.
        return (
            records.concatenate(end)
            .batch(_GROUP)
            .map(announce)
            .unbatch()
            .map(decode_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .ignore_errors(log_warning=True)
            .scan(start, find_losses)
            .filter(lambda image, label: label >= 0)
        )


class _EncodedImageSource(DataSource):
    """A source that decodes JPEG/PNG bytes in the `tf.data` graph and may skip corrupt records."""

    def __init__(self, skip_corrupt: bool):
        if not isinstance(skip_corrupt, bool):
            raise ValueError(f"`skip_corrupt` must be True or False; received {skip_corrupt!r}.")
        self.skip_corrupt = skip_corrupt
        self._skipped: dict[str, tf.Variable] = {}
        if skip_corrupt:
            with tf.init_scope():
                self._skipped = {s: tf.Variable(0, dtype=tf.int64, trainable=False) for s in SPLITS}

    def skipped_count(self, split: str | None = None) -> int:
        """Corrupt records skipped so far while reading `split` (both splits if None).

        Counts every time a record is met, so a corrupt image read in 3 epochs counts 3 times; a
        truncated TFRecord shard counts once per reading. Always 0 unless `skip_corrupt`. The
        count includes records a prefetching pipeline has read but not yet delivered.
        """
        splits = SPLITS if split is None else (_check_split(split),)
        return sum(int(self._skipped[s].numpy()) for s in splits if s in self._skipped)

    def _policy(self, split: str) -> _CorruptPolicy:
        return _CorruptPolicy(type(self).__name__, self._skipped.get(split))


def _expand_patterns(argument: str, patterns: str | Sequence[str]) -> list[str]:
    """Sorted files matching a glob pattern or a list of paths/patterns; each must match something."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    if not isinstance(patterns, Sequence) or not patterns:
        raise ValueError(f"`{argument}` must be a glob pattern or a non-empty list of paths/patterns; received {patterns!r}.")
    files = set()
    for pattern in map(str, patterns):
        matched = [f for f in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(f)]
        if not matched:
            hint = ""
            if tf.io.gfile.isdir(pattern):
                hint = f" It is a directory: to read its shards, give a pattern such as '{pattern.rstrip('/')}/train-*'."
            raise DataError(f"No file matches `{argument}` {pattern!r}.{hint}")
        files.update(matched)
    return sorted(files)


@gin.configurable(module="resnet")
class TFRecordData(_EncodedImageSource):
    """ImageNet-format TFRecord shards, as TF Model Garden and the TPU reference pipelines write them.

    Each record is a `tf.train.Example` with `image/encoded` (JPEG or PNG bytes) and
    `image/class/label` (int64). Shards are read with a deterministic parallel interleave and
    decoded in parallel in the graph. `label_offset` is subtracted from the stored labels: shards
    made by `build_imagenet_data.py` or `imagenet_to_gcs.py` store 1..1000 (0 is "background"),
    so they need `label_offset = 1`. A label outside `[0, num_classes)` after the offset stops
    iteration with an error naming the shard and record. Corrupt images and truncated shards are
    reported as the module docstring describes. Shards must be uncompressed.

    Args:
        train_files: Glob pattern, or list of paths/patterns, of the 'train' shards.
        eval_files: Same for the 'eval' shards.
        num_classes: Number of classes.
        label_offset: Subtracted from every stored label.
        skip_corrupt: Drop and count unreadable records instead of failing.

    Example:

    >>> source = TFRecordData(                                      # doctest: +SKIP
    ...     train_files="/data/imagenet/train-*", eval_files="/data/imagenet/validation-*",
    ...     num_classes=1000, label_offset=1)
    """

    name = "tfrecord"

    def __init__(
        self,
        train_files: str | Sequence[str],
        eval_files: str | Sequence[str],
        num_classes: int,
        label_offset: int = 0,
        skip_corrupt: bool = False,
    ):
        super().__init__(skip_corrupt)
        self.num_classes = check_int("num_classes", num_classes)
        if isinstance(label_offset, bool) or not isinstance(label_offset, int):
            raise ValueError(f"`label_offset` must be an integer; received {label_offset!r}.")
        self.label_offset = label_offset
        self._files = {
            "train": _expand_patterns("TFRecordData.train_files", train_files),
            "eval": _expand_patterns("TFRecordData.eval_files", eval_files),
        }
        for files in self._files.values():
            _check_example_features(files[0])
        self._sizes: dict[str, list[int]] = {}

    def _num_examples(self, split: str) -> None:
        return None  # counting needs a pass over every shard

    def _records(self, split: str) -> tf.data.Dataset:
        files = self._files[split]
        if split not in self._sizes:  # for the truncation check; stat is slow on GCS, so in parallel
            with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
                self._sizes[split] = list(pool.map(lambda f: tf.io.gfile.stat(f).length, files))
        sizes = tf.constant(self._sizes[split], tf.int64)
        shards = tf.data.Dataset.from_tensor_slices((tf.range(len(files)), files, sizes))
        # Reading and checking the framing is cheap and sequential per shard; decoding is one
        # parallel map over the interleaved records, as in the TF Model Garden pipelines.
        return shards.interleave(
            _index_shard,
            cycle_length=min(len(files), _INTERLEAVE_CYCLE),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def _decode(self, records: tf.data.Dataset, split: str) -> tf.data.Dataset:
        features = {
            _IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string),
            _LABEL_FEATURE: tf.io.FixedLenFeature([], tf.int64),
        }
        file_table = tf.constant(self._files[split])

        def decode(record, tag):
            example = tf.io.parse_single_example(record, features)
            return _decode_image(example[_IMAGE_FEATURE]), tf.cast(example[_LABEL_FEATURE] - self.label_offset, tf.int32)

        def describe(shards, indices):
            return tf.strings.join([tf.gather(file_table, shards), " (record ", tf.strings.as_string(indices), ")"])

        if self.label_offset == 0:
            hint = (
                "Shards written by build_imagenet_data.py or imagenet_to_gcs.py store labels 1..1000: "
                "set `TFRecordData.label_offset = 1` for them."
            )
        else:
            hint = "Are `TFRecordData.label_offset` and `num_classes` right?"

        def check_label(label):
            def message():
                return tf.strings.join([
                    "label ", tf.strings.as_string(label), " (stored value ", tf.strings.as_string(label + self.label_offset),
                    f", label_offset {self.label_offset}) is outside [0, {self.num_classes}). {hint}",
                ])

            return tf.logical_and(label >= 0, label < self.num_classes), message

        return self._policy(split).decode_in_order(records, decode, describe, check_label)


def _index_shard(shard: tf.Tensor, path: tf.Tensor, size: tf.Tensor) -> tf.data.Dataset:
    """A shard's records as `decode_in_order` takes them, then a marker if the shard is damaged.

    A truncated or damaged record makes `TFRecordDataset` raise `DataLossError` without naming
    the file (and a record cut inside its header reads as a clean end of file). `ignore_errors`
    ends the shard there instead, and the bytes of the records read then fall short of the
    file's size: a record tagged `_DAMAGED_TAG` follows the last one read. Records are counted
    in batches (an empty batch closes the shard), which costs less than a step per record.
    """

    def step(state, batch):
        consumed, count = state
        read = tf.size(batch, out_type=tf.int64)
        damaged = tf.logical_and(tf.equal(read, 0), tf.not_equal(consumed, size))
        marker = tf.cast(damaged, tf.int64)  # 1 if the shard ends damaged here, else 0
        indices = tf.concat([count + tf.range(read), tf.fill([marker], count)], 0)
        records = tf.concat([batch, tf.fill([marker], "")], 0)
        tags = tf.concat([tf.zeros([read], tf.int32), tf.fill([marker], _DAMAGED_TAG)], 0)
        lengths = tf.cast(tf.strings.length(batch), tf.int64) + _TFRECORD_FRAMING_BYTES
        return (consumed + tf.reduce_sum(lengths), count + read), (tf.fill([read + marker], shard), indices, records, tags)

    zero = tf.constant(0, tf.int64)
    batches = tf.data.TFRecordDataset(path).ignore_errors(log_warning=True).batch(_GROUP)
    end = tf.data.Dataset.from_tensors(tf.zeros([0], tf.string))
    return batches.concatenate(end).scan((zero, zero), step).unbatch()


def _check_example_features(path: str) -> None:
    """Reads the first record of a shard and checks it is an Example with the expected features.

    Only a cheap format check at construction: a shard whose first record cannot be read is
    left to the checks made while iterating.
    """
    try:
        record = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    except tf.errors.OpError:
        return
    if record is None:
        return
    try:
        example = tf.train.Example.FromString(record.numpy())
    except Exception:  # protobuf's DecodeError; its module differs between protobuf builds
        raise DataError(f"{path}: the first record is not a tf.train.Example.") from None
    feature = example.features.feature
    expected = {_IMAGE_FEATURE: "bytes_list", _LABEL_FEATURE: "int64_list"}
    wrong = [key for key, kind in expected.items() if key not in feature or feature[key].WhichOneof("kind") != kind]
    if wrong:
        found = ", ".join(f"{key!r} ({feature[key].WhichOneof('kind')})" for key in sorted(feature)) or "none"
        raise DataError(
            f"{path}: expected ImageNet-format Examples with 'image/encoded' (bytes_list) and "
            f"'image/class/label' (int64_list); the first record has features {found}."
        )


def _list_images(directory: str) -> list[str]:
    """File names with an image extension directly inside `directory`, sorted; hidden files skipped."""
    return sorted(
        name for name in tf.io.gfile.listdir(directory)
        if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
    )


def _list_classes(argument: str, directory: str) -> dict[str, list[str]]:
    """`{class name: sorted image paths}` of an image folder, checked for its layout."""
    _check_directory(argument, directory)
    names = sorted(
        entry.rstrip("/") for entry in tf.io.gfile.listdir(directory)
        if not entry.startswith(".") and tf.io.gfile.isdir(os.path.join(directory, entry))
    )
    if not names:
        raise DataError(
            f"`{argument}` {directory!r} has no class subdirectories; expected one directory per class "
            f"holding its images, e.g. {os.path.join(directory, 'cat', '0001.jpg')!r}."
        )
    classes = {name: [os.path.join(directory, name, f) for f in _list_images(os.path.join(directory, name))] for name in names}
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise DataError(
            f"`{argument}` {directory!r}: no {'/'.join(IMAGE_EXTENSIONS)} files in the class directories {empty}."
        )
    return classes


@gin.configurable(module="resnet")
class ImageFolderData(_EncodedImageSource):
    """Images in one subdirectory per class, e.g. `train/cat/0001.jpg`, `eval/dog/0042.png`.

    Class names are sorted to give label indices; both splits must have the same classes. Files
    ending in .jpg, .jpeg or .png (any case) directly inside a class directory are read; hidden
    files (such as macOS `._*` resource forks) are ignored. Images are decoded in parallel in the
    graph; corrupt ones are reported as the module docstring describes.

    Args:
        train_dir: Directory of the 'train' split.
        eval_dir: Directory of the 'eval' split.
        skip_corrupt: Drop and count unreadable images instead of failing.

    Attributes:
        class_names: Sorted class directory names; `class_names[label]` names a label.

    Example:

    >>> source = ImageFolderData("/data/flowers/train", "/data/flowers/eval")   # doctest: +SKIP
    >>> source.name, source.class_names[:2]                                      # doctest: +SKIP
    ('flowers', ['daisy', 'dandelion'])
    """

    def __init__(self, train_dir: str, eval_dir: str, skip_corrupt: bool = False):
        super().__init__(skip_corrupt)
        train_dir, eval_dir = str(train_dir), str(eval_dir)
        splits = {
            "train": _list_classes("ImageFolderData.train_dir", train_dir),
            "eval": _list_classes("ImageFolderData.eval_dir", eval_dir),
        }
        if splits["train"].keys() != splits["eval"].keys():
            only_train = sorted(splits["train"].keys() - splits["eval"].keys())
            only_eval = sorted(splits["eval"].keys() - splits["train"].keys())
            raise DataError(
                f"The class directories of `ImageFolderData.train_dir` {train_dir!r} and `eval_dir` {eval_dir!r} "
                f"differ: only in train: {only_train}; only in eval: {only_eval}."
            )
        self.class_names = sorted(splits["train"])
        self.num_classes = len(self.class_names)
        self.name = os.path.basename(os.path.dirname(train_dir.rstrip("/\\"))) or "images"
        self._files = {
            split: (
                [path for name in self.class_names for path in classes[name]],
                [label for label, name in enumerate(self.class_names) for _ in classes[name]],
            )
            for split, classes in splits.items()
        }

    def _num_examples(self, split: str) -> int:
        return len(self._files[split][0])

    def _records(self, split: str) -> tf.data.Dataset:
        paths, labels = self._files[split]
        # One stream: record i is (0, i, path, label).
        return tf.data.Dataset.from_tensor_slices(
            (tf.zeros([len(paths)], tf.int32), tf.range(len(paths), dtype=tf.int64), paths, tf.constant(labels, tf.int32))
        )

    def _decode(self, records: tf.data.Dataset, split: str) -> tf.data.Dataset:
        path_table = tf.constant(self._files[split][0])
        return self._policy(split).decode_in_order(
            records,
            lambda path, label: (_decode_image(tf.io.read_file(path)), label),
            lambda streams, indices: tf.gather(path_table, indices),
        )


@gin.configurable(module="resnet")
class TfdsData(DataSource):
    """A TensorFlow Datasets dataset that is already prepared on local disk; never downloads.

    Needs the optional `tensorflow_datasets` package (`pip install 'resnet[tfds]'`). Prepare the
    data once with `tfds build NAME --data_dir DIR` (or `tfds.builder(NAME).download_and_prepare()`)
    where there is a network. Files are read in a fixed order; one-channel images are converted to
    RGB and four-channel ones lose alpha. TFDS decodes images as it reads them, so the records of
    this source are its examples: a pipeline that skips records here still decodes them.

    Args:
        name: TFDS name, optionally with config and version, e.g. "cifar10" or "imagenet2012:5.1.0".
            The source's `name` is this without the version, '/' replaced by '_'.
        data_dir: TFDS data directory; None for TFDS's default (`~/tensorflow_datasets`).
        train_split: TFDS split (or slice, e.g. "train[:90%]") used as 'train'.
        eval_split: TFDS split used as 'eval'.
        image_key: Feature holding the image.
        label_key: `ClassLabel` feature holding the label.

    Example:

    >>> source = TfdsData("cifar10", data_dir="/data/tfds")          # doctest: +SKIP
    >>> source.num_classes, source.num_examples("eval")               # doctest: +SKIP
    (10, 10000)
    """

    def __init__(
        self,
        name: str,
        data_dir: str | None = None,
        train_split: str = "train",
        eval_split: str = "test",
        image_key: str = "image",
        label_key: str = "label",
    ):
        try:
            import tensorflow_datasets as tfds
        except ImportError:
            raise DataError(
                "TfdsData needs the tensorflow_datasets package, which is not installed: "
                "pip install 'resnet[tfds]'."
            ) from None
        where = f"data_dir {data_dir!r}" if data_dir else "the default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        try:
            self._builder = tfds.builder(name, data_dir=data_dir)
        except Exception as error:  # tfds raises its own DatasetNotFoundError and others
            raise DataError(f"TFDS has no dataset {name!r} in {where}: {error}") from None
        if not self._builder.data_path.exists():  # what as_dataset checks; is_prepared() is newer than 4.9
            raise DataError(
                f"TFDS dataset {name!r} is not prepared in {where}; TfdsData never downloads. Prepare it "
                f"where there is a network with `tfds build {name} --data_dir DIR` and copy DIR here."
            )
        info = self._builder.info
        for argument, key in (("image_key", image_key), ("label_key", label_key)):
            if key not in info.features:
                raise DataError(f"`TfdsData.{argument}` {key!r} is not a feature of {name!r}; it has {sorted(info.features)}.")
        if not hasattr(info.features[label_key], "num_classes"):
            raise DataError(f"`TfdsData.label_key` {label_key!r} of {name!r} is not a ClassLabel feature.")
        self._splits = {"train": train_split, "eval": eval_split}
        for argument, split in (("train_split", train_split), ("eval_split", eval_split)):
            try:
                info.splits[split]
            except (KeyError, ValueError) as error:
                raise DataError(f"`TfdsData.{argument}` {split!r} is not a split of {name!r}: {error}") from None
        self.name = re.sub(r"[^A-Za-z0-9_.-]", "_", name.split(":")[0])
        self.num_classes = int(info.features[label_key].num_classes)
        self._image_key, self._label_key = image_key, label_key

    def _num_examples(self, split: str) -> int:
        return int(self._builder.info.splits[self._splits[split]].num_examples)

    def _records(self, split: str) -> tf.data.Dataset:
        def pair(example):
            image = example[self._image_key]
            gray = tf.equal(tf.shape(image)[-1], 1)
            image = tf.cond(gray, lambda: tf.tile(image, [1, 1, 3]), lambda: image[..., :3])
            return tf.ensure_shape(image, [None, None, 3]), tf.cast(example[self._label_key], tf.int32)

        dataset = self._builder.as_dataset(split=self._splits[split], shuffle_files=False)
        return dataset.map(pair, num_parallel_calls=tf.data.AUTOTUNE)
