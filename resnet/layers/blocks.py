"""Residual blocks: `BasicBlock` (two 3x3 convs) and `BottleneckBlock` (1x1, 3x3, 1x1).

Both come in the post-activation form of the original paper (He et al., 2016a: conv, norm,
activation, ..., add, activation) and, with `preact=True`, the pre-activation form of
"Identity Mappings in Deep Residual Networks" (He et al., 2016b: norm, activation, conv, ...,
add; nothing after the addition). The shared machinery lives in `ResidualBlock`; the two
classes only say which convolutions make up the residual branch.
"""

from __future__ import annotations

from typing import Any

import keras

from resnet.layers.activations import get_activation, serialize_activation
from resnet.layers.attention import SqueezeExcite
from resnet.layers.conv import CONV_SETTING_FORMS, DEFAULT_KERNEL_INITIALIZER, ConvSettingsMixin
from resnet.layers.normalization import make_norm
from resnet.layers.regularization import DropPath
from resnet.layers.sublayers import build_chain, chain_output_shape
from resnet.registry import ArgsConfigMixin, build_from_spec, register, resolve_spec
from resnet.validation import check_choice, check_int, check_rate

STRIDE_POSITIONS = ("1x1", "3x3")


class ResidualBlock(ConvSettingsMixin, ArgsConfigMixin, keras.layers.Layer):
    """Base class of the residual blocks: shortcut, norms, SE, drop path and activation.

    Subclasses define `output_channels` and `_branch()`, the residual branch as a list of
    `(filters, kernel_size, strides, dilation, groups)`, one per conv, from which `build`
    creates the layers. This constructor is `BasicBlock`'s; a subclass with arguments of its
    own (`BottleneckBlock`) extends it and passes these on by keyword.

    Args:
        filters: Width of the block (the bottleneck's inner "planes"; output is
            `filters * expansion`).
        strides: Spatial stride of the block.
        dilation: Dilation of the 3x3 convs after the strided position.
        first_dilation: Dilation of the 3x3 conv at the strided position (defaults to
            `dilation`); with output stride < 32, a stage's first block keeps the previous
            stage's dilation there, as timm does.
        groups: Groups of the 3x3 convs (ResNeXt cardinality).
        shortcut: Shortcut spec: a name ("projection", "zero_pad", "avg_down", "identity",
            "none"), a shortcut class, or a spec dict. See `resnet.layers.shortcuts`.
        preact: Pre-activation form: norm and activation before each conv, no norm after the
            last conv and no activation after the addition.
        norm: Norm spec: "batch", "sync_batch", "group", "layer", "frozen_batch", "none", a
            norm class, or a spec dict.
        activation: Activation name or function.
        se_ratio: Squeeze-and-excitation reduction ratio in (0, 1], or None for no SE.
        drop_path_rate: Stochastic depth rate of this block, in [0, 1).
        zero_init_last: Initialise the last norm's gamma (or, for pre-activation blocks, the
            last conv's kernel) to zero, so the block starts as its shortcut (Goyal et al., 2017).
        padding: "symmetric" (PyTorch) or "same" (TensorFlow).
        use_bias: Conv bias: True, False, or "auto" (only on convs no norm follows).
        kernel_initializer: Conv kernel initializer.
        kernel_regularizer: Conv kernel regularizer.
    """

    owner = "ResidualStage"
    owner_args = ("filters", "strides", "dilation", "first_dilation", "drop_path_rate")
    spec_args = {"norm": "norm", "shortcut": "shortcut"}
    stored_forms = {**CONV_SETTING_FORMS, "activation": serialize_activation, "preact": bool}

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        groups: int = 1,
        shortcut: Any = "projection",
        preact: bool = False,
        norm: Any = "batch",
        activation: Any = "relu",
        se_ratio: float | None = None,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = False,
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
        self.filters = check_int(f"{cls}.filters", filters)
        self.strides = check_int(f"{cls}.strides", strides)
        self.dilation = check_int(f"{cls}.dilation", dilation)
        self.first_dilation = check_int(f"{cls}.first_dilation", dilation if first_dilation is None else first_dilation)
        self.groups = check_int(f"{cls}.groups", groups)
        self.preact = bool(preact)
        self.norm = resolve_spec("norm", norm, f"{cls}.norm")
        self.shortcut = resolve_spec("shortcut", shortcut, f"{cls}.shortcut")
        self.activation = serialize_activation(activation, f"{cls}.activation")
        if se_ratio is not None and check_rate(f"{cls}.se_ratio", se_ratio, allow_one=True) == 0.0:
            raise ValueError(f"`{cls}.se_ratio` must be in (0, 1] or None; received {se_ratio!r}.")
        self.se_ratio = None if se_ratio is None else float(se_ratio)
        self.drop_path_rate = check_rate(f"{cls}.drop_path_rate", drop_path_rate)
        self.zero_init_last = bool(zero_init_last)
        self._set_conv_settings(padding, use_bias, kernel_initializer, kernel_regularizer)
        self._act = get_activation(self.activation)
        self._check_arguments()

    def _check_arguments(self) -> None:
        """Checks that involve several of the arguments above; run at the end of this constructor."""

    def build(self, input_shape):
        first_groups = self._branch()[0][4]
        if input_shape[-1] % first_groups:
            raise ValueError(
                f"{type(self).__name__} {self.name!r}: `groups`={first_groups} must divide the input "
                f"channels, which are {input_shape[-1]}."
            )
        self.shortcut_layer = build_from_spec(
            "shortcut",
            self.shortcut,
            filters=self.output_channels,
            strides=self.strides,
            norm=None if self.preact else self.norm,
            name="shortcut",
            dtype=self.dtype_policy,
            **self.conv_settings,
        )
        self.preact_norm = make_norm(self.norm, "preact_norm", self.dtype_policy) if self.preact else None
        self._make_branch()
        self.se = (
            SqueezeExcite(
                self.se_ratio,
                kernel_initializer=self.kernel_initializer,
                kernel_regularizer=self.kernel_regularizer,
                name="se",
                dtype=self.dtype_policy,
            )
            if self.se_ratio
            else None
        )
        self.drop_path = (
            DropPath(self.drop_path_rate, name="drop_path", dtype=self.dtype_policy) if self.drop_path_rate else None
        )
        build_chain([self.shortcut_layer], input_shape)
        build_chain([self.preact_norm], input_shape)
        branch = [layer for pair in zip(self.convs, self.norms, strict=True) for layer in pair]
        build_chain(branch + [self.se, self.drop_path], input_shape)

    def _make_branch(self) -> None:
        """Creates `convs` and `norms` (None where no norm follows a conv) from `_branch()`."""
        branch = self._branch()
        self.convs, self.norms = [], []
        for i, (filters, kernel_size, strides, dilation, groups) in enumerate(branch, start=1):
            last = i == len(branch)
            has_norm = self.norm is not None and not (last and self.preact)
            zero_kernel = {"kernel_initializer": "zeros"} if last and self.preact and self.zero_init_last else {}
            self.convs.append(
                self._make_conv(
                    filters,
                    kernel_size,
                    f"conv{i}",
                    normalized=has_norm,
                    strides=strides,
                    dilation=dilation,
                    groups=groups,
                    **zero_kernel,
                )
            )
            self.norms.append(
                make_norm(self.norm, f"norm{i}", self.dtype_policy, zero_init=last and self.zero_init_last)
                if has_norm
                else None
            )

    def call(self, inputs, training=None):
        x = inputs
        if self.preact:
            if self.preact_norm is not None:
                x = self.preact_norm(x, training=training)
            x = self._act(x)
        shortcut_input = x if self.preact and self.shortcut_layer.projects else inputs
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = conv(x)
            if norm is not None:
                x = norm(x, training=training)
            if i < last:
                x = self._act(x)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x, training=training)
        if self.shortcut_layer.connects:
            x = x + self.shortcut_layer(shortcut_input, training=training)
        return x if self.preact else self._act(x)

    def compute_output_shape(self, input_shape):
        return chain_output_shape(self.convs, input_shape)


@register("block", "basic")
class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR networks of the paper).

    Args: see `ResidualBlock`. `groups` must divide `filters` and the input channels.

    Example:

    >>> block = BasicBlock(64)
    >>> tuple(block(keras.ops.ones((1, 56, 56, 64))).shape)
    (1, 56, 56, 64)
    >>> tuple(BasicBlock(32, strides=2, shortcut="zero_pad")(keras.ops.ones((1, 32, 32, 16))).shape)
    (1, 16, 16, 32)
    """

    def _check_arguments(self) -> None:
        if self.filters % self.groups:
            raise ValueError(f"`BasicBlock.groups`={self.groups} must divide the block width `filters`={self.filters}.")

    @property
    def output_channels(self) -> int:
        return self.filters

    def _branch(self):
        return [
            (self.filters, 3, self.strides, self.first_dilation, self.groups),
            (self.filters, 3, 1, self.dilation, self.groups),
        ]


@register("block", "bottleneck")
class BottleneckBlock(ResidualBlock):
    """1x1 reduce, 3x3 (grouped, dilated, strided), 1x1 expand (ResNet-50 and deeper, ResNeXt).

    Args (besides those of `ResidualBlock`):
        base_width: Width per group at `filters=64`; the 3x3 width is
            `int(filters * base_width / 64) * groups` (torchvision). 128 gives wide ResNets,
            `groups=32, base_width=4` gives ResNeXt-50 32x4d.
        expansion: Output channels are `filters * expansion`.
        stride_on: Where the stride goes: "3x3" (ResNet v1.5, torchvision/timm) or "1x1" (the
            paper and keras.applications).

    Example:

    >>> block = BottleneckBlock(64, strides=2)
    >>> tuple(block(keras.ops.ones((1, 56, 56, 256))).shape)
    (1, 28, 28, 256)
    >>> [conv.filters for conv in block.convs]
    [64, 64, 256]
    """

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        groups: int = 1,
        base_width: int = 64,
        expansion: int = 4,
        stride_on: str = "3x3",
        shortcut: Any = "projection",
        preact: bool = False,
        norm: Any = "batch",
        activation: Any = "relu",
        se_ratio: float | None = None,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = False,
        padding: str = "symmetric",
        use_bias: bool | str = False,
        kernel_initializer: Any = DEFAULT_KERNEL_INITIALIZER,
        kernel_regularizer: Any = None,
        name: str | None = None,
        dtype: Any = None,
        trainable: bool = True,
    ):
        super().__init__(
            filters=filters,
            strides=strides,
            dilation=dilation,
            first_dilation=first_dilation,
            groups=groups,
            shortcut=shortcut,
            preact=preact,
            norm=norm,
            activation=activation,
            se_ratio=se_ratio,
            drop_path_rate=drop_path_rate,
            zero_init_last=zero_init_last,
            padding=padding,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            kernel_regularizer=kernel_regularizer,
            name=name,
            dtype=dtype,
            trainable=trainable,
        )
        self.base_width = check_int("BottleneckBlock.base_width", base_width)
        self.expansion = check_int("BottleneckBlock.expansion", expansion)
        self.stride_on = check_choice("BottleneckBlock.stride_on", stride_on, STRIDE_POSITIONS)
        if int(self.filters * self.base_width / 64) < 1:
            raise ValueError(
                f"`BottleneckBlock.base_width`={base_width} with filters={filters} gives a 3x3 width of 0; "
                "the width per group is int(filters * base_width / 64) and must be >= 1."
            )

    @property
    def width(self) -> int:
        """Channels of the 3x3 convolution."""
        return int(self.filters * self.base_width / 64) * self.groups

    @property
    def output_channels(self) -> int:
        return self.filters * self.expansion

    def _branch(self):
        on_1x1 = self.stride_on == "1x1"
        return [
            (self.width, 1, self.strides if on_1x1 else 1, 1, 1),
            (self.width, 3, 1 if on_1x1 else self.strides, self.first_dilation, self.groups),
            (self.output_channels, 1, 1, 1, 1),
        ]
