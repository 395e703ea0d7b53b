"""Run files: atomic replacement and metrics rows without duplicates."""

import os

import pytest

from resnet.training.records import MetricsLog, atomic_write_text


def test_metrics_log_replaces_a_redone_epoch(tmp_path):
    log = MetricsLog(tmp_path / "metrics.csv", ["epoch", "loss"])
    log.write({"epoch": 1, "loss": 2.0})
    log.write({"epoch": 2, "loss": 1.5})
    log.write({"epoch": 2, "loss": 1.4})  # epoch 2 redone after a crash
    assert [(r["epoch"], r["loss"]) for r in log.rows()] == [("1", "2.0"), ("2", "1.4")]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "epoch,loss"


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    atomic_write_text(path, "old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left behind
