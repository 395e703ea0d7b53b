"""Normalization layers, swappable by name (`norm="batch"`, `"group"`, ...) or gin binding.

Defaults follow torchvision/timm numerics (`eps=1e-5`, PyTorch momentum 0.1, i.e. Keras
momentum 0.9). Bind `BatchNorm.momentum` / `BatchNorm.epsilon` (and likewise for the other
classes) in gin to change them.

On the TensorFlow backend, `BatchNorm` runs TensorFlow's fused batch-norm kernel: one op per
call instead of Keras' separate moments, casts and arithmetic passes over each activation, with
bfloat16/float16 activations normalized against float32 statistics directly. It computes what
`keras.layers.BatchNormalization` computes (same outputs, same moving-average updates); other
backends use the Keras implementation. Model code calls TensorFlow only in such fast paths and
only when it is the backend: here and in `resnet.layers.conv.Conv2D`'s explicitly padded
convolution. What each saves is measured in benchmarks/RESULTS.md.
"""

from __future__ import annotations

from typing import Any

import keras

from resnet.registry import ArgsConfigMixin, build_from_spec, register
from resnet.validation import check_int


@register("norm", "batch")
class BatchNorm(ArgsConfigMixin, keras.layers.BatchNormalization):
    """Batch normalization over the channel axis.

    Args:
        momentum: Keras momentum of the moving statistics (PyTorch's momentum is 1 - this).
        epsilon: Added to the variance.
        gamma_initializer: Initializer of the scale (blocks pass "zeros" for zero-init).
        synchronized: Reduce statistics across replicas; None takes the class default
            (False here, True for `SyncBatchNorm`).

    Example:

    >>> norm = BatchNorm(momentum=0.9, epsilon=1e-5)
    >>> tuple(norm(keras.ops.ones((2, 8, 8, 16))).shape)
    (2, 8, 8, 16)
    """

    default_synchronized = False

    def __init__(
        self,
        momentum: float = 0.9,
        epsilon: float = 1e-5,
        gamma_initializer: Any = "ones",
        synchronized: bool | None = None,
        name: str | None = None,
        dtype: Any = None,
        trainable: bool = True,
    ):
        super().__init__(
            axis=-1,
            momentum=momentum,
            epsilon=epsilon,
            gamma_initializer=gamma_initializer,
            synchronized=self.default_synchronized if synchronized is None else bool(synchronized),
            name=name,
            dtype=dtype,
            trainable=trainable,
        )

    def call(self, inputs, training=None, mask=None):
        fusable = (
            keras.backend.backend() == "tensorflow"
            and not self.synchronized
            and mask is None
            and len(inputs.shape) == 4
            and training in (None, True, False)
        )
        if fusable:
            return _fused_batch_norm(self, inputs, bool(training) and self.trainable)
        synchronized_training = (
            keras.backend.backend() == "tensorflow"
            and self.synchronized
            and mask is None
            and bool(training)
            and self.trainable
            and not self.renorm
        )
        if synchronized_training:
            return _synchronized_batch_norm(self, inputs)
        return super().call(inputs, training=training, mask=mask)


@register("norm", "sync_batch")
class SyncBatchNorm(BatchNorm):
    """Batch normalization whose statistics are reduced across all replicas of a strategy.

    Example:

    >>> SyncBatchNorm().synchronized
    True
    """

    default_synchronized = True


@register("norm", "frozen_batch")
class FrozenBatchNorm(BatchNorm):
    """Batch normalization fixed at its inference statistics and affine parameters.

    It always normalizes with the moving mean and variance, never updates them, and its weights
    stay non-trainable whatever `trainable` says, also when an enclosing model is set
    `trainable = True`. Use it to fine-tune a pretrained network with small batches.

    Example:

    >>> norm = FrozenBatchNorm()
    >>> _ = norm(keras.ops.ones((2, 4, 4, 8)), training=True)
    >>> len(norm.trainable_weights), len(norm.non_trainable_weights)
    (0, 4)
    """

    @property
    def trainable(self) -> bool:
        return False

    @trainable.setter
    def trainable(self, value: bool) -> None:
        # Frozen by definition: enclosing layers propagating `trainable = True` leave it frozen.
        self._trainable = False

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)


@register("norm", "group")
class GroupNorm(ArgsConfigMixin, keras.layers.GroupNormalization):
    """Group normalization (Wu & He, 2018) over channel groups.

    Example:

    >>> norm = GroupNorm(groups=32)
    >>> tuple(norm(keras.ops.ones((2, 8, 8, 64))).shape)
    (2, 8, 8, 64)
    """

    def __init__(
        self,
        groups: int = 32,
        epsilon: float = 1e-5,
        gamma_initializer: Any = "ones",
        name: str | None = None,
        dtype: Any = None,
        trainable: bool = True,
    ):
        check_int("GroupNorm.groups", groups)
        super().__init__(
            groups=groups,
            axis=-1,
            epsilon=epsilon,
            gamma_initializer=gamma_initializer,
            name=name,
            dtype=dtype,
            trainable=trainable,
        )

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is not None and channels % self.groups:
            raise ValueError(
                f"GroupNorm {self.name!r}: `groups`={self.groups} must divide the number of "
                f"channels, which is {channels}."
            )
        super().build(input_shape)


@register("norm", "layer")
class LayerNorm(ArgsConfigMixin, keras.layers.LayerNormalization):
    """Layer normalization over the channels of each pixel (timm's `LayerNorm2d`).

    Example:

    >>> norm = LayerNorm()
    >>> tuple(norm(keras.ops.ones((2, 8, 8, 16))).shape)
    (2, 8, 8, 16)
    """

    def __init__(
        self,
        epsilon: float = 1e-5,
        gamma_initializer: Any = "ones",
        name: str | None = None,
        dtype: Any = None,
        trainable: bool = True,
    ):
        super().__init__(
            axis=-1,
            epsilon=epsilon,
            gamma_initializer=gamma_initializer,
            name=name,
            dtype=dtype,
            trainable=trainable,
        )


def _synchronized_batch_norm(layer: BatchNorm, inputs):
    """Batch norm in training with statistics over all replicas, updating the moving statistics
    as `keras.layers.BatchNormalization` does, computed so that the result does not depend on
    how the batch is split between replicas, to float rounding.

    Keras' synchronized batch norm takes the variance as E[x^2] - E[x]^2 and normalizes as
    `x * inv + (beta - mean * inv)`: both lose most of their digits, and their gradients more,
    when the mean is large against the spread, so that the training differs by percents
    between one device and two replicas of the same global batch. Here the mean is reduced
    first, then the squared deviations from it (two all-reduces per layer instead of Keras'
    three), and the inputs are centred before they are scaled, as a one-device
    `tf.nn.moments` and `FusedBatchNormV3` do.
    """
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    x = tf.cast(inputs, tf.float32)  # statistics and normalization in float32, as Keras does for float16
    axes = list(range(len(x.shape) - 1))
    if context is None:  # a cross-replica context: no replica to synchronize with
        mean, variance = tf.nn.moments(x, axes)
    else:
        sums = tf.reduce_sum(x, axis=axes)
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
        totals = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat([sums, count[None]], 0))
        count = tf.maximum(totals[-1], 1.0)
        mean = totals[:-1] / count
        # The mean's gradient through the deviations is zero (they sum to zero over all
        # replicas), as in tf.nn.moments.
        deviations = tf.reduce_sum(tf.math.squared_difference(x, tf.stop_gradient(mean)), axis=axes)
        variance = context.all_reduce(tf.distribute.ReduceOp.SUM, deviations) / count
    momentum = layer.momentum
    layer.moving_mean.assign(layer.moving_mean * momentum + tf.cast(mean, layer.moving_mean.dtype) * (1.0 - momentum))
    layer.moving_variance.assign(
        layer.moving_variance * momentum + tf.cast(variance, layer.moving_variance.dtype) * (1.0 - momentum)
    )
    scale = tf.math.rsqrt(variance + layer.epsilon) * tf.cast(layer.gamma, tf.float32)
    outputs = (x - mean) * scale + tf.cast(layer.beta, tf.float32)
    return tf.cast(outputs, layer.compute_dtype)


def _fused_batch_norm(layer: BatchNorm, inputs, training: bool):
    """Batch norm of NHWC `inputs` with TensorFlow's fused kernel, updating moving statistics
    in training exactly as `keras.layers.BatchNormalization` does."""
    import tensorflow as tf

    empty = tf.constant([], tf.float32)
    outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
        x=inputs,
        scale=layer.gamma,
        offset=layer.beta,
        mean=empty if training else layer.moving_mean,
        variance=empty if training else layer.moving_variance,
        epsilon=layer.epsilon,
        exponential_avg_factor=1.0,
        data_format="NHWC",
        is_training=training,
    )
    if training:
        # The kernel reports the unbiased variance; Keras averages the biased one.
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        momentum = layer.momentum
        layer.moving_mean.assign(layer.moving_mean * momentum + mean * (1.0 - momentum))
        layer.moving_variance.assign(layer.moving_variance * momentum + variance * (1.0 - momentum))
    return outputs


def make_norm(spec: dict | None, name: str, dtype: Any, zero_init: bool = False) -> keras.layers.Layer | None:
    """Builds the norm layer a resolved spec describes (None for no normalization).

    Args:
        spec: A spec resolved by `resnet.registry.resolve_spec("norm", ...)`, or None.
        name: Layer name.
        dtype: Dtype policy, normally the owner's.
        zero_init: Start with gamma = 0, so a residual branch initially outputs zero.
    """
    if spec is None:
        return None
    if zero_init:
        spec = {**spec, "config": {**spec["config"], "gamma_initializer": "zeros"}}
    return build_from_spec("norm", spec, name=name, dtype=dtype)
