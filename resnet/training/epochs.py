"""The epochs of a training run: steps, the evaluation that ends each epoch, and what is saved,
in an order that loses nothing.

An epoch's end writes, in this order: the epoch's checkpoint, the best checkpoint and
`best.json` (if the validation accuracy improved), the `metrics.csv` row and TensorBoard's
summaries (chief only), and last the backup, which marks the epoch as finished: a crash at any
point is resumed from the previous backup and the epoch redone, its row replaced. No checkpoint
with non-finite weights is ever saved, running out of space names the file being written (every
file is replaced whole, so nothing written before is lost), and the run's lock is refreshed
through the steps, the evaluation and the saving alike.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from resnet.storage.files import is_storage_full, join
from resnet.training import distribution
from resnet.training.errors import StorageFull, TrainingDiverged, TrainingStopped
from resnet.training.evaluator import data_errors_named
from resnet.training.run_directory import CHECKPOINT_KINDS, CHECKPOINT_NAMES, RunDirectory
from resnet.validation import first_line

if TYPE_CHECKING:
    from resnet.training.trainer import Trainer


def backup_state(run_dir: RunDirectory, steps: int) -> str:
    """What the newest backup of `run_dir` holds (epochs of `steps` steps), and how to resume from it."""
    backup = run_dir.checkpoint_path("backup")
    if backup is None:
        return f"No backup was saved in {run_dir.path} yet."
    epoch, step = divmod(int(backup.rsplit("-", 1)[1]), steps)
    where = f"the end of epoch {epoch}" if step == 0 else f"step {step} of {steps} in epoch {epoch + 1}"
    return f"The newest backup, {backup}, holds the run at {where}: run the same command to resume from there."


@contextlib.contextmanager
def writing(what: str, run_dir: RunDirectory, steps: int) -> Iterator[None]:
    """Turns running out of storage space while writing `what` into a `StorageFull` that names it
    and the newest backup (checkpoints and files are replaced atomically: the old ones stay)."""
    try:
        yield
    except (tf.errors.OpError, OSError) as error:
        if not is_storage_full(error):
            raise
        raise StorageFull(
            f"No space left on the storage of `--model_dir` while writing {what} ({first_line(error)}). Nothing "
            f"was lost: files are replaced whole, the old one stays. {backup_state(run_dir, steps)} Free some "
            "space first."
        ) from None


class EpochLoop:
    """Runs the epochs a `Trainer` has left, checkpointing into `root` (`model_dir` for the
    chief, a scratch directory for the other workers of a multi-worker run).

    Args:
        trainer: The built trainer: its model, optimizer, pipeline, evaluator, checkpoint and settings.
        root: Where the checkpoints go.
    """

    def __init__(self, trainer: Trainer, root: str):
        self.trainer = trainer
        self.run_dir = trainer.run_dir
        self.managers = {
            kind: tf.train.CheckpointManager(
                trainer.checkpoint,
                join(root, kind),
                max_to_keep=trainer.keep_checkpoints if kind == "checkpoints" else 1,
                checkpoint_name=CHECKPOINT_NAMES[kind],
            )
            for kind in CHECKPOINT_KINDS
        }
        self._all_finite = None  # built on first use by `check_finite`

    def run(self, start_epoch: int, skip: int) -> dict[str, float]:
        """Trains epochs `start_epoch` (from its step `skip`) to the last; returns the last epoch's metrics."""
        trainer = self.trainer
        writer = tf.summary.create_file_writer(self.run_dir.join("tensorboard")) if trainer.is_chief else None
        train_step = trainer.make_train_step()
        row: dict[str, float] = {}
        try:
            with distribution.StopSignal(trainer.strategy) as stop:
                # One stream for all the epochs left: an epoch of `steps_per_epoch` goes on where
                # the last one stopped, without skipping to it again; each worker decodes only its
                # part of each global batch (see InputPipeline.train).
                def dataset(context: tf.distribute.InputContext, skip: int = skip) -> tf.data.Dataset:
                    return trainer.pipeline.train(
                        start_epoch,
                        skip_steps=skip,
                        steps=trainer.steps_per_epoch,
                        epochs=trainer.epochs - start_epoch,
                        context=context,
                    )

                stream = iter(trainer.strategy.distribute_datasets_from_function(dataset))
                if trainer.pipeline.data_service is not None:
                    stream = self._watched(stream)
                for epoch in range(start_epoch, trainer.epochs):
                    batches = itertools.islice(stream, trainer.steps - skip)
                    row = self._epoch(epoch, skip, batches, train_step, writer, stop)
                    skip = 0
        finally:
            if writer is not None:
                writer.close()
        return row

    def _watched(self, stream: Iterator) -> Iterator:
        """`stream`, ending the process with `CLUSTER_ERROR_EXIT_CODE` and one line if a batch
        takes longer than `InputPipeline.data_service_timeout` to come.

        A tf.data service worker that dies leaves its part of the epoch unmade, and the read
        waits for it without end; what this process has saved stays, and the run resumes from
        its newest backup, on the same batches (with or without the service).
        """
        pipeline, trainer = self.trainer.pipeline, self.trainer
        while True:
            timer = threading.Timer(
                pipeline.data_service_timeout,
                lambda: distribution.exit_process(
                    distribution.CLUSTER_ERROR_EXIT_CODE,
                    f"error: No training batch came from the tf.data service at {pipeline.data_service} within "
                    f"`InputPipeline.data_service_timeout`={pipeline.data_service_timeout:g} s: a service worker "
                    "probably stopped in the middle of its part of the epoch, which the service does not hand "
                    "to another. Check that the dispatcher and workers run (restart the lost ones), then run "
                    f"the same command again. {backup_state(self.run_dir, trainer.steps)}",
                ),
            )
            timer.daemon = True
            timer.start()
            try:
                batch = next(stream)
            except StopIteration:
                return
            finally:
                timer.cancel()
            yield batch

    def _epoch(self, epoch: int, skip: int, batches: Iterable, train_step, writer, stop) -> dict[str, float]:
        trainer = self.trainer
        started = time.time()
        bar = self._progress_bar(epoch)
        # The totals of the steps done before a resume mid-epoch come from the checkpoint.
        loss_sum, correct, steps_done = trainer.epoch_totals.numpy().tolist() if skip else (0.0, 0.0, 0)
        skipped_before = self._skipped_records(clear=True)[0]
        step = skip - 1
        for step, batch in enumerate(data_errors_named(batches, trainer.data.name), start=skip):
            loss, hits = (float(t) for t in train_step(batch))
            global_step = epoch * trainer.steps + step + 1
            if not math.isfinite(loss):
                raise self.diverged(
                    f"The training loss is {loss} at step {global_step} (epoch {epoch + 1}, step {step + 1})"
                )
            loss_sum, correct, steps_done = loss_sum + loss, correct + hits, steps_done + 1
            trainer.epoch_totals.assign([loss_sum, correct, steps_done])
            if bar is not None:
                bar.update(step + 1, [("loss", loss), ("accuracy", hits / trainer.batch_size)])
            trainer.step_in_epoch.assign(step + 1)
            self.run_dir.lock.heartbeat()
            if stop.agreed():
                self.check_finite(global_step)
                self._save("backup", global_step)
                raise TrainingStopped(
                    f"Stopped by a stop signal at step {global_step} (epoch {epoch + 1}, step {step + 1}) after "
                    f"saving a backup in {trainer.model_dir}; run the same command again to resume."
                )
            every = trainer.backup_every_steps
            if every and (step + 1) % every == 0 and step + 1 < trainer.steps:
                self.check_finite(global_step)
                self._save("backup", global_step)
        if step + 1 == skip < trainer.steps:  # not one batch since the epoch began or resumed
            raise ValueError(
                f"The training split of {trainer.data.name!r} data gave no full batch of {trainer.batch_size}."
            )
        count, reports = self._skipped_records()
        if count > skipped_before:
            first = f"; first: {' | '.join(reports).rstrip('.')}" if reports else ""
            print(
                f"Epoch {epoch + 1} skipped {count - skipped_before} unreadable training record(s) of "
                f"{trainer.data.name!r}{first}.",
                flush=True,
            )
        results = trainer.evaluator.evaluate(on_batch=self.run_dir.lock.heartbeat)
        row = {
            "epoch": epoch + 1,
            "step": (epoch + 1) * trainer.steps,
            "loss": loss_sum / max(steps_done, 1),
            "accuracy": correct / max(steps_done * trainer.batch_size, 1),
            "val_loss": results["loss"],
            "val_accuracy": results["top1"],
            "val_top5": results["top5"],
            "learning_rate": float(trainer.schedule(trainer.optimizer.iterations)),
            "seconds": round(time.time() - started, 2),
        }
        self._end_epoch(epoch, row, writer)
        return row

    def _end_epoch(self, epoch: int, row: dict, writer) -> None:
        trainer, run = self.trainer, self.run_dir
        step = row["step"]
        self.check_finite(step)  # before anything of the epoch is written
        summary = "  ".join(f"{k} {row[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy"))
        print(
            f"Epoch {epoch + 1}/{trainer.epochs}  {summary}  lr {row['learning_rate']:.4g}  ({row['seconds']:.0f}s)",
            flush=True,
        )
        # The epoch's checkpoints first: a failure writing the metrics cannot lose them.
        trainer.epoch.assign(epoch + 1)
        trainer.step_in_epoch.assign(0)
        self._save("checkpoints", epoch + 1)
        if row["val_accuracy"] > float(trainer.best_accuracy.numpy()):
            trainer.best_accuracy.assign(row["val_accuracy"])
            self._save("best", epoch + 1)
            if trainer.is_chief:
                with writing(run.join("best", "best.json"), run, trainer.steps):
                    run.write_json("best/best.json", {"epoch": epoch + 1, "val_accuracy": row["val_accuracy"]})
        if trainer.is_chief:
            run.lock.heartbeat()
            with writing(run.metrics.path, run, trainer.steps):
                # Nine significant digits hold a float32 exactly: the figures are those evaluated.
                run.metrics.write({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})
            with writing(run.join("tensorboard"), run, trainer.steps), writer.as_default(step=step):
                for key, value in row.items():
                    if key not in ("epoch", "step"):
                        tf.summary.scalar(key, value)
                writer.flush()
        # Last: the backup marks the epoch as finished, so a rerun never redoes it.
        self._save("backup", step)

    def _save(self, kind: str, number: int) -> None:
        manager = self.managers[kind]
        self.run_dir.lock.heartbeat()
        with writing(
            f"the checkpoint {join(manager.directory, CHECKPOINT_NAMES[kind])}-{number}",
            self.run_dir,
            self.trainer.steps,
        ):
            manager.save(checkpoint_number=number)

    def diverged(self, what: str) -> TrainingDiverged:
        """The error ending a diverged run; it names the newest backup, the last good checkpoint
        (no checkpoint with non-finite weights is ever saved, see `check_finite`)."""
        last = self.run_dir.checkpoint_path("backup")
        return TrainingDiverged(f"{what}; stopping. The last good checkpoint is {last or 'none (nothing saved yet)'}.")

    def check_finite(self, global_step: int) -> None:
        """Raises `TrainingDiverged` instead of letting a checkpoint save non-finite weights: the
        loss can stay finite while weights overflow (moving variances, which a training step
        does not use, are the first)."""
        model = self.trainer.model
        if self._all_finite is None:
            variables = [v for v in model.weights if keras.backend.is_float_dtype(v.dtype)]
            self._all_finite = tf.function(
                lambda: tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in variables]))
            )
        if not bool(self._all_finite()):
            bad = [
                v.path
                for v in model.weights
                if keras.backend.is_float_dtype(v.dtype) and not np.isfinite(v.numpy()).all()
            ]
            raise self.diverged(
                f"The weights hold non-finite values after step {global_step} ({len(bad)} variable(s), "
                f"first {', '.join(bad[:3])}) though the loss is finite; they are not saved"
            )

    def _skipped_records(self, clear: bool = False) -> tuple[int, list[str]]:
        """Training records the data source has skipped as unreadable so far (`skip_corrupt`),
        and the reports of the first few since the last clear."""
        data = self.trainer.data
        if not hasattr(data, "skipped_count"):
            return 0, []
        return data.skipped_count("train"), data.skipped_reports("train", clear=clear)

    def _progress_bar(self, epoch: int):
        trainer = self.trainer
        use_bar = trainer.progress == "bar" or (trainer.progress == "auto" and sys.stdout.isatty())
        if not use_bar:
            return None
        print(f"Epoch {epoch + 1}/{trainer.epochs}", flush=True)
        return keras.utils.Progbar(trainer.steps, stateful_metrics=["loss", "accuracy"])
