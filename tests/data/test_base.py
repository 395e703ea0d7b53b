"""DataSource: the two reading stages a subclass gets from `_records` alone, and the split check."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import random_images
from resnet.data import DataSource, SyntheticData


class Squares(DataSource):
    """Four examples held as tensors: records that are examples already, as for arrays in memory."""

    name, num_classes = "squares", 4

    def _records(self, split):
        images = random_images(4, 3, 3, seed=len(split))  # 'train' and 'eval' differ
        return tf.data.Dataset.from_tensor_slices((images, np.arange(4, dtype=np.int32)))

    def _num_examples(self, split):
        return 4


def test_a_source_whose_records_are_examples_needs_only_records_and_num_examples():
    source = Squares()
    labels = [int(label) for _, label in source.examples("train")]
    assert labels == [0, 1, 2, 3] and source.num_examples("eval") == 4
    assert source.class_names is None  # a source that does not name its classes
    reordered = list(source.decode(source.records("eval").shuffle(4, seed=1).skip(1), "eval"))
    expected = list(source.examples("eval").shuffle(4, seed=1).skip(1))
    assert len(reordered) == 3
    for (image, label), (want_image, want_label) in zip(reordered, expected, strict=True):
        np.testing.assert_array_equal(image, want_image)
        assert int(label) == int(want_label)
    with pytest.raises(TypeError, match=r"abstract"):
        type("NoRecords", (DataSource,), {"_num_examples": lambda self, split: 0})()


def test_split_must_be_train_or_eval():
    with pytest.raises(ValueError, match=r"`split` must be one of 'train', 'eval'; received 'test'"):
        SyntheticData().examples("test")
    with pytest.raises(ValueError, match=r"`split`"):
        SyntheticData().num_examples("validation")
    source = Squares()
    for read in (
        source.records,
        source.examples,
        source.num_examples,
        lambda s: source.decode(source.records("train"), s),
    ):
        with pytest.raises(ValueError, match=r"`split` must be one of 'train', 'eval'; received 'validation'"):
            read("validation")
