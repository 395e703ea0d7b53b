"""`run.lock`: one training run at a time in a run directory.

A run takes the lock before it writes anything and keeps it while it trains; a second run on the
directory is refused at once, naming the holder. The lock is an owner record
(`resnet.storage.owners`: host, process, start time, heartbeat). A lock left by a process of this
host that has ended is taken over at once; one from another host once its heartbeat is older
than the stale limit, so the holder refreshes it (`heartbeat`) more often than that: every step,
during evaluation and around checkpoints.

Example:

>>> lock = RunLock("ram://doc/locked-run")
>>> with lock.acquire():
...     RunLock("ram://doc/locked-run").acquire()
Traceback (most recent call last):
...
resnet.training.run_lock.RunDirectoryLocked: `--model_dir` 'ram://doc/locked-run' is in use by another run: ...
"""

from __future__ import annotations

import re
import time
from typing import Any

import tensorflow as tf

from resnet.storage import owners
from resnet.storage.files import join, remove_if_present, write_atomically

LOCK_STALE_SECONDS = owners.STALE_SECONDS
"""A lock from another host whose heartbeat is older than this belongs to a dead run."""
HEARTBEAT_SECONDS = owners.HEARTBEAT_SECONDS
"""`RunLock.heartbeat` rewrites the lock at most this often."""
LOCK_NAME = "run.lock"


class RunDirectoryLocked(ValueError):
    """Another live run holds the directory (trying again later may succeed)."""


class RunLock:
    """The `run.lock` of the run directory `directory`.

    Args:
        directory: The run directory: a local path or a TensorFlow file system URI.
        stale_after: Seconds without a heartbeat after which another host's lock counts as
            abandoned (clocks of the hosts must roughly agree).
    """

    def __init__(self, directory: str, stale_after: float = LOCK_STALE_SECONDS):
        if stale_after <= 0:
            raise ValueError(f"`stale_after` must be a positive number of seconds; received {stale_after!r}.")
        self.directory = directory
        self.path = join(directory, LOCK_NAME)
        self.stale_after = stale_after
        self._held: dict[str, Any] | None = None
        self._last_heartbeat = 0.0

    def acquire(self) -> RunLock:
        """Takes the lock for this process, or refuses at once if a live run holds it.

        Returns the lock, so `with lock.acquire():` releases it when the block ends. Creation is
        exclusive on local disks; elsewhere two runs starting at the same moment may both get
        through (see `owners.create_exclusive`): each re-reads the lock after writing it and at
        every heartbeat, so the one whose lock was replaced stops with `RunDirectoryLocked`.
        Taking over an abandoned lock re-reads it just before deleting it, with the same small
        window.

        Raises:
            RunDirectoryLocked: The holder's host, pid and start time, and what to do.
            ValueError: A directory with files in it where the lock belongs.
        """
        record = owners.new_record()
        for _ in range(3):
            if owners.create_exclusive(self.path, owners.to_text(record)):
                held = owners.read_record(self.path)
                if held is not None and held.get("token") == record["token"]:
                    self._held, self._last_heartbeat = record, time.monotonic()
                    return self
            current = owners.contents(self.path)
            if current is None:
                continue  # released meanwhile: try again
            held = owners.parse_record(current)
            if not owners.is_gone(held, self.stale_after, owners.modified_age(self.path)):
                raise RunDirectoryLocked(
                    f"`--model_dir` {self.directory!r} is in use by another run: {owners.describe(held, self.path)}. "
                    "Wait for it to finish or stop it, or use another `--model_dir`. The lock of a dead run is taken "
                    f"over: at once on the same host, after {self.stale_after:g} s without heartbeat from another host."
                )
            if owners.contents(self.path) == current:
                print(f"Taking over the lock of a run that is gone: {owners.describe(held, self.path)}.", flush=True)
                self._remove_abandoned()
        raise RunDirectoryLocked(f"`--model_dir` {self.directory!r}: other runs keep taking its lock; try again.")

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def heartbeat(self) -> None:
        """Refreshes the lock's heartbeat (at most every `HEARTBEAT_SECONDS`; cheap to call
        often). Does nothing unless this object holds the lock.

        Raises:
            RunDirectoryLocked: Another run has taken the lock (this one was thought dead).
        """
        if self._held is None or time.monotonic() - self._last_heartbeat < HEARTBEAT_SECONDS:
            return
        held = owners.read_record(self.path)
        if held is not None and held.get("token") != self._held["token"]:
            self._held = None
            raise RunDirectoryLocked(
                f"`--model_dir` {self.directory!r} was taken over by another run ({owners.describe(held, self.path)}) "
                f"while this one held it, probably after no heartbeat for {self.stale_after:g} s. Stopping this run."
            )
        self._held["heartbeat"] = owners.now()
        write_atomically(self.path, owners.to_text(self._held))
        self._last_heartbeat = time.monotonic()

    def release(self) -> None:
        """Deletes the lock if this object still holds it; otherwise leaves it alone."""
        if self._held is None:
            return
        held = owners.read_record(self.path)
        if held is not None and held.get("token") == self._held["token"]:
            remove_if_present(self.path)
        self._held = None

    def token(self) -> int | None:
        """A number that identifies the run holding the lock now (the same for everyone who reads
        this lock file), or None if there is no readable lock. Workers of a multi-worker run
        compare it with the chief's to prove they see the chief's directory."""
        token = (owners.read_record(self.path) or {}).get("token")
        if not isinstance(token, str) or not re.fullmatch(r"[0-9a-f]{15,}", token):
            return None
        return int(token[:15], 16)  # 60 bits: one int64, as workers exchange it

    def _remove_abandoned(self) -> None:
        """Removes an abandoned lock file, or an empty directory in its place; a directory
        holding anything is not ours to delete: it is refused."""
        if not tf.io.gfile.isdir(self.path):
            remove_if_present(self.path)
            return
        if tf.io.gfile.listdir(self.path):
            raise ValueError(
                f"{self.path} is a directory with files in it, where the run's lock file belongs; move "
                "it out of the run directory (it is not part of a run)."
            )
        tf.io.gfile.rmtree(self.path)  # empty: nothing but the directory itself goes
