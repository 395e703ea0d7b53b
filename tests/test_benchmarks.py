"""The benchmark scripts run end to end on tiny settings and report what they promise.

These check plumbing (flags, JSON fields, files written, consistency of the derived figures),
never speed: timings on a shared test machine mean nothing.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import resnet
from conftest import write_cifar10

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str, expect_failure: bool = False) -> subprocess.CompletedProcess:
    """Runs a benchmark script as a subprocess; tests that call it are marked `slow`."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True, env=env, timeout=600
    )
    if expect_failure:
        assert result.returncode != 0, result.stdout
    else:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def load_module(name: str):
    """Imports a benchmark script as a module (its sibling modules, such as `workload`, importable)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_throughput_reports_both_models_and_the_mixed_precision_speedup(tmp_path):
    out = tmp_path / "throughput.json"
    run_script(
        "throughput.py",
        "--config=resnet18",
        "--mode=train",
        "--precision=mixed_bfloat16",
        "--batch_size=2",
        "--image_size=32",
        "--steps=1",
        "--repeats=2",
        "--warmup=1",
        "--memory_probes=1",
        f"--json={out}",
    )
    results = json.loads(out.read_text())
    models = results["models"]
    assert set(models) == {"ours@mixed_bfloat16", "keras.applications.ResNet50@mixed_bfloat16", "ours@float32"}
    for entry in models.values():
        assert entry["min"] <= entry["images_per_second"] <= entry["max"]
        assert entry["images_per_second"] > 0 and entry["gflops"] > 0
    ours, base = models["ours@mixed_bfloat16"], models["keras.applications.ResNet50@mixed_bfloat16"]
    # The analytic MAC counts at 32x32: ResNet-18 against ResNet-50.
    assert ours["gmacs_per_image"] == pytest.approx(
        resnet.count_macs(resnet.build("resnet18", ["ResNet.input_shape = (32, 32, 3)"])) / 1e9, abs=1e-3
    )
    assert base["gmacs_per_image"] > ours["gmacs_per_image"]
    assert (
        0 < ours["fraction_of_matmul_peak"] == pytest.approx(ours["gflops"] / results["matmul_peak_gflops"], abs=2e-3)
    )
    assert ours["peak_memory_mib"] > 100 and base["peak_memory_mib"] > 100
    assert results["speed_ratio_vs_baseline"] == pytest.approx(
        ours["images_per_second"] / base["images_per_second"], rel=1e-2
    )
    assert results["memory_ratio_vs_baseline"] == pytest.approx(
        ours["peak_memory_mib"] / base["peak_memory_mib"], rel=1e-2
    )
    assert 0 < ours["allocator_peak_mib"] < ours["peak_memory_mib"]
    assert results["allocator_memory_ratio_vs_baseline"] == pytest.approx(
        ours["allocator_peak_mib"] / base["allocator_peak_mib"], rel=1e-2
    )
    assert results["speedup_vs_ours_float32"] == pytest.approx(
        ours["images_per_second"] / models["ours@float32"]["images_per_second"], rel=1e-2
    )
    assert results["matmul_peak_ratio_vs_float32"] == pytest.approx(
        results["matmul_peak_gflops"] / results["matmul_peak_float32_gflops"], rel=1e-2
    )
    assert results["machine"]["cores"] == os.cpu_count() and results["machine"]["tensorflow"]


@pytest.mark.slow
def test_throughput_inference_of_a_gin_file(tmp_path):
    gin_file = tmp_path / "tiny.gin"
    gin_file.write_text("include 'resnet18.gin'\nResNet.stage_filters = (8, 16, 32, 64)\n")
    out = tmp_path / "throughput.json"
    result = run_script(
        "throughput.py",
        f"--config={gin_file}",
        "--mode=inference",
        "--batch_size=1",
        "--image_size=32",
        "--steps=1",
        "--repeats=1",
        "--warmup=1",
        "--memory_probes=1",
        f"--json={out}",
    )
    results = json.loads(out.read_text())
    assert set(results["models"]) == {"ours@float32", "keras.applications.ResNet50@float32"}
    assert results["mode"] == "inference" and "speedup_vs_ours_float32" not in results
    assert "speed ratio" in result.stdout


@pytest.mark.slow
def test_input_pipeline_reports_rates_of_both_cases(tmp_path):
    out = tmp_path / "pipeline.json"
    run_script(
        "input_pipeline.py",
        "--tfrecord_images=8",
        "--tfrecord_shards=2",
        "--pipeline_batches=2",
        "--model_steps=1",
        "--repeats=1",
        "--demo_batch_size=8",
        "--tfrecord_batch_size=2",
        "--tfrecord_config=resnet18",
        "--tfrecord_image_size=64",
        f"--json={out}",
    )
    results = json.loads(out.read_text())
    for case in ("demo", "tfrecord"):
        entry = results[case]
        assert entry["pipeline_images_per_second"] > 0 and entry["model_images_per_second"] > 0
        assert entry["ratio"] == pytest.approx(
            entry["pipeline_images_per_second"] / entry["model_images_per_second"], rel=2e-2
        )


@pytest.mark.slow
def test_determinism_reports_both_settings_and_their_ratio(tmp_path):
    out = tmp_path / "determinism.json"
    result = run_script("determinism.py", "--batch_size=8", "--steps=1", "--warmup=1", "--repeats=1", f"--json={out}")
    results = json.loads(out.read_text())
    for setting in ("default", "deterministic"):
        assert results[setting]["images_per_second"] > 0
    ratio = results["deterministic"]["images_per_second"] / results["default"]["images_per_second"]
    assert results["deterministic_vs_default"] == pytest.approx(ratio, rel=1e-2)
    assert results["machine"]["cpu"] in result.stdout


def test_degradation_nets_are_the_shipped_cifar_configs():
    degradation = load_module("degradation")
    for depth, shipped in ((20, "resnet20"), (56, "resnet56"), (20, "plain20"), (56, "plain56")):
        name = degradation.net_names(depth)[0 if shipped.startswith("plain") else 1]
        ours = resnet.build("cifar/resnet20", degradation.net_bindings(name, depth))
        assert ours.name == shipped
        assert ours.count_params() == resnet.build(f"cifar/{shipped}").count_params()
    with pytest.raises(ValueError, match="6n\\+2"):
        degradation.blocks_per_stage(21)


@pytest.mark.slow
def test_degradation_writes_figure_table_and_verdict_then_resumes(tmp_path):
    out = tmp_path / "degradation"
    args = ["--depths=8,14", "--epochs=2", "--steps_per_epoch=2", "--batch_size=16", f"--output_dir={out}"]
    first = run_script("degradation.py", *args)
    assert (out / "degradation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "degradation.json").read_text())
    assert set(results["curves"]) == {"plain8", "resnet8", "plain14", "resnet14"}
    for name, curve in results["curves"].items():
        assert curve["epoch"] == [1, 2]
        assert all(0 <= e <= 100 for e in curve["train_error"] + curve["test_error"])
        assert results["final"][name]["test_error"] == curve["test_error"][-1]
    holds = results["ordering_holds"]
    final = results["final"]
    assert holds["plain14_worse_than_plain8_train_error"] == (
        final["plain14"]["train_error"] > final["plain8"]["train_error"]
    )
    assert holds["resnet14_no_worse_than_resnet8_test_error"] == (
        final["resnet14"]["test_error"] <= final["resnet8"]["test_error"]
    )
    table = (out / "degradation.md").read_text()
    assert "| plain14 |" in table and "| resnet8 |" in table and "holds here" in table
    assert "plain14" in first.stdout
    for name in results["curves"]:
        assert (out / "runs" / name / "metrics.csv").exists()

    # Rerun with the same flags: every run is finished, nothing is retrained, same verdict.
    again = run_script("degradation.py", *args)
    assert again.stdout.count("All 2 epochs are done") == 4
    assert json.loads((out / "degradation.json").read_text())["final"] == final

    # Other settings on the same directory are refused, and the runs there are kept.
    refused = run_script("degradation.py", *args[:-2], "--epochs=3", f"--output_dir={out}", expect_failure=True)
    assert "other settings" in refused.stderr and str(out) in refused.stderr
    assert (out / "runs" / "plain8" / "metrics.csv").exists()


@pytest.mark.slow
def test_degradation_reads_cifar10_from_data_dir(tmp_path):
    cifar = tmp_path / "cifar-10-batches-py"
    write_cifar10(cifar, per_batch=4)
    out = tmp_path / "degradation"
    run_script(
        "degradation.py", f"--data_dir={cifar}", "--depths=8,14", "--epochs=1", "--batch_size=4", f"--output_dir={out}"
    )
    results = json.loads((out / "degradation.json").read_text())
    assert results["settings"]["data"] == "cifar10"
    assert results["curves"]["resnet8"]["epoch"] == [1]


@pytest.mark.slow
def test_degradation_names_a_missing_data_dir(tmp_path):
    result = run_script(
        "degradation.py", f"--data_dir={tmp_path / 'nowhere'}", f"--output_dir={tmp_path / 'out'}", expect_failure=True
    )
    assert "nowhere" in result.stderr


def test_profile_step_parses_onednn_kernels_and_groups_op_types():
    profile = load_module("profiling")
    # Multiply-accumulates from oneDNN's shape descriptors: full, w left out (= h), grouped.
    assert profile.convolution_macs("mb4_ic64oc128_ih18oh8kh3sh2dh0ph0_iw18ow8kw3sw2dw0pw0") == 4 * 128 * 8 * 8 * 64 * 9
    assert profile.convolution_macs("mb2_ic3oc64_ih224oh112kh7sh2dh0ph3") == 2 * 64 * 112 * 112 * 3 * 49
    assert profile.convolution_macs("mb1_g32ic128oc128_ih8oh8kh3sh1dh0ph1_iw8ow8kw3sw1dw0pw1") == 128 * 64 * 4 * 9
    lines = [
        "onednn_verbose,v1,info,cpu,isa:Intel AVX-512",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,src:f32,"
        "alg:convolution_direct,mb1_ic2oc4_ih3oh3kh1sh1dh0ph0_iw3ow3kw1sw1dw0pw0,0.5",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,src:f32,"
        "alg:convolution_direct,mb1_ic2oc4_ih3oh3kh1sh1dh0ph0_iw3ow3kw1sw1dw0pw0,1.5",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32 dst:f32,,,4x2x1x1,0.25",
        "something else entirely",
    ]
    kernels = profile.summarize_onednn(lines, steps=2)["kernels"]
    assert [(k["kind"], k["direction"], k["implementation"]) for k in kernels] == [
        ("convolution", "forward_training", "brg_conv_fwd:avx512_core"),
        ("reorder", "undef", "jit:uni"),
    ]
    convolution, reorder = kernels
    assert convolution["calls_per_step"] == 1 and convolution["ms_per_step"] == 1.0
    assert convolution["gflops"] == pytest.approx(round(2 * 2 * 72 / 2e-3 / 1e9, 1))
    assert "gflops" not in reorder and reorder["ms_per_step"] == pytest.approx(0.12, abs=0.01)
    assert profile.op_part("_MklNativeConv2DBackpropFilter") == "convolution weight gradient"
    assert profile.op_part("_MklNativeFusedBatchNormGradV3") == "batch norm backward"
    assert profile.op_part("FusedBatchNormV3") == "batch norm forward"
    assert profile.op_part("Sqrt").startswith("other")


@pytest.mark.slow
def test_profile_step_reports_op_parts_and_onednn_kernels(tmp_path):
    gin_file = tmp_path / "tiny.gin"
    gin_file.write_text("include 'resnet18.gin'\nResNet.stage_filters = (8, 16, 32, 64)\n")
    out = tmp_path / "profile.json"
    result = run_script(
        "profile_step.py",
        f"--config={gin_file}",
        "--batch_size=2",
        "--image_size=32",
        "--steps=1",
        "--warmup=1",
        f"--json={out}",
    )
    results = json.loads(out.read_text())
    assert results["step_ms"] > 0 and results["op_ms_per_step"] > 0
    assert sum(part["share"] for part in results["parts"].values()) == pytest.approx(1, abs=0.01)
    for part in (
        "convolution forward",
        "convolution data gradient",
        "convolution weight gradient",
        "batch norm forward",
        "batch norm backward",
    ):
        assert results["parts"][part]["ms_per_step"] > 0, part
    directions = {k["direction"] for k in results["onednn"]["kernels"] if k["kind"] == "convolution"}
    assert directions == {"forward_training", "backward_data", "backward_weights"}
    assert all(k["gflops"] > 0 for k in results["onednn"]["kernels"] if k["kind"] == "convolution")
    assert "by part of the step" in result.stdout and results["machine"]["cpu"] in result.stdout


@pytest.mark.slow
def test_scaling_measures_both_models_per_point_and_records_failures(tmp_path):
    out, png = tmp_path / "scaling.json", tmp_path / "scaling.png"
    # One point of batch 1 at 32x32, timed once.
    tiny = [
        "--precisions=float32",
        "--batch_sizes=1",
        "--image_sizes=32",
        "--image_size=32",
        "--batch_size=1",
        "--min_seconds=0",
        "--min_steps=1",
        "--warmup=0",
        f"--json={out}",
    ]
    result = run_script("scaling.py", *tiny, "--config=resnet18", f"--plot={png}")
    results = json.loads(out.read_text())
    assert [(p["mode"], p["batch_size"], p["image_size"]) for p in results["points"]] == [
        ("inference", 1, 32),
        ("train", 1, 32),
    ]
    for point in results["points"]:
        for model in ("ours", "keras"):
            assert point[model]["images_per_second"] > 0 and point[model]["allocator_peak_mib"] > 0
    # Training holds gradients and activations besides the weights.
    assert results["points"][1]["ours"]["allocator_peak_mib"] > results["points"][0]["ours"]["allocator_peak_mib"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 1 | 32 |" in result.stdout

    # A point that fails is recorded with its error; the other model's is still measured.
    missing = tmp_path / "missing.gin"
    run_script("scaling.py", *tiny, "--modes=inference", f"--config={missing}")
    point = json.loads(out.read_text())["points"][0]
    assert "missing.gin" in point["ours"]["error"] and point["keras"]["images_per_second"] > 0
