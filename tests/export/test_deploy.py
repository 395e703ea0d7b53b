"""Exports to TFLite (float32, float16, int8) and ONNX on the demo's run: each file in its own runtime."""

import json
import sys
import uuid

import gin
import numpy as np
import pytest
import tensorflow as tf

import resnet
from resnet import cli, config
from resnet.data.preprocessing import Preprocessing, resize_to_fill
from resnet.export import deploy
from resnet.export.serving import export_for_serving, read_labels
from resnet.training.trainer import Trainer

slow = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo trained for a few epochs, restored from its run directory as resnet-export does,
    and exported in every format."""
    model_dir = str(tmp_path_factory.mktemp("run") / "demo")
    config.parse(["experiments/demo"], ["Trainer.epochs = 4", "Trainer.progress = 'epoch'"])
    trainer = gin.get_configurable(Trainer)(model_dir=model_dir)
    trainer.setup_process()
    trainer.train()
    trainer, model, _, _ = cli.restored_model(model_dir, [], "best")
    output = str(tmp_path_factory.mktemp("exports") / "demo")
    lines = []
    export_for_serving(
        model,
        trainer.preprocessing,
        output,
        formats=["saved_model", "tflite", "onnx"],
        quantize=["int8", "float16"],
        data=trainer.data,
        progress=lines.append,
        class_names=trainer.data.class_names,  # as resnet-export passes them
    )
    images, labels = zip(*trainer.data.examples("eval").as_numpy_iterator(), strict=True)
    return trainer, model, output, lines, np.stack(images), np.array(labels)


def read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def accuracy(outputs: dict, labels: np.ndarray) -> float:
    return float(np.mean(outputs["classes"] == labels))


@slow
def test_every_format_serves_the_validation_set_as_the_saved_model_does(demo):
    _, _, output, _, images, labels = demo
    assert images.shape == (360, 32, 32, 3) and images.dtype == np.uint8
    reference = deploy.SavedModelRunner(f"{output}/saved_model")(images)
    assert accuracy(reference, labels) > 0.9
    for name in ("model.tflite", "model.onnx"):
        runner = (deploy.TFLiteRunner if name.endswith(".tflite") else deploy.OnnxRunner)(read(f"{output}/{name}"))
        served = runner(images)
        assert served["probabilities"].dtype == np.float32 and served["classes"].dtype == np.int32
        np.testing.assert_allclose(served["probabilities"], reference["probabilities"], rtol=0, atol=1e-4, err_msg=name)
        np.testing.assert_array_equal(served["classes"], reference["classes"], err_msg=name)
    float16 = deploy.TFLiteRunner(read(f"{output}/model_float16.tflite"))(images)
    np.testing.assert_allclose(float16["probabilities"], reference["probabilities"], rtol=0, atol=1e-2)
    int8 = deploy.TFLiteRunner(read(f"{output}/model_int8.tflite"))
    assert int8.interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert {detail["dtype"] for detail in int8.interpreter.get_tensor_details()} >= {np.int8}
    for quantized in (int8(images), float16):
        assert abs(accuracy(quantized, labels) - accuracy(reference, labels)) <= 0.01


@slow
def test_the_export_reports_what_it_checked(demo):
    _, _, output, lines, _, _ = demo
    described = json.loads(read(f"{output}/export.json"))
    assert read_labels(output) == [str(digit) for digit in range(10)] and described["labels"] == "labels.txt"
    assert read(f"{output}/labels.txt") == b"0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n"
    assert "Writing labels.txt (10 class names)..." in lines
    files = described["files"]
    assert set(files) == {
        "saved_model",
        "model.keras",
        "model.tflite",
        "model_int8.tflite",
        "model_float16.tflite",
        "model.onnx",
    }
    for name, entry in files.items():
        any_size = name in ("saved_model", "model.keras", "model.onnx")
        assert entry["image_size"] == ("any" if any_size else [32, 32])
        assert entry["max_probability_difference"] <= (1e-4 if entry["quantization"] is None else 0.1)
        assert entry["class_agreement"] >= 0.75 and entry["checked_images"] == (20 if any_size else 16)
        # The progress line counts what export.json records.
        at = "16 at 32x32, 4 at 48x40" if any_size else "16 at 32x32"
        assert any(
            line.startswith(f"  {name}: checked against the Keras model on {entry['checked_images']} images ({at}): ")
            for line in lines
        ), (name, lines)
    assert files["model.keras"]["max_probability_difference"] <= 1e-6  # the trained network itself, reloaded
    assert files["model_int8.tflite"]["quantization"] == "int8"
    assert "  int8 calibrates on 256 training images of 'digits'" in lines


@slow
def test_other_image_sizes_where_the_format_allows_them(demo, tmp_path):
    trainer, model, output, _, images, _ = demo
    other = resize_to_fill(images[:6], 45, 60).numpy()
    expected = deploy.serving_function(model, trainer.preprocessing)(tf.constant(other))
    for runner in (deploy.SavedModelRunner(f"{output}/saved_model"), deploy.OnnxRunner(read(f"{output}/model.onnx"))):
        np.testing.assert_allclose(runner(other)["probabilities"], expected["probabilities"].numpy(), atol=1e-4)
    fixed = deploy.TFLiteRunner(read(f"{output}/model.tflite"))
    with pytest.raises(ValueError, match=r"This TFLite model takes \(32, 32\) images; received \(45, 60\)"):
        fixed(other)
    resized = export_for_serving(
        model, trainer.preprocessing, tmp_path / "45x60", formats=["tflite"], tflite_input_size=(45, 60)
    )
    served = deploy.TFLiteRunner(read(f"{resized}/model.tflite"))(other)
    np.testing.assert_allclose(served["probabilities"], expected["probabilities"].numpy(), atol=1e-4)
    assert json.loads(read(f"{resized}/export.json"))["files"]["model.tflite"]["image_size"] == [45, 60]


class ScaleAndTranslatePreprocessing(Preprocessing):
    """Serving that resizes with TensorFlow's own antialiased resize, as this project once did."""

    def serve(self, images):
        resized = tf.image.resize(images, [self.image_size, self.image_size], antialias=True)
        return self._normalize(resized)


@slow
@pytest.mark.parametrize("form", ["tflite", "onnx"])
def test_an_op_the_format_lacks_fails_the_export_naming_it(form, tmp_path):
    model = resnet.build("cifar/resnet20")
    output = tmp_path / "export"
    with pytest.raises(deploy.ExportError, match=r"op\(s\) ScaleAndTranslate"):
        export_for_serving(model, ScaleAndTranslatePreprocessing(), output, formats=[form], tflite_input_size=(40, 40))
    assert list(tmp_path.iterdir()) == []  # no file, no staging directory


def test_a_file_that_computes_something_else_fails_the_check():
    expected = {"probabilities": np.array([[0.9, 0.1], [0.2, 0.8]], np.float32), "classes": np.array([0, 1], np.int32)}
    images = np.zeros([2, 8, 8, 3], np.uint8)

    def runner_giving(probabilities):
        return lambda batch: {"probabilities": np.float32(probabilities), "classes": np.argmax(probabilities, -1)}

    close = runner_giving([[0.89995, 0.10005], [0.2, 0.8]])
    assert deploy.check_outputs("f", close, images, expected)["max_probability_difference"] == pytest.approx(
        5e-5, rel=1e-2
    )
    with pytest.raises(deploy.ExportError, match=r"f differs from the Keras model: probabilities up to 0.001 apart"):
        deploy.check_outputs("f", runner_giving([[0.899, 0.101], [0.2, 0.8]]), images, expected)
    assert deploy.check_outputs("f", runner_giving([[0.899, 0.101], [0.2, 0.8]]), images, expected, "float16")
    with pytest.raises(deploy.ExportError, match=r"gives the Keras model's class on 50% of 2 check images"):
        deploy.check_outputs("f", runner_giving([[0.4, 0.6], [0.2, 0.8]]), images, expected, "int8")
    with pytest.raises(
        deploy.ExportError, match=r"returns probabilities \(2, 3\), classes \(2,\); expected probabilities \(2, 2\)"
    ):
        deploy.check_outputs("f", runner_giving([[0.4, 0.5, 0.1], [0.2, 0.7, 0.1]]), images, expected)
    with pytest.raises(deploy.ExportError, match=r"non-finite"):
        deploy.check_outputs("f", runner_giving([[np.nan, 0.1], [0.2, 0.8]]), images, expected)

    def crashing(batch):
        raise RuntimeError("kernel failed")

    with pytest.raises(deploy.ExportError, match=r"f fails to run in its runtime: kernel failed"):
        deploy.check_outputs("f", crashing, images, expected)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            {"formats": ["saved_model", "pb"]},
            r"`formats` must be a list of 'saved_model', 'tflite', 'onnx'; received \['saved_model', 'pb'\]",
        ),
        ({"formats": "tflite"}, r"`formats` must be a list of .*; received 'tflite'"),
        ({"formats": []}, r"`formats` is empty"),
        (
            {"formats": ["tflite"], "quantize": ["int4"]},
            r"`quantize` must be a list of 'int8', 'float16'; received \['int4'\]",
        ),
        (
            {"quantize": ["int8"]},
            r"`quantize` \['int8'\] makes TFLite models: add 'tflite' to `formats` \['saved_model'\]",
        ),
        (
            {"formats": ["tflite"], "quantize": ["int8"]},
            r"int8 quantization calibrates on training images: pass the run's `data`",
        ),
        (
            {"formats": ["tflite"], "tflite_input_size": (32, 0)},
            r"`tflite_input_size` must be \(height, width\), two positive",
        ),
        ({"formats": ["tflite"], "calibration_images": 0}, r"`calibration_images`"),
    ],
)
def test_bad_export_arguments_are_refused_before_anything_is_written(arguments, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        export_for_serving(None, Preprocessing(), tmp_path / "export", **arguments)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # converts to ONNX (9 s)
def test_onnx_export_writes_to_any_file_system():
    """The ONNX and TFLite files go through tf.io.gfile like the SavedModel (ram:// here)."""
    output = f"ram://{uuid.uuid4().hex}/export"
    export_for_serving(resnet.build("cifar/resnet20"), Preprocessing(), output, formats=["tflite", "onnx"])
    assert set(tf.io.gfile.listdir(output)) == {"model.keras", "model.tflite", "model.onnx", "export.json"}


def test_onnx_without_its_packages_is_refused_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an interpreter without it imports
    with pytest.raises(
        deploy.ExportError, match=r"needs onnxruntime, which is not installed: pip install 'resnet\[onnx\]'"
    ):
        export_for_serving(None, Preprocessing(), tmp_path / "export", formats=["onnx"])
    assert list(tmp_path.iterdir()) == []
