"""How training stops short of its last epoch: each an exception whose message is the one line
the binaries print (see `resnet.cli.run_reporting_errors` for their exit codes)."""


class TrainingDiverged(FloatingPointError):
    """The training loss, or the weights, became NaN or infinite; the message names the step and
    the last good checkpoint, which is left in place."""


class TrainingStopped(Exception):
    """Training stopped on a stop signal (SIGTERM, a preemption notice) after saving a backup;
    running the same command again resumes there."""


class TrainingInterrupted(Exception):
    """Training was interrupted (Ctrl-C); the message says what the newest backup holds."""


class StorageFull(Exception):
    """The storage of `model_dir` ran out of space while the trainer wrote to it; nothing that
    was written before is lost, and rerunning once there is space resumes the run."""
