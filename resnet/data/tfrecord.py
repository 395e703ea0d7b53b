"""ImageNet-format TFRecord shards, read with a deterministic interleave and decoded in the graph.

Corrupt images are handled as `resnet.data.corrupt_records` describes. A shard is also checked
for truncation and corruption of its framing, which make `TFRecordDataset` stop with an error
that does not name the file (or, for a cut inside a record header, stop silently): while
`records` reads a shard, the bytes of the records read must add up to the file's size, else a
marker record follows the shard's last readable record, and `decode` reports the shard with the
first record that could not be read.

Shards written by `resnet-prepare` (`resnet.data.prepare`) come with a manifest beside them,
`<PREFIX>.manifest.json` for `<PREFIX>-00000-of-00008` ..., listing each shard's file name,
record count and byte size, and the class names. A split's manifests are used only when they
describe exactly the files its patterns match: every matched file is named `<PREFIX>-NNNNN-of-MMMMM`,
each prefix has a manifest, and the manifest lists exactly that prefix's matched files (a pattern
matching some of a split's shards, or a manifest that is not one, is ignored with a warning on
stderr; files without a manifest, silently). The split's size and the class names are then
taken from them, but only once every shard still has the size its manifest recorded (checked
when first needed, with the same stats the truncation check makes): a shard replaced or cut
since makes the manifest stale, ignored with a warning, and the records are counted as for any
shards. Manifests of a split, and of the two splits, must name the same classes: labels that
mean different classes are refused at construction.

Patterns never match hidden files (names starting with ".", such as `resnet-prepare`'s
temporary shards) or `resnet-prepare`'s `.manifest.json` / `.progress.json` files.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence

import gin
import tensorflow as tf

from resnet.data.base import SPLITS, DataError
from resnet.data.corrupt_records import _DAMAGED_TAG, _GROUP, _decode_image, _EncodedImageSource
from resnet.storage.files import read_text
from resnet.validation import check_int, listing

# TFRecord framing around each record: length (8 bytes), its CRC (4), data, data CRC (4).
_TFRECORD_FRAMING_BYTES = 16
# Shards read at once. Fixed (not AUTOTUNE), so the order of examples is the same on every machine.
_INTERLEAVE_CYCLE = 16
_IMAGE_FEATURE = "image/encoded"
_LABEL_FEATURE = "image/class/label"

MANIFEST_SUFFIX = ".manifest.json"
"""`<PREFIX>` + this names the manifest of the shards `<PREFIX>-00000-of-00008` ... (see `resnet.data.prepare`)."""
PROGRESS_SUFFIX = ".progress.json"
"""`<PREFIX>` + this names the shards `resnet-prepare` has finished while it writes (see `resnet.data.prepare`)."""
MANIFEST_FORMAT = "resnet-prepare"
MANIFEST_VERSION = 1
# A shard's name in the TF Model Garden convention: `<prefix>-00003-of-00008`.
_SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})$")


def shard_path(prefix: str, index: int, count: int) -> str:
    """The path of shard `index` of `count` with `prefix` (Model Garden's convention).

    >>> shard_path("gs://bucket/shards/train", 3, 8)
    'gs://bucket/shards/train-00003-of-00008'
    """
    return f"{prefix}-{index:05d}-of-{count:05d}"


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A manifest `resnet-prepare` wrote beside its shards, as read back and checked.

    Attributes:
        path: The manifest file.
        fingerprint: What the shards hold (see `resnet.data.prepare`), a hex string.
        shards: `{shard file name: (records, bytes)}`, file names relative to the manifest's directory.
        class_names: `class_names[label]` names a stored label.
        skipped: `(file, shard, error)` of the corrupt source images left out.

    Example:

    >>> manifest = read_manifest("/data/shards/train.manifest.json")   # doctest: +SKIP
    >>> sum(records for records, _ in manifest.shards.values())          # doctest: +SKIP
    3303
    """

    path: str
    fingerprint: str
    shards: dict[str, tuple[int, int]]
    class_names: list[str]
    skipped: list[tuple[str, str, str]]


def read_manifest(path: str) -> Manifest | None:
    """The manifest (or progress file) at `path`, or None if there is no file.

    Raises:
        DataError: The file is not a manifest of this format version (what is wrong is named).
    """
    try:
        text = read_text(path)
    except ValueError as error:  # not UTF-8
        raise DataError(str(error)) from None
    if text is None:
        return None
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not JSON ({error}); it is not a manifest resnet-prepare wrote.") from None

    def problem(what: str) -> DataError:
        return DataError(f"{path}: {what}; it is not a version-{MANIFEST_VERSION} manifest of resnet-prepare.")

    if not isinstance(content, dict):
        raise problem(f"it holds a JSON {type(content).__name__}, not an object")
    if content.get("format") != MANIFEST_FORMAT:
        raise problem(f"'format' is {content.get('format')!r}, not {MANIFEST_FORMAT!r}")
    if content.get("version") != MANIFEST_VERSION:
        raise problem(f"'version' is {content.get('version')!r}")

    def is_count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    shards = content.get("shards")
    if not isinstance(shards, list) or not all(
        isinstance(entry, dict)
        and isinstance(entry.get("file"), str)
        and _SHARD_NAME.match(entry["file"])
        and "/" not in entry["file"]
        and is_count(entry.get("records"))
        and is_count(entry.get("bytes"))
        for entry in shards
    ):
        raise problem("'shards' must be a list of {'file': shard name, 'records': count, 'bytes': size}")
    names = content.get("class_names")
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise problem("'class_names' must be a list of strings")
    skipped = content.get("skipped", [])
    if not isinstance(skipped, list) or not all(
        isinstance(entry, dict) and all(isinstance(entry.get(key), str) for key in ("file", "shard", "error"))
        for entry in skipped
    ):
        raise problem("'skipped' must be a list of {'file', 'shard', 'error'} strings")
    fingerprint = content.get("fingerprint")
    if not isinstance(fingerprint, str):
        raise problem("'fingerprint' must be a string")
    return Manifest(
        path=path,
        fingerprint=fingerprint,
        shards={entry["file"]: (entry["records"], entry["bytes"]) for entry in shards},
        class_names=names,
        skipped=[(entry["file"], entry["shard"], entry["error"]) for entry in skipped],
    )


def _warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class _Listing:
    """What the manifests of a split say: `{shard path: (records, bytes, manifest path)}` and the class names."""

    shards: dict[str, tuple[int, int, str]]
    class_names: list[str]


def _split_listing(argument: str, files: list[str]) -> _Listing | None:
    """The manifests that describe exactly `files` (see the module docstring), or None."""
    groups: dict[str, dict[str, str]] = {}  # prefix -> {shard file name: path}
    for path in files:
        name = os.path.basename(path)
        match = _SHARD_NAME.match(name)
        if match is None:
            return None
        groups.setdefault(path[: len(path) - len(name)] + match["prefix"], {})[name] = path
    shards, names = {}, None
    for prefix, paths in sorted(groups.items()):
        path = prefix + MANIFEST_SUFFIX
        try:
            manifest = read_manifest(path)
        except DataError as error:
            _warn(f"{error} It is ignored.")
            return None
        if manifest is None:
            return None
        if manifest.shards.keys() != paths.keys():
            unlisted = sorted(paths.keys() - manifest.shards.keys())
            _warn(
                f"{path} lists {len(manifest.shards)} shards, but `{argument}` matches {len(paths)} files of its "
                f"prefix{f' (not listed: {listing(unlisted)})' if unlisted else ''}: the manifest does not describe "
                "these files, so it is ignored and their records are counted."
            )
            return None
        if names is not None and manifest.class_names != names:
            raise DataError(
                f"The manifests of `{argument}` name different classes: {path} names {manifest.class_names}; "
                f"another names {names}. Labels would mean different classes in different shards."
            )
        names = manifest.class_names
        shards.update({paths[name]: (*manifest.shards[name], path) for name in paths})
    return _Listing(shards, names)


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
        matched = [f for f in tf.io.gfile.glob(pattern) if not _is_bookkeeping(f) and not tf.io.gfile.isdir(f)]
        if not matched:
            hint = ""
            if tf.io.gfile.isdir(pattern):
                hint = (
                    f" It is a directory: to read its shards, give a pattern such as '{pattern.rstrip('/')}/train-*'."
                )
            raise DataError(f"No file matches `{argument}` {pattern!r}.{hint}")
        files.update(matched)
    return sorted(files)


def _is_bookkeeping(path: str) -> bool:
    """A hidden file (a temporary shard), or a manifest or progress file: never a shard."""
    name = os.path.basename(path)
    return name.startswith(".") or name.endswith((MANIFEST_SUFFIX, PROGRESS_SUFFIX))


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

    Shards that `resnet-prepare` wrote come with a manifest: for a split it describes (exactly
    the files matched, each of the size recorded), `num_examples` is the manifest's count instead
    of None, and `class_names` names the labels; see the module docstring for when a manifest is
    trusted.

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
    >>> prepared = TFRecordData("/data/shards/train-*", "/data/shards/eval-*", num_classes=5)  # doctest: +SKIP
    >>> prepared.num_examples("train"), prepared.class_names[:2]                              # doctest: +SKIP
    (3303, ['daisy', 'dandelion'])
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
        # What the splits' manifests say (only the manifests are read here); trusted once the
        # shards' sizes have been checked against them (`_trusted_listing`).
        self._listings = {
            split: _split_listing(f"TFRecordData.{split}_files", files) for split, files in self._files.items()
        }
        train, evaluation = self._listings["train"], self._listings["eval"]
        if train is not None and evaluation is not None and train.class_names != evaluation.class_names:
            raise DataError(
                "The manifests of `TFRecordData.train_files` and `eval_files` name different classes: "
                f"{train.class_names} and {evaluation.class_names}. Labels would mean different classes in the two "
                "splits: prepare both from folders with the same class directories."
            )
        self._trusted: dict[str, _Listing | None] = {}

    @property
    def class_names(self) -> list[str] | None:
        """Names of the labels, `class_names[label]` (after `label_offset`), from the manifests of
        shards `resnet-prepare` wrote; None when no trusted manifest names them."""
        for split in SPLITS:
            known = self._trusted_listing(split)
            if known is not None:
                return known.class_names[self.label_offset :] if self.label_offset >= 0 else None
        return None

    def train_shards(self) -> list[str]:
        """The training split's shard files, sorted: what `InputPipeline.shard_by = 'files'`
        divides between the workers."""
        return list(self._files["train"])

    def with_train_shards(self, files: Sequence[str]) -> TFRecordData:
        """This source with only `files`, some of `train_shards()`, as its training split (the
        evaluation split, the checks and what the manifests say of those shards are kept).

        Example:

        >>> source = TFRecordData("/data/shards/train-*", "/data/shards/eval-*", num_classes=5)  # doctest: +SKIP
        >>> worker_1_of_4 = source.with_train_shards(source.train_shards()[1::4])               # doctest: +SKIP
        """
        unknown = sorted(set(map(str, files)) - set(self._files["train"]))
        if unknown or not files:
            raise ValueError(
                f"`files` must be some of the training shards (`train_shards()`); received {listing(unknown)}."
                if unknown
                else "`files` must name at least one training shard."
            )
        subset = copy.copy(self)
        subset._files = {**self._files, "train": sorted(map(str, files))}
        subset._sizes = {split: sizes for split, sizes in self._sizes.items() if split != "train"}
        subset._trusted = {split: known for split, known in self._trusted.items() if split != "train"}
        known = self._listings["train"]
        if known is not None:
            known = _Listing({path: known.shards[path] for path in subset._files["train"]}, known.class_names)
        subset._listings = {**self._listings, "train": known}
        return subset

    def _num_examples(self, split: str) -> int | None:
        known = self._trusted_listing(split)
        if known is None:
            return None  # counting needs a pass over every shard
        return sum(records for records, _, _ in known.shards.values())

    def _trusted_listing(self, split: str) -> _Listing | None:
        """The split's manifest listing if every shard still has the size it records, else None (warned once)."""
        if split not in self._trusted:
            known = self._listings[split]
            if known is not None:
                for path, size in zip(self._files[split], self._shard_sizes(split), strict=True):
                    _, recorded, manifest = known.shards[path]
                    if size != recorded:
                        _warn(
                            f"{path} is {size} bytes, but {manifest} recorded {recorded}: the shard was replaced or "
                            "changed since, so the manifest is ignored and the records are counted. Run "
                            "resnet-prepare again to write the shards and their manifest anew."
                        )
                        known = None
                        break
            self._trusted[split] = known
        return self._trusted[split]

    def _shard_sizes(self, split: str) -> list[int]:
        """The byte sizes of the split's shards, stat'ed once."""
        if split not in self._sizes:
            # Fetched in parallel: on remote storage each stat is a round trip.
            with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
                self._sizes[split] = list(pool.map(lambda f: tf.io.gfile.stat(f).length, self._files[split]))
        return self._sizes[split]

    def _records(self, split: str) -> tf.data.Dataset:
        files = self._files[split]
        sizes = tf.constant(self._shard_sizes(split), tf.int64)  # for the truncation check
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
