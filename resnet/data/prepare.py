"""Writing one split of ImageNet-format TFRecord shards from an image folder or CIFAR batches.

What `resnet-prepare` runs, usable from Python:

>>> prepare_image_folder("/data/flowers/train", "/data/shards/train", shards=8)   # doctest: +SKIP
>>> prepare_cifar("/data/cifar-10-batches-py", "train", "/data/cifar10/train", shards=8)  # doctest: +SKIP

**Files.** Output `PREFIX` (a path or any `tf.io.gfile` URI) gets the shards
`PREFIX-00000-of-00008` ... `PREFIX-00007-of-00008` (TF Model Garden's names) and, last of all,
the manifest `PREFIX.manifest.json`. Each record is a `tf.train.Example` with `image/encoded`
(the image file's bytes, copied unchanged: a JPEG is never re-encoded; CIFAR rows are encoded as
PNG, so their pixels read back bit for bit), `image/format` ("jpeg", "png", ...),
`image/class/label` (int64, from 0), `image/class/text` (the class name, as Model Garden's
ImageNet shards have it) and `image/filename` (the image's path inside the folder, or
`data_batch_1:17` for row 17 of a CIFAR batch). Labels and class names follow the sources:
sorted class directories as `ImageFolderData` lists them; CIFAR's labels, named by `batches.meta`
(CIFAR-10) or `meta` (CIFAR-100), or "0", "1", ... without that file.

**Order.** Every listed example, corrupt or not, gets its shard from a permutation fixed by
`seed`: the permuted list is cut into `shards` runs of nearly equal length, each shard holding
its run in that order, so every shard mixes the classes. A corrupt image is left out of its
shard without moving any other, so which example goes where depends only on the source's
listing, the seed and the number of shards, never on an earlier call (or the number of threads):
the same call writes the same bytes.

**Validation.** Each image of a folder is read and decoded once, in parallel, with the decoder
`TFRecordData` uses, before any shard is written. Without `skip_corrupt` the first that fails
(in listing order) stops the call with a `DataError` naming the file, and nothing is written;
with it, corrupt files are left out, and listed (with the reason) in the result and the manifest.

**Writing.** Shards are written in parallel, each under a hidden temporary name beside it
(`.1a2b3c4d.train-00003-of-00008.tmp`, which no `train-*` pattern matches, and which
`TFRecordData` never reads) and renamed to its name once complete: a shard's name always means a
whole shard. The manifest, written last, means the split is complete:

    {"format": "resnet-prepare", "version": 1,
     "source": {"kind": "image_folder", "path": "/data/flowers/train"}, "seed": 0,
     "fingerprint": "<sha256 of the source, class names, skip_corrupt and each shard's examples>",
     "num_examples": 3303, "class_names": ["daisy", "dandelion", ...],
     "shards": [{"file": "train-00000-of-00008", "records": 413, "bytes": 27890123}, ...],
     "skipped": [{"file": "daisy/broken.jpg", "shard": "train-00002-of-00008", "error": "..."}]}

`TFRecordData` reads it for the split's size and class names (see `resnet.data.tfrecord` for
when it trusts it).

**Reruns.** While it writes, a call keeps `PREFIX.progress.json`, in the manifest's format,
listing the shards finished so far (replaced atomically after each one; deleted once the
manifest is written). A rerun of the same call, after a kill, a full disk or Ctrl-C, computes the
same assignment and fingerprint, and keeps a shard when the progress file (or the manifest of a
complete run) has that fingerprint, lists the shard, and gives its current byte size; only the
other shards' images are validated and written, and stale temporary files of the prefix are
removed. (A shard renamed in the instant before a kill, before the progress file named it, is
written again.) The source files of the finished shards are trusted not to have been edited in
place since: a file added, removed or renamed, another seed, shard count, source or
`skip_corrupt` changes the fingerprint, and every shard is written anew.

**What is refused.** Files at the prefix that another call completed with other settings (a
manifest of another fingerprint), or shard-named files with neither manifest nor progress file
(written by something else), are replaced only with `overwrite=True`; the leftovers of an
interrupted call are replaced without asking. When files are replaced, every
`PREFIX-NNNNN-of-MMMMM` file that is not a shard of the new call (another shard count, say) is
deleted, so that `PREFIX-*` matches exactly the new shards. An output inside the image folder is
refused (it would become a class directory). Run one call per prefix at a time.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import itertools
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf

from resnet.data.base import DataError
from resnet.data.cifar import CifarData
from resnet.data.corrupt_records import _decode_image
from resnet.data.image_folder import _list_classes
from resnet.data.tfrecord import (
    _IMAGE_FEATURE,
    _LABEL_FEATURE,
    MANIFEST_FORMAT,
    MANIFEST_SUFFIX,
    MANIFEST_VERSION,
    PROGRESS_SUFFIX,
    Manifest,
    read_manifest,
    shard_path,
)
from resnet.storage.files import join, local_path, read_bytes, remove_if_present, temporary_name, write_atomically
from resnet.validation import check_choice, check_int, listing

PROGRESS = ("auto", "bar", "lines", "none")
"""How a call shows its progress: a bar on a terminal and lines otherwise ("auto"), or as named."""

_CLASS_TEXT_FEATURE = "image/class/text"
_FORMAT_FEATURE = "image/format"
_FILENAME_FEATURE = "image/filename"
# The first bytes of the formats `tf.io.decode_image` reads.
_MAGIC = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF8", "gif"), (b"BM", "bmp"))


@dataclasses.dataclass(frozen=True)
class PreparedSplit:
    """What a call of `prepare_image_folder` or `prepare_cifar` wrote.

    Attributes:
        manifest: The manifest's path, `PREFIX.manifest.json`.
        shards: The shards' paths, in order.
        num_examples: Records in all shards.
        class_names: `class_names[label]` names a label.
        skipped: `(file, reason)` of each corrupt image left out (`skip_corrupt`), by file.
        kept: The shards an earlier call had finished, left as they were.

    Example:

    >>> split = prepare_image_folder("/data/flowers/train", "/data/shards/train", shards=8)  # doctest: +SKIP
    >>> split.pattern, split.num_examples                                                    # doctest: +SKIP
    ('/data/shards/train-*-of-00008', 3303)
    """

    manifest: str
    shards: tuple[str, ...]
    num_examples: int
    class_names: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    kept: tuple[str, ...]

    @property
    def pattern(self) -> str:
        """A glob pattern that matches exactly the shards (for `TFRecordData.train_files`, say)."""
        return re.sub(r"-\d{5}-of-(\d{5})$", r"-*-of-\1", self.shards[0])


class _ImageFolder:
    """The images of a folder, one subdirectory per class, listed as `ImageFolderData` lists them."""

    validates = True

    def __init__(self, folder: str):
        classes = _list_classes("image_folder", folder)
        self.class_names = sorted(classes)
        self.description = {"kind": "image_folder", "path": folder}
        self.paths = [path for name in self.class_names for path in classes[name]]
        self.keys = [f"{name}/{os.path.basename(path)}" for name in self.class_names for path in classes[name]]
        self.labels = [label for label, name in enumerate(self.class_names) for _ in classes[name]]

    def problem(self, index: int) -> str | None:
        """Why image `index` cannot be read and decoded as `TFRecordData` decodes it, or None if it can."""
        try:
            _decode_image(tf.io.read_file(self.paths[index]))
        except tf.errors.OpError as error:
            return _op_message(error)
        return None

    def encoded(self, index: int) -> tuple[bytes, str]:
        data = read_bytes(self.paths[index])
        if data is None:
            raise DataError(f"{self.paths[index]}: the image disappeared while its shard was written.")
        return data, _image_format(data)


class _CifarBatches:
    """The rows of a CIFAR split's batches, encoded as PNG when written."""

    validates = False  # rows are pixels, checked for shape and labels as the batches are read

    def __init__(self, cifar_dir: str, split: str, num_classes: int):
        source = CifarData(cifar_dir, num_classes)
        batches = source.batches(split)
        self.class_names = source.read_class_names() or [str(label) for label in range(num_classes)]
        self.description = {"kind": "cifar", "path": cifar_dir, "split": split, "num_classes": num_classes}
        self.images = np.concatenate([images for _, images, _ in batches])
        self.keys = [f"{name}:{row}" for name, images, _ in batches for row in range(len(images))]
        self.labels = [int(label) for _, _, labels in batches for label in labels]

    def encoded(self, index: int) -> tuple[bytes, str]:
        return tf.io.encode_png(self.images[index]).numpy(), "png"


def prepare_image_folder(
    image_folder: str,
    output: str,
    shards: int,
    *,
    seed: int = 0,
    skip_corrupt: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    progress: str = "auto",
) -> PreparedSplit:
    """Writes the images of a folder (one subdirectory per class) as TFRecord shards and a manifest.

    See the module docstring for the files, the order, validation and reruns.

    Args:
        image_folder: The split's folder, e.g. `/data/flowers/train` holding `daisy/0001.jpg`, ...
        output: The shards' prefix: `PREFIX-00000-of-000NN`, and `PREFIX.manifest.json`.
        shards: How many shards to write.
        seed: Fixes which shard each image goes to, and the order inside it.
        skip_corrupt: Leave images that cannot be decoded out (and list them) instead of failing.
        overwrite: Replace what another call (or tool) left at the prefix.
        workers: Threads that decode and write (default: one per CPU).
        progress: One of `PROGRESS`.

    Returns:
        What was written.

    Raises:
        DataError: A wrong layout, a corrupt image (without `skip_corrupt`); nothing is written.
        ValueError: A bad argument, or files at the prefix that only `overwrite` may replace.

    Example:

    >>> split = prepare_image_folder("/data/flowers/train", "/data/shards/train", shards=8)  # doctest: +SKIP
    """
    preparation = _Preparation(output, shards, seed, skip_corrupt, overwrite, workers, progress)
    image_folder = str(image_folder)
    if _inside(os.path.dirname(preparation.output), image_folder):
        raise ValueError(
            f"`output` {preparation.output!r} lies inside `image_folder` {image_folder!r}: its directory would be "
            "read as a class. Write the shards outside the image folder."
        )
    return preparation.run(_ImageFolder(image_folder))


def prepare_cifar(
    cifar_dir: str,
    split: str,
    output: str,
    shards: int,
    *,
    num_classes: int = 10,
    seed: int = 0,
    overwrite: bool = False,
    workers: int | None = None,
    progress: str = "auto",
) -> PreparedSplit:
    """Writes one split of the CIFAR-10/100 python batches as TFRecord shards (PNG) and a manifest.

    See the module docstring for the files, the order and reruns.

    Args:
        cifar_dir: The batches' directory (`cifar-10-batches-py/`, `cifar-100-python/`).
        split: 'train', or 'eval' (also called 'test': `test_batch`, `test`).
        output: The shards' prefix: `PREFIX-00000-of-000NN`, and `PREFIX.manifest.json`.
        shards: How many shards to write.
        num_classes: 10 for CIFAR-10, 100 for CIFAR-100.
        seed: Fixes which shard each image goes to, and the order inside it.
        overwrite: Replace what another call (or tool) left at the prefix.
        workers: Threads that encode and write (default: one per CPU).
        progress: One of `PROGRESS`.

    Returns:
        What was written.

    Raises:
        DataError: A missing or unreadable batch file.
        ValueError: A bad argument, or files at the prefix that only `overwrite` may replace.

    Example:

    >>> split = prepare_cifar("/data/cifar-10-batches-py", "train", "/data/cifar10/train", shards=8)  # doctest: +SKIP
    >>> split.class_names[:2], split.num_examples                                                   # doctest: +SKIP
    (('airplane', 'automobile'), 50000)
    """
    split = {"test": "eval"}.get(check_choice("split", split, ("train", "eval", "test")), split)
    preparation = _Preparation(output, shards, seed, False, overwrite, workers, progress)
    return preparation.run(_CifarBatches(str(cifar_dir), split, num_classes))


class _Preparation:
    """One call: its settings (checked first), then the plan (which example goes to which shard),
    the checks of the prefix and of the images, and the writing."""

    def __init__(self, output: str, shards: int, seed: int, skip_corrupt: bool, overwrite: bool, workers, progress):
        self.output = _check_output(output)
        self.count = check_int("shards", shards)
        self.seed = check_int("seed", seed, minimum=0)
        for argument, value in (("skip_corrupt", skip_corrupt), ("overwrite", overwrite)):
            if not isinstance(value, bool):
                raise ValueError(f"`{argument}` must be True or False; received {value!r}.")
        self.skip_corrupt, self.overwrite = skip_corrupt, overwrite
        self.workers = (os.cpu_count() or 1) if workers is None else check_int("workers", workers)
        self.progress = check_choice("progress", progress, PROGRESS)
        if self.progress == "auto":
            self.progress = "bar" if sys.stdout.isatty() else "lines"
        self.paths = [shard_path(self.output, index, self.count) for index in range(self.count)]
        self.names = [os.path.basename(path) for path in self.paths]

    def run(self, source) -> PreparedSplit:
        """Writes what is missing of `source`'s shards and the manifest (see the module docstring)."""
        self.source = source
        total = len(source.keys)
        if self.count > total:
            raise ValueError(f"`shards` is {self.count}, more than the {total} images to write; use at most {total}.")
        order = np.random.default_rng(self.seed).permutation(total)
        self.members = [part.tolist() for part in np.array_split(order, self.count)]
        self.fingerprint = self._fingerprint()
        return self._write_missing()

    def _fingerprint(self) -> str:
        """sha256 of what the shards hold: the source, its class names, `skip_corrupt` and each shard's examples."""
        digest = hashlib.sha256()
        header = {
            "version": MANIFEST_VERSION,
            "source": self.source.description,
            "class_names": self.source.class_names,
            "skip_corrupt": self.skip_corrupt,
        }
        digest.update(json.dumps(header, sort_keys=True).encode())
        for members in self.members:
            shard = [[self.source.keys[i], self.source.labels[i]] for i in members]
            digest.update(b"\n" + json.dumps(shard).encode())
        return digest.hexdigest()

    def _write_missing(self) -> PreparedSplit:
        manifest_file, progress_file = self.output + MANIFEST_SUFFIX, self.output + PROGRESS_SUFFIX
        manifest, progress, existing = self._previous(manifest_file, progress_file)
        complete = manifest is not None and manifest.fingerprint == self.fingerprint
        previous = manifest if complete else progress
        if previous is not None and previous.fingerprint != self.fingerprint:
            previous = None
        finished = self._finished(previous)
        skipped = {
            key: (shard, error) for key, shard, error in (previous.skipped if previous else ()) if shard in finished
        }
        todo = [index for index, name in enumerate(self.names) if name not in finished]
        others = sorted(set(existing) - set(self.names))  # shards of another call, e.g. of another count
        if todo or others or not complete:
            shard_of = {i: index for index in todo for i in self.members[index]}
            problems = self._validate(list(shard_of)) if self.source.validates else {}
            skipped.update({self.source.keys[i]: (self.names[shard_of[i]], error) for i, error in problems.items()})
            # Only now, every check passed, is anything at the prefix changed: the progress file first
            # (the prefix is then an interrupted call's, ours to finish), then the manifest goes.
            tf.io.gfile.makedirs(os.path.dirname(self.output) or ".")
            self._save(progress_file, finished, skipped)
            remove_if_present(manifest_file)
            for name in others:
                remove_if_present(join(os.path.dirname(self.output), name))
            self._remove_temporaries()
            self._write(todo, problems, finished, skipped, progress_file)
            self._save(manifest_file, finished, skipped)
        else:
            self._remove_temporaries()
        remove_if_present(progress_file)
        return PreparedSplit(
            manifest=manifest_file,
            shards=tuple(self.paths),
            num_examples=sum(entry["records"] for entry in finished.values()),
            class_names=tuple(self.source.class_names),
            skipped=tuple(sorted((key, error) for key, (_, error) in skipped.items())),
            kept=tuple(path for index, path in enumerate(self.paths) if index not in todo),
        )

    def _previous(self, manifest_file: str, progress_file: str):
        """The manifest and progress file of earlier calls (None where absent), and the shard-named
        files at the prefix (any shard count).

        Raises ValueError, unless `overwrite`, if the prefix holds what another call completed with
        other settings, a damaged manifest, or shard-named files that no call of ours described.
        """
        shard_name = re.compile(re.escape(os.path.basename(self.output)) + r"-\d{5}-of-\d{5}")
        existing = sorted(
            entry.rstrip("/")
            for entry in _listdir(os.path.dirname(self.output))
            if shard_name.fullmatch(entry.rstrip("/"))
        )
        reason = manifest = progress = None
        try:
            manifest = read_manifest(manifest_file)
        except DataError as error:
            reason = f"holds a damaged manifest ({error})"
        unfinished = tf.io.gfile.exists(progress_file)  # the files of an interrupted call: ours to replace
        if unfinished:
            try:
                progress = read_manifest(progress_file)
            except DataError:
                pass  # damaged: its shards are written again
        elif reason is None and manifest is not None and manifest.fingerprint != self.fingerprint:
            reason = "holds a complete split that resnet-prepare wrote from another source or with other settings"
        elif reason is None:
            foreign = sorted(set(existing) - set(manifest.shards if manifest else ()))
            if foreign:
                reason = f"holds shard files that no manifest of resnet-prepare describes: {listing(foreign)}"
        if reason is not None and not self.overwrite:
            raise ValueError(
                f"`output` {self.output!r} {reason}. Pass overwrite=True (--overwrite) to replace them, or choose "
                "another prefix."
            )
        return manifest, progress, existing

    def _finished(self, previous: Manifest | None) -> dict[str, dict]:
        """The shards `previous` (of this call's fingerprint) lists that still have the size it recorded."""
        finished = {}
        for name, path in zip(self.names, self.paths, strict=True):
            if previous is not None and name in previous.shards:
                records, size = previous.shards[name]
                try:
                    if tf.io.gfile.stat(path).length == size:
                        finished[name] = {"file": name, "records": records, "bytes": size}
                except tf.errors.NotFoundError:
                    pass
        return finished

    def _validate(self, indices: list[int]) -> dict[int, str]:
        """Decodes the images `indices` in parallel: `{index: reason}` of those that fail (with
        `skip_corrupt`); without it, the first to fail in listing order raises `DataError`."""
        indices = sorted(indices)
        problems = {}
        bar = _Progress(self.progress, f"Checking {len(indices)} images", len(indices))
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            for done, (index, problem) in enumerate(
                _map_in_order(pool, lambda i: (i, self.source.problem(i)), indices, 8 * self.workers), 1
            ):
                if problem is not None:
                    if not self.skip_corrupt:
                        raise DataError(
                            f"{self.source.paths[index]}: cannot be decoded ({problem}). Nothing was written. Fix or "
                            "remove it, or set `skip_corrupt` (--skip_corrupt) to leave corrupt images out."
                        )
                    problems[index] = problem
                bar.update(done)
        return problems

    def _write(self, todo, problems, finished, skipped, progress_file) -> None:
        """Writes the shards `todo` in parallel, recording each in the progress file as it is renamed into place."""
        members = {index: [i for i in self.members[index] if i not in problems] for index in todo}
        total = sum(len(m) for m in members.values())
        bar = _Progress(self.progress, f"Writing {len(todo)} shards of {total} images", total)
        stop, lock, written = threading.Event(), threading.Lock(), [0]

        def write(index: int) -> dict:
            path = self.paths[index]
            temporary = temporary_name(path)
            try:
                with tf.io.TFRecordWriter(temporary) as writer:
                    for i in members[index]:
                        if stop.is_set():
                            raise _Stopped
                        writer.write(self._example(i))
                        with lock:
                            written[0] += 1
                size = tf.io.gfile.stat(temporary).length
                tf.io.gfile.rename(temporary, path, overwrite=True)
            except BaseException:
                remove_if_present(temporary)
                raise
            return {"file": self.names[index], "records": len(members[index]), "bytes": size}

        def record(done: Iterable[concurrent.futures.Future]) -> list[BaseException]:
            """Records the shards of `done` that were written (in the progress file); returns the others' errors."""
            errors, new = [], False
            for future in done:
                if future.cancelled():
                    continue
                error = future.exception()
                if error is None:
                    entry = future.result()
                    finished[entry["file"]], new = entry, True
                elif not isinstance(error, _Stopped):
                    errors.append(error)
            if new:
                self._save(progress_file, finished, skipped)
            return errors

        with concurrent.futures.ThreadPoolExecutor(min(self.workers, max(len(todo), 1))) as pool:
            pending = {pool.submit(write, index) for index in todo}
            try:
                while pending:
                    done, pending = concurrent.futures.wait(
                        pending, timeout=0.25, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    errors = record(done)
                    bar.update(written[0])
                    if errors:
                        raise errors[0]
            except BaseException:
                stop.set()
                for future in pending:
                    future.cancel()
                # The writers stop at their next record; a shard that was renamed meanwhile is kept.
                record(concurrent.futures.wait(pending).done)
                raise

    def _example(self, index: int) -> bytes:
        encoded, image_format = self.source.encoded(index)
        label = self.source.labels[index]

        def text(value: str) -> tf.train.Feature:
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))

        features = {
            _IMAGE_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
            _FORMAT_FEATURE: text(image_format),
            _LABEL_FEATURE: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            _CLASS_TEXT_FEATURE: text(self.source.class_names[label]),
            _FILENAME_FEATURE: text(self.source.keys[index]),
        }
        # Deterministic: map fields (the features) in key order, so that every run writes the same bytes.
        return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(deterministic=True)

    def _save(self, path: str, finished: dict[str, dict], skipped: dict[str, tuple[str, str]]) -> None:
        """Writes the manifest (or the progress file) of the shards `finished`."""
        shards = [finished[name] for name in self.names if name in finished]
        content = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "source": self.source.description,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "num_examples": sum(entry["records"] for entry in shards),
            "class_names": list(self.source.class_names),
            "shards": shards,
            "skipped": [
                {"file": key, "shard": shard, "error": error} for key, (shard, error) in sorted(skipped.items())
            ],
        }
        write_atomically(path, json.dumps(content, indent=1) + "\n")

    def _remove_temporaries(self) -> None:
        """Removes what killed calls left: temporary shards, manifests and progress files of the prefix."""
        directory = os.path.dirname(self.output)
        names = "|".join(map(re.escape, (MANIFEST_SUFFIX, PROGRESS_SUFFIX)))
        stale = re.compile(
            r"\.[0-9a-f]{8}\." + re.escape(os.path.basename(self.output)) + rf"(-\d{{5}}-of-\d{{5}}|{names})\.tmp"
        )
        for entry in _listdir(directory):
            if stale.fullmatch(entry):
                remove_if_present(join(directory, entry))


class _Stopped(Exception):
    """A shard writer stopped because the call is ending (another shard failed, or Ctrl-C)."""


def _map_in_order(pool, function: Callable, items: Iterable, window: int) -> Iterator:
    """`function(item)` for each item, computed by `pool` at most `window` ahead, yielded in order."""
    items = iter(items)
    pending = collections.deque(pool.submit(function, item) for item in itertools.islice(items, window))
    try:
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(function, item) for item in itertools.islice(items, 1))
            yield result
    finally:
        for future in pending:
            future.cancel()


class _Progress:
    """A progress bar (`keras.utils.Progbar`), a line each tenth of the way, or nothing."""

    def __init__(self, mode: str, title: str, total: int):
        self.mode = "none" if total == 0 else mode
        self.total, self.tenths = total, 0
        self.bar = None
        if self.mode != "none":
            print(f"{title}...", flush=True)
        if self.mode == "bar":
            import keras

            self.bar = keras.utils.Progbar(total, unit_name="image")

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done)
        elif self.mode == "lines" and done * 10 // self.total > self.tenths:
            self.tenths = done * 10 // self.total
            print(f"  {done}/{self.total}", flush=True)


def _check_output(output: str) -> str:
    """`output` as a prefix of file names, refused if it is empty, a directory, or ends with a separator."""
    output = str(output)
    name = os.path.basename(output)
    if not output.strip() or not name or name in (".", ".."):
        raise ValueError(
            f"`output` must be a prefix of file names such as '/data/shards/train' (the shards are "
            f"PREFIX-00000-of-00008 ...); received {output!r}."
        )
    # ram:// calls any prefix of a file's path a directory: a real one is listed in its parent.
    if tf.io.gfile.isdir(output) and name in {entry.rstrip("/") for entry in _listdir(os.path.dirname(output))}:
        raise ValueError(
            f"`output` {output!r} is a directory; give a prefix of file names inside it, "
            f"e.g. {join(output, 'train')!r}."
        )
    return output


def _listdir(directory: str) -> list[str]:
    """The entries of `directory` ("" is the working directory), or none if it does not exist."""
    try:
        return tf.io.gfile.listdir(directory or ".")
    except tf.errors.NotFoundError:
        return []


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies below it (symbolic links resolved for local paths)."""

    def normal(p: str) -> str:
        local = local_path(p)
        return os.path.realpath(local or ".") if local is not None else p.rstrip("/")

    path, folder = normal(path), normal(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _image_format(data: bytes) -> str:
    return next((name for magic, name in _MAGIC if data.startswith(magic)), "unknown")


def _op_message(error: tf.errors.OpError) -> str:
    """A TensorFlow op's error message without the function and op names it is wrapped in."""
    message = re.sub(r"^\{\{[^}]*\}\}\s*", "", error.message)
    return re.sub(r"\s*\[Op:\w+\].*$", "", message, flags=re.DOTALL).strip() or type(error).__name__
