"""Converting the serving graph to TFLite and ONNX, and running each exported file in its own runtime.

Every format takes a batch of uint8 RGB images `[batch, height, width, 3]` named `images` and
returns `probabilities` (float32 `[batch, classes]`) and `classes` (int32 `[batch]`), with the
run's evaluation preprocessing inside:

* `saved_model/`: any batch size and image size.
* `model.onnx`: any batch size and image size (ONNX opset 17, TensorFlow ops mapped by tf2onnx).
* `model.tflite` and its quantized variants: any batch size, a fixed image size (by default the
  one the evaluation preprocessing takes without resizing), TFLite builtin ops only.

Converters that cannot map an op either fail (TFLite) or leave the op in the file (tf2onnx,
which a runtime then refuses to load): both become an `ExportError` naming the ops, and every
written file is loaded in its runtime and checked against the Keras model before the export
counts as done (`check_outputs`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from resnet._internals import tflite_missing_ops
from resnet._stderr import filtered_stderr

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = ("int8", "float16")
ONNX_OPSET = 17
INPUT_NAME = "images"

# How far each kind of file may be from the Keras model on the check images: float files within
# float32 rounding of the same graph; float16 weights round each weight to 11 significant bits;
# int8 moves every activation by up to half a quantization step, so only the classes are held.
FLOAT_TOLERANCE = 1e-4
FLOAT16_TOLERANCE = 1e-2
INT8_MIN_AGREEMENT = 0.75


class ExportError(ValueError):
    """A format the serving graph cannot be converted to completely, or an exported file that
    does not load in its runtime or does not compute what the Keras model computes."""


Serve = Callable[[tf.Tensor], dict]


def serving_function(model: keras.Model, preprocessing, from_logits: bool = True) -> Serve:
    """`images` uint8 [B, H, W, 3] -> `{"probabilities", "classes"}`: preprocessing, model, softmax."""

    def serve(images: tf.Tensor) -> dict:
        logits = model(preprocessing.serve(images), training=False)
        logits = tf.cast(logits, tf.float32)
        probabilities = tf.nn.softmax(logits) if from_logits else logits
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}

    return serve


def input_signature(size: Sequence[int] | None = None) -> list[tf.TensorSpec]:
    """The serving input: uint8 `[None, H, W, 3]`, with H and W fixed to `size` or dynamic."""
    height, width = size if size is not None else (None, None)
    return [tf.TensorSpec([None, height, width, 3], tf.uint8, name=INPUT_NAME)]


def write_saved_model(model: keras.Model, serve: Serve, path: str, size: Sequence[int] | None = None) -> None:
    """Writes a SavedModel whose `serve` endpoint (also `serving_default`) is `serve`."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=input_signature(size))
    archive.write_out(path, verbose=False)


def tflite_models(
    model: keras.Model,
    serve: Serve,
    size: Sequence[int],
    quantizations: Iterable[str | None],
    calibration: Callable[[], Iterable[np.ndarray]] | None = None,
) -> dict[str | None, bytes]:
    """Converts `serve` at the fixed image `size` to TFLite with builtin ops only, once per entry
    of `quantizations` (None: float32; "float16": float16 weights; "int8": full-integer
    quantization calibrated on the uint8 batches `calibration()` yields, input kept uint8).

    Raises:
        ExportError: The graph holds ops that TFLite's builtin ops lack (named in the message).
    """
    models = {}
    with tempfile.TemporaryDirectory() as directory:
        # Through a SavedModel, the path Keras' own TFLite export takes: converting a
        # concrete function directly leaves Keras' variables unfrozen (READ_VARIABLE ops).
        write_saved_model(model, serve, directory, size)
        for quantization in quantizations:
            converter = tf.lite.TFLiteConverter.from_saved_model(directory)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            if quantization == "float16":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.target_spec.supported_types = [tf.float16]
            elif quantization == "int8":
                if calibration is None:
                    raise ValueError("int8 quantization needs calibration images; none were given.")
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.representative_dataset = lambda: ({INPUT_NAME: batch} for batch in calibration())
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                converter.inference_input_type = tf.uint8
            elif quantization is not None:
                raise ValueError(f"Unknown quantization {quantization!r}; expected one of {QUANTIZATIONS}.")
            models[quantization] = _convert(converter)
    return models


@contextlib.contextmanager
def _no_interpreter_deprecation():
    """Hides TensorFlow's notice that its TFLite interpreter also ships as the LiteRT package
    (the interpreter is the same; the converter's int8 calibration creates one too)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        yield


# What TFLite's converter and interpreter print straight to descriptor 2 on every call, which
# says nothing to a user: the quantizer's settings and the interpreter's default CPU delegate.
TFLITE_NOISE = (
    r"^fully_quantize: \d+, inference_type: \d+, input_inference_type: ",
    r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.",
)


def _convert(converter: tf.lite.TFLiteConverter) -> bytes:
    try:
        with _no_interpreter_deprecation(), filtered_stderr(TFLITE_NOISE):
            return converter.convert()
    except Exception as error:  # the converter raises its own ConverterError, not exported by tf.lite
        message = str(error)
        ops = tflite_missing_ops(message)
        if ops:
            raise ExportError(
                f"TFLite's builtin ops cannot run the serving graph: TensorFlow op(s) {', '.join(ops)} have no "
                "builtin equivalent. Replace them in the model or its preprocessing."
            ) from None
        first_line = message.strip().splitlines()[0] if message.strip() else type(error).__name__
        raise ExportError(f"The TFLite converter failed: {first_line}") from error


def onnx_model(serve: Serve, opset: int = ONNX_OPSET) -> bytes:
    """Converts `serve` (any batch and image size) to an ONNX model with tf2onnx.

    Raises:
        ExportError: tf2onnx left ops in the graph that ONNX does not define (named in the message).
    """
    tf2onnx, onnx = _import_onnx("tf2onnx"), _import_onnx("onnx")
    function = tf.function(serve, input_signature=input_signature())
    # tf2onnx logs every node it handles at INFO and an unsupported op at ERROR, then writes the
    # graph anyway; the check below turns the latter into an error naming the ops.
    tf2onnx_logger = logging.getLogger("tf2onnx")
    level = tf2onnx_logger.level
    tf2onnx_logger.setLevel(logging.CRITICAL)
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=opset)
    finally:
        tf2onnx_logger.setLevel(level)
    unknown = sorted(
        {node.op_type for node in _onnx_nodes(proto.graph) if not onnx.defs.has(node.op_type, node.domain)}
    )
    if unknown:
        raise ExportError(
            f"ONNX (opset {opset}) has no op for TensorFlow op(s) {', '.join(unknown)} in the serving graph, so "
            "no ONNX runtime would load it. Replace them in the model or its preprocessing."
        )
    return proto.SerializeToString()


def _onnx_nodes(graph) -> Iterable:
    """Every node of an ONNX graph, those of subgraphs (If / Loop bodies) included."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            subgraphs = [*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])]
            for subgraph in subgraphs:
                yield from _onnx_nodes(subgraph)


def require_onnx() -> None:
    """Raises `ExportError` saying how to install them unless tf2onnx and onnxruntime import."""
    for name in ("tf2onnx", "onnxruntime"):
        _import_onnx(name)


def _import_onnx(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ExportError(
            f"The ONNX format needs {name}, which is not installed: pip install 'resnet[onnx]' "
            "(tf2onnx and onnxruntime)."
        ) from error


Runner = Callable[[np.ndarray], dict]
"""Runs one exported file in its own runtime: `runner(images)` -> `{"probabilities", "classes"}` as NumPy."""


class SavedModelRunner:
    """The `serving_default` signature of a SavedModel, loaded with `tf.saved_model.load`."""

    def __init__(self, path: str):
        self._signature = tf.saved_model.load(path).signatures["serving_default"]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in self._signature(**{INPUT_NAME: tf.constant(images)}).items()}


class TFLiteRunner:
    """A `.tflite` file in TensorFlow's TFLite interpreter (batch size set per call).

    Args:
        content: The file's bytes.
        num_threads: Interpreter threads; None lets TFLite choose.
    """

    def __init__(self, content: bytes, num_threads: int | None = None):
        with _no_interpreter_deprecation(), filtered_stderr(TFLITE_NOISE):
            self.interpreter = tf.lite.Interpreter(model_content=content, num_threads=num_threads)
            self._runner = self.interpreter.get_signature_runner()
        details = self._runner.get_input_details()[INPUT_NAME]
        self.input_size = tuple(int(n) for n in details["shape_signature"][1:3])
        self._announced = False

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if tuple(images.shape[1:3]) != self.input_size:
            raise ValueError(f"This TFLite model takes {self.input_size} images; received {images.shape[1:3]}.")
        if self._announced:
            return self._runner(**{INPUT_NAME: images})
        with filtered_stderr(TFLITE_NOISE):  # the first call applies the XNNPACK delegate, which says so
            outputs = self._runner(**{INPUT_NAME: images})
        self._announced = True
        return outputs


class OnnxRunner:
    """An ONNX file in onnxruntime's CPU execution provider.

    Args:
        content: The file's bytes.
        num_threads: Intra-op threads; None lets onnxruntime choose.
    """

    def __init__(self, content: bytes, num_threads: int | None = None):
        ort = _import_onnx("onnxruntime")
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise ExportError(f"onnxruntime cannot load the ONNX model: {error}") from error

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        names = ["probabilities", "classes"]
        return dict(zip(names, self.session.run(names, {INPUT_NAME: images}), strict=True))


def check_outputs(
    name: str,
    runner: Runner,
    images: np.ndarray,
    expected: dict[str, np.ndarray],
    quantization: str | None = None,
    tolerance: float | None = None,
) -> dict[str, float]:
    """Checks that `runner` computes on `images` what the Keras model computed (`expected`).

    Float files must give probabilities within `FLOAT_TOLERANCE` (`FLOAT16_TOLERANCE` for float16
    weights) and the same class wherever the model's top two probabilities are further apart
    than that; int8 files must give the model's class on at least `INT8_MIN_AGREEMENT` of them.
    `tolerance` replaces the float tolerance (for a model that computes in bfloat16 or float16).

    Returns:
        `{"max_probability_difference": ..., "class_agreement": ...}` measured on `images`.

    Raises:
        ExportError: The outputs are missing, misshapen, non-finite or too far from `expected`.
    """
    try:
        outputs = runner(images)
    except ExportError:
        raise
    except Exception as error:  # any runtime's failure to run the file
        raise ExportError(f"{name} fails to run in its runtime: {error}") from error
    probabilities, classes = outputs.get("probabilities"), outputs.get("classes")
    want = expected["probabilities"]
    if probabilities is None or classes is None or probabilities.shape != want.shape or classes.shape != want.shape[:1]:
        raise ExportError(
            f"{name} returns {_describe(outputs)}; expected probabilities {want.shape} and classes {want.shape[:1]}."
        )
    if not np.isfinite(probabilities).all():
        raise ExportError(f"{name} returns non-finite probabilities.")
    difference = float(np.abs(probabilities - want).max())
    agreement = float(np.mean(classes == expected["classes"]))
    result = {"max_probability_difference": difference, "class_agreement": agreement}
    if quantization == "int8":
        if agreement < INT8_MIN_AGREEMENT:
            raise ExportError(
                f"{name} gives the Keras model's class on {agreement:.0%} of {len(images)} check images "
                f"(at least {INT8_MIN_AGREEMENT:.0%} expected); the quantization lost too much."
            )
        return result
    if tolerance is None:
        tolerance = FLOAT16_TOLERANCE if quantization == "float16" else FLOAT_TOLERANCE
    top_two = np.sort(want, axis=-1)[:, -2:] if want.shape[-1] > 1 else np.concatenate([np.zeros_like(want), want], -1)
    clear = top_two[:, 1] - top_two[:, 0] > 2 * tolerance
    if difference > tolerance or np.any((classes != expected["classes"]) & clear):
        raise ExportError(
            f"{name} differs from the Keras model: probabilities up to {difference:.2g} apart (at most "
            f"{tolerance:g} allowed), classes agree on {agreement:.0%} of {len(images)} check images."
        )
    return result


def _describe(outputs: dict) -> str:
    return ", ".join(f"{key} {np.shape(value)}" for key, value in outputs.items()) or "nothing"
