"""Files on any TensorFlow file system: paths that may be URIs, whole-file writes, a full disk recognized."""

import errno
import os

import pytest
import tensorflow as tf

from conftest import files_below
from resnet.storage.files import is_storage_full, join, local_path, read_text, write_atomically


def test_join_keeps_the_scheme():
    assert join("ram://x", "a", "b/") == "ram://x/a/b"
    assert join("gs://bucket/", "/run", "best.json") == "gs://bucket/run/best.json"
    assert join("/tmp/run", "best", "best.json") == "/tmp/run/best/best.json"
    assert local_path("file:///tmp/run") == "/tmp/run"
    assert local_path("runs/a") == "runs/a" and local_path("gs://b/a") is None


def test_files_are_replaced_whole_and_read_as_utf8(location):
    tf.io.gfile.makedirs(location)
    write_atomically(join(location, "a.txt"), "first")
    write_atomically(join(location, "a.txt"), "second, longer")
    write_atomically(join(location, "b.bin"), b"\xff\xfe")
    assert read_text(join(location, "a.txt")) == "second, longer" and read_text(join(location, "none")) is None
    with pytest.raises(ValueError, match=r"b.bin line 1: byte 1 of the file is not UTF-8 text"):
        read_text(join(location, "b.bin"))
    assert sorted(files_below(location)) == ["a.txt", "b.bin"]  # no temporary file left
    assert not os.path.exists("ram:")  # nothing went to a local directory named after the URI


def test_storage_full_is_recognized():
    assert is_storage_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_storage_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_storage_full(
        tf.errors.ResourceExhaustedError(
            None,
            None,
            "/r/checkpoints/epoch-1_temp/part-00000-of-00001.data-00000-of-00001.tempstate1; No space left "
            "on device [Op:SaveV2]",
        )
    )
    assert not is_storage_full(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"))
    assert not is_storage_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_storage_full(ValueError("No space left on device"))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device that is always full")
def test_a_write_to_a_full_device_is_recognized_as_storage_full():
    """What TensorFlow's file system raises when the disk is full (/dev/full answers every write
    with ENOSPC), not a message written by hand."""
    with pytest.raises(tf.errors.OpError) as raised, tf.io.gfile.GFile("/dev/full", "wb") as device:
        device.write(b"x" * 100_000)
    assert is_storage_full(raised.value), raised.value
