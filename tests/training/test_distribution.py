"""Distribution: replicas that agree, two real workers on one machine, clean failure, sure resumes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from binaries import BIN, ENV, FAST, metrics

# Every test here starts TensorFlow subprocesses (strategies fix devices per process).
pytestmark = pytest.mark.slow

SCRIPT = r"""
import json
import numpy as np
import tensorflow as tf
from resnet.training import distribution

strategy = distribution.setup("mirrored", logical_cpus=2)
import resnet

x = np.random.default_rng(0).normal(2.0, 3.0, (8, 4, 4, 6)).astype("float32")
reference = resnet.BatchNorm(momentum=0.5)
expected = reference(x, training=True).numpy()

def replicated(norm_class):
    with strategy.scope():
        norm = norm_class(momentum=0.5)
        norm.build(x.shape)
    shards = strategy.experimental_distribute_values_from_function(
        lambda ctx: x[4 * ctx.replica_id_in_sync_group: 4 * (ctx.replica_id_in_sync_group + 1)])
    out = tf.function(lambda v: strategy.run(lambda t: norm(t, training=True), args=(v,)))(shards)
    out = np.concatenate([o.numpy() for o in strategy.experimental_local_results(out)])
    return norm, out

sync, sync_out = replicated(resnet.SyncBatchNorm)
local, local_out = replicated(resnet.BatchNorm)

# Activations whose mean is large against their spread (as after a convolution of images with
# a flat background): the outputs and the gradients, w.r.t. the inputs and the affine weights,
# of two replicas of 4 must be those of one device of 8.
shifted = (x / 3.0 + 100.0).astype("float32")
upstream = np.random.default_rng(1).normal(size=x.shape).astype("float32")

def one_device():
    norm = resnet.BatchNorm(momentum=0.5)
    norm.build(x.shape)
    inputs = tf.constant(shifted)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        out = norm(inputs, training=True)
        loss = tf.reduce_sum(out * upstream)
    return [out.numpy()] + [g.numpy() for g in tape.gradient(loss, [inputs, norm.gamma, norm.beta])]

def two_replicas(norm_class):
    with strategy.scope():
        norm = norm_class(momentum=0.5)
        norm.build(x.shape)
    half = lambda array, ctx: array[4 * ctx.replica_id_in_sync_group: 4 * (ctx.replica_id_in_sync_group + 1)]
    inputs = strategy.experimental_distribute_values_from_function(lambda ctx: half(shifted, ctx))
    weights = strategy.experimental_distribute_values_from_function(lambda ctx: half(upstream, ctx))

    def replica(inputs, weights):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = norm(inputs, training=True)
            loss = tf.reduce_sum(out * weights)
        return (out, *tape.gradient(loss, [inputs, norm.gamma, norm.beta]))

    results = tf.function(lambda a, b: strategy.run(replica, args=(a, b)))(inputs, weights)
    local = [strategy.experimental_local_results(r) for r in results]
    concatenated = [np.concatenate([t.numpy() for t in r]) for r in local[:2]]
    return concatenated + [sum(t.numpy() for t in r) for r in local[2:]]

def relative_errors(got, want):
    return [float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(got, want)]

expected_shifted = one_device()
shifted_errors = relative_errors(two_replicas(resnet.SyncBatchNorm), expected_shifted)
print(json.dumps({
    "shifted_errors": shifted_errors,
    "replicas": strategy.num_replicas_in_sync,
    "sync_output_error": float(np.abs(sync_out - expected).max()),
    "sync_mean_error": float(np.abs(sync.moving_mean.numpy() - reference.moving_mean.numpy()).max()),
    "sync_variance_error": float(np.abs(sync.moving_variance.numpy() - reference.moving_variance.numpy()).max()),
    "local_output_error": float(np.abs(local_out - expected).max()),
}))
"""


def test_sync_batch_norm_matches_single_device_statistics():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["sync_output_error"] < 1e-4
    assert report["sync_mean_error"] < 1e-5 and report["sync_variance_error"] < 1e-4
    # Without synchronization each replica normalizes with its own half: visibly different.
    assert report["local_output_error"] > 1e-2
    # The output, and the gradients w.r.t. the inputs, gamma and beta, with a mean 100 times
    # the spread, to float rounding (Keras' E[x^2] - E[x]^2 gives errors of percents here).
    assert max(report["shifted_errors"]) < 1e-4, report["shifted_errors"]


STATISTICS_SCRIPT = r"""
import json
import numpy as np
import tensorflow as tf
from resnet.training import distribution

strategy = distribution.setup("mirrored", logical_cpus=2)
import keras
import resnet
from resnet.training.steps import make_train_step, replica_local_state

with strategy.scope():
    model = resnet.build("cifar/resnet20", ["ResNet.stage_blocks = (1, 1, 1)"])
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
step = make_train_step(model, optimizer, strategy, num_classes=10, global_batch_size=16)
rng = np.random.default_rng(0)
# The two halves of every batch differ in brightness: their batch statistics differ.
scale = np.where((np.arange(64) // 8) % 2 == 0, 1.0, 3.0).astype("float32")
images = rng.normal(size=(64, 32, 32, 3)).astype("float32") * scale[:, None, None, None]
dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(64) % 10)).batch(16)
for batch in strategy.experimental_distribute_dataset(dataset):
    step(batch)
state = replica_local_state(model)
copies = [strategy.experimental_local_results(v.value) for v in state]
print(json.dumps({
    "variables": len(state),
    "moved": float(max(np.abs(c[0].numpy() - (0.0 if "mean" in v.path else 1.0)).max() for v, c in zip(state, copies))),
    "replica_difference": float(max(np.abs(c[0].numpy() - c[1].numpy()).max() for c in copies)),
}))
"""


def test_replicas_hold_the_same_normalization_statistics_after_every_step():
    result = subprocess.run(
        [sys.executable, "-c", STATISTICS_SCRIPT], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["variables"] == 14  # the moving mean and variance of 7 batch norms
    assert report["moved"] > 1e-2
    assert report["replica_difference"] == 0.0


def evaluate(model_dir, checkpoint="backup"):
    """resnet-eval of a run, on one device, with no TF_CONFIG."""
    command = [str(BIN / "resnet-eval"), f"--model_dir={model_dir}", f"--checkpoint={checkpoint}"]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_checkpoint_evaluates_to_its_metrics(model_dir):
    last = metrics(model_dir)[-1]
    results = evaluate(model_dir)
    # Within 1e-6, relative where the loss is large (float32 resolves 3e-5 at 264).
    assert results["loss"] == pytest.approx(float(last["val_loss"]), rel=1e-6, abs=1e-6)
    assert results["top1"] == pytest.approx(float(last["val_accuracy"]), abs=1e-9)


def test_mirrored_training_with_batch_norm_evaluates_to_what_it_recorded(tmp_path):
    model_dir = tmp_path / "mirrored"
    command = [
        str(BIN / "resnet-train"),
        f"--model_dir={model_dir}",
        *(f"--gin_param={p}" for p in FAST + ["Trainer.strategy = 'mirrored'", "Trainer.logical_cpus = 2"]),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "2 replicas" in result.stdout
    assert_checkpoint_evaluates_to_its_metrics(model_dir)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Cluster:
    """Workers of one multi-worker run on 127.0.0.1, each a `resnet-train` process; every
    process started is ended by its PID."""

    def __init__(self, tmp_path, workers=2):
        self.addresses = [f"127.0.0.1:{p}" for p in free_ports(workers)]
        self.scratch = tmp_path / "tmp"
        self.scratch.mkdir(exist_ok=True)
        self.processes = {}

    def start(self, index, model_dir, params, args=(), alone=False, **env):
        """Starts worker `index` (`alone`: a one-process run, without TF_CONFIG)."""
        cluster = {"cluster": {"worker": self.addresses}, "task": {"type": "worker", "index": index}}
        env = dict(ENV, TMPDIR=str(self.scratch), **({} if alone else {"TF_CONFIG": json.dumps(cluster)}), **env)
        command = [str(BIN / "resnet-train"), f"--model_dir={model_dir}", *args, *(f"--gin_param={p}" for p in params)]
        self.processes[index] = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        return self.processes[index]

    def start_all(self, model_dirs, params):
        return [self.start(i, d, params) for i, d in enumerate(model_dirs)]

    def finish(self, indices=None, timeout=300):
        """Waits for the workers; returns {index: (returncode, stdout, stderr, seconds)}."""
        results, started = {}, time.time()
        for index in indices if indices is not None else list(self.processes):
            process = self.processes.pop(index)
            out, err = process.communicate(timeout=max(1, timeout - (time.time() - started)))
            results[index] = (process.returncode, out, err, time.time() - started)
        return results

    def kill_all(self):
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.communicate()
        self.processes.clear()


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster(tmp_path)
    yield cluster
    cluster.kill_all()


def latest_backup(model_dir):
    import tensorflow as tf

    return tf.train.latest_checkpoint(str(Path(model_dir) / "backup"))


def wait_for_backup(model_dir, processes, minimum_step=1, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        latest = latest_backup(model_dir)
        if latest and int(latest.rsplit("-", 1)[1]) >= minimum_step:
            return int(latest.rsplit("-", 1)[1])
        for process in processes:
            if process.poll() is not None:
                out, err = process.communicate()
                pytest.fail(f"a worker ended before a backup appeared:\n{out}\n{err}")
        time.sleep(0.1)
    pytest.fail("no backup appeared")


def test_two_workers_agree_evaluate_to_their_metrics_and_refuse_an_unshared_model_dir(tmp_path, cluster):
    model_dir = tmp_path / "run"
    params = FAST + ["Trainer.strategy = 'multi_worker_mirrored'"]
    cluster.start_all([model_dir, model_dir], params)
    results = cluster.finish()
    for code, out, err, _ in results.values():
        assert code == 0, err
        assert "2 replicas, 8 images per replica per step" in out
    # Synchronous training: both workers see the same losses; only the chief writes the run.
    epoch_lines = [
        [line for line in out.splitlines() if line.startswith("Epoch 2/2")][0].split("(")[0]
        for _, out, _, _ in results.values()
    ]
    assert epoch_lines[0] == epoch_lines[1]
    assert (model_dir / "command.txt").read_text().count("resnet-train") == 1
    assert [r["epoch"] for r in metrics(model_dir)] == ["1", "2"]
    # Replica-consistent statistics: one device evaluates the checkpoint to what was recorded,
    # without TF_CONFIG.
    assert_checkpoint_evaluates_to_its_metrics(model_dir)
    assert not list(cluster.scratch.glob("resnet-worker-*"))

    # Continued with a model_dir the workers do not share: the other worker does not see the
    # chief's run. Both stop before training, saying why, and the run's files are untouched.
    unshared = [p for p in params if "epochs" not in p] + ["Trainer.epochs = 3"]
    before = snapshot(model_dir)
    cluster.start_all([model_dir, tmp_path / "elsewhere"], unshared)
    for code, out, err, _ in cluster.finish().values():
        assert code == 2, err
        assert "storage every worker sees" in err and "Nothing was written" in err, err
        assert "Traceback" not in err
        assert "Epoch 3/3" not in out
    assert snapshot(model_dir) == before  # no command appended, no config rewritten
    assert not (tmp_path / "elsewhere").exists() or not snapshot(tmp_path / "elsewhere")

    # A new run whose workers were given different directories is refused the same way.
    fresh = [tmp_path / "fresh-chief", tmp_path / "fresh-worker"]
    cluster.start_all(fresh, params)
    for code, out, err, _ in cluster.finish().values():
        assert code == 2 and "storage every worker sees" in err and "Traceback" not in err, err
        assert "Epoch 1/2" not in out
    for directory in fresh:
        assert not directory.exists() or not snapshot(directory), snapshot(directory)


def snapshot(directory):
    """Every file below `directory` with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def test_preemption_and_a_lost_worker_end_cleanly_and_the_run_resumes(tmp_path, cluster):
    from resnet.training.distribution import CLUSTER_ERROR_EXIT_CODE, PREEMPTED_EXIT_CODE

    model_dir = tmp_path / "run"
    dirs = [model_dir, model_dir]
    params = [
        "Trainer.epochs = 3",
        "Trainer.steps_per_epoch = 8",
        "Trainer.batch_size = 16",
        "Trainer.backup_every_steps = 2",
        "InputPipeline.eval_batch_size = 360",
        "Trainer.strategy = 'multi_worker_mirrored'",
        "Trainer.cluster_timeout = 10",
    ]
    # SIGTERM (a preemption notice) to one worker: both save a backup at the same step and exit.
    workers = cluster.start_all(dirs, params)
    wait_for_backup(model_dir, workers, minimum_step=2)
    workers[1].send_signal(signal.SIGTERM)
    stopped = cluster.finish(timeout=120)
    stop_lines = []
    for code, _, err, _ in stopped.values():
        assert code == PREEMPTED_EXIT_CODE, err
        stop_lines.append(next(line for line in err.splitlines() if "Stopped by a stop signal at step" in line))
    step = int(stop_lines[0].split("at step ")[1].split()[0])
    assert stop_lines[0] == stop_lines[1]
    assert latest_backup(model_dir).endswith(f"backup-{step}")
    assert not (model_dir / "run.lock").exists()

    # All restarted: they resume there. Then one is killed in epoch 2: the other ends within
    # 60 s, clearly.
    workers = cluster.start_all(dirs, params)
    wait_for_backup(model_dir, workers, minimum_step=max(step + 1, 9))
    workers[1].kill()
    code, out, err, seconds = cluster.finish([0], timeout=120)[0]
    assert f"Resuming from {model_dir / 'backup' / f'backup-{step}'}:" in out
    assert code == CLUSTER_ERROR_EXIT_CODE and seconds < 60, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("resnet-train: error:") and "worker 1" in last and "restart" in last.lower(), err
    assert "Traceback" not in err
    cluster.finish([1])
    done = [r["epoch"] for r in metrics(model_dir)]

    # The killed worker restarted alone waits for its peer, then gives up.
    cluster.start(1, model_dir, params)
    code, out, err, seconds = cluster.finish([1], timeout=180)[1]
    assert code == CLUSTER_ERROR_EXIT_CODE, err
    assert "waiting" in out and "worker 0" in err and "Trainer.cluster_timeout" in err, (out, err)

    # Every worker restarted: the run finishes, no finished epoch is redone.
    cluster.start_all(dirs, params)
    results = cluster.finish(timeout=300)
    for code, out, err, _ in results.values():
        assert code == 0, err
        for epoch in done:
            assert f"Epoch {epoch}/3" not in out
    assert [r["epoch"] for r in metrics(model_dir)] == ["1", "2", "3"]


# A digits source that notes, in COUNT_DIR/<process id>-<split>.txt, every example it decodes.
COUNTING_SOURCE = """
import os

import gin
import tensorflow as tf

from resnet.data.in_memory import DigitsData


@gin.configurable
class CountingDigits(DigitsData):
    def _decode(self, records, split):
        path = os.path.join(os.environ["COUNT_DIR"], f"{os.getpid()}-{split}.txt")

        def note(label):
            with open(path, "a") as f:
                f.write(f"{int(label)}\\n")
            return label

        def noted(image, label):
            label = tf.py_function(note, [label], tf.int32)
            label.set_shape([])
            return image, label

        return super()._decode(records, split).map(noted)
"""


def test_each_worker_decodes_only_its_part_of_every_batch(tmp_path, cluster):
    """Two workers of one run (not cached): each decodes half of each global training batch and
    half of the evaluation split, instead of everything."""
    (tmp_path / "counting_source.py").write_text(COUNTING_SOURCE)
    (tmp_path / "counting.gin").write_text("import counting_source\nTrainer.data = @CountingDigits()\n")
    counts = tmp_path / "counts"
    counts.mkdir()
    params = FAST + ["Trainer.strategy = 'multi_worker_mirrored'", "InputPipeline.cache = False"]
    env = dict(COUNT_DIR=str(counts), PYTHONPATH=str(tmp_path))
    args = ["--gin_file=experiments/demo", f"--gin_file={tmp_path / 'counting.gin'}"]
    for index in (0, 1):
        cluster.start(index, tmp_path / "run", params, args=args, **env)
    for code, _, err, _ in cluster.finish().values():
        assert code == 0, err
    decoded = {path.name: path.read_text().split() for path in counts.iterdir()}
    train = [labels for name, labels in decoded.items() if name.endswith("-train.txt")]
    evaluation = [labels for name, labels in decoded.items() if name.endswith("-eval.txt")]
    # Two epochs of four steps of 16 images: 64 per worker, not 128; two evaluations of the 360
    # evaluation digits in batches of 120: 180 per worker each time, not 360.
    assert sorted(map(len, train)) == [64, 64], {name: len(labels) for name, labels in decoded.items()}
    assert sorted(map(len, evaluation)) == [360, 360]


# Synthetic images whose training records (their indices) are noted, in the order decoded, in
# COUNT_DIR/<process id>.txt: the ids of every global step, read back per worker.
ID_SOURCE = """
import os

import gin
import tensorflow as tf

from resnet.data.in_memory import SyntheticData


@gin.configurable
class NotedSynthetic(SyntheticData):
    def _decode(self, records, split):
        if split == "train":
            path = os.path.join(os.environ["COUNT_DIR"], f"{os.getpid()}.txt")

            def note(index):
                with open(path, "a") as f:
                    f.write(f"{int(index)}\\n")
                return index

            records = records.map(lambda index: tf.ensure_shape(tf.py_function(note, [index], tf.int64), []))
        return super()._decode(records, split)
"""


def test_a_run_resumes_on_another_number_of_workers(tmp_path, cluster):
    """Two workers, stopped; one; stopped; two again: the run goes on with the same global
    batches (by the ids of every step's examples), and with synchronized batch norm it ends as
    the uninterrupted two-worker run does, to float rounding."""
    from resnet.training.distribution import PREEMPTED_EXIT_CODE

    (tmp_path / "id_source.py").write_text(ID_SOURCE)
    (tmp_path / "ids.gin").write_text(
        "import id_source\n"
        "Trainer.data = @NotedSynthetic()\n"
        "NotedSynthetic.train_examples = 160\n"
        "NotedSynthetic.eval_examples = 120\n"
        "NotedSynthetic.image_size = 32\n"
        "NotedSynthetic.num_classes = 10\n"
    )
    args = ["--gin_file=experiments/demo", f"--gin_file={tmp_path / 'ids.gin'}"]
    steps, batch = 6, 16
    params = [
        "Trainer.epochs = 3",
        f"Trainer.steps_per_epoch = {steps}",
        f"Trainer.batch_size = {batch}",
        "Trainer.backup_every_steps = 1",
        "InputPipeline.eval_batch_size = 120",
        "InputPipeline.cache = False",  # every step's examples decoded, and noted, as it is trained
        "ResNet.norm = 'sync_batch'",
        "learning_rate_schedule.base_learning_rate = 0.01",
        "Trainer.cluster_timeout = 60",
    ]
    two = params + ["Trainer.strategy = 'multi_worker_mirrored'"]
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    phases = []  # (first global step, noted ids of each worker in order) of each run of a command

    def run_phase(model_dir, workers, stop_after=None):
        notes = tmp_path / f"notes-{len(phases)}"
        notes.mkdir()
        env = dict(COUNT_DIR=str(notes), PYTHONPATH=str(tmp_path))
        first = latest_backup(model_dir)
        first = int(first.rsplit("-", 1)[1]) if first else 0
        strategy, alone = (two, False) if workers == 2 else (params, True)
        processes = [cluster.start(i, model_dir, strategy, args=args, alone=alone, **env) for i in range(workers)]
        if stop_after is not None:
            # SIGTERM to one worker: every worker saves its backup at the same step and ends.
            wait_for_backup(model_dir, processes, minimum_step=first + stop_after)
            processes[0].send_signal(signal.SIGTERM)
        results = cluster.finish(timeout=300)
        noted = [(notes / f"{process.pid}.txt").read_text().split() for process in processes]
        phases.append((first, noted))
        return results

    for code, _, err, _ in run_phase(uninterrupted, 2).values():
        assert code == 0, err
    for code, _, err, _ in run_phase(resumed, 2, stop_after=4).values():
        assert code == PREEMPTED_EXIT_CODE, err
    for code, out, err, _ in run_phase(resumed, 1, stop_after=4).values():
        assert code == PREEMPTED_EXIT_CODE, err
        assert "on 1 worker (it had 2)." in out, out
    for code, out, err, _ in run_phase(resumed, 2).values():
        assert code == 0, err
        assert "on 2 workers (it had 1)." in out, out

    def global_steps(first, noted):
        """{global step: ids of its examples} as the workers of one phase decoded them (each keeps
        its consecutive part of every global batch; a stopped phase may have decoded ahead)."""
        part = batch // len(noted)
        count = min(len(ids) for ids in noted) // part
        return {first + k: [i for ids in noted for i in ids[k * part : (k + 1) * part]] for k in range(count)}

    reference = global_steps(*phases[0])
    assert len(reference) == 3 * steps
    covered = set()
    for first, noted in phases[1:]:
        for step, ids in global_steps(first, noted).items():
            if step in reference:
                assert ids == reference[step], (first, step)
                covered.add(step)
    assert covered == set(reference)  # every step of the resumed run was checked
    # The same batches; the sums over replicas are added in another order on one worker than
    # on two, and training amplifies those last-bit differences: about 2e-4 after twelve steps
    # here (one step agrees to 1e-5, see test_sync_batch_norm_matches_single_device_statistics).
    expected, actual = metrics(uninterrupted), metrics(resumed)
    assert [row["epoch"] for row in actual] == ["1", "2", "3"]
    for want, got in zip(expected, actual, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert float(got[key]) == pytest.approx(float(want[key]), rel=2e-3, abs=1e-5), (expected, actual)


# Synthetic images whose training records (their indices) are printed, as they are decoded, on
# stderr by a tf.print: an op, which runs wherever the dataset runs, on a tf.data service worker
# too (Python in a dataset would run only in the process that built it).
PRINTED_SOURCE = """
import sys

import gin
import tensorflow as tf

from resnet.data.in_memory import SyntheticData


@gin.configurable
class PrintedSynthetic(SyntheticData):
    def _decode(self, records, split):
        if split == "train":

            def note(index):
                with tf.control_dependencies([tf.print(index, output_stream=sys.stderr)]):
                    return tf.identity(index)

            records = records.map(note)
        return super()._decode(records, split)
"""


@pytest.fixture
def data_service(tmp_path):
    """Starts a `resnet-data-service` dispatcher and workers on 127.0.0.1: `start(workers)` gives
    the dispatcher's address and the worker processes; every process is ended at the end."""
    from services import DISPATCHER_LINE, START_TIMEOUT, WORKER_LINE, Service

    started = []

    def start(workers):
        dispatcher = Service(tmp_path, "dispatcher", "--dispatcher")
        started.append(dispatcher)
        address = DISPATCHER_LINE.fullmatch(dispatcher.next_line(START_TIMEOUT))[1]
        return address, [add_worker(address) for _ in range(workers)]

    def add_worker(address):
        worker = Service(tmp_path, f"worker{len(started)}", "--worker", f"--dispatcher_address={address}")
        started.append(worker)
        assert WORKER_LINE.fullmatch(worker.next_line(START_TIMEOUT))
        return worker

    start.add_worker = add_worker
    yield start
    for service in started:
        service.end()


def printed_run(tmp_path, **source):
    """The arguments and environment of a demo run on `PrintedSynthetic` data of `source`."""
    (tmp_path / "printed_source.py").write_text(PRINTED_SOURCE)
    (tmp_path / "printed.gin").write_text(
        "import printed_source\n"
        "Trainer.data = @PrintedSynthetic()\n"
        + "".join(f"PrintedSynthetic.{key} = {value}\n" for key, value in source.items())
    )
    args = ["--gin_file=experiments/demo", f"--gin_file={tmp_path / 'printed.gin'}"]
    return args, dict(PYTHONPATH=str(tmp_path))


def printed(stderr):
    """The training records a process decoded, as `PrintedSynthetic` printed them on its stderr."""
    return [int(line) for line in stderr.splitlines() if line.strip().isdigit()]


def test_two_trainers_get_every_example_once_per_epoch_from_a_data_service(tmp_path, cluster, data_service):
    """A dispatcher, two service workers and two training workers: the service decodes each
    training example once per epoch, the training hosts none, and the run trains on the batches
    it trains on without the service (same figures)."""
    address, workers = data_service(workers=2)
    args, env = printed_run(tmp_path, train_examples=160, eval_examples=40, image_size=32, num_classes=10)
    params = [
        "Trainer.strategy = 'multi_worker_mirrored'",
        "Trainer.steps_per_epoch = None",  # an epoch is one pass: each example once
        "Trainer.batch_size = 16",
        "InputPipeline.eval_batch_size = 40",
        "Trainer.cluster_timeout = 60",
    ]
    served = params + [f"InputPipeline.data_service = '{address}'", "InputPipeline.data_service_timeout = 120"]

    def run(model_dir, params, epochs):
        """The records each training worker decoded."""
        for index in (0, 1):
            cluster.start(index, model_dir, [*params, f"Trainer.epochs = {epochs}"], args=args, **env)
        results = cluster.finish().values()
        for code, out, err, _ in results:
            assert code == 0, err
            said = f"Training images come from the tf.data service at {address}, in 2 lane(s) per worker." in out
            assert said == (params is served), out
        return [printed(err) for _, _, err, _ in results]

    # One epoch, then a second one by resuming the run: the service reads the whole split once
    # in each, the training hosts nothing.
    for epoch in (1, 2):
        before = [len(printed(worker.stderr())) for worker in workers]
        assert run(tmp_path / "served", served, epoch) == [[], []]
        decoded = [printed(worker.stderr())[count:] for worker, count in zip(workers, before, strict=True)]
        assert sorted(sum(decoded, [])) == list(range(160)), (epoch, decoded)
    local = run(tmp_path / "local", params, 2)
    assert sorted(sum(local, [])) == sorted(list(range(160)) * 2)  # without the service: each half of each batch
    for want, got in zip(metrics(tmp_path / "local"), metrics(tmp_path / "served"), strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-6, abs=1e-7), key


def test_a_service_worker_lost_mid_epoch_ends_training_in_one_line_and_the_run_resumes(tmp_path, cluster, data_service):
    """A service worker killed mid-epoch: the trainer, which would wait for its batches without
    end, exits with `CLUSTER_ERROR_EXIT_CODE` and one line after `data_service_timeout`; with a
    new service worker the same command resumes, on the batches of a run without the service."""
    from resnet.training.distribution import CLUSTER_ERROR_EXIT_CODE

    address, (worker,) = data_service(workers=1)
    args, env = printed_run(tmp_path, train_examples=960, eval_examples=40, image_size=32, num_classes=10)
    params = [
        "Trainer.epochs = 1",
        "Trainer.steps_per_epoch = 60",
        "Trainer.batch_size = 16",
        "Trainer.backup_every_steps = 2",
        "InputPipeline.eval_batch_size = 40",
    ]
    served = params + [f"InputPipeline.data_service = '{address}'", "InputPipeline.data_service_timeout = 15"]
    model_dir = tmp_path / "served"
    trainer = cluster.start(0, model_dir, served, args=args, alone=True, **env)
    wait_for_backup(model_dir, [trainer], minimum_step=2)
    worker.process.kill()
    worker.process.wait(timeout=20)
    [(code, _, err, _)] = cluster.finish(timeout=120).values()
    assert code == CLUSTER_ERROR_EXIT_CODE, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        f"error: No training batch came from the tf.data service at {address} within "
        "`InputPipeline.data_service_timeout`=15 s: a service worker probably stopped"
    ), err
    assert "The newest backup, " in last and "run the same command to resume from there." in last, last
    stopped_at = int(latest_backup(model_dir).rsplit("-", 1)[1])
    assert 2 <= stopped_at < 60

    data_service.add_worker(address)
    cluster.start(0, model_dir, served, args=args, alone=True, **env)
    [(code, _, err, _)] = cluster.finish(timeout=300).values()
    assert code == 0, err
    cluster.start(0, tmp_path / "local", params, args=args, alone=True, **env)
    [(code, _, err, _)] = cluster.finish(timeout=300).values()
    assert code == 0, err
    [want], [got] = metrics(tmp_path / "local"), metrics(model_dir)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-6, abs=1e-7), key
