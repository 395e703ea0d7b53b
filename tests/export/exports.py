"""What the export tests share: old exports to replace, snapshots of directories, simulated rivals."""

import json
import os
import socket
import subprocess

import tensorflow as tf

from resnet.export import serving
from resnet.storage import owners


def tree(directory: str) -> set[str]:
    """Paths of every file and directory below `directory`, relative to it."""
    found = set()
    for root, dirs, files in tf.io.gfile.walk(directory):
        relative = root[len(directory) + 1 :]
        found |= {f"{relative}/{name}".lstrip("/") for name in dirs + files}
    return found


OLD_EXPORT = {"export.json", "labels.txt", "saved_model", "saved_model/saved_model.pb"}


def make_old_export(output: str) -> None:
    """A stand-in for a previous export: only names an export has, with contents marked old."""
    tf.io.gfile.makedirs(f"{output}/saved_model")
    for name in ("export.json", "labels.txt", "saved_model/saved_model.pb"):
        with tf.io.gfile.GFile(f"{output}/{name}", "w") as f:
            f.write("old export")


def read(path: str) -> str:
    with tf.io.gfile.GFile(path) as f:
        return f.read()


def dead_owner() -> dict:
    """The owner record of an export whose process has ended (on this host)."""
    process = subprocess.Popen(["sleep", "60"])
    started = owners.process_start(process.pid)
    process.kill()
    process.wait()
    return {"host": socket.gethostname(), "pid": process.pid, "process_start": started, "heartbeat": owners.now()}


def write_owner(path: str, owner: dict) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(owner))


def contents(directory) -> dict[str, object]:
    """Every entry below `directory` (not following links below it): a file's bytes, a link's target, "dir"."""
    directory = os.fspath(directory)
    found = {}
    if "://" in directory:
        for path in tree(directory):
            full = f"{directory}/{path}"
            found[path] = "dir" if tf.io.gfile.isdir(full) else tf.io.gfile.GFile(full, "rb").read()
        return found
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                found[os.path.relpath(path, directory)] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                found[os.path.relpath(path, directory)] = "dir"
            else:
                with open(path, "rb") as f:
                    found[os.path.relpath(path, directory)] = f.read()
    return found


def outside(found: dict[str, object], name: str) -> dict[str, object]:
    """`found` without the entry `name` and what lies below it."""
    return {path: value for path, value in found.items() if path != name and not path.startswith(name + "/")}


def record_when_complete(monkeypatch, path) -> list[dict[str, object]]:
    """The contents of `path` at the moment the new export is complete (in its staging directory)."""
    seen = []
    write = serving._Exporter.write

    def write_then_record(self, *args):
        write(self, *args)
        seen.append(contents(path))

    monkeypatch.setattr(serving._Exporter, "write", write_then_record)
    return seen


def is_new_export(output) -> bool:
    return "variables/variables.index" in " ".join(tree(os.fspath(output))) and '"files"' in read(
        f"{output}/export.json"
    )


def race(monkeypatch, parent: str, output: str, after_aside=None, before_in=None) -> list[str]:
    """Makes another export act between this export's steps: `after_aside()` runs when this export
    first tries to move `output` aside, `before_in()` when it first moves its staging directory in."""
    local = not parent.startswith("ram://")
    module, name = (os, "rename") if local else (tf.io.gfile, "rename")
    rename = getattr(module, name)
    happened = []

    def racing_rename(source, target, *args, **kwargs):
        source = os.fspath(source)
        if after_aside and "aside" not in happened and (source == output or source.startswith(output + "/")):
            happened.append("aside")
            after_aside()
        if (
            before_in
            and "in" not in happened
            and ".partial" in source
            and (target == output or os.fspath(target).startswith(output + "/"))
        ):
            happened.append("in")
            before_in()
        return rename(source, target, *args, **kwargs)

    monkeypatch.setattr(module, name, racing_rename)
    return happened


def other_export(output: str) -> None:
    """What another export puts in place: an export's names, marked as the other's."""
    tf.io.gfile.makedirs(f"{output}/saved_model")
    for name in ("export.json", "model.keras", "saved_model/saved_model.pb"):
        with tf.io.gfile.GFile(f"{output}/{name}", "w") as f:
            f.write("the other export")
