"""`resnet-prepare`: writes one split as ImageNet-format TFRecord shards, from an image folder or CIFAR batches.

    resnet-prepare --image_folder=/data/flowers/train --output=/data/shards/train --shards=8 [--skip_corrupt]
    resnet-prepare --cifar_dir=/data/cifar-10-batches-py --cifar_split=train [--num_classes=10] \\
        --output=/data/cifar10/train --shards=8

Writes `PREFIX-00000-of-00008` ... and, last, `PREFIX.manifest.json` (`--output` is the prefix,
a path or any TensorFlow file system URI), which `TFRecordData` reads back; see
`resnet.data.prepare` for what the shards hold. Images of a folder are decoded once to check
them before anything is written (a corrupt one stops the run naming it, or with
`--skip_corrupt` is left out and listed) and copied byte for byte; CIFAR rows are written as
PNG. A run that is killed or fails leaves only whole shards; the same command finishes the job,
keeping the shards it had finished. Prints where the shards are and the `TFRecordData` pattern
that reads them.
"""

from __future__ import annotations

from resnet._startup import quiet_binary_start

quiet_binary_start()  # first, before anything imports TensorFlow; does nothing unless run as a binary

from absl import app, flags

from resnet import cli
from resnet.data.prepare import PROGRESS, prepare_cifar, prepare_image_folder
from resnet.training.errors import TrainingInterrupted

flags.DEFINE_string("image_folder", None, "A split's folder of images, one subdirectory per class.")
flags.DEFINE_string("cifar_dir", None, "A directory of CIFAR-10/100 python batches (cifar-10-batches-py/).")
flags.DEFINE_string("cifar_split", None, "With --cifar_dir: the split to write, 'train' or 'eval' ('test').")
flags.DEFINE_integer("num_classes", 10, "With --cifar_dir: 10 for CIFAR-10, 100 for CIFAR-100.")
flags.DEFINE_string("output", None, "Prefix of the shards: PREFIX-00000-of-000NN and PREFIX.manifest.json.")
flags.DEFINE_integer("shards", None, "How many shards to write.")
flags.DEFINE_integer("seed", 0, "Fixes which shard each image goes to, and the order within it.")
flags.DEFINE_bool("skip_corrupt", False, "With --image_folder: leave images that cannot be decoded out, and list them.")
flags.DEFINE_bool("overwrite", False, "Replace shards another run (of other settings) or tool left at the prefix.")
flags.DEFINE_integer("workers", None, "Threads that decode and write (default: one per CPU).")
flags.DEFINE_enum("progress", "auto", PROGRESS, "A progress bar, lines (auto: a bar on a terminal), or none.")
FLAGS = flags.FLAGS


def _check_flags() -> None:
    """Refuses flags that do not make one command (one line each, before anything is read)."""
    sources = [name for name in ("image_folder", "cifar_dir") if FLAGS[name].value is not None]
    if len(sources) != 1:
        given = f"both --{sources[0]} and --{sources[1]}" if sources else "neither"
        raise ValueError(f"give one source, --image_folder or --cifar_dir; received {given}.")
    cifar_only = [f"--{name}" for name in ("cifar_split", "num_classes") if FLAGS[name].present]
    if sources[0] == "image_folder" and cifar_only:
        verb = "applies" if len(cifar_only) == 1 else "apply"
        raise ValueError(f"{' and '.join(cifar_only)} {verb} to --cifar_dir, not --image_folder.")
    if sources[0] == "cifar_dir" and FLAGS.skip_corrupt:
        raise ValueError("--skip_corrupt applies to --image_folder: CIFAR rows are pixels, never corrupt files.")
    if sources[0] == "cifar_dir" and FLAGS.cifar_split is None:
        raise ValueError("--cifar_dir needs --cifar_split: 'train' or 'eval' ('test').")
    for name, example in (("output", "/data/shards/train"), ("shards", "8")):
        if FLAGS[name].value is None:
            raise ValueError(f"--{name} is required, e.g. --{name}={example}.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; every setting is a flag (see --help).")
    _check_flags()
    settings = dict(seed=FLAGS.seed, overwrite=FLAGS.overwrite, workers=FLAGS.workers, progress=FLAGS.progress)
    try:
        if FLAGS.image_folder is not None:
            split = prepare_image_folder(
                FLAGS.image_folder, FLAGS.output, FLAGS.shards, skip_corrupt=FLAGS.skip_corrupt, **settings
            )
        else:
            split = prepare_cifar(
                FLAGS.cifar_dir,
                FLAGS.cifar_split,
                FLAGS.output,
                FLAGS.shards,
                num_classes=FLAGS.num_classes,
                **settings,
            )
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            "interrupted: the shards finished so far are kept; run the same command to write the rest."
        ) from None
    if split.skipped:
        print(f"Left out {_count(len(split.skipped), 'corrupt image')}:", flush=True)
        for file, reason in split.skipped:
            print(f"  {file}: {reason}", flush=True)
    kept = f" ({len(split.kept)} kept from an earlier run)" if split.kept else ""
    print(
        f"{_count(split.num_examples, 'image')} of {_count(len(split.class_names), 'class', 'classes')} in "
        f"{_count(len(split.shards), 'shard')}{kept}: {split.pattern}",
        flush=True,
    )
    print(f"Manifest: {split.manifest}", flush=True)
    print(f"Read them with TFRecordData.train_files (or eval_files) = '{split.pattern}'", flush=True)


def _count(number: int, noun: str, plural: str | None = None) -> str:
    """`1 shard`, `8 shards`."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def run() -> None:
    app.run(cli.run_reporting_errors(main, "resnet-prepare"))


if __name__ == "__main__":
    run()
