"""ImageNet-format TFRecord shards, read with a deterministic interleave and decoded in the graph.

Corrupt images are handled as `resnet.data.corrupt_records` describes. A shard is also checked
for truncation and corruption of its framing, which make `TFRecordDataset` stop with an error
that does not name the file (or, for a cut inside a record header, stop silently): while
`records` reads a shard, the bytes of the records read must add up to the file's size, else a
marker record follows the shard's last readable record, and `decode` reports the shard with the
first record that could not be read.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Sequence

import gin
import tensorflow as tf

from resnet.data.base import DataError
from resnet.data.corrupt_records import _DAMAGED_TAG, _GROUP, _decode_image, _EncodedImageSource
from resnet.validation import check_int

# TFRecord framing around each record: length (8 bytes), its CRC (4), data, data CRC (4).
_TFRECORD_FRAMING_BYTES = 16
# Shards read at once. Fixed (not AUTOTUNE), so the order of examples is the same on every machine.
_INTERLEAVE_CYCLE = 16
_IMAGE_FEATURE = "image/encoded"
_LABEL_FEATURE = "image/class/label"


def _expand_patterns(argument: str, patterns: str | Sequence[str]) -> list[str]:
    """Sorted files matching a glob pattern or a list of paths/patterns; each must match something."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    if not isinstance(patterns, Sequence) or not patterns:
        raise ValueError(
            f"`{argument}` must be a glob pattern or a non-empty list of paths/patterns; received {patterns!r}."
        )
    files = set()
    for pattern in map(str, patterns):
        matched = [f for f in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(f)]
        if not matched:
            hint = ""
            if tf.io.gfile.isdir(pattern):
                hint = (
                    f" It is a directory: to read its shards, give a pattern such as '{pattern.rstrip('/')}/train-*'."
                )
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
        if split not in self._sizes:
            # Sizes for the truncation check, fetched in parallel: on remote storage each stat is a round trip.
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
            return _decode_image(example[_IMAGE_FEATURE]), tf.cast(
                example[_LABEL_FEATURE] - self.label_offset, tf.int32
            )

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
                return tf.strings.join(
                    [
                        "label ",
                        tf.strings.as_string(label),
                        " (stored value ",
                        tf.strings.as_string(label + self.label_offset),
                        f", label_offset {self.label_offset}) is outside [0, {self.num_classes}). {hint}",
                    ]
                )

            return tf.logical_and(label >= 0, label < self.num_classes), message

        return self._policy(split).decode_in_order(records, decode, describe, check_label)


def _index_shard(shard: tf.Tensor, path: tf.Tensor, size: tf.Tensor) -> tf.data.Dataset:
    """A shard's records as `decode_in_order` takes them, then a marker if the shard is damaged.

    A truncated or damaged record makes `TFRecordDataset` raise `DataLossError` without naming
    the file (and a record cut inside its header reads as a clean end of file). `ignore_errors`
    ends the shard there instead, and the bytes of the records read then fall short of the
    file's size: a record tagged `_DAMAGED_TAG` follows the last one read. Records are counted
    a batch at a time (an empty batch closes the shard): one scan step per batch, not per record.
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
        return (consumed + tf.reduce_sum(lengths), count + read), (
            tf.fill([read + marker], shard),
            indices,
            records,
            tags,
        )

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
