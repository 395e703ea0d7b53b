"""Image files in one directory per class, listed at construction and decoded in the graph."""

from __future__ import annotations

import os

import gin
import tensorflow as tf

from resnet.data.base import DataError, _check_directory
from resnet.data.corrupt_records import _decode_image, _EncodedImageSource

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _list_images(directory: str) -> list[str]:
    """File names with an image extension directly inside `directory`, sorted; hidden files skipped."""
    return sorted(
        name
        for name in tf.io.gfile.listdir(directory)
        if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
    )


def _list_classes(argument: str, directory: str) -> dict[str, list[str]]:
    """`{class name: sorted image paths}` of an image folder, checked for its layout."""
    _check_directory(argument, directory)
    names = sorted(
        entry.rstrip("/")
        for entry in tf.io.gfile.listdir(directory)
        if not entry.startswith(".") and tf.io.gfile.isdir(os.path.join(directory, entry))
    )
    if not names:
        raise DataError(
            f"`{argument}` {directory!r} has no class subdirectories; expected one directory per class "
            f"holding its images, e.g. {os.path.join(directory, 'cat', '0001.jpg')!r}."
        )
    classes = {
        name: [os.path.join(directory, name, f) for f in _list_images(os.path.join(directory, name))] for name in names
    }
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise DataError(
            f"`{argument}` {directory!r}: no {'/'.join(IMAGE_EXTENSIONS)} files in the class directories {empty}."
        )
    return classes


@gin.configurable(module="resnet")
class ImageFolderData(_EncodedImageSource):
    """Images in one subdirectory per class, e.g. `train/cat/0001.jpg`, `eval/dog/0042.png`.

    Class directory names are sorted to give label indices (`class_names` lists them in that
    order); both splits must have the same classes. Files ending in .jpg, .jpeg or .png (any
    case) directly inside a class directory are read; hidden files (such as macOS `._*` resource
    forks) are ignored. Images are decoded in parallel in the graph; corrupt ones are reported as
    `resnet.data.corrupt_records` describes.

    Args:
        train_dir: Directory of the 'train' split.
        eval_dir: Directory of the 'eval' split.
        skip_corrupt: Drop and count unreadable images instead of failing.

    Example:

    >>> source = ImageFolderData("/data/flowers/train", "/data/flowers/eval")   # doctest: +SKIP
    >>> source.name, source.class_names[:2]                                      # doctest: +SKIP
    ('flowers', ['daisy', 'dandelion'])
    """

    def __init__(self, train_dir: str, eval_dir: str, skip_corrupt: bool = False):
        super().__init__(skip_corrupt)
        train_dir, eval_dir = str(train_dir), str(eval_dir)
        splits = {
            "train": _list_classes("ImageFolderData.train_dir", train_dir),
            "eval": _list_classes("ImageFolderData.eval_dir", eval_dir),
        }
        if splits["train"].keys() != splits["eval"].keys():
            only_train = sorted(splits["train"].keys() - splits["eval"].keys())
            only_eval = sorted(splits["eval"].keys() - splits["train"].keys())
            raise DataError(
                f"The class directories of `ImageFolderData.train_dir` {train_dir!r} and `eval_dir` {eval_dir!r} "
                f"differ: only in train: {only_train}; only in eval: {only_eval}."
            )
        self._class_names = sorted(splits["train"])
        self.num_classes = len(self._class_names)
        self.name = os.path.basename(os.path.dirname(train_dir.rstrip("/\\"))) or "images"
        self._files = {
            split: (
                [path for name in self._class_names for path in classes[name]],
                [label for label, name in enumerate(self._class_names) for _ in classes[name]],
            )
            for split, classes in splits.items()
        }

    @property
    def class_names(self) -> list[str]:
        """The sorted class directory names; `class_names[label]` names a label."""
        return list(self._class_names)

    def _num_examples(self, split: str) -> int:
        return len(self._files[split][0])

    def _records(self, split: str) -> tf.data.Dataset:
        paths, labels = self._files[split]
        # One stream: record i is (0, i, path, label).
        return tf.data.Dataset.from_tensor_slices(
            (
                tf.zeros([len(paths)], tf.int32),
                tf.range(len(paths), dtype=tf.int64),
                paths,
                tf.constant(labels, tf.int32),
            )
        )

    def _decode(self, records: tf.data.Dataset, split: str) -> tf.data.Dataset:
        path_table = tf.constant(self._files[split][0])
        return self._policy(split).decode_in_order(
            records,
            lambda path, label: (_decode_image(tf.io.read_file(path)), label),
            lambda streams, indices: tf.gather(path_table, indices),
        )
