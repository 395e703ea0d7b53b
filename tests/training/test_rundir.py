"""The run directory: files on any TensorFlow file system, replaced whole, one run per directory."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import uuid

import gin
import keras
import pytest
import tensorflow as tf

from resnet import config
from resnet.training import rundir
from resnet.training.rundir import MetricsLog, RunDirectory, RunDirectoryLocked, RunDirectoryMismatch, join


@pytest.fixture(params=["local", "ram"])
def location(request, tmp_path):
    return str(tmp_path / "run") if request.param == "local" else f"ram://{uuid.uuid4().hex}/run"


def files(location: str) -> dict[str, bytes]:
    """Every file below `location` with its bytes."""
    found = {}
    for directory, _, names in tf.io.gfile.walk(location):
        for name in names:
            path = join(directory, name)
            found[path[len(location) + 1:]] = tf.io.gfile.GFile(path, "rb").read()
    return found


def test_join_keeps_the_scheme():
    assert join("ram://x", "a", "b/") == "ram://x/a/b"
    assert join("gs://bucket/", "/run", "best.json") == "gs://bucket/run/best.json"
    assert join("/tmp/run", "best", "best.json") == "/tmp/run/best/best.json"
    assert rundir.local_path("file:///tmp/run") == "/tmp/run"
    assert rundir.local_path("runs/a") == "runs/a" and rundir.local_path("gs://b/a") is None


def test_metrics_log_replaces_a_redone_epoch(location):
    tf.io.gfile.makedirs(location)
    log = MetricsLog(f"{location}/metrics.csv", ["epoch", "loss"])
    log.write({"epoch": 1, "loss": 2.0, "unknown": 7})
    log.write({"epoch": 2, "loss": 1.5})
    log.write({"epoch": 2, "loss": 1.4})  # epoch 2 redone after a crash
    log.write({"epoch": 3})  # a value not recorded is left empty
    assert [(r["epoch"], r["loss"]) for r in log.rows()] == [("1", "2.0"), ("2", "1.4"), ("3", "")]
    assert tf.io.gfile.GFile(f"{location}/metrics.csv").read().splitlines() == ["epoch,loss", "1,2.0", "2,1.4", "3,"]
    with pytest.raises(ValueError, match="`columns` must include 'epoch'; received \\['loss'\\]"):
        MetricsLog(f"{location}/other.csv", ["loss"])
    # A row that would leave a gap, or hold something that is not a number, is never written.
    before = tf.io.gfile.GFile(f"{location}/metrics.csv", "rb").read()
    for row, message in (({"epoch": 5, "loss": 1.0}, "cannot record epoch 5: it holds epochs 1 to 3"),
                         ({"epoch": 4, "loss": "nan"}, "loss 'nan' is not a finite number"),
                         ({"epoch": 4, "loss": "1,2"}, "loss '1,2' is not a number"),
                         ({"epoch": 0, "loss": 1.0}, "epoch '0' is not a positive whole number")):
        with pytest.raises(ValueError, match=message):
            log.write(row)
    assert tf.io.gfile.GFile(f"{location}/metrics.csv", "rb").read() == before


GOOD_METRICS = (
    "epoch,step,loss,accuracy,val_loss,val_accuracy,val_top5,learning_rate,seconds\n"
    "1,4,3.09,0.125,2.5,0.25,0.75,0.1,3.2\n"
    "2,8,2.01,0.25,2.1,0.5,0.875,0.1,2.9\n"
)


@pytest.mark.parametrize(
    "damage, line, problem",
    [
        (lambda t: t + "3,12,1.5,garbage,xx\n", 4, "5 field\\(s\\) where 9 were expected"),
        (lambda t: t + "3,12,1.5,garbage,1.2,0.5,0.9,0.1,2.0\n", 4, "accuracy 'garbage' is not a number"),
        (lambda t: t.replace("2,8,", "2,abc,"), 3, "step 'abc' is not a whole number"),
        (lambda t: t.replace("2,8,", "2,-8,"), 3, "step '-8' is not a whole number"),
        (lambda t: t.replace("2,8,2.01", "2,8,inf"), 3, "loss 'inf' is not a finite number"),
        (lambda t: t.replace("2,8,", "x2,8,"), 3, "epoch 'x2' is not a positive whole number"),
        (lambda t: t.replace("2,8,2.01,", '2,8,"2.01,'), 3, "not a line of comma-separated values"),
        (lambda t: t[: t.index("2,8,2.01") + 6], 3, "3 field\\(s\\) where 9 were expected.*cut short"),  # cut mid-line
        (lambda t: t + t.splitlines(keepends=True)[2], 4, "epoch 2 where epoch 3 was expected"),  # a duplicate
        (lambda t: t.replace("2,8,", "99,8,"), 3, "epoch 99 where epoch 2 was expected"),
        (lambda t: t.replace("1,4,", "2,4,").replace("\n2,8,", "\n1,8,"), 2, "epoch 2 where epoch 1 was expected"),
        (lambda t: t + "\n3,12,1.5,0.5,1.2,0.5,0.9,0.1,2.0\n", 4, "the line is empty"),
        (lambda t: t.replace("epoch,step", "epoch,steps"), 1, "the header is 'epoch,steps,"),
        (lambda t: "", 1, "the file is empty; expected the header epoch,step,"),
        (lambda t: t.encode().replace(b"2.01", b"2\xff01"), 3, "byte 6 is not UTF-8 text"),
    ],
)
def test_a_damaged_metrics_file_is_refused_naming_file_and_line_and_never_rewritten(location, damage, line, problem):
    tf.io.gfile.makedirs(location)
    path = f"{location}/metrics.csv"
    content = damage(GOOD_METRICS)
    content = content.encode() if isinstance(content, str) else content
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(content)
    log = MetricsLog(path, rundir.METRICS_COLUMNS)
    for action in (log.rows, lambda: log.write({"epoch": 3, "step": 12})):
        with pytest.raises(ValueError, match=f"^{re.escape(path)} line {line}: {problem}"):
            action()
    assert tf.io.gfile.GFile(path, "rb").read() == content  # nothing rewritten or dropped


def test_a_sound_metrics_file_is_rewritten_byte_for_byte(location):
    tf.io.gfile.makedirs(location)
    path = f"{location}/metrics.csv"
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(GOOD_METRICS.replace("3.09", "3.0900"))  # fields are kept as written, not reformatted
    log = MetricsLog(path, rundir.METRICS_COLUMNS)
    assert [row["epoch"] for row in log.rows()] == ["1", "2"] and log.rows()[0]["loss"] == "3.0900"
    log.write({"epoch": 3, "step": 12, "loss": 1.5})
    assert tf.io.gfile.GFile(path).read() == GOOD_METRICS.replace("3.09", "3.0900") + "3,12,1.5,,,,,,\n"


def test_files_of_a_run(location):
    run = RunDirectory(location)
    run.create()
    run.write_json("best/best.json", {"epoch": 2})
    run.append_command(["resnet-train", "--a"])
    run.append_command(["resnet-train", "--gin_param=Trainer.epochs = 3"])
    run.write_operative_config("Trainer.epochs = 2\n")
    run.metrics.write({"epoch": 1, "loss": 0.5, "val_accuracy": 0.75})
    assert json.loads(run.read_text("best/best.json")) == {"epoch": 2}
    commands = run.read_text("command.txt").splitlines()
    assert len(commands) == 2 and commands[0].endswith("  resnet-train --a")
    assert commands[1].endswith("  resnet-train '--gin_param=Trainer.epochs = 3'")  # can be run again
    assert run.operative_config() == "Trainer.epochs = 2\n"
    assert run.metrics.rows() == [dict.fromkeys(rundir.METRICS_COLUMNS, "") | {"epoch": "1", "loss": "0.5", "val_accuracy": "0.75"}]
    assert run.read_text("missing.txt") is None
    assert run.checkpoint_dir("backup") == f"{location}/backup"
    assert run.checkpoint_path("backup") is None
    with pytest.raises(ValueError, match="No checkpoint at 'nowhere'"):
        run.checkpoint_path("nowhere")
    with pytest.raises(ValueError, match="`kind` must be one of 'backup', 'checkpoints', 'best'; received 'latest'"):
        run.checkpoint_dir("latest")
    # Only the files written: no temporaries, no write probe left behind.
    assert sorted(files(location)) == ["best/best.json", "command.txt", "metrics.csv", "operative_config.gin"]
    assert not os.path.exists("ram:")  # nothing went to a local directory named after the URI


def test_a_failed_write_keeps_the_old_file(location, monkeypatch):
    run = RunDirectory(location)
    run.create()
    run.write_text("state.json", "old")

    def failing_rename(*args, **kwargs):  # the new text is written to the temporary file, then:
        raise tf.errors.ResourceExhaustedError(None, None, "disk full")

    monkeypatch.setattr(tf.io.gfile, "rename", failing_rename)
    with pytest.raises(tf.errors.ResourceExhaustedError, match="disk full"):
        run.write_text("state.json", "new")
    assert run.read_text("state.json") == "old"
    assert files(location) == {"state.json": b"old"}  # no temporary left behind


def test_unwritable_directory_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match=f"^`--model_dir` '{blocker}/run' cannot be written: .*not a directory"):
        RunDirectory(str(blocker / "run")).create()
    with pytest.raises(ValueError, match="`--model_dir` must name a directory; received ''"):
        RunDirectory("")
    with pytest.raises(ValueError, match="`stale_after` must be a positive number of seconds; received 0"):
        RunDirectory(str(tmp_path), stale_after=0)


# ---------------------------------------------------------------------------------- identity


def operative(*bindings: str) -> str:
    """The operative config of the demo Trainer built from gin with `bindings`, as resnet-train
    records it."""
    from resnet.training.trainer import Trainer

    gin.clear_config()
    keras.backend.clear_session()
    config.parse(["experiments/demo"], ["Trainer.epochs = 2", *bindings])
    gin.get_configurable(Trainer)(model_dir=f"ram://{uuid.uuid4().hex}").build()
    text = gin.operative_config_str()
    gin.clear_config()
    return text


@pytest.fixture(scope="module")
def recorded():
    return operative()


def test_operative_config_is_parsed_by_gin(recorded):
    bindings = rundir.parse_bindings(recorded)
    assert bindings["Trainer.epochs"] == "2"
    assert bindings["Trainer.data"] == "@DigitsData()" and bindings["ResNet.norm"] == "@BatchNorm"
    assert bindings["ResNet.stage_blocks"] == "(3, 3, 3)"
    # A dict over several lines is one value.
    assert "\n" in recorded.split("ResNet.kernel_initializer =")[1].split("ResNet.kernel_regularizer")[0]
    assert bindings["ResNet.kernel_initializer"].startswith("{'class_name': 'VarianceScaling'")
    text = """
import resnet.model
# Macros:
# ==============================================================================
DEPTH = 3

# Parameters for ResNet:
# ==============================================================================
ResNet.depth = %DEPTH
train/resnet.model.ResNet.norm = @train/BatchNorm()
model.ResNet.stage_filters = [
    16,  # first
    32, 64,
]
"""
    assert rundir.parse_bindings(text) == {
        "DEPTH": "3",
        "ResNet.depth": "%DEPTH",
        "train/resnet.model.ResNet.norm": "@train/BatchNorm()",
        "model.ResNet.stage_filters": "[16, 32, 64]",
    }


def test_same_run_with_resumable_changes_passes(location, recorded):
    run = RunDirectory(location)
    run.check_same_run(recorded)  # nothing recorded yet
    run.create()
    run.write_operative_config(recorded)
    run.check_same_run(recorded)
    resumed = operative(
        "Trainer.epochs = 9", "Trainer.keep_checkpoints = 1", "Trainer.backup_every_steps = 0",
        "Trainer.progress = 'epoch'", "Trainer.cluster_timeout = 30.0", "InputPipeline.eval_batch_size = 120",
    )
    old, new = rundir.parse_bindings(recorded), rundir.parse_bindings(resumed)
    assert {key for key in old if old[key] != new[key]} == rundir.RESUMABLE_BINDINGS
    run.check_same_run(resumed)
    # Layout, comments, order and module qualifiers gin adds for unambiguous names are not configuration.
    sections = recorded.replace("ResNet.stage_blocks = (3, 3, 3)", "ResNet.stage_blocks = (3,\n    3, 3)  # paper").split("\n\n")
    run.check_same_run("\n\n".join(reversed(sections)).replace("ResNet.norm", "resnet.model.ResNet.norm") + "\n# note\n")


def started_run(location: str, operative: str) -> RunDirectory:
    """A run directory that records `operative` and one epoch of metrics: a run that has begun."""
    run = RunDirectory(location)
    run.create()
    run.write_operative_config(operative)
    run.metrics.write({"epoch": 1, "step": 4, "loss": 2.5})
    return run


def test_another_run_is_refused_listing_every_difference(location, recorded):
    run = started_run(location, recorded)
    before = files(location)
    other = operative("ResNet.stage_blocks = (2, 2, 2)", "Trainer.momentum = 0.5", "Trainer.epochs = 5")
    other = other.replace("Trainer.nesterov = False\n", "") + "\nResNet.extra = 'x'\n"
    with pytest.raises(RunDirectoryMismatch) as raised:
        run.check_same_run(other)
    message = str(raised.value)
    assert message.startswith(f"`--model_dir` '{location}' holds a run with another configuration; 4 bindings differ")
    assert "  ResNet.stage_blocks: (3, 3, 3) -> (2, 2, 2)\n" in message
    assert "  Trainer.momentum: 0.9 -> 0.5\n" in message
    assert "  Trainer.nesterov: False -> (not bound)\n" in message
    assert "  ResNet.extra: (not bound) -> 'x'\n" in message
    assert "Trainer.epochs:" not in message and "Use a new `--model_dir`" in message
    assert isinstance(raised.value, ValueError)
    assert files(location) == before  # nothing written


def test_module_qualifiers_that_name_other_configurables_count(location):
    run = started_run(location, "a.Block.width = 1\nb.Block.width = 2\n")
    run.check_same_run("b.Block.width = 2\na.Block.width = 1\n")
    with pytest.raises(RunDirectoryMismatch, match=r"a.Block.width: 1 -> 2\n  b.Block.width: 2 -> 1\n"):
        run.check_same_run("a.Block.width = 2\nb.Block.width = 1\n")


def test_unparsable_recorded_config_is_named(location):
    run = started_run(location, "Trainer.epochs = (\n")
    with pytest.raises(ValueError, match="holds an operative_config.gin that cannot be parsed"):
        run.check_same_run("Trainer.epochs = 2\n")
    tf.io.gfile.remove(run.join("operative_config.gin"))
    with tf.io.gfile.GFile(run.join("operative_config.gin"), "wb") as f:
        f.write(b"Trainer.epochs = 2\n# \xff\xfe\n")
    with pytest.raises(ValueError, match="holds an operative_config.gin that cannot be parsed .*line 2: byte 22 of the "
                                         "file is not UTF-8 text"):
        run.check_same_run("Trainer.epochs = 2\n")


def test_a_directory_without_checkpoint_or_metrics_is_not_yet_a_run(location, recorded, capsys):
    """A run that failed before its first backup (a wrong weights path, say) may start again
    with another configuration; once it has a checkpoint or a metrics row, it is a run."""
    run = RunDirectory(location)
    run.create()
    run.write_operative_config(recorded)
    run.append_command(["resnet-train", "--gin_param=PretrainedWeights.path = 'wrong.npz'"])
    other = recorded.replace("Trainer.momentum = 0.9", "Trainer.momentum = 0.5")
    run.check_same_run(other)
    assert "holds no checkpoint and no metrics yet" in capsys.readouterr().out
    tf.io.gfile.makedirs(run.join("backup"))
    run.write_text("backup/backup-2.index", "")
    with pytest.raises(RunDirectoryMismatch, match="Trainer.momentum: 0.9 -> 0.5"):
        run.check_same_run(other)
    assert run.started()


# -------------------------------------------------------------------------------------- lock


def write_lock(run, **owner):
    lock = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": rundir._process_start(os.getpid()),
            "token": "theirs", "started": rundir._now(), "heartbeat": rundir._now()}
    run.write_text("run.lock", json.dumps({**lock, **owner}))


def lock_owner(run):
    return json.loads(run.read_text("run.lock"))


def test_lock_is_exclusive_and_released(location):
    first, second = RunDirectory(location), RunDirectory(location)
    first.create()
    with first.lock():
        held = lock_owner(first)
        assert held["host"] == socket.gethostname() and held["pid"] == os.getpid()
        with pytest.raises(RunDirectoryLocked) as raised:
            second.lock()
        assert str(raised.value).startswith(
            f"`--model_dir` '{location}' is in use by another run: host {held['host']}, pid {os.getpid()}, "
            f"started {held['started']}"
        )
        assert "use another `--model_dir`" in str(raised.value)
        assert isinstance(raised.value, ValueError)
    assert first.read_text("run.lock") is None
    second.lock()
    assert lock_owner(second)["token"] != held["token"]
    second.release()
    assert sorted(files(location)) == []


def test_release_leaves_a_lock_that_is_not_ours(location):
    run = RunDirectory(location)
    run.create()
    run.lock()
    write_lock(run, host="elsewhere")  # taken over meanwhile
    run.release()
    assert lock_owner(run)["host"] == "elsewhere"


def test_only_one_of_many_simultaneous_runs_gets_the_local_lock(tmp_path):
    runs = [RunDirectory(str(tmp_path)) for _ in range(8)]
    outcomes = []
    barrier = threading.Barrier(len(runs))

    def take(run):
        barrier.wait()
        try:
            run.lock()
            outcomes.append("locked")
        except RunDirectoryLocked:
            outcomes.append("refused")

    threads = [threading.Thread(target=take, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["locked"] + ["refused"] * 7


def test_lock_of_a_dead_local_process_is_taken_over(location, capsys):
    run = RunDirectory(location)
    run.create()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_lock(run, pid=int(dead.stdout), process_start=None)
    with run.lock():
        assert lock_owner(run)["pid"] == os.getpid()
    assert f"Taking over the lock of a run that is gone: host {socket.gethostname()}, pid {int(dead.stdout)}" in capsys.readouterr().out


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="process start times come from /proc")
def test_lock_of_a_reused_pid_is_taken_over(location):
    run = RunDirectory(location)
    run.create()
    write_lock(run, process_start="1")  # our pid, but another process start: the owner is gone
    with run.lock():
        assert lock_owner(run)["token"] != "theirs"


def test_lock_of_another_host_is_taken_over_only_when_stale(location):
    run = RunDirectory(location, stale_after=60)
    run.create()
    write_lock(run, host="elsewhere", pid=1)
    with pytest.raises(RunDirectoryLocked, match="in use by another run: host elsewhere, pid 1"):
        run.lock()
    assert lock_owner(run)["token"] == "theirs"
    old = "2000-01-01T00:00:00+00:00"
    write_lock(run, host="elsewhere", pid=1, started=old, heartbeat=old)
    with run.lock():
        assert lock_owner(run)["host"] == socket.gethostname()


@pytest.mark.parametrize("content", [b"", b"\xff\xfe not UTF-8 {", b"[1, 2]", b'{"host": '])
def test_unreadable_fresh_local_lock_is_respected(tmp_path, content):
    run = RunDirectory(str(tmp_path), stale_after=60)
    (tmp_path / "run.lock").write_bytes(content)  # being written by a run that just created it
    unreadable = f"unknown \\({re.escape(str(tmp_path / 'run.lock'))} cannot be read as a lock; delete it if no run uses"
    with pytest.raises(RunDirectoryLocked, match=unreadable):
        run.lock()
    os.utime(tmp_path / "run.lock", (0, 0))  # ... or left long ago by a run that died writing it
    with run.lock():
        assert lock_owner(run)["pid"] == os.getpid()


def test_a_directory_in_place_of_the_lock(tmp_path, capsys):
    run = RunDirectory(str(tmp_path), stale_after=60)
    (tmp_path / "run.lock").mkdir()
    with pytest.raises(RunDirectoryLocked, match=f"unknown \\({re.escape(str(tmp_path / 'run.lock'))} cannot be read"):
        run.lock()  # fresh: perhaps a run's doing
    os.utime(tmp_path / "run.lock", (0, 0))
    with run.lock():  # old and empty: taken over
        assert lock_owner(run)["pid"] == os.getpid()
    assert "Taking over the lock of a run that is gone: unknown" in capsys.readouterr().out
    (tmp_path / "run.lock").mkdir()
    (tmp_path / "run.lock" / "notes.txt").write_text("mine")
    os.utime(tmp_path / "run.lock", (0, 0))
    with pytest.raises(ValueError, match="run.lock is a directory with files in it, where the run's lock file belongs"):
        run.lock()
    assert (tmp_path / "run.lock" / "notes.txt").read_text() == "mine"  # nothing of it deleted


def test_heartbeat_refreshes_the_lock(location, monkeypatch):
    run = RunDirectory(location)
    run.create()
    with run.lock():
        before = lock_owner(run)
        monkeypatch.setattr(rundir, "_now", lambda: "2099-01-01T00:00:00+00:00")
        run.heartbeat()  # too soon after taking the lock: nothing written
        assert lock_owner(run) == before
        monkeypatch.setattr(rundir, "HEARTBEAT_SECONDS", 0.0)
        run.heartbeat()
        assert lock_owner(run) == before | {"heartbeat": "2099-01-01T00:00:00+00:00"}
    RunDirectory(location).heartbeat()  # not holding the lock: nothing to do
    assert run.read_text("run.lock") is None


def test_heartbeat_stops_a_run_whose_lock_was_taken_over(location, monkeypatch):
    monkeypatch.setattr(rundir, "HEARTBEAT_SECONDS", 0.0)
    run = RunDirectory(location)
    run.create()
    with run.lock():
        write_lock(run, host="elsewhere", pid=7)
        with pytest.raises(RunDirectoryLocked, match="was taken over by another run \\(host elsewhere, pid 7"):
            run.heartbeat()
    assert lock_owner(run)["host"] == "elsewhere"  # left to its new owner


# ----------------------------------------------------------------------------------- scratch


def test_worker_scratch_is_emptied_at_start_and_removed_at_exit(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir.tempfile, "gettempdir", lambda: str(tmp_path))
    run = RunDirectory("ram://shared/run")
    scratch = run.worker_scratch("/job:worker/task:1")
    assert os.path.dirname(scratch) == str(tmp_path) and os.listdir(scratch) == []
    assert os.path.basename(scratch).startswith("resnet-worker-") and scratch.endswith("-job-worker-task-1")
    (tmp_path / os.path.basename(scratch) / "left-by-a-killed-worker").write_text("")
    again = RunDirectory("ram://shared/run").worker_scratch("/job:worker/task:1")
    assert again == scratch and os.listdir(again) == []
    assert RunDirectory("ram://shared/other").worker_scratch("/job:worker/task:1") != scratch
    assert RunDirectory("ram://shared/run").worker_scratch("/job:worker/task:2") != scratch
    run.cleanup_scratch()
    assert not os.path.exists(scratch)
    run.cleanup_scratch()  # nothing left to do


# ------------------------------------------------------------------------- damaged files


def save_checkpoints(run: RunDirectory, kind: str, numbers) -> list[str]:
    """Checkpoints of a small variable saved into `kind` as the trainer saves them; their paths, newest first."""
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)), run.checkpoint_dir(kind),
                                         max_to_keep=5, checkpoint_name=rundir.CHECKPOINT_NAMES[kind])
    return [manager.save(checkpoint_number=n) for n in numbers][::-1]


@pytest.mark.parametrize("damage", [b"garbage {{{", b"\xff\xfe\x00", b'model_checkpoint_path: ""\n', "directory"])
def test_a_damaged_checkpoint_state_falls_back_to_the_checkpoints_found_by_name(location, damage, capsys):
    run = RunDirectory(location)
    run.create()
    saved = save_checkpoints(run, "backup", [2, 10, 4])  # numbered, not in the order saved
    state = run.join("backup", "checkpoint")
    tf.io.gfile.remove(state)
    if damage == "directory":
        tf.io.gfile.makedirs(state)
    else:
        with tf.io.gfile.GFile(state, "wb") as f:
            f.write(damage)
    by_number = [f"{run.checkpoint_dir('backup')}/backup-{n}" for n in (10, 4, 2)]
    assert sorted(saved) == sorted(by_number)
    assert run.checkpoints("backup") == by_number
    assert run.checkpoint_path("backup") == by_number[0]
    assert run.checkpoint_candidates("backup") == by_number  # no epoch checkpoints
    warning = capsys.readouterr().err
    assert f"Warning: {state} cannot be read (" in warning and "backup-10, backup-4, backup-2" in warning
    run.repair_checkpoint_state("backup")
    assert run.checkpoints("backup") == by_number and not capsys.readouterr().err
    if damage == "directory":
        assert tf.io.gfile.isdir(state + ".damaged")  # moved aside, not deleted
    else:
        with tf.io.gfile.GFile(state + ".damaged", "rb") as f:
            assert f.read() == damage  # the damaged file is kept
    save_checkpoints(run, "backup", [12])  # saving goes on
    assert run.checkpoint_path("backup").endswith("backup-12")


def test_lock_token_identifies_the_holder(location):
    run = RunDirectory(location)
    run.create()
    assert run.lock_token() is None
    with run.lock():
        token = run.lock_token()
        assert isinstance(token, int) and 0 <= token < 2 ** 63
        assert RunDirectory(location).lock_token() == token  # what another worker reads
    write_lock(run, token="not hex")
    assert run.lock_token() is None


def test_command_log_keeps_whatever_it_holds(location):
    run = RunDirectory(location)
    run.create()
    with tf.io.gfile.GFile(run.join("command.txt"), "wb") as f:
        f.write(b"2026-01-01  resnet-train --gin_param=\xff\n")
    run.append_command(["resnet-train"])
    with tf.io.gfile.GFile(run.join("command.txt"), "rb") as f:
        lines = f.read().splitlines()
    assert lines[0] == b"2026-01-01  resnet-train --gin_param=\xff" and lines[1].endswith(b"  resnet-train")


def test_storage_full_is_recognized():
    import errno

    assert rundir.is_storage_full(OSError(errno.ENOSPC, "No space left on device"))
    assert rundir.is_storage_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert rundir.is_storage_full(tf.errors.ResourceExhaustedError(
        None, None, "/r/checkpoints/epoch-1_temp/part-00000-of-00001.data-00000-of-00001.tempstate1; No space left "
        "on device [Op:SaveV2]"))
    assert not rundir.is_storage_full(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"))
    assert not rundir.is_storage_full(OSError(errno.EACCES, "Permission denied"))
    assert not rundir.is_storage_full(ValueError("No space left on device"))
