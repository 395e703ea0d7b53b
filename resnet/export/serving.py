"""Exporting a trained model for serving: uint8 images in, probabilities and classes out.

The formats and how each is converted and checked are in `resnet.export.deploy`; where the
export goes and how it replaces an earlier one, in `resnet.export.placement`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from resnet.data.base import DataSource
from resnet.data.preprocessing import Preprocessing, resize_to_fill
from resnet.export import deploy
from resnet.export.placement import Workspace, check_output, remove_abandoned
from resnet.fold import fold_batch_norm
from resnet.storage.files import join, read_text
from resnet.validation import check_int

CHECK_IMAGES = 16
LABELS_FILE = "labels.txt"
"""The class names of an export, one a line (UTF-8), at its top beside the formats: `read_labels`."""
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
    class_names: Sequence[str] | None = None,
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
    or seeded random images without `data`), and dynamic-size formats (and `model.keras`,
    loaded back with the serving preprocessing around it) also at a second size; `export.json`
    lists the files with what was measured (`"files"`) and names the labels file (`"labels"`:
    "labels.txt", or null). With `class_names`, `labels.txt` holds them, one a line in UTF-8,
    line `i` naming class `i` of every format (`read_labels` reads them back).

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
    `resnet.storage.owners.STALE_SECONDS` without heartbeat (without a readable owner: once that old). When
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
        class_names: Names of the model's classes, `class_names[i]` naming class `i` (e.g. the
            run's `data.class_names`), written to `labels.txt`: as many as the model has classes,
            each a non-empty single line. None writes no `labels.txt`.

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
    if class_names is not None:
        class_names = _check_class_names(class_names, model)
    output = check_output(output, overwrite, model_dir)
    progress = progress or (lambda line: None)
    parent = os.path.dirname(output)
    if parent:
        tf.io.gfile.makedirs(parent)
    remove_abandoned(output, progress)
    with Workspace(output) as workspace:
        exporter = _Exporter(model, preprocessing, workspace.staging, from_logits, data, size, progress, class_names)
        exporter.write(formats, quantize, calibration_images)
        workspace.swap(overwrite, model_dir)
    return output


def read_labels(export_dir: str | os.PathLike) -> list[str] | None:
    """The class names an export holds in `labels.txt`, `names[i]` naming class `i`; None without the file.

    `export_dir` may be a local path or any TensorFlow file system URI, as for `export_for_serving`.

    Raises:
        ValueError: `labels.txt` is not UTF-8 text (the line and byte named).

    Example:

    >>> read_labels("exports/demo")[:3]   # doctest: +SKIP
    ['0', '1', '2']
    """
    text = read_text(join(os.fspath(export_dir), LABELS_FILE))
    return None if text is None else text.splitlines()


def check_input_side(size: Sequence[int], received: str) -> None:
    """Refuses an image `size` beyond `MAX_INPUT_SIDE` pixels a side, showing it as `received`.

    Raises:
        ValueError: Naming `--tflite_input_size`, `received` and the bound.
    """
    if max(size) > MAX_INPUT_SIDE:
        raise ValueError(
            f"`--tflite_input_size` must be at most {MAX_INPUT_SIDE} pixels a side (8K frames fit; beyond that one "
            f"image's activations take gigabytes, see `resnet.export.serving.MAX_INPUT_SIDE`); received {received}."
        )


def calibration_batches(data: DataSource, size: Sequence[int], count: int) -> Callable[[], Iterable[np.ndarray]]:
    """What calibrates an int8 model: `count` training images of `data`, drawn in a seeded order (a
    split is often sorted by class), each fitted to `size` (`resize_to_fill`), as batches of one."""

    def batches() -> Iterable[np.ndarray]:
        records = data.records("train").shuffle(4 * count, seed=0).take(count)
        images = data.decode(records, "train").map(lambda image, label: resize_to_fill(image, *size))
        return images.batch(1).as_numpy_iterator()

    return batches


def _check_class_names(class_names: Sequence[str], model: keras.Model) -> list[str]:
    """`class_names` as a list, refused unless it names each of the model's classes in one non-empty line."""
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
        raise ValueError(f"`class_names` must be a list of strings, one per class; received {class_names!r}.")
    for label, name in enumerate(class_names):
        if not isinstance(name, str):
            raise ValueError(f"`class_names` must be strings; class {label} is {name!r}.")
        if name.splitlines() != [name]:  # "" or a name holding a line break
            what = "is empty" if not name else "holds a line break"
            raise ValueError(
                f"`class_names` are written to {LABELS_FILE}, one a line: the name of class {label} {what}; "
                f"received {name!r}."
            )
    classes = model.outputs[0].shape[-1]
    if len(class_names) != classes:
        raise ValueError(
            f"`class_names` must name each of the model's {classes} classes; received {len(class_names)} names."
        )
    return list(class_names)


def _check_formats(formats: Sequence[str], quantize: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    for argument, values, allowed in (
        ("formats", formats, deploy.FORMATS),
        ("quantize", quantize, deploy.QUANTIZATIONS),
    ):
        if isinstance(values, str) or any(value not in allowed for value in values):
            raise ValueError(f"`{argument}` must be a list of {', '.join(map(repr, allowed))}; received {values!r}.")
    if not formats:
        raise ValueError(f"`formats` is empty; name one or more of {', '.join(map(repr, deploy.FORMATS))}.")
    if quantize and "tflite" not in formats:
        raise ValueError(f"`quantize` {list(quantize)} makes TFLite models: add 'tflite' to `formats` {list(formats)}.")
    if "onnx" in formats:
        deploy.require_onnx()
    return tuple(dict.fromkeys(formats)), tuple(dict.fromkeys(quantize))


class _Exporter:
    """Writes the formats into a staging directory, checking each file as it is written."""

    def __init__(self, model, preprocessing, directory, from_logits, data, size, progress, class_names):
        self.model, self.directory, self.data, self.size, self.progress = model, directory, data, size, progress
        self.class_names = class_names
        # Every format serves the network with its batch norms folded into the convolutions; the
        # checks hold it to the trained model itself (`reference`), in that model's precision.
        self.served = fold_batch_norm(model)
        self.preprocessing, self.from_logits = preprocessing, from_logits
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
        self._check("model.keras", self._keras_file_runner(), image_size="any")
        if "tflite" in formats:
            self._write_tflite(quantize, calibration_images)
        if "onnx" in formats:
            self.progress(f"Converting to ONNX (opset {deploy.ONNX_OPSET}, tf2onnx)...")
            content = deploy.onnx_model(self.serve)
            with tf.io.gfile.GFile(join(self.directory, "model.onnx"), "wb") as file:
                file.write(content)
            self._check("model.onnx", deploy.OnnxRunner(self._read("model.onnx")), image_size="any")
        if self.class_names is not None:
            self.progress(f"Writing {LABELS_FILE} ({len(self.class_names)} class names)...")
            with tf.io.gfile.GFile(join(self.directory, LABELS_FILE), "wb") as file:
                file.write("".join(f"{name}\n" for name in self.class_names).encode("utf-8"))
        description = {
            "inputs": "images: uint8 [batch, height, width, 3], RGB",
            "files": self.files,
            "labels": LABELS_FILE if self.class_names is not None else None,
        }
        with tf.io.gfile.GFile(join(self.directory, "export.json"), "w") as file:
            file.write(json.dumps(description, indent=2))

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
            other = deploy.check_outputs(
                name, runner, self.other_images, self.other_expected, quantization, self.tolerance
            )
            results["max_probability_difference"] = max(
                results["max_probability_difference"], other["max_probability_difference"]
            )
            results["class_agreement"] = min(results["class_agreement"], other["class_agreement"])
        sizes = [(self.images, len(self.images))]
        if image_size == "any":
            sizes.append((self.other_images, len(self.other_images)))
        checked = sum(count for _, count in sizes)
        self.files[name] = {
            "image_size": image_size,
            "quantization": quantization,
            "checked_images": checked,
            **results,
        }
        at = ", ".join(f"{count} at {images.shape[1]}x{images.shape[2]}" for images, count in sizes)
        self.progress(
            f"  {name}: checked against the Keras model on {checked} images ({at}): classes agree on "
            f"{results['class_agreement']:.0%}, probabilities within {results['max_probability_difference']:.2g}"
        )

    def _keras_file_runner(self) -> deploy.Runner:
        """`model.keras` loaded back, with the serving preprocessing and softmax around it: the
        bare network must compute what the trained one does."""
        reloaded = keras.models.load_model(join(self.directory, "model.keras"))
        serve = tf.function(deploy.serving_function(reloaded, self.preprocessing, self.from_logits))
        return lambda images: {name: value.numpy() for name, value in serve(tf.constant(images)).items()}

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
        images = (
            self.data.examples("eval").take(CHECK_IMAGES).map(lambda image, label: resize_to_fill(image, height, width))
        )
        return np.stack(list(images.as_numpy_iterator()))
