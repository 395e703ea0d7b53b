"""Does the training binary's input pipeline keep up with the model? Measured on this machine.

    python benchmarks/input_pipeline.py --json=pipeline.json

Two cases, each the pipeline `resnet-train` builds (`InputPipeline`: decode, cache, shuffle,
augment, batch, prefetch) against the training step that consumes it (`Trainer`'s step):

* `demo`: the shipped demo, digits from scikit-learn with the CIFAR recipe, and ResNet-20;
* `tfrecord`: ImageNet-format TFRecord shards of JPEGs (written here, `--tfrecord_images` of
  them at 300 to 500 pixels a side), not cached, with the ImageNet recipe (random resized
  crops, flips) at 224x224, and ResNet-50.

Each reports the images/s the pipeline delivers on its own and the images/s the training step
consumes, and their ratio (the pipeline should deliver at least 3x).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from absl import app, flags

from report import write_results

flags.DEFINE_integer("demo_batch_size", 64, "Batch size of the demo case (as in experiments/demo).")
flags.DEFINE_integer("tfrecord_batch_size", 32, "Batch size of the TFRecord case.")
flags.DEFINE_string("tfrecord_config", "resnet50", "Model of the TFRecord case (a shipped config or gin file).")
flags.DEFINE_integer("tfrecord_image_size", 224, "Training crop size of the TFRecord case.")
flags.DEFINE_integer("tfrecord_images", 640, "JPEG images written to the TFRecord shards.")
flags.DEFINE_integer("tfrecord_shards", 4, "Shards to write.")
flags.DEFINE_integer("pipeline_batches", 40, "Batches timed per pipeline measurement.")
flags.DEFINE_integer("model_steps", 3, "Training steps timed per model measurement.")
flags.DEFINE_integer("repeats", 3, "Repeats of each measurement (the median is reported).")
flags.DEFINE_enum("cases", "both", ["both", "demo", "tfrecord"], "Which cases to run.")
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
FLAGS = flags.FLAGS


def write_shards(directory: str, count: int, shards: int) -> str:
    """ImageNet-format shards of smooth, photo-like JPEGs (random gradients plus noise)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    writers = [tf.io.TFRecordWriter(os.path.join(directory, f"train-{i:05d}-of-{shards:05d}")) for i in range(shards)]
    for i in range(count):
        height, width = rng.integers(300, 500), rng.integers(300, 500)
        yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
        channels = [np.sin(rng.uniform(1, 8) * xx + rng.uniform(1, 8) * yy + rng.uniform(0, 6)) for _ in range(3)]
        image = (np.stack(channels, -1) * 100 + 128 + rng.normal(0, 12, (height, width, 3))).clip(0, 255)
        encoded = tf.io.encode_jpeg(image.astype(np.uint8), quality=90).numpy()
        example = tf.train.Example(
            features=tf.train.Features(
                feature={
                    "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                    "image/class/label": tf.train.Feature(
                        int64_list=tf.train.Int64List(value=[int(rng.integers(0, 1000))])
                    ),
                }
            )
        )
        writers[i % shards].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    return os.path.join(directory, "train-*")


def pipeline_rate(pipeline, batches: int) -> float:
    """Images/s delivered by the second of two training epochs of `pipeline`, read as the trainer
    reads them (one stream; the first epoch warms up caches and thread pools)."""
    stream = iter(pipeline.train(0, steps=batches, epochs=2))
    for _ in range(batches):  # warm-up
        next(stream)
    delivered, start = 0, time.perf_counter()
    for images, _ in stream:
        delivered += int(images.shape[0])
    return delivered / (time.perf_counter() - start)


def model_rate(trainer, steps: int) -> float:
    """Images/s the trainer's step consumes, on a batch already in memory."""
    batch = next(iter(trainer.pipeline.train(0, steps=1)))
    step = trainer.make_train_step()
    step(batch)
    step(batch)
    start = time.perf_counter()
    for _ in range(steps):
        float(step(batch)[0])
    return steps * trainer.batch_size / (time.perf_counter() - start)


def measure(name, trainer) -> dict:
    trainer.build()
    pipeline_rates, model_rates = [], []
    for _ in range(FLAGS.repeats):
        pipeline_rates.append(pipeline_rate(trainer.pipeline, FLAGS.pipeline_batches))
        model_rates.append(model_rate(trainer, FLAGS.model_steps))
    result = {
        "pipeline_images_per_second": round(statistics.median(pipeline_rates), 1),
        "model_images_per_second": round(statistics.median(model_rates), 2),
    }
    # Three significant digits: a ratio below 1 rounded to two decimals would be off by up to 2%.
    result["ratio"] = float(f"{result['pipeline_images_per_second'] / result['model_images_per_second']:.3g}")
    print(
        f"{name}: pipeline {result['pipeline_images_per_second']} img/s, training step "
        f"{result['model_images_per_second']} img/s, ratio {result['ratio']}x",
        flush=True,
    )
    return result


def main(argv):
    del argv
    import gin
    import tensorflow as tf

    from resnet import config
    from resnet.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
    from resnet.data.sources import TFRecordData
    from resnet.training.trainer import Trainer

    results = {"tensorflow": tf.__version__, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="pipeline-benchmark-") as scratch:
        if FLAGS.cases in ("both", "demo"):
            with config.fresh_gin_config():
                config.parse(["experiments/demo"], [f"Trainer.batch_size = {FLAGS.demo_batch_size}"])
                results["demo"] = measure("demo", gin.get_configurable(Trainer)(model_dir=scratch))
        if FLAGS.cases in ("both", "tfrecord"):
            pattern = write_shards(scratch, FLAGS.tfrecord_images, FLAGS.tfrecord_shards)
            size = FLAGS.tfrecord_image_size
            with config.fresh_gin_config():
                config.parse(
                    [FLAGS.tfrecord_config],
                    [
                        "InputPipeline.cache = False",
                        "InputPipeline.shuffle_buffer = 256",
                        f"ResNet.input_shape = ({size}, {size}, 3)",
                        "ResNet.num_classes = 1000",
                    ],
                )
                trainer = gin.get_configurable(Trainer)(
                    model_dir=scratch,
                    data=TFRecordData(pattern, pattern, num_classes=1000),
                    preprocessing=Preprocessing("imagenet", image_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD),
                    batch_size=FLAGS.tfrecord_batch_size,
                    steps_per_epoch=FLAGS.pipeline_batches,
                )
                results["tfrecord"] = measure("tfrecord", trainer)
    write_results(results, FLAGS.json)


if __name__ == "__main__":
    app.run(main)
