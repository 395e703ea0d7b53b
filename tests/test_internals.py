"""Canaries for `resnet._internals`: each entry run against the installed TensorFlow and Keras.

A failure names the entry, the library and version that changed it, and what to check; the
entry's docstring in `resnet._internals` says why no public API serves. The messages of a
multi-worker cluster only come from a real one: `tests/training/test_cluster.py` parses them in
its slow tests (a lost worker, a peer that never starts) and here the messages TensorFlow 2.21
gave are parsed (they are recorded below).
"""

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest
import tensorflow as tf

import resnet
from resnet import _internals

TENSORFLOW = f"TensorFlow {tf.__version__}"
KERAS = f"Keras {keras.__version__}"

# Messages TensorFlow 2.21 gave in a cluster {"worker": [":1111", ":2222", ":3333"]} (abridged).
HEARTBEATS_STOPPED = (
    "Graph execution error:\n\nDetected at node CollectiveReduceV2 defined at (most recent call last):\n"
    "Collective ops is aborted by: Error reported from /job:worker/task:2: The following tasks are "
    "unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:2\nThe tasks have crashed. Check "
    "the task logs for an earlier error, or scheduler events (e.g. preemption, eviction) to debug further.\n"
    "The error could be from a previous operation. Restart your program to reset.\n\t [[{{node CollectiveReduceV2}}]]"
)
RELAYED = (
    "Graph execution error:\n\nCollective ops is aborted by: Collective ops is aborted by: failed to connect "
    "to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:3333: Failed to connect to remote host: Connection "
    "refused\nAdditional GRPC error information from remote target /job:worker/replica:0/task:2 while calling "
    "/tensorflow.WorkerService/RecvBuf:\n:UNKNOWN:Error received from peer\nThe error could be from a previous "
    "operation. Restart your program to reset.\nAdditional GRPC error information from remote target "
    "/job:worker/replica:0/task:0 while calling /tensorflow.WorkerService/CompleteInstance:\n:UNKNOWN:Error "
    "received from peer\n\t [[{{node allgather/CollectiveGatherV2}}]]"
)
LEADER_GONE = (
    "Graph execution error:\n\nCollective ops is aborted by: Failed to send RPC to coordination service. "
    "Either the leader task was preempted/died/restarted unexpectedly or this task is experiencing network "
    "issues.\nAdditional GRPC error information from remote target /job:worker/replica:0/task:0 while calling "
    "/tensorflow.CoordinationService/Heartbeat:\n:UNKNOWN:Error received from peer"
)


@contextlib.contextmanager
def canary(internal: str, library: str, changed: str, check: str):
    """Turns any failure inside into one that says which internal an upgrade broke."""
    try:
        yield
    except Exception as error:  # noqa: BLE001  (assertion or API error: both mean a change)
        pytest.fail(
            f"resnet._internals.{internal}: {library} changed {changed}; {check} ({type(error).__name__}: {error})",
            pytrace=False,
        )


def test_flatten_layers():
    class Holder(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self._hidden = keras.layers.Dense(2)  # sublayers in a private attribute and in a list
            self.listed = [keras.layers.Dense(3)]

        def call(self, x):
            return self.listed[0](self._hidden(x))

    inputs = keras.Input((4,))
    holder = Holder()
    outer = keras.Model(inputs, holder(inputs))
    model = resnet.build("cifar/resnet20")
    with canary(
        "flatten_layers",
        KERAS,
        "Layer._flatten_layers(include_self=True, recursive=True)",
        "fold_batch_norm and count_macs need every layer inside a model, at any depth, each once",
    ):
        found = _internals.flatten_layers(outer)
        assert len({id(layer) for layer in found}) == len(found), "a layer is listed twice"
        expected = [outer, holder, holder._hidden, holder.listed[0]]
        assert all(any(layer is wanted for layer in found) for wanted in expected), [layer.name for layer in found]
        kernels = {id(layer.kernel) for layer in _internals.flatten_layers(model) if isinstance(layer, resnet.Conv2D)}
        assert kernels == {id(w) for w in model.weights if w.path.endswith("kernel") and len(w.shape) == 4}, (
            "convolutions of the ResNet are missing"
        )


@pytest.fixture(scope="module")
def fresh_process():
    """What `devices_initialized` and `configure_coordination_service` do in a new process."""
    script = textwrap.dedent(
        """
        import json

        import tensorflow as tf
        from tensorflow.python.eager import context

        from resnet import _internals

        before = _internals.devices_initialized()
        _internals.configure_coordination_service("/job:chief/replica:0/task:0", {"chief": 1, "worker": 2}, 5.5, 10)
        config = context.context().coordination_service
        tf.constant(1.0) + 1.0
        print(json.dumps({
            "before_an_op": before,
            "after_an_op": _internals.devices_initialized(),
            "config": {
                "service_type": config.service_type,
                "service_leader": config.service_leader,
                "cluster_register_timeout_in_ms": config.cluster_register_timeout_in_ms,
                "heartbeat_timeout_in_ms": config.heartbeat_timeout_in_ms,
                "cluster_register_with_barrier": config.cluster_register_with_barrier,
                "coordinated_jobs": [[job.name, job.num_tasks] for job in config.coordinated_job_list],
            },
        }))
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    return result


def _report(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a new TensorFlow process
def test_devices_initialized(fresh_process):
    with canary(
        "devices_initialized",
        TENSORFLOW,
        "the eager context's `_initialized`",
        "distribution.setup needs to know whether TensorFlow has fixed the process's devices",
    ):
        report = _report(fresh_process)
        assert (report["before_an_op"], report["after_an_op"]) == (False, True), report


@pytest.mark.slow  # a new TensorFlow process
def test_configure_coordination_service(fresh_process):
    with canary(
        "configure_coordination_service",
        TENSORFLOW,
        "context.configure_coordination_service or CoordinationServiceConfig",
        "a multi-worker cluster needs its registration timeout, barrier and heartbeat timeout "
        "(run tests/training/test_cluster.py -m slow)",
    ):
        assert _report(fresh_process)["config"] == {
            "service_type": "standalone",
            "service_leader": "/job:chief/replica:0/task:0",
            "cluster_register_timeout_in_ms": 5500,
            "heartbeat_timeout_in_ms": 10000,
            "cluster_register_with_barrier": True,
            "coordinated_jobs": [["chief", 1], ["worker", 2]],
        }


def test_check_peer_health():
    """Without a cluster the runtime refuses the check; the real one is in
    tests/training/test_cluster.py::test_the_survivor_of_a_killed_worker_exits_clearly ("probed")."""
    with canary(
        "check_peer_health",
        TENSORFLOW,
        "context.check_collective_ops_peer_health(task, timeout_in_ms)",
        "a lost worker that TensorFlow's message does not name is found by this health check",
    ):
        with pytest.raises(tf.errors.OpError):
            _internals.check_peer_health("/job:worker/replica:0/task:1", 0.1)


def test_variable_checkpoint_key(tmp_path):
    names = ["stage1/block1/conv1/kernel", "bn.moving_mean", "odd.S/name..with/.dots."]
    checkpoint = tf.train.Checkpoint(model={name: tf.Variable(float(i)) for i, name in enumerate(names)})
    path = checkpoint.write(str(tmp_path / "ckpt"))
    with canary(
        "variable_checkpoint_key",
        TENSORFLOW,
        "the keys tf.train.Checkpoint stores variables under",
        "restoring checks every model variable against the file by its key (see trackable_utils.escape_local_name)",
    ):
        keys = {key for key, _ in tf.train.list_variables(path) if key.startswith("model/")}
        assert keys == {_internals.variable_checkpoint_key("model", name) for name in names}, sorted(keys)
        assert sorted(_internals.variable_object_path(key) for key in keys) == sorted(("model", n) for n in names)
        assert _internals.variable_object_path("_CHECKPOINTABLE_OBJECT_GRAPH") is None


def test_cluster_messages():
    """TensorFlow 2.21's messages (recorded); the slow tests of tests/training/test_cluster.py parse
    real ones from a two-worker cluster."""
    with canary(
        "lost_tasks and is_cluster_message",
        TENSORFLOW,
        "its messages about a lost worker",
        "record new ones from tests/training/test_cluster.py -m slow",
    ):
        assert _internals.lost_tasks(HEARTBEATS_STOPPED) == ["/job:worker/replica:0/task:2"]
        assert _internals.lost_tasks(RELAYED) == ["/job:worker/replica:0/task:2"]  # the first remote target
        assert _internals.lost_tasks(LEADER_GONE) == ["/job:worker/replica:0/task:0"]
        assert all(_internals.is_cluster_message(m) for m in (HEARTBEATS_STOPPED, RELAYED, LEADER_GONE))
        assert not _internals.is_cluster_message("Error executing an HTTP request: Connection reset by peer")
        assert _internals.lost_tasks("Collective ops is aborted by: (no task named)") == []


def test_tflite_missing_ops(capfd):
    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
    def antialiased(images):
        return tf.image.resize(images, [4, 4], antialias=True)  # ScaleAndTranslate: no TFLite builtin

    converter = tf.lite.TFLiteConverter.from_concrete_functions([antialiased.get_concrete_function()], antialiased)
    with canary(
        "tflite_missing_ops",
        TENSORFLOW,
        "the TFLite converter's error for an op without a builtin",
        "resnet-export must name the ops TFLite lacks",
    ):
        with pytest.raises(Exception) as caught:
            converter.convert()
        assert _internals.tflite_missing_ops(str(caught.value)) == ["ScaleAndTranslate"], str(caught.value)[:2000]
    capfd.readouterr()  # the converter's own report on descriptor 2


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux), a device that is always full")
def test_reports_no_space():
    with canary(
        "reports_no_space",
        TENSORFLOW,
        "how its file systems report a full disk",
        "a full disk while saving must stop training with StorageFull",
    ):
        with pytest.raises(tf.errors.OpError) as caught:
            with tf.io.gfile.GFile("/dev/full", "wb") as f:
                f.write(b"0" * 1024)
        assert _internals.reports_no_space(str(caught.value)), str(caught.value)
