"""Stochastic depth (drop path): drops a residual branch per example while training."""

from __future__ import annotations

from typing import Any

import keras

from resnet.registry import ArgsConfigMixin, register
from resnet.validation import check_rate


@register()
class DropPath(ArgsConfigMixin, keras.layers.Layer):
    """Zeroes the whole input of randomly chosen examples and rescales the rest (Huang et al., 2016).

    Active only when called with `training=True`; at inference it is the identity.

    Args:
        rate: Probability of dropping an example's branch, in [0, 1).
        seed: Optional seed for reproducible masks.

    Example:

    >>> drop = DropPath(0.2, seed=1)
    >>> x = keras.ops.ones((4, 2, 2, 3))
    >>> bool(keras.ops.all(drop(x) == x))
    True
    """

    def __init__(
        self,
        rate: float = 0.0,
        seed: int | None = None,
        name: str | None = None,
        dtype: Any = None,
        trainable: bool = True,
    ):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.rate = check_rate("DropPath.rate", rate)
        self.seed = seed

    def build(self, input_shape):
        # Created here, inside the layer's name scope, so the RNG state has a path of its own
        # (`stage1/block2/drop_path/seed_generator/...`) whatever else the process has built.
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="seed_generator")

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (keras.ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype=inputs.dtype)
        mask = keras.ops.floor(keep + noise)
        return inputs * (mask / keep)

    def compute_output_shape(self, input_shape):
        return input_shape
