"""`resnet-export`: writes a trained run's model for serving, with its preprocessing inside.

    resnet-export --model_dir=runs/demo-20260101-120000 --output=exports/demo [--checkpoint=best]
                  [--formats=saved_model,tflite,onnx] [--quantize=int8,float16]

Every format takes uint8 RGB images and returns probabilities and classes: `saved_model/` and
`model.onnx` for any image size, `model.tflite` (and `model_int8.tflite`, `model_float16.tflite`)
for one fixed size, by default the one the run's evaluation preprocessing takes without
resizing. `labels.txt` names the classes, one a line, where the run's data source knows their
names (`DataSource.class_names`; `resnet.export.serving.read_labels` reads it). Each file is
loaded in its runtime and checked against the Keras model before the export is reported done.
Runs on one device whatever strategy the run trained with; `--model_dir` and `--output` may be
local paths or TensorFlow file system URIs.
"""

from __future__ import annotations

from resnet._startup import quiet_binary_start

quiet_binary_start()  # first, before anything imports TensorFlow; does nothing unless run as a binary

from absl import app, flags

from resnet import cli
from resnet.export import deploy
from resnet.export.serving import (
    CALIBRATION_IMAGES,
    LABELS_FILE,
    MAX_INPUT_SIDE,
    check_input_side,
    check_output,
    export_for_serving,
)

flags.DEFINE_string("model_dir", None, "Directory of a run written by resnet-train.", required=True)
flags.DEFINE_string("output", None, "Directory to create for the export.", required=True)
flags.DEFINE_string("checkpoint", "best", "'best', 'backup' (the latest), 'checkpoints' or a checkpoint path.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --output directory.")
flags.DEFINE_list("formats", ["saved_model"], f"Formats to write, any of {', '.join(deploy.FORMATS)}.")
flags.DEFINE_list(
    "quantize",
    [],
    f"Quantized TFLite models to add (needs tflite in --formats), any of {', '.join(deploy.QUANTIZATIONS)}.",
)
flags.DEFINE_integer("calibration_images", CALIBRATION_IMAGES, "Training images that calibrate an int8 model.")
flags.DEFINE_list(
    "tflite_input_size",
    None,
    f"HEIGHT,WIDTH (or one number, at most {MAX_INPUT_SIDE}) of the TFLite models' images; "
    "default: the run's evaluation size (the image_size, or for the imagenet recipe the size whose centre crop it is).",
)
cli.define_gin_param_flag()
FLAGS = flags.FLAGS


def _input_size(values: list[str] | None) -> tuple[int, int] | None:
    """`--tflite_input_size` as (height, width), refused beyond `MAX_INPUT_SIDE` before anything runs."""
    if values is None:
        return None
    try:
        numbers = [int(value) for value in values]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or min(numbers) <= 0:
        raise ValueError(
            f"`--tflite_input_size` must be HEIGHT,WIDTH or one size, positive integers; received {','.join(values)!r}."
        )
    check_input_side(numbers, repr(",".join(values)))
    return (numbers[0], numbers[-1])


def main(argv: list[str]) -> None:
    del argv
    size = _input_size(FLAGS.tflite_input_size)
    check_output(FLAGS.output, FLAGS.overwrite, model_dir=FLAGS.model_dir)  # before the slow restore
    trainer, model, evaluator, path = cli.restored_model(FLAGS.model_dir, FLAGS.gin_param, FLAGS.checkpoint)
    class_names = trainer.data.class_names
    output = export_for_serving(
        model,
        trainer.preprocessing,
        FLAGS.output,
        from_logits=evaluator.from_logits,
        overwrite=FLAGS.overwrite,
        formats=FLAGS.formats,
        quantize=FLAGS.quantize,
        data=trainer.data,
        calibration_images=FLAGS.calibration_images,
        tflite_input_size=size,
        progress=lambda line: print(line, flush=True),
        model_dir=FLAGS.model_dir,
        class_names=class_names,
    )
    labels = (
        f"{LABELS_FILE} ({len(class_names)} class names)"
        if class_names is not None
        else f"no {LABELS_FILE}: {trainer.data.name!r} does not name its classes"
    )
    files = ", ".join([*FLAGS.formats, "model.keras"])
    print(f"Exported {path} to {output}/ ({files}, {labels}; see export.json)", flush=True)


def run() -> None:
    app.run(cli.run_reporting_errors(main, "resnet-export"))


if __name__ == "__main__":
    run()
