"""Learning-rate schedules: piecewise constant (the paper's recipes), cosine, linear warm-up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gin
import keras

from resnet.validation import check_choice

SCHEDULES = ("piecewise", "cosine", "constant")
UNITS = ("epochs", "steps")


@keras.saving.register_keras_serializable(package="resnet")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Ramps the rate linearly up to `schedule(warmup_steps)`, then follows `schedule`.

    Step `s < warmup_steps` gets `(s + 1) / warmup_steps` of the target, so no step is wasted
    at a rate of zero and the last warm-up step reaches the target.

    The wrapped schedule keeps its own step count (its boundaries are not shifted), as in
    Goyal et al. (2017), where 5 warm-up epochs precede steps at epochs 30, 60 and 80.

    Example:

    >>> s = LinearWarmup(keras.optimizers.schedules.PiecewiseConstantDecay([100], [0.1, 0.01]), 10)
    >>> [round(float(s(step)), 4) for step in (0, 4, 9, 10, 150)]
    [0.01, 0.05, 0.1, 0.1, 0.01]
    """

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule, warmup_steps: int):
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        if self.warmup_steps <= 0:
            return self.schedule(step)
        warm = self.schedule(float(self.warmup_steps)) * (step + 1.0) / float(self.warmup_steps)
        return keras.ops.where(step < self.warmup_steps, warm, self.schedule(step))

    def get_config(self) -> dict[str, Any]:
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "warmup_steps": self.warmup_steps,
        }

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["warmup_steps"])


@gin.configurable(module="resnet", denylist=["steps_per_epoch", "total_steps", "batch_size"])
def learning_rate_schedule(
    steps_per_epoch: int,
    total_steps: int,
    batch_size: int,
    base_learning_rate: float = 0.1,
    reference_batch_size: int | None = None,
    schedule: str = "piecewise",
    boundaries: Sequence[float] = (),
    decay_rate: float = 0.1,
    unit: str = "epochs",
    warmup_epochs: float = 0.0,
) -> keras.optimizers.schedules.LearningRateSchedule:
    """The learning-rate schedule of a training run; bind its arguments in gin.

    Args:
        steps_per_epoch, total_steps, batch_size: Set by the trainer.
        base_learning_rate: Peak rate (after warm-up).
        reference_batch_size: If set, scale the rate linearly with the global batch size:
            `base_learning_rate * batch_size / reference_batch_size` (Goyal et al., 2017;
            0.1 per 256 images for ImageNet).
        schedule: "piecewise" (multiply by `decay_rate` at each boundary), "cosine" (to zero at
            the last step) or "constant".
        boundaries: For "piecewise", where the rate drops, in `unit`s. The paper's CIFAR
            recipe: (32000, 48000) steps; its ImageNet recipe: (30, 60, 80) epochs.
        decay_rate: Factor applied at each boundary.
        unit: "epochs" or "steps", for `boundaries`.
        warmup_epochs: Linear warm-up length in epochs (may be fractional).

    Example:

    >>> s = learning_rate_schedule(100, 1000, 512, reference_batch_size=256, boundaries=(5,))
    >>> round(float(s(0)), 3), round(float(s(600)), 3)
    (0.2, 0.02)
    """
    check_choice("learning_rate_schedule.schedule", schedule, SCHEDULES)
    check_choice("learning_rate_schedule.unit", unit, UNITS)
    if base_learning_rate <= 0:
        raise ValueError(f"`learning_rate_schedule.base_learning_rate` must be > 0; received {base_learning_rate!r}.")
    rate = float(base_learning_rate)
    if reference_batch_size:
        rate *= batch_size / reference_batch_size
    per_unit = steps_per_epoch if unit == "epochs" else 1
    if schedule == "piecewise":
        steps = [int(round(b * per_unit)) for b in boundaries]
        if steps != sorted(steps) or len(set(steps)) != len(steps):
            raise ValueError(
                f"`learning_rate_schedule.boundaries` must increase strictly; received {tuple(boundaries)!r}."
            )
        if steps:
            values = [rate * decay_rate**i for i in range(len(steps) + 1)]
            result = keras.optimizers.schedules.PiecewiseConstantDecay(steps, values)
        else:
            result = keras.optimizers.schedules.PiecewiseConstantDecay([total_steps + 1], [rate, rate])
    elif schedule == "cosine":
        result = keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(total_steps, 1))
    else:
        result = keras.optimizers.schedules.PiecewiseConstantDecay([total_steps + 1], [rate, rate])
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    return LinearWarmup(result, warmup_steps) if warmup_steps else result
