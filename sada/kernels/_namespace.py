"""The array namespace of the kernels' arguments (numpy, torch, array-api-strict, ...)."""
from __future__ import annotations

from array_api_compat import array_namespace, device

__all__ = ["namespace", "as_array"]


def namespace(*arrays):
    """The array-API namespace of the array arguments (Python scalars are ignored)."""
    return array_namespace(*(a for a in arrays if not isinstance(a, (int, float))))


def as_array(xp, value, like):
    """``value`` (an array or a Python number) as an array of ``like``'s floating dtype and device."""
    return xp.asarray(value, dtype=like.dtype, device=device(like))
