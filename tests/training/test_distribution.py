"""Distribution: synchronized batch norm over two replicas, and two real workers on one machine."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json
import numpy as np
import tensorflow as tf
from resnet.training import distribution

distribution.split_cpu(2)
strategy = distribution.make_strategy("mirrored")
import resnet

x = np.random.default_rng(0).normal(2.0, 3.0, (8, 4, 4, 6)).astype("float32")
reference = resnet.BatchNorm(momentum=0.5)
expected = reference(x, training=True).numpy()

def replicated(norm_class):
    with strategy.scope():
        norm = norm_class(momentum=0.5)
        norm.build(x.shape)
    shards = strategy.experimental_distribute_values_from_function(
        lambda ctx: x[4 * ctx.replica_id_in_sync_group: 4 * (ctx.replica_id_in_sync_group + 1)])
    out = tf.function(lambda v: strategy.run(lambda t: norm(t, training=True), args=(v,)))(shards)
    out = np.concatenate([o.numpy() for o in strategy.experimental_local_results(out)])
    return norm, out

sync, sync_out = replicated(resnet.SyncBatchNorm)
local, local_out = replicated(resnet.BatchNorm)
print(json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "sync_output_error": float(np.abs(sync_out - expected).max()),
    "sync_mean_error": float(np.abs(sync.moving_mean.numpy() - reference.moving_mean.numpy()).max()),
    "sync_variance_error": float(np.abs(sync.moving_variance.numpy() - reference.moving_variance.numpy()).max()),
    "local_output_error": float(np.abs(local_out - expected).max()),
}))
"""


def test_sync_batch_norm_matches_single_device_statistics():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["sync_output_error"] < 1e-4
    assert report["sync_mean_error"] < 1e-5 and report["sync_variance_error"] < 1e-4
    # Without synchronization each replica normalizes with its own half: visibly different.
    assert report["local_output_error"] > 1e-2


def test_multi_worker_training_over_two_local_processes(tmp_path):
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("localhost", 0))
            ports.append(s.getsockname()[1])
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    model_dir = tmp_path / "run"
    args = [
        str(Path(sys.executable).parent / "resnet-train"), f"--model_dir={model_dir}",
        "--gin_param=Trainer.epochs = 2", "--gin_param=Trainer.steps_per_epoch = 3",
        "--gin_param=Trainer.batch_size = 16", "--gin_param=Trainer.strategy = 'multi_worker_mirrored'",
    ]
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err
        assert "2 replicas, 8 images per replica per step" in out
    # Synchronous training: both workers see the same losses; only the chief writes the run.
    epoch_lines = [[l for l in out.splitlines() if l.startswith("Epoch 2/2")][0].split("(")[0] for out, _ in outputs]
    assert epoch_lines[0] == epoch_lines[1]
    assert (model_dir / "command.txt").read_text().count("resnet-train") == 1
    assert [line.split(",")[0] for line in (model_dir / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2"]
