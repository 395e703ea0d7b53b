"""Capturing what native code writes to file descriptor 2, where Python's `sys.stderr` cannot.

TensorFlow's C++ start-up lines and the TFLite converter's and interpreter's chatter are written
straight to descriptor 2. `captured_stderr` redirects the descriptor for a block and hands back
what was written, so the caller decides what to show. It imports nothing heavy: `_startup` uses it
before TensorFlow is imported.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence


class Captured:
    """What a `captured_stderr` block wrote to descriptor 2 (`text`, set when the block ends)."""

    text: str = ""


@contextlib.contextmanager
def captured_stderr() -> Iterator[Captured]:
    """Redirects descriptor 2 to a temporary file for the block. If the block raises, what it
    wrote is written back to descriptor 2 first, so an error keeps its context."""
    captured = Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buffer:
        os.dup2(buffer.fileno(), 2)
        try:
            yield captured
        except BaseException:
            _restore(saved, buffer, captured)
            os.write(2, captured.text.encode())
            raise
        else:
            _restore(saved, buffer, captured)
        finally:
            os.close(saved)


def _restore(saved: int, buffer, captured: Captured) -> None:
    sys.stderr.flush()
    os.dup2(saved, 2)
    buffer.seek(0)
    captured.text = buffer.read().decode(errors="replace")


@contextlib.contextmanager
def filtered_stderr(noise: Sequence[str]) -> Iterator[None]:
    """Runs the block with descriptor 2 captured, then writes back every line that matches none
    of the regular expressions `noise` (everything, if the block raises)."""
    with captured_stderr() as captured:
        yield
    kept = [
        line
        for line in captured.text.splitlines(keepends=True)
        if not any(re.search(pattern, line) for pattern in noise)
    ]
    if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()
