"""Training, evaluation and checkpointing of a ResNet, configured by gin.

A run lives in its `model_dir`:

```
model_dir/
  operative_config.gin   the gin bindings the run really used (written once model and data exist)
  command.txt            each command line that ran in this directory, with its start time
  metrics.csv            one row per epoch: loss, accuracy, val_loss, val_accuracy, ...
  tensorboard/           TensorBoard event files
  backup/                the newest state (mid-epoch or end of epoch): where a rerun resumes
  checkpoints/           the last `keep_checkpoints` end-of-epoch checkpoints
  best/                  the checkpoint with the best validation accuracy, and best.json
```

Checkpoints are TensorFlow checkpoints: data files are written first and the "latest" pointer
is replaced atomically afterwards, so a crash while saving leaves the previous checkpoint as
the latest. `metrics.csv` and the JSON files are replaced atomically too.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gin
import keras
import numpy as np
import tensorflow as tf

from resnet.data.pipeline import InputPipeline
from resnet.data.preprocessing import Preprocessing
from resnet.data.sources import DataSource
from resnet.interop import PretrainedWeights, freeze
from resnet.model import ResNet
from resnet.training import distribution
from resnet.training.records import MetricsLog, atomic_write_json, atomic_write_text
from resnet.training.schedules import learning_rate_schedule
from resnet.validation import check_choice, check_int, check_rate

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
PROGRESS = ("auto", "bar", "epoch")
METRICS_COLUMNS = (
    "epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy", "val_top5", "learning_rate", "seconds",
)


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


@gin.configurable(module="resnet", denylist=["model_dir"])
class Trainer:
    """Trains a model on a data source with SGD, and evaluates and checkpoints it.

    Everything but `model_dir` is bound in gin (`Trainer.epochs = 90`); see
    `configs/experiments/` for complete recipes.

    Args:
        model_dir: Directory of the run (created if missing). Rerunning with the same directory
            resumes where the last run stopped.
        data: The `DataSource` (e.g. `@DigitsData()`, `@CifarData()`, `@TFRecordData()`).
        preprocessing: Augmentation and normalization (`@Preprocessing()`).
        model: The model class (or a function) that gin builds; `ResNet` by default.
        epochs: Number of epochs.
        batch_size: Global batch size: the images of one step over all replicas.
        steps_per_epoch: Steps per epoch; None means one pass over the training split.
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
        jit_compile: Compile the train and eval steps with XLA.
        keep_checkpoints: End-of-epoch checkpoints to keep.
        backup_every_steps: Also save a resumable backup every this many steps within an epoch
            (0: only at the end of epochs).
        seed: Seed of weight initialization and data order.
        progress: "bar" (a progress bar per epoch), "epoch" (one line per epoch), or "auto"
            (a bar on terminals, lines otherwise).
        initial_weights: Pretrained weights to start a new run from (`@PretrainedWeights()`:
            keras.applications or torchvision/timm files); not applied when resuming.
        freeze_stages: Make the stem and the first this many stages non-trainable (their batch
            norms then use their moving statistics), for fine-tuning; None trains everything.
            Bind `ResNet.norm = 'frozen_batch'` to freeze every batch norm instead.
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
        jit_compile: bool = False,
        keep_checkpoints: int = 3,
        backup_every_steps: int = 500,
        seed: int = 0,
        progress: str = "auto",
        initial_weights: PretrainedWeights | None = None,
        freeze_stages: int | None = None,
    ):
        if not isinstance(data, DataSource):
            raise ValueError(f"`Trainer.data` must be a DataSource such as @DigitsData(); received {data!r}.")
        self.model_dir = Path(model_dir)
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
        self.logical_cpus = logical_cpus
        self.jit_compile = bool(jit_compile)
        self.keep_checkpoints = check_int("Trainer.keep_checkpoints", keep_checkpoints)
        self.backup_every_steps = check_int("Trainer.backup_every_steps", backup_every_steps, minimum=0)
        self.seed = seed
        self.progress = check_choice("Trainer.progress", progress, PROGRESS)
        if initial_weights is not None and not isinstance(initial_weights, PretrainedWeights):
            raise ValueError(
                f"`Trainer.initial_weights` must be @PretrainedWeights() or None; received {initial_weights!r}."
            )
        self.initial_weights = initial_weights
        self.freeze_stages = freeze_stages
        self._built = False

    # ----------------------------------------------------------------------------- building

    def build(self) -> None:
        """Creates the strategy, model, optimizer, input pipeline and checkpoint objects."""
        if self._built:
            return
        if self.logical_cpus:
            distribution.split_cpu(self.logical_cpus)
        self.strategy = distribution.make_strategy(self.strategy_name)
        self.is_chief = distribution.is_chief(self.strategy)
        replicas = self.strategy.num_replicas_in_sync
        if self.batch_size % replicas:
            raise ValueError(
                f"`Trainer.batch_size`={self.batch_size} (global) must be a multiple of the {replicas} replicas."
            )
        print(f"Strategy {self.strategy_name!r}: {replicas} replica{'s' if replicas > 1 else ''}, "
              f"{self.batch_size // replicas} images per replica per step.", flush=True)
        keras.config.set_dtype_policy(self.precision)
        keras.utils.set_random_seed(self.seed)
        self.pipeline = InputPipeline(self.data, self.preprocessing, batch_size=self.batch_size, seed=self.seed)
        self.steps = self.steps_per_epoch or self.pipeline.steps_per_epoch()
        if not self.steps:
            raise ValueError(
                f"Cannot tell how many steps make an epoch of {self.data.name!r} data: bind "
                "`Trainer.steps_per_epoch` (e.g. 1281167 // 256 = 5004 for ImageNet at batch 256)."
            )
        with self.strategy.scope():
            self.model = gin.get_configurable(self.model_fn)() if _is_configurable(self.model_fn) else self.model_fn()
            self._check_model()
            if self.freeze_stages is not None:
                freeze(self.model, self.freeze_stages)
            schedule = self.learning_rate(
                steps_per_epoch=self.steps, total_steps=self.steps * self.epochs, batch_size=self.batch_size
            )
            optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=self.momentum, nesterov=self.nesterov)
            if self.precision == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(self.model.trainable_variables)
            self.optimizer = optimizer
        self.schedule = schedule
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
        self._decayed = [v for v in self.model.trainable_variables if v.path.endswith("kernel")]
        self._built = True

    def _check_model(self) -> None:
        outputs = self.model.output_shape[-1]
        if outputs != self.data.num_classes:
            raise ValueError(
                f"The model has {outputs} outputs but the {self.data.name!r} data has "
                f"{self.data.num_classes} classes; bind `ResNet.num_classes = {self.data.num_classes}`."
            )
        expected = tuple(self.model.input_shape[1:])
        size = self.preprocessing.image_size
        if expected[2] != 3 or any(d not in (None, size) for d in expected[:2]):
            raise ValueError(
                f"The model takes images of shape {expected} but preprocessing makes {size}x{size}x3 "
                f"images; bind `ResNet.input_shape = ({size}, {size}, 3)` or `Preprocessing.image_size`."
            )
        activation = getattr(self.model, "classifier_activation", None)
        if activation not in (None, "linear", "softmax"):
            raise ValueError(
                f"Training needs logits or softmax outputs; the classifier activation is {activation!r}."
            )
        self.from_logits = activation != "softmax"

    # ------------------------------------------------------------------------------ steps

    def _loss_terms(self, images, labels, training: bool):
        logits = self.model(images, training=training)
        logits = tf.cast(logits, tf.float32)
        one_hot = tf.one_hot(labels, self.data.num_classes)
        per_example = keras.losses.categorical_crossentropy(
            one_hot, logits, from_logits=self.from_logits, label_smoothing=self.label_smoothing if training else 0.0
        )
        return logits, per_example

    def _make_train_step(self):
        strategy, optimizer = self.strategy, self.optimizer
        variables = self.model.trainable_variables
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def replica_step(images, labels):
            with tf.GradientTape() as tape:
                logits, per_example = self._loss_terms(images, labels, training=True)
                data_loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.batch_size)
                loss = data_loss
                if self.weight_decay:
                    # l2_loss(v) = sum(v ** 2) / 2 in one kernel, without a squared copy of v.
                    l2 = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in self._decayed])
                    loss += tf.nn.scale_regularization_loss(self.weight_decay * l2)
                if self.model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
                to_differentiate = optimizer.scale_loss(loss) if scaled else loss
            grads = tape.gradient(to_differentiate, variables)
            optimizer.apply(grads, variables)
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32)), tf.float32))
            return data_loss, correct

        replica_step = tf.function(replica_step, jit_compile=self.jit_compile)

        @tf.function
        def train_step(batch):
            loss, correct = strategy.run(replica_step, args=batch)
            return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                    strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None))

        return train_step

    def _make_eval_step(self):
        strategy = self.strategy

        def replica_step(images, labels):
            logits, per_example = self._loss_terms(images, labels, training=False)
            labels = tf.cast(labels, tf.int32)
            top1 = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
            k = min(5, self.data.num_classes)
            top5 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, k), tf.float32))
            count = tf.cast(tf.shape(labels)[0], tf.float32)
            return tf.reduce_sum(per_example), top1, top5, count

        replica_step = tf.function(replica_step, jit_compile=self.jit_compile)

        @tf.function
        def eval_step(batch):
            results = strategy.run(replica_step, args=batch)
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

        return eval_step

    # ------------------------------------------------------------------------- evaluation

    def evaluate(self) -> dict[str, float]:
        """Evaluates the current weights on the whole evaluation split.

        Returns:
            `{"top1", "top5", "loss", "examples"}`: accuracies in [0, 1], mean loss.
        """
        self.build()
        if not hasattr(self, "_eval_step"):
            self._eval_step = self._make_eval_step()
        totals = np.zeros(4)
        dataset = self.strategy.experimental_distribute_dataset(self.pipeline.eval())
        for batch in self._data_errors_named(dataset):
            totals += [float(t) for t in self._eval_step(batch)]
        loss_sum, top1, top5, count = totals
        if count == 0:
            raise ValueError(f"The evaluation split of {self.data.name!r} data is empty.")
        return {"top1": top1 / count, "top5": top5 / count, "loss": loss_sum / count, "examples": int(count)}

    def _data_errors_named(self, iterable):
        """Iterates, turning TensorFlow data errors into ValueErrors that name the data source."""
        iterator = iter(iterable)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as error:
                raise ValueError(f"Reading {self.data.name!r} data failed: {error.message}") from error
            yield item

    # -------------------------------------------------------------------------- training

    def _managers(self):
        # Every worker of a multi-worker run must save (saving reads mirrored variables
        # collectively); only the chief saves into model_dir, the others into a scratch directory.
        root = self.model_dir if self.is_chief else Path(tempfile.mkdtemp(prefix="resnet-worker-"))
        return (
            tf.train.CheckpointManager(self.checkpoint, root / "backup", max_to_keep=1, checkpoint_name="backup"),
            tf.train.CheckpointManager(self.checkpoint, root / "checkpoints", max_to_keep=self.keep_checkpoints, checkpoint_name="epoch"),
            tf.train.CheckpointManager(self.checkpoint, root / "best", max_to_keep=1, checkpoint_name="best"),
        )

    def prepare_model_dir(self, argv: list[str] | None = None) -> None:
        """Creates `model_dir` (failing clearly if it cannot be written) and logs the command.

        Call after `build()`: in a multi-worker run only the chief writes.
        """
        self.build()
        if not self.is_chief:
            return
        try:
            self.model_dir.mkdir(parents=True, exist_ok=True)
            probe = self.model_dir / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise ValueError(f"`--model_dir` {str(self.model_dir)!r} cannot be written: {error.strerror}.") from error
        if argv is not None:
            line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {' '.join(argv)}\n"
            with open(self.model_dir / "command.txt", "a") as f:
                f.write(line)

    def restore(self, which: str = "backup") -> str | None:
        """Restores the newest checkpoint of `which` ("backup", "checkpoints", "best") or a path.

        Returns:
            The checkpoint path restored, or None if there was none.
        """
        self.build()
        if which in ("backup", "checkpoints", "best"):
            path = tf.train.latest_checkpoint(self.model_dir / which)
            if path is None:
                return None
        else:
            path = which
            if not tf.io.gfile.exists(path + ".index"):
                raise ValueError(f"No checkpoint at {path!r} (expected {path}.index).")
        status = self.checkpoint.restore(path)
        try:
            status.assert_existing_objects_matched()
        except AssertionError as error:
            raise ValueError(
                f"Checkpoint {path} does not fit the model built from the gin config: {error}"
            ) from error
        status.expect_partial()
        return path

    def train(self) -> dict[str, float]:
        """Trains until `epochs` are done, resuming from `model_dir/backup` if it exists.

        Returns:
            The last epoch's metrics.

        Raises:
            TrainingDiverged: The loss became NaN or infinite; the message names the step and
                the last good checkpoint, which is left in place.
        """
        self.build()
        backup, epochs_manager, best_manager = self._managers()
        resumed = self.restore("backup")
        start_epoch, skip = int(self.epoch.numpy()), int(self.step_in_epoch.numpy())
        if resumed:
            print(f"Resuming from {resumed}: epoch {start_epoch + 1}, step {skip} of {self.steps}.", flush=True)
        elif self.initial_weights is not None:
            print(self.initial_weights.load_into(self.model), flush=True)
        if start_epoch >= self.epochs:
            print(f"All {self.epochs} epochs are done in {self.model_dir}.", flush=True)
        metrics_log = MetricsLog(self.model_dir / "metrics.csv", METRICS_COLUMNS)
        writer = tf.summary.create_file_writer(str(self.model_dir / "tensorboard")) if self.is_chief else None
        train_step = self._make_train_step()
        self._eval_step = self._make_eval_step()
        row: dict[str, float] = {}
        for epoch in range(start_epoch, self.epochs):
            started = time.time()
            bar = self._progress_bar(epoch)
            loss_sum, correct, steps_done = 0.0, 0.0, 0
            dataset = self.strategy.experimental_distribute_dataset(
                self.pipeline.train(epoch, skip_steps=skip, steps=self.steps_per_epoch)
            )
            for step, batch in enumerate(self._data_errors_named(dataset), start=skip):
                loss, hits = (float(t) for t in train_step(batch))
                global_step = epoch * self.steps + step + 1
                if not math.isfinite(loss):
                    last = tf.train.latest_checkpoint(self.model_dir / "backup")
                    raise TrainingDiverged(
                        f"The training loss is {loss} at step {global_step} (epoch {epoch + 1}, step "
                        f"{step + 1}); stopping. The last good checkpoint is {last or 'none (nothing saved yet)'}."
                    )
                loss_sum, correct, steps_done = loss_sum + loss, correct + hits, steps_done + 1
                if bar is not None:
                    bar.update(step + 1, [("loss", loss), ("accuracy", hits / self.batch_size)])
                self.step_in_epoch.assign(step + 1)
                if self.backup_every_steps and (step + 1) % self.backup_every_steps == 0 and step + 1 < self.steps:
                    backup.save(checkpoint_number=global_step)
            if steps_done == 0 and skip < self.steps:
                raise ValueError(f"The training split of {self.data.name!r} data gave no full batch of {self.batch_size}.")
            results = self.evaluate()
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
            self._end_epoch(epoch, row, metrics_log, writer, backup, epochs_manager, best_manager, bar)
            skip = 0
        return row

    def _end_epoch(self, epoch, row, metrics_log, writer, backup, epochs_manager, best_manager, bar) -> None:
        step = row["step"]
        summary = "  ".join(f"{k} {row[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy"))
        print(f"Epoch {epoch + 1}/{self.epochs}  {summary}  lr {row['learning_rate']:.4g}  ({row['seconds']:.0f}s)", flush=True)
        if self.is_chief:
            metrics_log.write({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
            with writer.as_default(step=step):
                for key, value in row.items():
                    if key not in ("epoch", "step"):
                        tf.summary.scalar(key, value)
            writer.flush()
        self.epoch.assign(epoch + 1)
        self.step_in_epoch.assign(0)
        epochs_manager.save(checkpoint_number=epoch + 1)
        if row["val_accuracy"] > float(self.best_accuracy.numpy()):
            self.best_accuracy.assign(row["val_accuracy"])
            best_manager.save(checkpoint_number=epoch + 1)
            if self.is_chief:
                atomic_write_json(self.model_dir / "best" / "best.json", {"epoch": epoch + 1, "val_accuracy": row["val_accuracy"]})
        # Last: the backup marks the epoch as finished, so a rerun never redoes it.
        backup.save(checkpoint_number=step)

    def _progress_bar(self, epoch: int):
        use_bar = self.progress == "bar" or (self.progress == "auto" and sys.stdout.isatty())
        if not use_bar:
            return None
        print(f"Epoch {epoch + 1}/{self.epochs}", flush=True)
        return keras.utils.Progbar(self.steps, stateful_metrics=["loss", "accuracy"])

    def write_operative_config(self) -> None:
        """Writes the bindings this run used; call after `build()` (gin lists what was called)."""
        if self.is_chief:
            atomic_write_text(self.model_dir / "operative_config.gin", gin.operative_config_str())


def variables_by_path(model: keras.Model) -> dict[str, tf.Variable]:
    """The model's variables (weights, norm statistics, RNG state) keyed by their unique paths.

    Checkpoints hold this mapping rather than the model object: Keras 3 keeps layers that live
    in Python lists (a block's convs, a stage's blocks) out of TensorFlow's object graph, so
    `tf.train.Checkpoint(model=model)` would silently skip them. Paths such as
    `stage2/block1/conv1/kernel` are stable and readable with `tf.train.list_variables`.
    """
    variables = {v.path: v for v in model.variables}
    if len(variables) != len(model.variables):
        raise ValueError(f"Model {model.name!r} has variables with duplicate paths; name its layers uniquely.")
    return variables


def _is_configurable(fn) -> bool:
    try:
        gin.get_configurable(fn)
    except ValueError:
        return False
    return True
