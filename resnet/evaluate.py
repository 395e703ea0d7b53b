"""`resnet-eval`: evaluates a run's checkpoint on its evaluation split, on one device.

    resnet-eval --model_dir=runs/demo-20260101-120000 [--checkpoint=best] [--gin_param=...]

Prints top-1, top-5, loss and the example count; the last line is a JSON object with keys
`top1`, `top5`, `loss`, `examples`, also written to `<model_dir>/eval.json`. Whatever strategy
the run trained with, evaluation runs on one device (no `TF_CONFIG` needed).
"""

from __future__ import annotations

from resnet._startup import quiet_binary_start

quiet_binary_start()  # first, before anything imports TensorFlow; does nothing unless run as a binary

from absl import app, flags

from resnet import cli

flags.DEFINE_string("model_dir", None, "Directory of a run written by resnet-train.", required=True)
flags.DEFINE_string("checkpoint", "backup", "'backup' (the latest), 'best', 'checkpoints' or a checkpoint path.")
cli.define_gin_param_flag()
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    trainer, _, evaluator, path = cli.restored_model(FLAGS.model_dir, FLAGS.gin_param, FLAGS.checkpoint)
    print(f"Evaluating {path}", flush=True)
    results = evaluator.evaluate()
    print(
        f"top-1 {results['top1']:.4f}  top-5 {results['top5']:.4f}  loss {results['loss']:.4f}  "
        f"examples {results['examples']}",
        flush=True,
    )
    trainer.run_dir.write_json("eval.json", dict(results, checkpoint=path))
    cli.print_json_last(results)


def run() -> None:
    app.run(cli.run_reporting_errors(main, "resnet-eval"))


if __name__ == "__main__":
    run()
