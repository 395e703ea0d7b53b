"""The tf.data input of training and evaluation: cache, shuffle, augment, batch, prefetch."""

from __future__ import annotations

import gin
import tensorflow as tf

from resnet.data.preprocessing import Preprocessing
from resnet.data.sources import DataSource
from resnet.validation import check_int

AUTOTUNE = tf.data.AUTOTUNE


@gin.configurable(module="resnet", denylist=["source", "preprocessing", "batch_size", "seed"])
class InputPipeline:
    """Batches of preprocessed images from a `DataSource`.

    Each training epoch is a fresh pass over the training split in an order fixed by
    `(seed, epoch)`, so a run resumed in the middle of an epoch sees exactly the batches it had
    not yet seen (`train(epoch, skip_steps)`). Decoded images are cached in memory when `cache`
    is on (the default; turn it off for datasets larger than memory, e.g. ImageNet), then
    shuffled, augmented in parallel, batched and prefetched.

    Args:
        source: Where the examples come from (set by the trainer).
        preprocessing: Augmentation and normalization (set by the trainer).
        batch_size: Global training batch size (set by the trainer).
        seed: Seed of the per-epoch shuffles (set by the trainer).
        cache: Keep decoded images in memory after the first pass.
        shuffle_buffer: Size of the shuffle buffer, in images.
        eval_batch_size: Evaluation batch size (defaults to `batch_size`).

    Example:

    >>> from resnet.data.sources import SyntheticData
    >>> pipe = InputPipeline(SyntheticData(train_examples=64, image_size=32, num_classes=10),
    ...                      Preprocessing(image_size=32), batch_size=16)
    >>> images, labels = next(iter(pipe.train(epoch=0)))
    >>> tuple(images.shape), images.dtype.name, tuple(labels.shape)
    ((16, 32, 32, 3), 'float32', (16,))
    """

    def __init__(
        self,
        source: DataSource,
        preprocessing: Preprocessing,
        batch_size: int,
        seed: int = 0,
        cache: bool = True,
        shuffle_buffer: int = 10_000,
        eval_batch_size: int | None = None,
    ):
        self.source = source
        self.preprocessing = preprocessing
        self.batch_size = check_int("Trainer.batch_size", batch_size)
        self.eval_batch_size = check_int("InputPipeline.eval_batch_size", eval_batch_size or batch_size)
        self.seed = seed
        self.shuffle_buffer = check_int("InputPipeline.shuffle_buffer", shuffle_buffer)
        self.cache = bool(cache)
        self._examples = {split: self._load(split) for split in ("train", "eval")}

    def _load(self, split: str) -> tf.data.Dataset:
        examples = self.source.examples(split)
        return examples.cache() if self.cache else examples

    def steps_per_epoch(self) -> int | None:
        """Full training batches in one pass over the training split (None if unknown)."""
        count = self.source.num_examples("train")
        return None if count is None else count // self.batch_size

    def train(self, epoch: int, skip_steps: int = 0, steps: int | None = None) -> tf.data.Dataset:
        """The batches of training epoch `epoch`, after the first `skip_steps` of them.

        Args:
            epoch: Epoch index; with the seed it fixes the order.
            skip_steps: Batches of this epoch already trained on (resuming mid-epoch).
            steps: Batches per epoch, when an epoch is not one pass over the data (the split is
                repeated as needed).
        """
        examples = self._examples["train"]
        if steps is not None:
            examples = examples.repeat()
        examples = examples.shuffle(self.shuffle_buffer, seed=self.seed * 100_003 + epoch, reshuffle_each_iteration=False)
        if steps is not None:
            examples = examples.take(steps * self.batch_size)
        examples = examples.skip(skip_steps * self.batch_size)
        batches = examples.map(self._train_map, num_parallel_calls=AUTOTUNE).batch(self.batch_size, drop_remainder=True)
        return batches.prefetch(AUTOTUNE)

    def eval(self) -> tf.data.Dataset:
        """Every example of the evaluation split once, in order, in batches."""
        batches = self._examples["eval"].map(self._eval_map, num_parallel_calls=AUTOTUNE).batch(self.eval_batch_size)
        return batches.prefetch(AUTOTUNE)

    def _train_map(self, image, label):
        return self.preprocessing.train(image), label

    def _eval_map(self, image, label):
        return self.preprocessing.eval(image), label
