"""Writers of small image datasets in the formats the sources read, and a reader of a split, shared
by the data tests."""

import os

import numpy as np
import tensorflow as tf

from conftest import random_images
from resnet.data import DataSource


def read_all(source: DataSource, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    images, labels = [], []
    for image, label in source.examples(split):
        assert image.dtype == tf.uint8 and image.shape[-1] == 3 and label.dtype == tf.int32
        images.append(image.numpy())
        labels.append(int(label))
    return images, np.array(labels)


def encode(image: np.ndarray, fmt: str) -> bytes:
    return (tf.io.encode_png if fmt == "png" else tf.io.encode_jpeg)(image).numpy()


def example(encoded: bytes, label: int, image_key="image/encoded", label_key="image/class/label") -> bytes:
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                image_key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                label_key: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
        )
    ).SerializeToString()


def write_shard(path, records: list[bytes]) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


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
