"""Argument checks shared by every layer (an internal module with a public name: import it, do not copy it).

Every public function of sada validates its inputs at the boundary and raises a ``ValueError``/``TypeError`` that
names the offending argument and value; these are the checks they share.
"""

from __future__ import annotations

import numbers

import numpy as np


def as_float_vector(name: str, values, *, min_len: int = 1) -> np.ndarray:
    """Return ``values`` as a finite 1-D float64 array of at least ``min_len`` entries."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a sequence of real numbers, got {values!r}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size < min_len:
        raise ValueError(f"{name} needs at least {min_len} entries, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


def distinct_nodes(name: str, values, *, min_len: int = 1) -> np.ndarray:
    """A finite 1-D float64 array whose entries are pairwise distinct."""
    arr = as_float_vector(name, values, min_len=min_len)
    if np.unique(arr).size != arr.size:
        raise ValueError(f"{name} must be pairwise distinct, got {arr.tolist()}")
    return arr


def as_real(name: str, value) -> float:
    """A finite Python float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    out = float(value)
    if not np.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def as_int(name: str, value, *, minimum: int | None = None) -> int:
    """An int (bools rejected) that is at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    out = int(value)
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    return out


def finite_array(name: str, value) -> np.ndarray:
    """A float64 array with no NaN/Inf (the guard against extrapolating corrupted values)."""
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf; refusing to use it in an estimate")
    return arr


def stack_finite(name: str, values) -> np.ndarray:
    """Stack a sequence of equally shaped arrays along a new first axis, rejecting NaN/Inf."""
    if len(values) == 0:
        raise ValueError(f"{name} must not be empty")
    shapes = {np.shape(v) for v in values}
    if len(shapes) != 1:
        raise ValueError(f"{name} must all have one shape, got {sorted(shapes)}")
    return finite_array(name, np.stack([np.asarray(v, dtype=np.float64) for v in values]))
