"""Shared fixtures: a clean gin config and dtype policy per test, weight randomisation, and
writers of small datasets in real formats."""

import importlib.util
import json
import os
import pickle
import subprocess
import sys
import uuid

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
import tensorflow as tf  # noqa: E402


def pytest_collection_modifyitems(items):
    """Runs `slow` tests first (keeping their order otherwise): under pytest-xdist the long
    multi-process tests then overlap the many short ones instead of ending the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def marked_slow(values, is_slow) -> list:
    """Parameters for `parametrize`: the values for which `is_slow(value)` holds carry the `slow` mark."""
    return [pytest.param(v, marks=pytest.mark.slow) if is_slow(v) else v for v in values]


@pytest.fixture(autouse=True)
def clean_state():
    gin.clear_config()
    keras.config.set_dtype_policy("float32")
    # Fresh layer names per test, without the full garbage collection that would cost 0.2 s a test.
    keras.backend.clear_session(free_memory=False)
    yield
    gin.clear_config()
    keras.config.set_dtype_policy("float32")


def randomize_norms(model: keras.layers.Layer, seed: int = 0, shift: float = 0.1) -> None:
    """Gives every norm layer non-trivial statistics and affine weights, so none is an identity:
    scales and variances uniform in [0.5, 1.5], offsets and means normal with std `shift`."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        shape = tuple(weight.shape)
        leaf = weight.path.rsplit("/", 1)[-1]
        if leaf in ("gamma", "moving_variance"):
            weight.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        elif leaf in ("beta", "moving_mean"):
            weight.assign(rng.normal(0.0, shift, shape).astype("float32"))


def torchvision_resnet18_state(num_classes: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """A state dict with the names and shapes of torchvision's resnet18, written from its layout."""
    rng = np.random.default_rng(seed)
    state = {}

    def conv(name, out, inp, k):
        state[f"{name}.weight"] = rng.normal(0, 0.1, (out, inp, k, k)).astype("float32")

    def bn(name, width):
        state[f"{name}.weight"] = rng.uniform(0.5, 1.5, width).astype("float32")
        state[f"{name}.bias"] = rng.normal(0, 0.1, width).astype("float32")
        state[f"{name}.running_mean"] = rng.normal(0, 0.1, width).astype("float32")
        state[f"{name}.running_var"] = rng.uniform(0.5, 1.5, width).astype("float32")
        state[f"{name}.num_batches_tracked"] = np.array(7, dtype="int64")

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inp = 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            conv(f"{prefix}.conv1", width, inp if block == 0 else width, 3)
            bn(f"{prefix}.bn1", width)
            conv(f"{prefix}.conv2", width, width, 3)
            bn(f"{prefix}.bn2", width)
            if block == 0 and stage > 1:
                conv(f"{prefix}.downsample.0", width, inp, 1)
                bn(f"{prefix}.downsample.1", width)
        inp = width
    state["fc.weight"] = rng.normal(0, 0.1, (num_classes, 512)).astype("float32")
    state["fc.bias"] = rng.normal(0, 0.1, num_classes).astype("float32")
    return state


def images(batch: int = 2, size: int = 32, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (batch, size, size, channels)).astype("float32")


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Max absolute difference divided by the max absolute expected value."""
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def trainable_count(layer: keras.layers.Layer) -> int:
    return int(sum(np.prod(w.shape) for w in layer.trainable_weights))


def random_images(count: int, height: int = 32, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def write_cifar_batch(path, images: np.ndarray, labels, label_key: bytes = b"labels", **extra) -> None:
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # the official CHW row layout
    batch = {b"batch_label": b"test batch", label_key: list(labels), b"data": rows, **extra}
    with open(path, "wb") as file:
        pickle.dump(batch, file, protocol=2)


def write_cifar10(directory, per_batch: int = 3) -> dict:
    os.makedirs(directory, exist_ok=True)
    written = {"train": ([], []), "eval": ([], [])}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images, labels = random_images(per_batch, seed=i), [(i + k) % 10 for k in range(per_batch)]
        write_cifar_batch(os.path.join(directory, name), images, labels)
        split = "eval" if name == "test_batch" else "train"
        written[split][0].extend(images)
        written[split][1].extend(labels)
    return written


@pytest.fixture(params=["local", "ram"])
def location(request, tmp_path):
    """A directory path that does not exist yet: local, or on TensorFlow's in-memory ram:// file system."""
    return str(tmp_path / "run") if request.param == "local" else f"ram://{uuid.uuid4().hex}/run"


def files_below(location: str) -> dict[str, bytes]:
    """Every file below `location` (any TensorFlow file system) with its bytes, by relative path."""
    found = {}
    for directory, _, names in tf.io.gfile.walk(location):
        for name in names:
            path = f"{directory.rstrip('/')}/{name}"
            with tf.io.gfile.GFile(path, "rb") as f:
                found[path[len(location) + 1 :]] = f.read()
    return found


# ------------------------------------------------------------------------------ export tests


@pytest.fixture(scope="module")
def gfile_imported_as_keras_does():
    """Keras imports `tensorflow.io.gfile` by name when it first touches a file, which runs that
    module again and resets its functions, undoing a test's monkeypatch of `tf.io.gfile.rename`
    made before the export's first `model.save`. Importing it first makes such tests hold in any
    order (alone, or as the first export of the process)."""
    importlib.import_module("tensorflow.io.gfile")


@pytest.fixture(scope="module")
def model():
    """A small CIFAR ResNet (one block a stage) to export: every layer kind of ResNet-20, a third of its depth."""
    import resnet

    return resnet.build("cifar/resnet20", ["ResNet.stage_blocks = (1, 1, 1)"])


@pytest.fixture
def preprocessing():
    from resnet.data.preprocessing import Preprocessing

    return Preprocessing(image_size=32)


@pytest.fixture(params=["local", "ram"])
def parent(request, tmp_path):
    """A directory to export into: local, or on TensorFlow's in-memory ram:// file system."""
    return str(tmp_path) if request.param == "local" else f"ram://{uuid.uuid4().hex}"


# Runs a binary's `run()` (absl's app.run, the error reporting, the flag checks, main) once per
# command line given as JSON, in one process, and prints each one's exit code and output as JSON.
_CASES_SCRIPT = """
import contextlib, importlib, io, json, sys
program, module, cases = sys.argv[1], importlib.import_module(sys.argv[2]), json.loads(sys.argv[3])
from absl import flags
results = []
for args in cases:
    flags.FLAGS.unparse_flags()
    sys.argv = [program, *args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            module.run()
            code = 0
        except SystemExit as exit:
            code = exit.code or 0
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print("RESULTS " + json.dumps(results))
"""


def run_cases(program: str, module: str, cases: list[list[str]], env: dict, timeout: float = 300) -> list[dict]:
    """Runs binary `program` (the `run` of `module`) with each command line of `cases`, all in one
    process (one TensorFlow start-up); returns `{"code", "stdout", "stderr"}` per case."""
    result = subprocess.run(
        [sys.executable, "-c", _CASES_SCRIPT, program, module, json.dumps(cases)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.split("RESULTS ", 1)[1])


def run_benchmark(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `benchmarks/<script>` with `args` in a fresh process (TensorFlow's logs off); the
    result, whatever its exit code."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", script)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, path, *args], capture_output=True, text=True, env=env, timeout=timeout)
