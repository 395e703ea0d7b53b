"""The binaries end to end, as subprocesses on the real digits data: train, resume, eval, export, predict."""

import json
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import binaries
from binaries import ENV, FAST, INTERRUPTIBLE, command, metrics, run
from resnet.data.sources import DigitsData

# Every test here starts the binaries as subprocesses.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run") / "demo"
    result = run("resnet-train", f"--model_dir={model_dir}", params=FAST)
    return model_dir, result


def test_train_writes_a_complete_model_dir(trained):
    model_dir, result = trained
    assert "Epoch 1/2" in result.stdout and "Epoch 2/2" in result.stdout
    operative = (model_dir / "operative_config.gin").read_text()
    for line in (
        "Trainer.epochs = 2",
        "Trainer.data = @DigitsData()",
        "BasicBlock.shortcut = @ZeroPadShortcut",
        "ResNet.stage_blocks = (3, 3, 3)",
        "InputPipeline.eval_batch_size = 120",
        "BatchNorm.momentum = 0.9",
    ):
        assert line in operative, line
    assert "resnet-train" in (model_dir / "command.txt").read_text()
    rows = metrics(model_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) >= {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert all(0.0 <= float(r["val_accuracy"]) <= 1.0 for r in rows)
    assert list((model_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert tf.train.latest_checkpoint(model_dir / "checkpoints").endswith("epoch-2")
    assert tf.train.latest_checkpoint(model_dir / "backup").endswith("backup-8")
    best = json.loads((model_dir / "best" / "best.json").read_text())
    assert best["val_accuracy"] == pytest.approx(max(float(r["val_accuracy"]) for r in rows), abs=1e-5)


def test_rerunning_a_finished_run_does_not_train_again(trained):
    model_dir, _ = trained
    before = (model_dir / "metrics.csv").read_text()
    result = run("resnet-train", f"--model_dir={model_dir}", params=FAST)
    assert "All 2 epochs are done" in result.stdout
    assert (model_dir / "metrics.csv").read_text() == before


def test_eval_prints_json_last_and_matches_training_metrics(trained):
    model_dir, _ = trained
    result = run("resnet-eval", f"--model_dir={model_dir}")
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(last) == {"top1", "top5", "loss", "examples"}
    assert last["examples"] == 360  # 20% of the 1,797 digits
    # The latest checkpoint is the end of epoch 2, which metrics.csv evaluated.
    assert last["top1"] == pytest.approx(float(metrics(model_dir)[-1]["val_accuracy"]), abs=1e-5)
    assert json.loads((model_dir / "eval.json").read_text())["top1"] == last["top1"]


def test_eval_runs_as_a_python_module(trained):
    model_dir, _ = trained
    command = [sys.executable, "-m", "resnet.evaluate", f"--model_dir={model_dir}", "--checkpoint=best"]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["examples"] == 360


def test_export_serves_uint8_images_like_the_trained_model(trained, tmp_path):
    import keras

    from resnet import cli
    from resnet.export.serving import read_labels

    model_dir, _ = trained
    output = tmp_path / "export"
    result = run("resnet-export", f"--model_dir={model_dir}", f"--output={output}")
    # The digits name their classes: one labels.txt beside the formats, listed in export.json.
    assert (output / "labels.txt").read_text() == "".join(f"{digit}\n" for digit in range(10))
    assert read_labels(str(output)) == list("0123456789")
    assert json.loads((output / "export.json").read_text())["labels"] == "labels.txt"
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.endswith(f"to {output}/ (saved_model, model.keras, labels.txt (10 class names); see export.json)")
    images = np.stack([image for image, _ in DigitsData().examples("eval").take(8).as_numpy_iterator()])
    assert images.dtype == np.uint8

    loaded = tf.saved_model.load(str(output / "saved_model"))
    served = loaded.signatures["serving_default"](images=tf.constant(images))
    trainer = cli.trainer_from_run(str(model_dir), [])
    trainer.restore("best")
    logits = trainer.model(trainer.preprocessing.serve(tf.constant(images)), training=False)
    expected = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(served["classes"].numpy(), expected.argmax(-1))

    reloaded = keras.models.load_model(output / "model.keras")
    np.testing.assert_allclose(
        reloaded(trainer.preprocessing.serve(tf.constant(images))).numpy(), logits.numpy(), rtol=1e-5, atol=1e-5
    )
    again = run("resnet-export", f"--model_dir={model_dir}", f"--output={output}", check=False)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_export_writes_tflite_int8_and_onnx_checked_in_their_runtimes(trained, tmp_path):
    model_dir, _ = trained
    output = tmp_path / "deploy"
    result = run(
        "resnet-export",
        f"--model_dir={model_dir}",
        f"--output={output}",
        "--formats=tflite,onnx",
        "--quantize=int8",
        "--calibration_images=32",
        "--checkpoint=best",
    )
    assert "  int8 calibrates on 32 training images of 'digits'" in result.stdout
    for name in ("model.tflite", "model_int8.tflite"):
        assert f"  {name}: checked against the Keras model on 16 images (16 at 32x32): " in result.stdout
    for name in ("model.keras", "model.onnx"):  # any size: checked at a second one too
        assert f"  {name}: checked against the Keras model on 20 images (16 at 32x32, 4 at 48x40): " in result.stdout
    assert sorted(p.name for p in output.iterdir()) == [
        "export.json",
        "labels.txt",
        "model.keras",
        "model.onnx",
        "model.tflite",
        "model_int8.tflite",
    ]
    assert result.stdout.strip().splitlines()[-1].startswith("Exported ")
    # The converter's and interpreter's own chatter (descriptor 2) is not passed on.
    assert "fully_quantize" not in result.stderr and "XNNPACK" not in result.stderr, result.stderr
    for flags, message in (
        (["--formats=tflite,coreml"], "`formats` must be a list of"),
        (["--quantize=int8"], "add 'tflite' to `formats`"),
        (["--formats=tflite", "--tflite_input_size=32,x"], "`--tflite_input_size` must be HEIGHT,WIDTH"),
    ):
        failed = run("resnet-export", f"--model_dir={model_dir}", f"--output={tmp_path / 'bad'}", *flags, check=False)
        assert failed.returncode == 2 and message in failed.stderr, failed.stderr
        assert not (tmp_path / "bad").exists()


def test_default_model_dir_is_announced(tmp_path):
    result = run(
        "resnet-train",
        params=FAST[:1] + ["Trainer.epochs = 1", "Trainer.steps_per_epoch = 1", "Trainer.batch_size = 8"],
        cwd=tmp_path,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("Writing to"))
    model_dir = tmp_path / line.split("Writing to ", 1)[1]
    assert model_dir.parent == tmp_path / "runs" and model_dir.name.startswith("demo-")
    assert (model_dir / "metrics.csv").is_file()


def test_resume_after_kill_9_continues_mid_epoch(tmp_path):
    model_dir = tmp_path / "killed"
    params = INTERRUPTIBLE
    command = binaries.command("resnet-train", f"--model_dir={model_dir}", params=params)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 300
    try:
        # Wait for a backup in the middle of epoch 2 (steps 13..23), then kill without warning.
        while time.time() < deadline:
            latest = tf.train.latest_checkpoint(model_dir / "backup")
            if latest and 12 < int(latest.rsplit("-", 1)[1]) < 24:
                break
            if process.poll() is not None:
                pytest.fail("training ended before it could be killed in epoch 2")
            time.sleep(0.05)
        else:
            pytest.fail("no mid-epoch backup appeared")
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    first_epoch = metrics(model_dir)[0]
    assert [r["epoch"] for r in metrics(model_dir)] == ["1"]

    result = run("resnet-train", f"--model_dir={model_dir}", params=params)
    resumed = next(line for line in result.stdout.splitlines() if line.startswith("Resuming"))
    assert "epoch 2, step " in resumed and "step 0 of 12," not in resumed and resumed.endswith(", on 1 worker.")
    assert "Epoch 1/3" not in result.stdout  # the finished epoch is not redone
    rows = metrics(model_dir)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert rows[0] == first_epoch
    assert (model_dir / "command.txt").read_text().count("resnet-train") == 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model_dir = tmp_path / "diverging"
    # Two sound epochs (backed up at their ends), then a learning rate beyond float32's range.
    result = run(
        "resnet-train",
        f"--model_dir={model_dir}",
        check=False,
        params=FAST
        + [
            "Trainer.epochs = 3",
            "Trainer.backup_every_steps = 0",
            "learning_rate_schedule.schedule = 'piecewise'",
            "learning_rate_schedule.warmup_epochs = 0",
            "learning_rate_schedule.boundaries = (2,)",
            "learning_rate_schedule.decay_rate = 1e30",
        ],
    )
    assert result.returncode == 2
    assert "training loss is" in result.stderr and "at step" in result.stderr and "(epoch 3," in result.stderr
    assert "backup-8" in result.stderr
    latest = tf.train.latest_checkpoint(model_dir / "backup")
    assert latest.endswith("backup-8")
    reader = tf.train.load_checkpoint(latest)
    assert all(
        np.isfinite(reader.get_tensor(name)).all()
        for name in reader.get_variable_to_shape_map()
        if name.startswith("model/") and "OBJECT_GRAPH" not in name
    )
    assert [r["epoch"] for r in metrics(model_dir)] == ["1", "2"]


@pytest.mark.parametrize(
    "args, params, pattern",
    [
        ([], ["Trainer.epochz = 3"], "Trainer.*epochz"),
        (["--gin_file=experiments/cifar10_resnet56"], ["CIFAR_DIR = '/nonexistent/cifar'"], "/nonexistent/cifar"),
        (["--gin_file=no_such_config"], [], "Unknown config 'no_such_config'"),
        ([], ["ResNet.num_classes = 7"], "7 outputs.*10 classes.*ResNet.num_classes = 10"),
    ],
)
def test_train_reports_bad_input_clearly(tmp_path, args, params, pattern):
    result = run("resnet-train", f"--model_dir={tmp_path / 'run'}", *args, params=params, check=False)
    assert result.returncode == 2, result.stderr
    assert "resnet-train: error:" in result.stderr
    assert __import__("re").search(pattern, result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_model_dir_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run("resnet-train", f"--model_dir={blocker / 'run'}", params=FAST, check=False)
    assert result.returncode == 2 and "cannot be written" in result.stderr and str(blocker) in result.stderr


def test_eval_of_a_directory_without_a_run_is_named(tmp_path):
    result = run("resnet-eval", f"--model_dir={tmp_path}", check=False)
    assert result.returncode == 2 and "operative_config.gin" in result.stderr


def test_mirrored_strategy_over_two_logical_cpus(tmp_path):
    model_dir = tmp_path / "mirrored"
    result = run(
        "resnet-train",
        f"--model_dir={model_dir}",
        params=FAST + ["Trainer.strategy = 'mirrored'", "Trainer.logical_cpus = 2", "ResNet.norm = 'sync_batch'"],
    )
    assert "2 replicas" in result.stdout
    assert [r["epoch"] for r in metrics(model_dir)] == ["1", "2"]


def test_corrupt_image_is_named_by_the_training_binary(tmp_path):
    for split in ("train", "eval"):
        for label in ("cats", "dogs"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                pixels = np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
                (folder / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    broken = tmp_path / "train" / "dogs" / "2.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    params = [
        "Trainer.data = @ImageFolderData()",
        f"ImageFolderData.train_dir = '{tmp_path / 'train'}'",
        f"ImageFolderData.eval_dir = '{tmp_path / 'eval'}'",
        "ResNet.num_classes = 2",
        "Trainer.epochs = 1",
        "Trainer.batch_size = 2",
    ]
    result = run("resnet-train", f"--model_dir={tmp_path / 'run'}", params=params, check=False)
    assert result.returncode == 2 and str(broken) in result.stderr and "skip_corrupt" in result.stderr
    skipping = run(
        "resnet-train", f"--model_dir={tmp_path / 'skipping'}", params=params + ["ImageFolderData.skip_corrupt = True"]
    )
    assert "Epoch 1/1" in skipping.stdout and str(broken) in skipping.stderr
    # The epoch ends with a summary of what it skipped, naming the first files.
    assert (
        f"Epoch 1 skipped 1 unreadable training record(s) of '{tmp_path.name}'; first: could not read or decode "
        f"{broken} (TensorFlow logs the cause as a warning).\n"
    ) in skipping.stdout, skipping.stdout


def test_ctrl_c_ends_training_with_one_line_naming_the_backup(tmp_path):
    model_dir = tmp_path / "interrupted"
    params = INTERRUPTIBLE
    command = binaries.command("resnet-train", f"--model_dir={model_dir}", params=params)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.time() + 300
        while not tf.train.latest_checkpoint(model_dir / "backup"):
            assert process.poll() is None and time.time() < deadline, "no backup appeared"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    assert (
        last.startswith("resnet-train: Interrupted. The newest backup, ") and "run the same command to resume" in last
    )
    assert not (model_dir / "run.lock").exists()
    resumed = run("resnet-train", f"--model_dir={model_dir}", params=params)
    assert "Resuming from" in resumed.stdout and [r["epoch"] for r in metrics(model_dir)] == ["1", "2", "3"]


@pytest.mark.parametrize(
    "program, args, message",
    [
        ("resnet-train", ["--model_dir="], "`--model_dir` must name a directory; received ''."),
        ("resnet-eval", ["--model_dir="], "`--model_dir` must name a directory; received ''."),
        ("resnet-eval", ["--model_dir= "], "`--model_dir` must name a directory; received ' '."),
        ("resnet-export", ["--model_dir=runs/x", "--output="], "`--output` must name a directory; received ''."),
    ],
)
def test_an_empty_path_flag_is_an_error_naming_it(tmp_path, program, args, message):
    result = run(program, *args, params=FAST, cwd=tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == f"{program}: error: {message}", (
        result.stderr
    )
    assert not (tmp_path / "runs").exists() and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def digits(trained, tmp_path_factory):
    """The trained demo run, and its 360 validation digits as PNG files named by label."""
    model_dir, _ = trained
    images = tmp_path_factory.mktemp("predict") / "digits"
    labels = {}
    for i, (image, label) in enumerate(DigitsData().examples("eval").as_numpy_iterator()):
        path = images / str(label) / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(image).numpy())
        labels[str(path)] = int(label)
    return model_dir, images, labels


def predictions(*args: str, check=True) -> tuple[list[dict], subprocess.CompletedProcess]:
    result = run("resnet-predict", "--json", *args, check=check)
    return [json.loads(line) for line in result.stdout.splitlines()], result


def test_predict_on_a_run_and_its_export_counts_what_eval_counts(digits, tmp_path):
    model_dir, images, labels = digits
    evaluated = json.loads(run("resnet-eval", f"--model_dir={model_dir}").stdout.splitlines()[-1])
    assert evaluated["examples"] == len(labels) == 360

    (images / "7" / "broken.png").write_bytes(b"\x89PNG not really")
    results, result = predictions(
        f"--model_dir={model_dir}", "--checkpoint=backup", "--top_k=3", str(images), check=False
    )
    assert result.returncode == 1, result.stderr
    assert "1 of 361 images could not be read" in result.stderr
    errors = [r for r in results if "error" in r]
    assert [e["image"] for e in errors] == [str(images / "7" / "broken.png")]
    assert errors[0]["error"].startswith("not a readable image")
    classified = {r["image"]: r["top"] for r in results if "top" in r}
    assert set(classified) == set(labels)
    for top in classified.values():
        assert len(top) == 3 and [t["name"] for t in top] == [str(t["class"]) for t in top]
        assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    correct = sum(top[0]["class"] == labels[image] for image, top in classified.items())
    assert correct == round(evaluated["top1"] * 360)

    export = tmp_path / "export"
    run("resnet-export", f"--model_dir={model_dir}", "--checkpoint=backup", f"--output={export}")
    assert (export / "labels.txt").read_text().splitlines() == [str(d) for d in range(10)]
    (images / "7" / "broken.png").unlink()
    exported, _ = predictions(f"--export={export}", str(images))
    assert len(exported) == len(labels)
    assert sum(item["top"][0]["class"] == labels[item["image"]] for item in exported) == correct
    for item in exported:
        assert item["top"][0]["class"] == classified[item["image"]][0]["class"]
        assert item["top"][0]["name"] == classified[item["image"]][0]["name"]
        assert item["top"][0]["probability"] == pytest.approx(classified[item["image"]][0]["probability"], abs=1e-4)

    text = run("resnet-predict", f"--export={export}", "--top_k=1", str(images / "0")).stdout.splitlines()
    first = sorted(p for p in labels if "/0/" in p)[0]
    assert text[0] == first and text[1].strip().endswith(f"({classified[first][0]['class']})")


def test_predict_refuses_bad_flags_and_names_an_unreachable_download(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(tf.io.encode_png(np.zeros([8, 8, 3], np.uint8)).numpy())
    for args, message in [
        (["--weights=resnet18.tv_in1k", f"--export={tmp_path}", str(image)], "received --weights, --export"),
        ([f"--export={tmp_path}", str(image)], "holds no saved_model/"),
        (["--weights=resnet18.tv9", str(image)], "Unknown pretrained weights 'resnet18.tv9'"),
    ]:
        result = run("resnet-predict", *args, check=False)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    with socket.socket() as probe:  # a mirror nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        command("resnet-predict", "--weights=resnet18.tv_in1k", f"--cache_dir={tmp_path}", str(image)),
        env={**ENV, "RESNET_WEIGHTS_MIRROR": f"http://127.0.0.1:{port}/"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert f"place it at {tmp_path / 'resnet18-f37072fd.pth'}" in result.stderr.strip().splitlines()[-1]
