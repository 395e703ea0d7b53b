"""Files on any file system TensorFlow opens (`gs://`, `s3://`, `hdfs://`, `ram://`, local paths).

Everything goes through `tf.io.gfile`. A file is replaced by writing it whole under a temporary
name beside it and renaming that over the old one, so a reader, or a crash, sees the old file or
the new one, never part of one; on object stores, where a rename is a copy and a delete, the new
object also appears whole. (`tf.io.gfile` cannot fsync: after a power failure a local file may
still be lost.)

>>> write_atomically("ram://doc/files/a.txt", "text")
>>> read_text("ram://doc/files/a.txt"), read_text("ram://doc/files/missing.txt")
('text', None)
>>> join("ram://doc", "files", "a.txt"), local_path("file:///tmp/a"), local_path("gs://b/a")
('ram://doc/files/a.txt', '/tmp/a', None)
"""

from __future__ import annotations

import errno
import os
import uuid

import tensorflow as tf

from resnet._internals import reports_no_space

# How the operating system reports a full disk or an exhausted quota to Python (TensorFlow's file
# systems pass on only its text: see `resnet._internals.reports_no_space`).
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def join(path: str, *parts: str) -> str:
    """Joins path parts, keeping a URI's `scheme://` intact (`ram://x` + `a` -> `ram://x/a`)."""
    if "://" not in path:
        return os.path.join(path, *parts)
    return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)])


def local_path(path: str) -> str | None:
    """The operating system's path for a local `path` (plain or `file://`), else None."""
    if path.startswith("file://"):
        return path[len("file://") :]
    return None if "://" in path else path


def temporary_name(path: str) -> str:
    """A new name beside `path` for writing it: it starts with "." and a random part, so it is
    never a prefix of another name (ram:// answers `exists` for any prefix of an existing path)
    and checkpoint globs skip it."""
    return join(os.path.dirname(path), f".{uuid.uuid4().hex[:8]}.{os.path.basename(path)}.tmp")


def write_atomically(path: str, content: str | bytes) -> None:
    """Writes `content` (text is written as UTF-8) to `path` through a temporary file beside it
    and a rename: readers (and a crash) see either the old file or the new one, never a partial
    write. A failure removes the temporary file and leaves the old one."""
    tmp = temporary_name(path)
    try:
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise


def read_bytes(path: str) -> bytes | None:
    """The bytes of `path`, or None if it does not exist."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError:
        return None


def read_text(path: str) -> str | None:
    """The UTF-8 text of `path`, or None if it does not exist.

    Raises:
        ValueError: The file is not UTF-8 text (the file, line and first bad byte named).
    """
    data = read_bytes(path)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"{path} line {line}: byte {error.start + 1} of the file is not UTF-8 text; repair or move the file."
        ) from None


def remove_if_present(path: str) -> None:
    """Deletes the file `path` unless it is already gone."""
    try:
        tf.io.gfile.remove(path)
    except tf.errors.NotFoundError:
        pass


def is_storage_full(error: BaseException) -> bool:
    """Whether `error` (from TensorFlow's file systems or Python's) says the storage is full.

    >>> is_storage_full(OSError(errno.ENOSPC, "No space left on device")), is_storage_full(OSError(errno.EACCES, "no"))
    (True, False)
    """
    if isinstance(error, OSError) and error.errno in _NO_SPACE:
        return True
    return isinstance(error, (tf.errors.OpError, OSError)) and reports_no_space(str(error))
