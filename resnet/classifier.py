"""Classifying images with published weights, a trained run or an export (what `resnet-predict` runs).

>>> classifier = Classifier.from_weights("resnet50.tv2_in1k")   # doctest: +SKIP
>>> classifier.top(read_image("photo.jpg"), k=3)                # doctest: +SKIP
[{'class': 207, 'name': 'golden retriever', 'probability': 0.91}, ...]

Each source brings its model, its evaluation preprocessing and its class names: published
weights their publisher's preprocessing and the ImageNet names; a run its `Trainer.preprocessing`
and the class names of its data source; an export its serving signature (preprocessing inside)
and its `labels.txt`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class Classifier:
    """Class probabilities of uint8 RGB images, with the names of the classes.

    Attributes:
        probabilities: uint8 images [batch, height, width, 3] (any size) -> probabilities
            [batch, classes].
        class_names: `class_names[i]` names class `i`; None where the source does not know them.
        description: What the model is (a name, a checkpoint, an export), for messages.
    """

    probabilities: Callable[[np.ndarray], np.ndarray]
    class_names: list[str] | None
    description: str

    @classmethod
    def from_weights(cls, name: str, cache_dir: str | None = None) -> Classifier:
        """Published weights by name (downloaded once into the cache; see `resnet.pretrained`)."""
        import resnet
        from resnet import pretrained

        model = resnet.build(pretrained.weights_info(name)["config"], weights=name, cache_dir=cache_dir)
        return cls(
            _keras_probabilities(model, pretrained.preprocessing(name), True), pretrained.class_names(name), name
        )

    @classmethod
    def from_run(cls, model_dir: str, checkpoint: str = "best", gin_params: Sequence[str] = ()) -> Classifier:
        """A run of `resnet-train` at `checkpoint` ('best', 'backup', 'checkpoints' or a path)."""
        from resnet import cli

        trainer, model, evaluator, path = cli.restored_model(model_dir, list(gin_params), checkpoint)
        probabilities = _keras_probabilities(model, trainer.preprocessing, evaluator.from_logits)
        return cls(probabilities, trainer.data.class_names, path)

    @classmethod
    def from_export(cls, export_dir: str) -> Classifier:
        """A `resnet-export` directory: its `saved_model/` and `labels.txt`."""
        from resnet.export.deploy import SavedModelRunner
        from resnet.export.serving import read_labels
        from resnet.storage.files import join

        saved_model = join(export_dir, "saved_model")
        if not tf.io.gfile.isdir(saved_model):
            raise ValueError(f"{export_dir!r} holds no saved_model/; expected a directory written by resnet-export.")
        runner = SavedModelRunner(saved_model)
        return cls(lambda images: runner(images)["probabilities"], read_labels(export_dir), saved_model)

    def top(self, image: np.ndarray, k: int = 5) -> list[dict]:
        """The `k` most probable classes of one uint8 image [H, W, 3], most probable first (ties
        by class index): `{"class": index, "name": name or None, "probability": p}` each."""
        probabilities = np.asarray(self.probabilities(np.asarray(image)[None]))[0]
        if self.class_names is not None and len(self.class_names) != len(probabilities):
            raise ValueError(
                f"{self.description} gives {len(probabilities)} classes but has {len(self.class_names)} class names."
            )
        order = np.argsort(-probabilities, kind="stable")[:k]
        names = self.class_names
        return [
            {"class": int(i), "name": names[i] if names is not None else None, "probability": float(probabilities[i])}
            for i in order
        ]


def read_image(path: str) -> np.ndarray:
    """The image file at `path` (JPEG, PNG, GIF, BMP, WebP) as uint8 RGB [H, W, 3]; a
    `ValueError` saying why it cannot be read."""
    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except tf.errors.NotFoundError:
        raise ValueError("no such file") from None
    except tf.errors.OpError as error:  # TensorFlow's message, without its op and function names
        reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*", "", error.message.splitlines()[0]).strip()
        raise ValueError(f"not a readable image ({reason})") from None
    return image.numpy()


def _keras_probabilities(model, preprocessing, from_logits: bool) -> Callable[[np.ndarray], np.ndarray]:
    """The probabilities of an export's serving function (preprocessing, model, softmax), traced once for any size."""
    from resnet.export.deploy import input_signature, serving_function

    serve = tf.function(serving_function(model, preprocessing, from_logits), input_signature=input_signature())
    return lambda images: serve(images)["probabilities"].numpy()
