"""`ResidualStage`: a run of residual blocks at one width, the unit ResNets are made of."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from resnet.layers.sublayers import build_chain
from resnet.registry import ArgsConfigMixin, build_from_spec, register, resolve_spec
from resnet.validation import check_choice, check_int, check_rate

DOWNSAMPLE_BLOCKS = ("first", "last")
STAGE_PARTS = ("all", "head", "tail")


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

        down = 0 if self.downsample_block == "first" else self.num_blocks - 1
        self.blocks = []
        for i in range(self.num_blocks):
            before = i < down
            self.blocks.append(
                build_from_spec(
                    "block",
                    self.block,
                    filters=self.filters,
                    strides=self.strides if i == down else 1,
                    first_dilation=self.first_dilation if i <= down else self.dilation,
                    dilation=self.first_dilation if before else self.dilation,
                    drop_path_rate=self.drop_path_rates[i],
                    name=f"block{i + 1}",
                    dtype=self.dtype_policy,
                )
            )

    @property
    def feature_block(self) -> int:
        """Index of the last block before the stage downsamples (-1: the stage input).

        Its output is the stage's feature map at the stage's own resolution: the stage output
        when the first block downsamples, the input of the last block when that one does.
        """
        if self.downsample_block == "last" and self.strides > 1:
            return self.num_blocks - 2
        return self.num_blocks - 1

    def build(self, input_shape):
        build_chain(self.blocks, input_shape)

    def _blocks(self, part: str) -> list:
        split = self.feature_block + 1
        return {"all": self.blocks, "head": self.blocks[:split], "tail": self.blocks[split:]}[part]

    def call(self, inputs, training=None, part="all"):
        """Runs the blocks; `part="head"` stops at the stage's feature map (see `feature_block`)
        and `part="tail"` runs the rest, so a caller can tap the feature without recomputing."""
        check_choice("part", part, STAGE_PARTS)
        x = inputs
        for block in self._blocks(part):
            x = block(x, training=training)
        return x

    def _shape_after(self, input_shape, part: str):
        shape = input_shape
        for block in self._blocks(part):
            shape = block.compute_output_shape(shape)
        return shape

    def compute_output_shape(self, input_shape):
        return self._shape_after(input_shape, "all")

    def compute_output_spec(self, inputs, training=None, part="all"):
        return keras.KerasTensor(self._shape_after(inputs.shape, part), dtype=self.compute_dtype)
