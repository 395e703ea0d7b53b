"""Who holds a lock file or a working directory, and when the holder counts as gone.

An owner record is a small JSON object: the host, the process id and the process's start time
(so a reused pid is not mistaken for the owner), a random token, when it started and its last
heartbeat. A holder on this host is gone when its process has ended; one on another host when
its heartbeat is older than a stale limit (clocks of the hosts must roughly agree). A record that
cannot be read (being written right now, or left by a process that died writing it) is judged
by the age of what it marks.

>>> record = new_record()
>>> record["host"] == socket.gethostname(), is_gone(record, stale_after=600), is_gone({}, 600, age=10)
(True, False, False)
>>> parse_record(b'{"host": "h", "pid": 7, "started": "x", "heartbeat": "y"}')["pid"], parse_record(b"\\xff")
(7, {})
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import uuid
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from resnet.storage.files import local_path, read_bytes, remove_if_present, temporary_name

STALE_SECONDS = 600.0
"""An owner on another host whose heartbeat is older than this counts as gone (by default)."""
HEARTBEAT_SECONDS = 60.0
"""How often a holder refreshes its heartbeat (by default): well within `STALE_SECONDS`."""
DIRECTORY = b"<a directory>"
"""What `contents` gives for a record path that is a directory (no file holds these bytes)."""


def now() -> str:
    """The current time as ISO 8601 in UTC, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def new_record(**extra: Any) -> dict[str, Any]:
    """The record of this process as an owner: host, pid, process start, a new token, start time
    and heartbeat (now), and `extra`."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "process_start": process_start(pid),
        "token": uuid.uuid4().hex,
        "started": now(),
        "heartbeat": now(),
        **extra,
    }


def to_text(record: Mapping[str, Any]) -> str:
    """A record as the text of its file."""
    return json.dumps(dict(record), indent=2) + "\n"


def contents(path: str) -> bytes | None:
    """The bytes of the record file `path`, `DIRECTORY` if it is a directory, None if there is none."""
    if tf.io.gfile.isdir(path):
        return DIRECTORY
    return read_bytes(path)


def parse_record(data: bytes) -> dict[str, Any]:
    """The record in `data`; {} if it is not one (not UTF-8, not a JSON object, a directory)."""
    try:
        record = json.loads(data.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return {}
    return record if isinstance(record, dict) else {}


def read_record(path: str) -> dict[str, Any] | None:
    """The record at `path`: {} if it cannot be read as one, None if there is none."""
    data = contents(path)
    return None if data is None else parse_record(data)


def describe(record: Mapping[str, Any], path: str) -> str:
    """The owner as error messages name it; an unreadable record is named by its path."""
    if not record:
        return f"unknown ({path} cannot be read as an owner record; delete it if nothing uses it)"
    return (
        f"host {record.get('host')}, pid {record.get('pid')}, started {record.get('started')}, "
        f"last heartbeat {record.get('heartbeat')}"
    )


def is_gone(record: Mapping[str, Any], stale_after: float, age: float | None = None) -> bool:
    """Whether the owner `record` describes has ended.

    Args:
        record: The owner record ({} if unreadable).
        stale_after: Seconds without heartbeat after which an owner on another host (or an
            unreadable record) counts as gone.
        age: Seconds since what the record marks was last modified, for an unreadable record
            (None: unknown, never gone).
    """
    if not record.get("host"):
        return age is not None and age > stale_after
    if record.get("host") == socket.gethostname():
        return not alive(record.get("pid"), record.get("process_start"))
    return age_of(record.get("heartbeat")) > stale_after


def alive(pid: Any, started: str | None) -> bool:
    """Whether process `pid` of this host runs, and is the one that started at `started`
    (`process_start`'s clock ticks; None: any)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    current = process_start(pid)
    return started is None or current is None or current == started


def process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (Linux); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def age_of(text: Any) -> float:
    """Seconds since the ISO time `text`; infinite (long ago) for anything else."""
    try:
        then = datetime.datetime.fromisoformat(str(text))
    except ValueError:
        return float("inf")
    if then.tzinfo is None:
        then = then.replace(tzinfo=datetime.timezone.utc)
    return (datetime.datetime.now(datetime.timezone.utc) - then).total_seconds()


def modified_age(path: str) -> float | None:
    """Seconds since `path` (not what a link points to) was modified; None if it does not exist."""
    local = local_path(path)
    try:
        if local is not None:
            modified = os.lstat(local).st_mtime
        else:
            modified = tf.io.gfile.stat(path).mtime_nsec / 1e9
    except (FileNotFoundError, tf.errors.NotFoundError):
        return None
    return datetime.datetime.now(datetime.timezone.utc).timestamp() - modified


def create_exclusive(path: str, text: str) -> bool:
    """Creates `path` holding `text` unless it exists; False if it did.

    Exclusive on local disks (`O_CREAT | O_EXCL`). Elsewhere the file is written under a
    temporary name and renamed with `overwrite=False`, which TensorFlow implements as an
    existence check followed by the rename (a copy on object stores): two processes within that
    window may both succeed, so a holder reads its record back (and again at each heartbeat).
    """
    local = local_path(path)
    if local is not None:
        try:
            fd = os.open(local, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    tmp = temporary_name(path)
    try:
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(text)
        tf.io.gfile.rename(tmp, path, overwrite=False)
        return True
    except tf.errors.AlreadyExistsError:
        return False
    finally:
        remove_if_present(tmp)
