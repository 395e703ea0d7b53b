"""TensorFlow Datasets datasets already prepared on local disk; never downloads."""

from __future__ import annotations

import re

import gin
import tensorflow as tf

from resnet.data.base import DataError, DataSource


@gin.configurable(module="resnet")
class TfdsData(DataSource):
    """A TensorFlow Datasets dataset that is already prepared on local disk; never downloads.

    Needs the optional `tensorflow_datasets` package (`pip install 'resnet[tfds]'`). Prepare the
    data once with `tfds build NAME --data_dir DIR` (or `tfds.builder(NAME).download_and_prepare()`)
    where there is a network. Files are read in a fixed order; one-channel images are converted to
    RGB and four-channel ones lose alpha. TFDS decodes images as it reads them, so the records of
    this source are its examples: a pipeline that skips records here still decodes them.

    Args:
        name: TFDS name, optionally with config and version, e.g. "cifar10" or "imagenet2012:5.1.0".
            The source's `name` is this without the version, '/' replaced by '_'.
        data_dir: TFDS data directory; None for TFDS's default (`~/tensorflow_datasets`).
        train_split: TFDS split (or slice, e.g. "train[:90%]") used as 'train'.
        eval_split: TFDS split used as 'eval'.
        image_key: Feature holding the image.
        label_key: `ClassLabel` feature holding the label.

    Example:

    >>> source = TfdsData("cifar10", data_dir="/data/tfds")          # doctest: +SKIP
    >>> source.num_classes, source.num_examples("eval")               # doctest: +SKIP
    (10, 10000)
    """

    def __init__(
        self,
        name: str,
        data_dir: str | None = None,
        train_split: str = "train",
        eval_split: str = "test",
        image_key: str = "image",
        label_key: str = "label",
    ):
        try:
            import tensorflow_datasets as tfds
        except ImportError:
            raise DataError(
                "TfdsData needs the tensorflow_datasets package, which is not installed: pip install 'resnet[tfds]'."
            ) from None
        where = (
            f"data_dir {data_dir!r}" if data_dir else "the default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        )
        try:
            self._builder = tfds.builder(name, data_dir=data_dir)
        except Exception as error:  # tfds raises its own DatasetNotFoundError and others
            raise DataError(f"TFDS has no dataset {name!r} in {where}: {error}") from None
        if not self._builder.data_path.exists():  # what as_dataset checks; is_prepared() is newer than 4.9
            raise DataError(
                f"TFDS dataset {name!r} is not prepared in {where}; TfdsData never downloads. Prepare it "
                f"where there is a network with `tfds build {name} --data_dir DIR` and copy DIR here."
            )
        info = self._builder.info
        for argument, key in (("image_key", image_key), ("label_key", label_key)):
            if key not in info.features:
                raise DataError(
                    f"`TfdsData.{argument}` {key!r} is not a feature of {name!r}; it has {sorted(info.features)}."
                )
        if not hasattr(info.features[label_key], "num_classes"):
            raise DataError(f"`TfdsData.label_key` {label_key!r} of {name!r} is not a ClassLabel feature.")
        self._splits = {"train": train_split, "eval": eval_split}
        for argument, split in (("train_split", train_split), ("eval_split", eval_split)):
            try:
                info.splits[split]
            except (KeyError, ValueError) as error:
                raise DataError(f"`TfdsData.{argument}` {split!r} is not a split of {name!r}: {error}") from None
        self.name = re.sub(r"[^A-Za-z0-9_.-]", "_", name.split(":")[0])
        self.num_classes = int(info.features[label_key].num_classes)
        self._image_key, self._label_key = image_key, label_key

    @property
    def class_names(self) -> list[str] | None:
        """The names of the `label_key` `ClassLabel` in the dataset's info (what TFDS's `int2str`
        gives: "0", "1", ... for a label defined by its count only); None for a feature without names."""
        names = getattr(self._builder.info.features[self._label_key], "names", None)
        return [str(name) for name in names] if names is not None else None

    def _num_examples(self, split: str) -> int:
        return int(self._builder.info.splits[self._splits[split]].num_examples)

    def _records(self, split: str) -> tf.data.Dataset:
        def pair(example):
            image = example[self._image_key]
            gray = tf.equal(tf.shape(image)[-1], 1)
            image = tf.cond(gray, lambda: tf.tile(image, [1, 1, 3]), lambda: image[..., :3])
            return tf.ensure_shape(image, [None, None, 3]), tf.cast(example[self._label_key], tf.int32)

        dataset = self._builder.as_dataset(split=self._splits[split], shuffle_files=False)
        return dataset.map(pair, num_parallel_calls=tf.data.AUTOTUNE)
