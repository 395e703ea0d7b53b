"""The degradation problem (He et al., 2016, Fig. 1 and Fig. 6), reproduced with this library.

    python benchmarks/degradation.py --output_dir=degradation
    python benchmarks/degradation.py --data_dir=/data/cifar-10-batches-py --output_dir=degradation-cifar

Trains plain and residual CIFAR-style networks of each depth in `--depths` (6n+2 layers: a 3x3
stem, three stages of n basic blocks with 16/32/64 filters, a classifier; option A shortcuts for
the residual nets, none for the plain ones) under one recipe and one seed, then writes to
`--output_dir`:

* `degradation.png`: training error (dashed) and test error (solid) per epoch, plain nets on the
  left and residual nets on the right, as in the paper's Fig. 6;
* `degradation.md`: a markdown table of the final errors and whether the paper's ordering holds
  (the deeper plain net has the higher training error; the deeper residual net does not);
* `degradation.json`: the curves, final errors and settings;
* `runs/<net>/`: each net's training directory (checkpoints, metrics.csv, TensorBoard logs).

The data is CIFAR-10 (the recipe of `experiments/cifar10_resnet56`: batch 128, SGD 0.9, weight
decay 1e-4, learning rate 0.1 divided by 10 at 50% and 75% of training, 4-pixel crops and
flips) when `--data_dir` points at the python version of CIFAR-10; otherwise the 8x8 digits
shipped inside scikit-learn (the recipe of `experiments/demo`), for a budget of a few minutes
per net on a 2-core CPU. Interrupted runs resume where they stopped when the script is rerun
with the same flags; other flags on the same `--output_dir` are refused.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time

from absl import app, flags

flags.DEFINE_string("data_dir", None, "CIFAR-10 python-version directory; the embedded digits if unset.")
flags.DEFINE_string("output_dir", "degradation", "Where the runs, figure, table and JSON go.")
flags.DEFINE_list("depths", ["20", "56"], "Depths to compare, each 6n+2 (the paper's Fig. 6 uses 20 and 56).")
flags.DEFINE_integer("epochs", None, "Training epochs (default: 40 on the digits, the paper's 164 on CIFAR-10).")
flags.DEFINE_integer("batch_size", None, "Batch size (default: the recipe's, 64 on the digits, 128 on CIFAR-10).")
flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch (default: one pass over the training split).")
flags.DEFINE_integer("seed", 0, "Seed of the initialization and data order, the same for every net.")
FLAGS = flags.FLAGS

DIGITS_EPOCHS = 40  # 1.5 to 3.5 minutes per net on 2 cores; at 20 the 56-layer nets are still improving


def net_names(depth: int) -> tuple[str, str]:
    return f"plain{depth}", f"resnet{depth}"


def blocks_per_stage(depth: int) -> int:
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"`--depths` must hold depths of the form 6n+2 (8, 14, 20, 32, 44, 56, 110, ...); received {depth}."
        )
    return (depth - 2) // 6


def recipe() -> tuple[list[str], list[str]]:
    """The gin files and bindings every net shares."""
    if FLAGS.data_dir:
        files = ["experiments/cifar10_resnet56"]
        bindings = [f"CIFAR_DIR = {FLAGS.data_dir!r}"]
        if FLAGS.epochs is not None:
            # The paper's 32k/48k of 64k iterations, scaled to the shorter run.
            bindings += [
                "learning_rate_schedule.unit = 'epochs'",
                f"learning_rate_schedule.boundaries = ({FLAGS.epochs / 2}, {FLAGS.epochs * 3 / 4})",
            ]
    else:
        files = ["experiments/demo"]
        bindings = [f"Trainer.epochs = {DIGITS_EPOCHS}"]
    if FLAGS.epochs is not None:
        bindings.append(f"Trainer.epochs = {FLAGS.epochs}")
    if FLAGS.batch_size is not None:
        bindings.append(f"Trainer.batch_size = {FLAGS.batch_size}")
    if FLAGS.steps_per_epoch is not None:
        bindings.append(f"Trainer.steps_per_epoch = {FLAGS.steps_per_epoch}")
    bindings += [f"Trainer.seed = {FLAGS.seed}", "Trainer.progress = 'epoch'", "Trainer.backup_every_steps = 100"]
    return files, bindings


def net_bindings(name: str, depth: int) -> list[str]:
    n = blocks_per_stage(depth)
    shortcut = "@NoShortcut" if name.startswith("plain") else "@ZeroPadShortcut"
    return [f"ResNet.name = '{name}'", f"ResNet.stage_blocks = ({n}, {n}, {n})", f"BasicBlock.shortcut = {shortcut}"]


def train_net(name: str, depth: int, files: list[str], bindings: list[str]) -> dict:
    """Trains one net (resuming its run if there is one) and returns its per-epoch curves."""
    import gin

    from resnet import config
    from resnet.training.trainer import Trainer

    model_dir = os.path.join(FLAGS.output_dir, "runs", name)
    with config.fresh_gin_config():
        config.parse(files, bindings + net_bindings(name, depth))
        trainer = gin.get_configurable(Trainer)(model_dir=model_dir)
        trainer.setup_process()
        trainer.build()
        parameters = sum(int(math.prod(w.shape)) for w in trainer.model.trainable_weights)
        print(
            f"\n{name}: {parameters:,} trainable parameters, {trainer.epochs} epochs of {trainer.steps} steps "
            f"on {trainer.data.name}",
            flush=True,
        )
        started = time.time()
        trainer.train()
    with open(os.path.join(model_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    return {
        "parameters": parameters,
        "epoch": [int(r["epoch"]) for r in rows],
        "train_error": [round(100 * (1 - float(r["accuracy"])), 4) for r in rows],
        "test_error": [round(100 * (1 - float(r["val_accuracy"])), 4) for r in rows],
        "seconds": round(sum(float(r["seconds"]) for r in rows), 1),
        "seconds_this_invocation": round(time.time() - started, 1),
    }


def check_settings(settings: dict) -> None:
    """Refuses to mix runs made with other settings into one comparison."""
    path = os.path.join(FLAGS.output_dir, "settings.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise ValueError(
                f"{FLAGS.output_dir!r} holds runs made with other settings ({', '.join(changed)} differ: "
                f"{ {k: previous.get(k) for k in changed} } there); pass another `--output_dir` or delete it."
            )
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(settings, f, indent=2)


def orderings(final: dict, depths: list[int]) -> dict:
    """Whether each of the paper's claims holds between the shallowest and deepest nets."""
    shallow, deep = min(depths), max(depths)
    plain_s, res_s = net_names(shallow)
    plain_d, res_d = net_names(deep)
    result = {}
    for kind in ("train_error", "test_error"):
        result[f"plain{deep}_worse_than_plain{shallow}_{kind}"] = final[plain_d][kind] > final[plain_s][kind]
        result[f"resnet{deep}_no_worse_than_resnet{shallow}_{kind}"] = final[res_d][kind] <= final[res_s][kind]
    return result


def write_table(path: str, final: dict, holds: dict, settings: dict) -> str:
    lines = [
        f"Final errors after {settings['epochs']} epochs on {settings['data']} (seed {settings['seed']}); "
        "training error is measured on the augmented batches during the last epoch.",
        "",
        "| net | trainable parameters | training error (%) | test error (%) | training time (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, entry in final.items():
        lines.append(
            f"| {name} | {entry['parameters']:,} | {entry['train_error']:.2f} | {entry['test_error']:.2f} "
            f"| {entry['seconds']:.0f} |"
        )
    lines += ["", "| the paper's ordering | holds here |", "|---|---|"]
    for claim, value in holds.items():
        lines.append(f"| {claim.replace('_', ' ')} | {'yes' if value else 'no'} |")
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def plot(path: str, curves: dict, depths: list[int], data_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind, title in ((axes[0], 0, "plain"), (axes[1], 1, "ResNet")):
        for i, depth in enumerate(sorted(depths)):
            name = net_names(depth)[kind]
            curve = curves[name]
            label = f"{title}-{depth}"
            ax.plot(curve["epoch"], curve["train_error"], "--", color=colors(i), linewidth=1.2)
            ax.plot(curve["epoch"], curve["test_error"], "-", color=colors(i), linewidth=2.2, label=label)
        ax.set_title("plain networks" if kind == 0 else "residual networks (option A)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(title="solid: test, dashed: training")
    axes[0].set_ylabel("error (%)")
    # The paper's axes: 0-20% error, the first epochs' higher errors off the top, so that
    # the differences at the end show. Wider when some net ends above that.
    last = max(max(c["train_error"][-1], c["test_error"][-1]) for c in curves.values())
    axes[0].set_ylim(0, 20 if last < 15 else min(100, 1.3 * last))
    figure.suptitle(f"Plain vs residual networks on {data_name}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv):
    del argv
    depths = sorted({int(d) for d in FLAGS.depths})
    for depth in depths:
        blocks_per_stage(depth)
    if len(depths) < 2:
        raise ValueError(f"`--depths` needs at least two depths to compare; received {FLAGS.depths}.")
    files, bindings = recipe()
    settings = {
        "data": "cifar10" if FLAGS.data_dir else "digits",
        "files": files,
        "bindings": bindings,
        "depths": depths,
    }
    check_settings(settings)

    import keras
    import tensorflow as tf

    curves = {}
    for kind in (0, 1):  # plain nets first, as in the table and the figure
        for depth in depths:
            name = net_names(depth)[kind]
            curves[name] = train_net(name, depth, files, bindings)
    final = {
        name: {
            "parameters": c["parameters"],
            "train_error": c["train_error"][-1],
            "test_error": c["test_error"][-1],
            "seconds": c["seconds"],
        }
        for name, c in curves.items()
    }
    holds = orderings(final, depths)
    settings["epochs"] = curves[next(iter(curves))]["epoch"][-1]
    settings["seed"] = FLAGS.seed
    table = write_table(os.path.join(FLAGS.output_dir, "degradation.md"), final, holds, settings)
    plot(
        os.path.join(FLAGS.output_dir, "degradation.png"),
        curves,
        depths,
        "CIFAR-10" if FLAGS.data_dir else "the scikit-learn digits",
    )
    results = {
        "settings": settings,
        "final": final,
        "ordering_holds": holds,
        "curves": curves,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "cores": os.cpu_count(),
    }
    with open(os.path.join(FLAGS.output_dir, "degradation.json"), "w") as f:
        json.dump(results, f, indent=2)
    print("\n" + table)
    print(f"Figure, table and curves in {FLAGS.output_dir}/degradation.{{png,md,json}}")


if __name__ == "__main__":
    from resnet import cli

    app.run(cli.run_reporting_errors(main, "degradation.py"))
