"""The training step: weight decay on kernels only, label smoothing, precision, XLA, model checks."""

import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import resnet
from conftest import marked_slow, torchvision_resnet18_state
from resnet import config
from resnet._internals import flatten_layers
from resnet.training.checkpoints import variables_by_path
from resnet.training.errors import StorageFull, TrainingDiverged, TrainingInterrupted
from resnet.training.run_directory import RunDirectory
from resnet.training.steps import classification_loss, decayed_kernels, make_train_step
from resnet.training.trainer import Trainer

TINY = [
    "ResNet.stage_blocks = (1, 1, 1)",
    "Trainer.batch_size = 8",
    "Trainer.steps_per_epoch = 2",
    "Trainer.epochs = 1",
    "learning_rate_schedule.schedule = 'constant'",
    "learning_rate_schedule.base_learning_rate = 0.5",
    "learning_rate_schedule.warmup_epochs = 0",
    "Trainer.momentum = 0.0",
]


def make_trainer(tmp_path, *bindings):
    config.parse(["experiments/demo"], TINY + list(bindings))
    trainer = gin.get_configurable(Trainer)(model_dir=tmp_path)
    trainer.setup_process()
    trainer.build()
    return trainer


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.normal(size=(8, 32, 32, 3)).astype("float32")), tf.constant(rng.integers(0, 10, 8), tf.int32)


def one_step_change(tmp_path, weight_decay):
    trainer = make_trainer(tmp_path, f"Trainer.weight_decay = {weight_decay}")
    keras.utils.set_random_seed(1)
    before = {path: v.numpy().copy() for path, v in variables_by_path(trainer.model).items()}
    trainer.make_train_step()(batch())
    after = {path: v.numpy() for path, v in variables_by_path(trainer.model).items()}
    return before, after


def test_weight_decay_adds_its_gradient_to_kernels_only(tmp_path):
    before0, after0 = one_step_change(tmp_path / "a", 0.0)
    gin.clear_config()
    keras.backend.clear_session()
    before1, after1 = one_step_change(tmp_path / "b", 0.01)
    lr, decay = 0.5, 0.01
    checked = set()
    for path in before0:
        np.testing.assert_array_equal(before0[path], before1[path])  # same initial weights
        extra = (after1[path] - before1[path]) - (after0[path] - before0[path])
        if path.endswith("kernel"):
            # SGD without momentum: the decay's extra step is -lr * decay * w (up to float error).
            np.testing.assert_allclose(extra, -lr * decay * before1[path], rtol=1e-3, atol=1e-6)
            checked.add(path.rsplit("/", 1)[-1])
        else:
            np.testing.assert_allclose(extra, 0.0, atol=1e-6)
    assert checked == {"kernel"}
    assert any(p.startswith("classifier/") for p in before0)


def test_layer_regularizers_are_refused_in_favour_of_weight_decay(tmp_path):
    refusal = r"regularization loss.*ResNet.kernel_regularizer.*Trainer.weight_decay"
    with pytest.raises(ValueError, match=refusal):
        make_trainer(tmp_path, "ResNet.kernel_regularizer = 'l2'")
    model = resnet.build("cifar/resnet20", ["ResNet.kernel_regularizer = 'l2'"])
    with pytest.raises(ValueError, match=refusal):
        make_train_step(model, keras.optimizers.SGD(), num_classes=10, global_batch_size=8)


def test_decayed_variables_are_conv_and_dense_kernels(tmp_path):
    trainer = make_trainer(tmp_path)
    names = {v.path for v in decayed_kernels(trainer.model)}
    assert "classifier/kernel" in names and "stem/conv1/kernel" in names
    assert not any(n.endswith(("gamma", "beta", "bias")) for n in names)
    convs = [layer for layer in flatten_layers(trainer.model) if isinstance(layer, keras.layers.Conv2D)]
    assert len(names) == len(convs) + 1


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_training_steps(tmp_path, precision):
    trainer = make_trainer(tmp_path, f"Trainer.precision = {precision!r}")
    assert trainer.model.get_layer("stem").convs[0].compute_dtype == precision.split("_")[1]
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")
    step = trainer.make_train_step()
    losses = [float(step(batch(i))[0]) for i in range(3)]
    assert all(np.isfinite(losses))


# slow: compiling the step with XLA takes seconds; CI runs it, the quick loop does not.
@pytest.mark.slow
def test_xla_compiled_step_matches_the_plain_step(tmp_path):
    plain = make_trainer(tmp_path / "plain")
    weights = plain.model.get_weights()
    plain_loss = float(plain.make_train_step()(batch())[0])
    gin.clear_config()
    keras.backend.clear_session()
    xla = make_trainer(tmp_path / "xla", "Trainer.jit_compile = True")
    xla.model.set_weights(weights)
    assert float(xla.make_train_step()(batch())[0]) == pytest.approx(plain_loss, rel=1e-4)


def test_label_smoothing_in_training_only(tmp_path):
    trainer = make_trainer(tmp_path, "Trainer.label_smoothing = 0.1")
    images, labels = batch()
    options = dict(num_classes=10, label_smoothing=trainer.label_smoothing)
    logits, loss = classification_loss(trainer.model, images, labels, training=True, **options)
    log_p = tf.nn.log_softmax(logits).numpy()
    target = 0.9 * np.eye(10)[labels.numpy()] + 0.1 / 10
    np.testing.assert_allclose(loss.numpy(), -(target * log_p).sum(-1), rtol=1e-5)
    logits, loss = classification_loss(trainer.model, images, labels, training=False, **options)
    log_p = tf.nn.log_softmax(logits).numpy()
    np.testing.assert_allclose(loss.numpy(), -log_p[np.arange(8), labels.numpy()], rtol=1e-5)


@pytest.mark.parametrize(
    "binding, pattern",
    [
        ("Trainer.precision = 'float16'", r"Trainer.precision.*'mixed_bfloat16'.*'float16'"),
        ("Trainer.strategy = 'tpu'", r"Trainer.strategy.*'mirrored'.*'tpu'"),
        ("Trainer.batch_size = 0", r"Trainer.batch_size.*>= 1"),
        ("Preprocessing.image_size = 28", r"takes images of shape \(32, 32, 3\).*28x28x3"),
        (
            "Trainer.freeze_stages = 9",
            r"^`Trainer.freeze_stages` must be an integer in \[0, 3\] \(the model has 3 stages\)",
        ),
    ],
)
def test_bad_trainer_settings(tmp_path, binding, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_trainer(tmp_path, binding)


def test_fine_tuning_starts_from_pretrained_weights_and_keeps_frozen_stages(tmp_path):
    state = torchvision_resnet18_state()
    path = tmp_path / "resnet18.npz"
    np.savez(path, **state)
    # The demo's data and recipe, with torchvision's resnet18 (at 32x32) instead of ResNet-20.
    config.parse(
        ["experiments/demo", "resnet18"],
        [
            "ResNet.stage_strides = (1, 2, 2, 2)",
            "BasicBlock.shortcut = @ProjectionShortcut",
            "ResNet.num_classes = 10",
            "Trainer.initial_weights = @PretrainedWeights()",
            f"PretrainedWeights.path = '{path}'",
            "PretrainedWeights.skip_classifier = True",
            "Trainer.freeze_stages = 2",
            "Trainer.epochs = 1",
            "Trainer.steps_per_epoch = 2",
            "Trainer.batch_size = 8",
        ],
    )
    trainer = gin.get_configurable(Trainer)(model_dir=tmp_path / "run")
    trainer.train()
    weights = variables_by_path(trainer.model)
    # Frozen: exactly the pretrained values after training (statistics included).
    np.testing.assert_array_equal(weights["stem/conv1/kernel"].numpy(), state["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        weights["stage2/block2/norm2/moving_mean"].numpy(), state["layer2.1.bn2.running_mean"]
    )
    # Trained: stage 3 moved away from its pretrained values.
    assert not np.allclose(
        weights["stage3/block1/conv1/kernel"].numpy(), state["layer3.0.conv1.weight"].transpose(2, 3, 1, 0)
    )
    assert trainer.model.get_layer("stage3").trainable and not trainer.model.get_layer("stage2").trainable


def test_a_diverging_run_never_saves_non_finite_weights(tmp_path):
    """With a huge learning rate the weights overflow (moving variances first) while the loss
    can still be finite: no backup may hold them, and the checkpoint named as the last good one
    holds only finite values."""
    trainer = make_trainer(
        tmp_path,
        "learning_rate_schedule.base_learning_rate = 1e6",
        "Trainer.epochs = 3",
        "Trainer.steps_per_epoch = 6",
        "Trainer.backup_every_steps = 1",
    )
    with pytest.raises(TrainingDiverged) as info:
        trainer.train()
    message = str(info.value)
    named = message.rsplit("The last good checkpoint is ", 1)[1].rstrip(".")
    saved = sorted(str(p)[: -len(".index")] for p in (tmp_path / "backup").glob("*.index"))
    if named.startswith("none"):
        assert saved == []
    else:
        assert saved == [named]
    for path in saved + sorted(str(p)[: -len(".index")] for p in (tmp_path / "checkpoints").glob("*.index")):
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if name.startswith("model/") and np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.isfinite(value).all(), (path, name)


def truncate(prefix: str) -> None:
    data = tf.io.gfile.glob(prefix + ".data-*")[0]
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)


def test_a_truncated_backup_falls_back_to_the_newest_intact_checkpoint(two_epochs, tmp_path, capsys):
    model_dir = copied_run(two_epochs, tmp_path)
    backup = str(model_dir / "backup" / "backup-4")
    assert RunDirectory(str(model_dir)).checkpoint_path("backup") == backup
    truncate(backup)
    capsys.readouterr()
    resumed = resumed_trainer(model_dir, "Trainer.epochs = 2")
    assert resumed.restore() == str(model_dir / "checkpoints" / "epoch-2")
    assert int(resumed.epoch.numpy()) == 2 and int(resumed.step_in_epoch.numpy()) == 0
    warning = capsys.readouterr().err
    assert f"Warning: checkpoint {backup} (" in warning and "cannot be read; using " in warning
    # Evaluating the run takes the same fallback; with nothing intact, the error names every file.
    from resnet import cli

    _, _, _, path = cli.restored_model(str(model_dir), [], "backup")
    assert path.endswith("epoch-2")
    for prefix in resumed.run_dir.checkpoint_candidates("checkpoints"):
        truncate(prefix)
    with pytest.raises(ValueError, match="No checkpoint could be read.*backup-4.*epoch-2.*epoch-1"):
        cli.restored_model(str(model_dir), [], "backup")
    truncate(resumed.run_dir.checkpoint_path("best"))
    with pytest.raises(ValueError, match="No checkpoint could be read.*best"):
        cli.restored_model(str(model_dir), [], "best")


def test_a_damaged_metrics_file_is_refused_before_training_and_never_costs_a_checkpoint(
    two_epochs, tmp_path, monkeypatch
):
    model_dir = copied_run(two_epochs, tmp_path)
    metrics = model_dir / "metrics.csv"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines[:2] + ["garbage,1,2"] + lines[2:]) + "\n")
    resumed = resumed_trainer(model_dir, "Trainer.epochs = 3", "Trainer.backup_every_steps = 0")
    with pytest.raises(ValueError, match=f"^{metrics} line 3: epoch 'garbage' is not a positive whole number"):
        resumed.train()
    assert resumed.run_dir.checkpoint_path("backup").endswith("backup-4")  # nothing trained
    # A metrics write that fails at the end of an epoch still leaves that epoch's checkpoint.
    metrics.write_text("\n".join(lines) + "\n")
    from resnet.training.metrics_log import MetricsLog

    def failing_write(self, row):
        raise OSError("disk full")

    monkeypatch.setattr(MetricsLog, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        resumed.train()
    assert (model_dir / "checkpoints" / "epoch-3.index").exists()


def test_a_batch_larger_than_the_data_is_named_as_such(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"^`Trainer.batch_size` 4096 is larger than the 1437 training images of "
        r"'digits': not one full batch per epoch",
    ):
        make_trainer(tmp_path, "Trainer.batch_size = 4096", "Trainer.steps_per_epoch = None")


@pytest.mark.parametrize("steps", ["3", "None"])
def test_the_epochs_of_a_run_are_consecutive_stretches_of_the_pipelines_stream(tmp_path, steps):
    """Epochs of `steps_per_epoch` go on where the last one stopped (not from the head of a new
    pass), read as one stream: what the trainer trains on is `InputPipeline.train` for all epochs."""
    trainer = make_trainer(
        tmp_path,
        f"Trainer.steps_per_epoch = {steps}",
        "Trainer.epochs = 3",
        "Trainer.batch_size = 256",
        "Trainer.backup_every_steps = 0",
    )
    trained = []

    def record(batch):
        trained.append((batch[0].numpy(), batch[1].numpy()))
        return tf.constant(1.0), tf.constant(0.0)

    calls = []
    stream = trainer.pipeline.train
    trainer.make_train_step = lambda: record
    trainer.pipeline.train = lambda *args, **kwargs: calls.append(kwargs) or stream(*args, **kwargs)
    trainer.train()
    assert len(calls) == 1  # later epochs need no skipping to their start
    expected = [
        (images.numpy(), labels.numpy()) for images, labels in stream(0, steps=trainer.steps_per_epoch, epochs=3)
    ]
    assert len(trained) == len(expected) == 3 * trainer.steps
    for (images, labels), (want_images, want_labels) in zip(trained, expected, strict=True):
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_array_equal(images, want_images)


def test_run_files_follow_the_umask(tmp_path):
    """TensorBoard or a server under another account must be able to read a run."""
    previous = os.umask(0o022)
    try:
        trainer = make_trainer(tmp_path / "run", "Trainer.backup_every_steps = 0")
        trainer.train()
        trainer.run_dir.write_json("eval.json", {"top1": 0.5})
    finally:
        os.umask(previous)
    run = tmp_path / "run"
    for name in ("metrics.csv", "operative_config.gin", "best/best.json", "eval.json", "checkpoints/checkpoint"):
        assert oct((run / name).stat().st_mode & 0o777) == oct(0o644), name
    for name in ("", "best", "checkpoints", "backup"):
        assert oct((run / name).stat().st_mode & 0o777) == oct(0o755), name


RESTORE_INTO_ANOTHER_MODEL = r"""
import sys
import tensorflow as tf
import resnet
from resnet.training.checkpoints import restore_model, variables_by_path

path = tf.train.Checkpoint(model=variables_by_path(resnet.build("cifar/resnet20"))).save(sys.argv[1])
for bindings in (["ResNet.num_classes = 7"], ["ResNet.stage_blocks = (2, 2, 2)"], []):  # other models, a truncated file
    try:
        restore_model(resnet.build("cifar/resnet20", bindings), path)
    except (ValueError, IndexError, tf.errors.OpError) as error:
        print("refused:", type(error).__name__, str(error).splitlines()[0][:200], flush=True)
    with open(tf.io.gfile.glob(path + ".data-*")[0], "r+b") as f:
        f.truncate(100)
"""


@pytest.mark.slow  # a new process
def test_a_failed_restore_is_one_error_not_a_flood_of_warnings(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", RESTORE_INTO_ANOTHER_MODEL, str(tmp_path / "ck")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("refused:") == 3, result.stdout
    assert "holds 30 variable(s) the model lacks (stage1/block3/" in result.stdout, result.stdout
    assert "unrestored values" not in result.stderr and "could not be found" not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """A run of two TINY epochs (backups after every step; the newest is backup-4), trained once
    for the tests below, which each work on a copy (`copied_run`), and its last metrics."""
    model_dir = tmp_path_factory.mktemp("two_epochs") / "run"
    gin.clear_config()
    last = make_trainer(model_dir, "Trainer.epochs = 2", "Trainer.backup_every_steps = 1").train()
    gin.clear_config()
    keras.backend.clear_session()
    return model_dir, last


def copied_run(two_epochs, tmp_path):
    import shutil

    return shutil.copytree(two_epochs[0], tmp_path / "run")


def resumed_trainer(model_dir, *bindings):
    gin.clear_config()
    keras.backend.clear_session()
    return make_trainer(model_dir, "Trainer.backup_every_steps = 1", *bindings)


def damage_missing_data(prefix: str) -> None:
    os.remove(tf.io.gfile.glob(prefix + ".data-*")[0])


def damage_garbage_index(prefix: str) -> None:
    with open(prefix + ".index", "wb") as f:
        f.write(b"not an sstable" * 20)


def damage_index_directory(prefix: str) -> None:
    os.remove(prefix + ".index")
    os.mkdir(prefix + ".index")


def damage_state_file(prefix: str) -> None:
    with open(os.path.join(os.path.dirname(prefix), "checkpoint"), "wb") as f:
        f.write(b"\xff\xfe not a checkpoint state")


@pytest.mark.parametrize(
    "damage",
    marked_slow(
        [damage_missing_data, truncate, damage_garbage_index, damage_index_directory, damage_state_file],
        lambda damage: damage is not damage_missing_data,
    ),
)
def test_any_unreadable_backup_falls_back_to_an_intact_checkpoint(two_epochs, tmp_path, capsys, damage):
    """A backup whose `.data` file is missing, whose index is garbage or a directory, or whose
    `checkpoint` pointer file is damaged, falls back for resuming and for evaluation, as a
    truncated one does; training then goes on and saves again."""
    from resnet import cli

    model_dir = copied_run(two_epochs, tmp_path)
    backup = str(model_dir / "backup" / "backup-4")
    damage(backup)
    _, _, _, path = cli.restored_model(str(model_dir), [], "backup")
    assert path == (str(model_dir / "checkpoints" / "epoch-2") if damage is not damage_state_file else backup)
    if damage is damage_index_directory:
        return  # TensorFlow's CheckpointManager could not delete it when it replaces the backup
    resumed = resumed_trainer(model_dir, "Trainer.epochs = 3")
    resumed.train()
    assert [row["epoch"] for row in resumed.run_dir.metrics.rows()] == ["1", "2", "3"]
    assert resumed.run_dir.checkpoint_path("backup").endswith("backup-6")
    assert "Warning:" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_that_failed_to_start_may_start_again_and_wrote_nothing(tmp_path):
    """A wrong pretrained-weights path stops the run before anything is written; with the path
    fixed (another configuration), the same directory is then accepted."""
    state = torchvision_resnet18_state(num_classes=10)
    good = tmp_path / "resnet18.npz"
    np.savez(good, **state)
    bindings = [
        "ResNet.stage_strides = (1, 2, 2, 2)",
        "BasicBlock.shortcut = @ProjectionShortcut",
        "ResNet.num_classes = 10",
        "Trainer.initial_weights = @PretrainedWeights()",
        "Trainer.epochs = 1",
        "Trainer.steps_per_epoch = 1",
        "Trainer.batch_size = 8",
    ]
    run = tmp_path / "run"

    def trainer(path):
        gin.clear_config()
        keras.backend.clear_session()
        config.parse(["experiments/demo", "resnet18"], bindings + [f"PretrainedWeights.path = '{path}'"])
        return gin.get_configurable(Trainer)(model_dir=run)

    with pytest.raises(ValueError, match="does not exist"):
        trainer(tmp_path / "wrong.npz").train(command=["resnet-train", "wrong"])
    assert sorted(p.name for p in run.iterdir()) == []  # no command, no config, no lock
    trainer(good).train(command=["resnet-train", "fixed"])
    assert [row["epoch"] for row in RunDirectory(str(run)).metrics.rows()] == ["1"]
    assert "fixed" in (run / "command.txt").read_text() and "wrong" not in (run / "command.txt").read_text()


def snapshot(directory) -> dict:
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_metrics_must_cover_the_finished_epochs(two_epochs, tmp_path):
    model_dir = copied_run(two_epochs, tmp_path)
    metrics = model_dir / "metrics.csv"
    lines = metrics.read_text().splitlines()

    trainer = resumed_trainer(model_dir, "Trainer.epochs = 3")

    def refused(message):
        before = snapshot(model_dir)
        with pytest.raises(ValueError, match=message):
            trainer.train(command=["again"])
        assert snapshot(model_dir) == before  # nothing written

    metrics.write_text("\n".join(lines[:2]) + "\n")  # the row of epoch 2 lost
    refused(r"records epochs 1 to 1, but the run has finished 2 .*the rows of epochs 2 to 2 are missing.*`2,,,,,,,,`")
    for kind in ("backup", "checkpoints", "best"):
        for path in (model_dir / kind).iterdir():
            path.unlink()
    metrics.write_text("\n".join(lines) + "\n")  # every checkpoint lost: the run cannot go on from epoch 0
    refused("records 2 epoch\\(s\\), but `--model_dir` .* holds no checkpoint to resume")


def test_a_finished_run_returns_its_last_recorded_metrics(two_epochs, tmp_path):
    model_dir = copied_run(two_epochs, tmp_path)
    again = resumed_trainer(model_dir, "Trainer.epochs = 2").train()
    last = two_epochs[1]
    assert again.keys() == last.keys() and again["epoch"] == 2 and again["step"] == last["step"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_top5", "learning_rate"):
        assert again[key] == pytest.approx(last[key], rel=1e-6), key


def test_ctrl_c_says_what_the_newest_backup_holds(two_epochs, tmp_path, monkeypatch):
    model_dir = copied_run(two_epochs, tmp_path)
    trainer = resumed_trainer(model_dir, "Trainer.epochs = 3")
    step = trainer.make_train_step()
    calls = []

    def interrupted_step(batch):
        calls.append(1)
        if len(calls) == 2:  # epoch 3, step 2: the newest backup is that of step 1 of epoch 3
            raise KeyboardInterrupt
        return step(batch)

    monkeypatch.setattr(trainer, "make_train_step", lambda: interrupted_step)
    with pytest.raises(
        TrainingInterrupted,
        match=r"^Interrupted\. The newest backup, .*backup-5, holds the run at "
        r"step 1 of 2 in epoch 3: run the same command to resume",
    ):
        trainer.train()
    assert not (model_dir / "run.lock").exists()


def test_a_full_disk_while_saving_names_the_file_and_loses_nothing(two_epochs, tmp_path, monkeypatch):
    model_dir = copied_run(two_epochs, tmp_path)
    resumed = resumed_trainer(model_dir, "Trainer.epochs = 3", "Trainer.backup_every_steps = 0")
    written_at_start = ("command.txt", "operative_config.gin")  # a resumed run records its command and epochs
    before = {p: v for p, v in snapshot(model_dir).items() if p.name not in written_at_start}

    def full(self, *args, **kwargs):
        raise tf.errors.ResourceExhaustedError(
            None, None, f"{self.directory}/epoch-3_temp/part-0.data; No space left on device [Op:SaveV2]"
        )

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full)
    with pytest.raises(StorageFull) as raised:
        resumed.train()
    message = str(raised.value)
    assert message.startswith(
        f"No space left on the storage of `--model_dir` while writing the checkpoint "
        f"{model_dir / 'checkpoints' / 'epoch'}-3 ("
    )
    assert "Nothing was lost" in message and "backup-4, holds the run at the end of epoch 2" in message
    after = snapshot(model_dir)
    assert {p: after.get(p) for p in before} == before  # every file as it was (a new TensorBoard file aside)


@pytest.mark.slow
def test_the_lock_stays_fresh_through_a_long_evaluation_and_the_saves(tmp_path, monkeypatch):
    """Another host takes a lock whose heartbeat is older than the stale limit: an evaluation
    (or a save) longer than that must refresh it, not only the training steps."""
    import threading
    import time

    from resnet.storage import owners
    from resnet.training import run_lock

    stale_after = 2.0
    trainer = make_trainer(tmp_path, "Trainer.epochs = 1", "InputPipeline.eval_batch_size = 10")
    trainer.run_dir.lock = run_lock.RunLock(trainer.run_dir.path, stale_after=stale_after)
    monkeypatch.setattr(run_lock, "HEARTBEAT_SECONDS", 0.1)
    trainer.evaluate()  # the evaluation step traced beforehand: what follows is the evaluation itself
    slow = threading.Event()  # set inside the slowed evaluation steps and saves: what this test times
    step = trainer.evaluator._step

    def slow_step(batch):  # 36 batches of 0.1 s: the evaluation lasts longer than the stale limit
        slow.set()
        time.sleep(0.1)
        result = step(batch)
        slow.clear()
        return result

    save = tf.train.CheckpointManager.save

    def slow_save(self, *args, **kwargs):  # three or four saves of 0.8 s in a row
        slow.set()
        time.sleep(0.8)
        result = save(self, *args, **kwargs)
        slow.clear()
        return result

    trainer.evaluator._step = slow_step
    monkeypatch.setattr(tf.train.CheckpointManager, "save", slow_save)
    ages, done = [], threading.Event()

    def watch():  # what another host sees: the age of the heartbeat the lock file records
        while not done.is_set():
            record = owners.read_record(trainer.run_dir.lock.path)
            if record and slow.is_set():
                ages.append(owners.age_of(record.get("heartbeat")))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        trainer.train()
    finally:
        done.set()
        watcher.join()
    assert len(ages) > 2 * stale_after / 0.05  # watched for more than twice the stale limit
    assert ages and max(ages) < stale_after, max(ages)


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_freeze_stages_is_checked_when_the_trainer_is_made(tmp_path, value):
    from resnet.data.sources import SyntheticData

    with pytest.raises(ValueError, match=rf"^`Trainer.freeze_stages` must be an integer >= 0; received {value!r}"):
        Trainer(tmp_path, data=SyntheticData(), freeze_stages=value)


@pytest.mark.slow  # two runs
def test_a_run_reading_its_own_files_resumes_only_on_as_many_workers(tmp_path, monkeypatch):
    """With InputPipeline.shard_by = 'files' the batches depend on the number of workers: a
    run that had 1 is refused on 2, before anything is written, and resumes on 1."""
    from resnet.training import distribution

    files = ["InputPipeline.shard_by = 'files'"]
    make_trainer(tmp_path, *files).train()
    before = {path: os.path.getmtime(path) for path in map(str, tmp_path.rglob("*")) if os.path.isfile(path)}
    on_two = make_trainer(tmp_path, *files, "Trainer.epochs = 2")
    monkeypatch.setattr(distribution, "workers", lambda strategy: 2)
    with pytest.raises(ValueError, match=r"trained on 1 worker\(s\) and resumes on 2: with `InputPipeline.shard_by`"):
        on_two.train()
    after = {path: os.path.getmtime(path) for path in map(str, tmp_path.rglob("*")) if os.path.isfile(path)}
    assert {path: time for path, time in after.items() if not path.endswith("run.lock")} == {
        path: time for path, time in before.items() if not path.endswith("run.lock")
    }
    monkeypatch.setattr(distribution, "workers", lambda strategy: 1)
    assert make_trainer(tmp_path, *files, "Trainer.epochs = 2").train()["epoch"] == 2


def test_a_backup_of_an_earlier_version_without_worker_count_and_epoch_totals_restores(two_epochs, tmp_path):
    """Checkpoints written before the trainer saved `workers` and `epoch_totals` still resume:
    those two keep their defaults, everything else is restored."""
    model_dir = copied_run(two_epochs, tmp_path)
    trained = resumed_trainer(model_dir, "Trainer.epochs = 3")
    assert trained.restore() == str(model_dir / "backup" / "backup-4")
    old = {name: value for name, value in trained._state.items() if name not in ("workers", "epoch_totals")}
    old_backup = tf.train.Checkpoint(**old).save(str(tmp_path / "old" / "backup"))  # as CheckpointManager saves
    assert {name.split("/", 1)[0] for name, _ in tf.train.list_variables(old_backup)} >= {"model", "epoch"}
    assert "workers" not in {name.split("/", 1)[0] for name, _ in tf.train.list_variables(old_backup)}
    weights = [variable.numpy() for variable in trained.model.weights]
    resumed = resumed_trainer(model_dir, "Trainer.epochs = 3")
    resumed.build()
    resumed.restore(old_backup)
    assert int(resumed.epoch.numpy()) == 2 and int(resumed.workers.numpy()) == 1
    assert resumed.epoch_totals.numpy().tolist() == [0.0, 0.0, 0.0]
    for variable, expected in zip(resumed.model.weights, weights, strict=True):
        np.testing.assert_array_equal(variable.numpy(), expected, err_msg=variable.path)
