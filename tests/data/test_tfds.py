"""TfdsData reads a TFDS dataset prepared here, and never downloads."""

import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import random_images
from data_files import read_all
from resnet.data import DataError, TfdsData


def test_tfds_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(DataError, match=r"pip install 'resnet\[tfds\]'"):
        TfdsData("mnist")


def test_tfds_reads_a_prepared_dataset_and_refuses_an_unprepared_one(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets", reason="the optional tensorflow_datasets is not installed")
    images = random_images(3, 6, 6)
    gray = images[..., :1]

    class TinyGray(tfds.dataset_builders.TfDataBuilder):
        def __init__(self, **kwargs):
            split = tf.data.Dataset.from_tensor_slices({"image": gray, "label": [0, 2, 1]})
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(6, 6, 1)),
                    "label": tfds.features.ClassLabel(names=["cat", "dog", "eel"]),
                }
            )
            super().__init__(
                name="tiny_gray",
                version="1.0.0",
                split_datasets={"train": split, "test": split.take(1)},
                features=features,
                **kwargs,
            )

    with pytest.raises(DataError, match=r"'tiny_gray' is not prepared in data_dir '.*'; TfdsData never downloads"):
        TfdsData("tiny_gray", data_dir=str(tmp_path))
    TinyGray(data_dir=str(tmp_path)).download_and_prepare()
    source = TfdsData("tiny_gray:1.0.0", data_dir=str(tmp_path))
    assert (source.name, source.num_classes, source.num_examples("train"), source.num_examples("eval")) == (
        "tiny_gray",
        3,
        3,
        1,
    )
    assert source.class_names == ["cat", "dog", "eel"]  # from the dataset's info, read back from data_dir
    read, labels = read_all(source, "train")
    np.testing.assert_array_equal(np.stack(read), np.repeat(gray, 3, axis=-1))
    np.testing.assert_array_equal(labels, [0, 2, 1])
    with pytest.raises(DataError, match=r"`TfdsData.eval_split` 'validation' is not a split"):
        TfdsData("tiny_gray", data_dir=str(tmp_path), eval_split="validation")
