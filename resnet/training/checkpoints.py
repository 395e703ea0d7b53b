"""Restoring checkpoints: a model's variables by their paths, checked before anything is restored,
falling back past damaged files.

Checkpoints hold `variables_by_path(model)` rather than the model object (see there). Before a
restore begins, the file is read whole and the model's variables are matched against it by key
and shape (`check_checkpoint`): a damaged file raises one of `UNREADABLE` and a checkpoint of
another model a ValueError naming the mismatches, with nothing restored. So a restore that
TensorFlow begins does not fail part-way, which would leave values pending in its restore
machinery and a flood of warnings about them when they are collected ("unrestored values",
"Value in checkpoint could not be found"). `restore_newest_intact` passes over damaged files
to the next newest, as a resumed run or `resnet-eval` needs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence

import keras
import tensorflow as tf

from resnet._internals import variable_checkpoint_key, variable_object_path
from resnet.validation import first_line, listing

# What reading a damaged checkpoint raises: IndexError for a truncated data file ("Read less bytes
# than requested"), a TensorFlow error for anything else (a missing, empty or corrupt data file or
# index, "not an sstable", a directory where a file belongs: DataLossError, NotFoundError, or the
# base OpError with code UNKNOWN). A checkpoint of another model is a ValueError.
UNREADABLE = (IndexError, tf.errors.OpError)


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


def check_checkpoint(path: str, model: Mapping[str, tf.Variable], what: str, exact: bool = False) -> None:
    """Reads the checkpoint at `path` whole and checks it holds the variables `model` (as
    `variables_by_path` gives them, stored under the key `model`) with their shapes.

    Args:
        path: The checkpoint's path prefix.
        model: The variables by path.
        what: How errors name what the checkpoint should fit.
        exact: Refuse model variables the checkpoint has beyond `model` too (a deeper network's):
            restoring the rest would be half a model.

    Raises:
        One of `UNREADABLE`: The file cannot be read (every value is read, so a truncated or
            corrupt data file is found here).
        ValueError: Variables missing, of other shapes or (with `exact`) extra, the first named.
    """
    reader = tf.compat.v1.train.NewCheckpointReader(
        path
    )  # not tf.train.list_variables: it takes a ram:// prefix for a directory
    shapes = reader.get_variable_to_shape_map()
    expected = {
        variable_checkpoint_key("model", name): (name, tuple(variable.shape)) for name, variable in model.items()
    }
    reshaped = sorted(
        f"{name} {tuple(shapes[key])} in the file, {shape} in the model"
        for key, (name, shape) in expected.items()
        if key in shapes and tuple(shapes[key]) != shape
    )
    missing = sorted(name for key, (name, _) in expected.items() if key not in shapes)
    unexpected = [variable_object_path(key) for key in shapes if exact and key not in expected]
    extra = sorted("/".join(at[1:]) for at in unexpected if at and at[0] == "model" and len(at) > 1)
    problems = [
        f"{kind.format(len(found))} ({listing(found, 3)})"
        for kind, found in (
            ("{} variable(s) have other shapes", reshaped),
            ("it lacks {} variable(s) of the model", missing),
            ("it holds {} variable(s) the model lacks", extra),
        )
        if found
    ]
    if problems:
        raise ValueError(f"Checkpoint {path} does not fit {what}: " + "; ".join(problems) + ".")
    for key in shapes:  # every value read: a truncated or corrupt data file fails here, not half-way through a restore
        reader.get_tensor(key)


def restore_checkpoint(
    checkpoint: tf.train.Checkpoint,
    path: str,
    model: Mapping[str, tf.Variable] | None = None,
    what: str = "the model built from the gin config",
    exact: bool = False,
) -> None:
    """Restores `path` into `checkpoint`, which must match every object it holds, after
    `check_checkpoint(path, model, what, exact)` (`model`: the model variables `checkpoint`
    holds under the key `model`, if any).

    Raises:
        One of `UNREADABLE`: The file cannot be read; nothing is restored.
        ValueError: The checkpoint does not fit (the first mismatches named); nothing is restored.
    """
    check_checkpoint(path, model or {}, what, exact)
    status = checkpoint.restore(path)
    status.expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise ValueError(f"Checkpoint {path} does not fit {what}: {first_line(error)}") from None


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


def restore_model(model: keras.Model, path: str) -> None:
    """Restores only the model's variables from a training checkpoint at `path` (the optimizer
    state and counters it also holds are not read). A checkpoint holding model variables this
    model lacks (a deeper network's) is refused too: restoring the rest would be half a model."""
    variables = variables_by_path(model)
    restore_checkpoint(tf.train.Checkpoint(model=variables), path, variables, f"model {model.name!r}", exact=True)
