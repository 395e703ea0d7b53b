"""What every data source is: a `DataSource` with a 'train' and an 'eval' split, read in two stages.

`examples(split)` gives `(image, label)` pairs, image `uint8 [H, W, 3]` (grayscale and RGBA are
converted to RGB), label `int32` in `[0, num_classes)`, in a fixed order (the training pipeline
shuffles). A split is read in two stages, so that a pipeline can reorder and skip what is cheap
before it pays for decoding: `records(split)` gives the split's undecoded records in that fixed
order (image paths, serialized TFRecord Examples, the indices of synthetic images; the examples
themselves for arrays held in memory and for TFDS, which decodes as it reads), and
`decode(records, split)` reads and decodes any reordering, subset or repetition of them, in the
order given. `examples(split)` is the two in a row. `class_names` names the labels where the source
knows them (from its metadata, never by reading the examples).

Mistakes that can be seen without reading the data (a missing directory, a pattern that matches
no file, a directory in the wrong layout, TFRecords with other feature names) raise `DataError`,
a `ValueError`, when the source is constructed.
"""

from __future__ import annotations

import abc
from typing import Any

import tensorflow as tf

SPLITS = ("train", "eval")


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
        class_names: A property: `num_classes` names, `class_names[label]` naming label `label`,
            or None where the source does not know them (`SyntheticData`, TFRecord shards
            without a manifest). Read from what describes the data (a meta file, a manifest, the
            class directories, the dataset's info), never from the examples; a subclass that knows
            them overrides it.

    Example:

    >>> from resnet.data import DigitsData
    >>> source = DigitsData()
    >>> image, label = next(iter(source.examples("train")))
    >>> image.dtype, image.shape, label.dtype
    (tf.uint8, TensorShape([32, 32, 3]), tf.int32)
    >>> tail = source.records("train").shuffle(64, seed=0).skip(1000)   # nothing decoded yet
    >>> len(list(source.decode(tail, "train")))
    437
    >>> source.class_names[:3]
    ['0', '1', '2']
    """

    name: str
    num_classes: int

    @property
    def class_names(self) -> list[str] | None:
        """The label names, `class_names[label]` naming label `label`; None where the source does not know them."""
        return None

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

        Only the records given are read and decoded (and checked, see `resnet.data.corrupt_records`).
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


def _check_directory(argument: str, path: str) -> None:
    if not tf.io.gfile.isdir(path):
        what = "is not a directory" if tf.io.gfile.exists(path) else "does not exist"
        raise DataError(f"`{argument}` {path!r} {what}.")
