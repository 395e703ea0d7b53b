"""The building blocks of residual networks, each a Keras layer bindable by gin."""

from resnet.layers.attention import SqueezeExcite
from resnet.layers.blocks import BasicBlock, BottleneckBlock, ResidualBlock
from resnet.layers.conv import Conv2D
from resnet.layers.normalization import BatchNorm, FrozenBatchNorm, GroupNorm, LayerNorm, SyncBatchNorm
from resnet.layers.regularization import DropPath
from resnet.layers.shortcuts import (
    AvgDownShortcut,
    IdentityShortcut,
    NoShortcut,
    ProjectionShortcut,
    Shortcut,
    ZeroPadShortcut,
)
from resnet.layers.stems import CifarStem, ClassicStem, DeepStem

__all__ = [
    "AvgDownShortcut",
    "BasicBlock",
    "BatchNorm",
    "BottleneckBlock",
    "CifarStem",
    "ClassicStem",
    "Conv2D",
    "DeepStem",
    "DropPath",
    "FrozenBatchNorm",
    "GroupNorm",
    "IdentityShortcut",
    "LayerNorm",
    "NoShortcut",
    "ProjectionShortcut",
    "ResidualBlock",
    "Shortcut",
    "SqueezeExcite",
    "SyncBatchNorm",
    "ZeroPadShortcut",
]
