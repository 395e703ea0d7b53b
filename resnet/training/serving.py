"""Exporting a trained model for serving: uint8 images in, probabilities and classes out."""

from __future__ import annotations

import os
import uuid

import keras
import tensorflow as tf

from resnet.data.preprocessing import Preprocessing
from resnet.training.rundir import join, local_path


def export_for_serving(
    model: keras.Model,
    preprocessing: Preprocessing,
    output: str | os.PathLike,
    from_logits: bool = True,
    overwrite: bool = False,
) -> str:
    """Writes a SavedModel with preprocessing inside, and the model as `model.keras`, to `output`.

    The SavedModel's `serve` endpoint (also its `serving_default` signature) takes a batch of
    uint8 RGB images of any size, `[batch, height, width, 3]`, applies the evaluation
    preprocessing (resize, crop, normalize) and returns `{"probabilities": [batch, classes],
    "classes": [batch]}`. `model.keras` holds the bare network (float inputs, no preprocessing).

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
        overwrite: Replace an existing `output`; otherwise an existing one is an error.

    Returns:
        The output directory.
    """
    output = os.fspath(output).rstrip("/")
    if tf.io.gfile.exists(output) and not overwrite:
        raise ValueError(f"`--output` {output!r} already exists; choose a new directory or pass --overwrite.")
    parent = os.path.dirname(output)
    if parent:
        tf.io.gfile.makedirs(parent)
    staging = join(parent, f".{os.path.basename(output)}.{uuid.uuid4().hex[:8]}.partial")
    tf.io.gfile.makedirs(staging)
    try:
        _write(model, preprocessing, staging, from_logits)
        if tf.io.gfile.exists(output):
            tf.io.gfile.rmtree(output)
        _move_tree(staging, output)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    return output


def _write(model: keras.Model, preprocessing: Preprocessing, directory: str, from_logits: bool) -> None:
    def serve(images):
        logits = model(preprocessing.serve(images), training=False)
        logits = tf.cast(logits, tf.float32)
        probabilities = tf.nn.softmax(logits) if from_logits else logits
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    archive.write_out(join(directory, "saved_model"), verbose=False)
    model.save(join(directory, "model.keras"))


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
