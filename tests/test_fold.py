"""fold_batch_norm: every batch norm after a convolution merged into it, the outputs unchanged."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import resnet
from conftest import images, marked_slow, randomize_norms, relative_error

QUICK = ("cifar/resnet20", "cifar/resnet20_b", "resnet18")


def batch_norm_ops(model, size: int) -> int:
    function = tf.function(lambda x: model(x, training=False))
    graph = function.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32)).graph
    return sum(op.type.startswith("FusedBatchNorm") for op in graph.get_operations())


@pytest.mark.parametrize("name", marked_slow(resnet.available_configs(), lambda name: name not in QUICK))
def test_folding_keeps_the_outputs_of_every_shipped_config(name):
    size = 32 if name.startswith("cifar/") else 64
    model = resnet.build(name, [] if name.startswith("cifar/") else [f"ResNet.input_shape = ({size}, {size}, 3)"])
    randomize_norms(model, seed=1)
    x = images(2, size)
    expected = model(x, training=False).numpy()
    before = [w.numpy().copy() for w in model.weights]
    folded = resnet.fold_batch_norm(model)
    assert relative_error(folded(x).numpy(), expected) < 1e-5
    assert all(
        np.array_equal(w.numpy(), b) for w, b in zip(model.weights, before, strict=True)
    )  # the model is not changed
    assert np.array_equal(model(x, training=False).numpy(), expected)
    norms = batch_norm_ops(model, size)
    if name.endswith("_gn"):
        assert norms == 0 and batch_norm_ops(folded, size) == 0  # group norms depend on the input
    elif name.endswith("_v2"):  # pre-activation: the norms before each block's first conv stay
        assert 0 < batch_norm_ops(folded, size) < norms / 2
    else:
        assert norms > 0 and batch_norm_ops(folded, size) == 0


def test_frozen_norms_fold_and_mixed_precision_stays_close():
    model = resnet.build("resnet18", ["ResNet.norm = 'frozen_batch'", "ResNet.input_shape = (32, 32, 3)"])
    randomize_norms(model, seed=2)
    x = images(2, 32)
    folded = resnet.fold_batch_norm(model)
    assert batch_norm_ops(folded, 32) == 0
    assert relative_error(folded(x).numpy(), model(x, training=False).numpy()) < 1e-5
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        half = resnet.build("cifar/resnet20")
    finally:
        keras.config.set_dtype_policy("float32")
    randomize_norms(half, seed=3)
    x = images(2, 32)
    folded = resnet.fold_batch_norm(half)
    assert folded.compute_dtype == "bfloat16"
    assert relative_error(np.float32(folded(x)), np.float32(half(x, training=False))) < 0.05


def test_models_that_are_not_a_resnet_are_refused():
    sequential = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()]
    )
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs)), name="plain")
    stage = resnet.ResidualStage("basic", num_blocks=1, filters=4, name="stage")
    for model, received in (
        (sequential, "Sequential 'sequential'"),
        (plain, "Functional 'plain'"),
        (stage, "ResidualStage 'stage'"),
        ("resnet18", "str"),
    ):
        with pytest.raises(
            ValueError,
            match=r"`model` must be a ResNet built by this package \(resnet.build\(...\) or "
            rf"resnet.ResNet\(...\)\).*; received {received}\.$",
        ):
            resnet.fold_batch_norm(model)


@pytest.mark.slow
def test_fold_benchmark_reports_both_models_per_precision_and_batch(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "fold.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fold.py"
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            "--config=cifar/resnet20",
            "--image_size=32",
            "--batch_sizes=1,4",
            "--steps=1",
            "--repeats=2",
            "--warmup=1",
            f"--json={out}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["precisions"]) == {"float32", "mixed_bfloat16"}
    for precision, batches in results["precisions"].items():
        assert set(batches) == {"batch_1", "batch_4"}
        for entry in batches.values():
            for name in ("unfolded", "folded"):
                assert 0 < entry[name]["min"] <= entry[name]["images_per_second"] <= entry[name]["max"]
            assert entry["speedup"] == pytest.approx(
                entry["folded"]["images_per_second"] / entry["unfolded"]["images_per_second"], rel=1e-2
            )
            assert entry["max_relative_difference"] < (1e-5 if precision == "float32" else 0.05)
    assert results["machine"]["cpu"]
