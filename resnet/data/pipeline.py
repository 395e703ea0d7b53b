"""The tf.data input of training and evaluation: order, skip, decode, cache, augment, batch, prefetch."""

from __future__ import annotations

import gin
import tensorflow as tf

from resnet.data.base import DataSource
from resnet.data.preprocessing import Preprocessing
from resnet.validation import check_int

AUTOTUNE = tf.data.AUTOTUNE


@gin.configurable(module="resnet", denylist=["source", "preprocessing", "batch_size", "seed"])
class InputPipeline:
    """Batches of preprocessed images from a `DataSource`.

    Each training epoch is a fresh pass over the training split in an order fixed by
    `(seed, epoch)` alone, and the n-th image of epoch `epoch` is augmented with random numbers
    fixed by `(seed, epoch, n)` (stateless random ops, see `Preprocessing.train`): two pipelines
    with the same seed give the same batches bit for bit, and a run resumed in the middle of an
    epoch (`train(epoch, skip_steps)`) gets exactly the batches it had not yet seen.

    Without `cache` (for datasets larger than memory, e.g. ImageNet), an epoch shuffles the
    source's undecoded records (`DataSource.records`: image paths, serialized Examples), skips
    those of the batches already seen, and only then reads and decodes images, in parallel: a
    resumed epoch does not decode what it skips (TFRecord shards are still read up to the
    resume point, as the shuffle needs their records; `TfdsData`, whose records are decoded
    examples, still decodes them). With `cache` on (the default), decoded images are kept in
    memory after the first pass and every epoch shuffles them; skipping is then a pass over
    memory, and a process that resumes before its cache is filled decodes the images it skips
    once, to fill it. Both give the same batches (unless a source with `skip_corrupt` drops
    records). Images are then augmented in parallel, batched and prefetched.

    Args:
        source: Where the examples come from (set by the trainer).
        preprocessing: Augmentation and normalization (set by the trainer).
        batch_size: Global training batch size (set by the trainer).
        seed: Seed of the per-epoch order and augmentation (set by the trainer).
        cache: Keep decoded images in memory after the first pass.
        shuffle_buffer: Size of the shuffle buffer, in records (images when cached).
        eval_batch_size: Evaluation batch size (defaults to `batch_size`).

    Example:

    >>> from resnet.data import SyntheticData
    >>> pipe = InputPipeline(SyntheticData(train_examples=64, image_size=32, num_classes=10),
    ...                      Preprocessing(image_size=32), batch_size=16)
    >>> images, labels = next(iter(pipe.train(epoch=0)))
    >>> tuple(images.shape), images.dtype.name, tuple(labels.shape)
    ((16, 32, 32, 3), 'float32', (16,))
    >>> resumed, _ = next(iter(pipe.train(epoch=0, skip_steps=3)))   # the epoch's last batch
    >>> bool(tf.reduce_all(resumed == list(pipe.train(epoch=0))[3][0]))
    True
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
        if not isinstance(source, DataSource):
            raise ValueError(f"`source` must be a DataSource such as DigitsData(); received {source!r}.")
        if not isinstance(preprocessing, Preprocessing):
            raise ValueError(f"`preprocessing` must be a Preprocessing; received {preprocessing!r}.")
        if not isinstance(cache, bool):
            raise ValueError(f"`InputPipeline.cache` must be True or False; received {cache!r}.")
        self.source = source
        self.preprocessing = preprocessing
        self.batch_size = check_int("Trainer.batch_size", batch_size)
        self.eval_batch_size = check_int(
            "InputPipeline.eval_batch_size", batch_size if eval_batch_size is None else eval_batch_size
        )
        self.seed = check_int("Trainer.seed", seed, minimum=0)
        self.shuffle_buffer = check_int("InputPipeline.shuffle_buffer", shuffle_buffer)
        self.cache = cache
        # Training reads cached decoded images, or the undecoded records it decodes after skipping.
        self._train = source.examples("train").cache() if self.cache else source.records("train")
        evaluation = source.examples("eval")
        self._eval = evaluation.cache() if self.cache else evaluation

    def steps_per_epoch(self) -> int | None:
        """Full training batches in one pass over the training split (None if unknown)."""
        count = self.source.num_examples("train")
        return None if count is None else count // self.batch_size

    def train(self, epoch: int, skip_steps: int = 0, steps: int | None = None) -> tf.data.Dataset:
        """The batches of training epoch `epoch`, after the first `skip_steps` of them.

        Args:
            epoch: Epoch index; with the seed it fixes the order and the augmentation.
            skip_steps: Batches of this epoch already trained on (resuming mid-epoch). Without
                `cache` they are skipped before decoding, so a record that a source with
                `skip_corrupt` would have dropped among them shifts the rest of the epoch by
                one image.
            steps: Batches per epoch, when an epoch is not one pass over the data (the split is
                repeated as needed).
        """
        check_int("epoch", epoch, minimum=0)
        check_int("skip_steps", skip_steps, minimum=0)
        if steps is not None:
            check_int("steps", steps)
        skipped = skip_steps * self.batch_size
        ordered = self._train.repeat() if steps is not None else self._train
        ordered = ordered.shuffle(self.shuffle_buffer, seed=self.seed * 100_003 + epoch, reshuffle_each_iteration=False)
        ordered = ordered.skip(skipped)
        examples = ordered if self.cache else self.source.decode(ordered, "train")
        if steps is not None:
            examples = examples.take(max(steps - skip_steps, 0) * self.batch_size)
        epoch_key = tf.constant([self.seed, epoch], tf.int64)

        def augment(position, example):
            image, label = example
            seed = tf.random.experimental.stateless_fold_in(epoch_key, position)
            return self.preprocessing.train(image, seed=seed), label

        augmented = examples.enumerate(start=skipped).map(augment, num_parallel_calls=AUTOTUNE, deterministic=True)
        return augmented.batch(self.batch_size, drop_remainder=True).prefetch(AUTOTUNE)

    def eval(self) -> tf.data.Dataset:
        """Every example of the evaluation split once, in order, in batches."""
        batches = self._eval.map(self._eval_map, num_parallel_calls=AUTOTUNE).batch(self.eval_batch_size)
        return batches.prefetch(AUTOTUNE)

    def _eval_map(self, image, label):
        return self.preprocessing.eval(image), label
