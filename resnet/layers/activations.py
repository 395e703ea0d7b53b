"""Activation arguments: validated once, stored by name, applied as plain functions."""

from __future__ import annotations

from typing import Any

import keras


def serialize_activation(activation: Any, argument: str = "activation") -> str | dict | None:
    """Validates an activation (name, function or None) and returns its serializable form."""
    if activation is None:
        return None
    try:
        return keras.activations.serialize(keras.activations.get(activation))
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`{argument}` must be a Keras activation name or function, or None; received {activation!r}."
        ) from error


def get_activation(activation: Any):
    """The function for a serialized activation; None means identity."""
    return keras.activations.get(activation) if activation is not None else keras.activations.linear
