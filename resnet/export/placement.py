"""Where an export goes: checking `--output`, building beside it, swapping the result into place.

An export is written into a staging directory of its own beside `output` (`Workspace`) and
swapped in when complete: an existing `output` is moved aside, the staging directory moved to
`output`, and only then is the old export deleted. Deleting never follows a symbolic link.
Exports may run at the same time, even to one `output`: each marks what it owns beside `output`
with an owner record (`resnet.storage.owners`), and another export removes those only once that
owner is gone (`remove_abandoned`). See `resnet.export.serving.export_for_serving` for the whole
contract.
"""

from __future__ import annotations

import collections
import errno
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable

import tensorflow as tf

from resnet.export import deploy
from resnet.storage import owners
from resnet.storage.files import join, local_path, write_atomically

# What an export directory holds: an existing `output` holding anything else is not replaced.
EXPORT_ENTRIES = frozenset(
    {"saved_model", "model.keras", "model.onnx", "export.json", "labels.txt", "model.tflite"}
    | {f"model_{kind}.tflite" for kind in deploy.QUANTIZATIONS}
)
# Beside `output`, an export in progress owns `.<output name>.<8 hex digits>.<kind>` of these kinds.
_WORKSPACE_KINDS = ("partial", "old", "owner")
# How often an export tries to swap itself into place while other exports keep replacing `output`.
_SWAP_ATTEMPTS = 5


def check_output(output: str | os.PathLike, overwrite: bool = False, model_dir: str | os.PathLike | None = None) -> str:
    """Checks that an export may be written to `output` and returns it (without a trailing "/").

    Refused, before anything is written or replaced: an empty `output`; an `output` that is
    `model_dir`, holds it or lies inside it (a run directory is never an export's place, and
    replacing the export would delete the run; a symbolic link counts as what it points to); an
    existing file; a symbolic link to nothing; an existing directory without `overwrite`; and,
    with `overwrite`, a directory holding anything but an export's files (`EXPORT_ENTRIES`), so
    that nothing but a previous export is ever deleted. An `output` that is a link to a previous
    export is replaced as a link: the link goes, what it points to stays.

    Raises:
        ValueError: Naming `--output` and what was expected.
    """
    output = os.fspath(output)
    if not output.strip():
        raise ValueError(f"`--output` must name a directory; received {output!r}.")
    output = output.rstrip("/") or "/"
    if model_dir is not None:
        relation = _nesting(output, os.fspath(model_dir))
        if relation:
            raise ValueError(
                f"`--output` {output!r} {relation} the run directory `--model_dir` {os.fspath(model_dir)!r}; "
                "write the export to a directory outside the run."
            )
    local = local_path(output)
    if local is not None and os.path.islink(local) and not os.path.exists(local):
        raise ValueError(
            f"`--output` {output!r} is a symbolic link to {os.readlink(local)!r}, which does not exist; "
            "remove the link or choose a new path."
        )
    if not tf.io.gfile.exists(output):
        return output
    if not tf.io.gfile.isdir(output):
        raise ValueError(f"`--output` {output!r} is an existing file; an export is a directory: choose a new path.")
    if not overwrite:
        raise ValueError(f"`--output` {output!r} already exists; choose a new directory or pass --overwrite.")
    foreign = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(output) if name.rstrip("/") not in EXPORT_ENTRIES)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(
            f"`--output` {output!r} holds files that are not part of an export ({shown}); --overwrite replaces "
            "only a previous export. Choose another directory."
        )
    return output


def _nesting(path: str, other: str) -> str:
    """How `path` relates to `other` ("is", "holds", "lies inside") or "" if neither is in the other."""

    def parts(p: str) -> tuple[str, ...]:
        local = local_path(p)
        if local is not None:
            return tuple(part for part in os.path.realpath(local).split(os.sep) if part)
        scheme, _, rest = p.partition("://")
        return (scheme + "://", *(part for part in rest.split("/") if part))

    a, b = parts(path), parts(other)
    if a == b:
        return "is"
    if b[: len(a)] == a:
        return "holds"
    if a[: len(b)] == b:
        return "lies inside"
    return ""


def remove_abandoned(output: str, progress: Callable[[str], None]) -> None:
    """Removes what exports to `output` left beside it (staging directories, old exports moved
    aside, owner files) once their owner is gone (see `export_for_serving`)."""
    parent, name = os.path.dirname(output), os.path.basename(output)
    pattern = re.compile(re.escape(f".{name}.") + r"([0-9a-f]{8})\.(" + "|".join(_WORKSPACE_KINDS) + ")")
    workspaces: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for entry in (entry.rstrip("/") for entry in tf.io.gfile.listdir(parent or ".")):
        match = pattern.fullmatch(entry)
        if match:
            workspaces[match[1]][match[2]] = join(parent, entry) if parent else entry
    for paths in workspaces.values():
        owner = owners.read_record(paths["owner"]) if "owner" in paths else None
        ages = [age for age in map(owners.modified_age, paths.values()) if age is not None]
        if not owners.is_gone(owner or {}, owners.STALE_SECONDS, min(ages) if ages else None):
            continue
        described = (
            owners.describe(owner, paths["owner"])
            if owner
            else (f"no readable owner, untouched for over {owners.STALE_SECONDS:g} s")
        )
        progress(f"Removing what an export that is gone left beside {output}: {described}")
        for kind in _WORKSPACE_KINDS:  # the owner file last: what it marks is never left ownerless
            if kind in paths:
                _remove(paths[kind])


class Workspace:
    """An export's own names beside `output`, `.<name>.<token>.<kind>`: the staging directory
    (`partial`), the old export while it is moved aside (`old`), and the owner file (`owner`) that
    says which process of which host they belong to, refreshed every `owners.HEARTBEAT_SECONDS` while
    the export runs. Leaving the `with` block removes the staging directory and the owner file."""

    def __init__(self, output: str):
        self.output = output
        prefix = join(os.path.dirname(output), f".{os.path.basename(output)}.{uuid.uuid4().hex[:8]}")
        self.staging, self.aside, self.owner = (f"{prefix}.{kind}" for kind in _WORKSPACE_KINDS)
        self._record = owners.new_record()
        self._stopped = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="export heartbeat", daemon=True)

    def __enter__(self) -> Workspace:
        try:
            self._write_owner()  # before the staging directory, which is thus never ownerless
            tf.io.gfile.makedirs(self.staging)
        except BaseException:
            self._leave()
            raise
        self._heartbeat.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopped.set()
        self._heartbeat.join()
        self._leave()

    def _leave(self) -> None:
        _remove(self.staging)
        _remove(self.owner)

    def _write_owner(self) -> None:
        # A new file, written once; a reader that sees it half written finds it unreadable and
        # judges it by its age, which is fresh. Heartbeats replace it whole (`_beat`).
        with tf.io.gfile.GFile(self.owner, "w") as file:
            file.write(self._owner_text())

    def _owner_text(self) -> str:
        return owners.to_text({**self._record, "heartbeat": owners.now()})

    def _beat(self) -> None:
        while not self._stopped.wait(owners.HEARTBEAT_SECONDS):
            try:
                write_atomically(self.owner, self._owner_text())
            except (tf.errors.OpError, OSError):
                pass  # the next beat tries again; only another host judges the export by it

    def swap(self, overwrite: bool, model_dir: str | os.PathLike | None) -> None:
        """Moves the complete export from the staging directory to `output`: an existing `output`
        (checked again, see `check_output`) is moved aside first and deleted last. If another
        export moves `output` away or puts its own there between these steps, tries again: the
        last swap wins.

        Raises:
            ValueError: Without `overwrite`, `output` was created while this export ran; with it,
                `output` no longer holds an export, or other exports kept replacing it.
        """
        for _ in range(_SWAP_ATTEMPTS):
            if _exists(self.output):
                if not overwrite:
                    raise ValueError(
                        f"`--output` {self.output!r} was created while this export ran (by another export?); "
                        "choose a new directory or pass --overwrite."
                    )
                check_output(self.output, overwrite, model_dir)
                _remove(self.aside)  # what the last attempt moved aside: an export is in place again
                if not _move(self.output, self.aside):
                    continue  # another export moved `output` away meanwhile
            try:
                placed = _move(self.staging, self.output, keep_partial=False)
            except BaseException:
                self._restore()
                raise
            if placed:
                _remove(self.aside)
                return
        raise ValueError(
            f"`--output` {self.output!r} was replaced by other exports {_SWAP_ATTEMPTS} times while this one "
            "tried to move into place; run one export to it at a time."
        )

    def _restore(self) -> None:
        """After a failed swap, moves the old export back to `output` if it can. (If not, it stays
        aside, ownerless once this export ends, and a later export removes it after
        `owners.STALE_SECONDS`.)"""
        if _exists(self.aside) and not _exists(self.output):
            try:
                _move(self.aside, self.output)
            except (tf.errors.OpError, OSError):
                pass  # the swap's own error is the one to report


def _exists(path: str) -> bool:
    """Whether `path` exists; locally, a symbolic link exists even if what it points to does not."""
    local = local_path(path)
    return os.path.lexists(local) if local is not None else tf.io.gfile.exists(path)


def _remove(path: str) -> None:
    """Deletes `path` and everything below it, if it exists, never following a symbolic link:
    locally a link is removed as itself, and `shutil.rmtree` removes links below as links."""
    local = local_path(path)
    if local is None:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    elif os.path.isdir(local) and not os.path.islink(local):
        shutil.rmtree(local)
    elif os.path.lexists(local):
        os.unlink(local)


def _move(source: str, target: str, keep_partial: bool = True) -> bool:
    """Moves `source` to the new path `target`; False if `source` is gone or `target` exists (another
    export got there first).

    On a local disk: one rename, which moves a symbolic link as itself. Elsewhere file by file,
    never replacing a file at `target`; a failure moves back what was moved, and if that fails
    too, leaves the files where they are (`keep_partial`) or deletes what reached `target`."""
    local_source, local_target = local_path(source), local_path(target)
    if local_source is None:
        return _move_files(source, target, keep_partial)
    if os.path.lexists(local_target):
        return False
    try:
        os.rename(local_source, local_target)
    except OSError as error:
        if isinstance(error, FileNotFoundError) and not os.path.lexists(local_source):
            return False
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR) and os.path.lexists(local_target):
            return False
        raise
    return True


def _move_files(source: str, target: str, keep_partial: bool) -> bool:
    if tf.io.gfile.exists(target):
        return False
    walked = list(tf.io.gfile.walk(source))
    if not walked:
        return False
    moved: list[tuple[str, str]] = []
    try:
        for directory, _, files in walked:
            tf.io.gfile.makedirs(target + directory[len(source) :])
            for name in files:
                path = join(directory, name)
                tf.io.gfile.rename(path, target + path[len(source) :], overwrite=False)
                moved.append((path, target + path[len(source) :]))
    except BaseException as error:
        restored = _move_back(moved)
        if restored or not keep_partial:
            _remove_unless_it_holds_files(target, unless=restored)
        # Another export moved `source` away, or its own files into `target`, meanwhile.
        if restored and isinstance(error, (tf.errors.NotFoundError, tf.errors.AlreadyExistsError)):
            return False
        raise
    tf.io.gfile.rmtree(source)  # the directories left behind
    return True


def _remove_unless_it_holds_files(directory: str, unless: bool) -> None:
    """Deletes `directory`; if `unless`, only when no file is below it (another export's may be)."""
    if tf.io.gfile.exists(directory) and not (unless and any(files for _, _, files in tf.io.gfile.walk(directory))):
        tf.io.gfile.rmtree(directory)


def _move_back(moved: list[tuple[str, str]]) -> bool:
    """Moves the files of `moved` (pairs of old and new path) back; False if that fails."""
    try:
        for path, new_path in reversed(moved):
            tf.io.gfile.rename(new_path, path, overwrite=False)
    except (tf.errors.OpError, OSError):
        return False
    return True
