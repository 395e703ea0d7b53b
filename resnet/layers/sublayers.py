"""Building a layer's sublayers in `build`, shape by shape."""

from __future__ import annotations

from collections.abc import Iterable

import keras


def build_chain(layers: Iterable[keras.layers.Layer | None], input_shape: tuple) -> tuple:
    """Builds `layers` (skipping None and already-built ones) as if applied in sequence.

    Returns:
        The output shape of the last layer.
    """
    shape = input_shape
    for layer in layers:
        if layer is None:
            continue
        if not layer.built:
            layer.build(shape)
        shape = layer.compute_output_shape(shape)
    return shape
