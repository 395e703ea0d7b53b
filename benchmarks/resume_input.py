"""How long a resumed training epoch takes to deliver its first batch, against a fresh one.

    python benchmarks/resume_input.py --json=resume_input.json

Writes ImageNet-format TFRecord shards of `--images` JPEGs (300-400 x 350-450 pixels, smooth
noise, quality 90), then times, from the construction of an `InputPipeline` to the first batch
of its `train(0, skip_steps=...)`, an uncached first epoch (`InputPipeline.cache = False`, the
ImageNet recipe at `--image_size`) started at step 0 and resumed at `--resume_fraction` of its
steps, as a restarted trainer asks for them (`steps` = images // batch size). A new pipeline
per call, as in a new process: the resumed one counts the shards' records first (a TFRecord
split does not know its size, and a resumed epoch starts at a place in the stream of passes
found from it). The two alternate, `--repeats` times each, after one untimed call of each;
the medians and their ratio are reported, for each shuffle buffer of `--shuffle_buffers`
(InputPipeline's default is 10,000 records).

With `--measure_old`, the approach this pipeline replaced is timed alongside: decode every
image, shuffle the decoded images, then skip. With `--measure_decode`, the images/s of
decoding the whole split with the sources' corrupt-record checks (`TFRecordData.examples`)
are compared with a plain parallel parse-and-decode of the same shards.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import statistics
import tempfile
import time

from absl import app, flags

from report import machine, spread, write_results

flags.DEFINE_integer("images", 3000, "JPEG images written to the TFRecord shards.")
flags.DEFINE_integer("shards", 8, "Shards to write.")
flags.DEFINE_integer("batch_size", 32, "Training batch size.")
flags.DEFINE_integer("image_size", 224, "Training crop size (ImageNet recipe).")
flags.DEFINE_float("resume_fraction", 0.9, "Share of the epoch's steps already done when resuming.")
flags.DEFINE_integer("repeats", 5, "Timed calls of each case (alternating; the median is reported).")
flags.DEFINE_list("shuffle_buffers", ["10000", "256"], "InputPipeline.shuffle_buffer values to measure.")
flags.DEFINE_boolean("measure_old", True, "Also time skipping after decoding, the approach replaced.")
flags.DEFINE_boolean("measure_decode", True, "Also compare decoding with and without the corrupt-record checks.")
flags.DEFINE_string("json", None, "Write the results to this JSON file.")
FLAGS = flags.FLAGS


def write_shards(directory: str, count: int, shards: int) -> tuple[str, float]:
    """ImageNet-format shards of photo-like JPEGs; returns their pattern and the mean JPEG size in KiB."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    writers = [tf.io.TFRecordWriter(os.path.join(directory, f"train-{i:05d}-of-{shards:05d}")) for i in range(shards)]
    total = 0
    for i in range(count):
        height, width = int(rng.integers(300, 401)), int(rng.integers(350, 451))
        coarse = rng.uniform(0, 255, (1, height // 24 + 2, width // 24 + 2, 3)).astype(np.float32)
        smooth = tf.image.resize(coarse, [height, width], method="bicubic")[0].numpy()
        image = np.clip(smooth + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
        encoded = tf.io.encode_jpeg(image, quality=90).numpy()
        total += len(encoded)
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
    return os.path.join(directory, "train-*"), total / count / 1024


def skip_after_decoding(pipeline, epoch: int, skip_steps: int, steps: int):
    """The training input as it was built before records were skipped undecoded: decode, repeat,
    shuffle the decoded images, take the epoch, skip, augment, batch."""
    import tensorflow as tf

    batch = pipeline.batch_size
    examples = pipeline.source.examples("train").repeat()
    examples = examples.shuffle(
        pipeline.shuffle_buffer, seed=pipeline.seed * 100_003 + epoch, reshuffle_each_iteration=False
    )
    examples = examples.take(steps * batch).skip(skip_steps * batch)
    augmented = examples.map(
        lambda image, label: (pipeline.preprocessing.train(image), label), num_parallel_calls=tf.data.AUTOTUNE
    )
    return augmented.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def seconds_to_first_batch(make_batches) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the pipeline's note that it counts the records
        next(iter(make_batches()))
    return time.perf_counter() - start


def summary(values: list[float]) -> dict:
    return spread(values, "seconds", 4)


def measure_resume(make_pipeline, steps: int, resume_step: int) -> dict:
    """Medians of the time to the first batch, starting and resuming, new and (optionally) old,
    their ratios, and what each skipped image added, in milliseconds. Each call builds its
    pipeline with `make_pipeline()`, as a new process would."""
    epoch = 0
    cases = {
        "start": lambda: make_pipeline().train(epoch, skip_steps=0, steps=steps),
        "resumed": lambda: make_pipeline().train(epoch, skip_steps=resume_step, steps=steps),
    }
    if FLAGS.measure_old:
        cases["old_start"] = lambda: skip_after_decoding(make_pipeline(), epoch, 0, steps)
        cases["old_resumed"] = lambda: skip_after_decoding(make_pipeline(), epoch, resume_step, steps)
    for make in cases.values():
        seconds_to_first_batch(make)  # warm-up: thread pools, file cache
    times = {name: [] for name in cases}
    for _ in range(FLAGS.repeats):
        for name, make in cases.items():
            times[name].append(seconds_to_first_batch(make))
    result = {name: summary(values) for name, values in times.items()}
    skipped = resume_step * FLAGS.batch_size
    result["resumed_vs_start"] = round(result["resumed"]["seconds"] / result["start"]["seconds"], 3)
    result["ms_per_skipped_image"] = round(
        1000 * (result["resumed"]["seconds"] - result["start"]["seconds"]) / skipped, 4
    )
    if FLAGS.measure_old:
        result["old_resumed_vs_old_start"] = round(result["old_resumed"]["seconds"] / result["old_start"]["seconds"], 3)
        result["old_resumed_vs_resumed"] = round(result["old_resumed"]["seconds"] / result["resumed"]["seconds"], 3)
        result["old_ms_per_skipped_image"] = round(
            1000 * (result["old_resumed"]["seconds"] - result["old_start"]["seconds"]) / skipped, 4
        )
    return result


def measure_decode(source, files: list[str]) -> dict:
    """Images/s of decoding the whole split, with the sources' checks and without."""
    import tensorflow as tf

    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    }

    def plain_decode(record):
        example = tf.io.parse_single_example(record, features)
        image = tf.io.decode_image(example["image/encoded"], channels=3, expand_animations=False)
        return image, tf.cast(example["image/class/label"], tf.int32)

    def plain():
        records = tf.data.Dataset.from_tensor_slices(files).interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(files), 16),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        return records.map(plain_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    cases = {"checked": lambda: source.examples("train"), "plain": plain}
    rates = {name: [] for name in cases}
    for _ in range(FLAGS.repeats):
        for name, make in cases.items():
            start = time.perf_counter()
            count = sum(1 for _ in make())
            rates[name].append(count / (time.perf_counter() - start))
    result = {f"{name}_images_per_second": round(statistics.median(values), 1) for name, values in rates.items()}
    result["checked_vs_plain"] = round(result["checked_images_per_second"] / result["plain_images_per_second"], 3)
    return result


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    from resnet.data.pipeline import InputPipeline
    from resnet.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
    from resnet.data.sources import TFRecordData

    buffers = [int(b) for b in FLAGS.shuffle_buffers]
    steps = FLAGS.images // FLAGS.batch_size
    resume_step = int(FLAGS.resume_fraction * steps)
    if not 0 < resume_step < steps:
        raise app.UsageError(
            f"--resume_fraction={FLAGS.resume_fraction} of {steps} steps leaves no step to skip or to deliver."
        )
    results = {
        "images": FLAGS.images,
        "shards": FLAGS.shards,
        "batch_size": FLAGS.batch_size,
        "image_size": FLAGS.image_size,
        "steps_per_epoch": steps,
        "resume_step": resume_step,
        "resume_fraction": FLAGS.resume_fraction,
        "repeats": FLAGS.repeats,
        "machine": machine(tensorflow=tf.__version__, numpy=np.__version__),
        "shuffle_buffers": {},
    }
    print(
        f"{results['machine']['cpu']} ({os.cpu_count()} cores), Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}, NumPy {np.__version__}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="resume-benchmark-") as scratch:
        pattern, mean_kib = write_shards(scratch, FLAGS.images, FLAGS.shards)
        results["mean_jpeg_kib"] = round(mean_kib, 1)
        print(
            f"{FLAGS.images} JPEGs (mean {mean_kib:.1f} KiB) in {FLAGS.shards} shards; batch {FLAGS.batch_size}, "
            f"{steps} steps an epoch, resumed at step {resume_step}.",
            flush=True,
        )
        source = TFRecordData(pattern, pattern, num_classes=1000)
        prep = Preprocessing("imagenet", image_size=FLAGS.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        for buffer in buffers:

            def make_pipeline(buffer=buffer):
                return InputPipeline(source, prep, batch_size=FLAGS.batch_size, cache=False, shuffle_buffer=buffer)

            entry = measure_resume(make_pipeline, steps, resume_step)
            results["shuffle_buffers"][str(buffer)] = entry
            line = (
                f"shuffle buffer {buffer}: first batch {entry['start']['seconds']:.3f} s at step 0, "
                f"{entry['resumed']['seconds']:.3f} s at step {resume_step}: {entry['resumed_vs_start']:.3f}x "
                f"({entry['ms_per_skipped_image']:.3f} ms per skipped image)"
            )
            if FLAGS.measure_old:
                line += (
                    f"; skipping after decoding: {entry['old_start']['seconds']:.3f} s at step 0, "
                    f"{entry['old_resumed']['seconds']:.3f} s at step {resume_step} "
                    f"({entry['old_ms_per_skipped_image']:.3f} ms per skipped image; "
                    f"{entry['old_resumed_vs_resumed']:.1f}x the new resume)"
                )
            print(line, flush=True)
        if FLAGS.measure_decode:
            results["decode"] = measure_decode(source, tf.io.gfile.glob(pattern))
            decode = results["decode"]
            print(
                f"decoding the split: {decode['checked_images_per_second']} img/s with the corrupt-record checks, "
                f"{decode['plain_images_per_second']} img/s without: {decode['checked_vs_plain']:.3f}x",
                flush=True,
            )
    write_results(results, FLAGS.json)


if __name__ == "__main__":
    app.run(main)
