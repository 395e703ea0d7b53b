"""Batch-1 latency and batch-N throughput of one network served four ways, side by side in one run.

    python benchmarks/deploy.py --configs=cifar/resnet56,resnet50 --batch_size=32 --json=deploy.json
    python benchmarks/deploy.py --configs= --demo_run=runs/demo     # only the accuracies of a trained run

Each network of `--configs` (untrained, its norms given non-trivial statistics, then folded into
the convolutions by `resnet.fold_batch_norm`, as `resnet-export` serves it) is served by the
same function, `resnet.export.deploy.serving_function`: uint8 images in, at the serving size of
the evaluation preprocessing (32x32 with the "cifar" recipe for cifar/* configs; 256x256 with the
"imagenet" recipe, resize and 224 centre crop, for the others), probabilities and classes out.
It is written as a float32 SavedModel (run by TensorFlow), converted to TFLite float32 and int8
(calibrated on `--calibration_images` random images; TensorFlow's TFLite interpreter) and to ONNX
(onnxruntime's CPU provider); TFLite and onnxruntime run one thread per core, as TensorFlow does.
The image size is fixed in every format's graph, so all four do the same work.

After `--warmup` untimed calls of each, the formats take turns, `--repeats` times: each times
`--steps` calls on `--batch_size` images, and as many images one at a time. The report gives per
format the median batch-1 latency (ms) and batch-N images/s with their spread over the repeats,
the file size, and the speed-ups of both over the SavedModel.

With `--demo_run=<model_dir of resnet-train>`, the run's best checkpoint is served the same four
ways (int8 calibrated on the run's training images, as resnet-export does) and each format's
accuracy on the whole eval split is reported, with the int8 model's change against the SavedModel
in percentage points.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from importlib.metadata import version

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

import resnet
from report import machine, write_results
from resnet import cli
from resnet.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, resize_to_fill
from resnet.export import deploy
from resnet.export.serving import CALIBRATION_IMAGES, calibration_batches

flags.DEFINE_list("configs", ["cifar/resnet56", "resnet50"], "Shipped config names or .gin files to measure.")
flags.DEFINE_integer(
    "image_size",
    None,
    "Side of the network's input (the crop); default 32 for cifar/* configs, 224 for the others.",
    lower_bound=1,
)
flags.DEFINE_integer("batch_size", 32, "Images per call for the throughput (N).", lower_bound=1)
flags.DEFINE_integer("steps", 3, "Timed calls of batch N per repeat (and as many images one by one).", lower_bound=1)
flags.DEFINE_integer("repeats", 5, "Timed repeats per format (the formats take turns).", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed calls of each batch size per format before timing.", lower_bound=0)
flags.DEFINE_integer("calibration_images", 64, "Random images calibrating the int8 models of --configs.", lower_bound=1)
flags.DEFINE_string("demo_run", None, "A resnet-train model_dir: also measure its eval accuracy in each format.")
flags.DEFINE_integer(
    "demo_calibration_images",
    CALIBRATION_IMAGES,
    "Training images calibrating the --demo_run int8 model (resnet-export's default).",
    lower_bound=1,
)
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
FLAGS = flags.FLAGS

BASELINE = "saved_model"

Files = dict[str, tuple[Callable[[], deploy.Runner], int]]


def preprocessing_for(config: str) -> Preprocessing:
    """The "cifar" recipe for cifar/* configs, the "imagenet" recipe for the others."""
    if config.startswith("cifar/"):
        return Preprocessing("cifar", image_size=FLAGS.image_size or 32)
    return Preprocessing("imagenet", image_size=FLAGS.image_size or 224, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def vary_norms(model: keras.Model, seed: int = 0) -> None:
    """Draws every norm's scale and variance from [0.5, 1.5] and its offset and mean from N(0, 0.1^2).

    An untrained network's norms are all the identity, unlike any trained network's; the converters
    fold the norms into the convolutions, whose per-channel weight and activation ranges int8
    calibration then sees vary as a trained network's do.
    """
    rng = np.random.default_rng(seed)
    uniform, normal = (lambda shape: rng.uniform(0.5, 1.5, shape)), (lambda shape: rng.normal(0.0, 0.1, shape))
    draws = {"gamma": uniform, "moving_variance": uniform, "beta": normal, "moving_mean": normal}
    for weight in model.weights:
        draw = draws.get(weight.path.rsplit("/", 1)[-1])
        if draw is not None:
            weight.assign(draw(tuple(weight.shape)).astype("float32"))


def export(
    model: keras.Model,
    serve: deploy.Serve,
    size: tuple[int, int],
    calibration: Callable[[], Iterable[np.ndarray]],
    directory: str,
) -> Files:
    """`serve` as a SavedModel (written to `directory`), TFLite float32 and int8, and ONNX, all with
    the image `size` fixed in the graph: `{format: (make_runner, file bytes)}`."""

    def fixed_size(images: tf.Tensor) -> dict:
        # The SavedModel and ONNX converters would otherwise give the graph a dynamic image size,
        # and a graph that learns the size only at run time resizes the images even to their
        # own size, a step the fixed-size TFLite graph skips.
        return serve(tf.ensure_shape(images, [None, *size, 3]))

    path = os.path.join(directory, "saved_model")
    progress("  writing the float32 SavedModel")
    deploy.write_saved_model(model, fixed_size, path, size)
    progress("  converting to TFLite float32 and int8 (calibrating)")
    tflite = deploy.tflite_models(model, fixed_size, size, [None, "int8"], calibration)
    progress(f"  converting to ONNX (opset {deploy.ONNX_OPSET})")
    onnx = deploy.onnx_model(fixed_size)
    threads = os.cpu_count()
    saved_model_bytes = sum(
        os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(path) for name in names
    )
    return {
        "saved_model": (lambda: deploy.SavedModelRunner(path), saved_model_bytes),
        "tflite_float32": (lambda: deploy.TFLiteRunner(tflite[None], num_threads=threads), len(tflite[None])),
        "tflite_int8": (lambda: deploy.TFLiteRunner(tflite["int8"], num_threads=threads), len(tflite["int8"])),
        "onnx": (lambda: deploy.OnnxRunner(onnx, num_threads=threads), len(onnx)),
    }


def progress(line: str) -> None:
    print(line, flush=True)


def seconds_per_image(runner: deploy.Runner, images: np.ndarray, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        runner(images)
    return (time.perf_counter() - start) / (calls * len(images))


def measure(config: str) -> dict:
    """Latency and throughput of `config`'s network in each format, and their ratios to the SavedModel's."""
    preprocessing = preprocessing_for(config)
    size = preprocessing.serving_size
    batch, steps = FLAGS.batch_size, FLAGS.steps
    progress(
        f"{config}: {size[0]}x{size[1]} uint8 images, {preprocessing.recipe!r} preprocessing "
        f"({preprocessing.image_size}x{preprocessing.image_size} network input)"
    )
    model = resnet.build(config)
    vary_norms(model)
    model = resnet.fold_batch_norm(model)  # what resnet-export serves
    rng = np.random.default_rng(0)
    calibration = rng.integers(0, 256, (FLAGS.calibration_images, *size, 3), dtype=np.uint8)
    images = rng.integers(0, 256, (batch, *size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as directory:
        files = export(
            model,
            deploy.serving_function(model, preprocessing),
            size,
            lambda: np.split(calibration, len(calibration)),
            directory,
        )
        # A runner per batch size: a TFLite interpreter reallocates its tensors whenever the batch
        # size changes, which a server with a fixed batch size never does.
        runners = {name: (make(), make()) for name, (make, _) in files.items()}
        progress(f"  warming up ({FLAGS.warmup} calls of batch 1 and of batch {batch} per format)")
        for one, many in runners.values():
            for _ in range(FLAGS.warmup):
                one(images[:1])
                many(images)
        seconds = {name: ([], []) for name in runners}
        for repeat in range(FLAGS.repeats):
            for name, (one, many) in runners.items():
                seconds[name][0].append(seconds_per_image(one, images[:1], steps * batch))
                seconds[name][1].append(seconds_per_image(many, images, steps))
            progress(
                f"  repeat {repeat + 1}/{FLAGS.repeats}: "
                + ", ".join(
                    f"{name} {1000 * one[-1]:.2f} ms, {1 / many[-1]:.1f} img/s" for name, (one, many) in seconds.items()
                )
            )
    formats = {}
    for name, (one, many) in seconds.items():
        latency, rate = [1000 * s for s in one], [1 / s for s in many]
        formats[name] = {
            "latency_ms_batch1": round(statistics.median(latency), 3),
            "latency_ms_batch1_min": round(min(latency), 3),
            "latency_ms_batch1_max": round(max(latency), 3),
            "images_per_second": round(statistics.median(rate), 2),
            "images_per_second_min": round(min(rate), 2),
            "images_per_second_max": round(max(rate), 2),
            "size_mb": round(files[name][1] / 1e6, 3),
        }
    base = formats[BASELINE]
    for entry in formats.values():
        entry["speedup_batch1"] = round(base["latency_ms_batch1"] / entry["latency_ms_batch1"], 3)
        entry["speedup_batchN"] = round(entry["images_per_second"] / base["images_per_second"], 3)
    return {
        "recipe": preprocessing.recipe,
        "network_input": preprocessing.image_size,
        "image_size": list(size),
        "formats": formats,
    }


def demo_accuracy(run_dir: str) -> dict:
    """Accuracy of each format of `run_dir`'s best checkpoint on the whole eval split of its data."""
    trainer, model, evaluator, path = cli.restored_model(run_dir, [], "best")
    model = resnet.fold_batch_norm(model)  # what resnet-export serves
    data, size, count = trainer.data, trainer.preprocessing.serving_size, FLAGS.demo_calibration_images
    progress(
        f"Demo run {run_dir}: checkpoint {path}, {data.name!r} data at {size[0]}x{size[1]}; "
        f"int8 calibrated on {count} training images"
    )

    calibration = calibration_batches(data, size, count)

    serve = deploy.serving_function(model, trainer.preprocessing, from_logits=evaluator.from_logits)
    examples = data.examples("eval").map(
        lambda image, label: (resize_to_fill(image, *size), label), num_parallel_calls=tf.data.AUTOTUNE
    )
    with tempfile.TemporaryDirectory() as directory:
        runners = {name: make() for name, (make, _) in export(model, serve, size, calibration, directory).items()}
        progress("  classifying the eval split in each format")
        correct, total = dict.fromkeys(runners, 0), 0
        for images, labels in examples.batch(FLAGS.batch_size).prefetch(1).as_numpy_iterator():
            for name, runner in runners.items():
                correct[name] += int(np.sum(runner(images)["classes"] == labels))
            total += len(labels)
    accuracy = {name: round(hits / total, 5) for name, hits in correct.items()}
    return {
        "run_dir": run_dir,
        "checkpoint": path,
        "eval_images": total,
        "calibration_images": count,
        "accuracy": accuracy,
        "int8_accuracy_change_points": round(100 * (accuracy["tflite_int8"] - accuracy[BASELINE]), 3),
    }


def main(argv):
    del argv
    if not FLAGS.configs and not FLAGS.demo_run:
        raise app.UsageError("Nothing to measure: pass --configs, --demo_run or both.")
    deploy.require_onnx()
    logging.set_verbosity(logging.WARNING)  # the SavedModel writer logs each file it writes
    versions = {"tensorflow": tf.__version__, "onnxruntime": version("onnxruntime"), "tf2onnx": version("tf2onnx")}
    results = {
        "batch_size": FLAGS.batch_size,
        "steps": FLAGS.steps,
        "repeats": FLAGS.repeats,
        "warmup": FLAGS.warmup,
        "calibration_images": FLAGS.calibration_images,
        "threads": os.cpu_count(),
        "machine": machine(**versions),
    }
    progress(
        f"{results['machine']['cpu']}, {results['machine']['cores']} cores; "
        + ", ".join(f"{name} {number}" for name, number in versions.items())
    )
    results["configs"] = {config: measure(config) for config in FLAGS.configs}
    if FLAGS.demo_run:
        results["demo"] = demo_accuracy(FLAGS.demo_run)
    _print_report(results)
    write_results(results, FLAGS.json)


def _print_report(results: dict) -> None:
    batch = results["batch_size"]
    for config, measured in results["configs"].items():
        height, width = measured["image_size"]
        print(f"\n{config}: {height}x{width} uint8 images; median of {results['repeats']} repeats (min-max)")
        print(
            f"  {'format':15s} {'batch 1 (ms)':>24s} {f'batch {batch} (img/s)':>26s} {'MB':>8s} "
            f"{'speed-up 1':>10s} {f'speed-up {batch}':>11s}"
        )
        for name, entry in measured["formats"].items():
            latency = (
                f"{entry['latency_ms_batch1']:.2f} ({entry['latency_ms_batch1_min']:.2f}-"
                f"{entry['latency_ms_batch1_max']:.2f})"
            )
            rate = (
                f"{entry['images_per_second']:.1f} ({entry['images_per_second_min']:.1f}-"
                f"{entry['images_per_second_max']:.1f})"
            )
            print(
                f"  {name:15s} {latency:>24s} {rate:>26s} {entry['size_mb']:8.2f} "
                f"{entry['speedup_batch1']:9.2f}x {entry['speedup_batchN']:10.2f}x"
            )
    if "demo" in results:
        demo = results["demo"]
        print(
            f"\n{demo['run_dir']}: accuracy on {demo['eval_images']} eval images: "
            + ", ".join(f"{name} {value:.2%}" for name, value in demo["accuracy"].items())
            + f"; int8 {demo['int8_accuracy_change_points']:+.2f} points against the SavedModel"
        )


if __name__ == "__main__":
    app.run(main)
