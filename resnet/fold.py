"""Folding inference-mode batch norms into the convolutions before them, for serving.

In inference a batch norm is an affine map per channel, `y = (x - mean) * gamma / sqrt(var +
epsilon) + beta`; after a convolution it can be merged into the convolution's kernel and bias,
leaving one op where there were two.
"""

from __future__ import annotations

import keras
import numpy as np

from resnet._internals import flatten_layers
from resnet.layers.conv import Conv2D
from resnet.layers.normalization import BatchNorm
from resnet.model import ResNet


def fold_batch_norm(model: ResNet) -> ResNet:
    """A copy of `model` for inference in which every batch norm that directly follows a
    convolution is folded into it.

    Folded are the norms after each convolution of the blocks, the stems and the projection
    shortcuts: `BatchNorm`, `SyncBatchNorm` and `FrozenBatchNorm`, with their moving statistics.
    Norms that follow no convolution (the pre-activation norms of v2 blocks, the final norm)
    and group or layer norms (which depend on the input) stay as they are. The copy gives the
    model's inference outputs up to float rounding; `model` is not changed.

    The copy is for inference and export only: it has no batch norms left to train, and its
    config still describes `model` (save `model`, not the copy).

    Args:
        model: A `ResNet` (built with `resnet.build` or `resnet.ResNet`).

    Returns:
        The folded copy.

    Raises:
        ValueError: `model` is not a `ResNet`: the copy is rebuilt from a ResNet's config.

    Example:

    >>> import resnet
    >>> model = resnet.build("cifar/resnet20")
    >>> folded = fold_batch_norm(model)
    >>> images = keras.random.normal((2, 32, 32, 3), seed=0)
    >>> bool(np.allclose(folded(images), model(images, training=False), atol=1e-5))
    True
    """
    if not isinstance(model, ResNet):
        named = f" {model.name!r}" if isinstance(model, keras.layers.Layer) else ""
        raise ValueError(
            "`model` must be a ResNet built by this package (resnet.build(...) or resnet.ResNet(...)), whose "
            f"config the folded copy is rebuilt from; received {type(model).__name__}{named}."
        )
    # The copy's convolutions all get a bias (`use_bias=True` wherever the config says "auto" or
    # False): a built Keras layer takes no new variables, so the folded biases must exist from
    # the start. Convolutions that fold nothing keep a zero bias.
    config = _with_biases(keras.saving.serialize_keras_object(model))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(model.dtype_policy)  # the model's own policy is not in its config
    try:
        folded = keras.saving.deserialize_keras_object(config)
    finally:
        keras.config.set_dtype_policy(previous)
    variables = {variable.path: variable for variable in folded.weights}
    for variable in model.weights:
        variables[variable.path].assign(variable)
    for layer in flatten_layers(folded):
        if isinstance(getattr(layer, "convs", None), list) and isinstance(getattr(layer, "norms", None), list):
            for i, (conv, norm) in enumerate(zip(layer.convs, layer.norms, strict=True)):
                if _fold(conv, norm):
                    layer.norms[i] = None
        elif _fold(getattr(layer, "conv", None), getattr(layer, "norm_layer", None)):
            layer.norm_layer = None
    return folded


def _with_biases(config):
    """`config` (nested dicts and lists) with every `use_bias` set to True."""
    if isinstance(config, dict):
        return {key: True if key == "use_bias" else _with_biases(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_with_biases(value) for value in config]
    return config


def _fold(conv: keras.layers.Layer | None, norm: keras.layers.Layer | None) -> bool:
    """Folds `norm` into `conv` if both are of the kinds that fold; returns whether it did."""
    if not isinstance(conv, Conv2D) or not isinstance(norm, BatchNorm):
        return False
    mean = np.asarray(norm.moving_mean, np.float64)
    scale = 1.0 / np.sqrt(np.asarray(norm.moving_variance, np.float64) + norm.epsilon)
    if norm.scale:
        scale = scale * np.asarray(norm.gamma, np.float64)
    shift = np.asarray(norm.beta, np.float64) if norm.center else 0.0
    kernel = np.asarray(conv.kernel, np.float64)  # [height, width, inputs / groups, outputs]
    bias = np.asarray(conv.bias, np.float64)
    conv.kernel.assign((kernel * scale).astype(np.float32))
    conv.bias.assign(((bias - mean) * scale + shift).astype(np.float32))
    return True
