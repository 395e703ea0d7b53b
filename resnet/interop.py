"""Loading keras.applications and PyTorch (torchvision / timm) weights with the same numerics.

Two loaders, both strict: every variable of the model must receive a tensor of the right
shape and every tensor of the source must be used, else nothing is loaded and a `ValueError`
lists the names involved. `skip_classifier=True` loads everything but the classifier (for
fine-tuning with another number of classes) and reports what it skipped.

* `load_keras_applications_weights(model, source)`: from a built
  `keras.applications.ResNet50/101/152` or `ResNet50V2/101V2/152V2`, or a path to its `.h5`
  or `.weights.h5` file, into the `keras_resnet*` configs.
* `load_torch_state_dict(model, state_dict)`: from a mapping of torch parameter and buffer
  names to arrays, or a `.npz` / `.safetensors` file of them (or a `.pth` / `.pt` file when
  torch is installed, read with `torch.load(weights_only=True)`), into the configs named after
  torchvision / timm models. No loader ever unpickles arbitrary objects.

Converting a torch checkpoint to a file these read, in two lines:

    import numpy as np, torch
    np.savez("resnet50.npz", **{k: v.numpy() for k, v in torch.load("resnet50.pth", weights_only=True).items()})
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gin
import keras
import numpy as np
from safetensors import SafetensorError

from resnet.model import ResNet

# keras.applications constructors by (pre-activation, blocks per stage).
_KERAS_APPLICATIONS = {
    (False, (3, 4, 6, 3)): "ResNet50",
    (False, (3, 4, 23, 3)): "ResNet101",
    (False, (3, 8, 36, 3)): "ResNet152",
    (True, (3, 4, 6, 3)): "ResNet50V2",
    (True, (3, 4, 23, 3)): "ResNet101V2",
    (True, (3, 8, 36, 3)): "ResNet152V2",
}
_TORCH_LEAVES = {"kernel": "weight", "gamma": "weight", "beta": "bias", "bias": "bias",
                 "moving_mean": "running_mean", "moving_variance": "running_var"}
# Buffers torch keeps that have no counterpart here (and carry no information for inference).
_TORCH_IGNORED = re.compile(r"(^|\.)num_batches_tracked$")
_MAX_LISTED = 8


@dataclasses.dataclass
class LoadReport:
    """What a loader did: `loaded` source tensors, and `skipped` ones (the classifier, if asked)."""

    source: str
    loaded: list[str]
    skipped: list[str]

    def __str__(self) -> str:
        text = f"Loaded {len(self.loaded)} tensors from {self.source}"
        return text + (f"; skipped {', '.join(self.skipped)}" if self.skipped else "") + "."


# --------------------------------------------------------------------------- shared core


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _load(
    model: ResNet,
    tensors: Mapping[str, np.ndarray],
    source_name: Callable[[str], str],
    convert: Callable[[str, np.ndarray], np.ndarray],
    skip_classifier: bool,
    source: str,
    ignored: Callable[[str], bool] = lambda name: False,
) -> LoadReport:
    """Assigns `tensors` to `model`, all or nothing.

    Args:
        model: The model to load into.
        tensors: Source name -> array.
        source_name: Maps a model variable path (`stage1/block1/conv1/kernel`) to its source name.
        convert: `convert(variable_path, array)` -> the array in this library's layout.
        skip_classifier: Leave the classifier's variables as they are.
        source: How errors and the report name the source (a file, or a model).
        ignored: Source names that may be present without a counterpart.
    """
    targets = {v.path: v for v in model.weights}
    plan, missing, mismatched, skipped = {}, [], [], []
    for path, variable in targets.items():
        name = source_name(path)
        if path.startswith("classifier/") and skip_classifier:
            if name in tensors:
                skipped.append(name)
            continue
        if name not in tensors:
            missing.append(name)
            continue
        value = convert(path, np.asarray(tensors[name]))
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append((name, f"{name} {tuple(np.shape(tensors[name]))} (as {tuple(value.shape)}) for "
                                     f"{path} {tuple(variable.shape)}"))
            continue
        plan[path] = (name, value)
    used = {name for name, _ in plan.values()} | set(skipped) | {name for name, _ in mismatched}
    unexpected = sorted(n for n in tensors if n not in used and not ignored(n)
                        and not (skip_classifier and n in _classifier_names(model, source_name)))
    problems = []
    if mismatched:
        problems.append(f"shape mismatch: {_listing([text for _, text in mismatched])}")
    if missing:
        problems.append(f"missing from the source: {_listing(missing)}")
    if unexpected:
        problems.append(f"not used by the model: {_listing(unexpected)}")
    if problems:
        hint = " (a different number of classes? pass skip_classifier=True)" if any(
            "classifier/" in text for _, text in mismatched) else ""
        raise ValueError(
            f"Cannot load {source} into {model.name!r}; nothing was loaded. " + "; ".join(problems) + hint + "."
        )
    for path, (_, value) in plan.items():
        targets[path].assign(value.astype(targets[path].dtype))
    return LoadReport(source, sorted(name for name, _ in plan.values()), sorted(skipped))


def _classifier_names(model: ResNet, source_name: Callable[[str], str]) -> set[str]:
    return {source_name(v.path) for v in model.weights if v.path.startswith("classifier/")}


# ------------------------------------------------------------------------ keras.applications


def _keras_layer(path: str) -> str:
    """`stage2/block1/conv1/kernel` -> `conv3_block1_1_conv/kernel` (keras.applications names)."""
    *layers, leaf = path.split("/")
    if layers[0] == "stem":
        return {"conv1": "conv1_conv", "norm1": "conv1_bn"}.get(layers[1], "?") + "/" + leaf
    if layers[0] in ("classifier", "post_norm"):
        return {"classifier": "predictions", "post_norm": "post_bn"}[layers[0]] + "/" + leaf
    stage = int(layers[0].removeprefix("stage")) + 1
    block = layers[1].removeprefix("block")
    part = "/".join(layers[2:])
    suffix = {"shortcut/conv": "0_conv", "shortcut/norm": "0_bn", "preact_norm": "preact_bn"}.get(part)
    if suffix is None:
        kind, index = re.fullmatch(r"(conv|norm)(\d)", part).groups()
        suffix = f"{index}_{'conv' if kind == 'conv' else 'bn'}"
    return f"conv{stage}_block{block}_{suffix}/{leaf}"


def _check_keras_layout(model: ResNet) -> str:
    """The keras.applications class whose layout `model` has, or a ValueError saying why not."""
    name = _KERAS_APPLICATIONS.get((model.preact, tuple(model.stage_blocks)))
    block = model.block["config"]
    expected_stride = "3x3" if model.preact else "1x1"
    problems = []
    if name is None or model.block["class_name"] != "BottleneckBlock":
        problems.append(f"bottleneck blocks {tuple(model.stage_blocks)}")
    if block["stride_on"] != expected_stride:
        problems.append(f"stride_on={block['stride_on']!r}")
    if model.downsample_block != ("last" if model.preact else "first") or model.padding != "symmetric":
        problems.append(f"downsample_block={model.downsample_block!r}, padding={model.padding!r}")
    if model.stem["class_name"] != "ClassicStem":
        problems.append(f"stem {model.stem['class_name']}")
    if problems:
        raise ValueError(
            f"Model {model.name!r} does not have a keras.applications ResNet layout ({', '.join(problems)}); "
            "build it from keras_resnet50, keras_resnet101, keras_resnet152 or their _v2 configs."
        )
    return name


def _keras_counterpart(name: str, path: Path) -> keras.Model:
    """The keras.applications model `name` with the weights of file `path`."""
    if not path.is_file():
        raise ValueError(f"Weights file {str(path)!r} does not exist.")
    import h5py

    try:
        with h5py.File(path, "r") as f:
            classes = _h5_classes(f)
    except OSError as error:
        raise ValueError(f"{str(path)!r} is not an HDF5 weights file (.h5 / .weights.h5): {error}.") from error
    include_top = classes is not None
    counterpart = getattr(keras.applications, name)(
        weights=None, include_top=include_top, classes=classes or 1000, input_shape=(224, 224, 3) if include_top else None
    )
    try:
        counterpart.load_weights(str(path))
    except (ValueError, KeyError, OSError) as error:
        raise ValueError(
            f"Weights file {str(path)!r} does not hold keras.applications.{name} weights "
            f"({'with' if include_top else 'without'} the classifier): {error}"
        ) from error
    return counterpart


def _h5_classes(f) -> int | None:
    """Classifier width recorded in a keras.applications weights file, None if it has no top."""
    import h5py

    found = []

    def visit(name, obj):
        # legacy .h5: predictions/predictions/kernel:0; Keras 3 .weights.h5: layers/dense/vars/0
        if isinstance(obj, h5py.Dataset) and obj.ndim == 2 and ("predictions" in name or "dense" in name):
            found.append(obj.shape[1])

    f.visititems(visit)
    return found[0] if found else None


def load_keras_applications_weights(
    model: ResNet, source: keras.Model | str | os.PathLike, skip_classifier: bool = False
) -> LoadReport:
    """Loads keras.applications ResNet / ResNetV2 weights into a `keras_resnet*` model.

    Args:
        model: Built from `keras_resnet50`, `keras_resnet101`, `keras_resnet152` or their
            `_v2` configs (same depth and version as the source).
        source: A built `keras.applications.ResNet50` (101, 152, 50V2, ...) model, or a path to
            its weights (`.h5`, as Keras caches under `~/.keras/models/`, or `.weights.h5`).
        skip_classifier: Do not load the classifier (for another number of classes).

    Returns:
        A `LoadReport`.

    Raises:
        ValueError: A missing or unreadable file, another architecture, or tensors that do not
            fit (named); nothing is loaded then.

    Example:

    >>> import resnet
    >>> ours = resnet.build("keras_resnet50")
    >>> theirs = keras.applications.ResNet50(weights=None)
    >>> print(load_keras_applications_weights(ours, theirs))  # doctest: +ELLIPSIS
    Loaded 320 tensors from keras.applications model 'resnet50'.
    """
    name = _check_keras_layout(model)
    if isinstance(source, keras.Model):
        counterpart, described = source, f"keras.applications model {source.name!r}"
    else:
        counterpart, described = _keras_counterpart(name, Path(source)), str(source)
    tensors = {v.path: v.numpy() for v in counterpart.weights}
    return _load(model, tensors, _keras_layer, lambda path, value: value, skip_classifier, described)


# ------------------------------------------------------------------------ torchvision / timm


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
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {k: archive[k] for k in archive.files}
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            return load_file(str(path))
        if suffix in (".pth", ".pt"):
            return _read_torch_file(path)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, SafetensorError) as error:
        raise ValueError(f"{str(path)!r} is not a readable {suffix} weights file: {error}") from error
    raise ValueError(f"{str(path)!r}: expected a .npz, .safetensors, .pth or .pt weights file.")


def _read_torch_file(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"Reading {str(path)!r} needs torch, which is not installed. Convert it where torch is: "
            "np.savez('weights.npz', **{k: v.numpy() for k, v in torch.load(path, weights_only=True).items()})"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        raise ValueError(f"{str(path)!r} is not a torch weights file loadable with weights_only=True: {error}") from error
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict.")
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def load_torch_state_dict(
    model: ResNet, state_dict: Mapping[str, Any] | str | os.PathLike, skip_classifier: bool = False
) -> LoadReport:
    """Loads a torchvision / timm ResNet state dict into the model of the same name here.

    Supported: `resnet18/34/50/101/152/200`, `resnext50_32x4d`, `wide_resnet50_2`, `resnet50d`,
    `seresnet50`, `resnet50_gn` (any model built with their layout). Conv weights are
    transposed from OIHW, the classifier's from (out, in); `num_batches_tracked` is ignored.

    Args:
        model: The model to load into.
        state_dict: Names (`conv1.weight`, `bn1.running_mean`, `layer1.0.conv2.weight`,
            `fc.bias`, ...) to NumPy arrays (or tensors with `.numpy()`), or a path to a
            `.npz` / `.safetensors` file of them, or to a `.pth` / `.pt` file when torch is
            installed (read with `weights_only=True`).
        skip_classifier: Do not load `fc.*` (for another number of classes).

    Returns:
        A `LoadReport`.

    Raises:
        ValueError: A missing or unreadable file, or tensors missing, unused or of the wrong
            shape (named); nothing is loaded then.
    """
    if isinstance(state_dict, (str, os.PathLike)):
        source = str(state_dict)
        state_dict = _read_state_dict(Path(state_dict))
    elif isinstance(state_dict, Mapping):
        source = "the state dict"
        state_dict = {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in state_dict.items()}
    else:
        raise ValueError(f"`state_dict` must be a mapping or a file path; received {type(state_dict).__name__}.")
    return _load(model, state_dict, _torch_name(model), _from_torch_layout, skip_classifier, source,
                 ignored=lambda name: bool(_TORCH_IGNORED.search(name)))


# --------------------------------------------------------------------------- fine-tuning

FORMATS = ("auto", "keras", "torch")


@gin.configurable(module="resnet")
@dataclasses.dataclass
class PretrainedWeights:
    """Weights a training run starts from (bind `Trainer.initial_weights = @PretrainedWeights()`).

    Args:
        path: The weights file.
        format: "keras" (keras.applications `.h5` / `.weights.h5`), "torch" (`.npz`,
            `.safetensors`, `.pth`, `.pt`), or "auto" (from the file name).
        skip_classifier: Do not load the classifier (fine-tuning to other classes).
    """

    path: str
    format: str = "auto"
    skip_classifier: bool = False

    def __post_init__(self):
        self.path = os.path.expanduser(str(self.path))
        if self.format not in FORMATS:
            raise ValueError(f"`PretrainedWeights.format` must be one of {FORMATS}; received {self.format!r}.")

    def load_into(self, model: ResNet) -> LoadReport:
        kind = self.format
        if kind == "auto":
            kind = "keras" if str(self.path).lower().endswith(".h5") else "torch"
        if kind == "keras":
            return load_keras_applications_weights(model, self.path, self.skip_classifier)
        return load_torch_state_dict(model, self.path, self.skip_classifier)


def freeze(model: ResNet, stages: int, stem: bool = True) -> None:
    """Makes the stem (if `stem`) and the first `stages` stages non-trainable.

    Their batch norms then also run in inference mode (Keras semantics of `trainable=False`).

    Example:

    >>> import resnet
    >>> model = resnet.build("cifar/resnet20")
    >>> freeze(model, stages=2)
    >>> [model.get_layer(n).trainable for n in ("stem", "stage1", "stage2", "stage3")]
    [False, False, False, True]
    """
    count = len(model.stage_blocks)
    if isinstance(stages, bool) or not isinstance(stages, int) or not 0 <= stages <= count:
        raise ValueError(f"`stages` must be an integer in [0, {count}]; received {stages!r}.")
    if stem:
        model.get_layer("stem").trainable = False
    for i in range(1, stages + 1):
        model.get_layer(f"stage{i}").trainable = False


def with_frozen_batch_norm(model: ResNet) -> ResNet:
    """A copy of `model` whose batch norms are `FrozenBatchNorm`, with the same weights.

    Equivalent to building with `ResNet.norm = 'frozen_batch'` (the gin way) and loading the
    weights.
    """
    config = model.get_config()

    def swap(value):
        if isinstance(value, dict):
            if value.get("class_name") in ("BatchNorm", "SyncBatchNorm"):
                return {"class_name": "FrozenBatchNorm", "config": {**value["config"], "synchronized": False}}
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    frozen = ResNet.from_config(swap(config))
    frozen.set_weights(model.get_weights())
    return frozen
