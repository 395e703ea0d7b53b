"""How throughput and memory grow with batch size and image size, ours beside keras.applications.

    python benchmarks/scaling.py --json=results/scaling.json --plot=scaling.png

For each mode (inference, training step), precision (float32, mixed_bfloat16) and point (batch
sizes `--batch_sizes` at `--image_size`, and image sizes `--image_sizes` at `--batch_size`),
each model runs in a fresh process (`workload.build_step`, the step `throughput.py` times):
warm-up, then steps until `--min_seconds` have passed (at least `--min_steps`), giving the
images per second, and TensorFlow's CPU allocator peak (the most bytes its tensors held at once,
weights included; steady where resident memory is not, see `throughput.py`). The two models
run back to back at each point. A point that does not fit in memory or fails is recorded with
its error, not dropped.

The report prints a markdown table per mode and precision, and `--plot` draws images/s and
allocator peak against batch size and image size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

import workload
from report import machine, write_results

flags.DEFINE_list("modes", ["inference", "train"], "Steps to measure.")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Dtype policies.")
flags.DEFINE_list("batch_sizes", ["1", "8", "32", "64", "128"], "Batch sizes, at --image_size.")
flags.DEFINE_list("image_sizes", ["128", "224", "320"], "Image sizes, at --batch_size.")
flags.DEFINE_integer("image_size", 224, "Image size of the batch-size sweep.", lower_bound=8)
flags.DEFINE_integer("batch_size", 32, "Batch size of the image-size sweep.", lower_bound=1)
flags.DEFINE_string("config", "resnet50", "Our config (a shipped name or a .gin file).")
flags.DEFINE_integer("warmup", 1, "Untimed steps after the first (traced) one.", lower_bound=0)
flags.DEFINE_integer("min_steps", 2, "Least timed steps per point.", lower_bound=1)
flags.DEFINE_float("min_seconds", 6.0, "Least timed seconds per point.", lower_bound=0.0)
flags.DEFINE_integer("timeout", 1800, "Seconds one point may take before it is recorded as failed.", lower_bound=1)
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
flags.DEFINE_string("plot", None, "Draw the curves into this PNG file (needs matplotlib).")
flags.DEFINE_string("point", None, "Internal: measure one point, given as JSON, and exit.")
FLAGS = flags.FLAGS

MODELS = ("ours", workload.BASELINE)


def measure_point(point: dict) -> dict:
    """Runs one point in this process: images/s and allocator peak (MiB)."""
    import tensorflow as tf

    step, _ = workload.build_step(
        point["model"],
        config=FLAGS.config,
        mode=point["mode"],
        precision=point["precision"],
        batch_size=point["batch_size"],
        image_size=point["image_size"],
    )
    for _ in range(1 + FLAGS.warmup):
        step()
    steps, start = 0, time.perf_counter()
    while steps < FLAGS.min_steps or time.perf_counter() - start < FLAGS.min_seconds:
        step()
        steps += 1
    seconds = time.perf_counter() - start
    return {
        "images_per_second": round(steps * point["batch_size"] / seconds, 2),
        "timed_steps": steps,
        "allocator_peak_mib": round(tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20, 1),
    }


def run_point(point: dict) -> dict:
    """Measures `point` in a fresh process; a failure (out of memory, timeout) is recorded."""
    command = [sys.executable, os.path.abspath(__file__), f"--point={json.dumps(point)}"]
    for name in ("config", "warmup", "min_steps", "min_seconds"):
        command.append(f"--{name}={getattr(FLAGS, name)}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=FLAGS.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"took more than --timeout={FLAGS.timeout} s"}
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.returncode}"]
        return {"error": tail[0][:600]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def points() -> list[dict]:
    """Every (mode, precision, batch size, image size) to measure, each sweep's shared point once."""
    sizes = [(int(b), FLAGS.image_size) for b in FLAGS.batch_sizes]
    sizes += [(FLAGS.batch_size, int(s)) for s in FLAGS.image_sizes if (FLAGS.batch_size, int(s)) not in sizes]
    return [
        {"mode": mode, "precision": precision, "batch_size": b, "image_size": s}
        for mode in FLAGS.modes
        for precision in FLAGS.precisions
        for b, s in sizes
    ]


def table(results: dict, mode: str, precision: str) -> str:
    """A markdown table of one mode and precision: each point's images/s and allocator peak of
    both models, and their ratios."""
    rows = [
        "| batch | image | ours img/s | keras img/s | speed ratio | ours MiB | keras MiB | memory ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in results["points"]:
        if (entry["mode"], entry["precision"]) != (mode, precision):
            continue
        ours, base = entry["ours"], entry["keras"]

        def cell(model, key):
            return f"{model[key]:.1f}" if key in model else "failed"

        def ratio(key, ours=ours, base=base):
            return f"{ours[key] / base[key]:.2f}x" if key in ours and key in base else "-"

        rows.append(
            f"| {entry['batch_size']} | {entry['image_size']} | {cell(ours, 'images_per_second')} | "
            f"{cell(base, 'images_per_second')} | {ratio('images_per_second')} | "
            f"{cell(ours, 'allocator_peak_mib')} | {cell(base, 'allocator_peak_mib')} | "
            f"{ratio('allocator_peak_mib')} |"
        )
    return "\n".join(rows)


def plot(results: dict, path: str) -> None:
    """Images/s and allocator peak against batch size (left) and image size (right), one line per
    model, mode and precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(12, 9))
    styles = {"inference": "-", "train": "--"}
    colours = {
        ("ours", "float32"): "tab:blue",
        ("ours", "mixed_bfloat16"): "tab:green",
        ("keras", "float32"): "tab:orange",
        ("keras", "mixed_bfloat16"): "tab:red",
    }
    for column, (axis_key, fixed_key, fixed) in enumerate(
        (("batch_size", "image_size", results["image_size"]), ("image_size", "batch_size", results["batch_size"]))
    ):
        for mode in results["modes"]:
            for precision in results["precisions"]:
                entries = sorted(
                    (
                        e
                        for e in results["points"]
                        if e["mode"] == mode and e["precision"] == precision and e[fixed_key] == fixed
                    ),
                    key=lambda e: e[axis_key],
                )
                for model in ("ours", "keras"):
                    for row, key in enumerate(("images_per_second", "allocator_peak_mib")):
                        xs = [e[axis_key] for e in entries if key in e[model]]
                        ys = [e[model][key] for e in entries if key in e[model]]
                        if xs:
                            axes[row][column].plot(
                                xs,
                                ys,
                                styles[mode],
                                marker="o",
                                color=colours[(model, precision)],
                                label=f"{model} {mode} {precision}",
                            )
        ticks = sorted({e[axis_key] for e in results["points"] if e[fixed_key] == fixed})
        for row, label in enumerate(("images / s", "allocator peak (MiB)")):
            axis = axes[row][column]
            axis.set_xscale("log", base=2)
            axis.set_xticks(ticks, [str(t) for t in ticks])
            axis.set_yscale("log")
            axis.set_xlabel(axis_key.replace("_", " ") + f" ({fixed_key.replace('_', ' ')} {fixed})")
            axis.set_ylabel(label)
            axis.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    cpu = results["machine"]["cpu"]
    figure.suptitle(
        f"{results['config']} vs {workload.BASELINE}: throughput and memory ({cpu}, "
        f"{results['machine']['cores']} cores)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv):
    del argv
    if FLAGS.point:
        print(json.dumps(measure_point(json.loads(FLAGS.point))))
        return
    for name in ("modes", "precisions"):
        allowed = {"modes": ("inference", "train"), "precisions": ("float32", "mixed_bfloat16", "mixed_float16")}[name]
        bad = [value for value in getattr(FLAGS, name) if value not in allowed]
        if bad:
            raise app.UsageError(f"--{name}: {bad} not among {list(allowed)}")
    import keras
    import tensorflow as tf

    results = {
        "config": FLAGS.config,
        "modes": FLAGS.modes,
        "precisions": FLAGS.precisions,
        "image_size": FLAGS.image_size,
        "batch_size": FLAGS.batch_size,
        "points": [],
        "machine": machine(tensorflow=tf.__version__, keras=keras.__version__),
    }
    todo = points()
    for index, point in enumerate(todo):
        entry = dict(point)
        for model in MODELS:
            entry["ours" if model == "ours" else "keras"] = run_point(dict(point, model=model))
        results["points"].append(entry)
        ours, base = entry["ours"], entry["keras"]
        print(
            f"[{index + 1}/{len(todo)}] {point['mode']} {point['precision']} batch {point['batch_size']} at "
            f"{point['image_size']}: ours {ours.get('images_per_second', ours.get('error'))} img/s "
            f"{ours.get('allocator_peak_mib', '')} MiB, keras {base.get('images_per_second', base.get('error'))} "
            f"img/s {base.get('allocator_peak_mib', '')} MiB",
            flush=True,
        )
        if FLAGS.json:  # a long sweep keeps what it has measured
            with open(FLAGS.json, "w") as f:
                json.dump(results, f, indent=2)
    for mode in FLAGS.modes:
        for precision in FLAGS.precisions:
            print(
                f"\n{results['config']} {mode}, {precision} ({results['machine']['cpu']}):\n"
                + table(results, mode, precision)
            )
    if FLAGS.plot:
        plot(results, FLAGS.plot)
    write_results(results, FLAGS.json)


if __name__ == "__main__":
    app.run(main)
