"""Every entry of the shipped weights table: config, URL shape, hash format, preprocessing.

The files themselves cannot be downloaded here; `tests/pretrained/test_downloads.py` checks the
download, cache and loading with files served from 127.0.0.1.
"""

import json
import os
import re
import urllib.parse
from importlib import resources

import gin
import pytest

import resnet
from resnet import pretrained
from resnet.config import parse
from resnet.pretrained import table

# Publisher -> (URL pattern with the file name's hash, if any, in group "digest"; hash algorithm).
URLS = {
    "torchvision": (r"https://download\.pytorch\.org/models/[a-z0-9_]+-(?P<digest>[0-9a-f]{8})\.pth", "sha256"),
    "timm": (
        r"https://github\.com/(rwightman|huggingface)/pytorch-image-models/releases/download/"
        r"v0\.1-[a-z-]+/[a-z0-9_]+-(?P<digest>[0-9a-f]{8})\.pth",
        "sha256",
    ),
    "keras.applications": (
        r"https://storage\.googleapis\.com/tensorflow/keras-applications/resnet/"
        r"resnet(50|101|152)(v2)?_weights_tf_dim_ordering_tf_kernels\.h5",
        "md5",
    ),
}
# What each publisher's entries must cover (the list; timm publishes no resnet200 weights).
EXPECTED = {
    "torchvision": {
        f"{model}.tv_in1k"
        for model in (
            "resnet18",
            "resnet34",
            "resnet50",
            "resnet101",
            "resnet152",
            "resnext50_32x4d",
            "wide_resnet50_2",
        )
    }
    | {f"{model}.tv2_in1k" for model in ("resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2")},
    "keras.applications": {f"keras_resnet{depth}{v}.imagenet" for depth in (50, 101, 152) for v in ("", "_v2")},
    "timm": {"resnet50d.ra2_in1k", "seresnet50.a1_in1k", "resnet50_gn.a1h_in1k"},
}


def test_the_table_covers_the_three_publishers():
    names = resnet.available_weights()
    assert names == sorted(names)
    for publisher, expected in EXPECTED.items():
        assert {n for n in names if table.entries()[n].publisher == publisher} == expected, publisher
    assert set(names) == set().union(*EXPECTED.values())
    assert resnet.available_weights("resnet50") == ["resnet50.tv2_in1k", "resnet50.tv_in1k"]


@pytest.mark.parametrize("name", sorted(table.entries()))
def test_each_entry_names_its_config_url_hash_and_preprocessing(name):
    item = table.entries()[name]
    info = resnet.weights_info(name)
    assert {"config", "url", "hash", "preprocessing", "classes", "top1", "source"} <= set(info)
    assert item.config in resnet.available_configs() and name.startswith(item.config + ".")
    gin.clear_config()
    parse([item.config])
    assert gin.query_parameter("ResNet.num_classes") == item.classes == 1000
    gin.clear_config()

    pattern, algorithm = URLS[item.publisher]
    match = re.fullmatch(pattern, item.url)
    assert match, item.url
    assert item.hash.split(":")[0] == algorithm
    if "digest" in match.groupdict():  # torch hub's convention: the file name carries the sha256's start
        assert item.hash == f"sha256:{match['digest']}"
    else:
        assert re.fullmatch(r"md5:[0-9a-f]{32}", item.hash)
    assert item.format == ("keras" if algorithm == "md5" else "torch")

    prep = pretrained.preprocessing(name)
    published = item.preprocessing
    assert prep.recipe == "imagenet" and prep.image_size == published["crop"] == 224
    assert prep.serving_size == (published["resize"], published["resize"])
    assert prep.interpolation == published["interpolation"]
    channels = slice(None, None, -1) if published["channels"] == "bgr" else slice(None)
    assert prep.mean == tuple(published["mean"][channels]) and prep.std == tuple(published["std"][channels])
    assert 60 < item.top1 < 90 and (item.top5 is None or item.top1 < item.top5 < 100)
    for url in (item.source, item.metrics_source, item.licence_source):
        assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+/blob/[0-9a-f]{40}/\S+", url), url
    assert len(pretrained.class_names(name)) == item.classes


def test_file_names_are_unique_so_one_cache_holds_them_all():
    files = [os.path.basename(urllib.parse.urlsplit(item.url).path) for item in table.entries().values()]
    assert len(set(files)) == len(files)


def test_the_class_names_are_torchvisions_imagenet_list():
    names = table.imagenet_class_names()
    assert len(names) == len(set(names)) == 1000
    assert (names[0], names[1], names[207], names[999]) == ("tench", "goldfish", "golden retriever", "toilet tissue")
    assert all(name and name == name.strip() for name in names)


def test_a_malformed_entry_is_refused_naming_the_field():
    fields = json.loads(resources.files("resnet.pretrained").joinpath("weights.json").read_text())["resnet50.tv_in1k"]
    for change, message in [
        ({"hash": "sha256:0676"}, "must be 'sha256:'"),
        ({"url": "http://download.pytorch.org/models/x.pth"}, "'url' must be an https:// URL"),
        ({"format": "onnx"}, "'format' must be one of"),
        ({"classes": 0}, "'classes' must be a positive integer"),
        ({"top1": 176.1}, "'top1' must be a percentage"),
        ({"preprocessing": {**fields["preprocessing"], "crop": 300}}, "0 < crop <= resize"),
        ({"preprocessing": {**fields["preprocessing"], "interpolation": "nearest"}}, "interpolation must be one of"),
        ({"preprocessing": {**fields["preprocessing"], "mean": [1, 2]}}, r"'preprocessing.mean' must be 3 numbers"),
        ({"licence": ""}, "'licence' must be a non-empty string"),
        ({"extra": 1}, r"unknown fields \['extra'\]"),
    ]:
        with pytest.raises(ValueError, match=rf"entry 'resnet50.tv_in1k': .*{message}"):
            table.check_entry("resnet50.tv_in1k", {**fields, **change})
    with pytest.raises(ValueError, match=r"missing fields \['url'\]"):
        table.check_entry("resnet50.tv_in1k", {k: v for k, v in fields.items() if k != "url"})
    with pytest.raises(ValueError, match="the name must be '<config>.<tag>' with config 'resnet50'"):
        table.check_entry("resnet18.tv_in1k", fields)
