"""A non-chief worker's scratch directory: emptied when entered, removed when left."""

import os

from resnet.training import worker_scratch
from resnet.training.worker_scratch import WorkerScratch


def test_worker_scratch_is_emptied_at_start_and_removed_at_exit(tmp_path, monkeypatch):
    monkeypatch.setattr(worker_scratch.tempfile, "gettempdir", lambda: str(tmp_path))
    with WorkerScratch("ram://shared/run", "/job:worker/task:1") as scratch:
        assert os.path.dirname(scratch) == str(tmp_path) and os.listdir(scratch) == []
        assert os.path.basename(scratch).startswith("resnet-worker-") and scratch.endswith("-job-worker-task-1")
    assert not os.path.exists(scratch)
    os.makedirs(os.path.join(scratch, "left-by-a-killed-worker"))
    with WorkerScratch("ram://shared/run", "/job:worker/task:1") as again:
        assert again == scratch and os.listdir(again) == []
    assert WorkerScratch("ram://shared/other", "/job:worker/task:1").path != scratch
    assert WorkerScratch("ram://shared/run", "/job:worker/task:2").path != scratch
