"""Stems: the layers between the image and the first residual stage."""

from __future__ import annotations

from typing import Any

import keras

from resnet.layers.activations import get_activation, serialize_activation
from resnet.layers.conv import CONV_SETTING_FORMS, DEFAULT_KERNEL_INITIALIZER, ConvSettingsMixin
from resnet.layers.normalization import make_norm
from resnet.layers.sublayers import build_chain, chain_output_shape
from resnet.registry import ArgsConfigMixin, register, resolve_spec
from resnet.validation import check_int, check_int_sequence


@register("stem", "classic")
class ClassicStem(ConvSettingsMixin, ArgsConfigMixin, keras.layers.Layer):
    """A chain of convolutions (each followed by norm and activation), then a 3x3/2 max pool.

    The defaults give the stem of the paper and torchvision: 7x7/2 conv with 64 filters, norm,
    ReLU, 3x3/2 max pool: output stride 4. `DeepStem` and `CifarStem` are the same layer with
    other defaults. Pre-activation networks pass `norm=None, activation=None` (a bare conv).

    Args:
        widths: Filters of each conv; the first conv is strided.
        kernel_size: Kernel size of every conv.
        strides: Stride of the first conv.
        pool: Whether a 3x3/2 max pool follows.
        norm: Norm spec (name, class or spec dict; None or "none" for no norm).
        activation: Activation after each norm, or None.
        padding: "symmetric" (PyTorch; the pool's padding is zeros, equal to PyTorch's -inf
            padding after a ReLU) or "same" (TensorFlow).
        use_bias: Conv bias: True, False, or "auto" (only where no norm follows).
        kernel_initializer: Conv kernel initializer.
        kernel_regularizer: Conv kernel regularizer.

    Example:

    >>> stem = ClassicStem()
    >>> tuple(stem(keras.ops.ones((1, 224, 224, 3))).shape)
    (1, 56, 56, 64)
    >>> stem.stride
    4
    """

    spec_args = {"norm": "norm"}
    stored_forms = {**CONV_SETTING_FORMS, "activation": serialize_activation}
    default_widths: tuple[int, ...] = (64,)
    default_kernel_size = 7
    default_strides = 2
    default_pool = True

    def __init__(
        self,
        widths: tuple[int, ...] | None = None,
        kernel_size: int | None = None,
        strides: int | None = None,
        pool: bool | None = None,
        norm: Any = "batch",
        activation: Any = "relu",
        padding: str = "symmetric",
        use_bias: bool | str = False,
        kernel_initializer: Any = DEFAULT_KERNEL_INITIALIZER,
        kernel_regularizer: Any = None,
        name: str | None = None,
        dtype: Any = None,
        trainable: bool = True,
    ):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        cls = type(self).__name__
        self.widths = check_int_sequence(f"{cls}.widths", self.default_widths if widths is None else widths)
        if not self.widths:
            raise ValueError(f"`{cls}.widths` must hold at least one width; received ().")
        self.kernel_size = check_int(
            f"{cls}.kernel_size", self.default_kernel_size if kernel_size is None else kernel_size
        )
        self.strides = check_int(f"{cls}.strides", self.default_strides if strides is None else strides)
        self.pool = bool(self.default_pool if pool is None else pool)
        self.norm = resolve_spec("norm", norm, f"{cls}.norm")
        self.activation = serialize_activation(activation, f"{cls}.activation")
        self._set_conv_settings(padding, use_bias, kernel_initializer, kernel_regularizer)
        self._act = get_activation(self.activation)

    @property
    def stride(self) -> int:
        """Total downsampling factor of the stem."""
        return self.strides * (2 if self.pool else 1)

    def _pad_for_pool(self, x):
        return keras.ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]) if self.padding == "symmetric" else x

    def build(self, input_shape):
        self.convs, self.norms = [], []
        for i, width in enumerate(self.widths, start=1):
            conv = self._make_conv(
                width,
                self.kernel_size,
                f"conv{i}",
                normalized=self.norm is not None,
                strides=self.strides if i == 1 else 1,
            )
            self.convs.append(conv)
            self.norms.append(make_norm(self.norm, f"norm{i}", self.dtype_policy))
        # Symmetric padding pads the pool's input with zeros in `call` (see `_pad_for_pool`).
        pool_padding = "valid" if self.padding == "symmetric" else "same"
        self.pool_layer = (
            keras.layers.MaxPooling2D(3, strides=2, padding=pool_padding, name="pool", dtype=self.dtype_policy)
            if self.pool
            else None
        )
        build_chain([layer for pair in zip(self.convs, self.norms, strict=True) for layer in pair], input_shape)

    def call(self, inputs, training=None):
        x = inputs
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = conv(x)
            if norm is not None:
                x = norm(x, training=training)
            x = self._act(x)
        if self.pool_layer is not None:
            x = self.pool_layer(self._pad_for_pool(x))
        return x

    def compute_output_shape(self, input_shape):
        shape = chain_output_shape(self.convs, input_shape)
        if self.pool_layer is None:
            return shape
        if self.padding == "symmetric":
            shape = (shape[0],) + tuple(None if d is None else d + 2 for d in shape[1:3]) + (shape[3],)
        return self.pool_layer.compute_output_shape(shape)


@register("stem", "deep")
class DeepStem(ClassicStem):
    """The deep stem of ResNet-C/D (He et al., 2019; timm's `stem_type="deep"`).

    Three 3x3 convs (the first with stride 2; widths 32, 32, 64 by default), each followed by
    norm and activation, then a 3x3/2 max pool. Output stride 4.

    Example:

    >>> tuple(DeepStem()(keras.ops.ones((1, 64, 64, 3))).shape)
    (1, 16, 16, 64)
    """

    default_widths = (32, 32, 64)
    default_kernel_size = 3


@register("stem", "cifar")
class CifarStem(ClassicStem):
    """The CIFAR stem of the paper (section 4.2): one 3x3 conv with 16 filters, no pooling.

    Example:

    >>> tuple(CifarStem()(keras.ops.ones((1, 32, 32, 3))).shape)
    (1, 32, 32, 16)
    """

    default_widths = (16,)
    default_kernel_size = 3
    default_strides = 1
    default_pool = False
