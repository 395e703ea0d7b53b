"""`metrics.csv`: a training run's figures, one row per epoch, checked whenever it is read."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from resnet.storage.files import read_bytes, write_atomically

METRICS_COLUMNS = (
    "epoch",
    "step",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "val_top5",
    "learning_rate",
    "seconds",
)
"""The columns of a run's `metrics.csv`, as the trainer writes them."""


class MetricsLog:
    """`metrics.csv`: a header, then one row per epoch, epochs 1, 2, 3, ... in order.

    Every field is a number: `epoch` a positive whole number, `step` a whole number, the others
    finite numbers, or empty for a value not recorded. `write(row)` replaces the row of its
    epoch (an epoch redone after a crash) or appends the next one, and rewrites the file
    atomically; the other rows are written back exactly as they were read.

    Reading checks the whole file, and a damaged one (text that is not UTF-8, a header that is
    not `columns`, a row with missing, extra or unreadable fields, epochs out of order,
    repeated or skipped) raises a `ValueError` naming the file and the line: such a file is
    never rewritten, so no row is dropped or changed.

    Args:
        path: The CSV file, local or a URI.
        columns: The header, which must include "epoch".

    Example:

    >>> log = MetricsLog("ram://doc/metrics.csv", ["epoch", "loss"])
    >>> log.write({"epoch": 1, "loss": 0.5}); log.write({"epoch": 1, "loss": 0.25})
    >>> log.rows()
    [{'epoch': '1', 'loss': '0.25'}]
    """

    def __init__(self, path: str, columns: Sequence[str]):
        if "epoch" not in columns:
            raise ValueError(f"`columns` must include 'epoch'; received {list(columns)}.")
        self.path = os.fspath(path)
        self.columns = list(columns)

    def rows(self) -> list[dict[str, str]]:
        """The rows, in file order (epochs 1, 2, ...), every field as the text the file holds.

        Raises:
            ValueError: The file is damaged; the message names the file, the line and what is
                wrong with it.
        """
        data = read_bytes(self.path)
        if data is None:
            return []
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()  # the newline ending the last line
        if not lines:
            self._damaged(1, f"the file is empty; expected the header {','.join(self.columns)}")
        rows = []
        for number, raw in enumerate(lines, start=1):
            fields = self._fields(number, raw)
            if number == 1:
                if fields != self.columns:
                    self._damaged(1, f"the header is {','.join(fields)!r}; expected {','.join(self.columns)!r}")
                continue
            row = self._check_row(number, fields)
            if int(row["epoch"]) != len(rows) + 1:
                self._damaged(number, f"epoch {row['epoch']} where epoch {len(rows) + 1} was expected")
            rows.append(row)
        return rows

    def write(self, row: Mapping[str, Any]) -> None:
        """Records `row` (its `epoch` is the next epoch, or one already recorded, which it
        replaces). Values missing from `row` are left empty; keys not in `columns` are dropped.

        Raises:
            ValueError: The file is damaged (see `rows`), the epoch would leave a gap, or a value
                is not a number.
        """
        rows = self.rows()
        new = self._check_row(None, ["" if row.get(key) is None else str(row.get(key)) for key in self.columns])
        epoch = int(new["epoch"])
        if epoch > len(rows) + 1:
            raise ValueError(
                f"{self.path}: cannot record epoch {epoch}: it holds epochs 1 to {len(rows)}, and each "
                "line is one epoch, in order."
            )
        rows[epoch - 1 : epoch] = [new]
        # Every field is a number or empty (checked): no quoting is needed.
        lines = [",".join(self.columns), *(",".join(r[key] for key in self.columns) for r in rows)]
        write_atomically(self.path, "\n".join(lines) + "\n")

    def _fields(self, number: int, raw: bytes) -> list[str]:
        try:
            text = raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError as error:
            self._damaged(number, f"byte {error.start + 1} is not UTF-8 text")
        if not text.strip():
            self._damaged(number, "the line is empty")
        try:
            return next(csv.reader([text], strict=True))
        except (csv.Error, StopIteration) as error:
            self._damaged(number, f"not a line of comma-separated values ({error or 'empty'})")

    def _check_row(self, number: int | None, fields: list[str]) -> dict[str, str]:
        """`fields` as a row, each checked; `number` is the line (None: a row about to be written)."""
        complain = self._damaged if number is not None else self._refused
        epoch = fields[self.columns.index("epoch")] if len(fields) > self.columns.index("epoch") else ""
        problem = _metric_problem("epoch", epoch)
        if problem:  # first: the line may not be a row at all
            complain(number, f"epoch {epoch!r} {problem}")
        if len(fields) != len(self.columns):
            complain(
                number,
                f"{len(fields)} field(s) where {len(self.columns)} were expected "
                f"({','.join(self.columns)}); the line may have been cut short",
            )
        row = dict(zip(self.columns, fields, strict=True))
        for key, value in row.items():
            problem = _metric_problem(key, value)
            if problem:
                complain(number, f"{key} {value!r} {problem}")
        return row

    def _damaged(self, number: int, problem: str) -> NoReturn:
        raise ValueError(
            f"{self.path} line {number}: {problem}. Repair or remove the line, or move the file away: "
            "after the header each line is one epoch's metrics, epochs 1, 2, 3, ... in order."
        )

    def _refused(self, number: None, problem: str) -> NoReturn:
        raise ValueError(f"Cannot record in {self.path}: {problem}.")


def _metric_problem(key: str, value: str) -> str | None:
    """What is wrong with `value` as the field `key` of a metrics row, or None."""
    if value == "" and key != "epoch":
        return None  # not recorded
    if key in ("epoch", "step"):
        lowest = 1 if key == "epoch" else 0
        if value.isascii() and value.isdigit() and int(value) >= lowest:
            return None
        return "is not a positive whole number" if key == "epoch" else "is not a whole number"
    try:
        number = float(value)
    except ValueError:
        return "is not a number"
    return None if math.isfinite(number) else "is not a finite number"
