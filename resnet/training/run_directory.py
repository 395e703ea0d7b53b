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

Everything goes through `tf.io.gfile` (`resnet.storage.files`), so `model_dir` may be a local
path or a URI (`gs://`, `s3://`, `hdfs://`, `ram://`), and every file is replaced whole.
`metrics.csv` is `resnet.training.metrics_log.MetricsLog`, `run.lock` is
`resnet.training.run_lock.RunLock`.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tokenize
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf

from resnet.config import differing_bindings, is_current_default
from resnet.storage import owners
from resnet.storage.files import join, read_bytes, read_text, write_atomically
from resnet.training.metrics_log import METRICS_COLUMNS, MetricsLog
from resnet.training.run_lock import LOCK_STALE_SECONDS, RunLock

CHECKPOINT_KINDS = ("backup", "checkpoints", "best")
CHECKPOINT_NAMES = {"backup": "backup", "checkpoints": "epoch", "best": "best"}
"""The name of each kind's checkpoints: `backup/backup-<step>`, `checkpoints/epoch-<epoch>`, `best/best-<epoch>`."""
SHARED_STORAGE = "storage every worker sees (a shared file system, or a URI such as gs://...)"
"""What the `--model_dir` of a multi-worker run must be; errors about it say so in these words."""
RESUMABLE_BINDINGS = frozenset(
    {
        "Trainer.strategy",
        "Trainer.logical_cpus",
        "Trainer.epochs",
        "Trainer.keep_checkpoints",
        "Trainer.backup_every_steps",
        "Trainer.progress",
        "Trainer.cluster_timeout",
        "InputPipeline.eval_batch_size",
        "InputPipeline.data_service",
        "InputPipeline.data_service_lanes",
        "InputPipeline.data_service_timeout",
    }
)
"""Bindings a rerun may change and still be the same run (in any scope): the devices it runs on
(its global batches do not depend on them), how long it trains, how often it saves, what it
prints, how long workers wait for each other, how evaluation is batched, and whether a tf.data
service makes the training batches (they are the same either way)."""


class RunDirectoryMismatch(ValueError):
    """The directory records another run's configuration."""


class RunDirectory:
    """Owns every file of a run's `model_dir`, all through `tf.io.gfile`.

    Files: read and replaced whole. Checkpoints: listed newest first, falling back past damaged
    ones. Identity: `check_same_run` refuses a configuration that is not the recorded run's.
    Lock: `lock` (a `RunLock`) is held while a run trains, so a second run is refused at once.

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
    >>> with run.lock.acquire():
    ...     run.metrics.write({"epoch": 1, "loss": 2.3})
    >>> run.checkpoint_dir("backup")
    'ram://doc/run/backup'
    """

    def __init__(self, path: str | os.PathLike, stale_after: float = LOCK_STALE_SECONDS):
        self.path = os.fspath(path)
        if not self.path.strip():
            raise ValueError(f"`--model_dir` must name a directory; received {self.path!r}.")
        self.metrics = MetricsLog(self.join("metrics.csv"), METRICS_COLUMNS)
        self.lock = RunLock(self.path, stale_after)

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
        line = f"{owners.now()}  {shlex.join(argv)}\n".encode()
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
        print(
            f"Warning: {self.join(kind, 'checkpoint')} cannot be read ({problem}); using the checkpoints found by "
            f"name in {self.checkpoint_dir(kind)}: {', '.join(os.path.basename(p) for p in found) or 'none'}.",
            file=sys.stderr,
            flush=True,
        )
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
        print(
            f"Replaced the damaged {state} ({problem}; kept as checkpoint.damaged) by one listing "
            f"{', '.join(os.path.basename(p) for p in found) or 'no checkpoint'}.",
            flush=True,
        )

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
        return any(
            tf.io.gfile.exists(self.join(kind, "checkpoint")) or tf.io.gfile.glob(self.join(kind, "*.index"))
            for kind in CHECKPOINT_KINDS
        )

    # ----------------------------------------------------------------------- identity

    def operative_config(self) -> str | None:
        """The recorded operative gin config, or None if the directory records none."""
        return self.read_text("operative_config.gin")

    def write_operative_config(self, text: str) -> None:
        self.write_text("operative_config.gin", text)

    def check_same_run(self, operative: str) -> None:
        """Refuses an operative config that is not the recorded run's. Reads, never writes.

        The two configs are compared binding by binding (comments, layout and order do not
        count); `RESUMABLE_BINDINGS` may differ, and so may a parameter added to the code since
        the run was recorded, when it is at its default (the recorded run used that behaviour).
        A directory without a recorded config passes, and so does one that is not yet a run
        (`started()` is False: a run that failed before its first backup, e.g. on a wrong
        weights path, may be started again with another config).

        Raises:
            RunDirectoryMismatch: Bindings differ; one message lists each (recorded -> now,
                "(not bound)" for an added or removed one) and asks for a new `--model_dir`.
            ValueError: The recorded config cannot be parsed.
        """
        if not tf.io.gfile.exists(self.join("operative_config.gin")):
            return
        if not self.started():
            print(
                f"`--model_dir` {self.path!r} holds no checkpoint and no metrics yet (a run that stopped before its "
                "first backup): it takes this run's configuration.",
                flush=True,
            )
            return
        try:
            changed = differing_bindings(self.operative_config(), operative, RESUMABLE_BINDINGS)
        except (SyntaxError, tokenize.TokenError, ValueError) as error:
            raise ValueError(
                f"`--model_dir` {self.path!r} holds an operative_config.gin that cannot be parsed ({error}); "
                "use a new `--model_dir`, or repair the file if this is the same run."
            ) from None
        # A parameter this version added, at its default, changes nothing the recorded run did.
        changed = [
            (key, old, new) for key, old, new in changed if old != "(not bound)" or not is_current_default(key, new)
        ]
        if not changed:
            return
        lines = [f"  {key}: {old} -> {new}" for key, old, new in changed]
        raise RunDirectoryMismatch(
            f"`--model_dir` {self.path!r} holds a run with another configuration; {len(changed)} "
            f"binding{'s differ' if len(changed) > 1 else ' differs'} (recorded -> now):\n"
            + "\n".join(lines)
            + "\nUse a new `--model_dir` for a new run (a resumed run may change only "
            + ", ".join(sorted(RESUMABLE_BINDINGS))
            + ")."
        )
