"""Sublayers, created and built in their owner's `build`, shape by shape.

Every layer of the package that owns other layers creates them in `build`, where the input
shape is known (a shortcut decides there whether to project, squeeze-and-excitation sizes its
hidden width from the input channels), and builds them there with `build_chain`.
"""

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


def chain_output_shape(layers: Iterable[keras.layers.Layer | None], input_shape: tuple) -> tuple:
    """The output shape of built `layers` (None skipped) applied in sequence."""
    shape = input_shape
    for layer in layers:
        if layer is not None:
            shape = layer.compute_output_shape(shape)
    return shape
