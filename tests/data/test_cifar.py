"""CifarData reads the official python batches it writes here, refuses pickles that would run code,
and names the file of a bad batch."""

import os
import pickle
import re

import numpy as np
import pytest

from conftest import random_images, write_cifar10, write_cifar_batch
from data_files import read_all
from resnet.data import CifarData, DataError


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
        (
            lambda p: p.write_bytes(
                pickle.dumps({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, protocol=2)
            ),
            r"'data' must be a uint8 array of shape \(N, 3072\).*\(2, 3000\)",
        ),
        (lambda p: p.write_bytes(pickle.dumps({b"labels": [0]}, protocol=2)), r"missing key\(s\) \['data'\]"),
        (lambda p: p.write_bytes(pickle.dumps([1, 2], protocol=2)), r"expected a pickled dict"),
        (lambda p: p.write_bytes(open(p, "rb").read()[:100]), r"not a readable CIFAR batch .* or truncated"),
        (lambda p: p.write_bytes(b""), r"not a readable CIFAR batch .* or truncated: Ran out of input"),
    ],
    ids=["label-range", "label-count", "data-shape", "no-data", "not-dict", "truncated", "empty"],
)
def test_cifar_bad_batch_names_the_file(tmp_path, damage, message):
    write_cifar10(tmp_path)
    damage(tmp_path / "test_batch")
    with pytest.raises(DataError, match=r"test_batch: " + message):
        CifarData(str(tmp_path)).examples("eval")


@pytest.mark.parametrize("num_classes, folder", [(10, "data_batch_1"), (10, "test_batch"), (100, "test")])
def test_cifar_refuses_a_directory_in_place_of_a_batch_file(tmp_path, num_classes, folder):
    if num_classes == 10:
        write_cifar10(tmp_path)
    else:
        for name in ("train", "test"):
            write_cifar_batch(tmp_path / name, random_images(1), [3], label_key=b"fine_labels")
    os.remove(tmp_path / folder)
    os.mkdir(tmp_path / folder)
    message = f"is not a cifar{num_classes} directory: '{tmp_path / folder}' is a directory, not a batch file"
    with pytest.raises(DataError, match=re.escape(message)):
        CifarData(str(tmp_path), num_classes=num_classes)


def test_cifar_a_batch_that_cannot_be_read_is_named(tmp_path):
    write_cifar10(tmp_path)
    source = CifarData(str(tmp_path))
    # Replaced after the layout check: the read itself fails, as for a file without read permission.
    os.remove(tmp_path / "test_batch")
    os.mkdir(tmp_path / "test_batch")
    with pytest.raises(DataError, match=r"test_batch: cannot be read: .*[Ii]s a directory"):
        source.examples("eval")


def test_cifar_class_names_come_from_the_meta_file_without_reading_a_batch(tmp_path):
    write_cifar10(tmp_path, per_batch=1)
    assert CifarData(str(tmp_path)).class_names is None  # no batches.meta
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(tmp_path / "batches.meta", "wb") as file:
        pickle.dump({b"label_names": [name.encode() for name in names], b"num_vis": 3072}, file, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / name).write_bytes(b"")  # unreadable: the names must not need the images
    source = CifarData(str(tmp_path))
    assert source.class_names == source.read_class_names() == names
    with pytest.raises(DataError, match=r"test_batch: not a readable CIFAR batch"):
        source.examples("eval")
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"one"]}, protocol=2))
    with pytest.raises(DataError, match=r"batches.meta: 'label_names' must be a list of 10 class names; found 1 items"):
        _ = CifarData(str(tmp_path)).class_names
