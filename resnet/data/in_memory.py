"""Sources whose data needs no files: arrays held in memory, and images made in the `tf.data` graph.

Their records are cheap: the examples themselves for arrays, indices for synthetic images.
"""

from __future__ import annotations

import abc

import gin
import numpy as np
import tensorflow as tf

from resnet.data.base import SPLITS, DataSource
from resnet.validation import check_int


class _ArraySource(DataSource):
    """A source whose splits are uint8 image and int label arrays held in memory; records are examples."""

    @abc.abstractmethod
    def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Returns images uint8 [N, H, W, 3] and labels int32 [N]."""

    def _records(self, split: str) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(self._arrays(split))

    def _num_examples(self, split: str) -> int:
        return len(self._arrays(split)[1])


@gin.configurable(module="resnet")
class DigitsData(_ArraySource):
    """The 1,797 8x8 handwritten digits that ship with scikit-learn, upscaled to RGB images.

    No download: `sklearn.datasets.load_digits()` reads them from the installed package. The
    0..16 intensities are scaled to 0..255 and each whole 8x8 image is resized (bilinear) to
    `image_size` x `image_size`, so the digit stays centred and fills the canvas, then repeated
    over 3 channels. The split is stratified by class and fixed by `seed`; within a split the
    examples keep the dataset's order.

    Args:
        validation_fraction: Share of the examples in the 'eval' split, in (0, 1).
        image_size: Side of the square output images, in pixels.
        seed: Seed of the train/eval split.

    Example:

    >>> source = DigitsData(validation_fraction=0.2)
    >>> source.num_examples("train"), source.num_examples("eval")
    (1437, 360)
    """

    name = "digits"
    num_classes = 10

    @property
    def class_names(self) -> list[str]:
        """The digits "0" .. "9": label `d` is the digit `d`."""
        return [str(digit) for digit in range(self.num_classes)]

    def __init__(self, validation_fraction: float = 0.2, image_size: int = 32, seed: int = 0):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if isinstance(validation_fraction, bool) or not (
            isinstance(validation_fraction, (int, float)) and 0 < validation_fraction < 1
        ):
            raise ValueError(f"`validation_fraction` must be a number in (0, 1); received {validation_fraction!r}.")
        self.image_size = check_int("image_size", image_size)
        digits = load_digits()
        labels = digits.target.astype(np.int32)
        try:
            train, evaluation = train_test_split(
                np.arange(len(labels)), test_size=validation_fraction, stratify=labels, random_state=seed
            )
        except ValueError as error:
            raise ValueError(
                f"`validation_fraction` {validation_fraction!r} leaves a split with fewer examples than the "
                f"10 classes ({len(labels)} examples in all): {error}"
            ) from None
        scaled = digits.images[..., None].astype(np.float32) * (255.0 / 16.0)
        resized = tf.image.resize(scaled, [image_size, image_size], method="bilinear", antialias=True).numpy()
        images = np.repeat(np.clip(np.round(resized), 0, 255).astype(np.uint8), 3, axis=-1)
        self._splits = {
            split: (images[indices], labels[indices])
            for split, indices in (("train", np.sort(train)), ("eval", np.sort(evaluation)))
        }

    def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return self._splits[split]


@gin.configurable(module="resnet")
class SyntheticData(DataSource):
    """Random images and labels made inside the `tf.data` graph, for benchmarks.

    Element `i` of a split is drawn by stateless random ops keyed on (`seed`, split, `i`), so the
    data is the same on every run and every machine, and costs no I/O. Its record is `i`. Its
    classes have no names (`class_names` is None).

    Args:
        train_examples: Size of the 'train' split.
        eval_examples: Size of the 'eval' split.
        image_size: Side of the square images.
        num_classes: Labels are uniform in `[0, num_classes)`.
        seed: Changes every image and label.

    Example:

    >>> source = SyntheticData(train_examples=8, eval_examples=4, image_size=64, num_classes=10)
    >>> [image.shape for image, _ in source.examples("eval")][0]
    TensorShape([64, 64, 3])
    """

    name = "synthetic"

    def __init__(
        self,
        train_examples: int = 1024,
        eval_examples: int = 256,
        image_size: int = 224,
        num_classes: int = 1000,
        seed: int = 0,
    ):
        self._sizes = {
            "train": check_int("train_examples", train_examples),
            "eval": check_int("eval_examples", eval_examples),
        }
        self.image_size = check_int("image_size", image_size)
        self.num_classes = check_int("num_classes", num_classes)
        self.seed = check_int("seed", seed, minimum=0)

    def _records(self, split: str) -> tf.data.Dataset:
        return tf.data.Dataset.range(self._sizes[split])

    def _decode(self, records: tf.data.Dataset, split: str) -> tf.data.Dataset:
        split_key = tf.constant([self.seed, SPLITS.index(split)], tf.int64)
        shape = [self.image_size, self.image_size, 3]

        def make(index):
            key = tf.random.experimental.stateless_fold_in(split_key, index)
            image_key, label_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
            image = tf.random.stateless_uniform(shape, image_key, maxval=256, dtype=tf.int32)
            label = tf.random.stateless_uniform([], label_key, maxval=self.num_classes, dtype=tf.int32)
            return tf.cast(image, tf.uint8), label

        return records.map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def _num_examples(self, split: str) -> int:
        return self._sizes[split]
