"""The strict loader both ecosystems share: all tensors or nothing, and a report of what it did."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from resnet.model import ResNet
from resnet.validation import listing


@dataclasses.dataclass
class LoadReport:
    """What a loader did: `loaded` source tensors, and `skipped` ones (the classifier, if asked).

    Example:

    >>> print(LoadReport("resnet18.npz", loaded=["conv1.weight"], skipped=["fc.bias", "fc.weight"]))
    Loaded 1 tensors from resnet18.npz; skipped fc.bias, fc.weight.
    """

    source: str
    loaded: list[str]
    skipped: list[str]

    def __str__(self) -> str:
        text = f"Loaded {len(self.loaded)} tensors from {self.source}"
        return text + (f"; skipped {', '.join(self.skipped)}" if self.skipped else "") + "."


def _classifier_names(model: ResNet, source_name: Callable[[str], str]) -> set[str]:
    return {source_name(v.path) for v in model.weights if v.path.startswith("classifier/")}


def load_tensors(
    model: ResNet,
    tensors: Mapping[str, np.ndarray],
    source_name: Callable[[str], str],
    convert: Callable[[str, np.ndarray], np.ndarray],
    skip_classifier: bool,
    source: str,
    ignored: Callable[[str], bool] = lambda name: False,
) -> LoadReport:
    """Assigns `tensors` to `model`, all or nothing: the step every ecosystem's loader ends with.

    Args:
        model: The model to load into.
        tensors: Source name -> array.
        source_name: Maps a model variable path (`stage1/block1/conv1/kernel`) to its source name.
        convert: `convert(variable_path, array)` -> the array in this library's layout.
        skip_classifier: Leave the classifier's variables as they are.
        source: How errors and the report name the source (a file, or a model).
        ignored: Source names that may be present without a counterpart.

    Returns:
        A `LoadReport`.

    Raises:
        ValueError: Tensors missing from the source, unused by the model, of the wrong shape,
            not numeric, with values that are not finite in the variable's dtype (NaN, inf, or
            float64 values beyond float32), or a norm's moving variance with negative values;
            all are named, and nothing is loaded then. (Other values are not judged: negative
            scales, zero variances and any means are legitimate.)
    """
    targets = {v.path: v for v in model.weights}
    plan, missing, mismatched, skipped, unusable = {}, [], [], [], []
    for path, variable in targets.items():
        name = source_name(path)
        if path.startswith("classifier/") and skip_classifier:
            if name in tensors:
                skipped.append(name)
            continue
        if name not in tensors:
            missing.append(name)
            continue
        raw = np.asarray(tensors[name])
        if raw.dtype.kind not in "fiu":
            unusable.append((name, f"{name} holds {raw.dtype} values, not numbers"))
            continue
        value = convert(path, raw)
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(
                (name, f"{name} {tuple(raw.shape)} (as {tuple(value.shape)}) for {path} {tuple(variable.shape)}")
            )
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            value = value.astype(variable.dtype)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            count = int(value.size - np.isfinite(value).sum())
            cause = "" if not np.isfinite(raw).all() else f" once cast from {raw.dtype} to {variable.dtype}"
            unusable.append((name, f"{name} has {count} non-finite value(s){cause}"))
            continue
        if path.rsplit("/", 1)[-1] == "moving_variance" and (value < 0).any():
            unusable.append(
                (
                    name,
                    f"{name} has {int((value < 0).sum())} negative value(s), impossible for a "
                    f"variance (the norm would output NaN)",
                )
            )
            continue
        plan[path] = (name, value)
    used = {name for name, _ in plan.values()} | set(skipped) | {name for name, _ in mismatched + unusable}
    unexpected = sorted(
        n
        for n in tensors
        if n not in used and not ignored(n) and not (skip_classifier and n in _classifier_names(model, source_name))
    )
    problems = []
    if unusable:
        problems.append(f"unusable values: {listing([text for _, text in unusable])}")
    if mismatched:
        problems.append(f"shape mismatch: {listing([text for _, text in mismatched])}")
    if missing:
        problems.append(f"missing from the source: {listing(missing)}")
    if unexpected:
        problems.append(f"not used by the model: {listing(unexpected)}")
    if problems:
        hint = (
            " (a different number of classes? pass skip_classifier=True)"
            if any("classifier/" in text for _, text in mismatched)
            else ""
        )
        raise ValueError(
            f"Cannot load {source} into {model.name!r}; nothing was loaded. " + "; ".join(problems) + hint + "."
        )
    for path, (_, value) in plan.items():  # every value checked and cast: the assignments cannot fail part-way
        targets[path].assign(value)
    return LoadReport(source, sorted(name for name, _ in plan.values()), sorted(skipped))
