"""A `resnet-data-service` process in a test: its lines as they come, its stop, its end."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

BINARY = str(Path(sys.executable).parent / "resnet-data-service")
ENV = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
ENV.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
START_TIMEOUT = 90  # seconds for a process to import TensorFlow and start its server, on a loaded machine
STOP_TIMEOUT = 20
READ_TIMEOUT = 60
DISPATCHER_LINE = re.compile(r"Dispatcher listening on (grpc://localhost:(\d+)) \((.*)\)")
WORKER_LINE = re.compile(r"Worker on (localhost:\d+) serving the dispatcher (grpc://\S+)")


class Service:
    """A `resnet-data-service` process; its stdout lines are read as they come, its stderr goes to a file."""

    def __init__(self, tmp_path: Path, name: str, *args: str):
        self.stderr_path = tmp_path / f"{name}.stderr"
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen([BINARY, *args], stdout=subprocess.PIPE, stderr=stderr, text=True, env=ENV)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"{self.process.args} printed no line within {timeout} s; stderr: {self.stderr()}")
        if line is None:
            pytest.fail(f"{self.process.args} ended ({self.process.wait()}) early; stderr: {self.stderr()}")
        return line

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        """Sends `signum`; the exit code and the last line printed."""
        self.process.send_signal(signum)
        code = self.process.wait(timeout=STOP_TIMEOUT)
        return code, self.next_line(timeout=5)

    def end(self) -> None:
        """Kills the process, if it still runs after a short wait."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT)


def bounded(function: Callable, timeout: float = READ_TIMEOUT):
    """`function()`, failing the test if it takes longer than `timeout` seconds (a tf.data
    service read whose server is gone waits forever)."""
    result: list = []
    errors: list[BaseException] = []

    def call():
        try:
            result.append(function())
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"no result within {timeout} s")
    if errors:
        raise errors[0]
    return result[0]
