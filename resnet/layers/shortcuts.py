"""Shortcut connections of a residual block, swappable by name or gin binding.

A block builds its shortcut with its own output width and stride; the shortcut decides at
build time, from the input's channel count, what to do. The paper's options (He et al., 2016,
section 4.1) map onto them like this:

* option A: `ZeroPadShortcut`: identity where shapes match; where they change, subsample by
  the stride and zero-pad the new channels. No parameters.
* option B: `ProjectionShortcut` (the default): identity where shapes match, 1x1 conv + norm
  where they change.
* option C: `ProjectionShortcut` with `always=True`: a projection on every block.
* ResNet-D (He et al., 2019): `AvgDownShortcut`: 2x2 average pool with the stride, then a
  stride-1 1x1 conv + norm, where shapes change.
* plain networks: `NoShortcut`: the block has no shortcut at all.
"""

from __future__ import annotations

from typing import Any

import keras

from resnet.layers.conv import DEFAULT_KERNEL_INITIALIZER, ConvSettingsMixin
from resnet.layers.normalization import make_norm
from resnet.layers.sublayers import build_chain
from resnet.registry import ArgsConfigMixin, register, resolve_spec
from resnet.validation import check_int


class Shortcut(ConvSettingsMixin, ArgsConfigMixin, keras.layers.Layer):
    """Base class: the arguments every shortcut receives from its block.

    Args:
        filters: Output channels of the block.
        strides: Spatial stride of the block.
        norm: Norm spec for projections (None for pre-activation blocks, whose projection
            takes the already-normalized input).
        padding, use_bias, kernel_initializer, kernel_regularizer: Conv settings of the block.

    After `build`, `projects` says whether the shortcut applies a learned projection (a
    pre-activation block feeds those the normalized input, and the others the raw input).
    """

    owner = "the block"
    owner_args = ("filters", "strides", "norm", "padding", "use_bias", "kernel_initializer", "kernel_regularizer")
    #: False only for `NoShortcut`: the block then adds nothing.
    connects = True

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        norm: Any = "batch",
        padding: str = "symmetric",
        use_bias: bool | str = False,
        kernel_initializer: Any = DEFAULT_KERNEL_INITIALIZER,
        kernel_regularizer: Any = None,
        name: str | None = None,
        dtype: Any = None,
        trainable: bool = True,
    ):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.filters = check_int(f"{type(self).__name__}.filters", filters)
        self.strides = check_int(f"{type(self).__name__}.strides", strides)
        self.norm = resolve_spec("norm", norm, f"{type(self).__name__}.norm")
        self._set_conv_settings(padding, use_bias, kernel_initializer, kernel_regularizer)
        self.projects = False

    def _reshapes(self, input_shape) -> bool:
        return input_shape[-1] != self.filters or self.strides > 1

    def _subsample(self, inputs):
        s = self.strides
        return inputs[:, ::s, ::s, :] if s > 1 else inputs

    def compute_output_shape(self, input_shape):
        def shrink(d):
            return None if d is None else -(-d // self.strides)

        return (input_shape[0], shrink(input_shape[1]), shrink(input_shape[2]), self.filters)


@register("shortcut", "identity")
class IdentityShortcut(Shortcut):
    """Passes the input through; only valid where the block keeps the shape.

    Example:

    >>> tuple(IdentityShortcut(64)(keras.ops.ones((1, 8, 8, 64))).shape)
    (1, 8, 8, 64)
    """

    def build(self, input_shape):
        if self._reshapes(input_shape):
            raise ValueError(
                f"IdentityShortcut {self.name!r} cannot map {input_shape[-1]} channels at stride "
                f"{self.strides} to {self.filters} channels; use 'projection', 'zero_pad' or "
                "'avg_down' where a block changes shape."
            )

    def call(self, inputs):
        return inputs


@register("shortcut", "zero_pad")
class ZeroPadShortcut(Shortcut):
    """Option A: subsample by the stride and zero-pad the extra channels. No parameters.

    Example:

    >>> tuple(ZeroPadShortcut(32, strides=2)(keras.ops.ones((1, 8, 8, 16))).shape)
    (1, 4, 4, 32)
    """

    def build(self, input_shape):
        if input_shape[-1] > self.filters:
            raise ValueError(
                f"ZeroPadShortcut {self.name!r} can only add channels; the input has "
                f"{input_shape[-1]} channels and the block outputs {self.filters}."
            )
        self._extra_channels = self.filters - input_shape[-1]

    def call(self, inputs):
        outputs = self._subsample(inputs)
        if self._extra_channels:
            outputs = keras.ops.pad(outputs, [[0, 0], [0, 0], [0, 0], [0, self._extra_channels]])
        return outputs


@register("shortcut", "projection")
class ProjectionShortcut(Shortcut):
    """Options B and C: a strided 1x1 conv + norm where the shape changes (or on every block).

    Args:
        always: Project on every block, also where the shape is unchanged (option C).
        project_on_stride: Project where only the stride changes the shape. With False such
            blocks subsample instead, as keras.applications' ResNetV2 does.
        (the other arguments are set by the block; see `Shortcut`.)

    Example:

    >>> sc = ProjectionShortcut(256, strides=2)
    >>> tuple(sc(keras.ops.ones((1, 8, 8, 64))).shape)
    (1, 4, 4, 256)
    >>> sc.projects
    True
    """

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        always: bool = False,
        project_on_stride: bool = True,
        norm: Any = "batch",
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
            norm=norm,
            padding=padding,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            kernel_regularizer=kernel_regularizer,
            name=name,
            dtype=dtype,
            trainable=trainable,
        )
        self.always = bool(always)
        self.project_on_stride = bool(project_on_stride)

    def build(self, input_shape):
        self.projects = self.always or input_shape[-1] != self.filters or (self.strides > 1 and self.project_on_stride)
        if not self.projects:
            return
        self.pool = self._make_pool()
        self.conv = self._make_conv(
            self.filters, 1, "conv", normalized=self.norm is not None, strides=1 if self.pool else self.strides
        )
        self.norm_layer = make_norm(self.norm, "norm", self.dtype_policy)
        build_chain([self.pool, self.conv, self.norm_layer], input_shape)

    def _make_pool(self) -> keras.layers.Layer | None:
        """The pooling applied before the conv; None: the conv itself is strided."""
        return None

    def call(self, inputs, training=None):
        if not self.projects:
            return self._subsample(inputs)
        outputs = self.pool(inputs) if self.pool else inputs
        outputs = self.conv(outputs)
        if self.norm_layer:
            outputs = self.norm_layer(outputs, training=training)
        return outputs


@register("shortcut", "avg_down")
class AvgDownShortcut(ProjectionShortcut):
    """ResNet-D: 2x2 average pool with the block's stride, then a stride-1 1x1 conv + norm.

    The pool excludes padding from averages on odd-sized inputs, like timm's
    `AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)`.

    Example:

    >>> tuple(AvgDownShortcut(512, strides=2)(keras.ops.ones((1, 8, 8, 256))).shape)
    (1, 4, 4, 512)
    """

    def _make_pool(self) -> keras.layers.Layer | None:
        if self.strides == 1:
            return None
        return keras.layers.AveragePooling2D(
            2, strides=self.strides, padding="same", name="pool", dtype=self.dtype_policy
        )


@register("shortcut", "none")
class NoShortcut(Shortcut):
    """No shortcut: the block is a plain stack of convolutions (the paper's plain networks).

    Example:

    >>> NoShortcut(64).connects
    False
    """

    connects = False

    def call(self, inputs):
        raise RuntimeError("NoShortcut has no output; blocks check `connects` and skip it.")
