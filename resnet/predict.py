"""`resnet-predict`: classifies image files with published weights, a trained run or an export.

    resnet-predict --weights=resnet50.tv2_in1k photo.jpg photos/
    resnet-predict --model_dir=runs/demo-20260101-120000 [--checkpoint=best] digits/
    resnet-predict --export=exports/demo image.png [--top_k=3] [--json]

Prints, for each image, its `--top_k` classes with their names and probabilities; with `--json`,
one JSON object per line instead: `{"image": path, "top": [{"class": 207, "name": "golden
retriever", "probability": 0.91}, ...]}`. Directories are searched recursively for .jpg, .jpeg,
.png, .bmp and .gif files, in sorted order; a file named on the command line is read whatever
its name.

The model and its evaluation preprocessing come from one of:

* `--weights`: published weights by name (`resnet.available_weights()`), with the preprocessing
  and the ImageNet class names they were published with; the file is downloaded once into the
  cache (`--cache_dir`, else `$RESNET_WEIGHTS_DIR`, else `~/.keras/resnet-weights`).
* `--model_dir`: a run of `resnet-train` at `--checkpoint`, with the run's preprocessing and the
  class names of its data source (image folder names, CIFAR's label names, the digits 0-9).
* `--export`: a `resnet-export` directory's `saved_model/`, with its `labels.txt`.

The same in Python: `resnet.classifier.Classifier`.

An image that cannot be read or decoded is reported by name (on stderr, or as
`{"image": path, "error": ...}` with `--json`) and the others are still classified; the exit
code is then 1.
"""

from __future__ import annotations

from resnet._startup import quiet_binary_start

quiet_binary_start()  # first, before anything imports TensorFlow; does nothing unless run as a binary

import json
import os
import sys
from collections.abc import Iterator, Sequence

from absl import app, flags

from resnet import cli
from resnet.classifier import Classifier, read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

flags.DEFINE_string(
    "weights", None, "Published weights by name, e.g. resnet50.tv2_in1k (see resnet.available_weights())."
)
flags.DEFINE_string("model_dir", None, "Directory of a run written by resnet-train.")
flags.DEFINE_string("checkpoint", "best", "With --model_dir: 'best', 'backup' (the latest), 'checkpoints' or a path.")
flags.DEFINE_string("export", None, "Directory written by resnet-export.")
flags.DEFINE_integer("top_k", 5, "How many classes to print per image (at most the number of classes).", lower_bound=1)
flags.DEFINE_bool("json", False, "Print one JSON object per image instead of text.")
flags.DEFINE_string("cache_dir", None, "With --weights: where weight files are cached.")
cli.define_gin_param_flag()
FLAGS = flags.FLAGS


def image_files(paths: Sequence[str]) -> Iterator[str]:
    """The files named, and the image files inside the directories named (recursively, sorted)."""
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")
            )
            if not found:
                print(f"resnet-predict: no {', '.join(IMAGE_SUFFIXES)} files in {path}", file=sys.stderr, flush=True)
            yield from found
        else:
            yield path


def _check_source_flags() -> None:
    given = [flag for flag in ("weights", "model_dir", "export") if FLAGS[flag].value is not None]
    if len(given) != 1:
        raise ValueError(
            "Give exactly one of --weights (published weights), --model_dir (a trained run) and --export "
            f"(an export); received {', '.join('--' + g for g in given) or 'none'}."
        )
    for flag in given:
        cli.check_path_flag(flag, FLAGS[flag].value)


def main(argv: list[str]) -> None:
    paths = argv[1:]
    if not paths:
        raise ValueError("Name the images to classify: image files or directories of them.")
    _check_source_flags()
    if FLAGS.weights is not None:
        classifier = Classifier.from_weights(FLAGS.weights, FLAGS.cache_dir)
    elif FLAGS.model_dir is not None:
        classifier = Classifier.from_run(FLAGS.model_dir, FLAGS.checkpoint, FLAGS.gin_param)
    else:
        classifier = Classifier.from_export(FLAGS.export)
    print(f"Classifying with {classifier.description}", file=sys.stderr, flush=True)
    failed = classified = 0
    for path in image_files(paths):
        try:
            image = read_image(path)
        except ValueError as error:
            failed += 1
            _report({"image": path, "error": str(error)})
            continue
        classified += 1
        _report({"image": path, "top": classifier.top(image, FLAGS.top_k)})
    if failed:
        total = failed + classified
        print(f"resnet-predict: {failed} of {total} images could not be read.", file=sys.stderr, flush=True)
        sys.exit(1)
    if not classified:
        raise ValueError(f"No images found in {', '.join(paths)}.")


def _report(result: dict) -> None:
    if FLAGS.json:
        print(json.dumps(result), flush=True)
    elif "error" in result:
        print(f"resnet-predict: cannot classify {result['image']}: {result['error']}", file=sys.stderr, flush=True)
    else:
        lines = [result["image"]]
        for item in result["top"]:
            label = f"{item['name']} ({item['class']})" if item["name"] is not None else f"class {item['class']}"
            lines.append(f"  {item['probability']:.4f}  {label}")
        print("\n".join(lines), flush=True)


def run() -> None:
    app.run(cli.run_reporting_errors(main, "resnet-predict"))


if __name__ == "__main__":
    run()
