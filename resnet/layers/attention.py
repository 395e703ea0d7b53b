"""Channel attention: squeeze-and-excitation (Hu et al., 2018)."""

from __future__ import annotations

from typing import Any

import keras

from resnet.layers.activations import get_activation, serialize_activation
from resnet.layers.conv import DEFAULT_KERNEL_INITIALIZER, make_conv
from resnet.layers.sublayers import build_chain
from resnet.registry import ArgsConfigMixin, register, serialize_value
from resnet.validation import check_int, check_rate


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds `value` to the nearest multiple of `divisor` (at least `divisor`), as timm does for SE widths."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


@register()
class SqueezeExcite(ArgsConfigMixin, keras.layers.Layer):
    """Rescales channels by a gate computed from their global average.

    Global average pool, 1x1 conv to `make_divisible(channels * ratio, divisor)` channels,
    activation, 1x1 conv back to `channels`, sigmoid, multiply. Both convs have a bias (timm's
    `SEModule`).

    Args:
        ratio: Reduction ratio of the hidden width, in (0, 1].
        divisor: The hidden width is rounded to a multiple of this.
        activation: Activation between the two convs.
        kernel_initializer: Initializer of both convs.
        kernel_regularizer: Regularizer of both convs.

    Example:

    >>> se = SqueezeExcite(ratio=1 / 16)
    >>> tuple(se(keras.ops.ones((2, 7, 7, 256))).shape)
    (2, 7, 7, 256)
    >>> se.reduce.filters
    16
    """

    def __init__(
        self,
        ratio: float = 1 / 16,
        divisor: int = 8,
        activation: str = "relu",
        kernel_initializer: Any = DEFAULT_KERNEL_INITIALIZER,
        kernel_regularizer: Any = None,
        name: str | None = None,
        dtype: Any = None,
        trainable: bool = True,
    ):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        if check_rate("SqueezeExcite.ratio", ratio, allow_one=True) == 0.0:
            raise ValueError(f"`SqueezeExcite.ratio` must be in (0, 1]; received {ratio!r}.")
        self.ratio = float(ratio)
        self.divisor = check_int("SqueezeExcite.divisor", divisor)
        self.activation = serialize_activation(activation, "SqueezeExcite.activation")
        self.kernel_initializer = serialize_value(keras.initializers.get(kernel_initializer))
        self.kernel_regularizer = serialize_value(keras.regularizers.get(kernel_regularizer))
        self._act = get_activation(self.activation)

    def build(self, input_shape):
        channels = input_shape[-1]
        settings = dict(
            padding="same",
            use_bias=True,
            normalized=False,
            kernel_initializer=self.kernel_initializer,
            kernel_regularizer=self.kernel_regularizer,
            dtype=self.dtype_policy,
        )
        hidden = make_divisible(channels * self.ratio, self.divisor)
        self.reduce = make_conv(hidden, 1, name="reduce", **settings)
        self.expand = make_conv(channels, 1, name="expand", **settings)
        build_chain([self.reduce, self.expand], (input_shape[0], 1, 1, channels))

    def call(self, inputs):
        gate = keras.ops.mean(inputs, axis=(1, 2), keepdims=True)
        gate = self._act(self.reduce(gate))
        gate = keras.ops.sigmoid(self.expand(gate))
        return inputs * gate

    def compute_output_shape(self, input_shape):
        return input_shape
