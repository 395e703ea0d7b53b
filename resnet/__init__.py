"""Residual networks for TensorFlow 2 / Keras 3, built from gin-configurable Keras layers.

Quick start:

>>> import resnet
>>> model = resnet.build("resnet50")             # a shipped config; see resnet.available_configs()
>>> model = resnet.build("resnet50", ["ResNet.norm = 'group'", "ResNet.num_classes = 10"])
>>> model = resnet.build("resnet50", weights="resnet50.tv2_in1k")  # doctest: +SKIP

Layers (`BottleneckBlock`, `ResidualStage`, shortcuts, stems, norms) are importable on their
own for use inside other models.

`import resnet` imports the public API, which registers every layer with Keras and gin (so
`keras.models.load_model` finds our classes in a `.keras` file), and changes nothing else in the
process. Only in our own binaries does it wait: there each name is imported where it is first
used, so that a binary's first line runs before TensorFlow is imported (see `resnet._startup`).
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from resnet._startup import launched_as_binary

if TYPE_CHECKING:  # `__all__` as type checkers and editors see it; at run time `__getattr__` imports each
    from resnet.config import available_configs, available_experiments, build, config_path, parse  # noqa: F401
    from resnet.flops import count_macs  # noqa: F401
    from resnet.fold import fold_batch_norm  # noqa: F401
    from resnet.layers import *  # noqa: F401,F403  (the public layer classes)
    from resnet.model import ResNet  # noqa: F401
    from resnet.pretrained import available_weights, weights_info  # noqa: F401
    from resnet.registry import register  # noqa: F401
    from resnet.stage import ResidualStage  # noqa: F401

__version__ = "0.1.0"

# Public name -> the module that defines it; besides these, every name of `resnet.layers.__all__`.
_MODULES = {
    "ResNet": "resnet.model",
    "ResidualStage": "resnet.stage",
    "available_configs": "resnet.config",
    "available_experiments": "resnet.config",
    "available_weights": "resnet.pretrained",
    "build": "resnet.config",
    "config_path": "resnet.config",
    "count_macs": "resnet.flops",
    "fold_batch_norm": "resnet.fold",
    "parse": "resnet.config",
    "register": "resnet.registry",
    "weights_info": "resnet.pretrained",
}


def __getattr__(name: str) -> Any:
    """Imports a public name (or `__all__`) where it is first used, and keeps it (PEP 562)."""
    layers = None if name in _MODULES else importlib.import_module("resnet.layers")
    if name == "__all__":
        value = [*_MODULES, *layers.__all__]
    elif layers is None:
        value = getattr(importlib.import_module(_MODULES[name]), name)
    elif name in layers.__all__:
        value = getattr(layers, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__getattr__("__all__")})


if not launched_as_binary(sys.argv, getattr(sys, "orig_argv", [])):
    for _name in __getattr__("__all__"):  # a library import: the whole API now, every class registered
        __getattr__(_name)
