"""`resnet-train`: trains a ResNet as gin files say, on real data, resuming after interruption.

    resnet-train                                   # the demo: ResNet-20 on the digits in scikit-learn
    resnet-train --gin_file=experiments/cifar10_resnet56 \\
        --gin_param="CifarData.data_dir = '/data/cifar-10-batches-py'" --model_dir=runs/r56

`--gin_file` takes a shipped config name or a path, `--gin_param` a binding; both repeat.
Rerunning a command with the same `--model_dir` resumes from the last completed epoch (or the
last backup within an epoch), also after the process was killed.
"""

from __future__ import annotations

from resnet._startup import quiet_binary_start

quiet_binary_start()  # first, before anything imports TensorFlow; does nothing unless run as a binary

import os
import sys
import time

import gin
from absl import app, flags

from resnet import cli
from resnet.training.trainer import Trainer

DEMO = "experiments/demo"

flags.DEFINE_multi_string("gin_file", [], f"Gin config: a shipped name or a path; repeatable. Default: {DEMO}.")
cli.define_gin_param_flag()
flags.DEFINE_string(
    "model_dir",
    None,
    "Directory of the run, a path or a TensorFlow file system URI (default: ./runs/<config>-<timestamp>).",
)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; use --gin_file, --gin_param and --model_dir.")
    files = FLAGS.gin_file or [DEMO]
    cli.parse_gin(files, FLAGS.gin_param)
    strategy = cli.setup_training_strategy()
    stem = os.path.splitext(os.path.basename(files[0]))[0]
    model_dir = cli.check_path_flag("model_dir", FLAGS.model_dir) or os.path.join(
        "runs", f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    trainer = gin.get_configurable(Trainer)(model_dir=model_dir)
    trainer.setup_process()
    trainer.build(strategy)
    print(f"Writing to {model_dir}", flush=True)
    trainer.train(command=sys.argv)
    print(f"Done. Results in {model_dir}", flush=True)


def run() -> None:
    app.run(cli.run_reporting_errors(main, "resnet-train"))


if __name__ == "__main__":
    run()
