"""benchmarks/deploy.py runs end to end on tiny settings and reports what it promises.

Plumbing only (flags, JSON fields, consistency of the derived figures), never speed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Every test here runs the benchmark script (and resnet-train) as subprocesses.
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "deploy.py"
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
FORMATS = {"saved_model", "tflite_float32", "tflite_int8", "onnx"}


def run(*command: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    return run(sys.executable, str(SCRIPT), *args)


def test_deploy_reports_latency_throughput_and_speedups_of_every_format(tmp_path):
    out = tmp_path / "deploy.json"
    result = run_benchmark(
        "--configs=cifar/resnet20",
        "--batch_size=2",
        "--repeats=1",
        "--warmup=1",
        "--calibration_images=4",
        f"--json={out}",
    )
    results = json.loads(out.read_text())
    assert json.loads(result.stdout.strip().splitlines()[-1]) == results
    assert (results["batch_size"], results["repeats"], results["calibration_images"]) == (2, 1, 4)
    measured = results["configs"]["cifar/resnet20"]
    assert (measured["recipe"], measured["network_input"], measured["image_size"]) == ("cifar", 32, [32, 32])
    formats = measured["formats"]
    assert set(formats) == FORMATS
    base = formats["saved_model"]
    for name, entry in formats.items():
        for figure in ("latency_ms_batch1", "images_per_second"):
            assert 0 < entry[f"{figure}_min"] <= entry[figure] <= entry[f"{figure}_max"], name
        assert entry["size_mb"] > 0
        assert entry["speedup_batch1"] == pytest.approx(
            base["latency_ms_batch1"] / entry["latency_ms_batch1"], rel=1e-2
        )
        assert entry["speedup_batchN"] == pytest.approx(
            entry["images_per_second"] / base["images_per_second"], rel=1e-2
        )
    assert base["speedup_batch1"] == base["speedup_batchN"] == 1
    # Weights in 8 bits instead of 32: the int8 file is several times smaller than the float one.
    assert formats["tflite_int8"]["size_mb"] < formats["tflite_float32"]["size_mb"] / 2
    machine = results["machine"]
    assert (
        machine["cores"] == os.cpu_count() and machine["tensorflow"] and machine["onnxruntime"] and machine["tf2onnx"]
    )
    assert machine["cpu"] in result.stdout and "repeat 1/1" in result.stdout and "cifar/resnet20" in result.stdout
    assert "demo" not in results


def test_deploy_measures_the_accuracy_of_a_trained_run_in_each_format(tmp_path):
    run_dir = tmp_path / "demo"
    run(
        str(Path(sys.executable).parent / "resnet-train"),
        f"--model_dir={run_dir}",
        *(
            f"--gin_param={p}"
            for p in (
                "Trainer.epochs = 1",
                "Trainer.steps_per_epoch = 2",
                "Trainer.batch_size = 16",
                "InputPipeline.eval_batch_size = 120",
            )
        ),
    )
    out = tmp_path / "deploy.json"
    result = run_benchmark(
        "--configs=", f"--demo_run={run_dir}", "--demo_calibration_images=8", "--batch_size=100", f"--json={out}"
    )
    results = json.loads(out.read_text())
    assert results["configs"] == {}
    demo = results["demo"]
    assert demo["run_dir"] == str(run_dir) and demo["checkpoint"].startswith(str(run_dir / "best"))
    assert (demo["eval_images"], demo["calibration_images"]) == (360, 8)  # the demo holds out 20% of 1,797 digits
    accuracy = demo["accuracy"]
    assert set(accuracy) == FORMATS and all(0 <= value <= 1 for value in accuracy.values())
    # The float formats compute the same probabilities up to rounding: the same classes, but for a near tie.
    one_image = 1 / demo["eval_images"]
    assert accuracy["tflite_float32"] == pytest.approx(accuracy["saved_model"], abs=one_image)
    assert accuracy["onnx"] == pytest.approx(accuracy["saved_model"], abs=one_image)
    change = 100 * (accuracy["tflite_int8"] - accuracy["saved_model"])
    assert demo["int8_accuracy_change_points"] == pytest.approx(change, abs=1e-3)
    assert "360 eval images" in result.stdout


def test_deploy_refuses_to_measure_nothing():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--configs="], capture_output=True, text=True, env=ENV, timeout=600
    )
    assert result.returncode != 0 and "Nothing to measure" in result.stderr
