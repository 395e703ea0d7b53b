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
import glob
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

import workload
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
flags.DEFINE_integer("inter_op_threads", 1, "TensorFlow's inter-op threads (0: its default). With 1, ops run one "
                     "at a time, so each op's and kernel's time is its own, not shared with a concurrent op; on the "
                     "2-core machine of RESULTS.md the step is as fast either way.", lower_bound=0)
flags.DEFINE_bool("onednn", True, "Also summarize oneDNN's kernels (a second process).")
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
flags.DEFINE_bool("onednn_probe", False, "Internal: run the steps with oneDNN's verbose output and exit.")
FLAGS = flags.FLAGS

# The parts of a step, by TensorFlow op type (oneDNN's `_Mkl*` / `_MklNative*` names included by
# stripping the prefix). Anything else is "other".
PARTS = {
    "convolution forward": ("Conv2D", "FusedConv2D", "DepthwiseConv2dNative", "PadWithConv2D", "PadWithFusedConv2D"),
    "convolution data gradient": ("Conv2DBackpropInput", "DepthwiseConv2dNativeBackpropInput"),
    "convolution weight gradient": ("Conv2DBackpropFilter", "Conv2DBackpropFilterWithBias",
                                    "DepthwiseConv2dNativeBackpropFilter"),
    "batch norm forward": ("FusedBatchNormV3", "FusedBatchNormEx"),
    "batch norm backward": ("FusedBatchNormGradV3", "FusedBatchNormGradEx"),
    "ReLU forward / backward": ("Relu", "ReluGrad"),
    "pooling": ("MaxPool", "MaxPoolGrad", "AvgPool", "AvgPoolGrad", "Mean"),
    "dense": ("MatMul", "BiasAdd", "BiasAddGrad", "FusedMatMul"),
    "layout and dtype conversions": ("Transpose", "Cast", "MklToTf", "ToTf", "Pad"),
    "optimizer update": ("ResourceApplyKerasMomentum", "ResourceApplyMomentum", "ResourceApplyGradientDescent",
                         "AssignVariableOp", "AssignSubVariableOp", "AssignAddVariableOp"),
}
_PART_OF = {op: part for part, ops in PARTS.items() for op in ops}


def op_part(op_type: str) -> str:
    """The part of a step an op type belongs to."""
    base = re.sub(r"^_Mkl(Native)?", "", op_type).lstrip("_")
    return _PART_OF.get(base, "other (element-wise, loss, reads)")


def trace_ops(step, steps: int) -> tuple[dict, float]:
    """Traces `steps` calls of `step` with TensorFlow's profiler; returns the summed duration in
    ms of each op type's executions on the host, and the traced wall time in ms."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=2, python_tracer_level=0)
        tf.profiler.experimental.start(logdir, options=options)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        traced_ms = (time.perf_counter() - start) * 1e3
        tf.profiler.experimental.stop()
        files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        if not files:
            raise RuntimeError(f"TensorFlow's profiler wrote no trace under {logdir}")
        space = xplane_pb2.XSpace()
        with open(files[0], "rb") as f:
            space.ParseFromString(f.read())
    totals: dict[str, float] = collections.defaultdict(float)
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                metadata = plane.event_metadata[event.metadata_id]
                # A TensorFlow op's event is named "<node name>:<op type>", its display name the type.
                if metadata.display_name and metadata.name.endswith(":" + metadata.display_name):
                    totals[metadata.display_name] += event.duration_ps / 1e9
    return dict(totals), traced_ms


_SHAPE = re.compile(r"(mb|g|ic|oc|ih|oh|kh|iw|ow|kw|id|od|kd)(\d+)")


def convolution_macs(descriptor: str) -> int:
    """Multiply-accumulates of one convolution from its oneDNN shape descriptor
    (`mb32_ic64oc64_ih56oh56kh3sh1dh0ph1_iw56ow56kw3sw1dw0pw1`; the w part may be left out
    when it equals h, and `g<n>` gives groups)."""
    dims = {key: int(value) for key, value in _SHAPE.findall(descriptor)}
    for h, w in (("ih", "iw"), ("oh", "ow"), ("kh", "kw")):
        dims.setdefault(w, dims.get(h, 1))
    groups = dims.get("g", 1)
    return (dims.get("mb", 1) * dims["oc"] * dims["oh"] * dims["ow"] * dims.get("od", 1)
            * dims["ic"] // groups * dims["kh"] * dims["kw"] * dims.get("kd", 1))


def summarize_onednn(lines, steps: int) -> dict:
    """Sums oneDNN's verbose `exec` lines by (primitive kind, direction, implementation):
    executions and ms per step, and for convolutions the MACs per step and GFLOP/s."""
    groups: dict[tuple, dict] = {}
    for line in lines:
        fields = line.strip().split(",")
        if not fields[0].endswith("_verbose") or "exec" not in fields[:4]:
            continue
        at = fields.index("exec")
        try:
            kind, implementation, direction = fields[at + 2], fields[at + 3], fields[at + 4]
            ms = float(fields[-1])
        except (IndexError, ValueError):
            continue
        entry = groups.setdefault((kind, direction, implementation), {"calls": 0, "ms": 0.0, "macs": 0})
        entry["calls"] += 1
        entry["ms"] += ms
        if kind == "convolution":
            entry["macs"] += convolution_macs(fields[-2])
    rows = []
    for (kind, direction, implementation), entry in groups.items():
        row = {"kind": kind, "direction": direction, "implementation": implementation,
               "calls_per_step": entry["calls"] / steps, "ms_per_step": round(entry["ms"] / steps, 2)}
        if entry["macs"]:
            row["gflops"] = round(2 * entry["macs"] / (entry["ms"] / 1e3) / 1e9, 1)
        rows.append(row)
    return {"kernels": sorted(rows, key=lambda row: -row["ms_per_step"])}


def _build():
    import tensorflow as tf

    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    model = workload.BASELINE if FLAGS.model == "baseline" else "ours"
    return workload.build_step(model, config=FLAGS.config, mode=FLAGS.mode, precision=FLAGS.precision,
                               batch_size=FLAGS.batch_size, image_size=FLAGS.image_size)


def run_onednn_probe() -> dict:
    """Runs this script's `--onednn_probe` in a fresh process with ONEDNN_VERBOSE=1 and
    summarizes the kernel lines of its timed steps."""
    command = [sys.executable, os.path.abspath(__file__), "--onednn_probe", "--noonednn"]
    for name in ("config", "model", "precision", "mode", "batch_size", "image_size", "warmup", "steps",
                 "inter_op_threads"):
        command.append(f"--{name}={getattr(FLAGS, name)}")
    env = dict(os.environ, ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"the oneDNN probe failed:\n{result.stderr[-3000:]}")
    lines = result.stdout.splitlines()
    marker = lines.index("=== timed steps")  # only the timed steps, not warm-up's first-call reorders
    isa = [line.split(",", 3)[-1] for line in lines if ",info,cpu,isa:" in line]
    summary = summarize_onednn(lines[marker + 1:], FLAGS.steps)
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
        "config": FLAGS.config if FLAGS.model == "ours" else workload.BASELINE, "precision": FLAGS.precision,
        "mode": FLAGS.mode, "batch_size": FLAGS.batch_size, "image_size": FLAGS.image_size, "steps": FLAGS.steps,
        "inter_op_threads": FLAGS.inter_op_threads, "step_ms": round(step_ms, 1), "traced_step_ms": round(traced_ms / FLAGS.steps, 1),
        "op_ms_per_step": round(op_ms / FLAGS.steps, 1),
        "matmul_peak_gflops": round(peak, 1),
        "fraction_of_matmul_peak": round(flops / (step_ms / 1e3) / 1e9 / peak, 3),
        "parts": {part: {"ms_per_step": round(ms / FLAGS.steps, 1), "share": round(ms / op_ms, 3)}
                  for part, ms in sorted(parts.items(), key=lambda item: -item[1])},
        "op_types": {op: {"ms_per_step": round(ms / FLAGS.steps, 1), "share": round(ms / op_ms, 3),
                          "part": op_part(op)}
                     for op, ms in sorted(totals.items(), key=lambda item: -item[1])},
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
    print(f"\n{results['config']} {results['mode']} step, {results['precision']}, batch {results['batch_size']} at "
          f"{results['image_size']}x{results['image_size']}: {results['step_ms']:.0f} ms "
          f"({results['fraction_of_matmul_peak']:.0%} of the {results['matmul_peak_gflops']:.0f} GFLOP/s matmul peak); "
          f"ops {results['op_ms_per_step']:.0f} ms per step (summed over threads)")
    print("  by part of the step:")
    for part, entry in results["parts"].items():
        print(f"    {part:40s} {entry['ms_per_step']:8.1f} ms  {entry['share']:6.1%}")
    print("  by op type:")
    for op, entry in list(results["op_types"].items())[:FLAGS.top]:
        print(f"    {op:40s} {entry['ms_per_step']:8.1f} ms  {entry['share']:6.1%}")
    if "onednn" in results:
        print(f"  oneDNN kernels ({results['onednn']['isa']}):")
        for row in results["onednn"]["kernels"][:FLAGS.top]:
            rate = (f"  {row['gflops']:.0f} GFLOP/s ({row['fraction_of_matmul_peak']:.0%} of peak)"
                    if "gflops" in row else "")
            print(f"    {row['kind']:20s} {row['direction']:17s} {row['implementation']:45s} "
                  f"{row['calls_per_step']:5.0f} calls {row['ms_per_step']:8.1f} ms{rate}")


if __name__ == "__main__":
    app.run(main)
