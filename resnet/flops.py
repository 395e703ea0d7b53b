"""Analytic multiply-accumulate (MAC) counts of built models."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from resnet._internals import flatten_layers
from resnet.model import ResNet


def _layer_macs(layer: keras.layers.Layer) -> int:
    if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) or not layer.built:
        return 0
    input_shape = layer.get_build_config()["input_shape"]
    output_shape = layer.compute_output_shape(input_shape)
    if isinstance(layer, keras.layers.Dense):
        return int(input_shape[-1]) * layer.units
    if any(d is None for d in output_shape[1:3]):
        raise ValueError(
            f"Layer {layer.name!r} was built for an unknown spatial size {tuple(input_shape)}; "
            "pass `input_shape` to count_macs."
        )
    kh, kw = layer.kernel_size
    per_output = kh * kw * int(input_shape[-1]) // layer.groups
    return int(output_shape[1]) * int(output_shape[2]) * layer.filters * per_output


def count_macs(model: keras.layers.Layer, input_shape: Sequence[int] | None = None) -> int:
    """Multiply-accumulates of a forward pass on one image, counting convolutions and dense layers.

    Norms, activations, pooling and additions are left out, as in the paper's FLOP figures
    (He et al., 2016, Table 1: "multiply-adds"). Squeeze-and-excitation convs are included.

    Args:
        model: A built layer or model. Its convolutions must have been built for a known
            spatial size, unless it is a `ResNet` and `input_shape` is given.
        input_shape: `(height, width, channels)` to count a `ResNet` at; a copy of the model
            is built at that size (the weights do not matter for the count).

    Returns:
        The MAC count (divide by 1e9 for GMACs).

    Example:

    >>> import resnet
    >>> round(count_macs(resnet.build("resnet50"), (224, 224, 3)) / 1e9, 2)
    4.09
    """
    if input_shape is not None:
        if not isinstance(model, ResNet):
            raise ValueError(
                f"`input_shape` is only supported for ResNet models; build {model.name!r} at the "
                "size to count and call count_macs(model)."
            )
        if tuple(input_shape) != tuple(model.image_shape):
            model = ResNet.from_config({**model.get_config(), "input_shape": list(input_shape)})
    return sum(_layer_macs(layer) for layer in flatten_layers(model))
