"""ImageFolderData reads one directory per class, checks the layout, and names a corrupt file."""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import random_images
from data_files import encode, read_all, write_image_folder
from resnet.data import DataError, ImageFolderData


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
