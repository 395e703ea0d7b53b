"""`ResidualStage`: a run of residual blocks at one width, the unit ResNets are made of."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from resnet.layers.sublayers import build_chain, chain_output_shape
from resnet.registry import ArgsConfigMixin, build_from_spec, register, resolve_spec
from resnet.validation import check_choice, check_int, check_rate

DOWNSAMPLE_BLOCKS = ("first", "last")


@register()
class ResidualStage(ArgsConfigMixin, keras.layers.Layer):
    """`num_blocks` residual blocks of one class and width; one of them downsamples.

    Args:
        block: Block spec: "bottleneck", "basic", a block class (gin: `@BottleneckBlock`), or
            a spec dict `{"class_name": ..., "config": {...}}`. Block arguments not given here
            come from gin bindings of the block class, then its defaults.
        num_blocks: Number of blocks.
        filters: Block width (`filters` of each block).
        strides: Stride of the downsampling block.
        dilation: Dilation of the stage's 3x3 convs after the downsampling position.
        first_dilation: Dilation before and at the downsampling position (defaults to
            `dilation`); a ResNet passes the previous stage's dilation here.
        drop_path_rates: Stochastic depth rate: one number for every block, or one per block.
        downsample_block: Which block carries the stride: "first" (the paper, torchvision) or
            "last" (keras.applications' ResNetV2).

    Called with `return_feature=True`, the stage returns `(feature, outputs)`: `feature` is its
    feature map at its own resolution, the input of the last block when that block downsamples
    (`downsamples_at_end`) and the outputs otherwise. `ResNet` taps its C2...C5 maps this way.

    Example:

    >>> stage = ResidualStage("bottleneck", num_blocks=3, filters=64)
    >>> tuple(stage(keras.ops.ones((1, 56, 56, 64))).shape)
    (1, 56, 56, 256)

    A stage is an ordinary layer, so it drops into any functional model:

    >>> inputs = keras.Input((32, 32, 16))
    >>> x = ResidualStage("basic", num_blocks=2, filters=32, strides=2)(inputs)
    >>> outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    >>> keras.Model(inputs, outputs).output_shape
    (None, 10)
    >>> stage = ResidualStage("basic", num_blocks=2, filters=32, strides=2, downsample_block="last")
    >>> feature, outputs = stage(keras.ops.ones((1, 16, 16, 32)), return_feature=True)
    >>> tuple(feature.shape), tuple(outputs.shape)
    ((1, 16, 16, 32), (1, 8, 8, 32))
    """

    spec_args = {"block": "block"}

    def __init__(
        self,
        block: Any = "bottleneck",
        num_blocks: int = 1,
        filters: int = 64,
        strides: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        drop_path_rates: float | Sequence[float] = 0.0,
        downsample_block: str = "first",
        name: str | None = None,
        dtype: Any = None,
        trainable: bool = True,
    ):
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.block = resolve_spec("block", block, "ResidualStage.block")
        self.num_blocks = check_int("ResidualStage.num_blocks", num_blocks)
        self.filters = check_int("ResidualStage.filters", filters)
        self.strides = check_int("ResidualStage.strides", strides)
        self.dilation = check_int("ResidualStage.dilation", dilation)
        self.first_dilation = check_int(
            "ResidualStage.first_dilation", dilation if first_dilation is None else first_dilation
        )
        self.downsample_block = check_choice("ResidualStage.downsample_block", downsample_block, DOWNSAMPLE_BLOCKS)
        if isinstance(drop_path_rates, (int, float)):
            drop_path_rates = [drop_path_rates] * self.num_blocks
        if len(drop_path_rates) != self.num_blocks:
            raise ValueError(
                f"`ResidualStage.drop_path_rates` must be one number or {self.num_blocks} numbers "
                f"(one per block); received {list(drop_path_rates)!r}."
            )
        self.drop_path_rates = [check_rate("ResidualStage.drop_path_rates", r) for r in drop_path_rates]

    @property
    def downsamples_at_end(self) -> bool:
        """Whether the last block reduces the resolution, so that the stage's feature map (at
        its input resolution) is the input of that block rather than the stage output."""
        return self.downsample_block == "last" and self.strides > 1

    def build(self, input_shape):
        down = 0 if self.downsample_block == "first" else self.num_blocks - 1
        self.blocks = []
        for i in range(self.num_blocks):
            self.blocks.append(
                build_from_spec(
                    "block",
                    self.block,
                    filters=self.filters,
                    strides=self.strides if i == down else 1,
                    first_dilation=self.first_dilation if i <= down else self.dilation,
                    dilation=self.first_dilation if i < down else self.dilation,
                    drop_path_rate=self.drop_path_rates[i],
                    name=f"block{i + 1}",
                    dtype=self.dtype_policy,
                )
            )
        build_chain(self.blocks, input_shape)

    def _split(self) -> tuple[list, list]:
        """The blocks up to the stage's feature map, and the rest (the downsampling last block)."""
        split = self.num_blocks - 1 if self.downsamples_at_end else self.num_blocks
        return self.blocks[:split], self.blocks[split:]

    def call(self, inputs, training=None, return_feature=False):
        to_feature, after_feature = self._split()
        feature = inputs
        for block in to_feature:
            feature = block(feature, training=training)
        outputs = feature
        for block in after_feature:
            outputs = block(outputs, training=training)
        return (feature, outputs) if return_feature else outputs

    def compute_output_shape(self, input_shape):
        return chain_output_shape(self.blocks, input_shape)

    def compute_output_spec(self, inputs, training=None, return_feature=False):
        to_feature, after_feature = self._split()
        feature_shape = chain_output_shape(to_feature, inputs.shape)
        outputs = keras.KerasTensor(chain_output_shape(after_feature, feature_shape), dtype=self.compute_dtype)
        return (keras.KerasTensor(feature_shape, dtype=self.compute_dtype), outputs) if return_feature else outputs
