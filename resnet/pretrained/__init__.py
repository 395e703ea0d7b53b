"""Published ImageNet weights by name: torchvision, keras.applications and timm in one name space.

>>> import resnet
>>> model = resnet.build("resnet50", weights="resnet50.tv2_in1k")  # doctest: +SKIP
>>> resnet.available_weights()[:2]
['keras_resnet101.imagenet', 'keras_resnet101_v2.imagenet']
>>> resnet.weights_info("resnet50.tv2_in1k")["preprocessing"]["resize"]
232

A name is `<config>.<tag>` (see `resnet.pretrained.table`). Its file is downloaded once into
a local cache and checked against the hash its publisher gives, every time it is used
(`resnet.pretrained.download`: cache directory, mirror, offline use). torchvision and timm
files are read without torch (`resnet.interop.torch_file`).

Every model loaded here takes RGB images: keras.applications' ResNet (v1) weights expect BGR,
so their first convolution's input channels are reversed on load, and their preprocessing is
given in RGB order. `preprocessing(name)` is the evaluation `Preprocessing` the weights were
published with (resize, interpolation, centre crop, mean and std) and `class_names(name)` the
names of their classes, so a model evaluates, predicts and exports as its publisher's does.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from resnet.pretrained.download import WeightsDownloadError, cached_path, fetch, hash_mismatch
from resnet.pretrained.table import Entry, entries, entry, imagenet_class_names

__all__ = [
    "WeightsDownloadError",
    "available_weights",
    "class_names",
    "load_weights",
    "preprocessing",
    "verified",
    "weights_file",
    "weights_info",
    "weights_source",
]

_KERAS_SUFFIXES = (".h5",)
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".npz", ".safetensors")


def available_weights(config: str | None = None) -> list[str]:
    """The names of the published weights, sorted; only those of `config` if given.

    >>> available_weights("resnet50")
    ['resnet50.tv2_in1k', 'resnet50.tv_in1k']
    """
    return sorted(name for name, item in entries().items() if config is None or item.config == config)


def weights_info(name: str, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """What is known of the weights `name`.

    Returns:
        A dict with `config` (what they load into), `url`, `hash`, `classes` (their number),
        `preprocessing` (as the loaded model takes it: `resize`, `crop`, `interpolation`,
        `channels`, `mean`, `std` on the 0..255 scale), `top1` / `top5` (the publisher's
        ImageNet validation figures, percent) and `source` (where they are defined), besides
        `publisher`, `publisher_name`, `format`, `hash_source`, `metrics_source`, `licence`,
        `licence_source`, `notes`, `published_preprocessing` (as the publisher states it) and
        `cache_path` (where the file is, or will be, cached).
    """
    item = entry(name)
    info = dataclasses.asdict(item)
    info["published_preprocessing"] = dict(item.preprocessing)
    info["preprocessing"] = _model_preprocessing(item)
    info["cache_path"] = cached_path(item.url, cache_dir)
    return info


def preprocessing(name: str):
    """The evaluation `resnet.data.Preprocessing` the weights `name` were published with.

    >>> prep = preprocessing("resnet50.tv2_in1k")
    >>> prep.image_size, prep.serving_size
    (224, (232, 232))
    """
    from resnet.data.preprocessing import Preprocessing

    prep = _model_preprocessing(entry(name))
    return Preprocessing(
        recipe="imagenet",
        image_size=prep["crop"],
        mean=prep["mean"],
        std=prep["std"],
        crop_fraction=prep["crop"] / prep["resize"],
        interpolation=prep["interpolation"],
    )


def class_names(name: str) -> list[str]:
    """The names of the classes of the weights `name`, `names[i]` naming output `i`.

    >>> class_names("resnet50.tv2_in1k")[:2]
    ['tench', 'goldfish']
    """
    item = entry(name)
    names = imagenet_class_names()
    if item.classes != len(names):
        raise ValueError(f"No class names are shipped for the {item.classes} classes of {name!r}.")
    return list(names)


def weights_file(name: str, cache_dir: str | os.PathLike | None = None, progress: bool = True) -> str:
    """The local file of the weights `name`, downloaded into the cache unless it is there (and
    checked against its hash either way); see `resnet.pretrained.download.fetch`."""
    item = entry(name)
    return fetch(item.url, item.hash, cache_dir, progress=progress)


def load_weights(
    model,
    weights: str | os.PathLike,
    skip_classifier: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
):
    """Loads weights into a built `ResNet`: a name of `available_weights()` or a local file.

    Args:
        model: The model, built from the config the weights are for.
        weights: A name (`"resnet50.tv2_in1k"`), or a path to a keras.applications `.h5` file
            or a torchvision / timm `.pth`, `.pt`, `.bin`, `.safetensors` or `.npz` file.
        skip_classifier: Leave the classifier as it is (fine-tuning to other classes).
        cache_dir: Where named weights are cached (see `resnet.pretrained.download`).
        progress: Show a progress bar while downloading.

    Returns:
        The loader's `resnet.interop.LoadReport`.

    Raises:
        ValueError: An unknown name or file type, or weights that do not fit the model (named).
        WeightsDownloadError: Named weights that could not be fetched (see `fetch`).
    """
    from resnet.interop import load_keras_applications_weights, load_torch_state_dict

    item, kind = weights_source(weights)
    if item is not None:
        path = fetch(item.url, item.hash, cache_dir, progress=progress)
    else:
        path = os.path.expanduser(os.fspath(weights))
    if kind == "keras":
        report = load_keras_applications_weights(model, path, skip_classifier)
    else:
        report = load_torch_state_dict(model, path, skip_classifier)
    if item is not None and item.preprocessing["channels"] == "bgr":
        _reverse_input_channels(model)
    return report


def weights_source(weights: str | os.PathLike) -> tuple[Entry | None, str]:
    """`(entry, format)` of a weights name, `(None, format)` of an existing file path; a
    `ValueError` for an unknown name (naming close ones), a missing file or an unknown file type."""
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"`weights` must be a name or a file path; received {type(weights).__name__}.")
    text = os.fspath(weights)
    if text in entries():
        return entries()[text], entries()[text].format
    if isinstance(weights, os.PathLike) or os.sep in text or text.lower().endswith(_KERAS_SUFFIXES + _TORCH_SUFFIXES):
        return None, _format_of(os.path.expanduser(text))
    entry(text)  # raises, naming close matches
    raise AssertionError("unreachable")


def _format_of(path: str) -> str:
    if not os.path.isfile(path):
        raise ValueError(f"Weights file {path!r} does not exist.")
    lower = path.lower()
    if lower.endswith(_KERAS_SUFFIXES):
        return "keras"
    if lower.endswith(_TORCH_SUFFIXES):
        return "torch"
    raise ValueError(
        f"Weights file {path!r}: expected a keras.applications {'/'.join(_KERAS_SUFFIXES)} file or a torch "
        f"{'/'.join(_TORCH_SUFFIXES)} file."
    )


def _model_preprocessing(item: Entry) -> dict[str, Any]:
    prep = dict(item.preprocessing)
    if prep["channels"] == "bgr":  # the loaded model takes RGB (see the module docstring)
        prep.update(channels="rgb", mean=prep["mean"][::-1], std=prep["std"][::-1])
    return prep


def _reverse_input_channels(model) -> None:
    """Makes a model whose first convolution reads BGR read RGB instead (the same outputs)."""
    kernel = next(v for v in model.get_layer("stem").weights if v.path.endswith("/kernel") and v.shape[-2] == 3)
    kernel.assign(kernel.numpy()[:, :, ::-1, :])


def verified(name: str, path: str | os.PathLike) -> str | None:
    """None if the file at `path` is the one the weights `name` name (by its hash), else why not."""
    return hash_mismatch(os.fspath(path), entry(name).hash)
