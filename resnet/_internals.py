"""What the package needs from TensorFlow and Keras that they offer no public API for.

Nothing else in `resnet` uses another library's private names or parses its error texts. Each
entry below says what it relies on and why no public API serves. Checked against TensorFlow
2.21, Keras 3.15 and gin-config 0.5.0 (gin needs nothing here: `resnet.registry` matches gin's
`@Name` references through the public `gin.get_configurable`). `tests/test_internals.py` runs
each entry against the installed versions and fails naming it when an upgrade changes it.

Private functions:

* `flatten_layers`: Keras' `Layer._flatten_layers`, every layer inside a layer. Keras 3 has no
  public recursive walk (`Model.layers` is one level and a plain `Layer` lists no sublayers), and
  a walk over public attributes misses sublayers held in private ones (a `ResNet`'s feature
  model; inside Keras' own layers, e.g. `MultiHeadAttention`'s dense projections).
* `devices_initialized`: TensorFlow's eager context's `_initialized`. Every public function that
  could tell (`tf.config.list_logical_devices`, ...) initializes the devices itself, and the
  setters that refuse a change once they exist accept a value equal to the current one.
* `configure_coordination_service`, `check_peer_health`: the eager context's coordination-
  service settings and peer health check. `MultiWorkerMirroredStrategy` configures the service
  itself only when nothing did, without a registration timeout or barrier (a worker whose peers
  never start waits forever), and offers no health check.

A copy of a private format:

* `variable_checkpoint_key`, `variable_object_path`: how `tf.train.Checkpoint` names a
  variable's value in the file (TensorFlow's `trackable_utils.escape_local_name` and the
  `.ATTRIBUTES/VARIABLE_VALUE` suffix). `tf.train.list_variables` and the checkpoint reader
  give only these keys, and no public function maps an object path to its key or back.

Texts of TensorFlow's errors, where the error's type does not say what happened:

* `lost_tasks`, `is_cluster_message`: a lost worker surfaces as an `UnavailableError` (or one of
  five other types) whose text alone tells it from, say, an unreachable file server, and alone
  names the task that was lost.
* `tflite_missing_ops`: the TFLite converter raises one `ConverterError` (not exported by
  `tf.lite`) for every failure; only its text names the ops TFLite's builtins lack.
* `reports_no_space`: TensorFlow's file systems report a full disk or an exhausted quota as a
  `ResourceExhaustedError` (also raised when memory runs out) whose text is the operating
  system's message, without the error number.
"""

from __future__ import annotations

import re

import keras

# ----------------------------------------------------------------------------- Keras


def flatten_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """`layer` and every layer inside it, at any depth, each once."""
    return list(layer._flatten_layers(include_self=True, recursive=True))  # pylint: disable=protected-access


# ----------------------------------------------------------------------------- TensorFlow's runtime
# TensorFlow's private modules are imported where they are used: model code imports this module
# too, and depends on Keras only.


def devices_initialized() -> bool:
    """Whether TensorFlow has fixed this process's devices (it does when it runs its first op)."""
    from tensorflow.python.eager import context

    return context.context()._initialized  # pylint: disable=protected-access


def configure_coordination_service(
    leader: str, jobs: dict[str, int], register_timeout: float, heartbeat_timeout: float
) -> None:
    """Configures the coordination service of a multi-worker cluster; call it before the strategy.

    Args:
        leader: The task that runs the service, e.g. "/job:chief/replica:0/task:0".
        jobs: The number of tasks of each job that takes part (e.g. `{"worker": 2}`).
        register_timeout: Seconds a task waits at start for all tasks to register (a barrier:
            none starts before all have joined).
        heartbeat_timeout: Seconds without a heartbeat after which a task counts as lost.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=leader,
        cluster_register_timeout_in_ms=int(register_timeout * 1000),
        heartbeat_timeout_in_ms=int(heartbeat_timeout * 1000),
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=n) for job, n in jobs.items()],
    )
    context.context().coordination_service.cluster_register_with_barrier = True


def check_peer_health(task: str, timeout: float) -> None:
    """Raises if the collective peer `task` ("/job:worker/replica:0/task:1") does not answer
    within `timeout` seconds: `tf.errors.UnavailableError` (down), `FailedPreconditionError`
    (restarted) or `DeadlineExceededError`. Only in a multi-worker cluster."""
    from tensorflow.python.eager import context

    context.context().check_collective_ops_peer_health(task, int(timeout * 1000))


# ----------------------------------------------------------------------------- checkpoint keys

_VARIABLE_VALUE = ".ATTRIBUTES/VARIABLE_VALUE"
_ESCAPED = re.compile(r"\.(.)")


def variable_checkpoint_key(*path: str) -> str:
    """The key under which `tf.train.Checkpoint` stores the variable at object `path`.

    >>> variable_checkpoint_key("model", "stage1/block1/conv1/kernel")
    'model/stage1.Sblock1.Sconv1.Skernel/.ATTRIBUTES/VARIABLE_VALUE'
    """
    return "/".join(name.replace(".", "..").replace("/", ".S") for name in path) + "/" + _VARIABLE_VALUE


def variable_object_path(key: str) -> tuple[str, ...] | None:
    """The object path of the variable stored under checkpoint `key` (the inverse of
    `variable_checkpoint_key`), or None if `key` holds no variable's value."""
    if not key.endswith("/" + _VARIABLE_VALUE):
        return None
    escaped = key[: -len(_VARIABLE_VALUE) - 1].split("/")
    return tuple(_ESCAPED.sub(lambda match: "/" if match.group(1) == "S" else match.group(1), name) for name in escaped)


# ----------------------------------------------------------------------------- error texts

# TensorFlow lists the tasks it lost after these words ("...stopped sending heartbeats):\n/job:...").
_LISTED_TASKS = re.compile(r"(?:stopped sending heartbeats\)|timed out task names):((?:\s*/job:[\w:/]+)+)")
# The peer an RPC failed to reach.
_REMOTE_TASK = re.compile(r"remote target (/job:\w+/(?:replica:\d+/)?task:\d+)")
# Words of TensorFlow's messages about the cluster (a data error may also be "Unavailable").
_CLUSTER_WORDS = re.compile(
    r"Collective ops is aborted|remote target /job:|[Cc]oordination ?[Ss]ervice|stopped sending heartbeats|"
    r"Barrier timed out"
)
_TFLITE_MISSING_OP = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")
# The operating system's messages (strerror) for ENOSPC and EDQUOT.
_NO_SPACE_WORDS = ("No space left on device", "Disk quota exceeded")


def is_cluster_message(message: str) -> bool:
    """Whether TensorFlow's error `message` is about the workers of a cluster."""
    return _CLUSTER_WORDS.search(message) is not None


def lost_tasks(message: str) -> list[str]:
    """The tasks ("/job:worker/replica:0/task:2") TensorFlow's error `message` says are lost, the
    first named first; empty if it names none."""
    listed = _LISTED_TASKS.search(message)
    if listed:
        return listed.group(1).split()
    # Each worker relaying the error appends its own "remote target": the first is the source.
    remote = _REMOTE_TASK.search(message)
    return [remote.group(1)] if remote else []


def tflite_missing_ops(message: str) -> list[str]:
    """The TensorFlow ops (e.g. "ScaleAndTranslate") the TFLite converter's error `message` says
    TFLite's builtins lack, sorted, each once."""
    return sorted(set(_TFLITE_MISSING_OP.findall(message)))


def reports_no_space(message: str) -> bool:
    """Whether an error `message` of TensorFlow's file systems says the storage is full."""
    return any(words in message for words in _NO_SPACE_WORDS)
