"""Evaluating a classifier on the evaluation split, and restoring a model from a run's checkpoint.

`Evaluator` is what training runs after every epoch and what `resnet-eval` and `resnet-export`
use: the same step and the same reduction, so a checkpoint evaluates on one device to the
figures its epoch recorded in `metrics.csv`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from resnet.data.pipeline import InputPipeline
from resnet.training.rundir import first_line
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
        self.data_name = data_name
        self._step = make_eval_step(
            model, self.strategy, num_classes=num_classes, from_logits=from_logits, jit_compile=jit_compile
        )

    def evaluate(self) -> dict[str, float]:
        """Evaluates the current weights on the whole evaluation split.

        Returns:
            `{"top1", "top5", "loss", "examples"}`: accuracies in [0, 1], the mean loss, and the
            number of images.

        Raises:
            ValueError: The split is empty, or its data could not be read.
        """
        totals = np.zeros(4)
        dataset = self.strategy.experimental_distribute_dataset(self.pipeline.eval())
        for batch in data_errors_named(dataset, self.data_name):
            totals += [float(t) for t in self._step(batch)]
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


def variables_by_path(model: keras.Model) -> dict[str, tf.Variable]:
    """The model's variables (weights, norm statistics, RNG state) keyed by their unique paths.

    Checkpoints hold this mapping rather than the model object: Keras 3 keeps layers that live
    in Python lists (a block's convs, a stage's blocks) out of TensorFlow's object graph, so
    `tf.train.Checkpoint(model=model)` would silently skip them. Paths such as
    `stage2/block1/conv1/kernel` are stable and readable with `tf.train.list_variables`.
    """
    variables = {v.path: v for v in model.variables}
    if len(variables) != len(model.variables):
        raise ValueError(f"Model {model.name!r} has variables with duplicate paths; name its layers uniquely.")
    return variables


def restore_checkpoint(checkpoint: tf.train.Checkpoint, path: str, what: str = "the model built from the gin config") -> None:
    """Restores `path` into `checkpoint`, which must match every object it holds.

    A checkpoint of another model (other shapes, missing or extra variables) raises one
    ValueError that names the first mismatches. A restore that fails part-way (that, or a
    damaged file: `UNREADABLE`) leaves values pending in TensorFlow's restore machinery, which
    would log a warning for each of them when it is collected ("unrestored values", "Value in
    checkpoint could not be found"); the error raised here says it all, so those are dropped.
    """
    try:
        status = checkpoint.restore(path)
    except ValueError as error:  # a shape mismatch is raised while restoring
        _drop_abandoned_restore_warnings()
        raise ValueError(f"Checkpoint {path} does not fit {what}: {first_line(error)}") from None
    except UNREADABLE:
        _drop_abandoned_restore_warnings()
        raise
    status.expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise ValueError(f"Checkpoint {path} does not fit {what}: {first_line(error)}") from None


# What reading a damaged checkpoint raises: IndexError for a truncated data file ("Read less bytes
# than requested"), a TensorFlow error for anything else (a missing, empty or corrupt data file or
# index, "not an sstable", a directory where a file belongs: DataLossError, NotFoundError, or the
# base OpError with code UNKNOWN). A checkpoint of another model is a ValueError.
UNREADABLE = (IndexError, tf.errors.OpError)


def restore_newest_intact(restore: Callable[[str], None], candidates: Sequence[str]) -> str | None:
    """Calls `restore(path)` on each of `candidates` (newest first) until one can be read, and
    returns it (None if there are no candidates). Each unreadable one is reported on stderr with
    the one used instead.

    Raises:
        ValueError: No candidate could be read (each named with its error).
    """
    unreadable = []
    for path in candidates:
        try:
            restore(path)
        except UNREADABLE as error:
            unreadable.append(f"{path} ({first_line(error)})")
            continue
        for entry in unreadable:
            print(f"Warning: checkpoint {entry} cannot be read; using {path} instead.", file=sys.stderr, flush=True)
        return path
    if unreadable:
        raise ValueError("No checkpoint could be read (truncated or corrupt files?): " + "; ".join(unreadable))
    return None


class _AbandonedRestoreFilter(logging.Filter):
    """Drops TensorFlow's warnings about the values of a restore that failed (see `restore_checkpoint`)."""

    PREFIXES = (
        "Detecting that an object or model or tf.train.Checkpoint is being deleted with unrestored values",
        "Value in checkpoint could not be found in the restored object",
        "Couldn't match files for checkpoint",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.PREFIXES)


_ABANDONED_RESTORE_FILTER = _AbandonedRestoreFilter()


def _drop_abandoned_restore_warnings() -> None:
    logger = tf.get_logger()
    if _ABANDONED_RESTORE_FILTER not in logger.filters:
        logger.addFilter(_ABANDONED_RESTORE_FILTER)


def restore_model(model: keras.Model, path: str) -> None:
    """Restores only the model's variables from a training checkpoint at `path` (the optimizer
    state and counters it also holds are not read). A checkpoint holding model variables this
    model lacks (a deeper network's) is refused too: restoring the rest would be half a model."""
    variables = variables_by_path(model)
    expected = {_checkpoint_key(name) for name in variables}
    prefix, suffix = "model/", "/.ATTRIBUTES/VARIABLE_VALUE"
    # The reader itself: `tf.train.list_variables` takes a ram:// prefix for a directory.
    names = tf.compat.v1.train.NewCheckpointReader(path).get_variable_to_shape_map()
    extra = sorted(name[len(prefix):-len(suffix)].replace(".S", "/").replace("..", ".") for name in names
                   if name.startswith(prefix) and name.endswith(suffix) and name not in expected)
    if extra:
        raise ValueError(
            f"Checkpoint {path} does not fit model {model.name!r}: it holds {len(extra)} variable(s) the model "
            f"lacks ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})."
        )
    restore_checkpoint(tf.train.Checkpoint(model=variables), path, f"model {model.name!r}")


def _checkpoint_key(name: str) -> str:
    """The key `tf.train.Checkpoint(model={name: variable})` stores a variable under."""
    return "model/" + name.replace(".", "..").replace("/", ".S") + "/.ATTRIBUTES/VARIABLE_VALUE"
