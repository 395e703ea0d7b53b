"""Evaluating a classifier on the evaluation split.

`Evaluator` is what training runs after every epoch and what `resnet-eval` and `resnet-export`
use: the same step and the same reduction, so a checkpoint evaluates on one device to the
figures its epoch recorded in `metrics.csv`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import keras
import numpy as np
import tensorflow as tf

from resnet.data.pipeline import InputPipeline
from resnet.training.steps import make_eval_step


class Evaluator:
    """Top-1, top-5 and mean loss of a model over a pipeline's whole evaluation split.

    Args:
        model: The model (created under `strategy`'s scope, if one is given).
        pipeline: The input pipeline; `pipeline.eval()` gives the evaluation batches.
        num_classes: Number of classes.
        from_logits: Whether the model returns logits (else probabilities).
        data_name: Name of the data, for error messages.
        strategy: Distribution strategy; None for the current (default) one.
        jit_compile: Compile the step with XLA.

    Example:

    >>> import resnet
    >>> from resnet.data.preprocessing import Preprocessing
    >>> from resnet.data.sources import SyntheticData
    >>> data = SyntheticData(train_examples=8, eval_examples=8, image_size=32, num_classes=10)
    >>> pipeline = InputPipeline(data, Preprocessing(image_size=32), batch_size=4)
    >>> evaluator = Evaluator(resnet.build("cifar/resnet20"), pipeline, num_classes=10)
    >>> sorted(evaluator.evaluate()), evaluator.evaluate()["examples"]
    (['examples', 'loss', 'top1', 'top5'], 8)
    """

    def __init__(
        self,
        model: keras.Model,
        pipeline: InputPipeline,
        *,
        num_classes: int,
        from_logits: bool = True,
        data_name: str = "evaluation",
        strategy: tf.distribute.Strategy | None = None,
        jit_compile: bool = False,
    ):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.pipeline = pipeline
        self.from_logits = from_logits
        self.data_name = data_name
        self._step = make_eval_step(
            model, self.strategy, num_classes=num_classes, from_logits=from_logits, jit_compile=jit_compile
        )

    def evaluate(self, on_batch: Callable[[], None] | None = None) -> dict[str, float]:
        """Evaluates the current weights on the whole evaluation split.

        Args:
            on_batch: Called after each batch (the trainer refreshes its run's lock there).

        Returns:
            `{"top1", "top5", "loss", "examples"}`: accuracies in [0, 1], the mean loss, and the
            number of images.

        Raises:
            ValueError: The split is empty, or its data could not be read.
        """
        totals = np.zeros(4)
        # Each worker reads and decodes its own part of the split (see `InputPipeline.eval`).
        dataset = self.strategy.distribute_datasets_from_function(self.pipeline.eval)
        for batch in data_errors_named(dataset, self.data_name):
            totals += [float(t) for t in self._step(batch)]
            if on_batch is not None:
                on_batch()
        loss_sum, top1, top5, count = totals
        if count == 0:
            raise ValueError(f"The evaluation split of {self.data_name!r} data is empty.")
        return {"top1": top1 / count, "top5": top5 / count, "loss": loss_sum / count, "examples": int(count)}


def data_errors_named(iterable: Iterable, data_name: str) -> Iterator:
    """Iterates, turning TensorFlow's data errors into ValueErrors that name the data."""
    iterator = iter(iterable)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as error:
            raise ValueError(f"Reading {data_name!r} data failed: {error.message}") from error
        yield item
