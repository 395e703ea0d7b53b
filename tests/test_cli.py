"""What the binaries share: one line on stderr and an exit code that says what to do, for every way they stop."""

import errno

import pytest
import tensorflow as tf
from absl import flags

from resnet import cli
from resnet.training import distribution
from resnet.training.errors import StorageFull, TrainingDiverged, TrainingInterrupted, TrainingStopped
from resnet.training.run_lock import RunDirectoryLocked


@pytest.fixture(autouse=True)
def parsed_flags():
    # As absl's app.run leaves them (without validating the flags of binaries other tests imported).
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def outcome(error: BaseException, capsys) -> tuple[int, str]:
    def main(argv):
        raise error

    with pytest.raises(SystemExit) as exited:
        cli.run_reporting_errors(main, "resnet-test")([])
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "error, code, line",
    [
        (ValueError("`--x` must be 1; received 2."), 2, "resnet-test: error: `--x` must be 1; received 2."),
        (TrainingDiverged("The training loss is nan"), 2, "resnet-test: error: The training loss is nan"),
        (
            TrainingStopped("Stopped by a stop signal"),
            distribution.PREEMPTED_EXIT_CODE,
            "resnet-test: Stopped by a stop signal",
        ),
        (
            RunDirectoryLocked("`--model_dir` 'r' is in use by another run: host h. Wait for it"),
            75,
            "resnet-test: error: `--model_dir` 'r' is in use by another run: host h. Wait for it",
        ),
        (
            StorageFull("No space left ... Nothing was lost"),
            75,
            "resnet-test: error: No space left ... Nothing was lost",
        ),
        (
            tf.errors.ResourceExhaustedError(None, None, "/out/.e.partial/x.tflite; No space left on device"),
            75,
            "resnet-test: error: no space left on the storage while writing (/out/.e.partial/x.tflite; No space left "
            "on device); what was written before is intact",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), 75, "resnet-test: error: no space left on the storage"),
        (
            TrainingInterrupted("Interrupted. The newest backup, r/backup/backup-3, holds"),
            130,
            "resnet-test: Interrupted. The newest backup, r/backup/backup-3, holds",
        ),
        (KeyboardInterrupt(), 130, "resnet-test: interrupted; nothing was written."),
    ],
)
def test_every_stop_is_one_line_with_its_exit_code(error, code, line, capsys):
    exit_code, stderr = outcome(error, capsys)
    assert exit_code == code
    assert stderr.startswith(line) and stderr.count("\n") == 1, stderr


def test_other_errors_are_not_disguised(capsys):
    def main(argv):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    with pytest.raises(tf.errors.ResourceExhaustedError):
        cli.run_reporting_errors(main, "resnet-test")([])


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_path_flag_is_refused(value):
    with pytest.raises(ValueError, match=f"^`--model_dir` must name a directory; received {value!r}.$"):
        cli.check_path_flag("model_dir", value)
    assert cli.check_path_flag("model_dir", None) is None
    assert cli.check_path_flag("model_dir", "runs/a") == "runs/a"
