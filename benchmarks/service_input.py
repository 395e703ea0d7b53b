"""The training host's input CPU per step: decoding and augmenting on the host, or on tf.data service workers.

    python benchmarks/service_input.py --json=benchmarks/results/service_input.json

Writes `--images` JPEGs of `--height` x `--width` pixels into an image folder of `--classes`
classes (`scale_input.write_image_folder`: smooth noise, quality 90, like a photo) and prepares
them as `--shards` ImageNet-format TFRecord shards with `resnet.data.prepare.prepare_image_folder`.
It then starts a tf.data service on this machine: a `resnet-data-service --dispatcher` and
`--service_workers` `resnet-data-service --worker` processes (free ports, `localhost`). This
script's own process is the training host, and runs the training INPUT PIPELINE only (no model):
`InputPipeline(TFRecordData(...), Preprocessing("imagenet", image_size=--crop_size), --batch_size,
cache=False)`, in two modes:

- "local": the host reads, decodes and augments the images itself;
- "service": the same pipeline with `data_service=<the dispatcher>` and
  `data_service_lanes=--lanes` (default: `--service_workers`): the service workers read, decode
  and augment, and the host receives the finished batches (the same batches).

For each mode the host takes `--warmup` untimed batches of `train(0)`, then reads `--repeats`
epochs of one stream (`train(1, epochs=--repeats)`: one call, one iterator, as the trainer reads
them). An epoch is one pass over the split. In "service" mode the timed stream starts once the
service workers are idle again (the warm-up's jobs, read no further, may still be making the
batches their workers buffer). Per epoch it reports the host's CPU-seconds (user + system,
`getrusage(RUSAGE_SELF)`, all its threads) per step, the wall time and the images/s delivered:
the host's median over the epochs (min-max) and its mean over the stream. The first "service"
epoch holds the start of the stream's jobs on the service (once per `train` call: once per run
of the trainer), which the median leaves out and the mean keeps. In "service" mode it also
reports each service worker's CPU-seconds (utime + stime of `/proc/<pid>/stat`) over the
timed stream, and the dispatcher's: a service worker makes batches ahead of the reader, so what
it spends during an epoch is not the work of that epoch's batches, and only its total over the
stream (all of which the host reads) is given per step. A lane (one job of the service, see
`InputPipeline.train`) goes to the first service worker that asks for it, so a worker may make
several lanes and another none: the workers' shares show it. The goal is the ratio of the host's
median CPU per step, service / local, <= 0.20 (a fall of at least 80%); the ratios of the means,
and of all the input CPU (host + service workers), are given beside it.

In "local" mode the images the host decodes are counted exactly (the source's decode bumps a
counter in the graph). In "service" mode they are not counted: a counter lives in the host's
process and the pipeline's graph, run by the service workers, cannot hold it; the host's graph
there only receives batches.

The service workers run on this machine, beside the host, and share its cores with it (and the
dispatcher): on a machine of few cores, images/s in "service" mode is bounded by the cores these
processes share, not by the service; the host's CPU-seconds per step is the figure, the
input work left on a training host. The image, batch and timing flags are those of
`scale_input.py` (imported for its image writer); its flags about workers, modes, schedules and
steps do not apply here.
"""

from __future__ import annotations

import itertools
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from absl import app, flags
from scale_input import cpu_seconds, write_image_folder

from report import machine, spread, write_results

flags.DEFINE_integer("service_workers", 2, "tf.data service worker processes to start.")
flags.DEFINE_integer("lanes", None, "`InputPipeline.data_service_lanes` (default: --service_workers).")
FLAGS = flags.FLAGS
FLAGS.set_default("images", 256)  # scale_input's flags: fewer images, for a run of a few minutes; more epochs,
FLAGS.set_default("repeats", 5)  # as the first holds the start of the service's jobs
NOT_HERE = ("workers", "modes", "schedules", "steps", "worker", "shard_pattern")
"""Flags of `scale_input.py` that mean nothing here."""

MODES = ("local", "service")
BINARY = str(Path(sys.executable).parent / "resnet-data-service")
DISPATCHER_LINE = re.compile(r"Dispatcher listening on (grpc://localhost:\d+) \(.*\)")
WORKER_LINE = re.compile(r"Worker on (\S+) serving the dispatcher (grpc://\S+)")
STOP_TIMEOUT = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GOAL = 0.20
IDLE_WINDOW = 0.5
IDLE_CPU = 0.02
NOTE = (
    "This machine has {cores} cores. The service workers and the dispatcher run on it beside the training host "
    "(this script's process) and share its cores: images/s in 'service' mode is bounded by the cores the processes "
    "share, not by the service. The host's CPU-seconds per step is the figure: the input work left on a training "
    "host."
)


# -- the service's processes ------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU-seconds of process `pid` so far, all its threads (`/proc/<pid>/stat`)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14 and 15 of stat


class ServiceProcess:
    """A `resnet-data-service` process: its stdout lines read as they come, its stderr in a file."""

    def __init__(self, role: str, log_dir: str, *args: str):
        self.role = role
        self.log_path = os.path.join(log_dir, f"{role}.log")
        env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [BINARY, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True, env=env
            )
        self.pid = self.process.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def started(self, pattern: re.Pattern, deadline: float) -> re.Match:
        """The match of its start line; raises if it ends, or prints none, before `deadline` (monotonic)."""
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(
                    f"The service {self.role} (PID {self.pid}) did not start in --timeout={FLAGS.timeout:.0f} s:\n"
                    f"{self.log()}"
                ) from None
            if line is None:
                raise RuntimeError(
                    f"The service {self.role} (PID {self.pid}) ended with code {self.process.wait()} before it "
                    f"started:\n{self.log()}"
                )
            match = pattern.fullmatch(line)
            if match:
                return match

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()[-3000:]

    def stop(self) -> int:
        """Ends it by its PID: SIGTERM (it exits 0), SIGKILL if it has not ended in `STOP_TIMEOUT` s; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


class Service:
    """A dispatcher and `workers` workers on this machine, started together (each within `--timeout`)."""

    def __init__(self, workers: int, log_dir: str):
        self.dispatcher, self.workers, self.exit_codes = None, [], None
        deadline = time.monotonic() + FLAGS.timeout
        try:
            self.dispatcher = ServiceProcess("dispatcher", log_dir, "--dispatcher", "--port=0")
            self.address = self.dispatcher.started(DISPATCHER_LINE, deadline)[1]
            self.workers = [
                ServiceProcess(f"worker-{index}", log_dir, "--worker", f"--dispatcher_address={self.address}")
                for index in range(workers)
            ]
            self.worker_addresses = [worker.started(WORKER_LINE, deadline)[1] for worker in self.workers]
        except BaseException:
            self.stop()
            raise

    def processes(self) -> list[ServiceProcess]:
        return [process for process in (self.dispatcher, *self.workers) if process is not None]

    def stop(self) -> dict[int, int]:
        """Ends every process by its PID (workers first); their exit codes by PID."""
        if self.exit_codes is None:
            self.exit_codes = {process.pid: process.stop() for process in reversed(self.processes())}
        return self.exit_codes

    def describe(self) -> list[dict]:
        described = []
        for process in self.processes():
            entry = {"role": process.role, "pid": process.pid}
            if process is self.dispatcher:
                entry["address"] = self.address
            elif process in self.workers:
                entry["address"] = self.worker_addresses[self.workers.index(process)]
            if self.exit_codes is not None:
                entry["exit_code"] = self.exit_codes[process.pid]
            described.append(entry)
        return described


class Watchdog:
    """Ends the service and this process if a phase takes longer than `--timeout` (a read from a
    service whose worker is gone waits without end)."""

    def __init__(self, service: Service | None):
        self.service, self.timer = service, None

    def arm(self, what: str) -> None:
        self.disarm()

        def expire():
            print(f"error: {what} took longer than --timeout={FLAGS.timeout:.0f} s.", file=sys.stderr, flush=True)
            if self.service is not None:
                for process in self.service.processes():
                    print(f"{process.role} (PID {process.pid}):\n{process.log()}", file=sys.stderr, flush=True)
                self.service.stop()
            os._exit(1)

        self.timer = threading.Timer(FLAGS.timeout, expire)
        self.timer.daemon = True
        self.timer.start()

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


# -- the training host ------------------------------------------------------------------------


def measure(mode: str, source, prep, steps: int, service: Service | None, watchdog: Watchdog) -> dict:
    """`--warmup` untimed batches, then `--repeats` timed epochs of one stream, in `mode`."""
    from resnet.data.pipeline import InputPipeline

    settings = {}
    if mode == "service":
        settings = {"data_service": service.address, "data_service_lanes": FLAGS.lanes}
    pipeline = InputPipeline(source, prep, batch_size=FLAGS.batch_size, cache=False, **settings)
    watchdog.arm(f"The {mode} warm-up")
    for _ in pipeline.train(0).take(FLAGS.warmup):
        pass
    workers = service.workers if mode == "service" else []
    settled = settle(workers, watchdog) if workers else None
    # One stream for the timed epochs, as the trainer reads them; it is made, and its iterator,
    # before the clock starts.
    iterator = iter(pipeline.train(1, epochs=FLAGS.repeats))
    if mode == "local":
        source.decoded.assign(0)
    dispatcher_cpu = service.dispatcher.cpu_seconds() if mode == "service" else 0.0
    epochs = []
    for epoch in range(FLAGS.repeats):
        watchdog.arm(f"Epoch {epoch + 1} of the {mode} mode")
        before = [worker.cpu_seconds() for worker in workers]
        wall, cpu = time.perf_counter(), cpu_seconds()
        batches = delivered = 0
        for images, _ in itertools.islice(iterator, steps):
            batches, delivered = batches + 1, delivered + int(images.shape[0])
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        after = [worker.cpu_seconds() for worker in workers]
        epochs.append(
            {
                "steps": batches,
                "delivered": delivered,
                "wall_seconds": round(wall, 4),
                "host_cpu_seconds": round(cpu, 4),
                "service_worker_cpu_seconds": [round(b - a, 4) for a, b in zip(before, after, strict=True)],
            }
        )
    watchdog.arm(f"The end of the {mode} stream")
    leftover = sum(1 for _ in iterator)
    watchdog.disarm()
    if leftover:
        raise RuntimeError(f"The stream of {FLAGS.repeats} epochs held {leftover} batches more than expected.")
    if any(epoch["steps"] != steps for epoch in epochs):
        raise RuntimeError(f"An epoch gave {[epoch['steps'] for epoch in epochs]} batches, not {steps}.")
    result = summarize(epochs, steps, workers)
    if mode == "local":
        result["decoded_on_host"] = int(source.decoded.numpy())
        result["decoded_on_host_per_epoch"] = result["decoded_on_host"] / FLAGS.repeats
    else:
        result["decoded_on_host"] = None  # not counted: see the module's docstring
        result["after_warmup"] = settled
        result["dispatcher_cpu_seconds_total"] = round(service.dispatcher.cpu_seconds() - dispatcher_cpu, 3)
    return result


def settle(workers: list[ServiceProcess], watchdog: Watchdog) -> dict:
    """Waits until the service workers are idle (less than `IDLE_CPU` CPU-seconds in `IDLE_WINDOW`
    seconds, all together): the warm-up's jobs, whose reader stopped after `--warmup` batches,
    may still be making the batches their workers buffer. What they spent meanwhile, and for how long."""
    watchdog.arm("The service workers' settling after the warm-up")
    start, cpu = time.perf_counter(), sum(worker.cpu_seconds() for worker in workers)
    last = cpu
    while True:
        time.sleep(IDLE_WINDOW)
        now = sum(worker.cpu_seconds() for worker in workers)
        if now - last < IDLE_CPU:
            break
        last = now
    watchdog.disarm()
    return {"seconds": round(time.perf_counter() - start, 2), "service_worker_cpu_seconds": round(now - cpu, 3)}


def summarize(epochs: list[dict], steps: int, workers: list[ServiceProcess]) -> dict:
    """The host's figures per epoch: median (min-max) over the epochs, and its mean over the
    stream; the service workers' over the whole stream (they make batches ahead of the reader,
    so what a worker spends during an epoch is not the work of that epoch's batches)."""
    total_steps = steps * len(epochs)
    host = [epoch["host_cpu_seconds"] / steps for epoch in epochs]
    result = {
        "epochs": epochs,
        "steps_per_epoch": steps,
        "host_cpu_seconds_per_step": spread(host, "seconds", 4),
        "host_cpu_seconds_per_step_mean": round(sum(e["host_cpu_seconds"] for e in epochs) / total_steps, 4),
        "wall_seconds": spread([epoch["wall_seconds"] for epoch in epochs], "seconds", 3),
        "images_per_second": spread(
            [epoch["delivered"] / epoch["wall_seconds"] for epoch in epochs], "images_per_second", 1
        ),
    }
    service_total = 0.0
    if workers:
        totals = [sum(e["service_worker_cpu_seconds"][index] for e in epochs) for index in range(len(workers))]
        service_total = sum(totals)
        result["service_workers"] = [
            {
                "index": index,
                "pid": worker.pid,
                "cpu_seconds_total": round(totals[index], 3),
                "cpu_seconds_per_step": round(totals[index] / total_steps, 4),
                "share": round(totals[index] / service_total, 3) if service_total else None,
            }
            for index, worker in enumerate(workers)
        ]
        result["service_cpu_seconds_total"] = round(service_total, 3)
        result["service_cpu_seconds_per_step_mean"] = round(service_total / total_steps, 4)
    result["input_cpu_seconds_per_step_mean"] = round(
        result["host_cpu_seconds_per_step_mean"] + service_total / total_steps, 4
    )
    return result


def print_table(modes: dict) -> None:
    header = (
        f"{'mode':<8} {'host CPU-s/step, median (min-max)':>33} {'host, mean':>10} {'service workers':>15} "
        f"{'input, all':>10} {'wall s/epoch':>12} {'img/s':>7} {'decoded on host':>15}"
    )
    print(header)
    print("-" * len(header))
    for mode, run in modes.items():
        host, decoded = run["host_cpu_seconds_per_step"], run["decoded_on_host"]
        median = f"{host['seconds']:.4f} ({host['min']:.4f}-{host['max']:.4f})"
        service = run.get("service_cpu_seconds_per_step_mean")
        print(
            f"{mode:<8} {median:>33} "
            f"{run['host_cpu_seconds_per_step_mean']:>10.4f} {'-' if service is None else f'{service:.4f}':>15} "
            f"{run['input_cpu_seconds_per_step_mean']:>10.4f} {run['wall_seconds']['seconds']:>12.2f} "
            f"{run['images_per_second']['images_per_second']:>7.1f} "
            f"{'not counted' if decoded is None else decoded:>15}",
            flush=True,
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a flag.")
    given = [f"--{name}" for name in NOT_HERE if FLAGS[name].present]
    if given:
        raise app.UsageError(f"{', '.join(given)} belong to scale_input.py and do not apply here.")
    if FLAGS.lanes is None:
        FLAGS.lanes = FLAGS.service_workers
    if FLAGS.service_workers < 1 or FLAGS.lanes < 1:
        raise app.UsageError("--service_workers and --lanes must be at least 1.")
    if FLAGS.images % FLAGS.batch_size or FLAGS.images < FLAGS.batch_size:
        raise app.UsageError(f"--images={FLAGS.images} must be a multiple of --batch_size={FLAGS.batch_size}.")
    if FLAGS.warmup < 0 or FLAGS.repeats < 1:
        raise app.UsageError("--warmup must be at least 0 and --repeats at least 1.")
    if not os.path.exists(BINARY):
        raise app.UsageError(f"{BINARY} is missing: install the package (pip install -e .) in this environment.")
    import numpy as np
    import tensorflow as tf

    from resnet.data.prepare import prepare_image_folder
    from resnet.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
    from resnet.data.tfrecord import TFRecordData

    class CountingTFRecordData(TFRecordData):
        """Counts the examples it decodes (in the graph: exact); for the host's own pipeline only,
        as a service worker cannot run a graph that holds this process's variable."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.decoded = tf.Variable(0, dtype=tf.int64, trainable=False)

        def _decode(self, records, split):
            def count(image, label):
                with tf.control_dependencies([self.decoded.assign_add(1)]):
                    return tf.identity(image), label

            return super()._decode(records, split).map(count)

    steps = FLAGS.images // FLAGS.batch_size
    results = {
        "images": FLAGS.images,
        "image_height": FLAGS.height,
        "image_width": FLAGS.width,
        "classes": FLAGS.classes,
        "shards": FLAGS.shards,
        "batch_size": FLAGS.batch_size,
        "crop_size": FLAGS.crop_size,
        "steps_per_epoch": steps,
        "warmup_batches": FLAGS.warmup,
        "repeats": FLAGS.repeats,
        "service_workers": FLAGS.service_workers,
        "lanes": FLAGS.lanes,
        "machine": machine(tensorflow=tf.__version__, numpy=np.__version__),
        "note": NOTE.format(cores=os.cpu_count()),
    }
    print(
        f"{results['machine']['cpu']} ({os.cpu_count()} cores), Python {results['machine']['python']}, "
        f"TensorFlow {tf.__version__}, NumPy {np.__version__}",
        flush=True,
    )
    prep = Preprocessing("imagenet", image_size=FLAGS.crop_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with tempfile.TemporaryDirectory(prefix="service-input-benchmark-") as scratch:
        folder = os.path.join(scratch, "images")
        mean_kib = write_image_folder(folder, FLAGS.images, FLAGS.height, FLAGS.width, FLAGS.classes)
        split = prepare_image_folder(folder, os.path.join(scratch, "shards", "train"), FLAGS.shards, progress="none")
        results["mean_jpeg_kib"] = round(mean_kib, 1)
        results["shard_bytes"] = sum(os.path.getsize(path) for path in split.shards)
        print(
            f"{FLAGS.images} JPEGs of {FLAGS.height}x{FLAGS.width} (mean {mean_kib:.1f} KiB) in {FLAGS.shards} "
            f"shards ({results['shard_bytes'] / 2**20:.1f} MiB); ImageNet recipe at {FLAGS.crop_size}, batch "
            f"{FLAGS.batch_size}, {steps} steps an epoch; {FLAGS.warmup} untimed batches, then {FLAGS.repeats} "
            f"timed epochs per mode; {FLAGS.service_workers} service workers, {FLAGS.lanes} lanes.",
            flush=True,
        )
        # SIGTERM ends this script through its `finally`s, which end the service's processes.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        service = Service(FLAGS.service_workers, scratch)
        print(
            f"Service: dispatcher {service.address} (PID {service.dispatcher.pid}), workers "
            + ", ".join(f"{w.pid}" for w in service.workers),
            flush=True,
        )
        watchdog = Watchdog(service)
        modes = {}
        try:
            sources = {
                "local": CountingTFRecordData(split.pattern, split.pattern, num_classes=FLAGS.classes),
                "service": TFRecordData(split.pattern, split.pattern, num_classes=FLAGS.classes),
            }
            for mode in MODES:
                modes[mode] = run = measure(mode, sources[mode], prep, steps, service, watchdog)
                print(
                    f"{mode}: host {run['host_cpu_seconds_per_step']['seconds']:.4f} CPU-s/step, "
                    f"{run['images_per_second']['images_per_second']:.1f} img/s",
                    flush=True,
                )
        finally:
            watchdog.disarm()
            service.stop()
        results["service_processes"] = service.describe()
    failed = [entry for entry in results["service_processes"] if entry["exit_code"] != 0]
    if failed:
        raise RuntimeError(f"Service processes did not exit cleanly on SIGTERM: {failed}")
    results["modes"] = modes
    local, served = modes["local"], modes["service"]

    def ratio(key: str, unit: str | None = None) -> float:
        service_figure, local_figure = (run[key][unit] if unit else run[key] for run in (served, local))
        return round(service_figure / local_figure, 4) if local_figure else float("nan")

    median_ratio = ratio("host_cpu_seconds_per_step", "seconds")
    results["goal"] = goal = {
        "host_cpu_per_step_service_vs_local": median_ratio,
        "host_cpu_per_step_fall_percent": round(100 * (1 - median_ratio), 1),
        "target": f"<= {GOAL:.2f} (a fall of at least {100 * (1 - GOAL):.0f}%)",
        "met": bool(median_ratio <= GOAL),
        "host_cpu_per_step_mean_service_vs_local": ratio("host_cpu_seconds_per_step_mean"),
        "input_cpu_per_step_service_vs_local": ratio("input_cpu_seconds_per_step_mean"),
    }
    print("\nPer step (CPU-seconds; the host's median over epochs, min-max, and its mean over the stream; the service")
    print("workers' and all input CPU over the stream):")
    print_table(modes)
    print(f"\nService workers' CPU-seconds over the {FLAGS.repeats} timed epochs (a lane goes to the first that asks):")
    for worker in served["service_workers"]:
        share = "-" if worker["share"] is None else f"{worker['share']:.0%}"
        print(
            f"  worker {worker['index']} (PID {worker['pid']}): {worker['cpu_seconds_total']:.2f} CPU-s, "
            f"{worker['cpu_seconds_per_step']:.4f} per step, {share} of the workers'",
            flush=True,
        )
    after = served["after_warmup"]
    print(
        f"  dispatcher: {served['dispatcher_cpu_seconds_total']:.2f} CPU-s; before the timed stream, the workers "
        f"finished the warm-up's jobs in {after['seconds']:.1f} s ({after['service_worker_cpu_seconds']:.2f} CPU-s)"
    )
    print(
        f"Goal, the host's input CPU per step falling by at least 80% with the service: service / local "
        f"{goal['host_cpu_per_step_service_vs_local']:.3f} (a fall of {goal['host_cpu_per_step_fall_percent']:.1f}%): "
        f"{'met' if goal['met'] else 'not met'}. Means over the stream: "
        f"{goal['host_cpu_per_step_mean_service_vs_local']:.3f}. All input CPU (host + service workers) / local: "
        f"{goal['input_cpu_per_step_service_vs_local']:.3f}.",
        flush=True,
    )
    print(f"\nNote: {results['note']}\n", flush=True)
    write_results(results, FLAGS.json)


if __name__ == "__main__":
    app.run(main)
