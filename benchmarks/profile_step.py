"""Where the time of one training step goes: TensorFlow's profiler, and oneDNN's kernels.

    python benchmarks/profile_step.py --config=resnet50 --precision=mixed_bfloat16 \
        --batch_size=32 --json=results/profile_bf16.json

Two views of the step `benchmarks/throughput.py --mode=train` times (`resnet.training.Trainer`'s
step, built by `workload.build_step`):

- **TensorFlow ops** (`tf.profiler`): `--steps` steps are traced after warm-up and every op
  execution on the host is summed by op type, as a share of all op time and in ms per step,
  beside the step's wall time measured without the profiler. Op types are grouped into the
  parts of a step (convolutions forward / data gradient / weight gradient, batch norm forward /
  backward, ReLU, layout conversions, optimizer update, ...).
- **oneDNN kernels** (`ONEDNN_VERBOSE=1`, in a fresh process, since oneDNN reads it once):
  every primitive execution of `--steps` steps, summed by kind, direction and implementation
  (which ISA kernel each convolution and its gradients run on, e.g. `brg_conv_fwd:avx512_core_amx`
  for AMX), with the convolutions' achieved GFLOP/s from their shapes, as a fraction of the
  matrix-multiply peak measured in the same run.

The two together say which ops hold the distance between a step and the matmul peak.
"""

from __future__ import annotations

import collections
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

import workload
from profiling import op_part, summarize_onednn, trace_ops
from report import machine, write_results

flags.DEFINE_string("config", "resnet50", "A shipped config name or a .gin file.")
flags.DEFINE_enum("model", "ours", ["ours", "baseline"], f"Our `--config`, or {workload.BASELINE}.")
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"], "Dtype policy.")
flags.DEFINE_enum("mode", "train", ["train", "inference"], "Which step to profile.")
flags.DEFINE_integer("batch_size", 32, "Images per step.", lower_bound=1)
flags.DEFINE_integer("image_size", 224, "Height and width of the images.", lower_bound=8)
flags.DEFINE_integer("warmup", 2, "Untimed steps before timing and tracing.", lower_bound=1)
flags.DEFINE_integer("steps", 3, "Steps timed, traced, and run under oneDNN's verbose mode.", lower_bound=1)
flags.DEFINE_integer("top", 15, "Op types (and kernels) listed.", lower_bound=1)
flags.DEFINE_integer(
    "inter_op_threads",
    1,
    "TensorFlow's inter-op threads (0: its default). With 1, ops run one "
    "at a time, so each op's and kernel's time is its own, not shared with a concurrent op; on the "
    "2-core machine of RESULTS.md the step is as fast either way.",
    lower_bound=0,
)
flags.DEFINE_bool("onednn", True, "Also summarize oneDNN's kernels (a second process).")
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
flags.DEFINE_bool("onednn_probe", False, "Internal: run the steps with oneDNN's verbose output and exit.")
FLAGS = flags.FLAGS


def _build():
    import tensorflow as tf

    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    model = workload.BASELINE if FLAGS.model == "baseline" else "ours"
    return workload.build_step(
        model,
        config=FLAGS.config,
        mode=FLAGS.mode,
        precision=FLAGS.precision,
        batch_size=FLAGS.batch_size,
        image_size=FLAGS.image_size,
    )


def run_onednn_probe() -> dict:
    """Runs this script's `--onednn_probe` in a fresh process with ONEDNN_VERBOSE=1 and
    summarizes the kernel lines of its timed steps."""
    command = [sys.executable, os.path.abspath(__file__), "--onednn_probe", "--noonednn"]
    for name in (
        "config",
        "model",
        "precision",
        "mode",
        "batch_size",
        "image_size",
        "warmup",
        "steps",
        "inter_op_threads",
    ):
        command.append(f"--{name}={getattr(FLAGS, name)}")
    env = dict(os.environ, ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"the oneDNN probe failed:\n{result.stderr[-3000:]}")
    lines = result.stdout.splitlines()
    marker = lines.index("=== timed steps")  # only the timed steps, not warm-up's first-call reorders
    isa = [line.split(",", 3)[-1] for line in lines if ",info,cpu,isa:" in line]
    summary = summarize_onednn(lines[marker + 1 :], FLAGS.steps)
    summary["isa"] = isa[0] if isa else "unknown (no oneDNN output: is TensorFlow built with oneDNN?)"
    return summary


def main(argv):
    del argv
    if FLAGS.onednn_probe:
        step, _ = _build()
        for _ in range(FLAGS.warmup):
            step()
        print("=== timed steps", flush=True)
        for _ in range(FLAGS.steps):
            step()
        return

    import keras
    import tensorflow as tf

    import resnet

    step, model = _build()
    macs = resnet.count_macs(model)
    for _ in range(FLAGS.warmup):
        step()
    times = []
    for _ in range(FLAGS.steps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    step_ms = statistics.median(times)
    totals, traced_ms = trace_ops(step, FLAGS.steps)
    op_ms = sum(totals.values())
    parts: dict[str, float] = collections.defaultdict(float)
    for op_type, ms in totals.items():
        parts[op_part(op_type)] += ms
    compute = "float32" if FLAGS.precision == "float32" else FLAGS.precision.split("_")[-1]
    peak = workload.matmul_peak(compute)
    flops = 2 * macs * (3 if FLAGS.mode == "train" else 1) * FLAGS.batch_size
    results = {
        "config": FLAGS.config if FLAGS.model == "ours" else workload.BASELINE,
        "precision": FLAGS.precision,
        "mode": FLAGS.mode,
        "batch_size": FLAGS.batch_size,
        "image_size": FLAGS.image_size,
        "steps": FLAGS.steps,
        "inter_op_threads": FLAGS.inter_op_threads,
        "step_ms": round(step_ms, 1),
        "traced_step_ms": round(traced_ms / FLAGS.steps, 1),
        "op_ms_per_step": round(op_ms / FLAGS.steps, 1),
        "matmul_peak_gflops": round(peak, 1),
        "fraction_of_matmul_peak": round(flops / (step_ms / 1e3) / 1e9 / peak, 3),
        "parts": {
            part: {"ms_per_step": round(ms / FLAGS.steps, 1), "share": round(ms / op_ms, 3)}
            for part, ms in sorted(parts.items(), key=lambda item: -item[1])
        },
        "op_types": {
            op: {"ms_per_step": round(ms / FLAGS.steps, 1), "share": round(ms / op_ms, 3), "part": op_part(op)}
            for op, ms in sorted(totals.items(), key=lambda item: -item[1])
        },
        "machine": machine(tensorflow=tf.__version__, keras=keras.__version__),
    }
    if FLAGS.onednn:
        onednn = run_onednn_probe()
        for row in onednn["kernels"]:
            if "gflops" in row:
                row["fraction_of_matmul_peak"] = round(row["gflops"] / peak, 3)
        results["onednn"] = onednn
    _print_report(results)
    write_results(results, FLAGS.json)


def _print_report(results: dict) -> None:
    print(
        f"\n{results['config']} {results['mode']} step, {results['precision']}, batch {results['batch_size']} at "
        f"{results['image_size']}x{results['image_size']}: {results['step_ms']:.0f} ms "
        f"({results['fraction_of_matmul_peak']:.0%} of the {results['matmul_peak_gflops']:.0f} GFLOP/s matmul peak); "
        f"ops {results['op_ms_per_step']:.0f} ms per step (summed over threads)"
    )
    print("  by part of the step:")
    for part, entry in results["parts"].items():
        print(f"    {part:40s} {entry['ms_per_step']:8.1f} ms  {entry['share']:6.1%}")
    print("  by op type:")
    for op, entry in list(results["op_types"].items())[: FLAGS.top]:
        print(f"    {op:40s} {entry['ms_per_step']:8.1f} ms  {entry['share']:6.1%}")
    if "onednn" in results:
        print(f"  oneDNN kernels ({results['onednn']['isa']}):")
        for row in results["onednn"]["kernels"][: FLAGS.top]:
            rate = (
                f"  {row['gflops']:.0f} GFLOP/s ({row['fraction_of_matmul_peak']:.0%} of peak)"
                if "gflops" in row
                else ""
            )
            print(
                f"    {row['kind']:20s} {row['direction']:17s} {row['implementation']:45s} "
                f"{row['calls_per_step']:5.0f} calls {row['ms_per_step']:8.1f} ms{rate}"
            )


if __name__ == "__main__":
    app.run(main)
