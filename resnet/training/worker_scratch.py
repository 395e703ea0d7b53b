"""A local scratch directory for the checkpoint copies of a non-chief worker.

In `MultiWorkerMirroredStrategy` saving a mirrored variable is a collective operation: every
worker must save, at the same time, but only the chief's copy (in `model_dir`) is kept. The
other workers save into a scratch directory named after `model_dir` and their task under the
system's temporary directory. It is emptied when it is entered, so what a killed worker left
behind goes at its next start, and removed when it is left.

>>> with WorkerScratch("ram://shared/run", "worker 1") as scratch:
...     os.path.basename(scratch).endswith("-worker-1"), os.listdir(scratch)
(True, [])
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile


class WorkerScratch:
    """The scratch directory of worker `task` of the run in `model_dir`; a context manager that
    gives its path, existing and empty, and removes it at the end.

    Args:
        model_dir: The run directory the worker trains in (any URI).
        task: The worker's task name, e.g. "worker 1".
    """

    def __init__(self, model_dir: str, task: str):
        digest = hashlib.sha1(model_dir.encode()).hexdigest()[:12]
        name = f"resnet-worker-{digest}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', task).strip('-')}"
        self.path = os.path.join(tempfile.gettempdir(), name)

    def __enter__(self) -> str:
        shutil.rmtree(self.path, ignore_errors=True)
        os.makedirs(self.path)
        return self.path

    def __exit__(self, *exc_info) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
