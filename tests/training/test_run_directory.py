"""The run directory: files on any TensorFlow file system, replaced whole, checkpoints found past
damaged files, one run per directory."""

import json
import os
import uuid

import gin
import keras
import pytest
import tensorflow as tf

from conftest import files_below
from resnet import config
from resnet.config import parse_bindings
from resnet.training.metrics_log import METRICS_COLUMNS
from resnet.training.run_directory import CHECKPOINT_NAMES, RESUMABLE_BINDINGS, RunDirectory, RunDirectoryMismatch


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
    assert run.metrics.rows() == [
        dict.fromkeys(METRICS_COLUMNS, "") | {"epoch": "1", "loss": "0.5", "val_accuracy": "0.75"}
    ]
    assert run.read_text("missing.txt") is None
    assert run.checkpoint_dir("backup") == f"{location}/backup"
    assert run.checkpoint_path("backup") is None
    with pytest.raises(ValueError, match="No checkpoint at 'nowhere'"):
        run.checkpoint_path("nowhere")
    with pytest.raises(ValueError, match="`kind` must be one of 'backup', 'checkpoints', 'best'; received 'latest'"):
        run.checkpoint_dir("latest")
    # Only the files written: no temporaries, no write probe left behind.
    assert sorted(files_below(location)) == ["best/best.json", "command.txt", "metrics.csv", "operative_config.gin"]
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
    assert files_below(location) == {"state.json": b"old"}  # no temporary left behind


def test_unwritable_directory_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match=f"^`--model_dir` '{blocker}/run' cannot be written: .*not a directory"):
        RunDirectory(str(blocker / "run")).create()
    with pytest.raises(ValueError, match="`--model_dir` must name a directory; received ''"):
        RunDirectory("")
    with pytest.raises(ValueError, match="`stale_after` must be a positive number of seconds; received 0"):
        RunDirectory(str(tmp_path), stale_after=0)


def test_command_log_keeps_whatever_it_holds(location):
    run = RunDirectory(location)
    run.create()
    with tf.io.gfile.GFile(run.join("command.txt"), "wb") as f:
        f.write(b"2026-01-01  resnet-train --gin_param=\xff\n")
    run.append_command(["resnet-train"])
    with tf.io.gfile.GFile(run.join("command.txt"), "rb") as f:
        lines = f.read().splitlines()
    assert lines[0] == b"2026-01-01  resnet-train --gin_param=\xff" and lines[1].endswith(b"  resnet-train")


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
    bindings = parse_bindings(recorded)
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
    assert parse_bindings(text) == {
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
        "Trainer.epochs = 9",
        "Trainer.keep_checkpoints = 1",
        "Trainer.backup_every_steps = 0",
        "Trainer.progress = 'epoch'",
        "Trainer.cluster_timeout = 30.0",
        "InputPipeline.eval_batch_size = 120",
        "InputPipeline.data_service = 'grpc://localhost:5050'",
        "InputPipeline.data_service_lanes = 4",
        "InputPipeline.data_service_timeout = 60",
    )
    # Another strategy and other devices too (a trainer built here has one device: edited in).
    assert "Trainer.strategy = 'default'" in resumed and "Trainer.logical_cpus = None" in resumed
    resumed = resumed.replace("Trainer.strategy = 'default'", "Trainer.strategy = 'multi_worker_mirrored'")
    resumed = resumed.replace("Trainer.logical_cpus = None", "Trainer.logical_cpus = 2")
    old, new = parse_bindings(recorded), parse_bindings(resumed)
    assert {key for key in old if old[key] != new[key]} == RESUMABLE_BINDINGS
    run.check_same_run(resumed)
    # Layout, comments, order and module qualifiers gin adds for unambiguous names are not configuration.
    sections = recorded.replace(
        "ResNet.stage_blocks = (3, 3, 3)", "ResNet.stage_blocks = (3,\n    3, 3)  # paper"
    ).split("\n\n")
    run.check_same_run(
        "\n\n".join(reversed(sections)).replace("ResNet.norm", "resnet.model.ResNet.norm") + "\n# note\n"
    )


def started_run(location: str, operative: str) -> RunDirectory:
    """A run directory that records `operative` and one epoch of metrics: a run that has begun."""
    run = RunDirectory(location)
    run.create()
    run.write_operative_config(operative)
    run.metrics.write({"epoch": 1, "step": 4, "loss": 2.5})
    return run


def test_another_run_is_refused_listing_every_difference(location, recorded):
    run = started_run(location, recorded)
    before = files_below(location)
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
    assert files_below(location) == before  # nothing written


def test_a_parameter_added_since_the_run_began_counts_only_away_from_its_default(location, recorded):
    # A run recorded before `Preprocessing.interpolation` and `PretrainedWeights.name` existed.
    assert "Preprocessing.interpolation = 'bilinear'" in recorded
    before = recorded.replace("Preprocessing.interpolation = 'bilinear'\n", "")
    run = started_run(location, before)
    run.check_same_run(recorded)  # the new parameter at its default: the same run
    with pytest.raises(RunDirectoryMismatch, match=r"Preprocessing.interpolation: \(not bound\) -> 'bicubic'"):
        run.check_same_run(recorded.replace("interpolation = 'bilinear'", "interpolation = 'bicubic'"))
    with pytest.raises(RunDirectoryMismatch, match=r"Preprocessing.interpolation: 'bilinear' -> \(not bound\)"):
        started_run(f"{location}/other", recorded).check_same_run(before)
    assert not config.is_current_default("Preprocessing.interpolation", "@bilinear")
    assert not config.is_current_default("Preprocessing.nonexistent", "'bilinear'")
    assert not config.is_current_default("Unknown.interpolation", "'bilinear'")
    assert config.is_current_default("BottleneckBlock.stride_on", "'3x3'")  # a Keras layer registered with gin
    assert not config.is_current_default("BottleneckBlock.groups", "1.0")  # another type is another value


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
    with pytest.raises(
        ValueError,
        match="holds an operative_config.gin that cannot be parsed .*line 2: byte 22 of the file is not UTF-8 text",
    ):
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


# ------------------------------------------------------------------------- damaged files


def save_checkpoints(run: RunDirectory, kind: str, numbers) -> list[str]:
    """Checkpoints of a small variable saved into `kind` as the trainer saves them; their paths, newest first."""
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(v=tf.Variable(1.0)),
        run.checkpoint_dir(kind),
        max_to_keep=5,
        checkpoint_name=CHECKPOINT_NAMES[kind],
    )
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
