"""The table of published ImageNet weights (`weights.json`, data shipped with the package).

A name is `<config>.<tag>`: the shipped config the weights load into, then the publisher's tag,
timm's scheme for all three publishers: `resnet50.tv_in1k` / `resnet50.tv2_in1k` (torchvision's
`IMAGENET1K_V1` / `V2`), `keras_resnet50.imagenet` (keras.applications' `weights="imagenet"`),
`resnet50d.ra2_in1k` (timm's own tag). Each entry records where its facts come from.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

from resnet.pretrained.download import check_hash_spec

FORMATS = ("torch", "keras")
INTERPOLATIONS = ("bilinear", "bicubic")
CHANNELS = ("rgb", "bgr")
_FIELDS = (
    "config",
    "publisher",
    "publisher_name",
    "format",
    "url",
    "hash",
    "hash_source",
    "classes",
    "preprocessing",
    "top1",
    "top5",
    "metrics_source",
    "source",
    "licence",
    "licence_source",
)
_PREPROCESSING = ("resize", "crop", "interpolation", "channels", "mean", "std")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One published set of weights; the fields of `weights.json`."""

    name: str
    config: str
    publisher: str
    publisher_name: str
    format: str
    url: str
    hash: str | None
    hash_source: str
    classes: int
    preprocessing: Mapping[str, Any]
    top1: float | None
    top5: float | None
    metrics_source: str
    source: str
    licence: str
    licence_source: str
    notes: str = ""


def check_entry(name: str, fields: Mapping[str, Any]) -> Entry:
    """An `Entry` from one item of the table, or a `ValueError` naming the entry and the field."""

    def problem(what: str) -> ValueError:
        return ValueError(f"weights.json: entry {name!r}: {what}.")

    missing = [field for field in _FIELDS if field not in fields]
    unknown = sorted(set(fields) - set(_FIELDS) - {"notes"})
    if missing or unknown:
        raise problem(f"missing fields {missing}, unknown fields {unknown}")
    if not name.startswith(f"{fields['config']}."):
        raise problem(f"the name must be '<config>.<tag>' with config {fields['config']!r}")
    if fields["format"] not in FORMATS:
        raise problem(f"'format' must be one of {FORMATS}; found {fields['format']!r}")
    if not str(fields["url"]).startswith("https://"):
        raise problem(f"'url' must be an https:// URL; found {fields['url']!r}")
    try:
        check_hash_spec(fields["hash"], "hash")
    except ValueError as error:
        raise problem(str(error)) from None
    if isinstance(fields["classes"], bool) or not isinstance(fields["classes"], int) or fields["classes"] < 1:
        raise problem(f"'classes' must be a positive integer; found {fields['classes']!r}")
    prep = fields["preprocessing"]
    if not isinstance(prep, Mapping) or sorted(prep) != sorted(_PREPROCESSING):
        raise problem(f"'preprocessing' must have exactly the keys {list(_PREPROCESSING)}; found {prep!r}")
    sizes = (prep["crop"], prep["resize"])
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in sizes) or not 0 < sizes[0] <= sizes[1]:
        raise problem(f"'preprocessing' needs integers 0 < crop <= resize; found {prep!r}")
    if prep["interpolation"] not in INTERPOLATIONS or prep["channels"] not in CHANNELS:
        raise problem(f"'preprocessing' interpolation must be one of {INTERPOLATIONS}, channels one of {CHANNELS}")
    for key in ("mean", "std"):
        values = prep[key]
        if not (isinstance(values, list) and len(values) == 3 and all(isinstance(v, (int, float)) for v in values)):
            raise problem(f"'preprocessing.{key}' must be 3 numbers; found {values!r}")
    for key in ("top1", "top5"):
        if fields[key] is not None and not (isinstance(fields[key], (int, float)) and 0 < fields[key] <= 100):
            raise problem(f"'{key}' must be a percentage or null; found {fields[key]!r}")
    for key in ("publisher", "publisher_name", "hash_source", "metrics_source", "source", "licence", "licence_source"):
        if not isinstance(fields[key], str) or not fields[key]:
            raise problem(f"'{key}' must be a non-empty string")
    return Entry(name=name, **fields)


@functools.cache
def entries() -> dict[str, Entry]:
    """Every entry of the shipped `weights.json`, by name."""
    text = resources.files(__package__).joinpath("weights.json").read_text(encoding="utf-8")
    return {name: check_entry(name, fields) for name, fields in json.loads(text).items()}


def entry(name: str) -> Entry:
    """The entry called `name`, or a `ValueError` listing close names."""
    known = entries()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"Unknown pretrained weights {name!r}.{hint} resnet.available_weights() lists the {len(known)} names."
        )
    return known[name]


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, in label order (torchvision's list)."""
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())
