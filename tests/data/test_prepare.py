"""resnet-prepare (`resnet.data.prepare`) writes shards that TFRecordData reads back with the same
images and labels, validates every image once, and leaves only whole shards when a run is killed
or fails; a rerun finishes the job keeping them. TFRecordData trusts the manifest only while it
describes the files matched."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import random_images, run_cases, write_cifar10, write_cifar_batch
from data_files import read_all, write_image_folder, write_shard
from resnet.data import DataError, ImageFolderData, TFRecordData
from resnet.data import prepare as library
from resnet.data.prepare import prepare_cifar, prepare_image_folder
from resnet.storage.files import join

CLASSES = {"cat": ["0.png", "1.jpg", "2.png"], "dog": ["3.jpeg", "4.png"], "eel": ["5.png", "6.JPG", "7.png", "8.png"]}
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ENV = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
ENV.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
# The shim that runs the real binary with each image's write slowed down, so that it can be
# killed mid-write at a moment the test chooses.
SLOW_BINARY = """
import sys, time
sys.argv[0] = "resnet-prepare"
from resnet import prepare
from resnet.data import prepare as library
encoded = library._ImageFolder.encoded
def slowly(self, index):
    time.sleep(0.03)
    return encoded(self, index)
library._ImageFolder.encoded = slowly
prepare.run()
"""


@pytest.fixture
def folder(tmp_path) -> tuple[str, dict[str, np.ndarray]]:
    """An image folder of PNG and JPEG files in three classes, and the PNG images by path."""
    root = str(tmp_path / "images")
    return root, write_image_folder(root, CLASSES)


def parse(path: str) -> list[dict]:
    """The features of each record of a shard, checked to be whole: the records' bytes (with
    their framing) add up to the file's size."""
    records = [record.numpy() for record in tf.data.TFRecordDataset(path)]
    assert sum(len(record) + 16 for record in records) == tf.io.gfile.stat(path).length, path
    parsed = []
    for record in records:
        feature = tf.train.Example.FromString(record).features.feature
        parsed.append(
            {
                key: value.bytes_list.value[0]
                if value.WhichOneof("kind") == "bytes_list"
                else value.int64_list.value[0]
                for key, value in feature.items()
            }
        )
    return parsed


def interleaved(shards: list[list]) -> list:
    """The records of `shards` in TFRecordData's order: one from each shard in turn."""
    return [shard[i] for i in range(max(map(len, shards))) for shard in shards if i < len(shard)]


def listdir(directory: str) -> list[str]:
    return sorted(tf.io.gfile.listdir(directory))


def read(path) -> bytes:
    with tf.io.gfile.GFile(str(path), "rb") as file:
        return file.read()


def manifest_of(prefix: str) -> dict:
    return json.loads(read(prefix + ".manifest.json"))


def test_image_folder_round_trips_bit_for_bit_through_tfrecord_data(folder, location, capsys):
    root, pngs = folder
    prefix = join(location, "train")
    split = prepare_image_folder(root, prefix, shards=3, progress="lines")
    names = [f"train-0000{i}-of-00003" for i in range(3)]
    assert split.shards == tuple(join(location, name) for name in names)
    assert split.pattern == join(location, "train-*-of-00003")
    assert split.manifest == prefix + ".manifest.json"
    assert (split.num_examples, split.class_names, split.skipped, split.kept) == (9, ("cat", "dog", "eel"), (), ())
    assert list(split.class_names) == ImageFolderData(root, root).class_names
    # Exactly the shards and the manifest: no progress file, no temporary file left.
    assert listdir(location) == [*names, "train.manifest.json"]
    printed = capsys.readouterr().out
    assert "Checking 9 images...\n" in printed and "  9/9\n" in printed
    assert "Writing 3 shards of 9 images...\n" in printed and printed.count("/9\n") >= 3

    shards = [parse(path) for path in split.shards]
    assert [len(records) for records in shards] == [3, 3, 3]
    files = {}
    for record in (record for records in shards for record in records):
        filename = record["image/filename"].decode()
        class_name, _ = filename.split("/")
        source = read(os.path.join(root, filename))
        assert record["image/encoded"] == source  # copied, never re-encoded
        assert record["image/format"] == (b"png" if filename.endswith(".png") else b"jpeg")
        assert record["image/class/text"] == class_name.encode()
        assert record["image/class/label"] == split.class_names.index(class_name)
        files[filename] = source
    assert sorted(files) == sorted(f"{c}/{f}" for c, files_of_c in CLASSES.items() for f in files_of_c)

    manifest = manifest_of(prefix)
    assert manifest["class_names"] == ["cat", "dog", "eel"] and manifest["skipped"] == []
    assert manifest["source"] == {"kind": "image_folder", "path": root} and manifest["seed"] == 0
    assert manifest["shards"] == [
        {"file": name, "records": 3, "bytes": tf.io.gfile.stat(join(location, name)).length} for name in names
    ]
    assert manifest["num_examples"] == sum(entry["records"] for entry in manifest["shards"]) == 9

    again = prepare_image_folder(root, prefix, shards=3, progress="none")  # on ram:// too, a rerun keeps all
    assert again.kept == split.shards and listdir(location) == [*names, "train.manifest.json"]

    source = TFRecordData(train_files=split.pattern, eval_files=join(location, "train-*"), num_classes=3)
    assert source.num_examples("train") == source.num_examples("eval") == 9  # from the manifest: no counting
    assert source.class_names == ["cat", "dog", "eel"]
    images, labels = read_all(source, "train")
    expected = interleaved(shards)
    assert len(images) == len(expected) == 9
    for image, label, record in zip(images, labels, expected, strict=True):
        path = os.path.join(root, record["image/filename"].decode())
        if path.endswith(".png"):
            np.testing.assert_array_equal(image, pngs[path])  # the pixels written, bit for bit
        else:
            np.testing.assert_array_equal(image, tf.io.decode_jpeg(read(path)).numpy())
        assert label == record["image/class/label"]


def test_the_assignment_depends_only_on_listing_seed_and_shard_count(folder, tmp_path):
    root, _ = folder
    contents = {}
    for name, seed, workers in (("a", 0, 1), ("b", 0, 3), ("c", 1, 2)):
        split = prepare_image_folder(
            root, str(tmp_path / name / "train"), 3, seed=seed, workers=workers, progress="none"
        )
        contents[name] = [read(path) for path in split.shards]
    assert contents["a"] == contents["b"]  # the number of threads changes nothing
    assert contents["a"] != contents["c"]


def cifar_meta(path, key: bytes, names: list[str]) -> None:
    with open(path, "wb") as file:
        pickle.dump({key: [name.encode() for name in names], b"num_vis": 3072}, file, protocol=2)


def test_cifar10_batches_round_trip_as_png_with_class_names_from_batches_meta(tmp_path):
    cifar_dir = tmp_path / "cifar-10-batches-py"
    written = write_cifar10(cifar_dir, per_batch=2)
    cifar_meta(cifar_dir / "batches.meta", b"label_names", CIFAR10_NAMES)
    out = tmp_path / "out"
    train = prepare_cifar(str(cifar_dir), "train", str(out / "train"), shards=3, progress="none")
    evaluation = prepare_cifar(str(cifar_dir), "test", str(out / "eval"), shards=1, progress="none")
    assert (train.num_examples, evaluation.num_examples) == (10, 2)
    assert train.class_names == evaluation.class_names == tuple(CIFAR10_NAMES)
    assert manifest_of(str(out / "eval"))["source"]["split"] == "eval"  # 'test' is the eval split

    shards = [parse(path) for path in train.shards]
    for record in (record for records in shards for record in records):
        batch, row = record["image/filename"].decode().split(":")
        index = (int(batch.rsplit("_", 1)[1]) - 1) * 2 + int(row)  # data_batch_1:0 is the first image
        assert record["image/format"] == b"png"
        np.testing.assert_array_equal(tf.io.decode_png(record["image/encoded"]).numpy(), written["train"][0][index])
        assert record["image/class/label"] == written["train"][1][index]
        assert record["image/class/text"] == CIFAR10_NAMES[written["train"][1][index]].encode()
    assert sorted(record["image/filename"] for records in shards for record in records) == sorted(
        f"data_batch_{b}:{r}".encode() for b in range(1, 6) for r in range(2)
    )

    source = TFRecordData(train.pattern, evaluation.pattern, num_classes=10)
    assert (source.num_examples("train"), source.num_examples("eval"), source.class_names) == (10, 2, CIFAR10_NAMES)
    both = TFRecordData([train.pattern, evaluation.pattern], evaluation.pattern, num_classes=10)
    assert (both.num_examples("train"), both.class_names) == (12, CIFAR10_NAMES)  # one manifest per prefix
    images, labels = read_all(source, "train")
    expected = interleaved(shards)
    np.testing.assert_array_equal(
        np.stack(images), np.stack([tf.io.decode_png(r["image/encoded"]).numpy() for r in expected])
    )
    np.testing.assert_array_equal(labels, [r["image/class/label"] for r in expected])
    eval_images, eval_labels = read_all(source, "eval")
    order = [int(r["image/filename"].decode().split(":")[1]) for r in parse(evaluation.shards[0])]
    np.testing.assert_array_equal(np.stack(eval_images), np.stack(written["eval"][0])[order])
    np.testing.assert_array_equal(eval_labels, np.array(written["eval"][1])[order])


def test_cifar100_fine_labels_and_names_and_numbers_without_a_meta_file(tmp_path, capsys):
    train, test = random_images(4, seed=1), random_images(2, seed=2)
    write_cifar_batch(tmp_path / "train", train, [0, 99, 50, 7], label_key=b"fine_labels", coarse_labels=[0, 1, 2, 3])
    write_cifar_batch(tmp_path / "test", test, [5, 6], label_key=b"fine_labels", coarse_labels=[0, 1])
    unnamed = prepare_cifar(str(tmp_path), "eval", str(tmp_path / "unnamed" / "eval"), 1, num_classes=100)
    assert unnamed.class_names == tuple(str(label) for label in range(100))
    fine = [f"fine{label}" for label in range(100)]
    cifar_meta(tmp_path / "meta", b"fine_label_names", fine)
    capsys.readouterr()
    split = prepare_cifar(str(tmp_path), "train", str(tmp_path / "out" / "train"), 2, num_classes=100, progress="bar")
    assert split.class_names == tuple(fine)
    printed = capsys.readouterr().out
    assert printed.startswith("Writing 2 shards of 4 images...\n") and "4/4" in printed  # keras' Progbar
    records = [record for path in split.shards for record in parse(path)]
    by_row = {int(r["image/filename"].decode().split(":")[1]): r for r in records}
    assert sorted(by_row) == [0, 1, 2, 3] and {r["image/filename"].split(b":")[0] for r in records} == {b"train"}
    for row, label in enumerate([0, 99, 50, 7]):
        np.testing.assert_array_equal(tf.io.decode_png(by_row[row]["image/encoded"]).numpy(), train[row])
        assert (by_row[row]["image/class/label"], by_row[row]["image/class/text"]) == (label, f"fine{label}".encode())


def test_a_corrupt_image_stops_the_call_naming_it_and_nothing_is_written(folder, tmp_path):
    root, _ = folder
    with open(os.path.join(root, "dog", "broken.jpg"), "wb") as file:
        file.write(b"\xff\xd8\xff not a whole JPEG")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"images/dog/broken\.jpg: cannot be decoded \(.+\)\. Nothing was written.*"):
        prepare_image_folder(root, str(out / "train"), 2, progress="none")
    assert not out.exists()


def test_skip_corrupt_leaves_corrupt_images_out_and_lists_them(folder, tmp_path):
    root, _ = folder
    with open(os.path.join(root, "dog", "broken.jpg"), "wb") as file:
        file.write(b"\xff\xd8\xff not a whole JPEG")
    with open(os.path.join(root, "eel", "empty.png"), "wb"):
        pass
    prefix = str(tmp_path / "out" / "train")
    split = prepare_image_folder(root, prefix, 3, skip_corrupt=True, progress="none")
    assert [file for file, _ in split.skipped] == ["dog/broken.jpg", "eel/empty.png"]
    assert all(reason for _, reason in split.skipped)
    assert split.num_examples == 9 and split.class_names == ("cat", "dog", "eel")
    filenames = [r["image/filename"] for path in split.shards for r in parse(path)]
    assert len(filenames) == 9 and b"dog/broken.jpg" not in filenames and b"eel/empty.png" not in filenames
    manifest = manifest_of(prefix)
    assert [(entry["file"], entry["error"]) for entry in manifest["skipped"]] == list(split.skipped)
    assert {entry["shard"] for entry in manifest["skipped"]} <= {f"train-0000{i}-of-00003" for i in range(3)}
    assert sum(entry["records"] for entry in manifest["shards"]) == manifest["num_examples"] == 9
    assert TFRecordData(split.pattern, split.pattern, num_classes=3).num_examples("train") == 9
    # A rerun keeps everything, and still lists what the shards leave out.
    again = prepare_image_folder(root, prefix, 3, skip_corrupt=True, progress="none")
    assert again.kept == split.shards and again.skipped == split.skipped
    # One image a shard: the corrupt images' shards are empty, and read as such.
    single = prepare_image_folder(root, str(tmp_path / "single" / "train"), 11, skip_corrupt=True, progress="none")
    assert (
        sorted(entry["records"] for entry in manifest_of(str(tmp_path / "single" / "train"))["shards"])
        == [0, 0] + [1] * 9
    )
    source = TFRecordData(single.pattern, single.pattern, num_classes=3)
    assert source.num_examples("train") == 9 and len(read_all(source, "train")[0]) == 9


@pytest.mark.parametrize("error", [OSError("the disk is on fire"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_a_failed_write_keeps_the_finished_shards_and_a_rerun_writes_only_the_rest(
    folder, tmp_path, monkeypatch, error
):
    root, _ = folder
    reference = prepare_image_folder(root, str(tmp_path / "reference" / "train"), 3, progress="none")
    failing = parse(reference.shards[1])[1]["image/filename"].decode()  # an image of the second shard
    out = tmp_path / "out"
    prefix = str(out / "train")
    encoded = library._ImageFolder.encoded

    def broken(self, index):
        if self.keys[index] == failing:
            raise error
        return encoded(self, index)

    monkeypatch.setattr(library._ImageFolder, "encoded", broken)
    with pytest.raises(type(error)):
        prepare_image_folder(root, prefix, 3, workers=1, progress="none")  # one thread: shard by shard, in order
    # The first shard is whole and recorded; the failing one's temporary file is gone. (The third
    # shard, begun by the thread once the second failed, is stopped, or recorded if it got finished.)
    progress = json.loads((out / "train.progress.json").read_text())
    listed = [entry["file"] for entry in progress["shards"]]
    assert listed[0] == "train-00000-of-00003" and "train-00001-of-00003" not in listed
    assert sorted(os.listdir(out)) == [*listed, "train.progress.json"]  # no temporary file, no manifest
    for name in listed:
        assert read(out / name) == read(tmp_path / "reference" / name)
    # Without a manifest the shards are read as any shards: their records are counted.
    partial = TFRecordData(str(out / "train-*"), str(out / "train-*"), num_classes=3)
    assert (partial.num_examples("train"), partial.class_names) == (None, None)
    finished = os.stat(out / "train-00000-of-00003")

    # What killed calls leave: temporary shards and progress files of the prefix (not another's files).
    for name in (".0123abcd.train-00001-of-00003.tmp", ".deadbeef.train.progress.json.tmp", ".0123abcd.val-00000.tmp"):
        (out / name).write_bytes(b"partial")

    monkeypatch.setattr(library._ImageFolder, "encoded", encoded)
    split = prepare_image_folder(root, prefix, 3, progress="none")
    assert split.kept == tuple(str(out / name) for name in listed)
    (out / ".0123abcd.val-00000.tmp").unlink()
    assert os.stat(out / "train-00000-of-00003").st_mtime_ns == finished.st_mtime_ns  # not written again
    assert sorted(os.listdir(out)) == [f"train-0000{i}-of-00003" for i in range(3)] + ["train.manifest.json"]
    assert [read(path) for path in split.shards] == [read(path) for path in reference.shards]
    assert manifest_of(prefix) == manifest_of(str(tmp_path / "reference" / "train"))


def test_an_interrupted_call_of_other_settings_is_replaced_without_asking(folder, tmp_path, monkeypatch):
    root, _ = folder
    out = tmp_path / "out"
    encoded = library._ImageFolder.encoded

    def broken(self, index):
        if self.keys[index] == "eel/8.png":
            raise OSError("gone")
        return encoded(self, index)

    monkeypatch.setattr(library._ImageFolder, "encoded", broken)
    with pytest.raises(OSError):
        prepare_image_folder(root, str(out / "train"), 9, workers=1, progress="none")
    assert len(os.listdir(out)) > 2  # some of nine shards, and the progress file
    monkeypatch.setattr(library._ImageFolder, "encoded", encoded)
    split = prepare_image_folder(root, str(out / "train"), 2, progress="none")
    assert split.kept == ()
    assert sorted(os.listdir(out)) == ["train-00000-of-00002", "train-00001-of-00002", "train.manifest.json"]


def test_a_rerun_of_a_complete_call_writes_nothing(folder, tmp_path, capsys):
    root, _ = folder
    prefix = str(tmp_path / "out" / "train")
    split = prepare_image_folder(root, prefix, 3, progress="lines")
    before = {path: os.stat(path).st_mtime_ns for path in [*split.shards, split.manifest]}
    capsys.readouterr()
    again = prepare_image_folder(root, prefix, 3, progress="lines")
    assert again == split.__class__(**{**split.__dict__, "kept": split.shards})
    assert {path: os.stat(path).st_mtime_ns for path in before} == before
    assert capsys.readouterr().out == ""  # nothing checked, nothing written


def test_other_settings_on_a_complete_prefix_need_overwrite_which_removes_stale_shards(folder, tmp_path):
    root, _ = folder
    out = tmp_path / "out"
    prefix = str(out / "train")
    prepare_image_folder(root, prefix, 3, progress="none")
    for settings in ({"shards": 2}, {"shards": 3, "seed": 1}):
        with pytest.raises(ValueError, match=r"^`output` '.*out/train' holds a complete split .*overwrite=True"):
            prepare_image_folder(root, prefix, progress="none", **settings)
    assert len(os.listdir(out)) == 4
    split = prepare_image_folder(root, prefix, 2, overwrite=True, progress="none")
    assert split.kept == ()
    assert sorted(os.listdir(out)) == ["train-00000-of-00002", "train-00001-of-00002", "train.manifest.json"]
    source = TFRecordData(str(out / "train-*"), str(out / "train-*"), num_classes=3)
    assert source.num_examples("train") == 9  # `train-*` matches exactly the new shards


def test_shard_files_no_manifest_describes_need_overwrite(folder, tmp_path):
    root, _ = folder
    out = tmp_path / "out"
    out.mkdir()
    write_shard(out / "train-00000-of-00001", [b"x"])
    with pytest.raises(ValueError, match=r"holds shard files that no manifest of resnet-prepare describes: train-0"):
        prepare_image_folder(root, str(out / "train"), 3, progress="none")
    (out / "train.manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"holds a damaged manifest .*not JSON"):
        prepare_image_folder(root, str(out / "train"), 3, progress="none")
    prepare_image_folder(root, str(out / "train"), 3, overwrite=True, progress="none")
    assert sorted(os.listdir(out)) == [f"train-0000{i}-of-00003" for i in range(3)] + ["train.manifest.json"]


def test_bad_arguments_are_refused_before_anything_is_written(folder, tmp_path):
    root, _ = folder
    out = str(tmp_path / "out" / "train")
    for kwargs, message in (
        ({"shards": 0}, r"`shards` must be an integer >= 1; received 0"),
        ({"shards": 10}, r"`shards` is 10, more than the 9 images to write; use at most 9"),
        ({"shards": 2, "progress": "dots"}, r"`progress` must be one of 'auto', 'bar', 'lines', 'none'"),
        ({"shards": 2, "skip_corrupt": 1}, r"`skip_corrupt` must be True or False; received 1"),
        ({"shards": 2, "output": str(tmp_path)}, r"`output` '.*' is a directory; give a prefix .*"),
        ({"shards": 2, "output": str(tmp_path) + "/"}, r"`output` must be a prefix of file names"),
        ({"shards": 2, "output": os.path.join(root, "shards")}, r"lies inside `image_folder`"),
    ):
        with pytest.raises(ValueError, match=message):
            prepare_image_folder(root, kwargs.pop("output", out), progress=kwargs.pop("progress", "none"), **kwargs)
    with pytest.raises(DataError, match=r"`image_folder` '.*nowhere' does not exist"):
        prepare_image_folder(str(tmp_path / "nowhere"), out, 2)
    with pytest.raises(ValueError, match=r"`split` must be one of 'train', 'eval', 'test'; received 'validation'"):
        prepare_cifar(str(tmp_path), "validation", out, 2)
    assert sorted(os.listdir(tmp_path)) == ["images"]


def test_tfrecord_data_ignores_a_manifest_that_does_not_describe_the_files(folder, tmp_path, capfd):
    root, _ = folder
    split = prepare_image_folder(root, str(tmp_path / "out" / "train"), 3, progress="none")
    capfd.readouterr()
    # A pattern that matches some of the shards: the manifest is ignored, with a warning.
    some = TFRecordData(split.shards[0], split.shards[0], num_classes=3)
    assert (some.num_examples("train"), some.class_names) == (None, None)
    warning = capfd.readouterr().err
    assert "train.manifest.json lists 3 shards, but `TFRecordData.train_files` matches 1 files" in warning
    assert "so it is ignored and their records are counted" in warning
    assert len(read_all(some, "train")[0]) == 3
    # A shard replaced since (another size): the manifest is stale, ignored with a warning.
    records = [record.numpy() for record in tf.data.TFRecordDataset(split.shards[1])]
    write_shard(split.shards[1], records[:-1])
    stale = TFRecordData(split.pattern, split.pattern, num_classes=3)
    assert (stale.num_examples("train"), stale.class_names) == (None, None)
    warning = capfd.readouterr().err
    assert f"{split.shards[1]} is " in warning and "the manifest is ignored and the records are counted" in warning
    assert len(read_all(stale, "train")[0]) == 8
    # A manifest that is not one.
    Path(split.manifest).write_text("[]")
    TFRecordData(split.pattern, split.pattern, num_classes=3)
    assert "it holds a JSON list, not an object" in capfd.readouterr().err


def test_manifests_that_name_other_classes_are_refused(folder, tmp_path):
    root, _ = folder
    other = str(tmp_path / "other")
    write_image_folder(other, {"ant": ["0.png"], "bee": ["1.png"], "cow": ["2.png"]})
    train = prepare_image_folder(root, str(tmp_path / "out" / "train"), 1, progress="none")
    evaluation = prepare_image_folder(other, str(tmp_path / "out" / "eval"), 1, progress="none")
    with pytest.raises(DataError, match=r"name different classes: \['cat', 'dog', 'eel'\] and \['ant', 'bee', 'cow'\]"):
        TFRecordData(train.pattern, evaluation.pattern, num_classes=3)


@pytest.mark.slow  # a subprocess that starts TensorFlow
def test_the_binary_reports_flag_mistakes_in_one_line_and_writes_cifar(folder, tmp_path):
    root, _ = folder
    cifar_dir = tmp_path / "cifar"
    written = write_cifar10(cifar_dir, per_batch=1)
    with open(os.path.join(root, "dog", "broken.jpg"), "wb") as file:
        file.write(b"garbage")
    out = tmp_path / "out"
    cases = {
        "neither": (
            [f"--output={out}/x", "--shards=1"],
            "give one source, --image_folder or --cifar_dir; received neither.",
        ),
        "both": (
            [f"--image_folder={root}", f"--cifar_dir={cifar_dir}", f"--output={out}/x", "--shards=1"],
            "give one source, --image_folder or --cifar_dir; received both --image_folder and --cifar_dir.",
        ),
        "no output": (
            [f"--image_folder={root}", "--shards=1"],
            "--output is required, e.g. --output=/data/shards/train.",
        ),
        "no shards": ([f"--image_folder={root}", f"--output={out}/x"], "--shards is required, e.g. --shards=8."),
        "skip cifar": (
            [f"--cifar_dir={cifar_dir}", "--cifar_split=train", "--skip_corrupt", f"--output={out}/x", "--shards=1"],
            "--skip_corrupt applies to --image_folder: CIFAR rows are pixels, never corrupt files.",
        ),
        "no split": (
            [f"--cifar_dir={cifar_dir}", f"--output={out}/x", "--shards=1"],
            "--cifar_dir needs --cifar_split: 'train' or 'eval' ('test').",
        ),
        "cifar flag": (
            [f"--image_folder={root}", "--num_classes=100", f"--output={out}/x", "--shards=1"],
            "--num_classes applies to --cifar_dir, not --image_folder.",
        ),
        "argument": ([f"--image_folder={root}", f"--output={out}/x", "--shards=1", "extra"], "unexpected arguments"),
        "corrupt": (
            [f"--image_folder={root}", f"--output={out}/x", "--shards=1"],
            f"{root}/dog/broken.jpg: cannot be decoded",
        ),
        "cifar": ([f"--cifar_dir={cifar_dir}", "--cifar_split=test", f"--output={out}/eval", "--shards=1"], None),
        "skip": ([f"--image_folder={root}", "--skip_corrupt", f"--output={out}/train", "--shards=2"], None),
    }
    results = run_cases("resnet-prepare", "resnet.prepare", [args for args, _ in cases.values()], ENV, timeout=300)
    outcomes = dict(zip(cases, results, strict=True))
    for case, (_, message) in cases.items():
        outcome = outcomes[case]
        if message is None:
            assert outcome["code"] == 0, (case, outcome)
        else:
            assert outcome["code"] == 2, (case, outcome)
            lines = outcome["stderr"].strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"resnet-prepare: error: {message}"), (case, outcome)
    assert outcomes["cifar"]["stdout"].splitlines()[-3:] == [
        f"1 image of 10 classes in 1 shard: {out}/eval-*-of-00001",
        f"Manifest: {out}/eval.manifest.json",
        f"Read them with TFRecordData.train_files (or eval_files) = '{out}/eval-*-of-00001'",
    ]
    assert "Left out 1 corrupt image:\n  dog/broken.jpg: " in outcomes["skip"]["stdout"]
    assert "9 images of 3 classes in 2 shards:" in outcomes["skip"]["stdout"]
    assert sorted(os.listdir(out)) == [
        "eval-00000-of-00001",
        "eval.manifest.json",
        "train-00000-of-00002",
        "train-00001-of-00002",
        "train.manifest.json",
    ]
    eval_image = parse(str(out / "eval-00000-of-00001"))[0]
    np.testing.assert_array_equal(tf.io.decode_png(eval_image["image/encoded"]).numpy(), written["eval"][0][0])


def finished_shards(progress_file: Path) -> list[str]:
    """The shards a progress file lists (none while it does not exist)."""
    return (
        [entry["file"] for entry in json.loads(progress_file.read_text())["shards"]] if progress_file.exists() else []
    )


def stopped_mid_write(args: list[str], progress_file: Path, shards: int, stop: signal.Signals) -> tuple[int, str]:
    """Runs the binary, slowed down, until the progress file lists `shards` shards, then sends it
    `stop`; returns its exit code and what it wrote to stderr."""
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_BINARY, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
        text=True,
    )
    deadline = time.time() + 240
    try:
        while len(finished_shards(progress_file)) < shards:
            if process.poll() is not None:
                pytest.fail(f"resnet-prepare ended ({process.returncode}) before it could be stopped")
            if time.time() > deadline:
                pytest.fail(f"resnet-prepare did not finish {shards} shards in time")
            time.sleep(0.005)
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, stderr


@pytest.mark.slow
def test_a_run_killed_mid_write_leaves_whole_shards_and_the_same_command_finishes_it(tmp_path):
    root = str(tmp_path / "images")
    write_image_folder(root, {name: [f"{i}.png" for i in range(10)] for name in ("a", "b", "c", "d")})
    reference = prepare_image_folder(root, str(tmp_path / "reference" / "train"), 8, progress="none")
    out = tmp_path / "out"
    args = [f"--image_folder={root}", f"--output={out}/train", "--shards=8", "--workers=1", "--progress=lines"]
    progress_file = out / "train.progress.json"
    # Killed without warning once two shards are finished (five images each, 0.15 s a shard).
    code, _ = stopped_mid_write(args, progress_file, 2, signal.SIGKILL)
    assert code == -signal.SIGKILL
    listed = finished_shards(progress_file)
    names = [f"train-0000{i}-of-00008" for i in range(8)]
    shards = [name for name in os.listdir(out) if name in names]
    assert not (out / "train.manifest.json").exists() and 2 <= len(listed) < 8
    assert set(listed) <= set(shards) and len(shards) < 8
    for name in shards:  # every shard-named file is whole, and what an uninterrupted run writes
        parse(str(out / name))
        assert read(out / name) == read(tmp_path / "reference" / name)
    leftovers = [name for name in os.listdir(out) if name not in shards and name != "train.progress.json"]
    assert all(name.startswith(".") and name.endswith(".tmp") for name in leftovers), leftovers
    # TFRecordData never reads the temporary shard; without a manifest it counts the records.
    partial = TFRecordData(str(out / "train-*"), str(out / "train-*"), num_classes=4)
    assert partial.num_examples("train") is None and len(read_all(partial, "train")[1]) == 5 * len(shards)

    # Ctrl-C in the run that finishes the job: it stops at once, keeping the shards it finished.
    code, stderr = stopped_mid_write(args, progress_file, len(listed) + 1, signal.SIGINT)
    assert code == 130 and stderr.strip().splitlines()[-1] == (
        "resnet-prepare: interrupted: the shards finished so far are kept; run the same command to write the rest."
    ), stderr
    listed = finished_shards(progress_file)
    assert sorted(os.listdir(out)) == [*listed, "train.progress.json"] and len(listed) < 8  # no temporary file

    result = subprocess.run(
        [str(Path(sys.executable).parent / "resnet-prepare"), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    # The shards the progress file listed are kept (one renamed after its last update is written again).
    assert f"40 images of 4 classes in 8 shards ({len(listed)} kept from an earlier run): " in result.stdout
    assert sorted(os.listdir(out)) == [*names, "train.manifest.json"]
    assert [read(out / name) for name in names] == [read(path) for path in reference.shards]
    assert manifest_of(str(out / "train")) == manifest_of(str(tmp_path / "reference" / "train"))
