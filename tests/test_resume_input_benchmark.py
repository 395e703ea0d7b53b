"""benchmarks/resume_input.py runs end to end on tiny settings and reports what it promises.

Plumbing only (flags, JSON fields, consistency of the derived figures), never speed.
"""

import json
import os

import pytest

from conftest import run_benchmark

# Every test here runs the benchmark script as a subprocess.
pytestmark = pytest.mark.slow


def run(*args: str):
    return run_benchmark("resume_input.py", *args)


def test_resume_input_reports_first_batch_times_ratios_and_decoding(tmp_path):
    out = tmp_path / "resume.json"
    result = run(
        "--images=20",
        "--shards=2",
        "--batch_size=4",
        "--image_size=32",
        "--repeats=1",
        "--shuffle_buffers=8,64",
        f"--json={out}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert (results["steps_per_epoch"], results["resume_step"]) == (5, 4)
    assert set(results["shuffle_buffers"]) == {"8", "64"}
    for entry in results["shuffle_buffers"].values():
        for case in ("start", "resumed", "old_start", "old_resumed"):
            assert 0 < entry[case]["min"] <= entry[case]["seconds"] <= entry[case]["max"]
        assert entry["resumed_vs_start"] == pytest.approx(
            entry["resumed"]["seconds"] / entry["start"]["seconds"], rel=1e-2
        )
        assert entry["old_resumed_vs_resumed"] == pytest.approx(
            entry["old_resumed"]["seconds"] / entry["resumed"]["seconds"], rel=1e-2
        )
        skipped_ms = 1000 * (entry["resumed"]["seconds"] - entry["start"]["seconds"]) / 16
        assert entry["ms_per_skipped_image"] == pytest.approx(skipped_ms, rel=1e-2, abs=1e-3)
    decode = results["decode"]
    assert decode["checked_images_per_second"] > 0 and decode["plain_images_per_second"] > 0
    assert decode["checked_vs_plain"] == pytest.approx(
        decode["checked_images_per_second"] / decode["plain_images_per_second"], rel=1e-2
    )
    machine = results["machine"]
    assert machine["cores"] == os.cpu_count() and machine["tensorflow"] and results["mean_jpeg_kib"] > 0
    assert machine["cpu"] in result.stdout and "shuffle buffer 64" in result.stdout


def test_resume_input_without_the_optional_measurements_and_a_bad_fraction(tmp_path):
    out = tmp_path / "resume.json"
    result = run(
        "--images=12",
        "--shards=1",
        "--batch_size=4",
        "--image_size=32",
        "--repeats=1",
        "--shuffle_buffers=4",
        "--nomeasure_old",
        "--nomeasure_decode",
        f"--json={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert "decode" not in results and set(results["shuffle_buffers"]["4"]) == {
        "start",
        "resumed",
        "resumed_vs_start",
        "ms_per_skipped_image",
    }
    refused = run("--images=12", "--batch_size=4", "--resume_fraction=0.2", f"--json={out}")
    assert refused.returncode != 0 and "--resume_fraction=0.2 of 3 steps" in refused.stderr
