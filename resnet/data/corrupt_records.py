"""What a source that decodes images in the graph does with a record it cannot read.

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
* A source may put a marker among its records where a stream could not be read to its end
  (`TFRecordData` does so for a truncated or corrupt shard, see `resnet.data.tfrecord`);
  `decode` reports the stream with the first record that could not be read.
* By default a problem stops iteration with `tf.errors.InvalidArgumentError` whose message names
  the file ("assertion failed: [could not read or decode /data/train/cat/1.jpg ...]"). With
  `skip_corrupt=True` the record is dropped instead: the TF runtime prints a warning naming it
  to stderr, the source's `skipped_count()` counts it (a damaged shard counts once: the
  records after the damage cannot be recovered), and `skipped_reports()` keeps the first few
  reports (`resnet-train` sums up each epoch's with them).
* Labels outside `[0, num_classes)` always stop iteration, whatever `skip_corrupt` says. They
  are checked after the `scan`, so a bad label never leaves the scan's state behind (a
  prefetch reading on would otherwise report the next record as lost).

The checks add a few dataset stages, all in TensorFlow's C++ runtime; benchmarks/RESULTS.md
gives what they cost.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import tensorflow as tf

from resnet.data.base import SPLITS, DataSource, _check_split

# Tags of marker records (see `_CorruptPolicy.decode_in_order`): the end of the records given to
# `decode`, and the place of a stream (a TFRecord shard) that could not be read to its end.
_END_TAG = -1
_DAMAGED_TAG = -2
# Records announced by one header element in `_CorruptPolicy.decode_in_order`.
_GROUP = 32
# Reports of skipped records a source keeps per split for summaries (`skipped_reports`).
_REPORTS_KEPT = 3


def _decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/GIF/BMP bytes -> uint8 [H, W, 3]; grayscale is replicated, alpha dropped."""
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def _fail_unless(ok: tf.Tensor, message: Callable[[], tf.Tensor]) -> tf.Operation:
    """An op that raises InvalidArgumentError with `message()` (built only on failure) unless `ok`."""
    return tf.cond(ok, tf.no_op, lambda: tf.debugging.Assert(False, [message()]))


class _CorruptPolicy:
    """What a source does with a record it cannot read: fail naming it, or drop and count it."""

    def __init__(self, owner: str, counter: tf.Variable | None, reports: tf.Variable | None = None):
        self.owner = owner
        self.counter = counter
        self.reports = reports

    def check(self, ok: tf.Tensor, message: Callable[[], tf.Tensor], count: tf.Tensor) -> tf.Operation:
        """An op that does nothing if `ok`; else fails with `message()`, or counts `count` skipped records."""
        if self.counter is None:
            hint = f" Fix or remove it, or set `{self.owner}.skip_corrupt = True` to skip unreadable records."
            return _fail_unless(ok, lambda: tf.strings.join([message(), hint]))

        def skip():
            text = message()
            updates = [self.counter.assign_add(tf.cast(count, tf.int64))]
            if self.reports is not None:  # the first few, for a summary (see `skipped_reports`)
                kept = self.reports.value()
                updates.append(self.reports.assign(tf.concat([kept, text[None]], 0)[:_REPORTS_KEPT]))
            with tf.control_dependencies(updates):
                return tf.print(f"WARNING: {self.owner} skipped:", text, output_stream=sys.stderr)

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
                tf.range(-1, size),
                each(streams),
                each(indices),
                tf.concat([[""], data], 0),
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

            def name():
                return describe(streams[slot][None], indices[slot][None])[0]

            def damage_message():
                return tf.strings.join(
                    [
                        "could not read ",
                        name(),
                        " or any record after it: the file is truncated or "
                        "corrupt (TensorFlow logs the cause as a warning).",
                    ]
                )

            def handle():
                """Names the records just found missing, and reports what ends here."""
                new = tf.strings.reduce_join(
                    describe(group_streams[expected:missing_end], group_indices[expected:missing_end]), separator=", "
                )
                separator = tf.where(tf.logical_and(missing, names != ""), ", ", "")
                all_names = tf.strings.join([names, separator, new])

                def gap_message():
                    return tf.strings.join(
                        ["could not read or decode ", all_names, " (TensorFlow logs the cause as a warning)."]
                    )

                reports = [
                    self.check(tf.logical_not(losses_end), gap_message, lost),
                    self.check(tf.logical_not(damaged), damage_message, 1),
                ]
                with tf.control_dependencies(reports):
                    return tf.identity(all_names)

            # One cond per element: names and reports are only built when something is wrong.
            trouble = tf.reduce_any(tf.stack([missing, losses_end, damaged]))
            names = tf.cond(trouble, handle, lambda: names)
            state = (
                streams,
                indices,
                tf.where(header, 0, slot + 1),
                tf.where(payload, tf.constant(0, tf.int64), lost),
                tf.where(payload, tf.constant(""), names),
            )
            # The record's stream and number go on for the label check, which runs after the
            # scan: an error inside the scan would leave its state behind while a prefetch
            # asks for the next element, which would then be reported as lost.
            at = tf.maximum(slot, 0)
            with tf.control_dependencies([names]):
                return state, (tf.identity(image), label, streams[at], indices[at], is_record)

        start = (
            tf.zeros([0], tf.int32),
            tf.zeros([0], tf.int64),
            tf.constant(0, tf.int32),
            tf.constant(0, tf.int64),
            tf.constant(""),
        )

        def checked(image, label, stream, index, is_record):
            del is_record
            if check_label is not None:
                ok, message = check_label(label)
                failure = _fail_unless(
                    ok, lambda: tf.strings.join([describe(stream[None], index[None])[0], ": ", message()])
                )
                with tf.control_dependencies([failure]):
                    return tf.identity(image), tf.identity(label)
            return image, label

        return (
            records.concatenate(end)
            .batch(_GROUP)
            .map(announce)
            .unbatch()
            .map(decode_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .ignore_errors(log_warning=True)
            .scan(start, find_losses)
            .filter(lambda image, label, stream, index, is_record: is_record)  # headers and markers out
            .map(checked)
        )


class _EncodedImageSource(DataSource):
    """A source that decodes JPEG/PNG bytes in the `tf.data` graph and may skip corrupt records."""

    def __init__(self, skip_corrupt: bool):
        if not isinstance(skip_corrupt, bool):
            raise ValueError(f"`skip_corrupt` must be True or False; received {skip_corrupt!r}.")
        self.skip_corrupt = skip_corrupt
        self._skipped: dict[str, tf.Variable] = {}
        self._reports: dict[str, tf.Variable] = {}
        if skip_corrupt:
            with tf.init_scope():
                self._skipped = {s: tf.Variable(0, dtype=tf.int64, trainable=False) for s in SPLITS}
                self._reports = {
                    s: tf.Variable(tf.zeros([0], tf.string), shape=tf.TensorShape([None]), trainable=False)
                    for s in SPLITS
                }

    def skipped_count(self, split: str | None = None) -> int:
        """Corrupt records skipped so far while reading `split` (both splits if None).

        Counts every time a record is met, so a corrupt image read in 3 epochs counts 3 times; a
        truncated TFRecord shard counts once per reading. Always 0 unless `skip_corrupt`. The
        count includes records a prefetching pipeline has read but not yet delivered.
        """
        splits = SPLITS if split is None else (_check_split(split),)
        return sum(int(self._skipped[s].numpy()) for s in splits if s in self._skipped)

    def skipped_reports(self, split: str, clear: bool = False) -> list[str]:
        """What was reported for the first few records skipped in `split` since the last clear
        (up to 3, each naming the file or record), for a summary; `clear` starts afresh."""
        variable = self._reports.get(_check_split(split))
        if variable is None:
            return []
        reports = [text.decode(errors="replace") for text in variable.numpy()]
        if clear:
            variable.assign(tf.zeros([0], tf.string))
        return reports

    def _policy(self, split: str) -> _CorruptPolicy:
        return _CorruptPolicy(type(self).__name__, self._skipped.get(split), self._reports.get(split))
