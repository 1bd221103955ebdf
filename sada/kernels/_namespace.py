"""The array namespace of the kernels' arguments (numpy, torch, array-api-strict, ...)."""

from __future__ import annotations

from array_api_compat import array_namespace, device

__all__ = ["namespace", "as_array"]


_BY_TYPES: dict = {}  # the namespace depends on the array types only: resolved once per combination of types


def namespace(*arrays):
    """The array-API namespace of the array arguments (Python scalars are ignored)."""
    arrays = tuple(a for a in arrays if not isinstance(a, (int, float)))
    key = tuple(type(a) for a in arrays)
    found = _BY_TYPES.get(key)
    if found is None:
        found = _BY_TYPES[key] = array_namespace(*arrays)
    return found


def as_array(xp, value, like):
    """``value`` (an array or a Python number) as an array of ``like``'s floating dtype and device."""
    return xp.asarray(value, dtype=like.dtype, device=device(like))
