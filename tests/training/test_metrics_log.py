"""`metrics.csv`: every field of every row checked, a damaged file named by line and never rewritten."""

import re

import pytest
import tensorflow as tf

from resnet.training.metrics_log import METRICS_COLUMNS, MetricsLog


def test_metrics_log_replaces_a_redone_epoch(location):
    tf.io.gfile.makedirs(location)
    log = MetricsLog(f"{location}/metrics.csv", ["epoch", "loss"])
    log.write({"epoch": 1, "loss": 2.0, "unknown": 7})
    log.write({"epoch": 2, "loss": 1.5})
    log.write({"epoch": 2, "loss": 1.4})  # epoch 2 redone after a crash
    log.write({"epoch": 3})  # a value not recorded is left empty
    assert [(r["epoch"], r["loss"]) for r in log.rows()] == [("1", "2.0"), ("2", "1.4"), ("3", "")]
    assert tf.io.gfile.GFile(f"{location}/metrics.csv").read().splitlines() == ["epoch,loss", "1,2.0", "2,1.4", "3,"]
    with pytest.raises(ValueError, match="`columns` must include 'epoch'; received \\['loss'\\]"):
        MetricsLog(f"{location}/other.csv", ["loss"])
    # A row that would leave a gap, or hold something that is not a number, is never written.
    before = tf.io.gfile.GFile(f"{location}/metrics.csv", "rb").read()
    for row, message in (
        ({"epoch": 5, "loss": 1.0}, "cannot record epoch 5: it holds epochs 1 to 3"),
        ({"epoch": 4, "loss": "nan"}, "loss 'nan' is not a finite number"),
        ({"epoch": 4, "loss": "1,2"}, "loss '1,2' is not a number"),
        ({"epoch": 0, "loss": 1.0}, "epoch '0' is not a positive whole number"),
    ):
        with pytest.raises(ValueError, match=message):
            log.write(row)
    assert tf.io.gfile.GFile(f"{location}/metrics.csv", "rb").read() == before


GOOD_METRICS = (
    "epoch,step,loss,accuracy,val_loss,val_accuracy,val_top5,learning_rate,seconds\n"
    "1,4,3.09,0.125,2.5,0.25,0.75,0.1,3.2\n"
    "2,8,2.01,0.25,2.1,0.5,0.875,0.1,2.9\n"
)


@pytest.mark.parametrize(
    "damage, line, problem",
    [
        (lambda t: t + "3,12,1.5,garbage,xx\n", 4, "5 field\\(s\\) where 9 were expected"),
        (lambda t: t + "3,12,1.5,garbage,1.2,0.5,0.9,0.1,2.0\n", 4, "accuracy 'garbage' is not a number"),
        (lambda t: t.replace("2,8,", "2,abc,"), 3, "step 'abc' is not a whole number"),
        (lambda t: t.replace("2,8,", "2,-8,"), 3, "step '-8' is not a whole number"),
        (lambda t: t.replace("2,8,2.01", "2,8,inf"), 3, "loss 'inf' is not a finite number"),
        (lambda t: t.replace("2,8,", "x2,8,"), 3, "epoch 'x2' is not a positive whole number"),
        (lambda t: t.replace("2,8,2.01,", '2,8,"2.01,'), 3, "not a line of comma-separated values"),
        (lambda t: t[: t.index("2,8,2.01") + 6], 3, "3 field\\(s\\) where 9 were expected.*cut short"),  # cut mid-line
        (lambda t: t + t.splitlines(keepends=True)[2], 4, "epoch 2 where epoch 3 was expected"),  # a duplicate
        (lambda t: t.replace("2,8,", "99,8,"), 3, "epoch 99 where epoch 2 was expected"),
        (lambda t: t.replace("1,4,", "2,4,").replace("\n2,8,", "\n1,8,"), 2, "epoch 2 where epoch 1 was expected"),
        (lambda t: t + "\n3,12,1.5,0.5,1.2,0.5,0.9,0.1,2.0\n", 4, "the line is empty"),
        (lambda t: t.replace("epoch,step", "epoch,steps"), 1, "the header is 'epoch,steps,"),
        (lambda t: "", 1, "the file is empty; expected the header epoch,step,"),
        (lambda t: t.encode().replace(b"2.01", b"2\xff01"), 3, "byte 6 is not UTF-8 text"),
    ],
)
def test_a_damaged_metrics_file_is_refused_naming_file_and_line_and_never_rewritten(location, damage, line, problem):
    tf.io.gfile.makedirs(location)
    path = f"{location}/metrics.csv"
    content = damage(GOOD_METRICS)
    content = content.encode() if isinstance(content, str) else content
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(content)
    log = MetricsLog(path, METRICS_COLUMNS)
    for action in (log.rows, lambda: log.write({"epoch": 3, "step": 12})):
        with pytest.raises(ValueError, match=f"^{re.escape(path)} line {line}: {problem}"):
            action()
    assert tf.io.gfile.GFile(path, "rb").read() == content  # nothing rewritten or dropped


def test_a_sound_metrics_file_is_rewritten_byte_for_byte(location):
    tf.io.gfile.makedirs(location)
    path = f"{location}/metrics.csv"
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(GOOD_METRICS.replace("3.09", "3.0900"))  # fields are kept as written, not reformatted
    log = MetricsLog(path, METRICS_COLUMNS)
    assert [row["epoch"] for row in log.rows()] == ["1", "2"] and log.rows()[0]["loss"] == "3.0900"
    log.write({"epoch": 3, "step": 12, "loss": 1.5})
    assert tf.io.gfile.GFile(path).read() == GOOD_METRICS.replace("3.09", "3.0900") + "3,12,1.5,,,,,,\n"
