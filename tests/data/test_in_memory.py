"""DigitsData and SyntheticData: the data that needs no files, fixed by its seed."""

import numpy as np
import pytest
import tensorflow as tf

from data_files import read_all
from resnet.data import DigitsData, SyntheticData


def test_digits_split_is_stratified_deterministic_and_covers_all_1797():
    from sklearn.datasets import load_digits

    source = DigitsData()
    assert (source.name, source.num_classes, source.class_names) == ("digits", 10, list("0123456789"))
    train, evaluation = source.examples("train"), source.examples("eval")
    assert train.element_spec[0] == tf.TensorSpec([32, 32, 3], tf.uint8)
    train_labels = np.array([int(label) for _, label in train])
    eval_labels = np.array([int(label) for _, label in evaluation])
    assert (
        (len(train_labels), len(eval_labels))
        == (1437, 360)
        == (source.num_examples("train"), source.num_examples("eval"))
    )
    all_counts = np.bincount(load_digits().target, minlength=10)
    np.testing.assert_allclose(np.bincount(eval_labels, minlength=10), all_counts * 0.2, atol=1)
    again = DigitsData()
    for split in ("train", "eval"):
        for (a, la), (b, lb) in zip(source.examples(split).take(20), again.examples(split).take(20), strict=True):
            np.testing.assert_array_equal(a, b)
            assert int(la) == int(lb)
    other = np.array([int(label) for _, label in DigitsData(seed=1).examples("eval")])
    assert not np.array_equal(other, eval_labels)


def test_digits_images_are_the_scaled_digits_resized_on_three_equal_channels():
    from sklearn.datasets import load_digits

    digits = load_digits()
    scaled = np.round(digits.images * 255 / 16).astype(np.uint8)  # 0..16 -> 0..255
    index_of = {image.tobytes(): i for i, image in enumerate(scaled)}
    indices = []
    for image, label in DigitsData(image_size=8).examples("train").take(30):
        i = index_of[image.numpy()[..., 0].tobytes()]  # at size 8 the resize is an exact copy
        assert int(label) == digits.target[i]
        indices.append(i)
    assert indices == sorted(indices)  # the dataset's own order
    big = next(iter(DigitsData().examples("eval")))[0].numpy()
    assert big.shape == (32, 32, 3) and big.max() > 200
    np.testing.assert_array_equal(big[..., 0], big[..., 2])
    with pytest.raises(ValueError, match=r"`validation_fraction` must be a number in \(0, 1\); received 1.5"):
        DigitsData(validation_fraction=1.5)
    with pytest.raises(ValueError, match=r"`validation_fraction` 0.001 leaves a split with fewer examples"):
        DigitsData(validation_fraction=0.001)


def test_synthetic_data_is_deterministic_and_differs_by_seed_and_split():
    source = SyntheticData(train_examples=5, eval_examples=3, image_size=16, num_classes=7)
    assert (source.name, source.num_classes, source.num_examples("train"), source.num_examples("eval")) == (
        "synthetic",
        7,
        5,
        3,
    )
    assert source.class_names is None  # random labels have no names
    images, labels = read_all(source, "train")
    assert len(images) == 5 and images[0].shape == (16, 16, 3) and set(labels) <= set(range(7))
    same, same_labels = read_all(
        SyntheticData(train_examples=5, eval_examples=3, image_size=16, num_classes=7), "train"
    )
    np.testing.assert_array_equal(np.stack(images), np.stack(same))
    np.testing.assert_array_equal(labels, same_labels)
    reseeded = read_all(
        SyntheticData(train_examples=5, eval_examples=3, image_size=16, num_classes=7, seed=1), "train"
    )[0]
    assert not np.array_equal(np.stack(images), np.stack(reseeded))
    assert not np.array_equal(images[0], read_all(source, "eval")[0][0])
    assert len(np.unique(np.stack(images))) > 200  # spread over the uint8 range
