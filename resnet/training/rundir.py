"""The run directory: every file of a training run, on any file system TensorFlow opens.

```
model_dir/
  operative_config.gin   the gin bindings the run really used: the run's identity
  command.txt            each command line that ran in this directory, with its start time
  metrics.csv            one row per epoch: loss, accuracy, val_loss, val_accuracy, ...
  run.lock               while a run trains: its host, process, start time and last heartbeat
  tensorboard/           TensorBoard event files
  backup/                the newest state (mid-epoch or end of epoch): where a rerun resumes
  checkpoints/           the last `keep_checkpoints` end-of-epoch checkpoints
  best/                  the checkpoint with the best validation accuracy, and best.json
  eval.json              what resnet-eval measured last
```

Everything goes through `tf.io.gfile`, so `model_dir` may be a local path or a URI (`gs://`,
`s3://`, `hdfs://`, `ram://`). Files are written whole to a temporary name beside them and
renamed over the old one, so a reader or a crashed process sees the old file or the new one; on
object stores, where a rename is a copy and a delete, the new object also appears whole.
(`tf.io.gfile` cannot fsync: after a power failure a local file may still be lost.)
"""

from __future__ import annotations

import collections
import csv
import datetime
import errno
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import time
import tokenize
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import gin
import tensorflow as tf

CHECKPOINT_KINDS = ("backup", "checkpoints", "best")
CHECKPOINT_NAMES = {"backup": "backup", "checkpoints": "epoch", "best": "best"}
"""The name of each kind's checkpoints: `backup/backup-<step>`, `checkpoints/epoch-<epoch>`, `best/best-<epoch>`."""
SHARED_STORAGE = "storage every worker sees (a shared file system, or a URI such as gs://...)"
"""What the `--model_dir` of a multi-worker run must be; errors about it say so in these words."""
METRICS_COLUMNS = (
    "epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy", "val_top5", "learning_rate", "seconds",
)
RESUMABLE_BINDINGS = frozenset({
    "Trainer.epochs",
    "Trainer.keep_checkpoints",
    "Trainer.backup_every_steps",
    "Trainer.progress",
    "Trainer.cluster_timeout",
    "InputPipeline.eval_batch_size",
})
"""Bindings a rerun may change and still be the same run (in any scope): how long it trains, how
often it saves, what it prints, how long workers wait for each other, how evaluation is batched."""
LOCK_STALE_SECONDS = 600.0
"""A lock from another host whose heartbeat is older than this belongs to a dead run."""
HEARTBEAT_SECONDS = 60.0
"""`RunDirectory.heartbeat` rewrites the lock at most this often."""

_LOCK = "run.lock"


class RunDirectoryMismatch(ValueError):
    """The directory records another run's configuration."""


class RunDirectoryLocked(ValueError):
    """Another live run holds the directory."""


def join(path: str, *parts: str) -> str:
    """Joins path parts, keeping a URI's `scheme://` intact (`ram://x` + `a` -> `ram://x/a`)."""
    if "://" not in path:
        return os.path.join(path, *parts)
    return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)])


def local_path(path: str) -> str | None:
    """The operating system's path for a local `path` (plain or `file://`), else None."""
    if path.startswith("file://"):
        return path[len("file://"):]
    return None if "://" in path else path


def write_atomically(path: str, content: str | bytes) -> None:
    """Writes `content` (text is written as UTF-8) to `path` through a temporary file beside it
    and a rename: readers (and a crash) see either the old file or the new one, never a partial
    write. A failure removes the temporary file and leaves the old one."""
    tmp = _temporary_name(path)
    try:
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_WORDS = ("No space left on device", "Disk quota exceeded")


def is_storage_full(error: BaseException) -> bool:
    """Whether `error` (from TensorFlow's file systems or Python's) says the storage is full."""
    if isinstance(error, OSError) and error.errno in _NO_SPACE:
        return True
    return isinstance(error, (tf.errors.OpError, OSError)) and any(words in str(error) for words in _NO_SPACE_WORDS)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (TensorFlow's run over many), at most 500 characters."""
    text = str(error).strip()
    return text.splitlines()[0][:500] if text else type(error).__name__


def _temporary_name(path: str) -> str:
    # Starts with "." and a random part: never a prefix of another name (ram:// answers
    # `exists` for any prefix of an existing path) and skipped by checkpoint globs.
    return join(os.path.dirname(path), f".{uuid.uuid4().hex[:8]}.{os.path.basename(path)}.tmp")


def read_text(path: str) -> str | None:
    """The UTF-8 text of `path`, or None if it does not exist.

    Raises:
        ValueError: The file is not UTF-8 text (the file and the first bad byte named).
    """
    data = read_bytes(path)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(f"{path} line {line}: byte {error.start + 1} of the file is not UTF-8 text; repair or "
                         "move the file.") from None


def read_bytes(path: str) -> bytes | None:
    """The bytes of `path`, or None if it does not exist."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError:
        return None


class MetricsLog:
    """`metrics.csv`: a header, then one row per epoch, epochs 1, 2, 3, ... in order.

    Every field is a number: `epoch` a positive whole number, `step` a whole number, the others
    finite numbers, or empty for a value not recorded. `write(row)` replaces the row of its
    epoch (an epoch redone after a crash) or appends the next one, and rewrites the file
    atomically; the other rows are written back exactly as they were read.

    Reading checks the whole file, and a damaged one (text that is not UTF-8, a header that is
    not `columns`, a row with missing, extra or unreadable fields, epochs out of order,
    repeated or skipped) raises a `ValueError` naming the file and the line: such a file is
    never rewritten, so no row is dropped or changed.

    Args:
        path: The CSV file, local or a URI.
        columns: The header, which must include "epoch".

    Example:

    >>> log = MetricsLog("ram://doc/metrics.csv", ["epoch", "loss"])
    >>> log.write({"epoch": 1, "loss": 0.5}); log.write({"epoch": 1, "loss": 0.25})
    >>> log.rows()
    [{'epoch': '1', 'loss': '0.25'}]
    """

    def __init__(self, path: str, columns: Sequence[str]):
        if "epoch" not in columns:
            raise ValueError(f"`columns` must include 'epoch'; received {list(columns)}.")
        self.path = os.fspath(path)
        self.columns = list(columns)

    def rows(self) -> list[dict[str, str]]:
        """The rows, in file order (epochs 1, 2, ...), every field as the text the file holds.

        Raises:
            ValueError: The file is damaged; the message names the file, the line and what is
                wrong with it.
        """
        data = read_bytes(self.path)
        if data is None:
            return []
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()  # the newline ending the last line
        if not lines:
            self._damaged(1, f"the file is empty; expected the header {','.join(self.columns)}")
        rows = []
        for number, raw in enumerate(lines, start=1):
            fields = self._fields(number, raw)
            if number == 1:
                if fields != self.columns:
                    self._damaged(1, f"the header is {','.join(fields)!r}; expected {','.join(self.columns)!r}")
                continue
            row = self._check_row(number, fields)
            if int(row["epoch"]) != len(rows) + 1:
                self._damaged(number, f"epoch {row['epoch']} where epoch {len(rows) + 1} was expected")
            rows.append(row)
        return rows

    def write(self, row: Mapping[str, Any]) -> None:
        """Records `row` (its `epoch` is the next epoch, or one already recorded, which it
        replaces). Values missing from `row` are left empty; keys not in `columns` are dropped.

        Raises:
            ValueError: The file is damaged (see `rows`), the epoch would leave a gap, or a value
                is not a number.
        """
        rows = self.rows()
        new = self._check_row(None, ["" if row.get(key) is None else str(row.get(key)) for key in self.columns])
        epoch = int(new["epoch"])
        if epoch > len(rows) + 1:
            raise ValueError(f"{self.path}: cannot record epoch {epoch}: it holds epochs 1 to {len(rows)}, and each "
                             "line is one epoch, in order.")
        rows[epoch - 1:epoch] = [new]
        # Every field is a number or empty (checked): no quoting is needed.
        lines = [",".join(self.columns), *(",".join(r[key] for key in self.columns) for r in rows)]
        write_atomically(self.path, "\n".join(lines) + "\n")

    def _fields(self, number: int, raw: bytes) -> list[str]:
        try:
            text = raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError as error:
            self._damaged(number, f"byte {error.start + 1} is not UTF-8 text")
        if not text.strip():
            self._damaged(number, "the line is empty")
        try:
            return next(csv.reader([text], strict=True))
        except (csv.Error, StopIteration) as error:
            self._damaged(number, f"not a line of comma-separated values ({error or 'empty'})")

    def _check_row(self, number: int | None, fields: list[str]) -> dict[str, str]:
        """`fields` as a row, each checked; `number` is the line (None: a row about to be written)."""
        complain = self._damaged if number is not None else self._refused
        epoch = fields[self.columns.index("epoch")] if len(fields) > self.columns.index("epoch") else ""
        problem = _metric_problem("epoch", epoch)
        if problem:  # first: the line may not be a row at all
            complain(number, f"epoch {epoch!r} {problem}")
        if len(fields) != len(self.columns):
            complain(number, f"{len(fields)} field(s) where {len(self.columns)} were expected "
                             f"({','.join(self.columns)}); the line may have been cut short")
        row = dict(zip(self.columns, fields))
        for key, value in row.items():
            problem = _metric_problem(key, value)
            if problem:
                complain(number, f"{key} {value!r} {problem}")
        return row

    def _damaged(self, number: int, problem: str) -> NoReturn:
        raise ValueError(f"{self.path} line {number}: {problem}. Repair or remove the line, or move the file away: "
                         "after the header each line is one epoch's metrics, epochs 1, 2, 3, ... in order.")

    def _refused(self, number: None, problem: str) -> NoReturn:
        raise ValueError(f"Cannot record in {self.path}: {problem}.")


def _metric_problem(key: str, value: str) -> str | None:
    """What is wrong with `value` as the field `key` of a metrics row, or None."""
    if value == "" and key != "epoch":
        return None  # not recorded
    if key in ("epoch", "step"):
        lowest = 1 if key == "epoch" else 0
        if value.isascii() and value.isdigit() and int(value) >= lowest:
            return None
        return "is not a positive whole number" if key == "epoch" else "is not a whole number"
    try:
        number = float(value)
    except ValueError:
        return "is not a number"
    return None if math.isfinite(number) else "is not a finite number"


class RunDirectory:
    """Owns every file of a run's `model_dir`, all through `tf.io.gfile`.

    Identity: `check_same_run` refuses a configuration that is not the recorded run's.
    Lock: `lock()` holds `run.lock` while a run trains, so a second run on the directory is
    refused at once; `heartbeat()` shows the holder is alive. Scratch: `worker_scratch` gives a
    non-chief worker of a multi-worker run a local directory for its checkpoint copies.

    Args:
        path: The directory: a local path or a TensorFlow file system URI.
        stale_after: Seconds without a heartbeat after which another host's lock counts as
            abandoned (`LOCK_STALE_SECONDS` by default; clocks of the hosts must roughly agree).

    Example:

    >>> run = RunDirectory("ram://doc/run")
    >>> run.create()
    >>> run.write_json("best/best.json", {"epoch": 3})
    >>> json.loads(run.read_text("best/best.json"))
    {'epoch': 3}
    >>> with run.lock():
    ...     run.metrics.write({"epoch": 1, "loss": 2.3})
    >>> run.checkpoint_dir("backup")
    'ram://doc/run/backup'
    """

    def __init__(self, path: str | os.PathLike, stale_after: float = LOCK_STALE_SECONDS):
        self.path = os.fspath(path)
        if not self.path:
            raise ValueError("`--model_dir` must name a directory; received ''.")
        if stale_after <= 0:
            raise ValueError(f"`stale_after` must be a positive number of seconds; received {stale_after!r}.")
        self.stale_after = stale_after
        self.metrics = MetricsLog(self.join("metrics.csv"), METRICS_COLUMNS)
        self._owner: dict[str, Any] | None = None
        self._last_heartbeat = 0.0
        self._scratch: str | None = None

    def join(self, *parts: str) -> str:
        """A path inside the directory."""
        return join(self.path, *parts)

    # -------------------------------------------------------------------------- files

    def create(self) -> None:
        """Creates the directory and proves it can be written.

        Raises:
            ValueError: "`--model_dir` '<path>' cannot be written: <reason>".
        """
        probe = self.join(f".write-test-{uuid.uuid4().hex[:8]}")
        try:
            tf.io.gfile.makedirs(self.path)
            with tf.io.gfile.GFile(probe, "w") as f:
                f.write("")
            tf.io.gfile.remove(probe)
        except (tf.errors.OpError, OSError) as error:
            reason = getattr(error, "message", None) or getattr(error, "strerror", None) or str(error)
            raise ValueError(f"`--model_dir` {self.path!r} cannot be written: {reason}") from None

    def read_text(self, name: str) -> str | None:
        """The text of the file `name` (relative to the directory), or None if there is none."""
        return read_text(self.join(name))

    def write_text(self, name: str, text: str) -> None:
        """Replaces the file `name` (relative to the directory) whole, creating its directory."""
        path = self.join(name)
        tf.io.gfile.makedirs(os.path.dirname(path))
        write_atomically(path, text)

    def write_json(self, name: str, data: Mapping[str, Any]) -> None:
        """Replaces the file `name` with `data` as indented JSON with sorted keys."""
        self.write_text(name, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def append_command(self, argv: Sequence[str]) -> None:
        """Adds a line with the time and `argv` (quoted as a shell would need) to command.txt.

        An append is a read and a whole rewrite: object stores have no atomic append.
        """
        line = f"{_now()}  {shlex.join(argv)}\n".encode()
        path = self.join("command.txt")
        write_atomically(path, (read_bytes(path) or b"") + line)  # bytes: whatever the file holds is kept

    # -------------------------------------------------------------------- checkpoints

    def checkpoint_dir(self, kind: str) -> str:
        """The directory of the checkpoints of `kind`: one of `CHECKPOINT_KINDS`."""
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f"`kind` must be one of {', '.join(map(repr, CHECKPOINT_KINDS))}; received {kind!r}.")
        return self.join(kind)

    def checkpoint_path(self, which: str) -> str | None:
        """The newest checkpoint of kind `which`, or `which` itself if it is a checkpoint path.

        Returns:
            The checkpoint's path prefix, or None if that kind has none yet.

        Raises:
            ValueError: `which` is neither a kind nor the prefix of an existing checkpoint.
        """
        if which in CHECKPOINT_KINDS:
            return next(iter(self.checkpoints(which)), None)
        if not tf.io.gfile.exists(which + ".index"):
            raise ValueError(
                f"No checkpoint at {which!r} (expected {which}.index); or give one of "
                f"{', '.join(map(repr, CHECKPOINT_KINDS))}."
            )
        return which

    def checkpoints(self, kind: str) -> list[str]:
        """The checkpoints of `kind`, newest first, as TensorFlow's `checkpoint` file in the
        kind's directory lists them. If that file is damaged (not UTF-8, not a checkpoint state,
        or a directory), the checkpoints found by name (`<name>-<number>.index`) are listed
        instead, highest number first, and a warning on stderr says so."""
        problem = self._state_problem(kind)
        if problem is None:
            state = tf.train.get_checkpoint_state(self.checkpoint_dir(kind))  # full paths, oldest first
            return list(reversed(state.all_model_checkpoint_paths)) if state is not None else []
        found = self._checkpoints_by_name(kind)
        print(f"Warning: {self.join(kind, 'checkpoint')} cannot be read ({problem}); using the checkpoints found by "
              f"name in {self.checkpoint_dir(kind)}: {', '.join(os.path.basename(p) for p in found) or 'none'}.",
              file=sys.stderr, flush=True)
        return found

    def checkpoint_candidates(self, which: str) -> list[str]:
        """The checkpoints to try, newest first, when restoring `which`: for "backup", every
        backup and then every epoch checkpoint (so an unreadable backup falls back to the newest
        intact epoch); for "checkpoints", every epoch checkpoint; otherwise `checkpoint_path(which)`
        alone (a "best" checkpoint or a path is never replaced by another one)."""
        kinds = {"backup": ("backup", "checkpoints"), "checkpoints": ("checkpoints",)}.get(which)
        if kinds is None:
            path = self.checkpoint_path(which)
            return [path] if path else []
        return [path for kind in kinds for path in self.checkpoints(kind)]

    def repair_checkpoint_state(self, kind: str) -> None:
        """Replaces a damaged `checkpoint` file of `kind` (see `checkpoints`) by one listing the
        checkpoints found by name, so that saving can go on; the damaged file is kept beside it
        as `checkpoint.damaged`. Does nothing to a sound one."""
        problem = self._state_problem(kind)
        if problem is None:
            return
        state = self.join(kind, "checkpoint")
        found = self._checkpoints_by_name(kind)
        tf.io.gfile.rename(state, state + ".damaged", overwrite=True)
        if found:  # TensorFlow's text format, with names relative to the directory as CheckpointManager writes them
            names = [os.path.basename(path) for path in reversed(found)]
            lines = [f'model_checkpoint_path: "{names[-1]}"', *(f'all_model_checkpoint_paths: "{n}"' for n in names)]
            write_atomically(state, "\n".join(lines) + "\n")
        print(f"Replaced the damaged {state} ({problem}; kept as checkpoint.damaged) by one listing "
              f"{', '.join(os.path.basename(p) for p in found) or 'no checkpoint'}.", flush=True)

    def _state_problem(self, kind: str) -> str | None:
        """Why the `checkpoint` state file of `kind` cannot be used, or None if it can (or is absent)."""
        path = self.join(kind, "checkpoint")
        if tf.io.gfile.isdir(path):
            return "a directory"
        data = read_bytes(path)
        if data is None:
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return "not UTF-8 text"
        if "model_checkpoint_path:" not in text:
            return "not a checkpoint state"
        try:
            state = tf.train.get_checkpoint_state(self.checkpoint_dir(kind))
        except ValueError as error:
            return str(error)
        return None if state is not None else "not a checkpoint state"

    def _checkpoints_by_name(self, kind: str) -> list[str]:
        """The checkpoints of `kind` found by their `<name>-<number>.index` files, highest number first."""
        numbered = []
        for index in tf.io.gfile.glob(self.join(kind, "*-*.index")):
            prefix = index[: -len(".index")]
            number = prefix.rsplit("-", 1)[1]
            if number.isdigit():
                numbered.append((int(number), prefix))
        return [prefix for _, prefix in sorted(numbered, reverse=True)]

    def started(self) -> bool:
        """Whether a run has begun here: it holds a metrics file or a checkpoint (of any kind).
        A directory with neither (a run that failed before its first backup) is not yet a run."""
        if tf.io.gfile.exists(self.metrics.path):
            return True
        return any(tf.io.gfile.exists(self.join(kind, "checkpoint")) or tf.io.gfile.glob(self.join(kind, "*.index"))
                   for kind in CHECKPOINT_KINDS)

    # ----------------------------------------------------------------------- identity

    def operative_config(self) -> str | None:
        """The recorded operative gin config, or None if the directory records none."""
        return self.read_text("operative_config.gin")

    def write_operative_config(self, text: str) -> None:
        self.write_text("operative_config.gin", text)

    def check_same_run(self, operative: str) -> None:
        """Refuses an operative config that is not the recorded run's. Reads, never writes.

        The two configs are compared binding by binding (comments, layout and order do not
        count); `RESUMABLE_BINDINGS` may differ. A directory without a recorded config passes, and
        so does one that is not yet a run (`started()` is False: a run that failed before its
        first backup, e.g. on a wrong weights path, may be started again with another config).

        Raises:
            RunDirectoryMismatch: Bindings differ; one message lists each (recorded -> now,
                "(not bound)" for an added or removed one) and asks for a new `--model_dir`.
            ValueError: The recorded config cannot be parsed.
        """
        if not tf.io.gfile.exists(self.join("operative_config.gin")):
            return
        if not self.started():
            print(f"`--model_dir` {self.path!r} holds no checkpoint and no metrics yet (a run that stopped before its "
                  "first backup): it takes this run's configuration.", flush=True)
            return
        try:
            old = parse_bindings(self.operative_config())
        except (SyntaxError, tokenize.TokenError, ValueError) as error:
            raise ValueError(
                f"`--model_dir` {self.path!r} holds an operative_config.gin that cannot be parsed ({error}); "
                "use a new `--model_dir`, or repair the file if this is the same run."
            ) from None
        old, new = _canonical(old), _canonical(parse_bindings(operative))
        changed = sorted(
            key for key in old.keys() | new.keys()
            if old.get(key) != new.get(key) and _configurable_parameter(key) not in RESUMABLE_BINDINGS
        )
        if not changed:
            return
        lines = [f"  {key}: {old.get(key, '(not bound)')} -> {new.get(key, '(not bound)')}" for key in changed]
        raise RunDirectoryMismatch(
            f"`--model_dir` {self.path!r} holds a run with another configuration; {len(changed)} "
            f"binding{'s differ' if len(changed) > 1 else ' differs'} (recorded -> now):\n" + "\n".join(lines)
            + "\nUse a new `--model_dir` for a new run (a resumed run may change only "
            + ", ".join(sorted(RESUMABLE_BINDINGS)) + ")."
        )

    # ---------------------------------------------------------------------------- lock

    def lock(self) -> RunDirectory:
        """Takes `run.lock` for this process, or refuses at once if a live run holds it.

        Returns the directory, so `with run.lock():` releases the lock when the block ends.

        The lock records host, pid, process start, start time and heartbeat. A lock left by a
        dead process of this host (or by a process whose pid has since been reused) is taken
        over at once; one from another host when its heartbeat is older than `stale_after`
        seconds. The holder must call `heartbeat()` more often than that.

        Creation is exclusive on local disks (`O_CREAT | O_EXCL`). Elsewhere the lock is
        written under a temporary name and renamed with `overwrite=False`, which TensorFlow
        implements as an existence check followed by the rename (a copy on object stores): two
        runs starting within that window may both get through. Each re-reads the lock after
        writing it and at every heartbeat, so the one whose lock was replaced stops with
        `RunDirectoryLocked`. Taking over an abandoned lock re-reads it just before deleting it,
        with the same small window.

        Raises:
            RunDirectoryLocked: The owner's host, pid and start time, and what to do.
        """
        path = self.join(_LOCK)
        owner = {
            "host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
            "token": uuid.uuid4().hex, "started": _now(), "heartbeat": _now(),
        }
        text = json.dumps(owner, indent=2) + "\n"
        for _ in range(3):
            if _create_exclusive(path, text):
                held = _read_lock(path)
                if held is not None and held.get("token") == owner["token"]:
                    self._owner, self._last_heartbeat = owner, time.monotonic()
                    return self
            current = _lock_contents(path)
            if current is None:
                continue  # released meanwhile: try again
            held = _parse_lock(current)
            if not self._abandoned(held, path):
                raise RunDirectoryLocked(
                    f"`--model_dir` {self.path!r} is in use by another run: {_describe(held, path)}. Wait for it "
                    f"to finish or stop it, or use another `--model_dir`. The lock of a dead run is taken over: "
                    f"at once on the same host, after {self.stale_after:g} s without heartbeat from another host."
                )
            if _lock_contents(path) == current:
                print(f"Taking over the lock of a run that is gone: {_describe(held, path)}.", flush=True)
                _remove_lock(path)
        raise RunDirectoryLocked(f"`--model_dir` {self.path!r}: other runs keep taking its lock; try again.")

    def lock_token(self) -> int | None:
        """A number that identifies the run holding `run.lock` now (the same for everyone who reads
        this lock file), or None if there is no readable lock. Workers of a multi-worker run compare
        it with the chief's to prove they see the chief's directory."""
        held = _read_lock(self.join(_LOCK))
        token = (held or {}).get("token")
        if not isinstance(token, str) or not re.fullmatch(r"[0-9a-f]{15,}", token):
            return None
        return int(token[:15], 16)  # 60 bits: one int64, as workers exchange it

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def heartbeat(self) -> None:
        """Refreshes the lock's heartbeat (at most every `HEARTBEAT_SECONDS`; cheap to call every
        step). Does nothing unless this object holds the lock.

        Raises:
            RunDirectoryLocked: Another run has taken the lock (this one was thought dead).
        """
        if self._owner is None or time.monotonic() - self._last_heartbeat < HEARTBEAT_SECONDS:
            return
        path = self.join(_LOCK)
        held = _read_lock(path)
        if held is not None and held.get("token") != self._owner["token"]:
            self._owner = None
            raise RunDirectoryLocked(
                f"`--model_dir` {self.path!r} was taken over by another run ({_describe(held, path)}) while this one "
                f"held it, probably after no heartbeat for {self.stale_after:g} s. Stopping this run."
            )
        self._owner["heartbeat"] = _now()
        write_atomically(path, json.dumps(self._owner, indent=2) + "\n")
        self._last_heartbeat = time.monotonic()

    def release(self) -> None:
        """Deletes `run.lock` if this object still holds it; otherwise leaves it alone."""
        if self._owner is None:
            return
        path = self.join(_LOCK)
        held = _read_lock(path)
        if held is not None and held.get("token") == self._owner["token"]:
            _remove_if_present(path)
        self._owner = None

    def _abandoned(self, held: dict[str, Any], path: str) -> bool:
        if not held:  # unreadable: being written right now, or by a run that died writing it
            try:
                return time.time() - tf.io.gfile.stat(path).mtime_nsec / 1e9 > self.stale_after
            except tf.errors.NotFoundError:
                return True
        if held.get("host") == socket.gethostname():
            return not _alive(held.get("pid"), held.get("process_start"))
        return time.time() - _timestamp(held.get("heartbeat")) > self.stale_after

    # ------------------------------------------------------------------------- scratch

    def worker_scratch(self, task: str) -> str:
        """A local scratch directory for the checkpoint copies of a non-chief worker.

        In `MultiWorkerMirroredStrategy` saving a mirrored variable is a collective operation:
        every worker must save, at the same time, but only the chief's copy (in `model_dir`) is
        kept. The other workers save into this directory. It is named after `model_dir` and
        `task` under the system's temporary directory and emptied when it is created, so what a
        killed worker left behind goes at its next start; `cleanup_scratch` removes it at exit.

        Args:
            task: The worker's task name, e.g. "worker 1".

        Returns:
            The directory, existing and empty.
        """
        digest = hashlib.sha1(self.path.encode()).hexdigest()[:12]
        name = f"resnet-worker-{digest}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', task).strip('-')}"
        self._scratch = os.path.join(tempfile.gettempdir(), name)
        shutil.rmtree(self._scratch, ignore_errors=True)
        os.makedirs(self._scratch)
        return self._scratch

    def cleanup_scratch(self) -> None:
        """Removes the directory `worker_scratch` gave, if any."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


# ------------------------------------------------------------------ operative configs


class _Reference:
    """A gin reference or macro in a parsed config, kept as the text that names it."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


class _LiteralDelegate(gin.config_parser.ParserDelegate):
    """Parses references and macros without resolving them (nothing need be registered)."""

    def configurable_reference(self, scoped_configurable_name: str, evaluate: bool) -> _Reference:
        return _Reference(f"@{scoped_configurable_name}{'()' if evaluate else ''}")

    def macro(self, macro_name: str) -> _Reference:
        return _Reference(f"%{macro_name}")


def parse_bindings(operative: str) -> dict[str, str]:
    """The bindings of a gin config, `{"scope/module.Configurable.parameter": "value"}`.

    Parsed by gin's own parser: comments, section headers, values over several lines, scopes,
    module-qualified names, macros (`NAME = 3`, `%NAME`) and references (`@Name`, `@Name()`)
    are understood. Values are given as the repr of what gin parsed, so layout does not count.

    Raises:
        SyntaxError, tokenize.TokenError: The text is not a gin config.
    """
    bindings = {}
    for statement in gin.config_parser.ConfigParser(operative, _LiteralDelegate()):
        if isinstance(statement, gin.config_parser.BindingStatement):
            scope = f"{statement.scope}/" if statement.scope else ""
            name = f"{statement.selector}.{statement.arg_name}" if statement.arg_name else statement.selector
            bindings[scope + name] = repr(statement.value)
    return bindings


def _configurable_parameter(key: str) -> str:
    """`scope/module.Class.param` -> `Class.param`."""
    return ".".join(key.rsplit("/", 1)[-1].split(".")[-2:])


def _canonical(bindings: Mapping[str, str]) -> dict[str, str]:
    """Drops module qualifiers that do not tell two configurables apart, so `ResNet.norm` and
    `resnet.model.ResNet.norm` (gin writes the shortest unique name) compare as one binding."""

    def short(key: str) -> str:
        scope, _, name = key.rpartition("/")
        return f"{scope}/{_configurable_parameter(name)}" if scope else _configurable_parameter(name)

    counts = collections.Counter(map(short, bindings))
    return {short(key) if counts[short(key)] == 1 else key: value for key, value in bindings.items()}


# ------------------------------------------------------------------------------- locks


def _create_exclusive(path: str, text: str) -> bool:
    """Creates `path` holding `text` unless it exists; False if it did."""
    local = local_path(path)
    if local is not None:
        try:
            fd = os.open(local, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    tmp = _temporary_name(path)
    try:
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(text)
        tf.io.gfile.rename(tmp, path, overwrite=False)
        return True
    except tf.errors.AlreadyExistsError:
        return False
    finally:
        _remove_if_present(tmp)


def _remove_if_present(path: str) -> None:
    try:
        tf.io.gfile.remove(path)
    except tf.errors.NotFoundError:
        pass


_DIRECTORY = b"<a directory>"
"""What `_lock_contents` gives for a `run.lock` that is a directory (no file holds these bytes)."""


def _lock_contents(path: str) -> bytes | None:
    """The bytes of the lock file `path`, `_DIRECTORY` if it is a directory, None if there is none."""
    if tf.io.gfile.isdir(path):
        return _DIRECTORY
    return read_bytes(path)


def _read_lock(path: str) -> dict[str, Any] | None:
    """The owner a lock file records; {} if it cannot be read as one; None if there is none."""
    contents = _lock_contents(path)
    return None if contents is None else _parse_lock(contents)


def _parse_lock(contents: bytes) -> dict[str, Any]:
    try:
        held = json.loads(contents.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return {}
    return held if isinstance(held, dict) else {}


def _remove_lock(path: str) -> None:
    """Removes an abandoned lock file, or an empty directory in its place. A directory holding
    anything is not ours to delete: it is refused."""
    if not tf.io.gfile.isdir(path):
        _remove_if_present(path)
        return
    if tf.io.gfile.listdir(path):
        raise ValueError(f"{path} is a directory with files in it, where the run's lock file belongs; move it out "
                         "of the run directory (it is not part of a run).")
    tf.io.gfile.rmtree(path)  # empty: nothing but the directory itself goes


def _describe(held: Mapping[str, Any], path: str) -> str:
    if not held:
        return f"unknown ({path} cannot be read as a lock; delete it if no run uses the directory)"
    return (f"host {held.get('host')}, pid {held.get('pid')}, started {held.get('started')}, "
            f"last heartbeat {held.get('heartbeat')}")


def _alive(pid: Any, process_start: str | None) -> bool:
    """Whether process `pid` of this host runs, and is the one that started at `process_start`."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    current = _process_start(pid)
    return process_start is None or current is None or current == process_start


def _process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (Linux); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _timestamp(text: Any) -> float:
    """Seconds since the epoch of an ISO time; 0 (long ago) for anything else."""
    try:
        return datetime.datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return 0.0
