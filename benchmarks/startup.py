"""How long the binaries take to start, and what they print first: each in fresh processes.

    python benchmarks/startup.py --repeats=5 --json=startup.json

Measures, as the median over `--repeats` fresh processes (taking turns):

* `import tensorflow` and `import keras` (the floor: the library cannot start faster than
  Keras on TensorFlow) and `import resnet`; the difference to Keras is our own import cost;
* `resnet-train` on the demo, from launching the command to the end of its first training step
  (the first backup, `Trainer.backup_every_steps = 1`, appearing in `--model_dir`), killed then;
* the lines the binary prints before its own first line ("Writing to ..." or the strategy line),
  which a quiet start keeps at zero.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version

from absl import app, flags

from report import machine, write_results

flags.DEFINE_integer("repeats", 5, "Fresh processes per measurement.", lower_bound=1)
flags.DEFINE_float("timeout", 600, "Seconds before a process counts as hung.")
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
FLAGS = flags.FLAGS

BIN = os.path.dirname(sys.executable)
# What the first training step's backup leaves in the run directory once it is complete.
FIRST_BACKUP = os.path.join("backup", "checkpoint")


def import_seconds(module: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True, timeout=FLAGS.timeout)
    return time.perf_counter() - start


def first_step_seconds(env: dict) -> tuple[float, int]:
    """Seconds from launching the demo's `resnet-train` to its first backup, and the lines it
    printed before its own first line."""
    model_dir = tempfile.mkdtemp(prefix="startup-")
    command = [
        os.path.join(BIN, "resnet-train"),
        f"--model_dir={model_dir}",
        "--gin_param=Trainer.backup_every_steps = 1",
    ]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        while not os.path.exists(os.path.join(model_dir, FIRST_BACKUP)):
            if process.poll() is not None or time.perf_counter() - start > FLAGS.timeout:
                raise RuntimeError(f"resnet-train ended or hung before its first step:\n{process.stdout.read()}")
            time.sleep(0.02)
        seconds = time.perf_counter() - start
    finally:
        os.kill(process.pid, signal.SIGKILL)
        output = process.communicate()[0]
        shutil.rmtree(model_dir, ignore_errors=True)
    lines = output.splitlines()
    own = next(i for i, line in enumerate(lines) if line.startswith(("Writing to", "Strategy ")))
    return seconds, own


def main(argv):
    del argv
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell has it
    samples = {"import_tensorflow": [], "import_keras": [], "import_resnet": [], "train_first_step": []}
    foreign_lines = []
    print(f"{machine()['cpu']}: {FLAGS.repeats} fresh processes per measurement", flush=True)
    for repeat in range(FLAGS.repeats):
        for module in ("tensorflow", "keras", "resnet"):
            samples[f"import_{module}"].append(import_seconds(module))
        seconds, lines = first_step_seconds(env)
        samples["train_first_step"].append(seconds)
        foreign_lines.append(lines)
        print(f"  repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in samples.items()), flush=True)
    results = {
        name: {
            "median_seconds": round(statistics.median(values), 3),
            "min_seconds": round(min(values), 3),
            "max_seconds": round(max(values), 3),
        }
        for name, values in samples.items()
    }
    results["resnet_import_overhead_seconds"] = round(
        results["import_resnet"]["median_seconds"] - results["import_keras"]["median_seconds"], 3
    )
    results["lines_before_first_own_line"] = max(foreign_lines)
    results["machine"] = machine(tensorflow=version("tensorflow"), keras=version("keras"))
    write_results(results, FLAGS.json)


if __name__ == "__main__":
    app.run(main)
