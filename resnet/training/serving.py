"""Exporting a trained model for serving: uint8 images in, probabilities and classes out.

The formats and how each is converted and checked are in `resnet.training.deploy`.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from resnet.data.base import DataSource
from resnet.data.preprocessing import Preprocessing, resize_to_fill
from resnet.fold import fold_batch_norm
from resnet.training import deploy, rundir
from resnet.training.rundir import _alive, _now, _process_start, _read_lock, _timestamp, join, local_path
from resnet.validation import check_int

CHECK_IMAGES = 16
CALIBRATION_IMAGES = 256
MAX_INPUT_SIDE = 8192
"""The largest image side an export takes (`tflite_input_size`, also the size its checks run at).
8K UHD frames (7680x4320), the largest standard image format, fit. Memory grows with height x
width: at 8192x8192 one image is 201 MB as uint8 and ResNet-50's first activations alone take
4.3 GB in float32, so a larger value is a typo, not a size anyone serves a classifier at (and
sizes near the bound need a large machine)."""


def export_for_serving(
    model: keras.Model,
    preprocessing: Preprocessing,
    output: str | os.PathLike,
    from_logits: bool = True,
    overwrite: bool = False,
    formats: Sequence[str] = ("saved_model",),
    quantize: Sequence[str] = (),
    data: DataSource | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    tflite_input_size: Sequence[int] | None = None,
    progress: Callable[[str], None] | None = None,
    model_dir: str | os.PathLike | None = None,
) -> str:
    """Writes the model with its preprocessing inside in each of `formats`, and `model.keras`, to `output`.

    Every format takes a batch of uint8 RGB images, `[batch, height, width, 3]`, applies the
    evaluation preprocessing (resize, crop, normalize) and returns `{"probabilities": [batch,
    classes], "classes": [batch]}`:

    * "saved_model" -> `saved_model/`: the `serve` endpoint (also `serving_default`), any image size.
    * "onnx" -> `model.onnx`: any image size (needs the `onnx` extra: tf2onnx, onnxruntime).
    * "tflite" -> `model.tflite`, and `model_<q>.tflite` for each of `quantize` ("int8": full
      integer, calibrated on `calibration_images` training images of `data`, input still uint8;
      "float16": float16 weights): builtin ops only, images of `tflite_input_size`, by default
      `preprocessing.serving_size`.

    Every format serves the network with its batch norms folded into the convolutions
    (`resnet.fold_batch_norm`); `model.keras` holds the bare trained network (float inputs, no
    preprocessing, norms unfolded). Each file written is loaded in its runtime and checked
    against the trained Keras model on `CHECK_IMAGES` images (the first of `data`'s eval split,
    or seeded random images without `data`), and dynamic-size formats also at a second size;
    `export.json` lists the files with what was measured.

    `output` is a local path or any TensorFlow file system URI (`gs://...`, `ram://...`); all
    is written through `tf.io.gfile`. The export is written to its own staging directory beside
    `output`, `.<name>.<token>.partial` (a failure removes it and touches nothing else), and then
    swapped into place: an existing `output` is moved aside (to `.<name>.<token>.old`), the
    staging directory moved to `output`, and only then is the old export deleted, so it stays
    whole until the new one is complete. On a local disk each move is one rename, and nothing
    is deleted through a symbolic link: an `output` that is a link is moved aside and removed as
    a link (what it points to stays untouched, and the new export is a real directory at that
    path), and so is a link inside the old export. Object stores have no directory rename
    (TensorFlow copies and deletes each object; `ram://` renames only the directory's name), so
    there the files are moved one by one in the same order (the old ones aside, the new ones in,
    the old ones deleted): readers may see a partial export while it moves, and a failure while
    moving moves the old export back. Files and directories are created with the process's
    umask (TensorFlow makes directories with mode 0o755 before the umask).

    Exports may run at the same time, even to one `output`. Each marks its staging directory
    (and the old export it moved aside) with `.<name>.<token>.owner`: host, process, process
    start and a heartbeat. An export removes what another left beside its `output` only once
    that owner is gone: a process of this host that has ended, or another host's process after
    `rundir.LOCK_STALE_SECONDS` without heartbeat (without a readable owner: once that old). When
    two finish together the last swap wins; without `overwrite`, an `output` that another export
    created meanwhile is an error and that export is left as it is. (On object stores two file
    by file moves into one `output` are not isolated from each other: export one at a time there.)

    Args:
        model: The trained model.
        preprocessing: The run's preprocessing; its `serve` method runs inside the signature.
        output: Directory to create (or replace, with `overwrite`); a symbolic link there is
            replaced as a link, never deleted through.
        from_logits: Whether the model returns logits (softmax is applied) or probabilities.
        overwrite: Replace an existing `output` that is a previous export (it holds nothing but
            an export's files); otherwise an existing `output` is an error.
        formats: Any of "saved_model", "tflite", "onnx".
        quantize: Quantized TFLite variants to add, any of "int8", "float16" (needs "tflite").
        data: The run's data source: calibration and check images.
        calibration_images: How many training images calibrate an int8 model.
        tflite_input_size: (height, width) of the TFLite models' images, at most
            `MAX_INPUT_SIDE` pixels a side.
        progress: Called with a line of text as each step starts and ends.
        model_dir: The run the model comes from: an `output` that is it, holds it or lies inside
            it is refused (see `check_output`).

    Returns:
        The output directory.

    Raises:
        ValueError: A bad argument (named), or an `output` that another export created (without
            `overwrite`) or kept replacing while this one ran. `deploy.ExportError`: a format that
            cannot hold the graph (the ops named) or a file that does not reproduce the model.
            Nothing is left behind.
    """
    formats, quantize = _check_formats(formats, quantize)
    calibration_images = check_int("calibration_images", calibration_images)
    if "int8" in quantize and data is None:
        raise ValueError("int8 quantization calibrates on training images: pass the run's `data`.")
    size = tuple(tflite_input_size) if tflite_input_size is not None else preprocessing.serving_size
    if len(size) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size):
        raise ValueError(f"`tflite_input_size` must be (height, width), two positive integers; received {size!r}.")
    check_input_side(size, repr(size))
    output = check_output(output, overwrite, model_dir)
    progress = progress or (lambda line: None)
    parent = os.path.dirname(output)
    if parent:
        tf.io.gfile.makedirs(parent)
    _remove_abandoned(output, progress)
    with _Workspace(output) as workspace:
        exporter = _Exporter(model, preprocessing, workspace.staging, from_logits, data, size, progress)
        exporter.write(formats, quantize, calibration_images)
        workspace.swap(overwrite, model_dir)
    return output


def check_input_side(size: Sequence[int], received: str) -> None:
    """Refuses an image `size` beyond `MAX_INPUT_SIDE` pixels a side, showing it as `received`.

    Raises:
        ValueError: Naming `--tflite_input_size`, `received` and the bound.
    """
    if max(size) > MAX_INPUT_SIDE:
        raise ValueError(
            f"`--tflite_input_size` must be at most {MAX_INPUT_SIDE} pixels a side (8K frames fit; beyond that one "
            f"image's activations take gigabytes, see `resnet.training.serving.MAX_INPUT_SIDE`); received {received}."
        )


# What an export directory holds: an existing `output` holding anything else is not replaced.
EXPORT_ENTRIES = frozenset(
    {"saved_model", "model.keras", "model.onnx", "export.json", "model.tflite"}
    | {f"model_{kind}.tflite" for kind in deploy.QUANTIZATIONS}
)
# Beside `output`, an export in progress owns `.<output name>.<8 hex digits>.<kind>` of these kinds.
_WORKSPACE_KINDS = ("partial", "old", "owner")
# How often an export tries to swap itself into place while other exports keep replacing `output`.
_SWAP_ATTEMPTS = 5


def check_output(output: str | os.PathLike, overwrite: bool = False, model_dir: str | os.PathLike | None = None) -> str:
    """Checks that an export may be written to `output` and returns it (without a trailing "/").

    Refused, before anything is written or replaced: an empty `output`; an `output` that is
    `model_dir`, holds it or lies inside it (a run directory is never an export's place, and
    replacing the export would delete the run; a symbolic link counts as what it points to); an
    existing file; a symbolic link to nothing; an existing directory without `overwrite`; and,
    with `overwrite`, a directory holding anything but an export's files (`EXPORT_ENTRIES`), so
    that nothing but a previous export is ever deleted. An `output` that is a link to a previous
    export is replaced as a link: the link goes, what it points to stays.

    Raises:
        ValueError: Naming `--output` and what was expected.
    """
    output = os.fspath(output)
    if not output.strip():
        raise ValueError(f"`--output` must name a directory; received {output!r}.")
    output = output.rstrip("/") or "/"
    if model_dir is not None:
        relation = _nesting(output, os.fspath(model_dir))
        if relation:
            raise ValueError(
                f"`--output` {output!r} {relation} the run directory `--model_dir` {os.fspath(model_dir)!r}; "
                "write the export to a directory outside the run."
            )
    local = local_path(output)
    if local is not None and os.path.islink(local) and not os.path.exists(local):
        raise ValueError(
            f"`--output` {output!r} is a symbolic link to {os.readlink(local)!r}, which does not exist; "
            "remove the link or choose a new path."
        )
    if not tf.io.gfile.exists(output):
        return output
    if not tf.io.gfile.isdir(output):
        raise ValueError(f"`--output` {output!r} is an existing file; an export is a directory: choose a new path.")
    if not overwrite:
        raise ValueError(f"`--output` {output!r} already exists; choose a new directory or pass --overwrite.")
    foreign = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(output) if name.rstrip("/") not in EXPORT_ENTRIES)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(
            f"`--output` {output!r} holds files that are not part of an export ({shown}); --overwrite replaces "
            "only a previous export. Choose another directory."
        )
    return output


def _nesting(path: str, other: str) -> str:
    """How `path` relates to `other` ("is", "holds", "lies inside") or "" if neither is in the other."""
    def parts(p: str) -> tuple[str, ...]:
        local = local_path(p)
        if local is not None:
            return tuple(part for part in os.path.realpath(local).split(os.sep) if part)
        scheme, _, rest = p.partition("://")
        return (scheme + "://", *(part for part in rest.split("/") if part))

    a, b = parts(path), parts(other)
    if a == b:
        return "is"
    if b[:len(a)] == a:
        return "holds"
    if a[:len(b)] == b:
        return "lies inside"
    return ""


def _remove_abandoned(output: str, progress: Callable[[str], None]) -> None:
    """Removes what exports to `output` left beside it (staging directories, old exports moved
    aside, owner files) once their owner is gone (see `export_for_serving`)."""
    parent, name = os.path.dirname(output), os.path.basename(output)
    pattern = re.compile(re.escape(f".{name}.") + r"([0-9a-f]{8})\.(" + "|".join(_WORKSPACE_KINDS) + ")")
    workspaces: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for entry in (entry.rstrip("/") for entry in tf.io.gfile.listdir(parent or ".")):
        match = pattern.fullmatch(entry)
        if match:
            workspaces[match[1]][match[2]] = join(parent, entry) if parent else entry
    for paths in workspaces.values():
        owner = _read_lock(paths["owner"]) if "owner" in paths else None
        if not _gone(owner, paths):
            continue
        progress(f"Removing what an export that is gone left beside {output}: {_describe_owner(owner)}")
        for kind in _WORKSPACE_KINDS:  # the owner file last: what it marks is never left ownerless
            if kind in paths:
                _remove(paths[kind])


def _gone(owner: dict | None, paths: dict[str, str]) -> bool:
    """Whether the export that `owner` (its owner file's record: None if missing, {} if unreadable)
    describes has ended, so that what it left (`paths`) may go."""
    if owner and owner.get("host"):
        if owner.get("host") == socket.gethostname():
            return not _alive(owner.get("pid"), owner.get("process_start"))
        return time.time() - _timestamp(owner.get("heartbeat")) > rundir.LOCK_STALE_SECONDS
    ages = [age for age in map(_age, paths.values()) if age is not None]
    return bool(ages) and min(ages) > rundir.LOCK_STALE_SECONDS


def _describe_owner(owner: dict | None) -> str:
    if not (owner and owner.get("host")):
        return f"no readable owner, untouched for over {rundir.LOCK_STALE_SECONDS:g} s"
    return (f"host {owner.get('host')}, pid {owner.get('pid')}, started {owner.get('started')}, "
            f"last heartbeat {owner.get('heartbeat')}")


def _age(path: str) -> float | None:
    """Seconds since `path` (not what a link points to) was modified; None if it does not exist."""
    local = local_path(path)
    try:
        modified = os.lstat(local).st_mtime if local is not None else tf.io.gfile.stat(path).mtime_nsec / 1e9
    except (FileNotFoundError, tf.errors.NotFoundError):
        return None
    return time.time() - modified


class _Workspace:
    """An export's own names beside `output`, `.<name>.<token>.<kind>`: the staging directory
    (`partial`), the old export while it is moved aside (`old`), and the owner file (`owner`) that
    says which process of which host they belong to, refreshed every `HEARTBEAT_SECONDS` while
    the export runs. Leaving the `with` block removes the staging directory and the owner file."""

    def __init__(self, output: str):
        self.output = output
        prefix = join(os.path.dirname(output), f".{os.path.basename(output)}.{uuid.uuid4().hex[:8]}")
        self.staging, self.aside, self.owner = (f"{prefix}.{kind}" for kind in _WORKSPACE_KINDS)
        self._record = {"host": socket.gethostname(), "pid": os.getpid(),
                        "process_start": _process_start(os.getpid()), "started": _now()}
        self._stopped = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="export heartbeat", daemon=True)

    def __enter__(self) -> _Workspace:
        try:
            self._write_owner()  # before the staging directory, which is thus never ownerless
            tf.io.gfile.makedirs(self.staging)
        except BaseException:
            self._leave()
            raise
        self._heartbeat.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopped.set()
        self._heartbeat.join()
        self._leave()

    def _leave(self) -> None:
        _remove(self.staging)
        _remove(self.owner)

    def _write_owner(self) -> None:
        # A new file, written once; a reader that sees it half written finds it unreadable and
        # judges it by its age, which is fresh. Heartbeats replace it whole (`_beat`).
        with tf.io.gfile.GFile(self.owner, "w") as file:
            file.write(self._owner_text())

    def _owner_text(self) -> str:
        return json.dumps({**self._record, "heartbeat": _now()}, indent=2) + "\n"

    def _beat(self) -> None:
        while not self._stopped.wait(rundir.HEARTBEAT_SECONDS):
            try:
                rundir.write_atomically(self.owner, self._owner_text())
            except (tf.errors.OpError, OSError):
                pass  # the next beat tries again; only another host judges the export by it

    def swap(self, overwrite: bool, model_dir: str | os.PathLike | None) -> None:
        """Moves the complete export from the staging directory to `output`: an existing `output`
        (checked again, see `check_output`) is moved aside first and deleted last. If another
        export moves `output` away or puts its own there between these steps, tries again: the
        last swap wins.

        Raises:
            ValueError: Without `overwrite`, `output` was created while this export ran; with it,
                `output` no longer holds an export, or other exports kept replacing it.
        """
        for _ in range(_SWAP_ATTEMPTS):
            if _exists(self.output):
                if not overwrite:
                    raise ValueError(
                        f"`--output` {self.output!r} was created while this export ran (by another export?); "
                        "choose a new directory or pass --overwrite."
                    )
                check_output(self.output, overwrite, model_dir)
                _remove(self.aside)  # what the last attempt moved aside: an export is in place again
                if not _move(self.output, self.aside):
                    continue  # another export moved `output` away meanwhile
            try:
                placed = _move(self.staging, self.output, keep_partial=False)
            except BaseException:
                self._restore()
                raise
            if placed:
                _remove(self.aside)
                return
        raise ValueError(
            f"`--output` {self.output!r} was replaced by other exports {_SWAP_ATTEMPTS} times while this one "
            "tried to move into place; run one export to it at a time."
        )

    def _restore(self) -> None:
        """After a failed swap, moves the old export back to `output` if it can. (If not, it stays
        aside, ownerless once this export ends, and a later export removes it after
        `rundir.LOCK_STALE_SECONDS`.)"""
        if _exists(self.aside) and not _exists(self.output):
            try:
                _move(self.aside, self.output)
            except (tf.errors.OpError, OSError):
                pass  # the swap's own error is the one to report


def calibration_batches(data: DataSource, size: Sequence[int], count: int) -> Callable[[], Iterable[np.ndarray]]:
    """What calibrates an int8 model: `count` training images of `data`, drawn in a seeded order (a
    split is often sorted by class), each fitted to `size` (`resize_to_fill`), as batches of one."""

    def batches() -> Iterable[np.ndarray]:
        records = data.records("train").shuffle(4 * count, seed=0).take(count)
        images = data.decode(records, "train").map(lambda image, label: resize_to_fill(image, *size))
        return images.batch(1).as_numpy_iterator()

    return batches


def _check_formats(formats: Sequence[str], quantize: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    for argument, values, allowed in (("formats", formats, deploy.FORMATS), ("quantize", quantize, deploy.QUANTIZATIONS)):
        if isinstance(values, str) or any(value not in allowed for value in values):
            raise ValueError(
                f"`{argument}` must be a list of {', '.join(map(repr, allowed))}; received {values!r}."
            )
    if not formats:
        raise ValueError(f"`formats` is empty; name one or more of {', '.join(map(repr, deploy.FORMATS))}.")
    if quantize and "tflite" not in formats:
        raise ValueError(f"`quantize` {list(quantize)} makes TFLite models: add 'tflite' to `formats` {list(formats)}.")
    if "onnx" in formats:
        deploy.require_onnx()
    return tuple(dict.fromkeys(formats)), tuple(dict.fromkeys(quantize))


class _Exporter:
    """Writes the formats into a staging directory, checking each file as it is written."""

    def __init__(self, model, preprocessing, directory, from_logits, data, size, progress):
        self.model, self.directory, self.data, self.size, self.progress = model, directory, data, size, progress
        # Every format serves the network with its batch norms folded into the convolutions; the
        # checks hold it to the trained model itself (`reference`), in that model's precision.
        self.served = fold_batch_norm(model)
        self.serve = deploy.serving_function(self.served, preprocessing, from_logits)
        self.reference = deploy.serving_function(model, preprocessing, from_logits)
        self.tolerance = None if model.compute_dtype == "float32" else deploy.FLOAT16_TOLERANCE
        self.images = self._check_images()
        # Dynamic-size formats are checked at a second size too, where the resize is inside the graph.
        self.other_images = resize_to_fill(self.images[:4], size[0] * 3 // 2, size[1] * 5 // 4).numpy()
        self.expected = self._expected(self.images)
        self.other_expected = self._expected(self.other_images)
        self.files: dict[str, dict] = {}

    def write(self, formats: Sequence[str], quantize: Sequence[str], calibration_images: int) -> None:
        if "saved_model" in formats:
            self.progress("Writing the SavedModel...")
            path = join(self.directory, "saved_model")
            deploy.write_saved_model(self.served, self.serve, path)
            self._check("saved_model", deploy.SavedModelRunner(path), image_size="any")
        self.model.save(join(self.directory, "model.keras"))
        if "tflite" in formats:
            self._write_tflite(quantize, calibration_images)
        if "onnx" in formats:
            self.progress(f"Converting to ONNX (opset {deploy.ONNX_OPSET}, tf2onnx)...")
            content = deploy.onnx_model(self.serve)
            with tf.io.gfile.GFile(join(self.directory, "model.onnx"), "wb") as file:
                file.write(content)
            self._check("model.onnx", deploy.OnnxRunner(self._read("model.onnx")), image_size="any")
        with tf.io.gfile.GFile(join(self.directory, "export.json"), "w") as file:
            file.write(json.dumps({"inputs": "images: uint8 [batch, height, width, 3], RGB", "files": self.files}, indent=2))

    def _write_tflite(self, quantize: Sequence[str], calibration_images: int) -> None:
        height, width = self.size
        kinds = [None, *quantize]
        described = ", ".join(kind or "float32" for kind in kinds)
        self.progress(f"Converting to TFLite ({described}; {height}x{width} images)...")
        if "int8" in quantize:
            self.progress(f"  int8 calibrates on {calibration_images} training images of {self.data.name!r}")
        calibration = calibration_batches(self.data, self.size, calibration_images) if "int8" in quantize else None
        models = deploy.tflite_models(self.served, self.serve, self.size, kinds, calibration)
        for kind, content in models.items():
            name = f"model_{kind}.tflite" if kind else "model.tflite"
            with tf.io.gfile.GFile(join(self.directory, name), "wb") as file:
                file.write(content)
            self._check(name, deploy.TFLiteRunner(self._read(name)), image_size=[height, width], quantization=kind)

    def _check(self, name: str, runner, image_size, quantization: str | None = None) -> None:
        results = deploy.check_outputs(name, runner, self.images, self.expected, quantization, self.tolerance)
        if image_size == "any":  # the worst of the two sizes
            other = deploy.check_outputs(name, runner, self.other_images, self.other_expected, quantization, self.tolerance)
            results["max_probability_difference"] = max(results["max_probability_difference"], other["max_probability_difference"])
            results["class_agreement"] = min(results["class_agreement"], other["class_agreement"])
        checked = len(self.images) + (len(self.other_images) if image_size == "any" else 0)
        self.files[name] = {"image_size": image_size, "quantization": quantization, "checked_images": checked, **results}
        self.progress(
            f"  {name}: checked against the Keras model on {len(self.images)} images: classes agree on "
            f"{results['class_agreement']:.0%}, probabilities within {results['max_probability_difference']:.2g}"
        )

    def _read(self, name: str) -> bytes:
        with tf.io.gfile.GFile(join(self.directory, name), "rb") as file:
            return file.read()

    def _expected(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in self.reference(tf.constant(images)).items()}

    def _check_images(self) -> np.ndarray:
        """The first `CHECK_IMAGES` images of the eval split at the fixed size, or seeded noise without data."""
        height, width = self.size
        if self.data is None:
            return np.random.default_rng(0).integers(0, 256, (CHECK_IMAGES, height, width, 3), dtype=np.uint8)
        images = self.data.examples("eval").take(CHECK_IMAGES).map(lambda image, label: resize_to_fill(image, height, width))
        return np.stack(list(images.as_numpy_iterator()))


def _exists(path: str) -> bool:
    """Whether `path` exists; locally, a symbolic link exists even if what it points to does not."""
    local = local_path(path)
    return os.path.lexists(local) if local is not None else tf.io.gfile.exists(path)


def _remove(path: str) -> None:
    """Deletes `path` and everything below it, if it exists, never following a symbolic link:
    locally a link is removed as itself, and `shutil.rmtree` removes links below as links."""
    local = local_path(path)
    if local is None:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    elif os.path.isdir(local) and not os.path.islink(local):
        shutil.rmtree(local)
    elif os.path.lexists(local):
        os.unlink(local)


def _move(source: str, target: str, keep_partial: bool = True) -> bool:
    """Moves `source` to the new path `target`; False if `source` is gone or `target` exists (another
    export got there first).

    On a local disk: one rename, which moves a symbolic link as itself. Elsewhere file by file,
    never replacing a file at `target`; a failure moves back what was moved, and if that fails
    too, leaves the files where they are (`keep_partial`) or deletes what reached `target`."""
    local_source, local_target = local_path(source), local_path(target)
    if local_source is None:
        return _move_files(source, target, keep_partial)
    if os.path.lexists(local_target):
        return False
    try:
        os.rename(local_source, local_target)
    except OSError as error:
        if isinstance(error, FileNotFoundError) and not os.path.lexists(local_source):
            return False
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR) and os.path.lexists(local_target):
            return False
        raise
    return True


def _move_files(source: str, target: str, keep_partial: bool) -> bool:
    if tf.io.gfile.exists(target):
        return False
    walked = list(tf.io.gfile.walk(source))
    if not walked:
        return False
    moved: list[tuple[str, str]] = []
    try:
        for directory, _, files in walked:
            tf.io.gfile.makedirs(target + directory[len(source):])
            for name in files:
                path = join(directory, name)
                tf.io.gfile.rename(path, target + path[len(source):], overwrite=False)
                moved.append((path, target + path[len(source):]))
    except BaseException as error:
        restored = _move_back(moved)
        if restored or not keep_partial:
            _remove_unless_it_holds_files(target, unless=restored)
        # Another export moved `source` away, or its own files into `target`, meanwhile.
        if restored and isinstance(error, (tf.errors.NotFoundError, tf.errors.AlreadyExistsError)):
            return False
        raise
    tf.io.gfile.rmtree(source)  # the directories left behind
    return True


def _remove_unless_it_holds_files(directory: str, unless: bool) -> None:
    """Deletes `directory`; if `unless`, only when no file is below it (another export's may be)."""
    if tf.io.gfile.exists(directory) and not (unless and any(files for _, _, files in tf.io.gfile.walk(directory))):
        tf.io.gfile.rmtree(directory)


def _move_back(moved: list[tuple[str, str]]) -> bool:
    """Moves the files of `moved` (pairs of old and new path) back; False if that fails."""
    try:
        for path, new_path in reversed(moved):
            tf.io.gfile.rename(new_path, path, overwrite=False)
    except (tf.errors.OpError, OSError):
        return False
    return True

