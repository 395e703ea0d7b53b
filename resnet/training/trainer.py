"""The training loop of a ResNet, configured by gin: resumable, distributed, reproducible.

A run lives in its `model_dir` (see `resnet.training.rundir.RunDirectory` for every file).
Checkpoints are TensorFlow checkpoints: data files are written first and the "latest" pointer
is replaced afterwards, so a crash while saving leaves the previous checkpoint as the latest.
`metrics.csv` and the JSON files are replaced by rename too.

The parts, each with one job: `resnet.training.distribution` sets up devices and the strategy,
`resnet.training.steps` builds the train and eval steps, `resnet.training.evaluator` evaluates
and restores, `RunDirectory` owns the files of `model_dir`, and `Trainer` is the loop.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gin
import keras
import numpy as np
import tensorflow as tf

from resnet.data.pipeline import InputPipeline
from resnet.data.preprocessing import Preprocessing
from resnet.data.sources import DataSource
from resnet.model import ResNet
from resnet.training import distribution
from resnet.training.evaluator import (
    Evaluator,
    data_errors_named,
    restore_checkpoint,
    restore_newest_intact,
    variables_by_path,
)
from resnet.training.finetune import PretrainedWeights, freeze
from resnet.training.rundir import (
    CHECKPOINT_KINDS,
    CHECKPOINT_NAMES,
    METRICS_COLUMNS,
    SHARED_STORAGE,
    RunDirectory,
    first_line,
    is_storage_full,
    join,
)
from resnet.training.schedules import learning_rate_schedule
from resnet.training.steps import check_no_model_losses, make_train_step
from resnet.validation import check_choice, check_int, check_rate

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
PROGRESS = ("auto", "bar", "epoch")

__all__ = ["StorageFull", "Trainer", "TrainingDiverged", "TrainingInterrupted", "TrainingStopped", "variables_by_path"]


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


class TrainingStopped(Exception):
    """Training stopped on a stop signal (SIGTERM, a preemption notice) after saving a backup;
    running the same command again resumes there."""


class TrainingInterrupted(Exception):
    """Training was interrupted (Ctrl-C); the message says what the newest backup holds."""


class StorageFull(Exception):
    """The storage of `model_dir` ran out of space while the trainer wrote to it; nothing that
    was written before is lost, and rerunning once there is space resumes the run."""


@gin.configurable(module="resnet", denylist=["model_dir"])
class Trainer:
    """Trains a model on a data source with SGD, and evaluates and checkpoints it.

    Everything but `model_dir` is bound in gin (`Trainer.epochs = 90`); see
    `configs/experiments/` for complete recipes. Constructing a Trainer only checks and stores
    its settings; `build()` creates the model, optimizer and input pipeline, `train()` runs.

    Args:
        model_dir: Directory of the run: a local path or any URI TensorFlow's file systems
            open (`gs://...`). Rerunning with the same directory resumes where the last run
            stopped; every worker of a multi-worker run must see the same directory.
        data: The `DataSource` (e.g. `@DigitsData()`, `@CifarData()`, `@TFRecordData()`).
        preprocessing: Augmentation and normalization (`@Preprocessing()`).
        model: The model class (or a function) that gin builds; `ResNet` by default.
        epochs: Number of epochs.
        batch_size: Global batch size: the images of one step over all replicas.
        steps_per_epoch: Steps per epoch; None means one pass over the training split. An
            epoch of `steps_per_epoch` goes on where the last one stopped, so short epochs
            see all of the data in turn (see `InputPipeline.train`).
        learning_rate: A function `(steps_per_epoch, total_steps, batch_size) -> schedule`;
            by default `learning_rate_schedule`, whose arguments gin binds.
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        weight_decay: L2 penalty on convolution and dense kernels only (not on norms or
            biases), added to the loss as `weight_decay / 2 * sum(kernel ** 2)`, i.e. the
            gradient gets `weight_decay * kernel` as in the paper and torchvision.
        label_smoothing: Label smoothing of the cross-entropy.
        precision: "float32", "mixed_bfloat16", or "mixed_float16" (with dynamic loss scaling).
        strategy: "default", "mirrored" or "multi_worker_mirrored" (see
            `resnet.training.distribution`).
        logical_cpus: Split the CPU into this many logical devices (for "mirrored" without GPUs).
        cluster_timeout: Seconds a worker of a multi-worker run waits for all its peers to
            join before giving up with an error.
        jit_compile: Compile the train and eval steps with XLA.
        keep_checkpoints: End-of-epoch checkpoints to keep.
        backup_every_steps: Also save a resumable backup every this many steps within an epoch
            (0: only at the end of epochs).
        seed: Seed of weight initialization, data order, augmentation and dropout / drop path.
        deterministic: Make TensorFlow's ops deterministic, so that two runs with the same seed
            compute the same numbers bit for bit (at some cost in speed; see
            benchmarks/RESULTS.md).
        progress: "bar" (a progress bar per epoch), "epoch" (one line per epoch), or "auto"
            (a bar on terminals, lines otherwise).
        initial_weights: Pretrained weights to start a new run from (`@PretrainedWeights()`:
            keras.applications or torchvision/timm files); not applied when resuming.
        freeze_stages: Make the stem and the first this many stages non-trainable (their batch
            norms then use their moving statistics), for fine-tuning; None trains everything.
            Bind `ResNet.norm = 'frozen_batch'` to freeze every batch norm instead.

    Example:

    >>> import resnet                                                        # doctest: +SKIP
    >>> resnet.parse(["experiments/demo"], ["Trainer.epochs = 1"])           # doctest: +SKIP
    >>> trainer = gin.get_configurable(Trainer)(model_dir="runs/demo")       # doctest: +SKIP
    >>> trainer.train()["val_accuracy"] > 0.5                                # doctest: +SKIP
    True
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        data: DataSource = gin.REQUIRED,
        preprocessing: Preprocessing | None = None,
        model: Callable[..., keras.Model] = ResNet,
        epochs: int = 30,
        batch_size: int = 128,
        steps_per_epoch: int | None = None,
        learning_rate: Callable[..., Any] = learning_rate_schedule,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 1e-4,
        label_smoothing: float = 0.0,
        precision: str = "float32",
        strategy: str = "default",
        logical_cpus: int | None = None,
        cluster_timeout: float = distribution.DEFAULT_CLUSTER_TIMEOUT,
        jit_compile: bool = False,
        keep_checkpoints: int = 3,
        backup_every_steps: int = 500,
        seed: int = 0,
        deterministic: bool = False,
        progress: str = "auto",
        initial_weights: PretrainedWeights | None = None,
        freeze_stages: int | None = None,
    ):
        if not isinstance(data, DataSource):
            raise ValueError(f"`Trainer.data` must be a DataSource such as @DigitsData(); received {data!r}.")
        self.run_dir = RunDirectory(os.fspath(model_dir))
        self.model_dir = self.run_dir.path
        self.data = data
        self.preprocessing = preprocessing if preprocessing is not None else Preprocessing()
        self.model_fn = model
        self.epochs = check_int("Trainer.epochs", epochs)
        self.batch_size = check_int("Trainer.batch_size", batch_size)
        self.steps_per_epoch = None if steps_per_epoch is None else check_int("Trainer.steps_per_epoch", steps_per_epoch)
        self.learning_rate = learning_rate
        self.momentum = check_rate("Trainer.momentum", momentum)
        self.nesterov = bool(nesterov)
        if weight_decay < 0:
            raise ValueError(f"`Trainer.weight_decay` must be >= 0; received {weight_decay!r}.")
        self.weight_decay = float(weight_decay)
        self.label_smoothing = check_rate("Trainer.label_smoothing", label_smoothing)
        self.precision = check_choice("Trainer.precision", precision, PRECISIONS)
        self.strategy_name = check_choice("Trainer.strategy", strategy, distribution.STRATEGIES)
        self.logical_cpus = None if logical_cpus is None else check_int("Trainer.logical_cpus", logical_cpus)
        self.cluster_timeout = distribution.check_cluster_timeout(cluster_timeout)
        self.jit_compile = bool(jit_compile)
        self.keep_checkpoints = check_int("Trainer.keep_checkpoints", keep_checkpoints)
        self.backup_every_steps = check_int("Trainer.backup_every_steps", backup_every_steps, minimum=0)
        self.seed = check_int("Trainer.seed", seed, minimum=0)
        if not isinstance(deterministic, bool):
            raise ValueError(f"`Trainer.deterministic` must be True or False; received {deterministic!r}.")
        self.deterministic = deterministic
        self.progress = check_choice("Trainer.progress", progress, PROGRESS)
        if initial_weights is not None and not isinstance(initial_weights, PretrainedWeights):
            raise ValueError(
                f"`Trainer.initial_weights` must be @PretrainedWeights() or None; received {initial_weights!r}."
            )
        self.initial_weights = initial_weights
        self.freeze_stages = freeze_stages
        self._built = False
        self._all_finite = None  # built on first use by `_check_finite`

    # ----------------------------------------------------------------------------- building

    def setup_strategy(self) -> tf.distribute.Strategy:
        """Sets up devices and the strategy this trainer is configured with (see
        `distribution.setup`); must precede any other TensorFlow op in the process."""
        return distribution.setup(self.strategy_name, self.logical_cpus, self.cluster_timeout)

    def build(self, strategy: tf.distribute.Strategy | None = None) -> None:
        """Creates the model, optimizer, input pipeline and checkpoint objects.

        Args:
            strategy: The strategy to train under, as `setup_strategy()` (or
                `distribution.setup`) returned it; None sets it up here.
        """
        if self._built:
            return
        self.strategy = strategy or self.setup_strategy()
        self.is_chief = distribution.is_chief(self.strategy)
        replicas = self.strategy.num_replicas_in_sync
        if self.batch_size % replicas:
            raise ValueError(
                f"`Trainer.batch_size`={self.batch_size} (global) must be a multiple of the {replicas} replicas."
            )
        print(f"Strategy {self.strategy_name!r}: {replicas} replica{'s' if replicas > 1 else ''}, "
              f"{self.batch_size // replicas} images per replica per step.", flush=True)
        if self.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.config.set_dtype_policy(self.precision)
        keras.utils.set_random_seed(self.seed)
        self.pipeline = InputPipeline(self.data, self.preprocessing, batch_size=self.batch_size, seed=self.seed)
        self.steps = self.steps_per_epoch or self.pipeline.steps_per_epoch()
        count = None if self.steps else self.data.num_examples("train")  # counted again only to explain
        if count is not None:
            raise ValueError(
                f"`Trainer.batch_size` {self.batch_size} is larger than the {count} training images of "
                f"{self.data.name!r}: not one full batch per epoch. Use a batch of at most {count}, or bind "
                "`Trainer.steps_per_epoch` to repeat the data within an epoch."
            )
        if not self.steps:
            raise ValueError(
                f"Cannot tell how many steps make an epoch of {self.data.name!r} data: bind "
                "`Trainer.steps_per_epoch` (e.g. 1281167 // 256 = 5004 for ImageNet at batch 256)."
            )
        with self.strategy.scope():
            self.model = self.make_model()
            if self.freeze_stages is not None:
                freeze(self.model, self.freeze_stages)
            self.schedule = self.learning_rate(
                steps_per_epoch=self.steps, total_steps=self.steps * self.epochs, batch_size=self.batch_size
            )
            optimizer = keras.optimizers.SGD(learning_rate=self.schedule, momentum=self.momentum, nesterov=self.nesterov)
            if self.precision == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(self.model.trainable_variables)
            self.optimizer = optimizer
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.best_accuracy = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_accuracy")
        self.checkpoint = tf.train.Checkpoint(
            model=variables_by_path(self.model),
            optimizer=self.optimizer,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            best_accuracy=self.best_accuracy,
        )
        self.evaluator = Evaluator(
            self.model, self.pipeline, num_classes=self.data.num_classes, from_logits=self.from_logits,
            data_name=self.data.name, strategy=self.strategy, jit_compile=self.jit_compile,
        )
        self._built = True

    def make_model(self) -> keras.Model:
        """Builds the configured model and checks it fits the data and preprocessing; sets
        `from_logits` from its classifier activation."""
        model = gin.get_configurable(self.model_fn)() if _is_configurable(self.model_fn) else self.model_fn()
        outputs = model.output_shape[-1]
        if outputs != self.data.num_classes:
            raise ValueError(
                f"The model has {outputs} outputs but the {self.data.name!r} data has "
                f"{self.data.num_classes} classes; bind `ResNet.num_classes = {self.data.num_classes}`."
            )
        expected = tuple(model.input_shape[1:])
        size = self.preprocessing.image_size
        if expected[2] != 3 or any(d not in (None, size) for d in expected[:2]):
            raise ValueError(
                f"The model takes images of shape {expected} but preprocessing makes {size}x{size}x3 "
                f"images; bind `ResNet.input_shape = ({size}, {size}, 3)` or `Preprocessing.image_size`."
            )
        activation = getattr(model, "classifier_activation", None)
        if activation not in (None, "linear", "softmax"):
            raise ValueError(
                f"Training needs logits or softmax outputs; the classifier activation is {activation!r}."
            )
        self.from_logits = activation != "softmax"
        check_no_model_losses(model)
        return model

    def make_train_step(self):
        """The distributed train step of this trainer (see `resnet.training.steps.make_train_step`)."""
        self.build()
        return make_train_step(
            self.model, self.optimizer, self.strategy, num_classes=self.data.num_classes,
            global_batch_size=self.batch_size, from_logits=self.from_logits, weight_decay=self.weight_decay,
            label_smoothing=self.label_smoothing, jit_compile=self.jit_compile,
        )

    # ---------------------------------------------------------------------------- restoring

    def restore(self, which: str = "backup") -> str | None:
        """Restores the whole training state from the newest checkpoint of `which` ("backup",
        "checkpoints", "best") or from a checkpoint path. A damaged newest backup (a truncated
        file) falls back to the newest one that can be read, backups then epoch checkpoints,
        saying so on stderr (see `RunDirectory.checkpoint_candidates`).

        Returns:
            The checkpoint path restored, or None if there was none.

        Raises:
            ValueError: The checkpoint does not fit the model, or none could be read.
        """
        self.build()
        return restore_newest_intact(lambda path: restore_checkpoint(self.checkpoint, path),
                                     self.run_dir.checkpoint_candidates(which))

    def evaluate(self) -> dict[str, float]:
        """Evaluates the current weights on the whole evaluation split (see `Evaluator`)."""
        self.build()
        return self.evaluator.evaluate()

    # ----------------------------------------------------------------------------- training

    def train(self, command: Sequence[str] | None = None) -> dict[str, float]:
        """Trains until `epochs` are done, resuming from `model_dir`'s backup if it has one.

        Before anything is written, every check that can refuse the run is made: a directory
        that records another run's configuration (`RunDirectory.check_same_run`), a damaged
        `metrics.csv` or one that lacks rows of finished epochs, a directory held by another
        run (it is then locked against a second one), workers that do not all see the chief's
        directory, a checkpoint that does not fit, pretrained weights that cannot be loaded. A
        refused run leaves the directory as it was. In a multi-worker run only the chief writes
        `model_dir`, and a check that fails on one worker stops them all.

        Args:
            command: The command line to record in `command.txt`; None records nothing.

        Returns:
            The last epoch's metrics (read from `metrics.csv` when every epoch was already done).

        Raises:
            TrainingDiverged: The loss became NaN or infinite; the message names the step and
                the last good checkpoint, which is left in place.
            TrainingInterrupted: Ctrl-C; the message says what the newest backup holds.
            StorageFull: No space left while saving; the message names what was being written
                and the newest backup, which is intact.
            ValueError: The directory holds another run, is in use, or workers disagree on it.
        """
        self.build()
        try:
            return self._train_checked(command)
        except KeyboardInterrupt:
            raise TrainingInterrupted(f"Interrupted. {self._backup_state()}") from None

    def _train_checked(self, command: Sequence[str] | None) -> dict[str, float]:
        run, strategy = self.run_dir, self.strategy
        operative = gin.operative_config_str()
        with distribution.reraise_as_cluster_error(strategy), contextlib.ExitStack() as held:
            with distribution.fail_together(strategy, "checking the run directory"):
                if self.is_chief:
                    run.create()  # adds nothing to an existing directory; fails clearly if unwritable
                run.check_same_run(operative)
                if self.is_chief:
                    run.metrics.rows()  # a damaged metrics.csv is refused now, not after an epoch of training
                    held.enter_context(run.lock())
            self._check_shared_directory()
            if self.is_chief:
                root = run.path
            else:
                root = run.worker_scratch(distribution.task_name(strategy))
                held.callback(run.cleanup_scratch)
            with distribution.fail_together(strategy, "restoring the run"):
                resumed = self._restore_or_initialize()
            start_epoch, skip = int(self.epoch.numpy()), int(self.step_in_epoch.numpy())
            low, high = distribution.agree(strategy, start_epoch * self.steps + skip)
            if low != high:
                raise ValueError(
                    f"The workers restored different points of the run (global steps {low} and {high}): each "
                    f"sees another `--model_dir` {self.model_dir!r}. It must be {SHARED_STORAGE}."
                )
            if self.is_chief:  # the first writes: nothing can refuse the run any more
                with self._writing("the run's configuration"):
                    for kind in CHECKPOINT_KINDS:
                        run.repair_checkpoint_state(kind)
                    if command is not None:
                        run.append_command(command)
                    run.write_operative_config(operative)
            if resumed:
                print(f"Resuming from {resumed}: epoch {start_epoch + 1}, step {skip} of {self.steps}.", flush=True)
            if start_epoch >= self.epochs:
                print(f"All {self.epochs} epochs are done in {self.model_dir}.", flush=True)
                return self._recorded_metrics(start_epoch)
            return self._train_from(root, start_epoch, skip)

    def _check_shared_directory(self) -> None:
        """Refuses, on every worker at once, a multi-worker run whose workers do not all see the
        chief's `model_dir`: each reads the token of the `run.lock` in its own `model_dir`, which
        the chief took before the collective that ended the checks, and all compare them."""
        if not distribution.is_multi_worker(self.strategy):
            return
        token = self.run_dir.lock_token()
        low, high = distribution.agree(self.strategy, token if token is not None else -1)
        if low != high:
            raise ValueError(
                f"The workers do not all see the chief's `--model_dir` ({self.model_dir!r} on "
                f"{distribution.task_name(self.strategy)}): it must be {SHARED_STORAGE}. Nothing was written."
            )

    def _restore_or_initialize(self) -> str | None:
        """Restores the newest backup (or the newest intact checkpoint), or loads the initial
        weights of a new run; checks that `metrics.csv` holds a row for every finished epoch.

        Returns:
            The checkpoint restored, or None for a new run.
        """
        resumed = self.restore("backup")
        if self.is_chief:
            rows, finished = len(self.run_dir.metrics.rows()), int(self.epoch.numpy())
            path = self.run_dir.metrics.path
            if resumed is None and rows:
                raise ValueError(
                    f"{path} records {rows} epoch(s), but `--model_dir` {self.model_dir!r} holds no checkpoint to "
                    "resume them from. Use a new `--model_dir`, or move metrics.csv away to start this run anew."
                )
            if rows < finished:
                raise ValueError(
                    f"{path} records epochs 1 to {rows}, but the run has finished {finished} ({resumed}): the rows of "
                    f"epochs {rows + 1} to {finished} are missing. Put back a copy of the file, or add a line holding "
                    f"only the epoch number for each missing epoch (e.g. `{rows + 1}{',' * (len(METRICS_COLUMNS) - 1)}`) "
                    "to go on without them."
                )
        if resumed is None and self.initial_weights is not None:
            print(self.initial_weights.load_into(self.model), flush=True)
        return resumed

    def _recorded_metrics(self, epochs: int) -> dict[str, float]:
        """The metrics `metrics.csv` recorded for epoch `epochs`, as numbers ({} if it has none)."""
        rows = self.run_dir.metrics.rows()
        if len(rows) < epochs or epochs == 0:
            return {}
        row = rows[epochs - 1]
        return {key: (int(value) if key in ("epoch", "step") else float(value)) for key, value in row.items() if value}

    def _backup_state(self) -> str:
        """What the newest backup holds, and how to resume from it."""
        backup = self.run_dir.checkpoint_path("backup") if self._built else None
        if backup is None:
            return f"No backup was saved in {self.model_dir} yet."
        done = int(backup.rsplit("-", 1)[1])
        epoch, step = divmod(done, self.steps)
        where = f"the end of epoch {epoch}" if step == 0 else f"step {step} of {self.steps} in epoch {epoch + 1}"
        return f"The newest backup, {backup}, holds the run at {where}: run the same command to resume from there."

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turns running out of storage space while writing `what` into a `StorageFull` that names
        it and the newest backup (checkpoints and files are replaced atomically: the old ones stay)."""
        try:
            yield
        except (tf.errors.OpError, OSError) as error:
            if not is_storage_full(error):
                raise
            raise StorageFull(
                f"No space left on the storage of `--model_dir` while writing {what} ({first_line(error)}). Nothing "
                f"was lost: files are replaced whole, the old one stays. {self._backup_state()} Free some space first."
            ) from None

    def _train_from(self, root: str, start_epoch: int, skip: int) -> dict[str, float]:
        """Trains epochs `start_epoch` (from its step `skip`) to the last, checkpointing into `root`
        (`model_dir` for the chief, a scratch directory for the other workers)."""
        run = self.run_dir
        managers = {
            kind: tf.train.CheckpointManager(
                self.checkpoint, join(root, kind),
                max_to_keep=self.keep_checkpoints if kind == "checkpoints" else 1,
                checkpoint_name=CHECKPOINT_NAMES[kind],
            )
            for kind in CHECKPOINT_KINDS
        }
        writer = tf.summary.create_file_writer(run.join("tensorboard")) if self.is_chief else None
        train_step = self.make_train_step()
        row: dict[str, float] = {}
        try:
            with distribution.StopSignal(self.strategy) as stop:
                # One stream for all the epochs left: an epoch of `steps_per_epoch` goes on
                # where the last one stopped, without skipping to it again (see InputPipeline.train).
                stream = iter(self.strategy.experimental_distribute_dataset(self.pipeline.train(
                    start_epoch, skip_steps=skip, steps=self.steps_per_epoch, epochs=self.epochs - start_epoch
                )))
                for epoch in range(start_epoch, self.epochs):
                    batches = itertools.islice(stream, self.steps - skip)
                    row = self._train_epoch(epoch, skip, batches, train_step, managers, writer, stop)
                    skip = 0
        finally:
            if writer is not None:
                writer.close()
        return row

    def _train_epoch(self, epoch: int, skip: int, batches, train_step, managers, writer, stop) -> dict[str, float]:
        started = time.time()
        bar = self._progress_bar(epoch)
        loss_sum, correct, steps_done = 0.0, 0.0, 0
        skipped_before = self._skipped_records(clear=True)[0]
        for step, batch in enumerate(data_errors_named(batches, self.data.name), start=skip):
            loss, hits = (float(t) for t in train_step(batch))
            global_step = epoch * self.steps + step + 1
            if not math.isfinite(loss):
                raise self._diverged(f"The training loss is {loss} at step {global_step} (epoch {epoch + 1}, "
                                     f"step {step + 1})")
            loss_sum, correct, steps_done = loss_sum + loss, correct + hits, steps_done + 1
            if bar is not None:
                bar.update(step + 1, [("loss", loss), ("accuracy", hits / self.batch_size)])
            self.step_in_epoch.assign(step + 1)
            self.run_dir.heartbeat()
            if stop.agreed():
                self._check_finite(global_step)
                self._save(managers, "backup", global_step)
                raise TrainingStopped(
                    f"Stopped by a stop signal at step {global_step} (epoch {epoch + 1}, step {step + 1}) after "
                    f"saving a backup in {self.model_dir}; run the same command again to resume."
                )
            if self.backup_every_steps and (step + 1) % self.backup_every_steps == 0 and step + 1 < self.steps:
                self._check_finite(global_step)
                self._save(managers, "backup", global_step)
        if steps_done == 0 and skip < self.steps:
            raise ValueError(f"The training split of {self.data.name!r} data gave no full batch of {self.batch_size}.")
        count, reports = self._skipped_records()
        if count > skipped_before:
            print(f"Epoch {epoch + 1} skipped {count - skipped_before} unreadable training record(s) of "
                  f"{self.data.name!r}" + (f"; first: {' | '.join(reports).rstrip('.')}" if reports else "") + ".", flush=True)
        results = self.evaluator.evaluate()
        row = {
            "epoch": epoch + 1,
            "step": (epoch + 1) * self.steps,
            "loss": loss_sum / max(steps_done, 1),
            "accuracy": correct / max(steps_done * self.batch_size, 1),
            "val_loss": results["loss"],
            "val_accuracy": results["top1"],
            "val_top5": results["top5"],
            "learning_rate": float(self.schedule(self.optimizer.iterations)),
            "seconds": round(time.time() - started, 2),
        }
        self._end_epoch(epoch, row, managers, writer)
        return row

    def _skipped_records(self, clear: bool = False) -> tuple[int, list[str]]:
        """Training records the data source has skipped as unreadable so far (`skip_corrupt`),
        and the reports of the first few since the last clear."""
        if not hasattr(self.data, "skipped_count"):
            return 0, []
        return self.data.skipped_count("train"), self.data.skipped_reports("train", clear=clear)

    def _diverged(self, what: str) -> TrainingDiverged:
        """The error ending a diverged run; it names the newest backup, the last good checkpoint
        (no checkpoint with non-finite weights is ever saved, see `_check_finite`)."""
        last = self.run_dir.checkpoint_path("backup")
        return TrainingDiverged(f"{what}; stopping. The last good checkpoint is {last or 'none (nothing saved yet)'}.")

    def _check_finite(self, global_step: int) -> None:
        """Raises `TrainingDiverged` instead of letting a checkpoint save non-finite weights: the
        loss can stay finite while weights overflow (moving variances, which a training step
        does not use, are the first)."""
        if self._all_finite is None:
            variables = [v for v in self.model.weights if keras.backend.is_float_dtype(v.dtype)]
            self._all_finite = tf.function(
                lambda: tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in variables]))
            )
        if not bool(self._all_finite()):
            bad = [v.path for v in self.model.weights
                   if keras.backend.is_float_dtype(v.dtype) and not np.isfinite(v.numpy()).all()]
            raise self._diverged(
                f"The weights hold non-finite values after step {global_step} ({len(bad)} variable(s), "
                f"first {', '.join(bad[:3])}) though the loss is finite; they are not saved"
            )

    def _end_epoch(self, epoch: int, row: dict, managers, writer) -> None:
        step = row["step"]
        self._check_finite(step)  # before anything of the epoch is written
        summary = "  ".join(f"{k} {row[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy"))
        print(f"Epoch {epoch + 1}/{self.epochs}  {summary}  lr {row['learning_rate']:.4g}  ({row['seconds']:.0f}s)", flush=True)
        # The epoch's checkpoints first: a failure writing the metrics cannot lose them.
        self.epoch.assign(epoch + 1)
        self.step_in_epoch.assign(0)
        self._save(managers, "checkpoints", epoch + 1)
        if row["val_accuracy"] > float(self.best_accuracy.numpy()):
            self.best_accuracy.assign(row["val_accuracy"])
            self._save(managers, "best", epoch + 1)
            if self.is_chief:
                with self._writing(self.run_dir.join("best", "best.json")):
                    self.run_dir.write_json("best/best.json", {"epoch": epoch + 1, "val_accuracy": row["val_accuracy"]})
        if self.is_chief:
            with self._writing(self.run_dir.metrics.path):
                # Nine significant digits hold a float32 exactly: the figures are those evaluated.
                self.run_dir.metrics.write({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})
            with self._writing(self.run_dir.join("tensorboard")), writer.as_default(step=step):
                for key, value in row.items():
                    if key not in ("epoch", "step"):
                        tf.summary.scalar(key, value)
                writer.flush()
        # Last: the backup marks the epoch as finished, so a rerun never redoes it.
        self._save(managers, "backup", step)

    def _save(self, managers: dict[str, tf.train.CheckpointManager], kind: str, number: int) -> None:
        manager = managers[kind]
        with self._writing(f"the checkpoint {join(manager.directory, CHECKPOINT_NAMES[kind])}-{number}"):
            manager.save(checkpoint_number=number)

    def _progress_bar(self, epoch: int):
        use_bar = self.progress == "bar" or (self.progress == "auto" and sys.stdout.isatty())
        if not use_bar:
            return None
        print(f"Epoch {epoch + 1}/{self.epochs}", flush=True)
        return keras.utils.Progbar(self.steps, stateful_metrics=["loss", "accuracy"])

    # --------------------------------------------------------------------------- evaluation

    def build_evaluator(self) -> tuple[keras.Model, Evaluator]:
        """The model and an `Evaluator` of it on one device, without optimizer or training input:
        what `resnet-eval` and `resnet-export` need, whatever strategy the run trained with."""
        keras.config.set_dtype_policy(self.precision)
        model = self.make_model()
        pipeline = InputPipeline(self.data, self.preprocessing, batch_size=self.batch_size, seed=self.seed)
        evaluator = Evaluator(
            model, pipeline, num_classes=self.data.num_classes, from_logits=self.from_logits, data_name=self.data.name
        )
        return model, evaluator


def _is_configurable(fn) -> bool:
    try:
        gin.get_configurable(fn)
    except ValueError:
        return False
    return True
