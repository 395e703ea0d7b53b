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
    """Ramps the rate linearly up to the peak `schedule(0)`, then follows `schedule`.

    Step `s < warmup_steps` gets `(s + 1) / warmup_steps` of the peak, so no step is wasted at
    a rate of zero and the last warm-up step reaches the peak. Afterwards the wrapped schedule
    runs on the global step (`shift=False`: its boundaries are not moved, as in Goyal et al.,
    2017, where 5 warm-up epochs precede steps at epochs 30, 60 and 80) or on the steps since
    the warm-up (`shift=True`: a cosine then starts decaying when the warm-up ends).

    Example:

    >>> s = LinearWarmup(keras.optimizers.schedules.PiecewiseConstantDecay([100], [0.1, 0.01]), 10)
    >>> [round(float(s(step)), 4) for step in (0, 4, 9, 10, 150)]
    [0.01, 0.05, 0.1, 0.1, 0.01]
    """

    def __init__(
        self, schedule: keras.optimizers.schedules.LearningRateSchedule, warmup_steps: int, shift: bool = False
    ):
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)
        self.shift = bool(shift)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        if self.warmup_steps <= 0:
            return self.schedule(step)
        warm = self.schedule(0.0) * (step + 1.0) / float(self.warmup_steps)
        after = self.schedule(keras.ops.maximum(step - self.warmup_steps, 0.0) if self.shift else step)
        return keras.ops.where(step < self.warmup_steps, warm, after)

    def get_config(self) -> dict[str, Any]:
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "warmup_steps": self.warmup_steps,
            "shift": self.shift,
        }

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["warmup_steps"], config["shift"])


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
        schedule: "piecewise" (multiply by `decay_rate` at each boundary), "cosine" (from the
            end of the warm-up to zero at the last step) or "constant".
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
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    if schedule == "cosine":
        result = keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(total_steps - warmup_steps, 1))
    else:
        per_unit = steps_per_epoch if unit == "epochs" else 1
        steps = [int(round(b * per_unit)) for b in boundaries] if schedule == "piecewise" else []
        if steps != sorted(steps) or len(set(steps)) != len(steps):
            raise ValueError(
                f"`learning_rate_schedule.boundaries` must increase strictly; received {tuple(boundaries)!r}."
            )
        values = [rate * decay_rate**i for i in range(len(steps) + 1)]
        if not steps:  # PiecewiseConstantDecay needs a boundary: one past the last step
            steps, values = [total_steps + 1], [rate, rate]
        result = keras.optimizers.schedules.PiecewiseConstantDecay(steps, values)
    return LinearWarmup(result, warmup_steps, shift=schedule == "cosine") if warmup_steps else result
