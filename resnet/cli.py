"""What the command-line binaries share: gin flags, reading a run's config, clean errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import gin
import tensorflow as tf
from absl import flags, logging

from resnet import config as gin_config
from resnet.training import distribution
from resnet.training.trainer import Trainer, TrainingDiverged


def define_gin_param_flag() -> None:
    flags.DEFINE_multi_string(
        "gin_param", [], "A gin binding, e.g. \"Trainer.epochs = 10\"; repeatable, applied after the files."
    )


def run_reporting_errors(main: Callable[[list[str]], None], program: str) -> Callable[[list[str]], None]:
    """Wraps an absl `main` so a user's mistake ends with one clear line on stderr and exit code 2.

    Library INFO logging (gin's file probing, TensorFlow's checkpoint internals) is hidden
    unless the user asks for it with `--verbosity=0`.
    """

    def wrapped(argv: list[str]) -> None:
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
            tf.get_logger().setLevel("WARNING")
        try:
            main(argv)
        except (ValueError, TrainingDiverged) as error:
            print(f"{program}: error: {error}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapped


def parse_gin(config_files: list, gin_params: list[str]) -> None:
    """Parses the run's gin config, then sets up devices and a multi-worker strategy if asked.

    Both must precede any other TensorFlow op, and gin runs data sources (which may read data)
    when it builds the `Trainer`, so they happen here, before that.
    """
    gin.clear_config()
    gin_config.parse(config_files, gin_params)
    logical_cpus = _bound("Trainer.logical_cpus")
    if logical_cpus:
        distribution.split_cpu(logical_cpus)
    if _bound("Trainer.strategy") == "multi_worker_mirrored":
        distribution.make_strategy("multi_worker_mirrored")


def _bound(binding: str):
    try:
        return gin.query_parameter(binding)
    except ValueError:  # not bound
        return None


def trainer_from_run(model_dir: str, gin_params: list[str]) -> Trainer:
    """A `Trainer` for an existing run: its operative config plus extra bindings."""
    operative = Path(model_dir) / "operative_config.gin"
    if not operative.is_file():
        raise ValueError(
            f"`--model_dir` {model_dir!r} holds no operative_config.gin; point it at a directory "
            "written by resnet-train."
        )
    parse_gin([operative], gin_params)
    return gin.get_configurable(Trainer)(model_dir=model_dir)


def restored_trainer(model_dir: str, gin_params: list[str], checkpoint: str) -> tuple[Trainer, str]:
    """A `Trainer` for an existing run with `checkpoint` restored; returns it and the path."""
    trainer = trainer_from_run(model_dir, gin_params)
    path = trainer.restore(checkpoint)
    if path is None:
        raise ValueError(f"No {checkpoint!r} checkpoint in {model_dir!r}; train first.")
    return trainer, path


def print_json_last(results: dict) -> None:
    """Prints `results` as the last line of output: one JSON object."""
    print(json.dumps(results, sort_keys=True), flush=True)
