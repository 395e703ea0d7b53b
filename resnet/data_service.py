"""`resnet-data-service`: runs a tf.data service dispatcher or worker, so that other machines'
CPUs read, decode and augment the training input.

    resnet-data-service --dispatcher --port=5050 --work_dir=/shared/dispatcher   # on one host
    resnet-data-service --worker --dispatcher_address=dispatcher-host:5050 \\
        --worker_address=$(hostname):%port%                                      # on each input host

The dispatcher keeps the registry of datasets, jobs and workers and serves no data. A client
registers an input pipeline with it and the dispatcher hands the work to the workers, which run
the pipeline and send the elements straight to the client. `resnet-train` does so with
`InputPipeline.data_service = 'grpc://dispatcher-host:5050'`: each training worker's part of the
global batches goes through `InputPipeline.data_service_lanes` jobs, each made in order by one
service worker, so the batches are those of a run without the service (see
`InputPipeline.train`). Start one dispatcher and any number of workers, in any order: a worker
waits for its dispatcher (saying so once) and registers when it answers, also while training
runs.

With `--work_dir` (a path or a TensorFlow file system URI such as `gs://...`) the dispatcher
writes its state to a journal there (`tf_data_dispatcher_journal/`, the registered datasets in
`datasets/`) before it answers a request, and a dispatcher restarted with the same `--work_dir`
and `--port` recovers its datasets and jobs: the workers register again by themselves and the
training hosts' reads go on after a pause. Without it, a restart fails every read under way.
A worker that dies while a training host reads from it is not replaced: the read waits, with
no error (still after 13 minutes, past the dispatcher's 10-minute worker timeout, in our
trials), and a worker started in its place takes on new work but never finishes the lost one's
part of the epoch. `resnet-train` therefore gives up after `InputPipeline.data_service_timeout`
seconds without a batch, exiting with code 75 and one line; started again with the same command
once the service has its workers, it resumes from its newest backup on the same batches.

What a worker needs: TensorFlow with the ops of the pipeline (the training hosts' version is
safest) and read access to the data files (the paths in the gin config, e.g. on `gs://` or a
shared file system). It does not need `resnet`: the dataset reaches it as a serialized graph,
into which `resnet`'s Python preprocessing was traced as TensorFlow ops. Python run inside a
pipeline (`tf.py_function`, `tf.numpy_function`) is the exception: it exists only in the
process that built the dataset, so such a pipeline fails on a worker in another process.

`--worker_address` is the address the dispatcher gives training hosts to fetch a worker's data;
TensorFlow's default, `localhost:%port%` (`%port%` becomes the worker's port), reaches it only
from its own machine, so on a cluster give each worker its host name. Both servers listen on
every interface of their machine, without authentication: a client can make the workers run any
TensorFlow graph (read and write files), so keep the ports within a trusted network. `--port=0`
(the default) takes a free port. Once the server runs it prints one line (other machines reach
the dispatcher at its host's name instead of `localhost`):

    Dispatcher listening on grpc://localhost:PORT (journal in DIR)
    Dispatcher listening on grpc://localhost:PORT (no journal: a restart forgets every job)
    Worker on ADDRESS serving the dispatcher grpc://HOST:PORT

SIGTERM or Ctrl-C stops the server and exits 0 after "Dispatcher stopped." (or "Worker
stopped."): the dispatcher finishes the requests under way, so its journal stays whole; a
worker, which keeps no state, exits at once. Mistakes in the flags, and a port already in use,
end the run with one line naming the flag and exit code 2.
"""

from __future__ import annotations

from resnet._startup import quiet_binary_start

quiet_binary_start()  # first, before anything imports TensorFlow; does nothing unless run as a binary

import dataclasses
import errno
import signal
import socket
import threading

import tensorflow as tf
from absl import app, flags

from resnet import cli
from resnet.training import distribution
from resnet.validation import first_line, is_host_port

PROTOCOL = "grpc"
DEFAULT_WORKER_ADDRESS = "localhost:%port%"
"""`tf.data.experimental.service.WorkerConfig`'s default `worker_address`."""

flags.DEFINE_bool("dispatcher", False, "Run a dispatcher: the registry of datasets, jobs and workers.")
flags.DEFINE_bool("worker", False, "Run a worker: runs input pipelines for the dispatcher --dispatcher_address.")
flags.DEFINE_integer("port", 0, "The port to listen on, on every interface (0: a free port, printed at start).")
flags.DEFINE_string(
    "work_dir", None, "With --dispatcher: the directory of its journal, so that a restarted dispatcher recovers."
)
flags.DEFINE_string(
    "dispatcher_address", None, "With --worker: the dispatcher to register with, host:port or grpc://host:port."
)
flags.DEFINE_string(
    "worker_address",
    None,
    f"With --worker: the host:port at which training hosts reach this worker; %port% stands for --port's "
    f"(default {DEFAULT_WORKER_ADDRESS}, this machine only).",
)
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    """What one `resnet-data-service` runs, from its checked flags.

    Example:

        settings = ServiceSettings.from_flags(worker=True, dispatcher_address="grpc://host:5050")
        settings.dispatcher_address  # 'host:5050'
    """

    role: str
    """'dispatcher' or 'worker'."""
    port: int
    """The port to listen on; 0 for a free one."""
    work_dir: str | None = None
    """The dispatcher's journal directory, if any."""
    dispatcher_address: str | None = None
    """The worker's dispatcher as `host:port` (without `grpc://`)."""
    worker_address: str = DEFAULT_WORKER_ADDRESS
    """The address the dispatcher gives out for the worker (`%port%` stands for its port)."""

    @classmethod
    def from_flags(
        cls,
        *,
        dispatcher: bool = False,
        worker: bool = False,
        port: int = 0,
        work_dir: str | None = None,
        dispatcher_address: str | None = None,
        worker_address: str | None = None,
    ) -> ServiceSettings:
        """Settings from the binary's flag values; raises `ValueError` (one line naming the flag)
        for flags that do not make one server."""
        if dispatcher == worker:
            given = "both" if dispatcher else "neither"
            raise ValueError(f"give one role, --dispatcher or --worker; received {given}.")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"--port must be 0 (a free port) or a port number up to 65535; received {port!r}.")
        if dispatcher:
            for name, value in (("dispatcher_address", dispatcher_address), ("worker_address", worker_address)):
                if value is not None:
                    raise ValueError(f"--{name} applies to --worker, not --dispatcher.")
            return cls("dispatcher", port, work_dir=cli.check_path_flag("work_dir", work_dir))
        if work_dir is not None:
            raise ValueError(
                "--work_dir applies to --dispatcher (the directory of its journal), not --worker (stateless)."
            )
        if dispatcher_address is None:
            raise ValueError(
                "--worker needs --dispatcher_address, the dispatcher's host:port or grpc://host:port as "
                "resnet-data-service --dispatcher printed it."
            )
        address = dispatcher_address.strip()
        if address.startswith(f"{PROTOCOL}://"):
            address = address[len(f"{PROTOCOL}://") :]
        if not is_host_port(address):
            raise ValueError(
                f"--dispatcher_address must be host:port or grpc://host:port; received {dispatcher_address!r}."
            )
        worker_address = DEFAULT_WORKER_ADDRESS if worker_address is None else worker_address.strip()
        if not is_host_port(worker_address, placeholder="%port%"):
            raise ValueError(
                f"--worker_address must be host:port, where port may be %port% (--port's); received {worker_address!r}."
            )
        return cls("worker", port, dispatcher_address=address, worker_address=worker_address)


def _free_port(port: int) -> int:
    """`port` (or with 0 a free port the system chooses), checked to be free on every interface.

    gRPC servers share a port that another gRPC server (e.g. a second dispatcher) listens on
    (they set `SO_REUSEPORT`), splitting the connections between them; a socket bound without
    that option tells a port in use apart.
    """
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple = ("::", port)
    except OSError:  # no IPv6 on this machine
        probe, address = socket.socket(socket.AF_INET, socket.SOCK_STREAM), ("", port)
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: old connections do not block it
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ValueError(
                    f"--port {port} is in use on this machine; choose another, or --port=0 for a free one."
                ) from None
            raise ValueError(f"--port {port} cannot be listened on: {error.strerror}.") from None
        return probe.getsockname()[1]


def _on_stop_signals(handler) -> None:
    """Sets what SIGTERM and SIGINT (Ctrl-C) do: call `handler(signum, frame)`, or `signal.SIG_DFL`."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)


def _serve(server, stop: threading.Event) -> None:
    """Blocks until `stop` is set, holding `server` (a server stops when no reference to it is left)."""
    while not stop.wait(0.2):  # short waits: the Python signal handler runs only between them
        pass


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
    except OSError:
        return False
    return True


def serve_dispatcher(settings: ServiceSettings, stop: threading.Event) -> None:
    """Runs a dispatcher until `stop` is set."""
    port = _free_port(settings.port)
    if settings.work_dir is not None:
        try:
            tf.io.gfile.makedirs(settings.work_dir)
        except tf.errors.OpError as error:
            raise ValueError(f"--work_dir {settings.work_dir!r} cannot be created: {first_line(error)}") from None
    config = tf.data.experimental.service.DispatcherConfig(
        port=port,
        protocol=PROTOCOL,
        work_dir=settings.work_dir,
        fault_tolerant_mode=settings.work_dir is not None,
    )
    try:
        server = tf.data.experimental.service.DispatchServer(config)
    except (RuntimeError, tf.errors.OpError) as error:
        flags_used = f"--port {port}" + (f", --work_dir {settings.work_dir!r}" if settings.work_dir else "")
        raise ValueError(f"the dispatcher could not start ({flags_used}): {first_line(error)}") from None
    journal = f"journal in {settings.work_dir}" if settings.work_dir else "no journal: a restart forgets every job"
    print(f"Dispatcher listening on {server.target} ({journal})", flush=True)
    _serve(server, stop)
    server.stop()
    print("Dispatcher stopped.", flush=True)


def serve_worker(settings: ServiceSettings, stop: threading.Event) -> None:
    """Runs a worker until `stop` is set, once its dispatcher answers."""
    dispatcher = f"{PROTOCOL}://{settings.dispatcher_address}"
    port = _free_port(settings.port)
    # Starting a worker blocks until its dispatcher answers, holding the interpreter, so that no
    # Python signal handler runs: wait for it here, where SIGTERM still stops the wait.
    if not _reachable(settings.dispatcher_address):
        print(f"Waiting for the dispatcher at {dispatcher} ...", flush=True)
        while not _reachable(settings.dispatcher_address):
            if stop.wait(0.5):
                print("Worker stopped.", flush=True)
                return
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=settings.dispatcher_address,
        worker_address=settings.worker_address,
        port=port,
        protocol=PROTOCOL,
    )
    _on_stop_signals(signal.SIG_DFL)  # a server that accepts connections but never answers blocks it forever
    try:
        server = tf.data.experimental.service.WorkerServer(config)
    except NotImplementedError:  # gRPC's UNIMPLEMENTED: a server without the dispatcher's service
        raise ValueError(
            f"--dispatcher_address {dispatcher} answers, but not as a tf.data service dispatcher (a worker's address?)."
        ) from None
    except (RuntimeError, tf.errors.OpError) as error:
        raise ValueError(
            f"the worker could not start (--port {port}, --dispatcher_address {dispatcher}): "
            f"{first_line(error).rstrip(': ')}."
        ) from None
    _on_stop_signals(lambda *_: stop.set())
    address = settings.worker_address.replace("%port%", str(port))
    print(f"Worker on {address} serving the dispatcher {dispatcher}", flush=True)
    _serve(server, stop)
    # No `server.stop()`: it waits for every request in flight, and a task of a dispatcher that
    # is gone waits for it (> 30 s when the dispatcher stopped first, with the interpreter held).
    # A worker keeps no state, and its clients fare the same either way.
    print("Worker stopped.", flush=True)
    distribution.exit_process(0)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; every setting is a flag (see --help).")
    settings = ServiceSettings.from_flags(
        dispatcher=FLAGS.dispatcher,
        worker=FLAGS.worker,
        port=FLAGS.port,
        work_dir=FLAGS.work_dir,
        dispatcher_address=FLAGS.dispatcher_address,
        worker_address=FLAGS.worker_address,
    )
    stop = threading.Event()
    _on_stop_signals(lambda *_: stop.set())
    if settings.role == "dispatcher":
        serve_dispatcher(settings, stop)
    else:
        serve_worker(settings, stop)


def run() -> None:
    app.run(cli.run_reporting_errors(main, "resnet-data-service"))


if __name__ == "__main__":
    run()
