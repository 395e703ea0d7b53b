"""Inference speed of a network with its batch norms folded into the convolutions, against the same
network unfolded, in one run.

    python benchmarks/fold.py --config=resnet50 --json=fold.json

For each precision of `--precisions` and each batch size of `--batch_sizes`, the unfolded model
and `resnet.fold_batch_norm`'s copy run a compiled inference-mode forward pass (`tf.function`)
taking turns, `--repeats` times `--steps` calls after `--warmup`; the report gives the median
images/s (and the spread) of each and the folded/unfolded ratio. The largest output difference
between the two, relative to the largest output, is reported beside.
"""

from __future__ import annotations

import time
from importlib.metadata import version

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

import resnet
from report import machine, spread, write_results

flags.DEFINE_string("config", "resnet50", "A shipped config name or a .gin file.")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Dtype policies to measure.")
flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes to measure.")
flags.DEFINE_integer("image_size", 224, "Height and width of the images.", lower_bound=1)
flags.DEFINE_integer("steps", 3, "Timed calls per repeat.", lower_bound=1)
flags.DEFINE_integer("repeats", 5, "Timed repeats per model (taking turns).", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed calls per model before timing.", lower_bound=0)
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
FLAGS = flags.FLAGS


def measure(precision: str) -> dict:
    keras.config.set_dtype_policy(precision)
    try:
        model = resnet.build(FLAGS.config, [f"ResNet.input_shape = ({FLAGS.image_size}, {FLAGS.image_size}, 3)"])
    finally:
        keras.config.set_dtype_policy("float32")
    models = {"unfolded": model, "folded": resnet.fold_batch_norm(model)}
    forwards = {name: tf.function(lambda x, m=m: m(x, training=False)) for name, m in models.items()}
    results = {}
    for batch in map(int, FLAGS.batch_sizes):
        images = tf.constant(
            np.random.default_rng(0).normal(size=(batch, FLAGS.image_size, FLAGS.image_size, 3)), tf.float32
        )
        outputs = {name: np.float32(forward(images)) for name, forward in forwards.items()}
        difference = float(np.abs(outputs["folded"] - outputs["unfolded"]).max() / np.abs(outputs["unfolded"]).max())
        for forward in forwards.values():
            for _ in range(FLAGS.warmup):
                forward(images).numpy()
        rates = {name: [] for name in forwards}
        for _ in range(FLAGS.repeats):
            for name, forward in forwards.items():
                start = time.perf_counter()
                for _ in range(FLAGS.steps):
                    forward(images).numpy()
                rates[name].append(batch * FLAGS.steps / (time.perf_counter() - start))
        entry = {name: spread(r, "images_per_second", 2) for name, r in rates.items()}
        entry["speedup"] = round(entry["folded"]["images_per_second"] / entry["unfolded"]["images_per_second"], 3)
        entry["max_relative_difference"] = difference
        print(
            f"{precision} batch {batch}: unfolded {entry['unfolded']['images_per_second']} img/s, folded "
            f"{entry['folded']['images_per_second']} img/s, {entry['speedup']}x (outputs within {difference:.1e})",
            flush=True,
        )
        results[f"batch_{batch}"] = entry
    return results


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")  # each batch size traces the forward passes once more, on purpose
    info = machine(tensorflow=version("tensorflow"), keras=version("keras"))
    print(
        f"{FLAGS.config} at {FLAGS.image_size}x{FLAGS.image_size} on {info['cpu']} ({info['cores']} cores)", flush=True
    )
    results = {
        "config": FLAGS.config,
        "image_size": FLAGS.image_size,
        "steps": FLAGS.steps,
        "repeats": FLAGS.repeats,
        "precisions": {precision: measure(precision) for precision in FLAGS.precisions},
        "machine": info,
    }
    write_results(results, FLAGS.json)


if __name__ == "__main__":
    app.run(main)
