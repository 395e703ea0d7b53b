"""Exports for serving: on any TensorFlow file system, complete or absent, with the umask's modes."""

import importlib
import json
import os
import re
import socket
import stat
import subprocess
import sys
import textwrap
import time
import uuid

import keras
import numpy as np
import pytest
import tensorflow as tf

import resnet
from resnet.data.preprocessing import Preprocessing
from resnet.training import rundir, serving
from resnet.training.serving import check_output, export_for_serving


@pytest.fixture(scope="module", autouse=True)
def gfile_imported_as_keras_does():
    """Keras imports `tensorflow.io.gfile` by name when it first touches a file, which runs that
    module again and resets its functions, undoing a test's monkeypatch of `tf.io.gfile.rename`
    made before the export's first `model.save`. Importing it first makes such tests hold in any
    order (alone, or as the first export of the process)."""
    importlib.import_module("tensorflow.io.gfile")


@pytest.fixture(scope="module")
def model():
    return resnet.build("cifar/resnet20")


@pytest.fixture
def preprocessing():
    return Preprocessing(image_size=32)


@pytest.fixture(params=["local", "ram"])
def parent(request, tmp_path):
    return str(tmp_path) if request.param == "local" else f"ram://{uuid.uuid4().hex}"


IMAGES = tf.constant(np.random.default_rng(0).integers(0, 255, (3, 40, 36, 3)), tf.uint8)


def tree(directory: str) -> set[str]:
    """Paths of every file and directory below `directory`, relative to it."""
    found = set()
    for root, dirs, files in tf.io.gfile.walk(directory):
        relative = root[len(directory) + 1:]
        found |= {f"{relative}/{name}".lstrip("/") for name in dirs + files}
    return found


OLD_EXPORT = {"export.json", "saved_model", "saved_model/saved_model.pb"}


def make_old_export(output: str) -> None:
    """A stand-in for a previous export: only names an export has, with contents marked old."""
    tf.io.gfile.makedirs(f"{output}/saved_model")
    for name in ("export.json", "saved_model/saved_model.pb"):
        with tf.io.gfile.GFile(f"{output}/{name}", "w") as f:
            f.write("old export")


def read(path: str) -> str:
    with tf.io.gfile.GFile(path) as f:
        return f.read()


def test_export_loads_back_and_serves_what_the_model_computes(model, preprocessing, parent):
    output = f"{parent}/exports/digits"
    assert export_for_serving(model, preprocessing, output + "/") == output
    assert tree(parent) == {"exports", "exports/digits"} | {f"exports/digits/{p}" for p in tree(output)}
    assert {"model.keras", "saved_model/saved_model.pb", "saved_model/variables/variables.index"} <= tree(output)
    probabilities = tf.nn.softmax(model(preprocessing.serve(IMAGES), training=False)).numpy()
    # Both load straight from the URI (ram:// included).
    loaded = tf.saved_model.load(f"{output}/saved_model")
    served = loaded.signatures["serving_default"](images=IMAGES)
    np.testing.assert_allclose(served["probabilities"].numpy(), probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(served["classes"].numpy(), probabilities.argmax(-1))
    reloaded = keras.models.load_model(f"{output}/model.keras")
    np.testing.assert_allclose(
        tf.nn.softmax(reloaded(preprocessing.serve(IMAGES))).numpy(), probabilities, rtol=1e-5, atol=1e-6
    )
    assert not os.path.exists("ram:")  # nothing went to a local directory named after the URI


def test_export_follows_the_umask(model, preprocessing, tmp_path):
    previous = os.umask(0o022)
    try:
        output = export_for_serving(model, preprocessing, tmp_path / "export")
    finally:
        os.umask(previous)
    modes = {}
    for root, dirs, files in os.walk(output):
        for name in dirs + files:
            path = os.path.join(root, name)
            modes[os.path.relpath(path, output)] = stat.S_IMODE(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(output).st_mode) == 0o755
    assert {mode for path, mode in modes.items() if os.path.isdir(os.path.join(output, path))} == {0o755}
    assert {mode for path, mode in modes.items() if os.path.isfile(os.path.join(output, path))} == {0o644}
    assert len(modes) >= 7


def test_existing_export_is_kept_unless_overwriting(model, preprocessing, parent):
    output = f"{parent}/export"
    make_old_export(output)
    with pytest.raises(ValueError, match=f"^`--output` '{output}' already exists; choose a new directory or pass --overwrite.$"):
        export_for_serving(model, preprocessing, output)
    assert tree(output) == OLD_EXPORT
    export_for_serving(model, preprocessing, output, overwrite=True)
    assert read(f"{output}/export.json") != "old export" and "saved_model/variables/variables.index" in tree(output)
    assert tf.io.gfile.listdir(parent) in (["export"], ["export/"])  # no staging left behind


def test_failed_export_leaves_no_staging_and_the_old_export_untouched(model, preprocessing, parent, monkeypatch):
    output = f"{parent}/export"
    make_old_export(output)

    def failing_save(self, filepath, *args, **kwargs):  # after the SavedModel is written
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_for_serving(model, preprocessing, output, overwrite=True)
    assert tree(parent) == {"export"} | {f"export/{p}" for p in OLD_EXPORT}
    assert read(f"{output}/export.json") == "old export"
    with pytest.raises(OSError, match="disk full"):
        export_for_serving(model, preprocessing, f"{parent}/new")
    assert tree(parent) == {"export"} | {f"export/{p}" for p in OLD_EXPORT}


def test_failure_while_moving_into_place_leaves_nothing_half_written(model, preprocessing, monkeypatch):
    parent = f"ram://{uuid.uuid4().hex}"
    rename = tf.io.gfile.rename
    moved = []

    def rename_then_fail(source, target, overwrite=False):
        if moved:
            raise tf.errors.UnavailableError(None, None, "connection reset")
        moved.append(target)
        rename(source, target, overwrite)

    monkeypatch.setattr(tf.io.gfile, "rename", rename_then_fail)
    with pytest.raises(tf.errors.UnavailableError, match="connection reset"):
        export_for_serving(model, preprocessing, f"{parent}/export")
    assert moved and tree(parent) == set()


def test_overwrite_replaces_only_a_previous_export(model, preprocessing, parent):
    """A run directory (or any directory with other files) is never deleted by --overwrite."""
    run = f"{parent}/run"
    tf.io.gfile.makedirs(f"{run}/backup")
    for name in ("metrics.csv", "backup/backup-4.index", "operative_config.gin"):
        with tf.io.gfile.GFile(f"{run}/{name}", "w") as f:
            f.write("precious")
    before = tree(parent)
    for output, message in ((run, "is the run directory"), (parent, "holds the run directory"),
                            (f"{run}/export", "lies inside the run directory")):
        with pytest.raises(ValueError, match=f"^`--output` '{output}' {message} `--model_dir` '{run}'; write the"):
            export_for_serving(model, preprocessing, output, overwrite=True, model_dir=run)
    # Without knowing the run, --overwrite still deletes only what looks like a previous export.
    with pytest.raises(ValueError, match="holds files that are not part of an export .*backup, metrics.csv, "
                                         "operative_config.gin.*--overwrite replaces only a previous export"):
        export_for_serving(model, preprocessing, run, overwrite=True)
    assert tree(parent) == before and read(f"{run}/metrics.csv") == "precious"
    # A path given with a trailing slash, "..", or "file://" is the same directory.
    if not parent.startswith("ram://"):
        for output in (f"{run}/", f"{run}/backup/..", f"file://{run}"):
            with pytest.raises(ValueError, match="is the run directory"):
                export_for_serving(model, preprocessing, output, overwrite=True, model_dir=run)


def test_output_that_is_a_file_is_refused_cleanly(model, preprocessing, parent):
    output = f"{parent}/model.tflite"
    tf.io.gfile.makedirs(parent)
    with tf.io.gfile.GFile(output, "w") as f:
        f.write("a file")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=f"^`--output` '{output}' is an existing file; an export is a directory"):
            export_for_serving(model, preprocessing, output, overwrite=overwrite)
    assert read(output) == "a file"


def test_a_killed_exports_staging_is_removed_by_the_next_export(model, preprocessing, parent):
    output = f"{parent}/export"
    abandoned = f"{parent}/.export.0123abcd.partial"
    unrelated = f"{parent}/.other.0123abcd.partial"
    for directory in (abandoned, unrelated):
        tf.io.gfile.makedirs(f"{directory}/saved_model")
    write_owner(f"{parent}/.export.0123abcd.owner", dead_owner())
    export_for_serving(model, preprocessing, output)
    assert sorted(name.rstrip("/") for name in tf.io.gfile.listdir(parent)) == [".other.0123abcd.partial", "export"]


def dead_owner() -> dict:
    """The owner record of an export whose process has ended (on this host)."""
    process = subprocess.Popen(["sleep", "60"])
    started = rundir._process_start(process.pid)
    process.kill()
    process.wait()
    return {"host": socket.gethostname(), "pid": process.pid, "process_start": started, "heartbeat": rundir._now()}


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
    return "variables/variables.index" in " ".join(tree(os.fspath(output))) and '"files"' in read(f"{output}/export.json")


def test_overwrite_removes_a_link_in_the_old_export_never_what_it_points_to(model, preprocessing, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"  # a SavedModel kept outside the export, linked into it
    (elsewhere / "variables").mkdir(parents=True)
    (elsewhere / "saved_model.pb").write_text("another model")
    (elsewhere / "variables" / "variables.index").write_text("precious")
    output = tmp_path / "export"
    output.mkdir()
    (output / "export.json").write_text("old export")
    (output / "saved_model").symlink_to(elsewhere)
    before, old = contents(tmp_path), contents(output)
    at_completion = record_when_complete(monkeypatch, output)
    export_for_serving(model, preprocessing, output, overwrite=True)
    assert at_completion == [old]  # the old export stays whole until the new one is complete
    assert outside(contents(tmp_path), "export") == outside(before, "export")
    assert not (output / "saved_model").is_symlink() and is_new_export(output)
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "export"]


def test_overwrite_of_an_output_that_is_a_link_replaces_the_link_not_its_target(model, preprocessing, tmp_path, monkeypatch):
    make_old_export(str(tmp_path / "v1"))
    output = tmp_path / "current"
    output.symlink_to(tmp_path / "v1")
    before, old = contents(tmp_path), contents(output)
    at_completion = record_when_complete(monkeypatch, output)
    assert export_for_serving(model, preprocessing, output, overwrite=True) == str(output)
    assert at_completion == [old]
    assert outside(contents(tmp_path), "current") == outside(before, "current")
    assert contents(tmp_path / "v1") == old
    assert not output.is_symlink() and output.is_dir() and is_new_export(output)
    assert sorted(os.listdir(tmp_path)) == ["current", "v1"]


def test_a_dangling_link_as_output_is_refused(model, preprocessing, tmp_path):
    output = tmp_path / "export"
    output.symlink_to(tmp_path / "gone")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"^`--output` '.*export' is a symbolic link to '.*gone', which does not"):
            export_for_serving(model, preprocessing, output, overwrite=overwrite)
    assert os.listdir(tmp_path) == ["export"] and os.readlink(output) == str(tmp_path / "gone")


def test_staging_is_removed_only_once_its_owner_is_gone(model, preprocessing, parent):
    """Another export's staging directory (and the old export it moved aside) is its own while it runs."""
    output = f"{parent}/export"
    live = subprocess.Popen(["sleep", "300"])
    try:
        host, now, long_ago = socket.gethostname(), rundir._now(), "2000-01-01T00:00:00+00:00"
        owners = {
            "1111aaaa": {"host": host, "pid": live.pid, "process_start": rundir._process_start(live.pid), "heartbeat": now},
            "2222bbbb": dead_owner(),
            "3333cccc": {"host": "elsewhere.example", "pid": live.pid, "heartbeat": now},
            "4444dddd": {"host": "elsewhere.example", "pid": live.pid, "heartbeat": long_ago},
            "5555eeee": dead_owner(),  # died before it made its staging directory
        }
        for token, owner in owners.items():
            write_owner(f"{parent}/.export.{token}.owner", owner)
            if token != "5555eeee":
                for kind in ("partial", "old"):
                    tf.io.gfile.makedirs(f"{parent}/.export.{token}.{kind}/saved_model")
                    write_owner(f"{parent}/.export.{token}.{kind}/saved_model/saved_model.pb", {"work": token})
        kept = {".export.1111aaaa.owner", ".export.1111aaaa.partial", ".export.1111aaaa.old",
                ".export.3333cccc.owner", ".export.3333cccc.partial", ".export.3333cccc.old"}
        if not parent.startswith("ram://"):  # without a readable owner: by age (ram:// files have no time)
            os.makedirs(f"{parent}/.export.6666ffff.partial")  # young: kept
            os.makedirs(f"{parent}/.export.7777aaaa.partial")  # older than LOCK_STALE_SECONDS: removed
            os.utime(f"{parent}/.export.7777aaaa.partial", (0, time.time() - rundir.LOCK_STALE_SECONDS - 60))
            write_owner(f"{parent}/.export.8888bbbb.owner", {})  # unreadable, young: kept with its staging
            os.makedirs(f"{parent}/.export.8888bbbb.partial")
            kept |= {".export.6666ffff.partial", ".export.8888bbbb.owner", ".export.8888bbbb.partial"}
        before = contents(parent)
        export_for_serving(model, preprocessing, output)
        assert sorted(name.rstrip("/") for name in tf.io.gfile.listdir(parent)) == sorted(kept | {"export"})
        assert outside(contents(parent), "export") == {
            path: value for path, value in before.items() if path.split("/")[0] in kept
        }
        assert is_new_export(output)
    finally:
        live.kill()
        live.wait()


def test_an_export_marks_its_own_files_with_its_owner_and_a_heartbeat(parent, monkeypatch):
    monkeypatch.setattr(rundir, "HEARTBEAT_SECONDS", 0.1)
    output = f"{parent}/export"
    tf.io.gfile.makedirs(parent)
    with serving._Workspace(output) as workspace:
        assert re.fullmatch(r"\.export\.[0-9a-f]{8}\.partial", os.path.basename(workspace.staging))
        assert workspace.owner == workspace.staging[:-len("partial")] + "owner"
        first = json.loads(read(workspace.owner))
        assert (first["host"], first["pid"]) == (socket.gethostname(), os.getpid())
        assert first["process_start"] == rundir._process_start(os.getpid())
        deadline = time.monotonic() + 10
        while json.loads(read(workspace.owner))["heartbeat"] == first["heartbeat"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads(read(workspace.owner))["heartbeat"] > first["heartbeat"]
        assert not serving._gone(json.loads(read(workspace.owner)), {})
    assert tf.io.gfile.listdir(parent) == []


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
        if before_in and "in" not in happened and ".partial" in source and (
                target == output or os.fspath(target).startswith(output + "/")):
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


def test_the_last_of_two_swaps_wins_when_they_interleave(model, preprocessing, parent, monkeypatch):
    output = f"{parent}/export"
    make_old_export(output)
    with tf.io.gfile.GFile(f"{parent}/notes.txt", "w") as f:
        f.write("keep")
    other_aside = f"{parent}/.export.0000ffff.old"

    def other_moves_the_old_export_aside():  # so this export's rename finds nothing
        for path in sorted(OLD_EXPORT - {"saved_model"}):
            tf.io.gfile.makedirs(os.path.dirname(f"{other_aside}/{path}"))
            with tf.io.gfile.GFile(f"{other_aside}/{path}", "w") as f:
                f.write(read(f"{output}/{path}"))
        serving._remove(output)

    def other_moves_its_export_in():  # so this export's rename finds `output` re-created
        other_export(output)
        serving._remove(other_aside)

    happened = race(monkeypatch, parent, output, other_moves_the_old_export_aside, other_moves_its_export_in)
    export_for_serving(model, preprocessing, output, overwrite=True)
    assert happened == ["aside", "in"]
    assert is_new_export(output)
    assert sorted(name.rstrip("/") for name in tf.io.gfile.listdir(parent)) == ["export", "notes.txt"]
    assert read(f"{parent}/notes.txt") == "keep"


def test_without_overwrite_an_output_another_export_created_meanwhile_is_kept(model, preprocessing, parent, monkeypatch):
    output = f"{parent}/export"
    tf.io.gfile.makedirs(parent)
    theirs = {}

    def other_finishes_first():
        other_export(output)
        theirs.update(contents(output))

    happened = race(monkeypatch, parent, output, before_in=other_finishes_first)
    with pytest.raises(ValueError, match=f"^`--output` '{re.escape(output)}' was created while this export ran"):
        export_for_serving(model, preprocessing, output)
    assert happened == ["in"]
    assert theirs and contents(output) == theirs
    assert [name.rstrip("/") for name in tf.io.gfile.listdir(parent)] == ["export"]


@pytest.mark.parametrize("size", [(100000, 100000), (8193, 32), (32, 8193)])
def test_an_input_size_beyond_the_bound_is_refused_at_once(size, tmp_path):
    started = time.monotonic()
    message = rf"^`--tflite_input_size` must be at most 8192 pixels a side .*; received {re.escape(repr(size))}\.$"
    with pytest.raises(ValueError, match=message):
        export_for_serving(None, Preprocessing(), tmp_path / "export", formats=["tflite"], tflite_input_size=size)
    with pytest.raises(ValueError, match=message):  # what the checks run at, whatever the formats
        export_for_serving(None, Preprocessing(), tmp_path / "export", tflite_input_size=size)
    from resnet.export import _input_size

    text = ",".join(map(str, size))
    with pytest.raises(ValueError, match=rf"^`--tflite_input_size` must be at most 8192 pixels a side .*; received '{text}'\.$"):
        _input_size(text.split(","))
    assert _input_size(["8192", "6000"]) == (8192, 6000) and _input_size(["8192"]) == (8192, 8192)
    assert list(tmp_path.iterdir()) == [] and time.monotonic() - started < 5


@pytest.mark.parametrize("output", ["", " ", "\t\n"])
def test_an_empty_output_is_refused(output, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = f"^`--output` must name a directory; received {re.escape(repr(output))}.$"
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=message):
            check_output(output, overwrite)
        with pytest.raises(ValueError, match=message):
            export_for_serving(None, Preprocessing(), output, overwrite=overwrite)
    assert list(tmp_path.iterdir()) == []


EXPORTER = textwrap.dedent("""
    import glob, json, os, sys, time
    import resnet
    from resnet.data.preprocessing import Preprocessing
    from resnet.training.serving import export_for_serving

    model = resnet.build("cifar/resnet20")
    for wait_for, output, overwrite, done in json.loads(sys.argv[1]):
        deadline = time.monotonic() + 120
        while wait_for and not glob.glob(wait_for) and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            export_for_serving(model, Preprocessing(image_size=32), output, overwrite=overwrite)
            print("exported", output, flush=True)
        except ValueError as error:
            print("refused", error, flush=True)
        open(done, "w").close()
""")


@pytest.mark.slow
def test_two_export_processes_writing_to_one_output(tmp_path):
    """The second starts while the first writes: each keeps its own staging directory; without
    --overwrite the one that ends second is refused cleanly, with --overwrite the last one wins."""
    exports, signals = tmp_path / "exports", tmp_path / "signals"
    exports.mkdir()
    signals.mkdir()
    new, replaced = str(exports / "new"), str(exports / "replaced")
    make_old_export(replaced)
    first = [[None, new, False, f"{signals}/first-1"], [f"{signals}/second-1", replaced, True, f"{signals}/first-2"]]
    second = [[f"{exports}/.new.*.partial", new, False, f"{signals}/second-1"],
              [f"{exports}/.replaced.*.partial", replaced, True, f"{signals}/second-2"]]
    processes = [subprocess.Popen([sys.executable, "-c", EXPORTER, json.dumps(steps)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for steps in (first, second)]
    try:
        results = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (stdout, stderr) in zip(processes, results):
        assert process.returncode == 0 and "Traceback" not in stderr, stderr
    # Which of the two ends first depends on the machine: one export to `new` wins, the other is
    # refused cleanly; both exports to `replaced` succeed, one after the other.
    (first_out, _), (second_out, _) = results
    refused = (f"refused `--output` {new!r} was created while this export ran (by another export?); choose a new "
               "directory or pass --overwrite.")
    assert sorted([first_out.splitlines()[0], second_out.splitlines()[0]]) == [f"exported {new}", refused]
    assert first_out.splitlines()[1:] == second_out.splitlines()[1:] == [f"exported {replaced}"]
    assert sorted(os.listdir(exports)) == ["new", "replaced"]  # no staging, nothing moved aside
    assert is_new_export(new) and is_new_export(replaced)
