"""Validators shared by the configuration parts: each names the field, the value and the allowed range."""

from __future__ import annotations

import numbers

__all__ = ["int_field", "pair_field", "real_field"]


def int_field(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def real_field(name: str, value, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not value < float("inf") or (positive and not value > 0):
        raise ValueError(f"{name} must be {'> 0 and ' if positive else ''}finite, got {value!r}")
    return value


def pair_field(name: str, value, minimum: int, maximum: int | None = None) -> tuple[int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair, got {value!r}")
    return (int_field(f"{name}[0]", value[0], minimum, maximum), int_field(f"{name}[1]", value[1], minimum, maximum))
