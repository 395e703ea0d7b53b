"""Convolution with PyTorch's explicit symmetric padding, and the conv settings blocks share."""

from __future__ import annotations

from typing import Any

import keras

from resnet.registry import serialize_value
from resnet.validation import check_choice

PADDINGS = ("same", "symmetric")
BIAS_MODES = (True, False, "auto")
# The network-wide conv settings: arguments of ResNet, the blocks, the shortcuts and the stems.
CONV_SETTINGS = ("padding", "use_bias", "kernel_initializer", "kernel_regularizer")

# torchvision's conv init: kaiming_normal_(mode="fan_out", nonlinearity="relu").
DEFAULT_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}


@keras.saving.register_keras_serializable(package="resnet")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` that also accepts `padding="symmetric"`.

    `"symmetric"` zero-pads `dilation * (kernel_size - 1) / 2` pixels on every side and then
    convolves without padding, as PyTorch's `Conv2d(padding=...)` does. For strided convolutions
    on even-sized inputs this differs from TensorFlow's `"same"` (which pads only the bottom and
    right), and it is what makes weights ported from torchvision/timm compute the same numbers.
    Where both conventions agree (stride 1) the layer uses `"same"` and adds no padding op;
    on the TensorFlow backend the padding is passed to the convolution itself.

    Example:

    >>> conv = Conv2D(64, 7, strides=2, padding="symmetric")
    >>> tuple(conv(keras.ops.ones((1, 224, 224, 3))).shape)
    (1, 112, 112, 64)
    """

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, padding: str = "same", **kwargs: Any):
        check_choice("padding", padding, PADDINGS + ("valid",))
        dilation = kwargs.get("dilation_rate", 1)
        dilation = dilation[0] if isinstance(dilation, (tuple, list)) else dilation
        size = kernel_size[0] if isinstance(kernel_size, (tuple, list)) else kernel_size
        stride = strides[0] if isinstance(strides, (tuple, list)) else strides
        total = dilation * (size - 1)
        self.padding_mode = padding
        self.pad_size = 0
        keras_padding = padding
        if padding == "symmetric":
            if stride == 1 and total % 2 == 0:
                keras_padding = "same"
            else:
                keras_padding, self.pad_size = "valid", total // 2
        super().__init__(filters, kernel_size, strides=strides, padding=keras_padding, **kwargs)

    def _padded_shape(self, input_shape):
        p = 2 * self.pad_size
        return (
            tuple(input_shape[:1])
            + tuple(None if d is None else d + p for d in input_shape[1:3])
            + tuple(input_shape[3:])
        )

    def build(self, input_shape):
        super().build(self._padded_shape(input_shape))

    def call(self, inputs):
        if not self.pad_size:
            return super().call(inputs)
        if keras.backend.backend() == "tensorflow" and self.groups == 1:
            return self._explicitly_padded_conv(inputs)
        p = self.pad_size
        return super().call(keras.ops.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]]))

    def _explicitly_padded_conv(self, inputs):
        """TensorFlow's convolution with the padding as an argument.

        No padded copy of the input is kept from the forward pass to the backward pass, as a
        pad op's output would be for every strided convolution. TensorFlow's own gradients of
        explicitly padded convolutions fall back to generic kernels, so the gradient pads the
        input transiently and uses the VALID-padding kernels (oneDNN on CPU). What this saves is
        measured in benchmarks/RESULTS.md.
        """
        import tensorflow as tf

        p = self.pad_size
        paddings = [[0, 0], [p, p], [p, p], [0, 0]]
        strides = [1, *self.strides, 1]
        dilations = [1, *self.dilation_rate, 1]

        @tf.custom_gradient
        def conv(x, kernel):
            def grad(dy):
                padded = tf.pad(x, paddings)
                dx = tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=tf.shape(padded),
                    filter=kernel,
                    out_backprop=dy,
                    strides=strides,
                    padding="VALID",
                    dilations=dilations,
                )
                dk = tf.raw_ops.Conv2DBackpropFilter(
                    input=padded,
                    filter_sizes=tf.shape(kernel),
                    out_backprop=dy,
                    strides=strides,
                    padding="VALID",
                    dilations=dilations,
                )
                return dx[:, p:-p, p:-p, :], dk

            return tf.nn.conv2d(x, kernel, strides=strides, padding=paddings, dilations=dilations), grad

        outputs = conv(inputs, tf.convert_to_tensor(self.kernel))
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        return self.activation(outputs) if self.activation is not None else outputs

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(self._padded_shape(input_shape))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["padding"] = self.padding_mode
        return config


def conv_bias(use_bias: bool | str, normalized: bool) -> bool:
    """Whether a convolution gets a bias: `use_bias` True/False, or "auto" = only where no norm follows."""
    return use_bias is True or (use_bias == "auto" and not normalized)


def make_conv(
    filters: int,
    kernel_size: int,
    *,
    name: str,
    padding: str,
    use_bias: bool | str,
    normalized: bool,
    kernel_initializer: Any,
    kernel_regularizer: Any,
    dtype: Any,
    strides: int = 1,
    dilation: int = 1,
    groups: int = 1,
) -> Conv2D:
    """Builds a convolution from conv settings (see `check_conv_settings`)."""
    return Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        groups=groups,
        use_bias=conv_bias(use_bias, normalized),
        kernel_initializer=keras.initializers.get(kernel_initializer),
        kernel_regularizer=keras.regularizers.get(kernel_regularizer),
        name=name,
        dtype=dtype,
    )


# How each conv setting is validated and stored (the value `get_config` returns for it).
CONV_SETTING_FORMS = {
    "padding": lambda value: check_choice("padding", value, PADDINGS),
    "use_bias": lambda value: check_choice("use_bias", value, BIAS_MODES),
    "kernel_initializer": lambda value: serialize_value(keras.initializers.get(value)),
    "kernel_regularizer": lambda value: serialize_value(keras.regularizers.get(value)),
}


def check_conv_settings(
    padding: Any, use_bias: Any, kernel_initializer: Any, kernel_regularizer: Any
) -> dict[str, Any]:
    """Validates the network-wide conv settings; returns them serializable, keyed by argument name."""
    values = dict(
        padding=padding, use_bias=use_bias, kernel_initializer=kernel_initializer, kernel_regularizer=kernel_regularizer
    )
    return {setting: CONV_SETTING_FORMS[setting](value) for setting, value in values.items()}


class ConvSettingsMixin:
    """For layers whose convolutions follow the network-wide conv settings.

    `padding`, `use_bias`, `kernel_initializer` and `kernel_regularizer` stay four constructor
    arguments, so gin binds each by name (`ResNet.padding = 'same'`) and `get_config` stores
    each under its own key. This mixin carries them for the layer: it validates them once,
    keeps each in the same-named attribute (which `get_config` reads), hands them on to the
    layers it owns (`conv_settings`) and builds convolutions with them (`_make_conv`).
    """

    #: How the settings are stored, for `resnet.registry.resolve_spec` to compare values.
    stored_forms = CONV_SETTING_FORMS

    def _set_conv_settings(self, padding: Any, use_bias: Any, kernel_initializer: Any, kernel_regularizer: Any) -> None:
        for setting, value in check_conv_settings(padding, use_bias, kernel_initializer, kernel_regularizer).items():
            setattr(self, setting, value)

    @property
    def conv_settings(self) -> dict[str, Any]:
        """The four settings keyed by argument name, to pass on to an owned layer."""
        return {setting: getattr(self, setting) for setting in CONV_SETTINGS}

    def _make_conv(self, filters: int, kernel_size: int, name: str, *, normalized: bool, **options: Any) -> Conv2D:
        """A convolution with this layer's settings and dtype policy; `options` are `make_conv`'s
        `strides`, `dilation`, `groups`, or a `kernel_initializer` that replaces the setting."""
        settings = {**self.conv_settings, **options}
        return make_conv(filters, kernel_size, name=name, normalized=normalized, dtype=self.dtype_policy, **settings)
