"""Every shipped config survives `.keras` save/load bit for bit and exports a servable SavedModel."""

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import resnet
from conftest import images, marked_slow, randomize_norms, relative_error

# In the quick loop: the CIFAR ResNet-20 family and ResNet-18; every other config is `slow`.
QUICK = ("cifar/resnet20", "cifar/resnet20_b", "cifar/resnet20_c", "cifar/plain20", "resnet18")


@pytest.mark.parametrize("name", marked_slow(resnet.available_configs(), lambda name: name not in QUICK))
def test_keras_save_load_and_export_round_trip(name, tmp_path):
    model = resnet.build(name)
    randomize_norms(model)
    x = images(size=32 if name.startswith("cifar/") else 64)
    expected = np.asarray(model(x, training=False))

    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert type(reloaded) is resnet.ResNet
    assert reloaded.get_config() == model.get_config()
    np.testing.assert_array_equal(np.asarray(reloaded(x, training=False)), expected)

    export_dir = str(tmp_path / "saved_model")
    model.export(export_dir, verbose=False)
    loaded = tf.saved_model.load(export_dir)  # keep a reference: it owns the variables
    served = loaded.serve(tf.constant(x))
    # Graph execution may fuse and reorder float32 ops: compare relative to the output's scale.
    assert relative_error(np.asarray(served), expected) < 1e-5


def test_reload_ignores_gin_bindings_active_at_load_time(tmp_path):
    model = resnet.build("cifar/resnet20")
    path = str(tmp_path / "model.keras")
    model.save(path)
    # Bindings that would change every nested layer if the saved config were incomplete.
    gin.parse_config(
        """
        BasicBlock.shortcut = @ProjectionShortcut
        BasicBlock.se_ratio = 0.5
        BatchNorm.epsilon = 0.1
        ZeroPadShortcut.trainable = False
        """
    )
    reloaded = keras.models.load_model(path)
    assert reloaded.get_config() == model.get_config()
    assert reloaded.count_params() == model.count_params()
    x = images()
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(model(x)))


@pytest.mark.parametrize(
    "layer",
    [
        lambda: resnet.BottleneckBlock(16, strides=2, groups=4, base_width=16, se_ratio=0.25, shortcut="avg_down"),
        lambda: resnet.BasicBlock(16, preact=True, norm={"class_name": "GroupNorm", "config": {"groups": 4}}, shortcut={"class_name": "ProjectionShortcut", "config": {"always": True}}),
        lambda: resnet.ResidualStage("basic", num_blocks=2, filters=16, strides=2, downsample_block="last"),
        lambda: resnet.DeepStem(widths=(8, 8, 16), norm="layer", activation="swish"),
        lambda: resnet.FrozenBatchNorm(epsilon=1e-3),
    ],
)
def test_layer_config_round_trip(layer):
    original = layer()
    x = images(size=16, channels=16 if not isinstance(original, resnet.ClassicStem) else 3)
    expected = np.asarray(original(x))
    clone = type(original).from_config(original.get_config())
    clone(x)
    clone.set_weights(original.get_weights())
    assert clone.get_config() == original.get_config()
    np.testing.assert_array_equal(np.asarray(clone(x)), expected)
