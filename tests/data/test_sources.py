"""Data sources read files they write here in the real formats, and fail clearly on bad ones."""

import doctest
import importlib
import os
import pickle
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from conftest import random_images, write_cifar10, write_cifar_batch
from resnet.data import (
    CifarData,
    DataError,
    DataSource,
    DigitsData,
    ImageFolderData,
    SyntheticData,
    TfdsData,
    TFRecordData,
)


def read_all(source: DataSource, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    images, labels = [], []
    for image, label in source.examples(split):
        assert image.dtype == tf.uint8 and image.shape[-1] == 3 and label.dtype == tf.int32
        images.append(image.numpy())
        labels.append(int(label))
    return images, np.array(labels)


def encode(image: np.ndarray, fmt: str) -> bytes:
    return (tf.io.encode_png if fmt == "png" else tf.io.encode_jpeg)(image).numpy()


# CIFAR ------------------------------------------------------------------------------------------


def test_cifar10_reads_pixels_and_labels_of_every_batch(tmp_path):
    written = write_cifar10(tmp_path)
    source = CifarData(str(tmp_path))
    assert (source.name, source.num_classes) == ("cifar10", 10)
    for split, count in (("train", 15), ("eval", 3)):
        images, labels = read_all(source, split)
        assert source.num_examples(split) == count == len(images)
        np.testing.assert_array_equal(np.stack(images), np.stack(written[split][0]))
        np.testing.assert_array_equal(labels, written[split][1])


def test_cifar100_reads_fine_labels_and_str_keys(tmp_path):
    train, test = random_images(4, seed=1), random_images(2, seed=2)
    write_cifar_batch(tmp_path / "train", train, [0, 99, 50, 7], label_key=b"fine_labels", coarse_labels=[0, 19, 9, 1])
    # A file pickled by Python 3 with str keys reads the same.
    with open(tmp_path / "test", "wb") as file:
        pickle.dump({"data": test.transpose(0, 3, 1, 2).reshape(2, 3072), "fine_labels": [5, 6]}, file, protocol=2)
    source = CifarData(str(tmp_path), num_classes=100)
    assert source.name == "cifar100"
    images, labels = read_all(source, "train")
    np.testing.assert_array_equal(np.stack(images), train)
    np.testing.assert_array_equal(labels, [0, 99, 50, 7])
    np.testing.assert_array_equal(np.stack(read_all(source, "eval")[0]), test)


def test_cifar_missing_directory_and_wrong_layout(tmp_path):
    with pytest.raises(DataError, match=r"`CifarData.data_dir` '.*nowhere' does not exist"):
        CifarData(str(tmp_path / "nowhere"))
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataError, match=r"missing \['data_batch_1'.*Did you mean '.*cifar-10-batches-py'"):
        CifarData(str(tmp_path))
    write_cifar_batch(tmp_path / "train", random_images(1), [3], label_key=b"fine_labels")
    write_cifar_batch(tmp_path / "test", random_images(1), [3], label_key=b"fine_labels")
    with pytest.raises(DataError, match=r"looks like CIFAR-100: set `CifarData.num_classes = 100`"):
        CifarData(str(tmp_path))
    with pytest.raises(ValueError, match=r"`num_classes` must be 10 .* or 100 .*; received 20"):
        CifarData(str(tmp_path), num_classes=20)


def test_cifar_refuses_a_pickle_that_would_run_code_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    write_cifar10(tmp_path)
    with open(tmp_path / "data_batch_2", "wb") as file:
        pickle.dump({b"data": Exploit(), b"labels": [0]}, file, protocol=2)
    source = CifarData(str(tmp_path))
    with pytest.raises(DataError, match=r"data_batch_2: refused to unpickle the global '(posix|nt)\.system'"):
        source.examples("train")
    assert not marker.exists()
    assert source.num_examples("eval") == 3  # the other split is unaffected
    with open(tmp_path / "data_batch_2", "rb") as file:
        pickle.load(file)  # the payload is live: a plain unpickler runs it
    assert marker.exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: write_cifar_batch(p, random_images(2), [0, 10]), r"'labels' holds 10, outside \[0, 10\)"),
        (lambda p: write_cifar_batch(p, random_images(2), [0]), r"'labels' must be 2 integers"),
        (lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, protocol=2)),
         r"'data' must be a uint8 array of shape \(N, 3072\).*\(2, 3000\)"),
        (lambda p: p.write_bytes(pickle.dumps({b"labels": [0]}, protocol=2)), r"missing key\(s\) \['data'\]"),
        (lambda p: p.write_bytes(pickle.dumps([1, 2], protocol=2)), r"expected a pickled dict"),
        (lambda p: p.write_bytes(open(p, "rb").read()[:100]), r"not a readable CIFAR batch .* or truncated"),
    ],
    ids=["label-range", "label-count", "data-shape", "no-data", "not-dict", "truncated"],
)
def test_cifar_bad_batch_names_the_file(tmp_path, damage, message):
    write_cifar10(tmp_path)
    damage(tmp_path / "test_batch")
    with pytest.raises(DataError, match=r"test_batch: " + message):
        CifarData(str(tmp_path)).examples("eval")


# Digits and synthetic ---------------------------------------------------------------------------


def test_digits_split_is_stratified_deterministic_and_covers_all_1797():
    from sklearn.datasets import load_digits

    source = DigitsData()
    assert (source.name, source.num_classes) == ("digits", 10)
    train, evaluation = source.examples("train"), source.examples("eval")
    assert train.element_spec[0] == tf.TensorSpec([32, 32, 3], tf.uint8)
    train_labels = np.array([int(label) for _, label in train])
    eval_labels = np.array([int(label) for _, label in evaluation])
    assert (len(train_labels), len(eval_labels)) == (1437, 360) == (source.num_examples("train"), source.num_examples("eval"))
    all_counts = np.bincount(load_digits().target, minlength=10)
    np.testing.assert_allclose(np.bincount(eval_labels, minlength=10), all_counts * 0.2, atol=1)
    again = DigitsData()
    for split in ("train", "eval"):
        for (a, la), (b, lb) in zip(source.examples(split).take(20), again.examples(split).take(20)):
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
        "synthetic", 7, 5, 3,
    )
    images, labels = read_all(source, "train")
    assert len(images) == 5 and images[0].shape == (16, 16, 3) and set(labels) <= set(range(7))
    same, same_labels = read_all(SyntheticData(train_examples=5, eval_examples=3, image_size=16, num_classes=7), "train")
    np.testing.assert_array_equal(np.stack(images), np.stack(same))
    np.testing.assert_array_equal(labels, same_labels)
    reseeded = read_all(SyntheticData(train_examples=5, eval_examples=3, image_size=16, num_classes=7, seed=1), "train")[0]
    assert not np.array_equal(np.stack(images), np.stack(reseeded))
    assert not np.array_equal(images[0], read_all(source, "eval")[0][0])
    assert len(np.unique(np.stack(images))) > 200  # spread over the uint8 range


def test_split_must_be_train_or_eval():
    with pytest.raises(ValueError, match=r"`split` must be one of 'train', 'eval'; received 'test'"):
        SyntheticData().examples("test")
    with pytest.raises(ValueError, match=r"`split`"):
        SyntheticData().num_examples("validation")


# TFRecords --------------------------------------------------------------------------------------


def example(encoded: bytes, label: int, image_key="image/encoded", label_key="image/class/label") -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        image_key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        label_key: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    })).SerializeToString()


def write_shard(path, records: list[bytes]) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


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
    assert (source.name, source.num_classes, source.num_examples("train")) == ("tfrecord", 5, None)
    images, labels = read_all(source, "train")
    order = [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]  # one record from each shard in turn
    assert len(images) == 6
    for image, label, key in zip(images, labels, order):
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
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(record 0\): label -1 \(stored value 1, label_offset 2\)"):
        read_all(TFRecordData(pattern, pattern, num_classes=5, label_offset=2), "train")


def test_tfrecord_patterns_that_match_nothing_and_wrong_features(tmp_path):
    write_shards(tmp_path, shards=1)
    with pytest.raises(DataError, match=r"No file matches `TFRecordData.eval_files` '.*validation-\*'"):
        TFRecordData(str(tmp_path / "train-*"), str(tmp_path / "validation-*"), num_classes=5)
    with pytest.raises(DataError, match=r"It is a directory: .* '.*/train-\*'"):
        TFRecordData(str(tmp_path), str(tmp_path / "train-*"), num_classes=5)
    with pytest.raises(ValueError, match=r"`TFRecordData.train_files` must be a glob pattern or a non-empty list"):
        TFRecordData([], str(tmp_path / "train-*"), num_classes=5)
    write_shard(tmp_path / "tfds-style", [example(b"", 0, image_key="image", label_key="label")])
    with pytest.raises(DataError, match=r"tfds-style: expected ImageNet-format Examples .* features 'image' \(bytes_list\), 'label'"):
        TFRecordData(str(tmp_path / "tfds-style"), str(tmp_path / "train-*"), num_classes=5)


def test_tfrecord_corrupt_image_fails_naming_shard_and_record_or_is_skipped(tmp_path):
    good = encode(random_images(1, 6, 6)[0], "png")
    records = [example(good, 0), example(b"\x89PNG\r\n\x1a\n not really", 1), example(good, 2), example(b"junk", 3)]
    write_shard(tmp_path / "shard", records)
    path = str(tmp_path / "shard")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"could not read or decode .*shard \(record 1\).*skip_corrupt = True"):
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


# Image folders ----------------------------------------------------------------------------------


def write_image_folder(root, classes: dict[str, list[str]], seed: int = 0) -> dict[str, np.ndarray]:
    """Writes root/<class>/<file> for each name; returns the PNG images by path."""
    pngs = {}
    for c, (name, files) in enumerate(classes.items()):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for f, filename in enumerate(files):
            image = random_images(1, 10 + f, 9 + c, seed=seed + 10 * c + f)[0]
            path = os.path.join(root, name, filename)
            fmt = "png" if filename.lower().endswith(".png") else "jpeg"
            with open(path, "wb") as file:
                file.write(encode(image, fmt))
            pngs[path] = image
    return pngs


def test_image_folder_reads_png_and_jpeg_with_sorted_class_labels(tmp_path):
    written = write_image_folder(tmp_path / "pets" / "train", {"dog": ["b.PNG", "a.jpg"], "cat": ["x.Jpeg", "y.png"]})
    write_image_folder(tmp_path / "pets" / "eval", {"cat": ["c.png"], "dog": ["d.jpeg"]})
    (tmp_path / "pets" / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "pets" / "train" / "cat" / "._y.png").write_bytes(b"macOS resource fork")
    (tmp_path / "pets" / "train" / ".cache").mkdir()
    source = ImageFolderData(str(tmp_path / "pets" / "train"), str(tmp_path / "pets" / "eval"))
    assert (source.name, source.num_classes, source.class_names) == ("pets", 2, ["cat", "dog"])
    assert (source.num_examples("train"), source.num_examples("eval")) == (4, 2)
    images, labels = read_all(source, "train")
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    train = tmp_path / "pets" / "train"
    np.testing.assert_array_equal(images[1], written[str(train / "cat" / "y.png")])  # lossless
    np.testing.assert_array_equal(images[3], written[str(train / "dog" / "b.PNG")])
    assert images[0].shape == written[str(train / "cat" / "x.Jpeg")].shape
    np.testing.assert_array_equal(read_all(source, "eval")[1], [0, 1])


def test_image_folder_layout_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match=r"`ImageFolderData.train_dir` '.*missing' does not exist"):
        ImageFolderData(str(tmp_path / "missing"), str(tmp_path))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "0001.png").write_bytes(encode(random_images(1, 4, 4)[0], "png"))
    with pytest.raises(DataError, match=r"`ImageFolderData.train_dir` '.*flat' has no class subdirectories"):
        ImageFolderData(str(tmp_path / "flat"), str(tmp_path / "flat"))
    write_image_folder(tmp_path / "train", {"a": ["1.png"], "b": ["2.png"], "c": []})
    with pytest.raises(DataError, match=r"no .jpg/.jpeg/.png files in the class directories \['c'\]"):
        ImageFolderData(str(tmp_path / "train"), str(tmp_path / "train"))
    os.rmdir(tmp_path / "train" / "c")
    write_image_folder(tmp_path / "eval", {"a": ["1.png"], "d": ["2.png"]})
    with pytest.raises(DataError, match=r"differ: only in train: \['b'\]; only in eval: \['d'\]"):
        ImageFolderData(str(tmp_path / "train"), str(tmp_path / "eval"))


def test_image_folder_corrupt_images_fail_naming_the_file_or_are_skipped_and_counted(tmp_path):
    write_image_folder(tmp_path / "train", {"a": ["1.png", "2.png", "3.png"], "b": ["4.png", "5.png"]})
    (tmp_path / "train" / "a" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (tmp_path / "train" / "b" / "5.png").write_bytes(b"")  # the last file: only the end marker shows it
    train = str(tmp_path / "train")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"could not read or decode .*a/2\.png .*skip_corrupt"):
        read_all(ImageFolderData(train, train), "train")
    source = ImageFolderData(train, train, skip_corrupt=True)
    images, labels = read_all(source, "train")
    np.testing.assert_array_equal(labels, [0, 0, 1])
    assert source.skipped_count("train") == 2 and source.skipped_count("eval") == 0
    assert ImageFolderData(train, train).skipped_count() == 0
    with pytest.raises(ValueError, match=r"`skip_corrupt` must be True or False; received 'yes'"):
        ImageFolderData(train, train, skip_corrupt="yes")


def test_image_folder_last_corrupt_file_is_reported(tmp_path):
    write_image_folder(tmp_path / "t", {"a": ["1.png"], "b": ["2.png"]})
    (tmp_path / "t" / "b" / "2.png").write_bytes(b"not an image")
    path = str(tmp_path / "t")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"b/2\.png"):
        read_all(ImageFolderData(path, path), "eval")
    source = ImageFolderData(path, path)
    os.remove(tmp_path / "t" / "a" / "1.png")  # gone after the listing: reported the same way
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"could not read or decode .*a/1\.png, .*b/2\.png"):
        read_all(source, "train")


# TFDS and gin -----------------------------------------------------------------------------------


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
                {"image": tfds.features.Image(shape=(6, 6, 1)), "label": tfds.features.ClassLabel(num_classes=3)}
            )
            super().__init__(name="tiny_gray", version="1.0.0", split_datasets={"train": split, "test": split.take(1)},
                             features=features, **kwargs)

    with pytest.raises(DataError, match=r"'tiny_gray' is not prepared in data_dir '.*'; TfdsData never downloads"):
        TfdsData("tiny_gray", data_dir=str(tmp_path))
    TinyGray(data_dir=str(tmp_path)).download_and_prepare()
    source = TfdsData("tiny_gray:1.0.0", data_dir=str(tmp_path))
    assert (source.name, source.num_classes, source.num_examples("train"), source.num_examples("eval")) == ("tiny_gray", 3, 3, 1)
    read, labels = read_all(source, "train")
    np.testing.assert_array_equal(np.stack(read), np.repeat(gray, 3, axis=-1))
    np.testing.assert_array_equal(labels, [0, 2, 1])
    with pytest.raises(DataError, match=r"`TfdsData.eval_split` 'validation' is not a split"):
        TfdsData("tiny_gray", data_dir=str(tmp_path), eval_split="validation")


def test_sources_are_gin_configurable(tmp_path):
    write_cifar10(tmp_path, per_batch=1)
    gin.parse_config(f"""
        CifarData.data_dir = '{tmp_path}'
        SyntheticData.image_size = 8
        resnet.DigitsData.image_size = 16
    """)
    assert CifarData().num_examples("train") == 5
    assert SyntheticData().examples("eval").element_spec[0].shape == (8, 8, 3)
    assert DigitsData().examples("eval").element_spec[0].shape == (16, 16, 3)
    gin.parse_config("""
        TFRecordData.label_offset = 1
        resnet.ImageFolderData.skip_corrupt = True
        TfdsData.data_dir = '/data/tfds'
    """)  # gin refuses bindings of unknown configurables or arguments


@pytest.mark.parametrize("name", ["resnet.data", "resnet.data.sources", "resnet.data.preprocessing"])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    assert doctest.testmod(module, globs={"tf": tf, **vars(module)}, optionflags=flags).failed == 0
