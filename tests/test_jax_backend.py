"""The model layers on Keras 3's JAX backend: build, forward, features, save/load and a short fit.

Only the model code (layers, stages, `ResNet`, gin configs) is portable; the data pipeline, the
trainer and serving are TensorFlow. The check runs in a subprocess with `KERAS_BACKEND=jax` (the
backend is fixed when Keras is first imported). jax is not a dependency: without it the test is
skipped, and CI runs it in a step that installs `jax[cpu]`.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("jax") is None,
        reason="jax is not installed (it is never a dependency); CI's JAX step installs jax[cpu]",
    ),
]

SCRIPT = r"""
import json
import os
import sys
import tempfile

import keras
import numpy as np

import resnet

assert keras.backend.backend() == "jax", keras.backend.backend()
report = {"backend": keras.backend.backend(), "configs": {}}
rng = np.random.default_rng(0)
for name, size in (("cifar/resnet20", 32), ("cifar/plain20", 32), ("resnet18", 64), ("resnet50d", 64),
                   ("seresnet50", 64), ("resnext50_32x4d", 64), ("resnet50_gn", 64), ("keras_resnet50_v2", 64)):
    model = resnet.build(name)
    x = rng.uniform(-1, 1, (2, size, size, 3)).astype("float32")
    logits = np.asarray(model(x, training=False))
    features = {k: tuple(v.shape) for k, v in model.extract_features(x).items()}
    path = os.path.join(tempfile.mkdtemp(), "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    report["configs"][name] = {
        "params": model.count_params(),
        "shape": list(logits.shape),
        "finite": bool(np.isfinite(logits).all()),
        "reload_difference": float(np.abs(np.asarray(reloaded(x, training=False)) - logits).max()),
        "feature_shapes": {k: list(v) for k, v in features.items()},
        "feature_strides": model.feature_strides,
    }

# A learnable task (each class adds its own colour to the noise) and seeded weights, so the
# check is on learning, not on how two steps on random labels happen to go.
keras.utils.set_random_seed(0)
model = resnet.build("cifar/resnet20", ["ResNet.num_classes = 4"])
model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
labels = np.arange(64) % 4
colours = np.eye(4, 3, dtype="float32") * 2 - 0.5
images = (rng.normal(size=(64, 32, 32, 3)) + colours[labels][:, None, None, :]).astype("float32")
history = model.fit(images, labels, batch_size=16, epochs=4, verbose=0)
report["fit_losses"] = [float(v) for v in history.history["loss"]]
print(json.dumps(report))
"""

# Weights (trainable and not) of each config, as the TensorFlow backend builds them.
EXPECTED = {
    "cifar/resnet20": 271098,
    "cifar/plain20": 271098,
    "resnet18": 11699112,
    "resnet50d": 25629512,
    "seresnet50": 28141144,
    "resnext50_32x4d": 25097128,
    "resnet50_gn": 25557032,
    "keras_resnet50_v2": 25613800,
}


def test_model_layers_run_on_the_jax_backend():
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax"
    for name, entry in report["configs"].items():
        assert entry["params"] == EXPECTED[name], name
        assert entry["finite"] and entry["shape"][0] == 2, name
        assert entry["reload_difference"] == 0.0, name
        assert list(entry["feature_shapes"]) == list(entry["feature_strides"]), name
        size = 32 if name.startswith("cifar/") else 64
        for key, shape in entry["feature_shapes"].items():
            assert shape[1] == size // entry["feature_strides"][key], (name, key)
    losses = report["fit_losses"]
    assert len(losses) == 4 and all(loss == loss for loss in losses), losses
    assert losses[-1] < 0.5 * losses[0], losses
