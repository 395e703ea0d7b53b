"""The corrupt-record policy across the groups of 32 records `decode` announces: a run of
unreadable files is named in one report wherever the groups split it, or skipped and counted."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

from data_files import read_all, write_image_folder
from resnet.data import ImageFolderData

FILES = [f"{i:02d}.png" for i in range(70)]  # three groups: 0-31, 32-63, 64-69 and the end marker


@pytest.mark.parametrize(
    "corrupt, first_run",
    [
        ((31, 32), (31, 32)),  # the last record of a group and the first of the next
        (tuple(range(32, 64)), tuple(range(32, 64))),  # a whole group
        ((0, 31, 63, 64, 69), (0,)),  # the first, either side of both boundaries, the last
    ],
    ids=["across-a-boundary", "whole-group", "scattered"],
)
def test_runs_of_corrupt_files_are_named_whole_or_skipped_and_counted(tmp_path, corrupt, first_run):
    written = write_image_folder(tmp_path, {"digits": FILES})
    paths = [os.path.join(tmp_path, "digits", name) for name in FILES]
    for i in corrupt:
        with open(paths[i], "wb") as file:
            file.write(b"\x89PNG\r\n\x1a\n cut short")
    names = ", ".join(paths[i] for i in first_run)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=re.escape(f"could not read or decode {names} (TensorFlow")
    ):
        read_all(ImageFolderData(str(tmp_path), str(tmp_path)), "train")
    source = ImageFolderData(str(tmp_path), str(tmp_path), skip_corrupt=True)
    images, labels = read_all(source, "train")
    kept = [path for i, path in enumerate(paths) if i not in corrupt]
    assert len(images) == len(kept) and (labels == 0).all()
    for image, path in zip(images, kept, strict=True):
        np.testing.assert_array_equal(image, written[path])
    assert source.skipped_count("train") == len(corrupt)
