"""What `Trainer.deterministic = True` costs: training steps per second with and without it.

    python benchmarks/determinism.py                                   # the demo's ResNet-20, batch 128
    python benchmarks/determinism.py --config=resnet50 --batch_size=32 --image_size=224

Op determinism is a process-wide TensorFlow setting, so each measurement is a fresh process
(`--probe`) that builds a `Trainer` (SGD with momentum and weight decay, float32) of the model
of `--config`, runs warm-up steps of its training step, then times `--steps` steps on one
batch held in memory.
The two settings alternate, `--repeats` processes each; the report gives the median images/s
of each, the spread, and their ratio, with the machine it ran on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

from report import machine, spread, write_results

flags.DEFINE_string("config", "cifar/resnet20", "A shipped model config name or a .gin file.")
flags.DEFINE_integer("batch_size", 128, "Images per step.")
flags.DEFINE_integer("image_size", 32, "Height and width of the images.")
flags.DEFINE_integer("steps", 10, "Timed steps per process.")
flags.DEFINE_integer("warmup", 3, "Untimed steps per process before timing.")
flags.DEFINE_integer("repeats", 3, "Processes per setting (alternating).")
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
flags.DEFINE_enum("probe", None, ["default", "deterministic"], "Internal: measure one setting and exit.")
FLAGS = flags.FLAGS


def probe(deterministic: bool) -> float:
    """Images/s of the training step in this process, with op determinism on or off."""
    from resnet import config
    from resnet.data.preprocessing import Preprocessing
    from resnet.data.sources import SyntheticData
    from resnet.model import ResNet
    from resnet.training.trainer import Trainer

    size = FLAGS.image_size
    config.parse([FLAGS.config], [f"ResNet.input_shape = ({size}, {size}, 3)", "ResNet.num_classes = 10"])
    trainer = Trainer(
        "/nonexistent-benchmark-run",  # never written: only the step is used
        data=SyntheticData(
            train_examples=FLAGS.batch_size, eval_examples=FLAGS.batch_size, image_size=size, num_classes=10
        ),
        preprocessing=Preprocessing("none", image_size=size),
        model=ResNet,
        batch_size=FLAGS.batch_size,
        steps_per_epoch=1,
        deterministic=deterministic,
    )
    trainer.setup_process()
    trainer.build()
    step = trainer.make_train_step()
    batch = next(iter(trainer.pipeline.train(0, steps=1)))
    for _ in range(FLAGS.warmup):
        float(step(batch)[0])
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        float(step(batch)[0])
    return FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - start)


def main(argv):
    del argv
    if FLAGS.probe:
        print(json.dumps({"images_per_second": probe(FLAGS.probe == "deterministic")}))
        return
    import tensorflow as tf

    command = [sys.executable, os.path.abspath(__file__)]
    for name in ("config", "batch_size", "image_size", "steps", "warmup"):
        command.append(f"--{name}={getattr(FLAGS, name)}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    rates = {"default": [], "deterministic": []}
    for repeat in range(FLAGS.repeats):
        for setting in rates:
            result = subprocess.run(command + [f"--probe={setting}"], capture_output=True, text=True, env=env)
            if result.returncode != 0:
                raise RuntimeError(f"the {setting} probe failed:\n{result.stderr[-3000:]}")
            rates[setting].append(json.loads(result.stdout.strip().splitlines()[-1])["images_per_second"])
        print(
            f"repeat {repeat + 1}/{FLAGS.repeats}: default {rates['default'][-1]:.1f} img/s, "
            f"deterministic {rates['deterministic'][-1]:.1f} img/s",
            flush=True,
        )
    results = {
        "config": FLAGS.config,
        "batch_size": FLAGS.batch_size,
        "image_size": FLAGS.image_size,
        "steps": FLAGS.steps,
        "repeats": FLAGS.repeats,
        "machine": machine(tensorflow=tf.__version__),
    }
    for setting, values in rates.items():
        results[setting] = spread(values, "images_per_second", 2)
    results["deterministic_vs_default"] = round(
        results["deterministic"]["images_per_second"] / results["default"]["images_per_second"], 3
    )
    print(
        f"\n{FLAGS.config}, batch {FLAGS.batch_size} at {FLAGS.image_size}x{FLAGS.image_size} on "
        f"{results['machine']['cpu']} ({results['machine']['cores']} cores), TensorFlow {tf.__version__}:"
    )
    for setting in rates:
        entry = results[setting]
        print(f"  {setting:14s} {entry['images_per_second']:8.2f} img/s ({entry['min']:.2f}-{entry['max']:.2f})")
    print(f"  deterministic / default: {results['deterministic_vs_default']:.3f}x")
    write_results(results, FLAGS.json)


if __name__ == "__main__":
    app.run(main)
