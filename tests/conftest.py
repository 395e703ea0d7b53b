"""Shared fixtures: a clean gin config and dtype policy per test, and weight randomisation."""

import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Where torchvision is installed (for the interop comparisons), it must be imported before
# TensorFlow: the other order crashes the process (the two wheels' native libraries clash).
if importlib.util.find_spec("torchvision") is not None:
    import torch  # noqa: F401
    import torchvision  # noqa: F401

import gin  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def clean_state():
    gin.clear_config()
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()
    yield
    gin.clear_config()
    keras.config.set_dtype_policy("float32")


def randomize_norms(model: keras.layers.Layer, seed: int = 0) -> None:
    """Gives every norm layer non-trivial statistics and affine weights, so none is an identity."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        shape = tuple(weight.shape)
        leaf = weight.path.rsplit("/", 1)[-1]
        if leaf in ("gamma", "moving_variance"):
            weight.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        elif leaf in ("beta", "moving_mean"):
            weight.assign(rng.normal(0.0, 0.1, shape).astype("float32"))


def images(batch: int = 2, size: int = 32, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (batch, size, size, channels)).astype("float32")


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Max absolute difference divided by the max absolute expected value."""
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def trainable_count(layer: keras.layers.Layer) -> int:
    return int(sum(np.prod(w.shape) for w in layer.trainable_weights))
