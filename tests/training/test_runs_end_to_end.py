"""A run directory keeps its identity, is held by one run at a time, lives on any TensorFlow file
system, and two runs with one seed are the same run."""

import csv
import io
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import gin
import numpy as np
import pytest
import tensorflow as tf

from binaries import ENV, FAST, INTERRUPTIBLE, command, run

# Every test here runs the binaries as subprocesses or trains a run end to end.
pytestmark = pytest.mark.slow


def snapshot(directory: Path) -> dict:
    """Every file below `directory` with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def checkpoint_values(path: str) -> dict:
    reader = tf.train.load_checkpoint(path)
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("identity") / "demo"
    run("resnet-train", f"--model_dir={model_dir}", params=FAST)
    return model_dir


def test_rerun_with_another_model_is_refused_and_changes_nothing(finished):
    before = snapshot(finished)
    result = run(
        "resnet-train",
        f"--model_dir={finished}",
        params=FAST + ["ResNet.stage_blocks = (2, 2, 2)", "Trainer.momentum = 0.5"],
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "ResNet.stage_blocks" in result.stderr and "(3, 3, 3)" in result.stderr and "(2, 2, 2)" in result.stderr
    assert "Trainer.momentum" in result.stderr and "--model_dir" in result.stderr
    assert "Traceback" not in result.stderr
    # One message, the last lines, and no flood of TensorFlow's checkpoint warnings before it.
    lines = result.stderr.strip().splitlines()
    message = next(i for i, line in enumerate(lines) if line.startswith("resnet-train: error:"))
    assert len(lines) - message <= 4, result.stderr
    assert not any("checkpoint" in line.lower() or "tensorflow:" in line for line in lines[:message]), result.stderr
    assert snapshot(finished) == before


def test_rerun_may_change_what_resuming_allows(finished, tmp_path):
    copy = tmp_path / "more"
    subprocess.run(["cp", "-r", str(finished), str(copy)], check=True)
    result = run(
        "resnet-train",
        f"--model_dir={copy}",
        params=[p for p in FAST if not p.startswith("Trainer.epochs")]
        + ["Trainer.epochs = 3", "Trainer.backup_every_steps = 0", "Trainer.progress = 'epoch'"],
    )
    assert "Epoch 3/3" in result.stdout and "Epoch 2/3" not in result.stdout
    assert "Trainer.epochs = 3" in (copy / "operative_config.gin").read_text()


def test_second_run_on_a_held_directory_is_refused_and_a_dead_owner_is_replaced(tmp_path):
    model_dir = tmp_path / "held"
    params = INTERRUPTIBLE
    first = subprocess.Popen(
        command("resnet-train", f"--model_dir={model_dir}", params=params),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        deadline = time.time() + 300
        while not (model_dir / "run.lock").exists():
            assert first.poll() is None and time.time() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        started = time.time()
        second = run("resnet-train", f"--model_dir={model_dir}", params=params, check=False)
        assert second.returncode == 75, second.stderr  # try again later
        assert "in use" in second.stderr and f"pid {first.pid}" in second.stderr, second.stderr
        assert time.time() - started < 60
        assert first.poll() is None  # the holder goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The holder died without releasing its lock: a new run on the same host takes it over.
    third = run("resnet-train", f"--model_dir={model_dir}", params=params)
    assert "Done." in third.stdout
    assert not (model_dir / "run.lock").exists()


def test_whole_cycle_on_an_in_memory_file_system(tmp_path):
    """Train, resume, evaluate and export on ram://, TensorFlow's in-memory file system."""
    import keras

    from resnet import cli, config
    from resnet.export.serving import export_for_serving
    from resnet.training.trainer import Trainer

    model_dir = f"ram://{uuid.uuid4().hex}/run"
    bindings = [p for p in FAST if not p.startswith("Trainer.epochs")]
    config.parse(["experiments/demo"], bindings + ["Trainer.epochs = 1"])
    first = gin.get_configurable(Trainer)(model_dir=model_dir)
    first.train(command=["resnet-train", "first"])
    gin.clear_config()
    keras.backend.clear_session()
    config.parse(["experiments/demo"], bindings + ["Trainer.epochs = 2"])
    second = gin.get_configurable(Trainer)(model_dir=model_dir)
    second.train(command=["resnet-train", "second"])
    assert int(second.epoch.numpy()) == 2
    rows = list(csv.DictReader(io.StringIO(tf.io.gfile.GFile(f"{model_dir}/metrics.csv").read())))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    commands = tf.io.gfile.GFile(f"{model_dir}/command.txt").read()
    assert "first" in commands and "second" in commands
    for name in ("operative_config.gin", "best/best.json"):
        assert tf.io.gfile.exists(f"{model_dir}/{name}"), name
    assert tf.train.latest_checkpoint(f"{model_dir}/checkpoints").endswith("epoch-2")
    assert tf.io.gfile.glob(f"{model_dir}/tensorboard/events.out.tfevents.*")
    assert not tf.io.gfile.exists(f"{model_dir}/run.lock")
    assert not os.path.exists("ram:")  # nothing went to a local directory named after the URI

    gin.clear_config()
    keras.backend.clear_session()
    trainer, model, evaluator, path = cli.restored_model(model_dir, [], "backup")
    results = evaluator.evaluate()
    assert results["loss"] == pytest.approx(float(rows[-1]["val_loss"]), rel=1e-6, abs=1e-6)
    assert results["top1"] == pytest.approx(float(rows[-1]["val_accuracy"]), abs=1e-9)

    output = f"ram://{uuid.uuid4().hex}/export"
    export_for_serving(model, trainer.preprocessing, output, from_logits=evaluator.from_logits)
    local = tmp_path / "model.keras"
    tf.io.gfile.copy(f"{output}/model.keras", str(local))
    images = tf.constant(np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)), tf.uint8)
    expected = model(trainer.preprocessing.serve(images), training=False).numpy()
    reloaded = keras.models.load_model(local)
    np.testing.assert_allclose(reloaded(trainer.preprocessing.serve(images)).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert tf.io.gfile.exists(f"{output}/saved_model/saved_model.pb")


def test_runs_with_one_seed_are_bit_identical_and_resume_exactly(tmp_path):
    params = [
        "Trainer.epochs = 3",
        "Trainer.steps_per_epoch = 6",
        "Trainer.batch_size = 32",
        "Trainer.backup_every_steps = 0",
        "Trainer.seed = 7",
        "Trainer.deterministic = True",
        "InputPipeline.eval_batch_size = 360",
    ]
    first, second, killed = tmp_path / "first", tmp_path / "second", tmp_path / "killed"
    run("resnet-train", f"--model_dir={first}", params=params)
    run("resnet-train", f"--model_dir={second}", params=params)
    columns = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_top5")

    def table(model_dir):
        with open(model_dir / "metrics.csv", newline="") as f:
            return [[row[c] for c in columns] for row in csv.DictReader(f)]

    assert table(first) == table(second) and len(table(first)) == 3

    # Killed between epochs (backups only at epoch ends), then resumed: the same weights, bit for bit.
    process = subprocess.Popen(
        command("resnet-train", f"--model_dir={killed}", params=params),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        deadline = time.time() + 300
        while not tf.train.latest_checkpoint(str(killed / "backup")):
            assert process.poll() is None and time.time() < deadline, "no backup appeared"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert len(table(killed)) < 3
    result = run("resnet-train", f"--model_dir={killed}", params=params)
    assert "Resuming" in result.stdout
    assert table(killed) == table(first)
    expected = checkpoint_values(tf.train.latest_checkpoint(str(first / "backup")))
    actual = checkpoint_values(tf.train.latest_checkpoint(str(killed / "backup")))
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
