"""Per-worker input work of training on 1, 2 and 4 workers: every worker decoding everything, or its part.

    python benchmarks/scale_input.py --json=benchmarks/results/scale_input.json

Writes `--images` JPEGs of `--height` x `--width` pixels (smooth noise, quality 90, like a
photo) into an image folder of `--classes` classes and prepares them as `--shards`
ImageNet-format TFRecord shards with `resnet.data.prepare.prepare_image_folder`. Then, for
each number of workers N of `--workers`, N worker processes (this script with `--worker`,
started once and reused by every run) run, as a cluster's workers would (see the schedules
below), the training INPUT PIPELINE only (no model): `InputPipeline(cache=False)`, ImageNet
recipe at `--crop_size`, global batch `--batch_size`, in two modes:

- "after": `train(epoch, epochs=..., context=InputContext(N, i, N))`: worker i keeps its
  stretch of each global batch of undecoded records, then decodes and augments only those;
- "before": `train(epoch, epochs=...)` (context None) on every worker: it decodes and augments
  the whole global batch and keeps its part (every worker reading everything, as the pipeline
  did before it took a context).

For each run every worker builds a new pipeline, takes `--warmup` untimed batches (which read
every shard: the shuffle buffer holds a whole pass), then makes one stream of `--repeats`
epochs (as the trainer reads them: one `train` call, one iterator). With the "concurrent"
schedule the N workers start together once all are ready, sharing the machine as N processes;
with "alone" they run one after the other, each with every core, as each would on a machine of
its own. Per worker and epoch it reports the images it decoded (each JPEG decode of the
source bumps a counter in the graph: exact), the records and record bytes it read (every
worker reads every record of the split in both modes; only decoding and augmenting are split),
the CPU-seconds of its process (user + system, `getrusage(RUSAGE_SELF)`, all threads, over each
epoch; the median over epochs) and the images/s it delivered (the images of its part of the
batches over each epoch's wall time). An epoch is one pass over the split (`train` without
`steps`); with `--steps` it is that many batches, as the trainer asks for them, and a pipeline
that decodes whole global batches ("before", or one worker) then reads and decodes a few records
past the last epoch's end (prefetching), which the counts include.

A table per schedule gives, per mode and N, the per-worker figures (mean over workers),
`decoded_per_worker(N) * N / decoded(1)` and the same for CPU-seconds (1.0: per-worker work
falls as 1/N; N: every worker does all of it; one worker's figure is the mean of the two modes'
one-worker runs, the same pipeline), and after/before at the same N. Running concurrently, the
workers share the machine's cores: with more workers than cores images/s per worker is bounded
by the cores, not by the pipeline, and contention adds CPU-seconds; decode counts and
CPU-seconds are the per-worker work figures.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags

from report import machine, spread, write_results

flags.DEFINE_list("workers", ["1", "2", "4"], "Numbers of workers to measure.")
flags.DEFINE_list("modes", ["before", "after"], "Modes to measure: 'before' (decode all), 'after' (decode own part).")
flags.DEFINE_list(
    "schedules",
    ["concurrent", "alone"],
    "How a run's workers share the machine: 'concurrent' (all at once, as a cluster's workers run), 'alone' (one "
    "after the other, each with every core, as on a machine of its own).",
)
flags.DEFINE_integer("images", 512, "JPEG images written to the image folder (a multiple of --batch_size).")
flags.DEFINE_integer("height", 375, "Image height in pixels (ImageNet's average is about 500 x 375).")
flags.DEFINE_integer("width", 500, "Image width in pixels.")
flags.DEFINE_integer("classes", 4, "Class directories of the image folder (images spread evenly).")
flags.DEFINE_integer("shards", 8, "TFRecord shards to prepare.")
flags.DEFINE_integer("batch_size", 32, "Global training batch size (a multiple of every number of workers).")
flags.DEFINE_integer("crop_size", 224, "Training crop size (ImageNet recipe).")
flags.DEFINE_integer("steps", None, "Batches per epoch, passed as `train(steps=...)`; default: one pass, no `steps`.")
flags.DEFINE_integer("warmup", 2, "Untimed batches each worker takes first (they read every shard once).")
flags.DEFINE_integer("repeats", 3, "Timed epochs (all workers together); medians are reported.")
flags.DEFINE_float(
    "timeout", 300.0, "Seconds a worker may take to start, or to finish an epoch, before all are killed."
)
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
# Set by the parent for the worker processes it starts.
flags.DEFINE_boolean("worker", False, "Internal: run as a worker process, told what to run on stdin.")
flags.DEFINE_string("shard_pattern", None, "Internal: the prepared shards.")
FLAGS = flags.FLAGS

MODES = ("before", "after")
SCHEDULES = {
    "concurrent": "Workers run concurrently, sharing the machine's cores",
    "alone": "Each worker runs alone, with every core (as on a machine of its own)",
}
TAG = "@scale_input "  # marks the lines of the worker protocol on a worker's stdout
SHARED_FLAGS = ("batch_size", "crop_size", "steps", "warmup", "repeats", "classes")
NOTE = (
    "This machine has {cores} cores. 'concurrent': the N workers of a run share them, as N processes: with more "
    "workers than cores, images/s per worker is bounded by the cores, not by the input pipeline, and contention "
    "adds CPU-seconds; 'alone': the N workers of a run run one after the other, each with every core, as on a "
    "machine of its own. Decoded images and CPU-seconds per worker are the per-worker work figures. Every worker "
    "reads every record of the split in both modes."
)


# -- images and shards ------------------------------------------------------------------------


def write_image_folder(folder: str, count: int, height: int, width: int, classes: int) -> float:
    """`count` photo-like JPEGs in `classes` class directories; returns their mean size in KiB."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for label in range(classes):
        os.makedirs(os.path.join(folder, f"class{label}"), exist_ok=True)
    total = 0
    for i in range(count):
        coarse = rng.uniform(0, 255, (1, height // 24 + 2, width // 24 + 2, 3)).astype(np.float32)
        smooth = tf.image.resize(coarse, [height, width], method="bicubic")[0].numpy()
        image = np.clip(smooth + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
        encoded = tf.io.encode_jpeg(image, quality=90).numpy()
        total += len(encoded)
        with open(os.path.join(folder, f"class{i % classes}", f"{i:06d}.jpg"), "wb") as f:
            f.write(encoded)
    return total / count / 1024


# -- the worker processes ---------------------------------------------------------------------


def send(message: dict) -> None:
    print(TAG + json.dumps(message), flush=True)


def cpu_seconds() -> float:
    """User + system CPU-seconds of this process so far, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_worker() -> None:
    """A worker process: for each run the parent asks for, builds its input pipeline, warms it
    up, says it is ready, and on "go" times `--repeats` epochs of one stream."""
    import tensorflow as tf

    import resnet.data.tfrecord as tfrecord
    from resnet.data.pipeline import InputPipeline
    from resnet.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

    decoded = tf.Variable(0, dtype=tf.int64, trainable=False)
    records = tf.Variable(0, dtype=tf.int64, trainable=False)
    record_bytes = tf.Variable(0, dtype=tf.int64, trainable=False)
    decode_image = tfrecord._decode_image

    def counted_decode_image(encoded):
        # TFRecordData's decode calls its module's `_decode_image` once per record it decodes
        # (a marker record takes the other branch of a `tf.cond`, and is not counted).
        with tf.control_dependencies([decoded.assign_add(1)]):
            return decode_image(encoded)

    tfrecord._decode_image = counted_decode_image

    class CountingTFRecordData(tfrecord.TFRecordData):
        """Counts the records the pipeline reads, and their bytes with the TFRecord framing."""

        def _records(self, split):
            def count(shard, index, record, tag):
                real = tf.cast(tag >= 0, tf.int64)  # not a damage marker
                size = tf.cast(tf.strings.length(record), tf.int64) + tfrecord._TFRECORD_FRAMING_BYTES
                with tf.control_dependencies([records.assign_add(real), record_bytes.assign_add(real * size)]):
                    return tf.identity(shard), index, record, tag

            return super()._records(split).map(count)

    source = CountingTFRecordData(FLAGS.shard_pattern, FLAGS.shard_pattern, num_classes=FLAGS.classes)
    prep = Preprocessing("imagenet", image_size=FLAGS.crop_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    batch = FLAGS.batch_size
    steps = FLAGS.steps or source.num_examples("train") // batch

    def run(workers: int, index: int, mode: str) -> dict | None:
        pipeline = InputPipeline(source, prep, batch_size=batch, cache=False)
        context = tf.distribute.InputContext(workers, index, workers) if mode == "after" else None
        part = batch // workers

        def stream(epoch: int, epochs: int) -> tf.data.Dataset:
            dataset = pipeline.train(epoch, steps=FLAGS.steps, epochs=epochs, context=context)
            if context is None and workers > 1:  # the whole global batch, of which the worker keeps its part
                dataset = dataset.map(lambda images, labels: (images[index * part : (index + 1) * part], labels))
            return dataset

        for _ in stream(0, 1).take(FLAGS.warmup):
            pass
        # One stream for the timed epochs, as the trainer reads them; its iterator is made (its
        # functions traced, no element asked for) before the workers start together.
        iterator = iter(stream(1, FLAGS.repeats))
        for variable in (decoded, records, record_bytes):
            variable.assign(0)
        send({"ready": index})
        if sys.stdin.readline().strip() != "go":
            return None
        epochs = []
        start_wall, start_cpu = time.perf_counter(), cpu_seconds()
        for _ in range(FLAGS.repeats):
            wall, cpu = time.perf_counter(), cpu_seconds()
            delivered = sum(int(images.shape[0]) for images, _ in itertools.islice(iterator, steps))
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            epochs.append({"delivered": delivered, "wall_seconds": wall, "cpu_seconds": cpu})
        wall, cpu = time.perf_counter() - start_wall, cpu_seconds() - start_cpu
        leftover = sum(1 for _ in iterator)
        if leftover:
            raise RuntimeError(f"The stream of {FLAGS.repeats} epochs held {leftover} batches more than expected.")
        counts = {"decoded": decoded, "records_read": records, "record_bytes_read": record_bytes}
        counts = {name: int(variable.numpy()) for name, variable in counts.items()}
        if counts["decoded"] == 0 and any(epoch["delivered"] for epoch in epochs):
            raise RuntimeError("No decode was counted: TFRecordData no longer decodes through `_decode_image`.")
        return {"index": index, **counts, "wall_seconds": wall, "cpu_seconds": cpu, "epochs": epochs}

    while line := sys.stdin.readline():
        command = json.loads(line)
        result = run(command["workers"], command["index"], command["mode"])
        if result is None:
            return
        send({"result": result})


# -- the parent -------------------------------------------------------------------------------


class Cluster:
    """`size` worker processes of this script, spoken to through their stdin and stdout; a run
    of N workers uses the first N."""

    def __init__(self, size: int, pattern: str, log_dir: str):
        self.processes, self.messages, self.logs = [], queue.Queue(), []
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        shared = [f"--{name}={getattr(FLAGS, name)}" for name in SHARED_FLAGS if getattr(FLAGS, name) is not None]
        try:
            for index in range(size):
                log = open(os.path.join(log_dir, f"worker-{index}.log"), "w+")  # noqa: SIM115 (closed in `close`)
                self.logs.append(log)
                command = [sys.executable, os.path.abspath(__file__), "--worker", f"--shard_pattern={pattern}", *shared]
                process = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env
                )
                self.processes.append(process)
                threading.Thread(target=self._read, args=(index, process), daemon=True).start()
        except BaseException:
            self.close(failed=True)
            raise

    def _read(self, index: int, process: subprocess.Popen) -> None:
        for line in process.stdout:
            if line.startswith(TAG):
                self.messages.put((index, json.loads(line[len(TAG) :])))
        self.messages.put((index, None))  # its stdout closed: it exited

    def run(self, workers: int, mode: str, schedule: str) -> list[dict]:
        """The report of each worker of a run of `workers` in `mode`: all at once in processes
        0 .. workers-1 ("concurrent"), or one after the other in process 0 ("alone")."""
        if schedule == "alone":
            return [self._run_group([(0, index)], workers, mode)[0] for index in range(workers)]
        return self._run_group([(index, index) for index in range(workers)], workers, mode)

    def _run_group(self, group: list[tuple[int, int]], workers: int, mode: str) -> list[dict]:
        """Runs worker `index` of `workers` in process `process` for each `(process, index)` of
        `group`, all starting together; their reports, in the group's order."""
        for process, index in group:
            self._send(process, json.dumps({"workers": workers, "index": index, "mode": mode}))
        processes = [process for process, _ in group]
        self._collect(processes, "ready")
        for process in processes:
            self._send(process, "go")
        return [message["result"] for message in self._collect(processes, "result")]

    def _send(self, process: int, line: str) -> None:
        self.processes[process].stdin.write(line + "\n")
        self.processes[process].stdin.flush()

    def _collect(self, processes: list[int], key: str) -> list[dict]:
        """The next message of each of `processes`, which must hold `key`; waits `--timeout`
        seconds at most."""
        received: dict[int, dict] = {}
        deadline = time.monotonic() + FLAGS.timeout
        while len(received) < len(processes):
            try:
                process, message = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                missing = sorted(set(processes) - received.keys())
                raise RuntimeError(
                    f"Worker processes {missing} sent no {key!r} in --timeout={FLAGS.timeout:.0f} s."
                ) from None
            if message is None or key not in message:
                raise RuntimeError(
                    f"Worker process {process} exited or said {message!r} instead of {key!r}:\n{self.log(process)}"
                )
            received[process] = message
        return [received[process] for process in processes]

    def log(self, index: int) -> str:
        log = self.logs[index]
        log.flush()
        log.seek(0)
        return log.read()[-3000:]

    def close(self, failed: bool) -> None:
        """Ends the workers: EOF on their stdin, or on failure a kill by PID; waits for each."""
        for process in self.processes:
            if failed and process.poll() is None:
                process.kill()
            try:
                process.stdin.close()
            except OSError:
                pass
        problems = []
        for index, process in enumerate(self.processes):
            try:
                code = process.wait(timeout=FLAGS.timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            if code != 0 and not failed:
                problems.append(f"Worker {index} exited with code {code}:\n{self.log(index)}")
        for log in self.logs:
            log.close()
        if problems:
            raise RuntimeError("\n".join(problems))


def summarize(workers: int, reports: list[dict]) -> dict:
    """The per-worker figures of a run (per epoch), and their means over the workers."""
    repeats = FLAGS.repeats
    per_worker = []
    for report in reports:
        epochs = report["epochs"]
        per_worker.append(
            {
                "worker_index": report["index"],
                "decoded": report["decoded"] / repeats,
                "decoded_total": report["decoded"],
                "delivered": statistics.median(epoch["delivered"] for epoch in epochs),
                "records_read": report["records_read"] / repeats,
                "record_bytes_read": report["record_bytes_read"] / repeats,
                "cpu_seconds": spread([epoch["cpu_seconds"] for epoch in epochs], "seconds", 3),
                "cpu_seconds_mean": round(report["cpu_seconds"] / repeats, 3),
                "wall_seconds": spread([epoch["wall_seconds"] for epoch in epochs], "seconds", 3),
                "images_per_second": spread(
                    [epoch["delivered"] / epoch["wall_seconds"] for epoch in epochs], "images_per_second", 1
                ),
            }
        )

    def mean(key: str, inner: str | None = None) -> float:
        return statistics.fmean(entry[key][inner] if inner else entry[key] for entry in per_worker)

    return {
        "workers": workers,
        "per_worker": per_worker,
        "decoded_per_worker": mean("decoded"),
        "delivered_per_worker": mean("delivered"),
        "records_read_per_worker": mean("records_read"),
        "record_bytes_read_per_worker": mean("record_bytes_read"),
        "cpu_seconds_per_worker": round(mean("cpu_seconds", "seconds"), 3),
        "images_per_second_per_worker": round(mean("images_per_second", "images_per_second"), 1),
        "total_cpu_seconds": round(sum(entry["cpu_seconds"]["seconds"] for entry in per_worker), 3),
        "total_images_per_second": round(
            sum(entry["images_per_second"]["images_per_second"] for entry in per_worker), 1
        ),
    }


def add_ratios(runs: dict) -> dict | None:
    """Adds to each run its work against one worker's (`* N / (N = 1)`) and, for "after", against
    "before" at the same N. One worker's figures are the mean of the modes' one-worker runs (the
    same pipeline: one input pipeline decodes every image either way); returned, or None."""
    singles = [by_workers["1"] for by_workers in runs.values() if "1" in by_workers]
    single = None
    if singles:
        single = {
            key: statistics.fmean(run[key] for run in singles)
            for key in ("decoded_per_worker", "cpu_seconds_per_worker", "images_per_second_per_worker")
        }
    for mode, by_workers in runs.items():
        for key, run in by_workers.items():
            n = run["workers"]
            if single is not None:
                run["decoded_vs_1"] = round(run["decoded_per_worker"] * n / single["decoded_per_worker"], 3)
                run["cpu_vs_1"] = round(run["cpu_seconds_per_worker"] * n / single["cpu_seconds_per_worker"], 3)
            before = runs.get("before", {}).get(key)
            if mode == "after" and before is not None:
                run["decoded_after_vs_before"] = round(run["decoded_per_worker"] / before["decoded_per_worker"], 3)
                run["cpu_after_vs_before"] = round(run["cpu_seconds_per_worker"] / before["cpu_seconds_per_worker"], 3)
                run["images_per_second_after_vs_before"] = round(
                    run["images_per_second_per_worker"] / before["images_per_second_per_worker"], 3
                )
    return single and {key: round(value, 3) for key, value in single.items()}


def print_table(runs: dict) -> None:
    header = (
        f"{'mode':<7} {'N':>2} {'decoded/worker':>14} {'CPU-s/worker':>12} {'img/s/worker':>12} "
        f"{'decoded*N/(N=1)':>15} {'CPU-s*N/(N=1)':>13} {'decoded a/b':>11} {'CPU-s a/b':>9} {'img/s a/b':>9}"
    )
    print(header)
    print("-" * len(header))

    def figure(run: dict, key: str, width: int) -> str:
        return f"{run[key]:>{width}.3f}" if key in run else f"{'-':>{width}}"

    for mode, by_workers in runs.items():
        for run in by_workers.values():
            print(
                f"{mode:<7} {run['workers']:>2} {run['decoded_per_worker']:>14.1f} "
                f"{run['cpu_seconds_per_worker']:>12.3f} {run['images_per_second_per_worker']:>12.1f} "
                f"{figure(run, 'decoded_vs_1', 15)} {figure(run, 'cpu_vs_1', 13)} "
                f"{figure(run, 'decoded_after_vs_before', 11)} {figure(run, 'cpu_after_vs_before', 9)} "
                f"{figure(run, 'images_per_second_after_vs_before', 9)}",
                flush=True,
            )


def main(argv):
    del argv
    if FLAGS.worker:
        run_worker()
        return
    import numpy as np
    import tensorflow as tf

    from resnet.data.prepare import prepare_image_folder

    workers = sorted({int(n) for n in FLAGS.workers})
    modes = [mode for mode in MODES if mode in FLAGS.modes]
    schedules = [schedule for schedule in SCHEDULES if schedule in FLAGS.schedules]
    if set(FLAGS.schedules) - set(SCHEDULES) or not schedules:
        raise app.UsageError(f"--schedules must name some of {', '.join(SCHEDULES)}; received {FLAGS.schedules}.")
    if set(FLAGS.modes) - set(MODES) or not modes:
        raise app.UsageError(f"--modes must name some of {', '.join(MODES)}; received {FLAGS.modes}.")
    if not workers or workers[0] < 1 or any(FLAGS.batch_size % n for n in workers):
        raise app.UsageError(f"--batch_size={FLAGS.batch_size} must be a multiple of every --workers {workers}.")
    if FLAGS.steps is None and FLAGS.images % FLAGS.batch_size:
        raise app.UsageError(f"--images={FLAGS.images} must be a multiple of --batch_size={FLAGS.batch_size}.")
    steps = FLAGS.steps or FLAGS.images // FLAGS.batch_size
    results = {
        "images": FLAGS.images,
        "image_height": FLAGS.height,
        "image_width": FLAGS.width,
        "classes": FLAGS.classes,
        "shards": FLAGS.shards,
        "batch_size": FLAGS.batch_size,
        "crop_size": FLAGS.crop_size,
        "steps_per_epoch": steps,
        "steps_flag": FLAGS.steps,
        "warmup_batches": FLAGS.warmup,
        "repeats": FLAGS.repeats,
        "workers": workers,
        "schedules": schedules,
        "machine": machine(tensorflow=tf.__version__, numpy=np.__version__),
        "note": NOTE.format(cores=os.cpu_count()),
        "runs": {},
    }
    print(
        f"{results['machine']['cpu']} ({os.cpu_count()} cores), Python {results['machine']['python']}, "
        f"TensorFlow {tf.__version__}, NumPy {np.__version__}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="scale-input-benchmark-") as scratch:
        folder = os.path.join(scratch, "images")
        mean_kib = write_image_folder(folder, FLAGS.images, FLAGS.height, FLAGS.width, FLAGS.classes)
        split = prepare_image_folder(folder, os.path.join(scratch, "shards", "train"), FLAGS.shards, progress="none")
        shard_bytes = sum(os.path.getsize(path) for path in split.shards)
        results["mean_jpeg_kib"] = round(mean_kib, 1)
        results["shard_bytes"] = shard_bytes
        print(
            f"{FLAGS.images} JPEGs of {FLAGS.height}x{FLAGS.width} (mean {mean_kib:.1f} KiB) in {FLAGS.shards} "
            f"shards ({shard_bytes / 2**20:.1f} MiB); ImageNet recipe at {FLAGS.crop_size}, global batch "
            f"{FLAGS.batch_size}, {steps} steps an epoch; {FLAGS.warmup} untimed batches, then {FLAGS.repeats} "
            "timed epochs.",
            flush=True,
        )
        cluster = Cluster(workers[-1] if "concurrent" in schedules else 1, split.pattern, scratch)
        failed = True
        try:
            for schedule in schedules:
                for n in workers:
                    for mode in modes:
                        run = summarize(n, cluster.run(n, mode, schedule))
                        results["runs"].setdefault(schedule, {}).setdefault(mode, {})[str(n)] = run
                        print(
                            f"{schedule}, {mode}, {n} worker(s): {run['decoded_per_worker']:.0f} images decoded, "
                            f"{run['cpu_seconds_per_worker']:.3f} CPU-s, {run['images_per_second_per_worker']:.1f} "
                            f"img/s per worker; {run['records_read_per_worker']:.0f} records "
                            f"({run['record_bytes_read_per_worker'] / 2**20:.1f} MiB) read per worker",
                            flush=True,
                        )
            failed = False
        finally:
            cluster.close(failed)
    results["goal"], results["one_worker"] = {}, {}
    for schedule, runs in results["runs"].items():
        results["one_worker"][schedule] = add_ratios(runs)
        print(f"\n{SCHEDULES[schedule]}, per worker and epoch (median over epochs, mean over workers):")
        print_table(runs)
        after = runs.get("after", {}).get(str(workers[-1]))
        if after is not None and "cpu_vs_1" in after and workers[-1] > 1:
            goal = results["goal"][schedule] = {
                "workers": workers[-1],
                "decoded_vs_1": after["decoded_vs_1"],
                "cpu_vs_1": after["cpu_vs_1"],
                "within_15_percent": bool(after["decoded_vs_1"] <= 1.15 and after["cpu_vs_1"] <= 1.15),
            }
            print(
                f"Goal, per-worker input work falling as 1/N within 15% at {workers[-1]} workers: decoded * N / (N=1) "
                f"{goal['decoded_vs_1']:.3f}, CPU-s * N / (N=1) {goal['cpu_vs_1']:.3f}: "
                f"{'met' if goal['within_15_percent'] else 'not met'}."
            )
    print(f"\nNote: {results['note']}\n", flush=True)
    write_results(results, FLAGS.json)


if __name__ == "__main__":
    app.run(main)
