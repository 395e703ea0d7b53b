"""torchvision / timm ResNet weights, from a state dict or a `.npz`, `.safetensors`, `.pth`, `.pt` or `.bin` file.

No reader ever unpickles arbitrary objects, and none needs torch: `.npz` files are read with
`allow_pickle=False`, and `torch.save` files (`.pth`, `.pt`, timm's `pytorch_model.bin`), in its
zip format or the legacy one of torch < 1.6, by `resnet.interop.torch_file.read_torch_file`, which
resolves only the globals of a state dict.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import SafetensorError

from resnet.interop.core import LoadReport, load_tensors
from resnet.interop.torch_file import read_torch_file
from resnet.model import ResNet

_TORCH_LEAVES = {
    "kernel": "weight",
    "gamma": "weight",
    "beta": "bias",
    "bias": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


def _torch_name(model: ResNet) -> Callable[[str], str]:
    """The torchvision/timm parameter name of each variable path of `model`."""
    deep_stem = model.stem["class_name"] == "DeepStem"
    avg_down = model.block["config"]["shortcut"]["class_name"] == "AvgDownShortcut"

    def name(path: str) -> str:
        *layers, leaf = path.split("/")
        leaf = _TORCH_LEAVES.get(leaf, leaf)
        if layers[0] == "stem":
            kind, index = re.fullmatch(r"(conv|norm)(\d)", layers[1]).groups()
            if not deep_stem:
                return f"{'conv1' if kind == 'conv' else 'bn1'}.{leaf}"
            if kind == "norm" and index == "3":
                return f"bn1.{leaf}"  # timm: the deep stem's last norm is the network's bn1
            position = (int(index) - 1) * 3 + (0 if kind == "conv" else 1)
            return f"conv1.{position}.{leaf}"
        if layers[0] == "classifier":
            return f"fc.{leaf}"
        stage, block = int(layers[0].removeprefix("stage")), int(layers[1].removeprefix("block")) - 1
        part = "/".join(layers[2:])
        if part.startswith("shortcut/"):
            offset = 1 if avg_down else 0
            module = f"downsample.{offset + (0 if part == 'shortcut/conv' else 1)}"
        elif part.startswith("se/"):
            module = {"se/reduce": "se.fc1", "se/expand": "se.fc2"}[part]
        else:
            kind, index = re.fullmatch(r"(conv|norm)(\d)", part).groups()
            module = f"{'conv' if kind == 'conv' else 'bn'}{index}"
        return f"layer{stage}.{block}.{module}.{leaf}"

    return name


def _tracked_counters(model: ResNet, torch_name: Callable[[str], str]) -> set[str]:
    """The `num_batches_tracked` buffers of the batch norms `model` maps (`layer1.0.bn1.num_batches_tracked`).

    torch keeps one beside each batch norm's running statistics; it has no counterpart here and
    carries no information for inference. Any other such name belongs to no module of the model.
    """
    names = (torch_name(variable.path) for variable in model.weights)
    return {
        name.rsplit(".", 1)[0] + ".num_batches_tracked"
        for name in names
        if name.endswith((".running_mean", ".running_var"))
    }


def _from_torch_layout(path: str, value: np.ndarray) -> np.ndarray:
    """Conv weights OIHW -> HWIO, linear weights (out, in) -> (in, out); others as they are."""
    if path.endswith("/kernel"):
        if value.ndim == 4:
            return value.transpose(2, 3, 1, 0)
        if value.ndim == 2:
            return value.T
    return value


def _read_state_dict(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ValueError(f"Weights file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt", ".bin"):
        try:
            return _read_torch_file(path)
        except OSError as error:  # its ValueErrors name the file and the problem already
            raise ValueError(f"{str(path)!r} is not a readable {suffix} weights file: {error}") from error
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {k: archive[k] for k in archive.files}
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            return load_file(str(path))
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, SafetensorError) as error:
        raise ValueError(f"{str(path)!r} is not a readable {suffix} weights file: {error}") from error
    raise ValueError(
        f"{str(path)!r}: expected a .npz, .safetensors, .pth or .pt weights file, or a pytorch_model.bin "
        "(torch.save's format)."
    )


def _read_torch_file(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a `torch.save` file, bfloat16 ones widened (exactly) to float32 for the loader's checks."""
    return {
        name: value.astype(np.float32) if value.dtype == ml_dtypes.bfloat16 else value
        for name, value in read_torch_file(path).items()
    }


def load_torch_state_dict(
    model: ResNet, state_dict: Mapping[str, Any] | str | os.PathLike, skip_classifier: bool = False
) -> LoadReport:
    """Loads a torchvision / timm ResNet state dict into the model of the same name here.

    Supported: `resnet18/34/50/101/152/200`, `resnext50_32x4d`, `wide_resnet50_2`, `resnet50d`,
    `seresnet50`, `resnet50_gn` (any model built with their layout). Conv weights are
    transposed from OIHW, the classifier's from (out, in); the `num_batches_tracked` buffer of
    each batch norm the model maps is ignored (any other tensor the model does not use is refused).

    Args:
        model: The model to load into.
        state_dict: Names (`conv1.weight`, `bn1.running_mean`, `layer1.0.conv2.weight`,
            `fc.bias`, ...) to NumPy arrays (or tensors with `.numpy()`), or a path to a
            `.npz` / `.safetensors` file of them, or to a file written by `torch.save`
            (`.pth` / `.pt`, or timm's `pytorch_model.bin`, in the zip format or the legacy
            one of torch < 1.6; a checkpoint's `"state_dict"` or `"model"` entry is used), read
            without torch by `read_torch_file`.
        skip_classifier: Do not load `fc.*` (for another number of classes).

    Returns:
        A `LoadReport`.

    Raises:
        ValueError: A missing or unreadable file, or tensors missing, unused, of the wrong
            shape or with impossible values (named); nothing is loaded then.
    """
    if isinstance(state_dict, (str, os.PathLike)):
        source = str(state_dict)
        state_dict = _read_state_dict(Path(state_dict))
    elif isinstance(state_dict, Mapping):
        source = "the state dict"
        state_dict = {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in state_dict.items()}
    else:
        raise ValueError(f"`state_dict` must be a mapping or a file path; received {type(state_dict).__name__}.")
    torch_name = _torch_name(model)
    tracked = _tracked_counters(model, torch_name)
    return load_tensors(
        model, state_dict, torch_name, _from_torch_layout, skip_classifier, source, ignored=tracked.__contains__
    )
