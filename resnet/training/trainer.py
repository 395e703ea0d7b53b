"""The trainer of a ResNet, configured by gin: resumable, distributed, reproducible.

A run lives in its `model_dir` (`resnet.training.run_directory.RunDirectory` owns every file).
The parts, each with one job: `resnet.training.distribution` sets up devices, the strategy and
the life of a worker cluster; `resnet.training.steps` builds the train and eval steps;
`resnet.training.evaluator` evaluates; `resnet.training.checkpoints` restores; `Trainer` builds
everything, checks a run before its first write and restores it; `resnet.training.epochs` runs
the epochs and saves after each.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gin
import keras
import tensorflow as tf

from resnet.data.pipeline import InputPipeline
from resnet.data.preprocessing import Preprocessing
from resnet.data.sources import DataSource
from resnet.model import ResNet
from resnet.training import distribution
from resnet.training.checkpoints import restore_checkpoint, restore_newest_intact, variables_by_path
from resnet.training.epochs import EpochLoop, backup_state, writing
from resnet.training.errors import TrainingInterrupted
from resnet.training.evaluator import Evaluator
from resnet.training.finetune import PretrainedWeights, freeze
from resnet.training.metrics_log import METRICS_COLUMNS
from resnet.training.run_directory import CHECKPOINT_KINDS, SHARED_STORAGE, RunDirectory
from resnet.training.schedules import learning_rate_schedule
from resnet.training.steps import check_no_model_losses, make_train_step
from resnet.training.worker_scratch import WorkerScratch
from resnet.validation import check_choice, check_int, check_rate

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
PROGRESS = ("auto", "bar", "epoch")


_ADDED_LATER = ("workers", "epoch_totals")
"""Entries of the training checkpoint that runs of earlier versions lack (see `Trainer.restore`)."""


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
        seed: Seed of data order and augmentation and, once `setup_process()` has run (the
            binaries run it), of weight initialization and dropout / drop path.
        deterministic: Make TensorFlow's ops deterministic (in `setup_process()`), so that two
            runs with the same seed compute the same numbers bit for bit (at some cost in speed;
            see benchmarks/RESULTS.md).
        progress: "bar" (a progress bar per epoch), "epoch" (one line per epoch), or "auto"
            (a bar on terminals, lines otherwise).
        initial_weights: Pretrained weights to start a new run from (`@PretrainedWeights()`:
            keras.applications or torchvision/timm files); not applied when resuming.
        freeze_stages: Make the stem and the first this many stages non-trainable (their batch
            norms then use their moving statistics), for fine-tuning; None trains everything.
            Bind `ResNet.norm = 'frozen_batch'` to freeze every batch norm instead.

    Process-wide settings are not the trainer's to change behind a caller's back: the devices
    and strategy (`setup_strategy`), and the random seed and op determinism (`setup_process`)
    are set by whoever owns the process (the binaries do both); the model is built under the
    trainer's `precision` without changing Keras' global policy.

    Example:

    >>> import resnet                                                        # doctest: +SKIP
    >>> resnet.parse(["experiments/demo"], ["Trainer.epochs = 1"])           # doctest: +SKIP
    >>> trainer = gin.get_configurable(Trainer)(model_dir="runs/demo")       # doctest: +SKIP
    >>> trainer.setup_process()                                              # doctest: +SKIP
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
        self.steps_per_epoch = (
            None if steps_per_epoch is None else check_int("Trainer.steps_per_epoch", steps_per_epoch)
        )
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
        self.freeze_stages = None if freeze_stages is None else check_int("Trainer.freeze_stages", freeze_stages, 0)
        self._built = False

    # ----------------------------------------------------------------------------- building

    def setup_strategy(self) -> tf.distribute.Strategy:
        """Sets up devices and the strategy this trainer is configured with (see
        `distribution.setup`): process-wide, and before any other TensorFlow op in the process."""
        return distribution.setup(self.strategy_name, self.logical_cpus, self.cluster_timeout)

    def setup_process(self) -> None:
        """Sets what makes this process's training reproducible, process-wide: TensorFlow's op
        determinism (with `deterministic`) and the random seed of Python, NumPy, TensorFlow and
        Keras (weight initialization, dropout, drop path) to `seed`. Call it once, before
        `build()`; the binaries do."""
        if self.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(self.seed)

    def build(self, strategy: tf.distribute.Strategy | None = None) -> None:
        """Creates the model, optimizer, input pipeline and checkpoint objects.

        Args:
            strategy: The strategy to train under, as `setup_strategy()` (or
                `distribution.setup`) returned it; None is the current one, which must be a
                single device unless `Trainer.strategy` is "default".
        """
        if self._built:
            return
        if strategy is None and self.strategy_name != "default":
            raise ValueError(
                f"`Trainer.strategy`={self.strategy_name!r} needs its devices set up first: "
                "`trainer.build(trainer.setup_strategy())` (the binaries do)."
            )
        self.strategy = strategy or tf.distribute.get_strategy()
        self.is_chief = distribution.is_chief(self.strategy)
        replicas = self.strategy.num_replicas_in_sync
        if self.batch_size % replicas:
            raise ValueError(
                f"`Trainer.batch_size`={self.batch_size} (global) must be a multiple of the {replicas} replicas."
            )
        print(
            f"Strategy {self.strategy_name!r}: {replicas} replica{'s' if replicas > 1 else ''}, "
            f"{self.batch_size // replicas} images per replica per step.",
            flush=True,
        )
        self.pipeline = InputPipeline(self.data, self.preprocessing, batch_size=self.batch_size, seed=self.seed)
        if self.pipeline.data_service is not None:
            print(
                f"Training images come from the tf.data service at {self.pipeline.data_service}, in "
                f"{self.pipeline.data_service_lanes} lane(s) per worker.",
                flush=True,
            )
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
            self.model, self.from_logits = self.make_model()
            if self.freeze_stages is not None:
                freeze(self.model, self.freeze_stages, argument="Trainer.freeze_stages")
            self.schedule = self.learning_rate(
                steps_per_epoch=self.steps, total_steps=self.steps * self.epochs, batch_size=self.batch_size
            )
            optimizer = keras.optimizers.SGD(
                learning_rate=self.schedule, momentum=self.momentum, nesterov=self.nesterov
            )
            if self.precision == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(self.model.trainable_variables)
            self.optimizer = optimizer
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.best_accuracy = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_accuracy")
        # How many workers trained the run last: it may resume on another number (the global
        # batches do not depend on it, see InputPipeline.train), and says so.
        self.workers = tf.Variable(distribution.workers(self.strategy), dtype=tf.int64, trainable=False, name="workers")
        # The unfinished epoch's training loss sum, correct predictions and steps, so that an
        # epoch resumed mid-way reports all its steps in metrics.csv.
        self.epoch_totals = tf.Variable(tf.zeros(3, tf.float64), trainable=False, name="epoch_totals")
        self._state = dict(
            model=variables_by_path(self.model),
            optimizer=self.optimizer,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            best_accuracy=self.best_accuracy,
            workers=self.workers,
            epoch_totals=self.epoch_totals,
        )
        self.checkpoint = tf.train.Checkpoint(**self._state)
        self.evaluator = Evaluator(
            self.model,
            self.pipeline,
            num_classes=self.data.num_classes,
            from_logits=self.from_logits,
            data_name=self.data.name,
            strategy=self.strategy,
            jit_compile=self.jit_compile,
        )
        self._built = True

    def make_model(self) -> tuple[keras.Model, bool]:
        """Builds the configured model under the trainer's `precision` (without changing Keras'
        global dtype policy) and checks it fits the data and preprocessing.

        Returns:
            `(model, from_logits)`: whether the model returns logits (else probabilities).
        """
        with _dtype_policy(self.precision):
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
            raise ValueError(f"Training needs logits or softmax outputs; the classifier activation is {activation!r}.")
        check_no_model_losses(model)
        return model, activation != "softmax"

    def make_train_step(self):
        """The distributed train step of this trainer (see `resnet.training.steps.make_train_step`)."""
        self.build()
        return make_train_step(
            self.model,
            self.optimizer,
            self.strategy,
            num_classes=self.data.num_classes,
            global_batch_size=self.batch_size,
            from_logits=self.from_logits,
            weight_decay=self.weight_decay,
            label_smoothing=self.label_smoothing,
            jit_compile=self.jit_compile,
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
        model = variables_by_path(self.model)
        return restore_newest_intact(
            lambda path: restore_checkpoint(self._checkpoint_of(path), path, model),
            self.run_dir.checkpoint_candidates(which),
        )

    def _checkpoint_of(self, path: str) -> tf.train.Checkpoint:
        """The training state to restore from `path`: all of it, but for the entries that runs of
        earlier versions did not save (those keep their defaults: the worker count of this run,
        an epoch's totals from its first resumed step)."""
        # Not tf.train.list_variables: it takes a ram:// prefix for a directory.
        keys = tf.compat.v1.train.NewCheckpointReader(path).get_variable_to_shape_map()
        saved = {key.split("/", 1)[0] for key in keys}
        absent = [name for name in _ADDED_LATER if name not in saved]
        if not absent:
            return self.checkpoint
        return tf.train.Checkpoint(**{name: value for name, value in self._state.items() if name not in absent})

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
            raise TrainingInterrupted(f"Interrupted. {backup_state(self.run_dir, self.steps)}") from None

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
                    held.enter_context(run.lock.acquire())
            self._check_shared_directory()
            if self.is_chief:
                root = run.path
            else:
                root = held.enter_context(WorkerScratch(run.path, distribution.task_name(strategy)))
            with distribution.fail_together(strategy, "restoring the run"):
                resumed = self._restore_or_initialize()
            start_epoch, skip = int(self.epoch.numpy()), int(self.step_in_epoch.numpy())
            low, high = distribution.agree(strategy, start_epoch * self.steps + skip)
            if low != high:
                raise ValueError(
                    f"The workers restored different points of the run (global steps {low} and {high}): each "
                    f"sees another `--model_dir` {self.model_dir!r}. It must be {SHARED_STORAGE}."
                )
            had, has = int(self.workers.numpy()), distribution.workers(strategy)
            if resumed and had != has and self.pipeline.shard_by == "files":
                raise ValueError(
                    f"The run in {self.model_dir!r} trained on {had} worker(s) and resumes on {has}: with "
                    "`InputPipeline.shard_by`='files' each worker reads its own shards, so its batches would change. "
                    f"Resume it on {had} worker(s). Nothing was written."
                )
            if self.is_chief:  # the first writes: nothing can refuse the run any more
                with writing("the run's configuration", run, self.steps):
                    for kind in CHECKPOINT_KINDS:
                        run.repair_checkpoint_state(kind)
                    if command is not None:
                        run.append_command(command)
                    run.write_operative_config(operative)
            self.workers.assign(has)
            if resumed:
                on = f"on {has} worker{'s' if has > 1 else ''}" + (f" (it had {had})" if had != has else "")
                print(
                    f"Resuming from {resumed}: epoch {start_epoch + 1}, step {skip} of {self.steps}, {on}.", flush=True
                )
            if start_epoch >= self.epochs:
                print(f"All {self.epochs} epochs are done in {self.model_dir}.", flush=True)
                return self._recorded_metrics(start_epoch)
            return EpochLoop(self, root).run(start_epoch, skip)

    def _check_shared_directory(self) -> None:
        """Refuses, on every worker at once, a multi-worker run whose workers do not all see the
        chief's `model_dir`: each reads the token of the `run.lock` in its own `model_dir`, which
        the chief took before the collective that ended the checks, and all compare them."""
        if not distribution.is_multi_worker(self.strategy):
            return
        token = self.run_dir.lock.token()
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
                placeholder = f"{rows + 1}{',' * (len(METRICS_COLUMNS) - 1)}"
                raise ValueError(
                    f"{path} records epochs 1 to {rows}, but the run has finished {finished} ({resumed}): the rows of "
                    f"epochs {rows + 1} to {finished} are missing. Put back a copy of the file, or add a line holding "
                    f"only the epoch number for each missing epoch (e.g. `{placeholder}`) to go on without them."
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

    # --------------------------------------------------------------------------- evaluation

    def build_evaluator(self) -> tuple[keras.Model, Evaluator]:
        """The model and an `Evaluator` of it on one device, without optimizer or training input:
        what `resnet-eval` and `resnet-export` need, whatever strategy the run trained with.
        Only the evaluation split is read (when evaluating)."""
        model, from_logits = self.make_model()
        pipeline = InputPipeline(self.data, self.preprocessing, batch_size=self.batch_size, seed=self.seed)
        evaluator = Evaluator(
            model, pipeline, num_classes=self.data.num_classes, from_logits=from_logits, data_name=self.data.name
        )
        return model, evaluator


@contextlib.contextmanager
def _dtype_policy(policy: str) -> Iterator[None]:
    """Keras' global dtype policy set to `policy` for the block only (layers take it when built)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _is_configurable(fn) -> bool:
    try:
        gin.get_configurable(fn)
    except ValueError:
        return False
    return True
