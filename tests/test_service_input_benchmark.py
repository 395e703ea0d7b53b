"""benchmarks/service_input.py runs end to end on tiny settings and reports what it promises.

Plumbing and exact counts (flags, JSON fields, steps and images per epoch, images decoded on the
host, the service workers' entries, consistency of the derived figures, every service process
ended), never speed.
"""

import json
import os

import pytest

from conftest import run_benchmark

# The test runs the benchmark script, which starts a tf.data service's processes.
pytestmark = pytest.mark.slow


def run(*args: str):
    return run_benchmark("service_input.py", *args)


def running(pid: int) -> bool:
    """Whether process `pid` exists and is a `resnet-data-service` (a PID may be reused)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"resnet-data-service" in f.read()
    except FileNotFoundError:
        return False


def test_service_input_measures_both_modes_and_ends_the_service(tmp_path):
    out = tmp_path / "service.json"
    images, batch, repeats, workers = 16, 8, 2, 2
    result = run(
        f"--images={images}",
        "--height=24",
        "--width=32",
        "--classes=2",
        "--shards=2",
        f"--batch_size={batch}",
        "--crop_size=16",
        "--warmup=1",
        f"--repeats={repeats}",
        f"--service_workers={workers}",
        f"--json={out}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads(out.read_text())
    steps = images // batch
    assert (results["steps_per_epoch"], results["repeats"]) == (steps, repeats)
    assert (results["service_workers"], results["lanes"]) == (workers, workers)  # lanes default to the workers
    assert set(results["modes"]) == {"local", "service"}
    for mode, run_ in results["modes"].items():
        assert run_["steps_per_epoch"] == steps and len(run_["epochs"]) == repeats
        for epoch in run_["epochs"]:
            assert (epoch["steps"], epoch["delivered"]) == (steps, steps * batch)
            assert epoch["wall_seconds"] > 0 and epoch["host_cpu_seconds"] >= 0
            assert len(epoch["service_worker_cpu_seconds"]) == (workers if mode == "service" else 0)
        host = run_["host_cpu_seconds_per_step"]
        # A tiny epoch's CPU time may round to 0 at getrusage's clock tick; the mean over the stream may not.
        assert 0 <= host["min"] <= host["seconds"] <= host["max"]
        assert run_["host_cpu_seconds_per_step_mean"] == pytest.approx(
            sum(epoch["host_cpu_seconds"] for epoch in run_["epochs"]) / (repeats * steps), abs=1e-4
        )
        assert run_["host_cpu_seconds_per_step_mean"] > 0
        assert 0 < run_["images_per_second"]["min"] <= run_["images_per_second"]["max"]

    local, served = results["modes"]["local"], results["modes"]["service"]
    # Exactly the images of the timed epochs are decoded on the host without the service (counted in
    # the graph); with it they are not counted.
    assert (local["decoded_on_host"], local["decoded_on_host_per_epoch"]) == (repeats * images, images)
    assert served["decoded_on_host"] is None
    assert local["input_cpu_seconds_per_step_mean"] == local["host_cpu_seconds_per_step_mean"]
    assert "service_workers" not in local

    entries = served["service_workers"]
    assert [entry["index"] for entry in entries] == list(range(workers))
    totals = [entry["cpu_seconds_total"] for entry in entries]
    for entry, total in zip(entries, totals, strict=True):
        assert total == pytest.approx(sum(e["service_worker_cpu_seconds"][entry["index"]] for e in served["epochs"]))
        assert entry["cpu_seconds_per_step"] == pytest.approx(total / (repeats * steps), abs=1e-4)
    assert sum(totals) > 0  # the service workers made the batches
    assert served["service_cpu_seconds_total"] == pytest.approx(sum(totals), abs=1e-3)
    assert sum(entry["share"] for entry in entries) == pytest.approx(1, abs=0.01)
    assert served["input_cpu_seconds_per_step_mean"] == pytest.approx(
        served["host_cpu_seconds_per_step_mean"] + served["service_cpu_seconds_per_step_mean"], abs=2e-4
    )
    assert served["after_warmup"]["seconds"] > 0 and served["dispatcher_cpu_seconds_total"] >= 0

    goal = results["goal"]
    ratio = served["host_cpu_seconds_per_step"]["seconds"] / local["host_cpu_seconds_per_step"]["seconds"]
    assert goal["host_cpu_per_step_service_vs_local"] == pytest.approx(ratio, abs=1e-4)
    assert goal["met"] == (goal["host_cpu_per_step_service_vs_local"] <= 0.20)
    assert goal["host_cpu_per_step_fall_percent"] == pytest.approx(100 * (1 - ratio), abs=0.1)

    # A dispatcher and the workers, each ended by the script (SIGTERM, exit code 0) and gone.
    processes = results["service_processes"]
    assert [entry["role"] for entry in processes] == ["dispatcher"] + [f"worker-{i}" for i in range(workers)]
    assert [entry["pid"] for entry in processes[1:]] == [entry["pid"] for entry in entries]
    assert processes[0]["address"].startswith("grpc://localhost:")
    assert all(entry["exit_code"] == 0 for entry in processes), processes
    assert not [entry["pid"] for entry in processes if running(entry["pid"])]

    machine = results["machine"]
    assert machine["cores"] == os.cpu_count() and machine["tensorflow"] and results["mean_jpeg_kib"] > 0
    assert machine["cpu"] in result.stdout and "cores" in results["note"]
    assert "host CPU-s/step" in result.stdout and "Goal, the host's input CPU per step" in result.stdout


def test_service_input_refuses_flags_of_scale_input_and_a_partial_batch(tmp_path):
    refused = run("--workers=1,2", f"--json={tmp_path / 'service.json'}")
    assert refused.returncode != 0 and "--workers belong to scale_input.py" in refused.stderr
    refused = run("--images=12", "--batch_size=8", f"--json={tmp_path / 'service.json'}")
    assert refused.returncode != 0 and "--images=12 must be a multiple of --batch_size=8" in refused.stderr
    assert not (tmp_path / "service.json").exists()
