"""What the tests of the binaries share: where the binaries are, the environment they run in, a
short demo run, and how to run them and read what they wrote."""

import csv
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
ENV.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
# A few short epochs of the demo: enough to exercise every file a run writes.
FAST = [
    "Trainer.epochs = 2",
    "Trainer.steps_per_epoch = 4",
    "Trainer.batch_size = 16",
    "Trainer.backup_every_steps = 2",
    "InputPipeline.eval_batch_size = 120",
]
# Three epochs of twelve steps with a backup every three: long enough to be interrupted mid-epoch.
INTERRUPTIBLE = [
    "Trainer.epochs = 3",
    "Trainer.steps_per_epoch = 12",
    "Trainer.batch_size = 64",
    "Trainer.backup_every_steps = 3",
    "InputPipeline.eval_batch_size = 360",
]


def command(program: str, *args: str, params=()) -> list[str]:
    """The command line of binary `program` with `args` and a `--gin_param` per binding of `params`."""
    return [str(BIN / program), *args, *(f"--gin_param={p}" for p in params)]


def run(program: str, *args: str, params=(), cwd=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    """Runs `command(program, *args, params=params)` to its end; with `check`, a failure raises
    with everything it printed."""
    result = subprocess.run(
        command(program, *args, params=params), capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{program} {args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def metrics(model_dir) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv."""
    with open(Path(model_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))
