"""The work the speed benchmarks time: one step of a resnet config or of keras.applications.ResNet50
(inference or the training step `resnet-train` runs), and a matrix-multiply peak to compare with.

`throughput.py`, `profile_step.py` and `scaling.py` all time these, so their figures are of the
same step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

BASELINE = "keras.applications.ResNet50"


def build_step(
    model_name: str,
    *,
    config: str = "resnet50",
    mode: str = "train",
    precision: str = "float32",
    batch_size: int = 32,
    image_size: int = 224,
    jit_compile: bool = False,
) -> tuple[Callable[[], float], object]:
    """A zero-argument function running one step of `model_name` ("ours", for the resnet
    `config`, or BASELINE) to its end (its result fetched), and the model.

    `mode="train"` is the training step of `resnet.training.Trainer` (forward, loss, L2 decay,
    gradients, SGD update); `mode="inference"` a compiled forward pass in inference mode. The
    global dtype policy is left at `precision`.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    import resnet
    from resnet.data.preprocessing import Preprocessing
    from resnet.data.sources import SyntheticData
    from resnet.training.trainer import Trainer

    if mode not in ("train", "inference"):
        raise ValueError(f"`mode` must be 'train' or 'inference', got {mode!r}")
    size, batch = image_size, batch_size
    keras.config.set_dtype_policy(precision)
    if model_name == BASELINE:

        def make():
            return keras.applications.ResNet50(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    elif model_name == "ours":

        def make():
            return resnet.build(config, [f"ResNet.input_shape = ({size}, {size}, 3)", "ResNet.num_classes = 1000"])
    else:
        raise ValueError(f"`model_name` must be 'ours' or {BASELINE!r}, got {model_name!r}")
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32"))
    labels = tf.constant(rng.integers(0, 1000, batch).astype("int32"))
    if mode == "inference":
        model = make()

        @tf.function(jit_compile=jit_compile)
        def forward(x):
            return model(x, training=False)

        return (lambda: forward(images).numpy()), model
    trainer = Trainer(
        "/nonexistent-benchmark-run",  # never written: only the step is used
        data=SyntheticData(image_size=size, num_classes=1000),
        preprocessing=Preprocessing("none", image_size=size),
        model=make,
        batch_size=batch,
        steps_per_epoch=1,
        precision=precision,
        jit_compile=jit_compile,
    )
    trainer.setup_process()
    trainer.build()
    train_step = trainer.make_train_step()
    return (lambda: float(train_step((images, labels))[0])), trainer.model


def matmul_peak(dtype_name: str) -> float:
    """Best GFLOP/s of large square matrix multiplications in `dtype_name` ("float32",
    "bfloat16" or "float16")."""
    import tensorflow as tf

    dtype = {"bfloat16": tf.bfloat16, "float16": tf.float16, "float32": tf.float32}[dtype_name]
    best = 0.0
    for n in (2048, 4096):
        a = tf.cast(tf.random.normal((n, n)), dtype)
        b = tf.cast(tf.random.normal((n, n)), dtype)
        matmul = tf.function(tf.linalg.matmul)
        matmul(a, b).numpy()
        for _ in range(3):
            start = time.perf_counter()
            matmul(a, b).numpy()
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best
