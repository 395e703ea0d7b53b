"""resnet-data-service starts a tf.data service dispatcher or worker that serve a dataset to this
process, prints where it listens, stops with exit code 0 on SIGTERM or Ctrl-C, keeps its journal
in --work_dir (from which a restarted dispatcher recovers), and refuses flags that do not make
one server with one line naming the flag."""

import os
import re
import signal
import socket

import pytest
import tensorflow as tf
from services import DISPATCHER_LINE, ENV, START_TIMEOUT, WORKER_LINE, Service, bounded

from conftest import run_cases
from resnet.data_service import ServiceSettings


def doubled(processing_mode: str, service: str) -> list[int]:
    dataset = tf.data.Dataset.range(20).map(lambda x: x * 2)
    served = dataset.apply(tf.data.experimental.service.distribute(processing_mode=processing_mode, service=service))
    return bounded(lambda: [int(x) for x in served.as_numpy_iterator()])


@pytest.mark.slow  # processes that start TensorFlow; the quick loop checks the flags in-process
def test_a_dispatcher_and_a_worker_serve_a_dataset_keep_a_journal_and_stop_on_sigterm(tmp_path):
    work_dir = tmp_path / "dispatcher"
    services = []
    try:
        dispatcher = Service(tmp_path, "dispatcher", "--dispatcher", "--port=0", f"--work_dir={work_dir}")
        services.append(dispatcher)
        line = dispatcher.next_line(START_TIMEOUT)
        match = DISPATCHER_LINE.fullmatch(line)
        assert match and match[3] == f"journal in {work_dir}", line
        address = match[1]
        worker = Service(tmp_path, "worker", "--worker", f"--dispatcher_address={address}")
        services.append(worker)
        line = worker.next_line(START_TIMEOUT)
        match = WORKER_LINE.fullmatch(line)
        assert match and match[2] == address, line

        assert sorted(doubled("distributed_epoch", address)) == list(range(0, 40, 2))
        assert doubled("parallel_epochs", address) == list(range(0, 40, 2))  # one worker: in order
        journal = work_dir / "tf_data_dispatcher_journal"
        assert [name for name in os.listdir(journal) if name.startswith("journal_")], os.listdir(journal)
        assert sum(os.path.getsize(path) for path in journal.iterdir()) > 0
        assert os.listdir(work_dir / "datasets")  # the registered dataset's graph

        # The dispatcher stops first while a read is under way: the worker's tasks then wait for
        # it, which a graceful stop of the worker would wait for.
        unfinished = iter(
            tf.data.Dataset.range(10**6).apply(
                tf.data.experimental.service.distribute(processing_mode="distributed_epoch", service=address)
            )
        )
        assert bounded(lambda: int(next(unfinished))) >= 0
        assert dispatcher.stop() == (0, "Dispatcher stopped.")
        assert worker.stop() == (0, "Worker stopped.")
    finally:
        for service in services:
            service.end()


@pytest.mark.slow
def test_a_dispatcher_restarted_with_its_work_dir_recovers_its_datasets(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dispatcher_args = ("--dispatcher", f"--port={port}", f"--work_dir={tmp_path / 'journal'}")
    address = f"grpc://localhost:{port}"
    services = []
    try:
        # Started together: the worker waits for its dispatcher.
        dispatcher = Service(tmp_path, "dispatcher", *dispatcher_args)
        worker = Service(tmp_path, "worker", "--worker", f"--dispatcher_address=localhost:{port}")
        services += [dispatcher, worker]
        assert DISPATCHER_LINE.fullmatch(dispatcher.next_line(START_TIMEOUT))
        line = worker.next_line(START_TIMEOUT)
        if line.startswith("Waiting"):
            assert line == f"Waiting for the dispatcher at {address} ...", line
            line = worker.next_line(START_TIMEOUT)
        assert WORKER_LINE.fullmatch(line), line

        dataset = tf.data.Dataset.range(6).map(lambda x: x + 100)
        dataset_id = bounded(lambda: tf.data.experimental.service.register_dataset(address, dataset))
        assert dispatcher.stop(signal.SIGINT) == (0, "Dispatcher stopped.")

        restarted = Service(tmp_path, "restarted", *dispatcher_args)
        services.append(restarted)
        assert DISPATCHER_LINE.fullmatch(restarted.next_line(START_TIMEOUT))
        served = tf.data.experimental.service.from_dataset_id(
            "parallel_epochs", address, dataset_id, dataset.element_spec
        )
        assert bounded(lambda: [int(x) for x in served.as_numpy_iterator()]) == list(range(100, 106))
        assert worker.stop() == (0, "Worker stopped.")
        assert restarted.stop() == (0, "Dispatcher stopped.")
    finally:
        for service in services:
            service.end()


@pytest.mark.slow  # processes that start TensorFlow; the quick loop checks the flags in-process
def test_the_binary_refuses_flags_that_make_no_server_in_one_line_naming_the_flag():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {
            "neither": ([], "give one role, --dispatcher or --worker; received neither."),
            "both": (["--dispatcher", "--worker"], "give one role, --dispatcher or --worker; received both."),
            "address": (
                ["--dispatcher", "--dispatcher_address=localhost:5050"],
                "--dispatcher_address applies to --worker, not --dispatcher.",
            ),
            "work_dir": (
                ["--worker", "--dispatcher_address=localhost:5050", "--work_dir=/tmp/x"],
                "--work_dir applies",
            ),
            "missing": (["--worker"], "--worker needs --dispatcher_address"),
            "in_use": (["--dispatcher", f"--port={port}"], f"--port {port} is in use on this machine"),
            "argument": (["--dispatcher", "extra"], "unexpected arguments ['extra']"),
        }
        command_lines = [args for args, _ in cases.values()]
        results = run_cases("resnet-data-service", "resnet.data_service", command_lines, ENV, timeout=120)
        outcomes = dict(zip(cases, results, strict=True))
    for case, (_, message) in cases.items():
        outcome = outcomes[case]
        lines = outcome["stderr"].strip().splitlines()
        assert outcome["code"] == 2 and outcome["stdout"] == "", (case, outcome)
        assert len(lines) == 1 and lines[0].startswith(f"resnet-data-service: error: {message}"), (case, outcome)


@pytest.mark.parametrize(
    "flags, message",
    [
        ({}, "give one role, --dispatcher or --worker; received neither."),
        ({"dispatcher": True, "worker": True}, "received both"),
        ({"dispatcher": True, "port": -1}, "--port must be 0 (a free port) or a port number up to 65535; received -1."),
        ({"dispatcher": True, "port": 70000}, "--port must be"),
        ({"dispatcher": True, "dispatcher_address": "localhost:5050"}, "--dispatcher_address applies to --worker"),
        ({"dispatcher": True, "worker_address": "host:%port%"}, "--worker_address applies to --worker"),
        ({"dispatcher": True, "work_dir": " "}, "`--work_dir` must name a directory"),
        ({"worker": True, "dispatcher_address": "localhost:5050", "work_dir": "/tmp/x"}, "--work_dir applies to"),
        ({"worker": True}, "--worker needs --dispatcher_address"),
        ({"worker": True, "dispatcher_address": "localhost"}, "--dispatcher_address must be host:port"),
        ({"worker": True, "dispatcher_address": "http://host:5050"}, "received 'http://host:5050'"),
        ({"worker": True, "dispatcher_address": "host:port"}, "--dispatcher_address must be host:port"),
        ({"worker": True, "dispatcher_address": "h:1", "worker_address": "host"}, "--worker_address must be"),
        ({"worker": True, "dispatcher_address": "h:1", "worker_address": "host:%dts%"}, "--worker_address must be"),
    ],
)
def test_flags_that_make_no_server_are_refused_naming_the_flag(flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ServiceSettings.from_flags(**flags)


def test_the_settings_of_each_role():
    assert ServiceSettings.from_flags(dispatcher=True) == ServiceSettings("dispatcher", 0)
    assert ServiceSettings.from_flags(dispatcher=True, port=5050, work_dir="gs://bucket/dispatcher") == (
        ServiceSettings("dispatcher", 5050, work_dir="gs://bucket/dispatcher")
    )
    worker = ServiceSettings.from_flags(worker=True, dispatcher_address="grpc://dispatcher-host:5050")
    assert worker == ServiceSettings("worker", 0, dispatcher_address="dispatcher-host:5050")
    assert worker.worker_address == "localhost:%port%"  # tf.data.experimental.service.WorkerConfig's default
    assert tf.data.experimental.service.WorkerConfig("x:1").worker_address == worker.worker_address
    assert ServiceSettings.from_flags(
        worker=True, port=5051, dispatcher_address="[::1]:5050", worker_address="host-7:%port%"
    ) == ServiceSettings("worker", 5051, dispatcher_address="[::1]:5050", worker_address="host-7:%port%")
