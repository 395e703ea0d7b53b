"""Exporting a trained model for serving: uint8 images in, probabilities and classes out."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from resnet.data.preprocessing import Preprocessing


def export_for_serving(
    model: keras.Model,
    preprocessing: Preprocessing,
    output: str | os.PathLike,
    from_logits: bool = True,
    overwrite: bool = False,
) -> Path:
    """Writes a SavedModel with preprocessing inside, and the model as `model.keras`, to `output`.

    The SavedModel's `serve` endpoint (also its `serving_default` signature) takes a batch of
    uint8 RGB images of any size, `[batch, height, width, 3]`, applies the evaluation
    preprocessing (resize, crop, normalize) and returns `{"probabilities": [batch, classes],
    "classes": [batch]}`. `model.keras` holds the bare network (float inputs, no preprocessing).

    Everything is written to a temporary directory next to `output` and renamed into place at
    the end, so a failure never leaves a half-written export (nor touches an existing one).

    Args:
        model: The trained model.
        preprocessing: The run's preprocessing; its `serve` method runs inside the signature.
        output: Directory to create.
        from_logits: Whether the model returns logits (softmax is applied) or probabilities.
        overwrite: Replace an existing `output`; otherwise an existing one is an error.

    Returns:
        The output directory.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise ValueError(f"`--output` {str(output)!r} already exists; choose a new directory or pass --overwrite.")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        def serve(images):
            logits = model(preprocessing.serve(images), training=False)
            logits = tf.cast(logits, tf.float32)
            probabilities = tf.nn.softmax(logits) if from_logits else logits
            return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}

        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", serve, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        archive.write_out(str(staging / "saved_model"), verbose=False)
        model.save(staging / "model.keras")
        if output.exists():
            shutil.rmtree(output)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output
