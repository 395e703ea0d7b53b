"""Exporting a trained model for serving: uint8 images in, probabilities and classes out.

The formats and how each is converted and checked are in `resnet.training.deploy`.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from resnet.data.base import DataSource
from resnet.data.preprocessing import Preprocessing, resize_to_fill
from resnet.fold import fold_batch_norm
from resnet.training import deploy
from resnet.training.rundir import join, local_path
from resnet.validation import check_int

CHECK_IMAGES = 16
CALIBRATION_IMAGES = 256


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
    is written through `tf.io.gfile`. The export is written to a staging directory beside
    `output` (a failure removes it and touches nothing else) and then moved into place: an
    existing export is deleted only once the new one is complete. On a local disk the move is
    one atomic directory rename. Object stores have no directory rename (TensorFlow copies and
    deletes each object; `ram://` renames only the directory's name), so there the files are
    moved one by one: readers may see a partial export while it moves, and a failure while
    moving leaves no `output` at all (when overwriting, not the old one either). Files and
    directories are created with the process's umask (TensorFlow makes directories with mode
    0o755 before the umask).

    Args:
        model: The trained model.
        preprocessing: The run's preprocessing; its `serve` method runs inside the signature.
        output: Directory to create.
        from_logits: Whether the model returns logits (softmax is applied) or probabilities.
        overwrite: Replace an existing `output` that is a previous export (it holds nothing but
            an export's files); otherwise an existing `output` is an error.
        formats: Any of "saved_model", "tflite", "onnx".
        quantize: Quantized TFLite variants to add, any of "int8", "float16" (needs "tflite").
        data: The run's data source: calibration and check images.
        calibration_images: How many training images calibrate an int8 model.
        tflite_input_size: (height, width) of the TFLite models' images.
        progress: Called with a line of text as each step starts and ends.
        model_dir: The run the model comes from: an `output` that is it, holds it or lies inside
            it is refused (see `check_output`).

    Returns:
        The output directory.

    Raises:
        ValueError: A bad argument (named), or `deploy.ExportError`: a format that cannot hold
            the graph (the ops named) or a file that does not reproduce the model. Nothing is
            left behind.
    """
    formats, quantize = _check_formats(formats, quantize)
    calibration_images = check_int("calibration_images", calibration_images)
    if "int8" in quantize and data is None:
        raise ValueError("int8 quantization calibrates on training images: pass the run's `data`.")
    size = tuple(tflite_input_size) if tflite_input_size is not None else preprocessing.serving_size
    if len(size) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size):
        raise ValueError(f"`tflite_input_size` must be (height, width), two positive integers; received {size!r}.")
    output = check_output(output, overwrite, model_dir)
    parent = os.path.dirname(output)
    if parent:
        tf.io.gfile.makedirs(parent)
    _remove_abandoned_staging(output)
    staging = join(parent, f".{os.path.basename(output)}.{uuid.uuid4().hex[:8]}{STAGING_SUFFIX}")
    tf.io.gfile.makedirs(staging)
    try:
        exporter = _Exporter(model, preprocessing, staging, from_logits, data, size, progress or (lambda line: None))
        exporter.write(formats, quantize, calibration_images)
        if tf.io.gfile.exists(output):
            tf.io.gfile.rmtree(output)
        _move_tree(staging, output)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    return output


# What an export directory holds: an existing `output` holding anything else is not replaced.
EXPORT_ENTRIES = frozenset(
    {"saved_model", "model.keras", "model.onnx", "export.json", "model.tflite"}
    | {f"model_{kind}.tflite" for kind in deploy.QUANTIZATIONS}
)
# The staging directory of an export in progress: `.<output name>.<8 hex digits>.partial`, beside it.
STAGING_SUFFIX = ".partial"


def check_output(output: str | os.PathLike, overwrite: bool = False, model_dir: str | os.PathLike | None = None) -> str:
    """Checks that an export may be written to `output` and returns it (without a trailing "/").

    Refused, before anything is written or replaced: an `output` that is `model_dir`, holds it
    or lies inside it (a run directory is never an export's place, and replacing the export
    would delete the run); an existing file; an existing directory without `overwrite`; and,
    with `overwrite`, a directory holding anything but an export's files (`EXPORT_ENTRIES`), so
    that nothing but a previous export is ever deleted.

    Raises:
        ValueError: Naming `--output` and what was expected.
    """
    output = os.fspath(output).rstrip("/") or "/"
    if model_dir is not None:
        relation = _nesting(output, os.fspath(model_dir))
        if relation:
            raise ValueError(
                f"`--output` {output!r} {relation} the run directory `--model_dir` {os.fspath(model_dir)!r}; "
                "write the export to a directory outside the run."
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


def _remove_abandoned_staging(output: str) -> None:
    """Removes the staging directories of exports to `output` that were killed before they ended."""
    parent, name = os.path.dirname(output), os.path.basename(output)
    pattern = re.compile(re.escape(f".{name}.") + r"[0-9a-f]{8}" + re.escape(STAGING_SUFFIX))
    for entry in (entry.rstrip("/") for entry in tf.io.gfile.listdir(parent or ".")):
        if pattern.fullmatch(entry):
            tf.io.gfile.rmtree(join(parent, entry))


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


def _move_tree(source: str, target: str) -> None:
    """Moves the directory `source` to the new path `target`: one rename on a local disk, file
    by file elsewhere (removing what was moved if that fails)."""
    if local_path(source) is not None:
        tf.io.gfile.rename(source, target)
        return
    try:
        for directory, _, files in list(tf.io.gfile.walk(source)):
            moved = target + directory[len(source):]
            tf.io.gfile.makedirs(moved)
            for name in files:
                tf.io.gfile.rename(join(directory, name), join(moved, name))
    except BaseException:
        if tf.io.gfile.exists(target):
            tf.io.gfile.rmtree(target)
        raise
