"""Images per second of a resnet config against keras.applications.ResNet50, in one run.

    python benchmarks/throughput.py --config=resnet50 --mode=train --precision=mixed_bfloat16 \
        --batch_size=32 --json=results.json

Both models run the same work in the same process, alternating, after warm-up, `--repeats`
times; the report gives the median images/s of each (and the spread), their ratio, the
achieved GFLOP/s from the analytic MAC count (a training step counts 3x the forward pass),
that as a fraction of a matrix-multiply peak measured in the same run, and the peak memory of
each model: resident (what the machine needs) and held by TensorFlow's allocator (what the
model's tensors need; steadier), each the median of `--memory_probes` fresh processes per
model, each building the model and running the warm-up and timed steps. With a mixed
precision, our model in float32 is measured too, for the speed-up mixed precision gives, and
so is the float32 matrix-multiply peak, for the speed-up the hardware gives the same arithmetic.

`--mode=train` times the training step of `resnet.training.Trainer` (the one `resnet-train`
runs: forward, loss, L2 decay, gradients, SGD update), for both models; `--mode=inference`
times a compiled forward pass in inference mode.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

import workload
from report import machine, write_results
from workload import BASELINE, matmul_peak

flags.DEFINE_string("config", "resnet50", "A shipped config name or a .gin file.")
flags.DEFINE_enum("mode", "inference", ["inference", "train"], "What to time.")
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"], "Dtype policy.")
flags.DEFINE_integer("batch_size", 32, "Images per step.")
flags.DEFINE_integer("image_size", 224, "Height and width of the images.")
flags.DEFINE_integer("steps", 3, "Timed steps per repeat.")
flags.DEFINE_integer("repeats", 5, "Timed repeats per model (alternating between models).")
flags.DEFINE_integer("warmup", 2, "Untimed steps per model before timing.")
flags.DEFINE_bool("jit_compile", False, "Compile both models' steps with XLA (Trainer.jit_compile).")
flags.DEFINE_integer("memory_probes", 3, "Fresh processes per model measuring peak memory (median).")
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
flags.DEFINE_string("memory_probe", None, "Internal: measure the peak memory of one model and exit.")
FLAGS = flags.FLAGS


def build_step(model_name: str, precision: str):
    """A zero-argument function running one step of `model_name` ("ours" or BASELINE) as the
    flags say, and the model."""
    return workload.build_step(
        model_name,
        config=FLAGS.config,
        mode=FLAGS.mode,
        precision=precision,
        batch_size=FLAGS.batch_size,
        image_size=FLAGS.image_size,
        jit_compile=FLAGS.jit_compile,
    )


def _own_peak_rss_mib() -> float:
    """Peak resident memory of this process image. Linux's `ru_maxrss` carries the parent's peak
    across fork and exec, so it is read from /proc's VmHWM, which a new image starts afresh."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_mib(model_name: str, precision: str, probes: int) -> tuple[float, float]:
    """Peak memory of `model_name`'s steps, as the medians over `probes` fresh processes of
    (peak resident memory, peak bytes held by TensorFlow's CPU allocator), in MiB.

    The resident peak is what the machine must have; it varies by a few hundred MiB between
    identical runs (how freed blocks are reused). The allocator's peak counts only tensors
    alive at the same time, and is steady: it compares what two models need.
    """
    command = [sys.executable, os.path.abspath(__file__), f"--memory_probe={model_name}", f"--precision={precision}"]
    for name in ("config", "mode", "batch_size", "image_size", "steps", "warmup", "jit_compile"):
        command.append(f"--{name}={getattr(FLAGS, name)}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    resident, allocated = [], []
    for _ in range(probes):
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        peaks = json.loads(result.stdout.strip().splitlines()[-1])
        resident.append(peaks["peak_mib"])
        allocated.append(peaks["allocator_peak_mib"])
    return statistics.median(resident), statistics.median(allocated)


def median_and_spread(values):
    return statistics.median(values), min(values), max(values)


def main(argv):
    del argv
    if FLAGS.memory_probe:
        step, _ = build_step(FLAGS.memory_probe, FLAGS.precision)
        for _ in range(FLAGS.warmup + FLAGS.steps):
            step()
        import tensorflow as tf

        allocator_peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20
        print(json.dumps({"peak_mib": _own_peak_rss_mib(), "allocator_peak_mib": allocator_peak}))
        return

    import keras
    import tensorflow as tf

    import resnet

    runs = [("ours", FLAGS.precision), (BASELINE, FLAGS.precision)]
    if FLAGS.precision != "float32":
        runs.append(("ours", "float32"))
    steps, macs = {}, {}
    for name, precision in runs:
        steps[(name, precision)], model = build_step(name, precision)
        macs[name] = resnet.count_macs(model)
    keras.config.set_dtype_policy("float32")
    for _ in range(FLAGS.warmup):
        for step in steps.values():
            step()
    rates = {key: [] for key in steps}
    for repeat in range(FLAGS.repeats):
        for key, step in steps.items():
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                step()
            rates[key].append(FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - start))
        print(
            f"repeat {repeat + 1}/{FLAGS.repeats}: "
            + ", ".join(f"{k[0]}@{k[1]} {v[-1]:.1f}" for k, v in rates.items()),
            flush=True,
        )
    compute = FLAGS.precision.split("_")[-1] if FLAGS.precision != "float32" else "float32"
    peak = matmul_peak(compute)
    flop_factor = 2 * (3 if FLAGS.mode == "train" else 1)
    results = {
        "config": FLAGS.config,
        "mode": FLAGS.mode,
        "precision": FLAGS.precision,
        "batch_size": FLAGS.batch_size,
        "image_size": FLAGS.image_size,
        "steps": FLAGS.steps,
        "repeats": FLAGS.repeats,
        "jit_compile": FLAGS.jit_compile,
        "matmul_peak_gflops": round(peak, 1),
        "models": {},
        "machine": machine(tensorflow=tf.__version__, keras=keras.__version__),
    }
    for (name, precision), values in rates.items():
        median, low, high = median_and_spread(values)
        gflops = median * macs[name] * flop_factor / 1e9
        entry = {
            "images_per_second": round(median, 2),
            "min": round(low, 2),
            "max": round(high, 2),
            "gmacs_per_image": round(macs[name] / 1e9, 3),
            "gflops": round(gflops, 1),
        }
        if precision == FLAGS.precision:
            entry["fraction_of_matmul_peak"] = round(gflops / peak, 3)
            resident, allocated = peak_memory_mib(name, precision, FLAGS.memory_probes)
            entry["peak_memory_mib"], entry["allocator_peak_mib"] = round(resident, 1), round(allocated, 1)
        results["models"][f"{name}@{precision}"] = entry
    ours = results["models"][f"ours@{FLAGS.precision}"]
    base = results["models"][f"{BASELINE}@{FLAGS.precision}"]
    results["speed_ratio_vs_baseline"] = round(ours["images_per_second"] / base["images_per_second"], 3)
    results["memory_ratio_vs_baseline"] = round(ours["peak_memory_mib"] / base["peak_memory_mib"], 3)
    results["allocator_memory_ratio_vs_baseline"] = round(ours["allocator_peak_mib"] / base["allocator_peak_mib"], 3)
    if FLAGS.precision != "float32":
        results["speedup_vs_ours_float32"] = round(
            ours["images_per_second"] / results["models"]["ours@float32"]["images_per_second"], 3
        )
        # What the hardware gives the same matrix multiplications in the lower precision: a
        # bound on the speed-up of a whole step, whose other ops gain less.
        results["matmul_peak_float32_gflops"] = round(matmul_peak("float32"), 1)
        results["matmul_peak_ratio_vs_float32"] = round(peak / results["matmul_peak_float32_gflops"], 3)
    _print_report(results)
    write_results(results, FLAGS.json)


def _print_report(results) -> None:
    print(
        f"\n{results['config']} vs {BASELINE}: {results['mode']}, {results['precision']}, "
        f"batch {results['batch_size']} at {results['image_size']}x{results['image_size']}; "
        f"matmul peak {results['matmul_peak_gflops']} GFLOP/s"
    )
    for key, entry in results["models"].items():
        extra = ""
        if "fraction_of_matmul_peak" in entry:
            extra = (
                f"  {entry['fraction_of_matmul_peak']:.0%} of peak  {entry['peak_memory_mib']:.0f} MiB peak memory "
                f"({entry['allocator_peak_mib']:.0f} MiB in tensors)"
            )
        print(
            f"  {key:40s} {entry['images_per_second']:7.2f} img/s ({entry['min']:.2f}-{entry['max']:.2f})  "
            f"{entry['gflops']:.0f} GFLOP/s{extra}"
        )
    print(
        f"  speed ratio {results['speed_ratio_vs_baseline']:.3f}x, "
        f"memory ratio {results['memory_ratio_vs_baseline']:.3f}x "
        f"(in tensors {results['allocator_memory_ratio_vs_baseline']:.3f}x)"
        + (
            f", mixed precision speed-up {results['speedup_vs_ours_float32']:.3f}x (matrix multiply: "
            f"{results['matmul_peak_ratio_vs_float32']:.3f}x)"
            if "speedup_vs_ours_float32" in results
            else ""
        )
    )


if __name__ == "__main__":
    app.run(main)
