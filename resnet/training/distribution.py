"""Devices and distribution strategies, chosen by name in gin, and the life of a worker cluster.

Batch sizes in this project are global: `Trainer.batch_size = 256` on 8 replicas gives each
replica 32 images per step, and the learning rate is that of a 256-image step.

`setup` is the one place devices and the strategy are set up. With "multi_worker_mirrored"
every worker runs the same command with its own `TF_CONFIG`; the workers train in lockstep, so
none can go on without the others. This module makes the cluster fail fast and clearly instead
of hanging, and leaves the restart to the scheduler:

* a worker waits at most `cluster_timeout` seconds for its peers to join, then raises
  `ClusterError` naming those that did not;
* a worker that dies is noticed by the others at their next collective (within a second when
  its process is gone, within about `HEARTBEAT_TIMEOUT` seconds when it hangs or its machine
  is unreachable), and `reraise_as_cluster_error` turns TensorFlow's error into a one-line
  `ClusterError` naming the lost worker: print it and `exit_process` with
  `CLUSTER_ERROR_EXIT_CODE`;
* SIGTERM (a preemption notice) to any worker becomes, through `StopSignal`, a stop that every
  worker agrees on at the same step: each saves its backup there and exits with
  `PREEMPTED_EXIT_CODE`. Restarting the workers with the same command resumes the run.

It keeps one piece of process state, what `setup` set up (TensorFlow fixes the devices at the
first op, so `setup` must know what it chose, to return it again or refuse other settings).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import NamedTuple, NoReturn

import tensorflow as tf

from resnet import _internals
from resnet.validation import check_choice, check_int

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")
DEFAULT_CLUSTER_TIMEOUT = 600.0
"""Seconds a worker waits for all workers of its cluster to start (`Trainer.cluster_timeout`)."""
HEARTBEAT_TIMEOUT = 10.0
"""Seconds without a heartbeat after which a worker counts as lost (TensorFlow's default)."""
CLUSTER_ERROR_EXIT_CODE = 75
"""Exit code of a worker whose cluster did not form or lost a worker (EX_TEMPFAIL: restart all)."""
PREEMPTED_EXIT_CODE = 42
"""Exit code of a worker that saved its backup and stopped on SIGTERM (as TensorFlow's
`PreemptionCheckpointHandler`): restart all workers with the same command to resume."""

_COORDINATED_JOBS = ("chief", "worker")
# Errors a failed collective or the coordination service raises when a worker is gone.
_CLUSTER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.InternalError,
    tf.errors.FailedPreconditionError,
)
_PEER_PROBE_TIMEOUT = 2.0  # seconds
_GATHER_ATTRIBUTE = "resnet_gather"  # the attribute of a strategy that keeps `agree`'s traced function


class _Devices(NamedTuple):
    """What `setup` set up: its settings (strategy, logical_cpus, cluster_timeout or None) and strategy."""

    settings: tuple[str, int | None, float | None]
    strategy: tf.distribute.Strategy


# This process's devices as `setup` last set them up, None before: once TensorFlow has run an op
# they cannot change, and `setup` checks every later call against this record.
_devices: _Devices | None = None


class ClusterError(RuntimeError):
    """The workers of a multi-worker run did not all join, or one was lost.

    The message is one line that names the workers and says what to do: restart every worker
    with the same command (a run resumes from its last backup).

    Example:
        >>> error = ClusterError("Lost worker 1 (localhost:2222).", lost=("worker 1 (localhost:2222)",))
        >>> error.lost
        ('worker 1 (localhost:2222)',)
    """

    def __init__(self, message: str, lost: Sequence[str] = ()):
        super().__init__(message)
        self.lost = tuple(lost)


def split_cpu(logical_cpus: int) -> None:
    """Splits the host CPU into `logical_cpus` logical devices (to run `mirrored` on a CPU-only
    machine, e.g. in tests). Must run before TensorFlow initializes its devices."""
    check_int("Trainer.logical_cpus", logical_cpus)
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == logical_cpus:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    except RuntimeError as error:
        raise ValueError(
            f"`Trainer.logical_cpus`={logical_cpus} must be set before TensorFlow initializes its "
            "devices (start a new process)."
        ) from error


def check_cluster_timeout(cluster_timeout: float) -> float:
    """Returns `cluster_timeout` as a float if it is a number of seconds > 0, else raises `ValueError`."""
    if isinstance(cluster_timeout, bool) or not isinstance(cluster_timeout, (int, float)) or cluster_timeout <= 0:
        raise ValueError(f"`Trainer.cluster_timeout` must be a number of seconds > 0; received {cluster_timeout!r}.")
    return float(cluster_timeout)


def setup(
    strategy: str = "default",
    logical_cpus: int | None = None,
    cluster_timeout: float = DEFAULT_CLUSTER_TIMEOUT,
) -> tf.distribute.Strategy:
    """Sets up the devices and returns the strategy named `strategy`.

    * "default": one device.
    * "mirrored": synchronous data parallelism over all local GPUs, or over the logical CPUs
      when there is no GPU.
    * "multi_worker_mirrored": synchronous data parallelism over the workers that the
      `TF_CONFIG` environment variable describes; every worker runs the same command. This
      worker prints that it is waiting for the others, and raises `ClusterError` if they have
      not all joined within `cluster_timeout` seconds.

    Call it before any other TensorFlow op of the process: TensorFlow fixes its devices and
    collective runtime when it runs the first op. The process keeps one record of what `setup`
    set up: a call with the same arguments returns the same strategy; one with other arguments
    sets the devices up anew while no op has run, and raises `ValueError` after.

    Args:
        strategy: One of `STRATEGIES`.
        logical_cpus: Split the CPU into this many logical devices first (see `split_cpu`);
            None leaves the devices as they are.
        cluster_timeout: Seconds to wait for all workers of a multi-worker cluster to join.

    Returns:
        The strategy.

    Raises:
        ValueError: An argument is invalid, `TF_CONFIG` is missing or invalid, or devices
            were already set up otherwise in this process.
        ClusterError: The workers did not all join within `cluster_timeout` seconds.

    Example:
        >>> strategy = setup("default")
        >>> strategy.num_replicas_in_sync
        1
    """
    check_choice("Trainer.strategy", strategy, STRATEGIES)
    if logical_cpus is not None:
        check_int("Trainer.logical_cpus", logical_cpus)
    check_cluster_timeout(cluster_timeout)
    global _devices
    multi_worker = strategy == "multi_worker_mirrored"
    settings = (strategy, logical_cpus, float(cluster_timeout) if multi_worker else None)
    if _devices is not None and _devices.settings == settings:
        return _devices.strategy
    if _devices is not None and _internals.devices_initialized():
        earlier = _devices.settings
        raise ValueError(
            f"Devices are already set up in this process for `Trainer.strategy`={earlier[0]!r}, "
            f"`Trainer.logical_cpus`={earlier[1]!r}; they cannot change to {strategy!r}, {logical_cpus!r} "
            "(start a new process)."
        )
    if multi_worker and _internals.devices_initialized():
        raise ValueError(
            "`Trainer.strategy`='multi_worker_mirrored' must be set up before any other TensorFlow "
            "op runs in the process."
        )
    if logical_cpus is not None:
        split_cpu(logical_cpus)
    if strategy == "default":
        created = tf.distribute.get_strategy()
    elif strategy == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        created = tf.distribute.MirroredStrategy([d.name for d in devices])
    else:
        created = _join_cluster(float(cluster_timeout))
    _devices = _Devices(settings, created)
    return created


def _join_cluster(timeout: float) -> tf.distribute.MultiWorkerMirroredStrategy:
    """Creates the MultiWorkerMirroredStrategy of `TF_CONFIG`, waiting at most `timeout` s."""
    if "TF_CONFIG" not in os.environ:
        raise ValueError(
            "`Trainer.strategy`='multi_worker_mirrored' needs the TF_CONFIG environment variable "
            "describing the cluster and this worker's task."
        )
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    cluster = resolver.cluster_spec()
    tasks = _tasks(cluster)
    me = (resolver.task_type, resolver.task_id)
    if me not in tasks:
        raise ValueError(
            f"TF_CONFIG's task {{'type': {me[0]!r}, 'index': {me[1]!r}}} must be a 'chief' or 'worker' task "
            f"of its cluster {cluster.as_dict()!r}."
        )
    peers = [task for task in tasks if task != me]
    if peers:
        count = f"{len(peers)} worker{'s' if len(peers) > 1 else ''}"
        print(
            f"{_describe(cluster, *me)} is waiting up to {timeout:g} s for the other {count} of the cluster: "
            f"{', '.join(_describe(cluster, *peer) for peer in peers)}.",
            flush=True,
        )
    # Configured before the strategy, which then keeps it: without a registration barrier and
    # timeout, a worker whose peers never start waits forever. The service runs on the first chief,
    # else the first worker (TensorFlow's choice for a cluster without parameter servers).
    _internals.configure_coordination_service(
        leader=f"/job:{'chief' if 'chief' in cluster.jobs else 'worker'}/replica:0/task:0",
        jobs={job: cluster.num_tasks(job) for job in _COORDINATED_JOBS if job in cluster.jobs},
        register_timeout=timeout,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
    )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except _CLUSTER_ERRORS as error:
        missing = [_describe(cluster, *task) for task in _named_tasks(str(error), me) or peers]
        raise ClusterError(
            f"The cluster did not form within `Trainer.cluster_timeout`={timeout:g} s: {', '.join(missing)} did "
            "not join. Start every worker with the same command (and the same TF_CONFIG cluster).",
            lost=missing,
        ) from None


def _tasks(cluster: tf.train.ClusterSpec) -> list[tuple[str, int]]:
    """The (job, index) of every chief and worker task of `cluster`."""
    return [(job, index) for job in _COORDINATED_JOBS if job in cluster.jobs for index in range(cluster.num_tasks(job))]


def _describe(cluster: tf.train.ClusterSpec, job: str, index: int) -> str:
    """'worker 1 (host:port)'."""
    return f"{job} {index} ({cluster.task_address(job, index)})"


def _named_tasks(message: str, me: tuple[str, int]) -> list[tuple[str, int]]:
    """The peers `message` (from TensorFlow) says are lost, in order, without duplicates."""
    tasks = []
    for name in _internals.lost_tasks(message):
        device = tf.DeviceSpec.from_string(name)
        task = (device.job, device.task)
        if task != me and task not in tasks:
            tasks.append(task)
    return tasks


def _unreachable_peers(strategy: tf.distribute.Strategy) -> list[tuple[str, int]]:
    """The peers that do not answer a health check (slow: only when the error names none)."""
    resolver = strategy.cluster_resolver
    lost = []
    for job, index in _tasks(resolver.cluster_spec()):
        if (job, index) == (resolver.task_type, resolver.task_id):
            continue
        try:
            _internals.check_peer_health(f"/job:{job}/replica:0/task:{index}", _PEER_PROBE_TIMEOUT)
        except (tf.errors.UnavailableError, tf.errors.FailedPreconditionError, tf.errors.DeadlineExceededError):
            lost.append((job, index))
    return lost


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` spans several worker processes (a cluster in `TF_CONFIG`)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is not None and bool(resolver.task_type)


def workers(strategy: tf.distribute.Strategy) -> int:
    """The worker processes (chief included) that `strategy` trains on: 1 without a cluster."""
    return len(_tasks(strategy.cluster_resolver.cluster_spec())) if is_multi_worker(strategy) else 1


def cluster_error(error: BaseException, strategy: tf.distribute.Strategy) -> ClusterError | None:
    """The `ClusterError` that `error` means, or None if it is not about the cluster.

    In a multi-worker run, TensorFlow reports a lost worker as an `UnavailableError` (also
    Aborted, DeadlineExceeded, Cancelled, Internal or FailedPrecondition) from the next collective
    of each survivor, with a multi-line message and a traceback. The worker is named from the
    message, or else found by a health check of every peer.

    Args:
        error: An exception raised while training.
        strategy: The strategy the training runs under.

    Returns:
        A one-line `ClusterError` naming the lost workers, or None for any other error and for
        single-process strategies.

    Example:
        >>> cluster_error(ValueError("bad"), setup("default")) is None
        True
    """
    if isinstance(error, ClusterError):
        return error
    if not is_multi_worker(strategy) or not isinstance(error, _CLUSTER_ERRORS):
        return None
    message = str(error)
    if not _internals.is_cluster_message(message):
        return None
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec()
    tasks = _named_tasks(message, (resolver.task_type, resolver.task_id)) or _unreachable_peers(strategy)
    lost = [_describe(cluster, *task) for task in tasks]
    return ClusterError(
        f"{task_name(strategy).capitalize()} lost {', '.join(lost) or 'a peer worker'} of the cluster "
        f"({type(error).__name__}). Restart all workers with the same command; the run resumes from its "
        "last backup.",
        lost=lost,
    )


@contextlib.contextmanager
def reraise_as_cluster_error(strategy: tf.distribute.Strategy) -> Iterator[None]:
    """Turns TensorFlow's errors about a lost worker, raised inside, into a `ClusterError`.

    Wrap all of training (not only the step: the lost worker surfaces in whichever collective,
    dataset iterator or checkpoint read comes next); other errors pass unchanged.

    Example:
        >>> with reraise_as_cluster_error(setup("default")):
        ...     pass
    """
    try:
        yield
    except Exception as error:  # pylint: disable=broad-except
        converted = cluster_error(error, strategy)
        if converted is None or converted is error:
            raise
        raise converted from None


def exit_process(code: int, message: str = "") -> NoReturn:
    """Prints `message` to stderr and ends the process now with `code`, skipping cleanup.

    For a worker whose cluster is broken (`ClusterError`): a normal exit lets TensorFlow shut
    down its coordination agent, which takes a second or more and prints multi-line errors about
    the lost workers after the message. Buffered output is flushed first; files being written
    must be closed before.

    Example:
        >>> exit_process(CLUSTER_ERROR_EXIT_CODE, "error: lost worker 1")  # doctest: +SKIP
    """
    if message:
        print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, metrics and logs: the chief, or worker 0 of a
    cluster without a chief, or the only process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def task_name(strategy: tf.distribute.Strategy) -> str:
    """This process's task in a multi-worker cluster, such as "worker 1" or "chief 0"; "" when
    there is no cluster.

    Example:
        >>> task_name(setup("default"))
        ''
    """
    if not is_multi_worker(strategy):
        return ""
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type} {resolver.task_id}"


def agree(strategy: tf.distribute.Strategy, value: int) -> tuple[int, int]:
    """The smallest and largest of `value` over all workers.

    Every worker must call it at the same point (it is a collective). In a single process the
    replicas share the value, so no communication happens. The function that gathers the values
    is traced on first use and kept on the strategy, in its attribute `resnet_gather`: it runs on
    that strategy and lives as long as it does.

    Args:
        strategy: The strategy the workers run under.
        value: This worker's integer.

    Returns:
        `(min, max)` over the workers.

    Example:
        >>> agree(setup("default"), 7)
        (7, 7)
    """
    if not is_multi_worker(strategy):
        return value, value
    gather = getattr(strategy, _GATHER_ATTRIBUTE, None)
    if gather is None:

        @tf.function
        def gather(local: tf.Tensor) -> tf.Tensor:
            # The identity puts the value on the replica's device (collectives need one).
            gathered = strategy.run(lambda: tf.distribute.get_replica_context().all_gather(tf.identity(local), axis=0))
            return strategy.experimental_local_results(gathered)[0]

        setattr(strategy, _GATHER_ATTRIBUTE, gather)
    gathered = gather(tf.constant([value], tf.int64)).numpy()
    return int(gathered.min()), int(gathered.max())


class OtherWorkerFailed(ValueError):
    """Another worker of the run stopped on an error of its own, which it reports itself."""


@contextlib.contextmanager
def fail_together(strategy: tf.distribute.Strategy, what: str) -> Iterator[None]:
    """Runs a block of checks that may fail on some workers only, then stops every worker if any
    failed: a worker that raised re-raises its error, the others raise `OtherWorkerFailed`.

    Without it, a worker refusing to start leaves the others waiting in their next collective
    until they count it as lost. Every worker must enter the block (it ends in a collective); in
    a single process it is just the block.

    Args:
        strategy: The strategy the workers run under.
        what: What the block does, for the message of `OtherWorkerFailed` ("checking the run").

    Example:
        >>> with fail_together(setup("default"), "checking the data"):
        ...     pass
    """
    try:
        yield
    except Exception:
        with contextlib.suppress(Exception):  # a broken cluster: this worker's own error says more
            agree(strategy, 1)
        raise
    if agree(strategy, 0)[1]:
        raise OtherWorkerFailed(
            f"Another worker stopped with an error while {what} (its own output says why); {task_name(strategy)} "
            "stops too."
        )


class StopSignal:
    """SIGTERM (a preemption notice) as a request to stop that all workers agree on.

    Inside the `with` block (entered from the main thread) SIGTERM no longer kills the
    process: it marks this worker as signalled. `agreed()` is True on every worker at the same
    call once any worker has been signalled, so all stop after the same step, none waiting alone
    in a collective for the others. Call `agreed()` once per step on every worker, save the
    backup when it is True, and exit with `PREEMPTED_EXIT_CODE`. The signal is seen at the
    next step: the scheduler's grace period must cover a step and a backup.

    Args:
        strategy: The strategy the workers train under.
        signals: The signals that request a stop.

    Example:
        >>> strategy = setup("default")
        >>> with StopSignal(strategy) as stop:
        ...     for step in range(3):
        ...         if stop.agreed():  # after the step's work
        ...             break  # save the backup, then exit with PREEMPTED_EXIT_CODE
        >>> stop.received
        False
    """

    def __init__(self, strategy: tf.distribute.Strategy, signals: Sequence[signal.Signals] = (signal.SIGTERM,)):
        self.strategy = strategy
        self.signals = tuple(signals)
        self.received = False
        self._previous: dict[signal.Signals, object] = {}  # the handlers to restore

    def __enter__(self) -> StopSignal:
        for number in self.signals:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        del number, frame  # Printing here could interrupt a print of the main thread.
        self.received = True

    def agreed(self) -> bool:
        """Whether any worker has received a stop signal; the same on every worker."""
        return agree(self.strategy, int(self.received))[1] > 0
