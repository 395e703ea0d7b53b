"""A cluster of workers: setting it up, a worker that never starts, a worker lost mid-training,
and a stop on SIGTERM that every worker agrees on.

The multi-process tests run real two-worker MultiWorkerMirroredStrategy clusters on 127.0.0.1,
each worker a small script driven through `resnet.training.distribution`.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
import tensorflow as tf
from test_internals import HEARTBEATS_STOPPED, LEADER_GONE, RELAYED

from resnet.training import distribution

WORKER = textwrap.dedent(
    r"""
    import os
    import sys
    import time

    import tensorflow as tf

    from resnet import _internals
    from resnet.training import distribution

    steps, backup_dir, cluster_timeout = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    try:
        strategy = distribution.setup("multi_worker_mirrored", cluster_timeout=cluster_timeout)
    except distribution.ClusterError as error:
        # What TensorFlow's own message (the error's context) names, for the canary of the parse.
        print(f"tensorflow named {_internals.lost_tasks(str(error.__context__))}", flush=True)
        distribution.exit_process(distribution.CLUSTER_ERROR_EXIT_CODE, f"error: {error}")
    name = distribution.task_name(strategy)
    with strategy.scope():
        weights = tf.Variable(tf.ones((4, 4)))
        step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(weights=weights, step=step)
    directory = backup_dir if distribution.is_chief(strategy) else os.path.join(backup_dir, name.replace(" ", "_"))
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=1)


    @tf.function
    def train_step():
        def replica_step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.matmul(tf.ones((2, 4)), weights))
            gradient = tf.distribute.get_replica_context().all_reduce("sum", tape.gradient(loss, weights))
            weights.assign_sub(1e-3 * gradient)
            return loss

        return strategy.reduce("sum", strategy.run(replica_step), axis=None)


    try:
        with distribution.reraise_as_cluster_error(strategy), distribution.StopSignal(strategy) as stop:
            latest = tf.train.latest_checkpoint(backup_dir)
            if latest:
                checkpoint.restore(latest)
            print(f"{name} starts at steps {distribution.agree(strategy, int(step.numpy()))}", flush=True)
            gather = strategy.resnet_gather  # traced once, kept on the strategy
            while int(step.numpy()) < steps:
                train_step()
                step.assign_add(1)
                print(f"{name} step {int(step.numpy())}", flush=True)
                if stop.agreed():
                    manager.save(checkpoint_number=int(step.numpy()))
                    print(f"{name} stopped at step {int(step.numpy())}, signalled {stop.received}", flush=True)
                    sys.exit(distribution.PREEMPTED_EXIT_CODE)
                time.sleep(0.05)
    except distribution.ClusterError as error:
        print(f"{name} tensorflow named {_internals.lost_tasks(str(error.__context__))}", flush=True)
        # The health check that names the lost worker when TensorFlow's message does not.
        unnamed = tf.errors.UnavailableError(None, None, "Collective ops is aborted by: (no task named)")
        print(f"{name} probed {list(distribution.cluster_error(unnamed, strategy).lost)}", flush=True)
        distribution.exit_process(distribution.CLUSTER_ERROR_EXIT_CODE, f"error: {error}")
    print(f"{name} finished at step {int(step.numpy())}, gather kept {strategy.resnet_gather is gather}", flush=True)
    """
)


def cluster_strategy(task_id: int = 1) -> SimpleNamespace:
    """Stands in for a strategy of worker `task_id` in a three-worker cluster."""
    cluster = tf.train.ClusterSpec({"worker": ["localhost:1111", "localhost:2222", "localhost:3333"]})
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, task_type="worker", task_id=task_id)
    return SimpleNamespace(cluster_resolver=resolver)


@pytest.mark.parametrize(
    "argument, expected",
    [
        (
            dict(strategy="tpu"),
            "`Trainer.strategy` must be one of 'default', 'mirrored', 'multi_worker_mirrored'; received 'tpu'",
        ),
        (dict(logical_cpus=0), "`Trainer.logical_cpus` must be an integer >= 1; received 0"),
        (dict(cluster_timeout=0), "`Trainer.cluster_timeout` must be a number of seconds > 0; received 0"),
        (dict(cluster_timeout="60"), "`Trainer.cluster_timeout` must be a number of seconds > 0; received '60'"),
        (dict(cluster_timeout=True), "`Trainer.cluster_timeout` must be a number of seconds > 0; received True"),
    ],
)
def test_setup_rejects_invalid_arguments(argument, expected):
    with pytest.raises(ValueError) as caught:
        distribution.setup(**argument)
    assert expected in str(caught.value)


def test_single_process_helpers():
    strategy = distribution.setup("default")
    assert distribution.setup("default", cluster_timeout=5) is strategy
    assert distribution.task_name(strategy) == ""
    assert distribution.is_chief(strategy)
    assert distribution.agree(strategy, 7) == (7, 7)
    assert distribution.cluster_error(tf.errors.UnavailableError(None, None, LEADER_GONE), strategy) is None


def test_task_names_and_chief():
    assert distribution.task_name(cluster_strategy(1)) == "worker 1"
    assert distribution.is_chief(cluster_strategy(0)) and not distribution.is_chief(cluster_strategy(1))


@pytest.mark.parametrize(
    "error_class, message, task_id, lost",
    [
        (tf.errors.UnavailableError, HEARTBEATS_STOPPED, 0, ["worker 2 (localhost:3333)"]),
        (tf.errors.UnavailableError, RELAYED, 1, ["worker 2 (localhost:3333)"]),
        (tf.errors.DeadlineExceededError, LEADER_GONE, 1, ["worker 0 (localhost:1111)"]),
    ],
)
def test_cluster_error_names_the_lost_worker(error_class, message, task_id, lost):
    error = distribution.cluster_error(error_class(None, None, message), cluster_strategy(task_id))
    assert isinstance(error, distribution.ClusterError)
    assert list(error.lost) == lost
    assert str(error) == (
        f"Worker {task_id} lost {lost[0]} of the cluster ({error_class.__name__}). Restart all workers with "
        "the same command; the run resumes from its last backup."
    )


@pytest.mark.parametrize(
    "error",
    [
        ValueError("Collective ops is aborted by: not a TensorFlow error"),
        tf.errors.InvalidArgumentError(None, None, "Collective ops is aborted by: an invalid argument"),
        tf.errors.UnavailableError(None, None, "Error executing an HTTP request: Connection reset by peer"),
    ],
)
def test_cluster_error_leaves_other_errors(error):
    assert distribution.cluster_error(error, cluster_strategy()) is None


def test_reraise_as_cluster_error():
    strategy = cluster_strategy(0)
    with pytest.raises(distribution.ClusterError) as caught:
        with distribution.reraise_as_cluster_error(strategy):
            raise tf.errors.UnavailableError(None, None, HEARTBEATS_STOPPED)
    assert "\n" not in str(caught.value) and caught.value.__suppress_context__
    other = tf.errors.InvalidArgumentError(None, None, "bad shape")
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        with distribution.reraise_as_cluster_error(strategy):
            raise other
    assert caught.value is other


def test_stop_signal_turns_sigterm_into_an_agreed_stop():
    strategy = distribution.setup("default")
    before = signal.getsignal(signal.SIGTERM)
    with distribution.StopSignal(strategy) as stop:
        assert not stop.agreed()
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not stop.received and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.received and stop.agreed()
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_setup_is_idempotent_and_fixed_once_devices_exist():
    script = textwrap.dedent(
        """
        import json, os
        import tensorflow as tf
        from resnet.training import distribution

        errors = []
        def error(**arguments):
            try:
                distribution.setup(**arguments)
            except ValueError as caught:
                errors.append(str(caught))

        os.environ.pop("TF_CONFIG", None)
        error(strategy="multi_worker_mirrored")
        cluster = {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}
        os.environ["TF_CONFIG"] = json.dumps(cluster)
        error(strategy="multi_worker_mirrored")
        first = distribution.setup("default")  # no op has run: the devices may still change
        strategy = distribution.setup("mirrored", logical_cpus=2)
        same = distribution.setup("mirrored", logical_cpus=2, cluster_timeout=1) is strategy
        tf.constant(1.0) + 1.0
        error(strategy="default")
        error(strategy="mirrored", logical_cpus=3)
        same_after = distribution.setup("mirrored", logical_cpus=2) is strategy
        print(json.dumps({"replicas": strategy.num_replicas_in_sync, "changed": first is not strategy,
                          "same": [same, same_after], "errors": errors}))
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2 and report["changed"] and report["same"] == [True, True]
    needs_config, wrong_task, *changed = report["errors"]
    assert "needs the TF_CONFIG environment variable" in needs_config
    assert "TF_CONFIG's task {'type': 'ps', 'index': 0} must be a 'chief' or 'worker' task" in wrong_task
    assert len(changed) == 2
    for message in changed:
        assert message.startswith(
            "Devices are already set up in this process for `Trainer.strategy`='mirrored', "
            "`Trainer.logical_cpus`=2; they cannot change to "
        )


# ----------------------------------------------------------------------------- real clusters


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Cluster:
    """Two workers on 127.0.0.1 running the WORKER script; every process is killed at the end."""

    def __init__(self, directory):
        self.directory = directory
        self.script = directory / "worker.py"
        self.script.write_text(WORKER)
        self.addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
        self.processes: list[subprocess.Popen] = []
        self.logs: dict[int, tuple] = {}

    def start(self, index: int, steps: int = 100_000, cluster_timeout: float = 60, run: int = 0) -> subprocess.Popen:
        tf_config = {"cluster": {"worker": self.addresses}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(tf_config))
        out, err = (self.directory / f"worker{index}.{run}.{kind}" for kind in ("out", "err"))
        with open(out, "w") as stdout, open(err, "w") as stderr:
            process = subprocess.Popen(
                [sys.executable, str(self.script), str(steps), str(self.directory / "backup"), str(cluster_timeout)],
                stdout=stdout,
                stderr=stderr,
                env=env,
            )
        self.processes.append(process)
        self.logs[process.pid] = (out, err)
        return process

    def output(self, process: subprocess.Popen) -> tuple[str, str]:
        return tuple(path.read_text() for path in self.logs[process.pid])

    def wait_for(self, process: subprocess.Popen, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output(process)[0]:
            assert process.poll() is None, f"exited with {process.returncode} before {text!r}: {self.output(process)}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s: {self.output(process)}"
            time.sleep(0.2)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path):
    started = Cluster(tmp_path)
    yield started
    started.stop_all()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.slow
@pytest.mark.parametrize("present", [0, 1])
def test_a_worker_whose_peer_never_starts_waits_then_fails_clearly(cluster, present):
    missing = 1 - present
    started = time.monotonic()
    worker = cluster.start(present, cluster_timeout=5)
    worker.wait(timeout=120)
    elapsed = time.monotonic() - started
    out, err = cluster.output(worker)
    assert (
        f"worker {present} ({cluster.addresses[present]}) is waiting up to 5 s for the other 1 worker of the "
        f"cluster: worker {missing} ({cluster.addresses[missing]})." in out
    )
    assert worker.returncode == distribution.CLUSTER_ERROR_EXIT_CODE, err
    assert error_lines(err) == [
        f"error: The cluster did not form within `Trainer.cluster_timeout`=5 s: worker {missing} "
        f"({cluster.addresses[missing]}) did not join. Start every worker with the same command (and the same "
        "TF_CONFIG cluster)."
    ]
    assert f"tensorflow named ['/job:worker/replica:0/task:{missing}']" in out, (
        f"resnet._internals.lost_tasks: TensorFlow {tf.__version__} changed its message about a cluster that did "
        f"not form, which no longer names worker {missing}; adapt the parse (output: {out})"
    )
    assert "Traceback" not in err
    assert 5 <= elapsed < 60


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1])
def test_the_survivor_of_a_killed_worker_exits_clearly(cluster, victim):
    survivor = 1 - victim
    workers = [cluster.start(0), cluster.start(1)]
    for index, worker in enumerate(workers):
        cluster.wait_for(worker, f"worker {index} step 5")
    workers[victim].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    workers[survivor].wait(timeout=60)
    detection = time.monotonic() - killed
    out, err = cluster.output(workers[survivor])
    lost = f"worker {victim} ({cluster.addresses[victim]})"
    assert workers[survivor].returncode == distribution.CLUSTER_ERROR_EXIT_CODE, err
    assert error_lines(err) == [
        f"error: Worker {survivor} lost {lost} of the cluster (UnavailableError). Restart all workers with the "
        "same command; the run resumes from its last backup."
    ]
    assert "Traceback" not in err
    assert f"worker {survivor} probed ['{lost}']" in out
    assert f"worker {survivor} tensorflow named ['/job:worker/replica:0/task:{victim}']" in out, (
        f"resnet._internals.lost_tasks: TensorFlow {tf.__version__} changed its message about a lost worker, "
        f"which no longer names worker {victim}; record the new message in tests/test_internals.py and adapt "
        f"the parse (output: {out})"
    )
    assert detection < 60


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_at_the_same_step_and_they_resume(cluster):
    workers = [cluster.start(0), cluster.start(1)]
    for index, worker in enumerate(workers):
        cluster.wait_for(worker, f"worker {index} step 5")
    workers[1].send_signal(signal.SIGTERM)
    for worker in workers:
        worker.wait(timeout=60)
    outputs = [cluster.output(worker) for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == distribution.PREEMPTED_EXIT_CODE, err
    stops = [[line for line in out.splitlines() if " stopped at step " in line] for out, _ in outputs]
    step = int(stops[0][0].split()[5].rstrip(","))
    assert stops == [
        [f"worker 0 stopped at step {step}, signalled False"],
        [f"worker 1 stopped at step {step}, signalled True"],
    ]
    assert tf.train.latest_checkpoint(str(cluster.directory / "backup")).endswith(f"ckpt-{step}")

    # The scheduler restarts every worker with the same command: they resume where they stopped.
    workers = [cluster.start(index, steps=step + 3, run=1) for index in range(2)]
    for index, worker in enumerate(workers):
        worker.wait(timeout=120)
        out, err = cluster.output(worker)
        assert worker.returncode == 0, err
        assert f"worker {index} starts at steps ({step}, {step})" in out
        assert f"worker {index} finished at step {step + 3}, gather kept True" in out
