"""`run.lock`: one run at a time, a dead holder's lock taken over, an unreadable one named."""

import json
import os
import re
import socket
import subprocess
import sys
import threading

import pytest

from conftest import files_below
from resnet.storage import owners
from resnet.training import run_lock
from resnet.training.run_directory import RunDirectory
from resnet.training.run_lock import RunDirectoryLocked


def write_lock(run, **owner):
    lock = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": owners.process_start(os.getpid()),
        "token": "theirs",
        "started": owners.now(),
        "heartbeat": owners.now(),
    }
    run.write_text("run.lock", json.dumps({**lock, **owner}))


def lock_owner(run):
    return json.loads(run.read_text("run.lock"))


def test_lock_is_exclusive_and_released(location):
    first, second = RunDirectory(location), RunDirectory(location)
    first.create()
    with first.lock.acquire():
        held = lock_owner(first)
        assert held["host"] == socket.gethostname() and held["pid"] == os.getpid()
        with pytest.raises(RunDirectoryLocked) as raised:
            second.lock.acquire()
        assert str(raised.value).startswith(
            f"`--model_dir` '{location}' is in use by another run: host {held['host']}, pid {os.getpid()}, "
            f"started {held['started']}"
        )
        assert "use another `--model_dir`" in str(raised.value)
        assert isinstance(raised.value, ValueError)
    assert first.read_text("run.lock") is None
    second.lock.acquire()
    assert lock_owner(second)["token"] != held["token"]
    second.lock.release()
    assert sorted(files_below(location)) == []


def test_release_leaves_a_lock_that_is_not_ours(location):
    run = RunDirectory(location)
    run.create()
    run.lock.acquire()
    write_lock(run, host="elsewhere")  # taken over meanwhile
    run.lock.release()
    assert lock_owner(run)["host"] == "elsewhere"


def test_only_one_of_many_simultaneous_runs_gets_the_local_lock(tmp_path):
    runs = [RunDirectory(str(tmp_path)) for _ in range(8)]
    outcomes = []
    barrier = threading.Barrier(len(runs))

    def take(run):
        barrier.wait()
        try:
            run.lock.acquire()
            outcomes.append("locked")
        except RunDirectoryLocked:
            outcomes.append("refused")

    threads = [threading.Thread(target=take, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["locked"] + ["refused"] * 7


def test_lock_of_a_dead_local_process_is_taken_over(location, capsys):
    run = RunDirectory(location)
    run.create()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_lock(run, pid=int(dead.stdout), process_start=None)
    with run.lock.acquire():
        assert lock_owner(run)["pid"] == os.getpid()
    assert (
        f"Taking over the lock of a run that is gone: host {socket.gethostname()}, pid {int(dead.stdout)}"
        in capsys.readouterr().out
    )


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="process start times come from /proc")
def test_lock_of_a_reused_pid_is_taken_over(location):
    run = RunDirectory(location)
    run.create()
    write_lock(run, process_start="1")  # our pid, but another process start: the owner is gone
    with run.lock.acquire():
        assert lock_owner(run)["token"] != "theirs"


def test_lock_of_another_host_is_taken_over_only_when_stale(location):
    run = RunDirectory(location, stale_after=60)
    run.create()
    write_lock(run, host="elsewhere", pid=1)
    with pytest.raises(RunDirectoryLocked, match="in use by another run: host elsewhere, pid 1"):
        run.lock.acquire()
    assert lock_owner(run)["token"] == "theirs"
    old = "2000-01-01T00:00:00+00:00"
    write_lock(run, host="elsewhere", pid=1, started=old, heartbeat=old)
    with run.lock.acquire():
        assert lock_owner(run)["host"] == socket.gethostname()


@pytest.mark.parametrize("content", [b"", b"\xff\xfe not UTF-8 {", b"[1, 2]", b'{"host": '])
def test_unreadable_fresh_local_lock_is_respected(tmp_path, content):
    run = RunDirectory(str(tmp_path), stale_after=60)
    (tmp_path / "run.lock").write_bytes(content)  # being written by a run that just created it
    lock = re.escape(str(tmp_path / "run.lock"))
    unreadable = f"unknown \\({lock} cannot be read as an owner record; delete it if nothing uses"
    with pytest.raises(RunDirectoryLocked, match=unreadable):
        run.lock.acquire()
    os.utime(tmp_path / "run.lock", (0, 0))  # ... or left long ago by a run that died writing it
    with run.lock.acquire():
        assert lock_owner(run)["pid"] == os.getpid()


def test_a_directory_in_place_of_the_lock(tmp_path, capsys):
    run = RunDirectory(str(tmp_path), stale_after=60)
    (tmp_path / "run.lock").mkdir()
    with pytest.raises(RunDirectoryLocked, match=f"unknown \\({re.escape(str(tmp_path / 'run.lock'))} cannot be read"):
        run.lock.acquire()  # fresh: perhaps a run's doing
    os.utime(tmp_path / "run.lock", (0, 0))
    with run.lock.acquire():  # old and empty: taken over
        assert lock_owner(run)["pid"] == os.getpid()
    assert "Taking over the lock of a run that is gone: unknown" in capsys.readouterr().out
    (tmp_path / "run.lock").mkdir()
    (tmp_path / "run.lock" / "notes.txt").write_text("mine")
    os.utime(tmp_path / "run.lock", (0, 0))
    with pytest.raises(ValueError, match="run.lock is a directory with files in it, where the run's lock file belongs"):
        run.lock.acquire()
    assert (tmp_path / "run.lock" / "notes.txt").read_text() == "mine"  # nothing of it deleted


def test_heartbeat_refreshes_the_lock(location, monkeypatch):
    run = RunDirectory(location)
    run.create()
    with run.lock.acquire():
        before = lock_owner(run)
        monkeypatch.setattr(owners, "now", lambda: "2099-01-01T00:00:00+00:00")
        run.lock.heartbeat()  # too soon after taking the lock: nothing written
        assert lock_owner(run) == before
        monkeypatch.setattr(run_lock, "HEARTBEAT_SECONDS", 0.0)
        run.lock.heartbeat()
        assert lock_owner(run) == before | {"heartbeat": "2099-01-01T00:00:00+00:00"}
    RunDirectory(location).lock.heartbeat()  # not holding the lock: nothing to do
    assert run.read_text("run.lock") is None


def test_heartbeat_stops_a_run_whose_lock_was_taken_over(location, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_SECONDS", 0.0)
    run = RunDirectory(location)
    run.create()
    with run.lock.acquire():
        write_lock(run, host="elsewhere", pid=7)
        with pytest.raises(RunDirectoryLocked, match="was taken over by another run \\(host elsewhere, pid 7"):
            run.lock.heartbeat()
    assert lock_owner(run)["host"] == "elsewhere"  # left to its new owner


def test_lock_token_identifies_the_holder(location):
    run = RunDirectory(location)
    run.create()
    assert run.lock.token() is None
    with run.lock.acquire():
        token = run.lock.token()
        assert isinstance(token, int) and 0 <= token < 2**63
        assert RunDirectory(location).lock.token() == token  # what another worker reads
    write_lock(run, token="not hex")
    assert run.lock.token() is None
