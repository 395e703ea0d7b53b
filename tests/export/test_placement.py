"""Where an export goes: `--output` checked, the old export replaced only when the new one is
complete, links never followed, several exports at once."""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import tensorflow as tf

from exports import (
    OLD_EXPORT,
    contents,
    dead_owner,
    is_new_export,
    make_old_export,
    other_export,
    outside,
    race,
    read,
    record_when_complete,
    tree,
    write_owner,
)
from resnet.data.preprocessing import Preprocessing
from resnet.export import placement, serving
from resnet.export.placement import check_output
from resnet.export.serving import export_for_serving
from resnet.storage import owners

# Monkeypatches of `tf.io.gfile` hold whichever test exports first.
pytestmark = pytest.mark.usefixtures("gfile_imported_as_keras_does")


class QuickExporter:
    """Stands in for what writes an export's files (`serving._Exporter`): where an export goes and
    what it replaces does not depend on what is in it, and the real files (a SavedModel, checked
    in TensorFlow) take seconds. tests/export/test_serving.py exports for real."""

    def __init__(self, model, preprocessing, directory, *args):
        self.directory = directory

    def write(self, formats, quantize, calibration_images):
        tf.io.gfile.makedirs(f"{self.directory}/saved_model/variables")
        for name, text in (
            ("saved_model/saved_model.pb", "graph"),
            ("saved_model/variables/variables.index", "index"),
            ("model.keras", "model"),
            ("export.json", '{"files": {}}'),
        ):
            with tf.io.gfile.GFile(f"{self.directory}/{name}", "w") as f:
                f.write(text)


@pytest.fixture(autouse=True)
def quick_exports(request, monkeypatch):
    if "slow" not in request.keywords:  # the slow test runs real exports in other processes
        monkeypatch.setattr(serving, "_Exporter", QuickExporter)


def test_existing_export_is_kept_unless_overwriting(model, preprocessing, parent):
    output = f"{parent}/export"
    make_old_export(output)
    with pytest.raises(
        ValueError, match=f"^`--output` '{output}' already exists; choose a new directory or pass --overwrite.$"
    ):
        export_for_serving(model, preprocessing, output)
    assert tree(output) == OLD_EXPORT
    export_for_serving(model, preprocessing, output, overwrite=True)
    assert read(f"{output}/export.json") != "old export" and "saved_model/variables/variables.index" in tree(output)
    assert tf.io.gfile.listdir(parent) in (["export"], ["export/"])  # no staging left behind


def test_overwrite_replaces_only_a_previous_export(model, preprocessing, parent):
    """A run directory (or any directory with other files) is never deleted by --overwrite."""
    run = f"{parent}/run"
    tf.io.gfile.makedirs(f"{run}/backup")
    for name in ("metrics.csv", "backup/backup-4.index", "operative_config.gin"):
        with tf.io.gfile.GFile(f"{run}/{name}", "w") as f:
            f.write("precious")
    before = tree(parent)
    for output, message in (
        (run, "is the run directory"),
        (parent, "holds the run directory"),
        (f"{run}/export", "lies inside the run directory"),
    ):
        with pytest.raises(ValueError, match=f"^`--output` '{output}' {message} `--model_dir` '{run}'; write the"):
            export_for_serving(model, preprocessing, output, overwrite=True, model_dir=run)
    # Without knowing the run, --overwrite still deletes only what looks like a previous export.
    with pytest.raises(
        ValueError,
        match="holds files that are not part of an export .*backup, metrics.csv, "
        "operative_config.gin.*--overwrite replaces only a previous export",
    ):
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


def test_overwrite_removes_a_link_in_the_old_export_never_what_it_points_to(
    model, preprocessing, tmp_path, monkeypatch
):
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


def test_overwrite_of_an_output_that_is_a_link_replaces_the_link_not_its_target(
    model, preprocessing, tmp_path, monkeypatch
):
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
        host, now, long_ago = socket.gethostname(), owners.now(), "2000-01-01T00:00:00+00:00"
        records = {
            "1111aaaa": {
                "host": host,
                "pid": live.pid,
                "process_start": owners.process_start(live.pid),
                "heartbeat": now,
            },
            "2222bbbb": dead_owner(),
            "3333cccc": {"host": "elsewhere.example", "pid": live.pid, "heartbeat": now},
            "4444dddd": {"host": "elsewhere.example", "pid": live.pid, "heartbeat": long_ago},
            "5555eeee": dead_owner(),  # died before it made its staging directory
        }
        for token, owner in records.items():
            write_owner(f"{parent}/.export.{token}.owner", owner)
            if token != "5555eeee":
                for kind in ("partial", "old"):
                    tf.io.gfile.makedirs(f"{parent}/.export.{token}.{kind}/saved_model")
                    write_owner(f"{parent}/.export.{token}.{kind}/saved_model/saved_model.pb", {"work": token})
        kept = {
            ".export.1111aaaa.owner",
            ".export.1111aaaa.partial",
            ".export.1111aaaa.old",
            ".export.3333cccc.owner",
            ".export.3333cccc.partial",
            ".export.3333cccc.old",
        }
        if not parent.startswith("ram://"):  # without a readable owner: by age (ram:// files have no time)
            os.makedirs(f"{parent}/.export.6666ffff.partial")  # young: kept
            os.makedirs(f"{parent}/.export.7777aaaa.partial")  # older than LOCK_STALE_SECONDS: removed
            os.utime(f"{parent}/.export.7777aaaa.partial", (0, time.time() - owners.STALE_SECONDS - 60))
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
    monkeypatch.setattr(owners, "HEARTBEAT_SECONDS", 0.1)
    output = f"{parent}/export"
    tf.io.gfile.makedirs(parent)
    with placement.Workspace(output) as workspace:
        assert re.fullmatch(r"\.export\.[0-9a-f]{8}\.partial", os.path.basename(workspace.staging))
        assert workspace.owner == workspace.staging[: -len("partial")] + "owner"
        first = json.loads(read(workspace.owner))
        assert (first["host"], first["pid"]) == (socket.gethostname(), os.getpid())
        assert first["process_start"] == owners.process_start(os.getpid())
        deadline = time.monotonic() + 10
        while json.loads(read(workspace.owner))["heartbeat"] == first["heartbeat"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads(read(workspace.owner))["heartbeat"] > first["heartbeat"]
        assert not owners.is_gone(json.loads(read(workspace.owner)), owners.STALE_SECONDS)
    assert tf.io.gfile.listdir(parent) == []


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
        placement._remove(output)

    def other_moves_its_export_in():  # so this export's rename finds `output` re-created
        other_export(output)
        placement._remove(other_aside)

    happened = race(monkeypatch, parent, output, other_moves_the_old_export_aside, other_moves_its_export_in)
    export_for_serving(model, preprocessing, output, overwrite=True)
    assert happened == ["aside", "in"]
    assert is_new_export(output)
    assert sorted(name.rstrip("/") for name in tf.io.gfile.listdir(parent)) == ["export", "notes.txt"]
    assert read(f"{parent}/notes.txt") == "keep"


def test_without_overwrite_an_output_another_export_created_meanwhile_is_kept(
    model, preprocessing, parent, monkeypatch
):
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
    from resnet.export.serving import export_for_serving

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
    second = [
        [f"{exports}/.new.*.partial", new, False, f"{signals}/second-1"],
        [f"{exports}/.replaced.*.partial", replaced, True, f"{signals}/second-2"],
    ]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", EXPORTER, json.dumps(steps)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for steps in (first, second)
    ]
    try:
        results = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0 and "Traceback" not in stderr, stderr
    # Which of the two ends first depends on the machine: one export to `new` wins, the other is
    # refused cleanly; both exports to `replaced` succeed, one after the other.
    (first_out, _), (second_out, _) = results
    refused = (
        f"refused `--output` {new!r} was created while this export ran (by another export?); choose a new "
        "directory or pass --overwrite."
    )
    assert sorted([first_out.splitlines()[0], second_out.splitlines()[0]]) == [f"exported {new}", refused]
    assert first_out.splitlines()[1:] == second_out.splitlines()[1:] == [f"exported {replaced}"]
    assert sorted(os.listdir(exports)) == ["new", "replaced"]  # no staging, nothing moved aside
    assert is_new_export(new) and is_new_export(replaced)
