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
        if not fusable:
            return super().call(inputs, training=training, mask=mask)
        return _fused_batch_norm(self, inputs, bool(training) and self.trainable)


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
