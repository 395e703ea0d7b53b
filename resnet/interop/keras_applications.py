"""keras.applications ResNet / ResNetV2 weights, from a built model or its `.h5` file."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import keras

from resnet.interop.core import LoadReport, load_tensors
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
    # Only bottleneck blocks have `stride_on`; another block is reported above.
    if block.get("stride_on", expected_stride) != expected_stride:
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
        weights=None,
        include_top=include_top,
        classes=classes or 1000,
        input_shape=(224, 224, 3) if include_top else None,
    )
    mismatch = (
        f"Weights file {str(path)!r} does not hold keras.applications.{name} weights "
        f"({'with' if include_top else 'without'} the classifier)"
    )
    # Keras warns about each part of the file it cannot place and may then load the rest; a
    # partial load would leave random weights behind, so any such warning is an error here.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            counterpart.load_weights(str(path))
        except (ValueError, KeyError, OSError) as error:
            raise ValueError(f"{mismatch}: {error}") from error
    skipped = [str(w.message) for w in caught if "Skipping" in str(w.message)]
    if skipped:
        raise ValueError(f"{mismatch}: Keras could not place {len(skipped)} part(s) of it, e.g. {skipped[0]}")
    for other in caught:
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
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
    return load_tensors(model, tensors, _keras_layer, lambda path, value: value, skip_classifier, described)
