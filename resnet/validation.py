"""Argument checks (each failure names the argument, the value and what is allowed) and the pieces
of error messages that several modules share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def check_choice(argument: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Returns `value` if it is one of `allowed`, else raises `ValueError`."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"`{argument}` must be one of {', '.join(repr(a) for a in allowed)}; received {value!r}.")
    return value


def check_int(argument: str, value: Any, minimum: int = 1) -> int:
    """Returns `value` if it is an integer >= `minimum`, else raises `ValueError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{argument}` must be an integer >= {minimum}; received {value!r}.")
    return value


def check_rate(argument: str, value: Any, *, allow_one: bool = False) -> float:
    """Returns `value` as a float in [0, 1) (or [0, 1] with `allow_one`), else raises `ValueError`."""
    upper_ok = (lambda v: v <= 1.0) if allow_one else (lambda v: v < 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value and upper_ok(value)):
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"`{argument}` must be a number in {interval}; received {value!r}.")
    return float(value)


def check_int_sequence(argument: str, value: Any, length: int | None = None, minimum: int = 1) -> tuple[int, ...]:
    """Returns `value` as a tuple of integers >= `minimum`, optionally of a fixed length."""
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"`{argument}` must be a sequence of integers; received {value!r}.")
    if length is not None and len(value) != length:
        raise ValueError(f"`{argument}` must have {length} entries; received {len(value)}: {tuple(value)!r}.")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < minimum:
            raise ValueError(f"`{argument}` must hold integers >= {minimum}; received {tuple(value)!r}.")
    return tuple(value)


def is_host_port(address: str, placeholder: str | None = None) -> bool:
    """Whether `address` is `host:port` (an IPv6 host in brackets), with a port number or `placeholder`."""
    host, colon, port = address.rpartition(":")
    number_ok = port.isdigit() and 0 < int(port) <= 65535
    return bool(colon and host and "/" not in host and " " not in host) and (number_ok or port == placeholder)


def listing(items: Sequence[str], limit: int = 8) -> str:
    """`items` joined with commas for an error message, the first `limit` of them and how many more."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def first_line(error: BaseException) -> str:
    """The first line of an error's message (TensorFlow's run over many), at most 500 characters."""
    text = str(error).strip()
    return text.splitlines()[0][:500] if text else type(error).__name__
