"""benchmarks/scale_input.py runs end to end on tiny settings and reports what it promises.

Plumbing and exact counts (flags, JSON fields, images decoded and records read per worker,
consistency of the derived figures), never speed.
"""

import json
import os

import pytest

from conftest import run_benchmark

# The test runs the benchmark script, which starts worker processes.
pytestmark = pytest.mark.slow


def run(*args: str):
    return run_benchmark("scale_input.py", *args)


def test_scale_input_counts_each_workers_decodes_and_reports_the_ratios(tmp_path):
    out = tmp_path / "scale.json"
    images, batch, repeats = 16, 8, 2
    result = run(
        f"--images={images}",
        "--height=24",
        "--width=32",
        "--classes=2",
        "--shards=2",
        f"--batch_size={batch}",
        "--crop_size=16",
        "--workers=1,2",
        "--warmup=1",
        f"--repeats={repeats}",
        f"--json={out}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads(out.read_text())
    steps = images // batch
    assert (results["steps_per_epoch"], results["workers"]) == (steps, [1, 2])
    assert results["schedules"] == ["concurrent", "alone"]
    assert set(results["runs"]) == {"concurrent", "alone"}
    for schedule, runs in results["runs"].items():
        assert set(runs) == {"before", "after"}
        for mode, by_workers in runs.items():
            assert set(by_workers) == {"1", "2"}
            for n, run_ in ((int(key), value) for key, value in by_workers.items()):
                assert run_["workers"] == n and len(run_["per_worker"]) == n
                for index, worker in enumerate(run_["per_worker"]):
                    assert worker["worker_index"] == index
                    # Exactly its part of each global batch after; the whole batch before.
                    per_step = batch // n if mode == "after" else batch
                    assert worker["decoded_total"] == repeats * steps * per_step
                    assert worker["decoded"] == steps * per_step
                    assert worker["delivered"] == steps * batch // n
                    # Every worker reads every record, in both modes.
                    assert worker["records_read"] == images
                    assert worker["record_bytes_read"] == results["shard_bytes"]
                    assert worker["cpu_seconds_mean"] > 0
                    for key, unit in (
                        ("cpu_seconds", "seconds"),
                        ("wall_seconds", "seconds"),
                        ("images_per_second", "images_per_second"),
                    ):
                        # A tiny epoch's CPU time may round to 0 at getrusage's clock tick.
                        lowest = 0 if key == "cpu_seconds" else 1e-12
                        assert lowest <= worker[key]["min"] <= worker[key][unit] <= worker[key]["max"]
                assert run_["decoded_vs_1"] == (n if mode == "before" else 1)
                assert run_["cpu_vs_1"] == pytest.approx(
                    run_["cpu_seconds_per_worker"] * n / results["one_worker"][schedule]["cpu_seconds_per_worker"],
                    rel=0.05,  # of figures rounded to milliseconds
                )
            after, before = by_workers["2"], runs["before"]["2"]
            if mode == "after":
                assert after["decoded_after_vs_before"] == 0.5
                assert after["cpu_after_vs_before"] == pytest.approx(
                    after["cpu_seconds_per_worker"] / before["cpu_seconds_per_worker"], rel=0.05
                )
        assert results["goal"][schedule]["workers"] == 2 and results["goal"][schedule]["decoded_vs_1"] == 1
    machine = results["machine"]
    assert machine["cores"] == os.cpu_count() and machine["tensorflow"] and results["mean_jpeg_kib"] > 0
    assert machine["cpu"] in result.stdout and "cores" in results["note"]
    assert "decoded*N/(N=1)" in result.stdout and "Each worker runs alone" in result.stdout


def test_scale_input_refuses_a_batch_the_workers_do_not_divide(tmp_path):
    refused = run("--images=12", "--batch_size=6", "--workers=1,4", f"--json={tmp_path / 'scale.json'}")
    assert refused.returncode != 0 and "--batch_size=6 must be a multiple of every --workers [1, 4]" in refused.stderr
