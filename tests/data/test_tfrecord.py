"""TFRecordData reads ImageNet-format shards it writes here, in interleaved order, and names the
shard and record of a corrupt image, a bad label or a damaged shard."""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import random_images
from data_files import encode, example, read_all, write_shard
from resnet.data import DataError, TFRecordData


def write_shards(directory, fmt: str = "png", shards: int = 2, per_shard: int = 3, offset: int = 0, prefix="train"):
    """Shards of images of varied sizes; returns {(shard, record): (image, stored label)}."""
    written = {}
    for s in range(shards):
        records = []
        for r in range(per_shard):
            image = random_images(1, 8 + r, 12 + s, seed=10 * s + r)[0]
            label = (s * per_shard + r) % 5 + offset
            records.append(example(encode(image, fmt), label))
            written[(s, r)] = (image, label)
        write_shard(os.path.join(directory, f"{prefix}-{s:05d}-of-{shards:05d}"), records)
    return written


def test_tfrecord_png_shards_read_exact_pixels_in_interleaved_order(tmp_path):
    written = write_shards(tmp_path, "png", shards=2, per_shard=3)
    write_shards(tmp_path, "png", shards=1, per_shard=2, prefix="validation")
    source = TFRecordData(str(tmp_path / "train-*"), [str(tmp_path / "validation-00000-of-00001")], num_classes=5)
    assert (source.name, source.num_classes, source.num_examples("train"), source.class_names) == (
        "tfrecord",
        5,
        None,
        None,  # no manifest names the classes
    )
    images, labels = read_all(source, "train")
    order = [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]  # one record from each shard in turn
    assert len(images) == 6
    for image, label, key in zip(images, labels, order, strict=True):
        np.testing.assert_array_equal(image, written[key][0])
        assert label == written[key][1]
    assert len(read_all(source, "eval")[0]) == 2
    again = read_all(source, "train")[1]
    np.testing.assert_array_equal(again, labels)


def test_tfrecord_jpeg_and_grayscale_images_decode_to_rgb(tmp_path):
    gray = tf.io.encode_png(np.full((5, 7, 1), 77, np.uint8)).numpy()
    write_shard(tmp_path / "a", [example(encode(random_images(1, 20, 30)[0], "jpeg"), 2), example(gray, 0)])
    images, labels = read_all(TFRecordData(str(tmp_path / "a"), str(tmp_path / "a"), num_classes=3), "train")
    assert [image.shape for image in images] == [(20, 30, 3), (5, 7, 3)]
    assert (images[1] == 77).all()
    np.testing.assert_array_equal(labels, [2, 0])


def test_tfrecord_label_offset_and_out_of_range_labels(tmp_path):
    write_shards(tmp_path, shards=1, per_shard=5, offset=1)  # stored 1..5, as build_imagenet_data.py does
    pattern = str(tmp_path / "train-*")
    labels = read_all(TFRecordData(pattern, pattern, num_classes=5, label_offset=1), "train")[1]
    np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4])
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"train-00000-of-00001 \(record 4\): label 5 .*outside \[0, 5\).*`TFRecordData.label_offset = 1`",
    ):
        read_all(TFRecordData(pattern, pattern, num_classes=5), "train")
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"\(record 0\): label -1 \(stored value 1, label_offset 2\)"
    ):
        read_all(TFRecordData(pattern, pattern, num_classes=5, label_offset=2), "train")


def test_a_bad_label_is_an_error_even_when_skipping_and_nothing_is_called_unreadable(tmp_path, capfd):
    write_shards(tmp_path, shards=1, per_shard=5, offset=1)  # record 4 stores 5, outside [0, 5)
    pattern = str(tmp_path / "train-*")
    source = TFRecordData(pattern, pattern, num_classes=5, skip_corrupt=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(record 4\): label 5 .*outside \[0, 5\)"):
        read_all(source, "train")
    assert source.skipped_count() == 0
    assert "could not read" not in capfd.readouterr().err


def test_tfrecord_patterns_that_match_nothing_and_wrong_features(tmp_path):
    write_shards(tmp_path, shards=1)
    with pytest.raises(DataError, match=r"No file matches `TFRecordData.eval_files` '.*validation-\*'"):
        TFRecordData(str(tmp_path / "train-*"), str(tmp_path / "validation-*"), num_classes=5)
    with pytest.raises(DataError, match=r"It is a directory: .* '.*/train-\*'"):
        TFRecordData(str(tmp_path), str(tmp_path / "train-*"), num_classes=5)
    with pytest.raises(ValueError, match=r"`TFRecordData.train_files` must be a glob pattern or a non-empty list"):
        TFRecordData([], str(tmp_path / "train-*"), num_classes=5)
    write_shard(tmp_path / "tfds-style", [example(b"", 0, image_key="image", label_key="label")])
    with pytest.raises(
        DataError, match=r"tfds-style: expected ImageNet-format Examples .* features 'image' \(bytes_list\), 'label'"
    ):
        TFRecordData(str(tmp_path / "tfds-style"), str(tmp_path / "train-*"), num_classes=5)


def test_tfrecord_corrupt_image_fails_naming_shard_and_record_or_is_skipped(tmp_path):
    good = encode(random_images(1, 6, 6)[0], "png")
    records = [example(good, 0), example(b"\x89PNG\r\n\x1a\n not really", 1), example(good, 2), example(b"junk", 3)]
    write_shard(tmp_path / "shard", records)
    path = str(tmp_path / "shard")
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"could not read or decode .*shard \(record 1\).*skip_corrupt = True"
    ):
        read_all(TFRecordData(path, path, num_classes=4), "train")
    source = TFRecordData(path, path, num_classes=4, skip_corrupt=True)
    np.testing.assert_array_equal(read_all(source, "train")[1], [0, 2])
    assert (source.skipped_count("train"), source.skipped_count("eval"), source.skipped_count()) == (2, 0, 2)


def record_starts(path) -> list[int]:
    """Byte offsets at which the records of a TFRecord file start (each is framed by 16 bytes)."""
    lengths = [len(r.numpy()) + 16 for r in tf.data.TFRecordDataset(str(path))]
    return list(np.cumsum([0] + lengths[:-1]))


def cut_data(data: bytes, starts: list[int]) -> bytes:
    return data[: len(data) - 30]


def cut_header(data: bytes, starts: list[int]) -> bytes:
    return data[: starts[-1] + 5]  # TFRecordDataset reads this as a clean end of file


def flip_byte(data: bytes, starts: list[int]) -> bytes:
    damaged = bytearray(data)
    damaged[starts[1] + 20] ^= 0xFF  # in record 1's image: its CRC no longer matches
    return bytes(damaged)


@pytest.mark.parametrize("damage, record, kept", [(cut_data, 2, 5), (cut_header, 2, 5), (flip_byte, 1, 4)])
def test_damaged_tfrecord_shard_fails_naming_it_or_keeps_the_records_before(tmp_path, damage, record, kept):
    write_shards(tmp_path, shards=2, per_shard=3)
    shard = tmp_path / "train-00001-of-00002"
    shard.write_bytes(damage(shard.read_bytes(), record_starts(shard)))
    pattern = str(tmp_path / "train-*")
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=rf"could not read .*train-00001-of-00002 \(record {record}\) or any record after it: the file is",
    ):
        read_all(TFRecordData(pattern, pattern, num_classes=5), "train")
    source = TFRecordData(pattern, pattern, num_classes=5, skip_corrupt=True)
    assert len(read_all(source, "train")[0]) == kept
    assert source.skipped_count("train") == 1
    read_all(source, "train")
    assert source.skipped_count("train") == 2  # counted each time it is read
