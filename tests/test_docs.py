"""The examples in the public docstrings run and print what they claim; README links resolve."""

import doctest
import importlib

import pytest

MODULES = [
    "resnet",
    "resnet._internals",
    "resnet.config",
    "resnet.flops",
    "resnet.model",
    "resnet.stage",
    "resnet.layers.attention",
    "resnet.layers.blocks",
    "resnet.layers.conv",
    "resnet.layers.normalization",
    "resnet.layers.regularization",
    "resnet.layers.shortcuts",
    "resnet.layers.stems",
    "resnet.data",
    "resnet.data.base",
    "resnet.data.cifar",
    "resnet.data.image_folder",
    "resnet.data.in_memory",
    "resnet.data.pipeline",
    "resnet.data.preprocessing",
    "resnet.data.tfds",
    "resnet.data.tfrecord",
    "resnet.storage.files",
    "resnet.storage.owners",
    "resnet.training.distribution",
    "resnet.training.evaluator",
    "resnet.training.metrics_log",
    "resnet.training.run_directory",
    "resnet.training.run_lock",
    "resnet.training.worker_scratch",
    "resnet.training.schedules",
    "resnet.training.steps",
    "resnet.interop",
    "resnet.interop.core",
    "resnet.interop.keras_applications",
    "resnet.interop.pytorch",
    "resnet.training.finetune",
    "resnet.pretrained",
    "resnet.classifier",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    globs = {"keras": importlib.import_module("keras"), **vars(module)}
    result = doctest.testmod(module, globs=globs, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_every_public_class_has_an_example():
    import resnet

    missing = [
        n
        for n in resnet.__all__
        if isinstance(getattr(resnet, n), type)
        and ">>>" not in (getattr(resnet, n).__doc__ or "")
        and n not in ("ResidualBlock", "Shortcut")
    ]
    assert not missing


def test_readme_links_point_at_files_of_the_checkout():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (root / "README.md").read_text())
    local = [t for t in targets if "://" not in t]
    assert "benchmarks/RESULTS.md" in local and "benchmarks/degradation.png" in local
    assert [t for t in local if not (root / t).is_file()] == []
