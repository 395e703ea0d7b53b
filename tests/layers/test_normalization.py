"""Norm layers: swapping by binding, frozen batch norm, group norm checks, bindable numerics."""

import keras
import numpy as np
import pytest

import resnet
from conftest import images, trainable_count
from resnet._internals import flatten_layers

NORM_CLASSES = {
    "batch": resnet.BatchNorm,
    "sync_batch": resnet.SyncBatchNorm,
    "group": resnet.GroupNorm,
    "layer": resnet.LayerNorm,
    "frozen_batch": resnet.FrozenBatchNorm,
}


def _norm_layers(model):
    return [layer for layer in flatten_layers(model) if type(layer) in NORM_CLASSES.values()]


@pytest.mark.parametrize("name", sorted(NORM_CLASSES))
def test_norm_swaps_by_binding(name):
    model = resnet.build("cifar/resnet20", [f"ResNet.norm = {name!r}", "GroupNorm.groups = 8"])
    norms = _norm_layers(model)
    assert len(norms) == 19 and all(type(n) is NORM_CLASSES[name] for n in norms)
    assert np.all(np.isfinite(np.asarray(model(images(), training=True))))


def test_norm_swaps_by_class_reference():
    model = resnet.build("resnet18", ["ResNet.norm = @GroupNorm", "GroupNorm.groups = 16"])
    norms = _norm_layers(model)
    assert all(type(n) is resnet.GroupNorm and n.groups == 16 for n in norms)


def test_no_norm_gives_biased_convs_with_auto_bias():
    model = resnet.build("cifar/resnet20", ["ResNet.norm = 'none'", "ResNet.use_bias = 'auto'"])
    assert not _norm_layers(model)
    assert all(c.use_bias for c in flatten_layers(model) if isinstance(c, resnet.Conv2D))


def test_momentum_and_epsilon_are_bindable():
    model = resnet.build("cifar/resnet20", ["BatchNorm.momentum = 0.97", "BatchNorm.epsilon = 1e-3"])
    norms = _norm_layers(model)
    assert all(n.momentum == 0.97 and n.epsilon == 1e-3 for n in norms)


def test_frozen_batch_norm_uses_and_keeps_moving_statistics():
    norm = resnet.FrozenBatchNorm(epsilon=1e-5)
    x = images(size=4, channels=3) * 5 + 2
    norm(x)
    norm.moving_mean.assign([1.0, 2.0, 3.0])
    norm.moving_variance.assign([4.0, 1.0, 0.25])
    expected = (x - np.array([1.0, 2.0, 3.0])) / np.sqrt(np.array([4.0, 1.0, 0.25]) + 1e-5)
    np.testing.assert_allclose(np.asarray(norm(x, training=True)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(norm.moving_mean), [1.0, 2.0, 3.0])
    model = keras.Sequential([keras.Input((4, 4, 3)), norm])
    model.trainable = True
    assert not norm.trainable and not model.trainable_weights


def test_frozen_batch_norm_does_not_change_in_fit():
    model = resnet.build("cifar/resnet20", ["ResNet.norm = 'frozen_batch'"])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    norms = _norm_layers(model)
    before = [np.asarray(w).copy() for n in norms for w in n.weights]
    model.fit(images(batch=8), np.arange(8) % 10, epochs=1, verbose=0)
    after = [np.asarray(w) for n in norms for w in n.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert trainable_count(model) == 269_722 - 2 * sum(n.gamma.shape[0] for n in norms)


def test_batch_norm_updates_statistics_in_training():
    norm = resnet.BatchNorm(momentum=0.5)
    x = images(size=4, channels=3) + 3.0
    norm(x, training=True)
    np.testing.assert_allclose(np.asarray(norm.moving_mean), 0.5 * x.mean(axis=(0, 1, 2)), rtol=1e-4)


def test_group_norm_checks_divisibility():
    with pytest.raises(ValueError, match=r"GroupNorm.*groups`=32 must divide the number of channels, which is 16"):
        resnet.build("cifar/resnet20", ["ResNet.norm = 'group'"])


def test_sync_batch_norm_is_synchronized():
    assert resnet.SyncBatchNorm().synchronized and not resnet.BatchNorm().synchronized


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_batch_norm_matches_keras_batch_normalization(dtype):
    """BatchNorm's fused TensorFlow kernel computes what Keras' layer computes: outputs,
    gradients, and moving statistics (Keras averages the biased batch variance)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, (4, 5, 5, 6)).astype("float32"))
    ours = resnet.BatchNorm(momentum=0.7, epsilon=1e-3, dtype=dtype)
    theirs = keras.layers.BatchNormalization(momentum=0.7, epsilon=1e-3, dtype=dtype)
    gamma = rng.uniform(0.5, 1.5, 6).astype("float32")
    for layer in (ours, theirs):
        layer.build(x.shape)
        layer.gamma.assign(gamma)
        layer.beta.assign(np.linspace(-1, 1, 6).astype("float32"))
    tolerance = 1e-4 if dtype == "float32" else 2e-2
    results = []
    for layer in (ours, theirs):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.range(6, dtype=tf.float32))
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y, *grads, layer.moving_mean, layer.moving_variance, layer(x, training=False)])
    assert results[0][0].dtype == results[1][0].dtype
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(
            np.asarray(tf.cast(a, tf.float32)), np.asarray(tf.cast(b, tf.float32)), rtol=tolerance, atol=tolerance
        )
