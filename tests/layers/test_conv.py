"""Symmetric (PyTorch) padding against explicit padding, and TensorFlow's 'same'."""

import keras
import numpy as np
import pytest

import resnet
from conftest import images


@pytest.mark.parametrize(
    "kernel, stride, dilation, size", [(7, 2, 1, 16), (3, 2, 1, 9), (3, 1, 2, 8), (1, 2, 1, 8), (3, 1, 3, 10)]
)
def test_symmetric_padding_equals_explicit_zero_padding(kernel, stride, dilation, size):
    conv = resnet.Conv2D(4, kernel, strides=stride, padding="symmetric", dilation_rate=dilation)
    x = images(size=size, channels=3)
    out = np.asarray(conv(x))
    pad = dilation * (kernel - 1) // 2
    reference = keras.layers.Conv2D(4, kernel, strides=stride, padding="valid", dilation_rate=dilation)
    reference.build((None, None, None, 3))
    reference.set_weights(conv.get_weights())
    expected = np.asarray(reference(np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert conv.compute_output_shape(x.shape) == out.shape


def test_same_padding_differs_for_strided_convs_on_even_inputs():
    x = images(size=8, channels=3)
    symmetric = resnet.Conv2D(2, 3, strides=2, padding="symmetric")
    same = resnet.Conv2D(2, 3, strides=2, padding="same")
    symmetric(x)
    same(x)
    same.set_weights(symmetric.get_weights())
    assert not np.allclose(np.asarray(symmetric(x)), np.asarray(same(x)))


def test_padding_mode_is_serialized():
    conv = resnet.Conv2D(2, 3, strides=2, padding="symmetric")
    assert conv.get_config()["padding"] == "symmetric"
    assert resnet.Conv2D.from_config(conv.get_config()).pad_size == 1


def test_unknown_padding_is_named():
    with pytest.raises(ValueError, match=r"`padding`.*'reflect'"):
        resnet.Conv2D(2, 3, padding="reflect")


@pytest.mark.parametrize("kernel", [3, 7])
def test_symmetric_padding_gradients_equal_explicit_padding(kernel):
    import tensorflow as tf

    x = tf.constant(images(size=10, channels=4))
    conv = resnet.Conv2D(5, kernel, strides=2, padding="symmetric", use_bias=True)
    conv.build(x.shape)
    reference = keras.layers.Conv2D(5, kernel, strides=2, padding="valid", use_bias=True)
    reference.build((None, None, None, 4))
    reference.set_weights(conv.get_weights())
    pad = (kernel - 1) // 2
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = tf.reduce_sum(conv(x) ** 2)
        theirs = tf.reduce_sum(reference(tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])) ** 2)
    for a, b in zip(
        tape.gradient(ours, [x, *conv.trainable_variables]),
        tape.gradient(theirs, [x, *reference.trainable_variables]),
        strict=False,
    ):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
