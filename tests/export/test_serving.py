"""Exports for serving: files that serve what the model computes, on any TensorFlow file system,
complete or absent, with the umask's modes."""

import json
import os
import re
import stat
import time
import uuid

import keras
import numpy as np
import pytest
import tensorflow as tf

from exports import (
    OLD_EXPORT,
    make_old_export,
    read,
    tree,
)
from resnet.data.preprocessing import Preprocessing
from resnet.export.deploy import ExportError
from resnet.export.serving import export_for_serving, read_labels

# Monkeypatches of `tf.io.gfile` hold whichever test exports first.
pytestmark = pytest.mark.usefixtures("gfile_imported_as_keras_does")

IMAGES = tf.constant(np.random.default_rng(0).integers(0, 255, (3, 40, 36, 3)), tf.uint8)
# The test model's 10 classes, named as a user might: spaces, accents, other scripts.
NAMES = ["avião", "automobile", "bird", "cat", "  deer ", "dog", "frog", "horse", "ship", "卡车"]


def test_export_loads_back_and_serves_what_the_model_computes(model, preprocessing, parent):
    output = f"{parent}/exports/digits"
    assert export_for_serving(model, preprocessing, output + "/", class_names=tuple(NAMES)) == output
    assert tree(parent) == {"exports", "exports/digits"} | {f"exports/digits/{p}" for p in tree(output)}
    assert {"model.keras", "saved_model/saved_model.pb", "saved_model/variables/variables.index"} <= tree(output)
    # One labels.txt beside every format, named in export.json, read back as given.
    assert read(f"{output}/labels.txt") == "".join(f"{name}\n" for name in NAMES)
    assert read_labels(output) == NAMES and json.loads(read(f"{output}/export.json"))["labels"] == "labels.txt"
    probabilities = tf.nn.softmax(model(preprocessing.serve(IMAGES), training=False)).numpy()
    # Both load straight from the URI (ram:// included).
    loaded = tf.saved_model.load(f"{output}/saved_model")
    served = loaded.signatures["serving_default"](images=IMAGES)
    np.testing.assert_allclose(served["probabilities"].numpy(), probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(served["classes"].numpy(), probabilities.argmax(-1))
    reloaded = keras.models.load_model(f"{output}/model.keras")
    np.testing.assert_allclose(
        tf.nn.softmax(reloaded(preprocessing.serve(IMAGES))).numpy(), probabilities, rtol=1e-5, atol=1e-6
    )
    assert not os.path.exists("ram:")  # nothing went to a local directory named after the URI


def test_export_follows_the_umask(model, preprocessing, tmp_path):
    previous = os.umask(0o022)
    try:
        output = export_for_serving(model, preprocessing, tmp_path / "export")
    finally:
        os.umask(previous)
    modes = {}
    for root, dirs, files in os.walk(output):
        for name in dirs + files:
            path = os.path.join(root, name)
            modes[os.path.relpath(path, output)] = stat.S_IMODE(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(output).st_mode) == 0o755
    assert {mode for path, mode in modes.items() if os.path.isdir(os.path.join(output, path))} == {0o755}
    assert {mode for path, mode in modes.items() if os.path.isfile(os.path.join(output, path))} == {0o644}
    assert len(modes) >= 7


def test_failed_export_leaves_no_staging_and_the_old_export_untouched(model, preprocessing, parent, monkeypatch):
    output = f"{parent}/export"
    make_old_export(output)

    def failing_save(self, filepath, *args, **kwargs):  # after the SavedModel is written
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_for_serving(model, preprocessing, output, overwrite=True)
    assert tree(parent) == {"export"} | {f"export/{p}" for p in OLD_EXPORT}
    assert read(f"{output}/export.json") == "old export"
    with pytest.raises(OSError, match="disk full"):
        export_for_serving(model, preprocessing, f"{parent}/new")
    assert tree(parent) == {"export"} | {f"export/{p}" for p in OLD_EXPORT}


def test_failure_while_moving_into_place_leaves_nothing_half_written(model, preprocessing, monkeypatch):
    parent = f"ram://{uuid.uuid4().hex}"
    rename = tf.io.gfile.rename
    moved = []

    def rename_then_fail(source, target, overwrite=False):
        if moved:
            raise tf.errors.UnavailableError(None, None, "connection reset")
        moved.append(target)
        rename(source, target, overwrite)

    monkeypatch.setattr(tf.io.gfile, "rename", rename_then_fail)
    with pytest.raises(tf.errors.UnavailableError, match="connection reset"):
        export_for_serving(model, preprocessing, f"{parent}/export")
    assert moved and tree(parent) == set()


@pytest.mark.parametrize("size", [(100000, 100000), (8193, 32), (32, 8193)])
def test_an_input_size_beyond_the_bound_is_refused_at_once(size, tmp_path):
    started = time.monotonic()
    message = rf"^`--tflite_input_size` must be at most 8192 pixels a side .*; received {re.escape(repr(size))}\.$"
    with pytest.raises(ValueError, match=message):
        export_for_serving(None, Preprocessing(), tmp_path / "export", formats=["tflite"], tflite_input_size=size)
    with pytest.raises(ValueError, match=message):  # what the checks run at, whatever the formats
        export_for_serving(None, Preprocessing(), tmp_path / "export", tflite_input_size=size)
    from resnet.export.__main__ import _input_size

    text = ",".join(map(str, size))
    with pytest.raises(
        ValueError, match=rf"^`--tflite_input_size` must be at most 8192 pixels a side .*; received '{text}'\.$"
    ):
        _input_size(text.split(","))
    assert _input_size(["8192", "6000"]) == (8192, 6000) and _input_size(["8192"]) == (8192, 8192)
    assert list(tmp_path.iterdir()) == [] and time.monotonic() - started < 5


def test_model_keras_is_checked_like_every_other_file(model, preprocessing, tmp_path, monkeypatch):
    lines = []
    output = export_for_serving(model, preprocessing, tmp_path / "export", progress=lines.append)
    described = json.loads(read(f"{output}/export.json"))
    assert (described["labels"], read_labels(output), "labels.txt" in os.listdir(output)) == (None, None, False)
    files = described["files"]
    assert files["model.keras"]["checked_images"] == 20 and files["model.keras"]["max_probability_difference"] <= 1e-6
    for name, entry in files.items():  # the progress lines count what export.json records
        assert any(
            line.startswith(
                f"  {name}: checked against the Keras model on {entry['checked_images']} images (16 "
                "at 32x32, 4 at 48x40)"
            )
            for line in lines
        ), (name, lines)

    save = keras.Model.save

    def save_other_weights(self, filepath, *args, **kwargs):  # a model.keras that is not the trained model
        copy = keras.models.clone_model(self)
        copy.set_weights([weight * 1.5 for weight in self.get_weights()])
        save(copy, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save_other_weights)
    with pytest.raises(ExportError, match="model.keras differs from the Keras model"):
        export_for_serving(model, preprocessing, tmp_path / "refused")
    assert sorted(os.listdir(tmp_path)) == ["export"]  # nothing of the refused export is left


@pytest.mark.parametrize(
    "names, message",
    [
        (NAMES[:3], r"`class_names` must name each of the model's 10 classes; received 3 names\."),
        (NAMES + ["extra"], r"`class_names` must name each of the model's 10 classes; received 11 names\."),
        ([*NAMES[:9], "fire\ntruck"], r"one a line: the name of class 9 holds a line break; received 'fire\\ntruck'\."),
        (["cat\r", *NAMES[1:]], r"one a line: the name of class 0 holds a line break; received 'cat\\r'\."),
        ([*NAMES[:4], "", *NAMES[5:]], r"one a line: the name of class 4 is empty; received ''\."),
        ([*NAMES[:9], 9], r"`class_names` must be strings; class 9 is 9\."),
        ("0123456789", r"`class_names` must be a list of strings, one per class; received '0123456789'\."),
    ],
    ids=["too-few", "too-many", "newline", "carriage-return", "empty", "not-a-string", "a-string"],
)
def test_class_names_that_labels_txt_cannot_hold_are_refused_before_anything_is_written(
    names, message, model, preprocessing, tmp_path
):
    with pytest.raises(ValueError, match=message):
        export_for_serving(model, preprocessing, tmp_path / "exports" / "export", class_names=names)
    assert list(tmp_path.iterdir()) == []  # not even the parent of the output
