"""`resnet-export`: writes a servable SavedModel (uint8 images in, probabilities out) and a `.keras` file.

    resnet-export --model_dir=runs/demo-20260101-120000 --output=exports/demo [--checkpoint=best]

Runs on one device whatever strategy the run trained with; `--model_dir` and `--output` may be
local paths or TensorFlow file system URIs.
"""

from __future__ import annotations

from absl import app, flags

from resnet import cli
from resnet.training.serving import export_for_serving

flags.DEFINE_string("model_dir", None, "Directory of a run written by resnet-train.", required=True)
flags.DEFINE_string("output", None, "Directory to create for the export.", required=True)
flags.DEFINE_string("checkpoint", "best", "'best', 'backup' (the latest), 'checkpoints' or a checkpoint path.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --output directory.")
cli.define_gin_param_flag()
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    trainer, model, _, path = cli.restored_model(FLAGS.model_dir, FLAGS.gin_param, FLAGS.checkpoint)
    output = export_for_serving(
        model, trainer.preprocessing, FLAGS.output, from_logits=trainer.from_logits, overwrite=FLAGS.overwrite
    )
    print(f"Exported {path} to {output}/saved_model and {output}/model.keras", flush=True)


def run() -> None:
    app.run(cli.run_reporting_errors(main, "resnet-export"))


if __name__ == "__main__":
    run()
