"""Residual networks for TensorFlow 2 / Keras 3, built from gin-configurable Keras layers.

Quick start:

>>> import resnet
>>> model = resnet.build("resnet50")             # a shipped config; see resnet.available_configs()
>>> model = resnet.build("resnet50", ["ResNet.norm = 'group'", "ResNet.num_classes = 10"])

Layers (`BottleneckBlock`, `ResidualStage`, shortcuts, stems, norms) are importable on their
own for use inside other models.
"""

from resnet._startup import quiet_binary_start

quiet_binary_start()  # before TensorFlow is first imported; does nothing outside our binaries

from resnet.config import available_configs, available_experiments, build, config_path, parse
from resnet.flops import count_macs
from resnet.fold import fold_batch_norm
from resnet.layers import *  # noqa: F401,F403  (the public layer classes)
from resnet.layers import __all__ as _layer_names
from resnet.model import ResNet
from resnet.registry import register
from resnet.stage import ResidualStage

__version__ = "0.1.0"

__all__ = [
    "ResNet",
    "ResidualStage",
    "available_configs",
    "available_experiments",
    "build",
    "config_path",
    "count_macs",
    "fold_batch_norm",
    "parse",
    "register",
    *_layer_names,
]
