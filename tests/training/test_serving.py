"""Exports for serving: on any TensorFlow file system, complete or absent, with the umask's modes."""

import os
import stat
import uuid

import keras
import numpy as np
import pytest
import tensorflow as tf

import resnet
from resnet.data.preprocessing import Preprocessing
from resnet.training.serving import export_for_serving


@pytest.fixture(scope="module")
def model():
    return resnet.build("cifar/resnet20")


@pytest.fixture
def preprocessing():
    return Preprocessing(image_size=32)


@pytest.fixture(params=["local", "ram"])
def parent(request, tmp_path):
    return str(tmp_path) if request.param == "local" else f"ram://{uuid.uuid4().hex}"


IMAGES = tf.constant(np.random.default_rng(0).integers(0, 255, (3, 40, 36, 3)), tf.uint8)


def tree(directory: str) -> set[str]:
    """Paths of every file and directory below `directory`, relative to it."""
    found = set()
    for root, dirs, files in tf.io.gfile.walk(directory):
        relative = root[len(directory) + 1:]
        found |= {f"{relative}/{name}".lstrip("/") for name in dirs + files}
    return found


OLD_EXPORT = {"export.json", "saved_model", "saved_model/saved_model.pb"}


def make_old_export(output: str) -> None:
    """A stand-in for a previous export: only names an export has, with contents marked old."""
    tf.io.gfile.makedirs(f"{output}/saved_model")
    for name in ("export.json", "saved_model/saved_model.pb"):
        with tf.io.gfile.GFile(f"{output}/{name}", "w") as f:
            f.write("old export")


def read(path: str) -> str:
    with tf.io.gfile.GFile(path) as f:
        return f.read()


def test_export_loads_back_and_serves_what_the_model_computes(model, preprocessing, parent):
    output = f"{parent}/exports/digits"
    assert export_for_serving(model, preprocessing, output + "/") == output
    assert tree(parent) == {"exports", "exports/digits"} | {f"exports/digits/{p}" for p in tree(output)}
    assert {"model.keras", "saved_model/saved_model.pb", "saved_model/variables/variables.index"} <= tree(output)
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


def test_existing_export_is_kept_unless_overwriting(model, preprocessing, parent):
    output = f"{parent}/export"
    make_old_export(output)
    with pytest.raises(ValueError, match=f"^`--output` '{output}' already exists; choose a new directory or pass --overwrite.$"):
        export_for_serving(model, preprocessing, output)
    assert tree(output) == OLD_EXPORT
    export_for_serving(model, preprocessing, output, overwrite=True)
    assert read(f"{output}/export.json") != "old export" and "saved_model/variables/variables.index" in tree(output)
    assert tf.io.gfile.listdir(parent) in (["export"], ["export/"])  # no staging left behind


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


def test_overwrite_replaces_only_a_previous_export(model, preprocessing, parent):
    """A run directory (or any directory with other files) is never deleted by --overwrite."""
    run = f"{parent}/run"
    tf.io.gfile.makedirs(f"{run}/backup")
    for name in ("metrics.csv", "backup/backup-4.index", "operative_config.gin"):
        with tf.io.gfile.GFile(f"{run}/{name}", "w") as f:
            f.write("precious")
    before = tree(parent)
    for output, message in ((run, "is the run directory"), (parent, "holds the run directory"),
                            (f"{run}/export", "lies inside the run directory")):
        with pytest.raises(ValueError, match=f"^`--output` '{output}' {message} `--model_dir` '{run}'; write the"):
            export_for_serving(model, preprocessing, output, overwrite=True, model_dir=run)
    # Without knowing the run, --overwrite still deletes only what looks like a previous export.
    with pytest.raises(ValueError, match="holds files that are not part of an export .*backup, metrics.csv, "
                                         "operative_config.gin.*--overwrite replaces only a previous export"):
        export_for_serving(model, preprocessing, run, overwrite=True)
    assert tree(parent) == before and read(f"{run}/metrics.csv") == "precious"
    # A path given with a trailing slash, "..", or "file://" is the same directory.
    if not parent.startswith("ram://"):
        for output in (f"{run}/", f"{run}/backup/..", f"file://{run}"):
            with pytest.raises(ValueError, match="is the run directory"):
                export_for_serving(model, preprocessing, output, overwrite=True, model_dir=run)


def test_output_that_is_a_file_is_refused_cleanly(model, preprocessing, parent):
    output = f"{parent}/model.tflite"
    tf.io.gfile.makedirs(parent)
    with tf.io.gfile.GFile(output, "w") as f:
        f.write("a file")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=f"^`--output` '{output}' is an existing file; an export is a directory"):
            export_for_serving(model, preprocessing, output, overwrite=overwrite)
    assert read(output) == "a file"


def test_a_killed_exports_staging_is_removed_by_the_next_export(model, preprocessing, parent):
    output = f"{parent}/export"
    abandoned = f"{parent}/.export.0123abcd.partial"
    unrelated = f"{parent}/.other.0123abcd.partial"
    for directory in (abandoned, unrelated):
        tf.io.gfile.makedirs(f"{directory}/saved_model")
    export_for_serving(model, preprocessing, output)
    assert sorted(name.rstrip("/") for name in tf.io.gfile.listdir(parent)) == [".other.0123abcd.partial", "export"]
