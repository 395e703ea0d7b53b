"""What the command-line binaries share: gin flags, reading a run's config, clean errors."""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable

import gin
import tensorflow as tf
from absl import flags, logging

from resnet import config as gin_config
from resnet.pretrained.download import WeightsDownloadError
from resnet.storage.files import is_storage_full
from resnet.training import distribution
from resnet.training.checkpoints import restore_model, restore_newest_intact
from resnet.training.errors import StorageFull, TrainingDiverged, TrainingInterrupted, TrainingStopped
from resnet.training.run_directory import RunDirectory
from resnet.training.run_lock import RunDirectoryLocked
from resnet.training.trainer import Trainer
from resnet.validation import first_line


def define_gin_param_flag() -> None:
    flags.DEFINE_multi_string(
        "gin_param", [], 'A gin binding, e.g. "Trainer.epochs = 10"; repeatable, applied after the files.'
    )


INTERRUPTED_EXIT_CODE = 130
"""Exit code after Ctrl-C (128 + SIGINT, as shells report it)."""


def run_reporting_errors(main: Callable[[list[str]], None], program: str) -> Callable[[list[str]], None]:
    """Wraps an absl `main` so that it ends with one clear line on stderr, and an exit code that
    says what a scheduler should do:

    * 2: a user's mistake (bad config or data, a diverged loss), or pretrained weights that
      could not be downloaded (offline, or a file not matching its hash); the message says what.
    * `distribution.CLUSTER_ERROR_EXIT_CODE` (75): try again: a multi-worker cluster did not
      form or lost a worker (restart every worker with the same command), the storage ran out
      of space (free some; nothing written before is lost), or another run holds the run
      directory (wait for it).
    * `distribution.PREEMPTED_EXIT_CODE` (42): stopped by SIGTERM after saving a backup; rerun
      the same command (every worker) to resume.
    * `INTERRUPTED_EXIT_CODE` (130): Ctrl-C; training says what its newest backup holds.

    Library INFO logging (gin's file probing, TensorFlow's checkpoint internals) is hidden
    unless the user asks for it with `--verbosity=0`.
    """

    def wrapped(argv: list[str]) -> None:
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
            tf.get_logger().setLevel("WARNING")
        try:
            main(argv)
        except RunDirectoryLocked as error:
            print(f"{program}: error: {error}", file=sys.stderr, flush=True)
            sys.exit(distribution.CLUSTER_ERROR_EXIT_CODE)
        except (ValueError, TrainingDiverged, WeightsDownloadError) as error:
            print(f"{program}: error: {error}", file=sys.stderr, flush=True)
            sys.exit(2)
        except TrainingStopped as stopped:
            print(f"{program}: {stopped}", file=sys.stderr, flush=True)
            sys.exit(distribution.PREEMPTED_EXIT_CODE)
        except distribution.ClusterError as error:
            # Exits at once: TensorFlow's shutdown of a broken cluster is slow and noisy.
            distribution.exit_process(distribution.CLUSTER_ERROR_EXIT_CODE, f"{program}: error: {error}")
        except StorageFull as error:
            print(f"{program}: error: {error}", file=sys.stderr, flush=True)
            sys.exit(distribution.CLUSTER_ERROR_EXIT_CODE)
        except (tf.errors.OpError, OSError) as error:
            if not is_storage_full(error):
                raise
            print(
                f"{program}: error: no space left on the storage while writing ({first_line(error)}); what was "
                "written before is intact and nothing half-written is left. Free some space and run the same "
                "command again.",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(distribution.CLUSTER_ERROR_EXIT_CODE)
        except TrainingInterrupted as interrupted:
            print(f"{program}: {interrupted}", file=sys.stderr, flush=True)
            sys.exit(INTERRUPTED_EXIT_CODE)
        except KeyboardInterrupt:
            print(f"{program}: interrupted; nothing was written.", file=sys.stderr, flush=True)
            sys.exit(INTERRUPTED_EXIT_CODE)

    return wrapped


def check_path_flag(name: str, value: str | None) -> str | None:
    """`value` of the path flag `--name`, refused if it was given empty (`--model_dir=`)."""
    if value is not None and not value.strip():
        raise ValueError(f"`--{name}` must name a directory; received {value!r}.")
    return value


def parse_gin(config_files: list, gin_params: list[str]) -> None:
    """Parses a run's gin files and bindings into a fresh global gin config."""
    gin.clear_config()
    gin_config.parse(config_files, gin_params)


def setup_training_strategy() -> tf.distribute.Strategy:
    """Sets up the devices and strategy that the parsed config binds on `Trainer`.

    It must precede any other TensorFlow op, and gin runs the data sources (which may read
    data) when it constructs the `Trainer`, so the settings are read from gin here, before that.
    """
    defaults = inspect.signature(Trainer).parameters

    def setting(name: str):
        try:
            return gin.query_parameter(f"Trainer.{name}")
        except ValueError:  # not bound
            return defaults[name].default

    return distribution.setup(setting("strategy"), setting("logical_cpus"), setting("cluster_timeout"))


def trainer_from_run(model_dir: str, gin_params: list[str]) -> Trainer:
    """A `Trainer` for an existing run, configured by its operative config plus extra bindings.

    No strategy is set up: evaluating and exporting run on one device whatever the run trained with.
    """
    operative = RunDirectory(check_path_flag("model_dir", model_dir)).operative_config()
    if operative is None:
        raise ValueError(
            f"`--model_dir` {model_dir!r} holds no operative_config.gin; point it at a directory "
            "written by resnet-train."
        )
    gin.clear_config()
    gin_config.parse([], [operative, *gin_params])
    return gin.get_configurable(Trainer)(model_dir=model_dir)


def restored_model(model_dir: str, gin_params: list[str], checkpoint: str):
    """The model of an existing run with `checkpoint` restored, on one device.

    Returns:
        `(trainer, model, evaluator, path)`: the run's (unbuilt) trainer for its settings, the
        model, an `Evaluator` of it (`evaluator.from_logits` says what the model returns), and
        the checkpoint path restored.
    """
    trainer = trainer_from_run(model_dir, gin_params)
    candidates = trainer.run_dir.checkpoint_candidates(checkpoint)
    if not candidates:
        raise ValueError(f"No {checkpoint!r} checkpoint in {model_dir!r}; train first.")
    model, evaluator = trainer.build_evaluator()
    path = restore_newest_intact(lambda path: restore_model(model, path), candidates)
    return trainer, model, evaluator, path


def print_json_last(results: dict) -> None:
    """Prints `results` as the last line of output: one JSON object."""
    print(json.dumps(results, sort_keys=True), flush=True)
