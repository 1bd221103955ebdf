"""Per-row ring buffers on tensors, with their abscissae kept on the host.

``values[k, b]`` is row ``b``'s ``k``-th newest stored tensor; ``keys[k, b]`` (numpy, host) its
abscissa (a noise level or step index). Rows are pushed independently, so every sample keeps its own
history even when the batch makes different decisions. Weights are computed on the host by the kernels of
:mod:`sada.kernels` and applied here by :func:`sada.kernels.combine`.
"""

from __future__ import annotations

import numpy as np
import torch

from sada import kernels

__all__ = ["TensorRing", "clear_weight_memo"]

# weights of histories every row shares, by the exact bits of (kernel, abscissae, arguments): a second run on the same
# grid (the next image at the same step count) finds every weight set here instead of recomputing it
_SHARED_WEIGHTS: dict = {}
_SHARED_WEIGHTS_LIMIT = 4096


def clear_weight_memo() -> None:
    """Forget the memoised weights (the next run computes every weight set afresh; its results are unchanged)."""
    _SHARED_WEIGHTS.clear()


def _shared_weights(kernel, abscissae: np.ndarray, args: tuple) -> np.ndarray:
    """``kernel(abscissae, *args)`` for one ``[1, depth]`` row of abscissae, memoised by exact bits (so a hit is
    exactly what the kernel would return); arguments that are not real numbers bypass the memo."""
    try:
        key = (kernel, abscissae.tobytes(), np.asarray(args, dtype=np.float64).tobytes())
    except (TypeError, ValueError):
        return kernel(abscissae, *args)
    weights = _SHARED_WEIGHTS.get(key)
    if weights is None:
        if len(_SHARED_WEIGHTS) >= _SHARED_WEIGHTS_LIMIT:
            _SHARED_WEIGHTS.clear()
        weights = np.asarray(kernel(abscissae, *args))
        weights.setflags(write=False)
        _SHARED_WEIGHTS[key] = weights
    return weights


class TensorRing:
    """A ``depth``-deep per-row history of tensors shaped like one batch."""

    def __init__(self, depth: int):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self.values: torch.Tensor | None = None
        self.keys = np.zeros((depth, 0))
        self.count = np.zeros(0, dtype=np.int64)

    def push(self, rows: np.ndarray, key: float, value: torch.Tensor) -> None:
        """Store ``value[b]`` with abscissa ``key`` for every row ``b`` where ``rows`` is true."""
        if (
            self.values is None
            or self.values.shape[1:] != value.shape
            or self.values.dtype != value.dtype
            or self.values.device != value.device
        ):
            self.values = torch.zeros((self.depth,) + tuple(value.shape), dtype=value.dtype, device=value.device)
            self.keys = np.full((self.depth, value.shape[0]), np.nan)
            self.count = np.zeros(value.shape[0], dtype=np.int64)
        if not rows.any():
            return
        if rows.all():
            self.values = torch.roll(self.values, 1, dims=0)
            self.values[0] = value
        else:
            idx = torch.as_tensor(np.flatnonzero(rows), device=value.device)
            moved = torch.roll(self.values[:, idx], 1, dims=0)
            moved[0] = value[idx]
            self.values[:, idx] = moved
        self.keys[1:, rows] = self.keys[:-1, rows]
        self.keys[0, rows] = key
        self.count[rows] += 1

    def invalidate(self, rows: np.ndarray) -> None:
        """Forget the history of ``rows`` (e.g. after a non-finite value); they refill from scratch."""
        if self.count.size:
            self.count[rows] = 0
            self.keys[:, rows] = np.nan

    def full(self, batch: int, at_least: int | None = None) -> np.ndarray:
        """Rows holding ``depth`` valid entries (``at_least`` of them where given)."""
        if self.count.size != batch:
            return np.zeros(batch, bool)
        return self.count >= (self.depth if at_least is None else at_least)

    def row_weights(self, kernel, *args, depth: int | None = None) -> np.ndarray:
        """``kernel(abscissae, *args)`` for every full row, on its newest ``depth`` abscissae (default: all), as
        ``[rows, self.depth]`` weights (zero elsewhere): :meth:`weights_by_count` on full rows."""
        depth = self.depth if depth is None else depth
        return self.weights_by_count(kernel, *args, min_count=self.depth, drop_oldest=self.depth - depth)

    def weights_by_count(self, kernel, *args, min_count: int, drop_oldest: int = 0) -> np.ndarray:
        """``kernel(abscissae, *args)`` for every row holding ``n >= min_count`` entries, on its newest
        ``n - drop_oldest`` abscissae (``n`` capped at ``depth``), as ``[rows, self.depth]`` weights (zero
        elsewhere): a history still filling gets a pair of lower degree. Rows are grouped by ``n``; a group whose
        rows share their abscissae is computed once and memoised like :meth:`row_weights`."""
        if min_count - drop_oldest < 1:
            raise ValueError(f"min_count - drop_oldest must be >= 1, got {min_count} - {drop_oldest}")
        rows = self.keys.shape[1]
        weights = np.zeros((rows, self.depth))
        if self.count.size != rows:
            return weights
        held = np.minimum(self.count, self.depth)
        for size in np.unique(held[held >= min_count]):
            group, width = held == size, int(size) - drop_oldest
            keys = self.keys[:width]
            if group.all() and rows > 1 and (keys == keys[:, :1]).all():
                weights[:, :width] = _shared_weights(kernel, np.ascontiguousarray(keys[:, :1].T), args)
            else:
                weights[group, :width] = kernel(np.ascontiguousarray(keys[:, group].T), *args)
        return weights

    def combine(self, weights: np.ndarray) -> torch.Tensor:
        """``sum_k weights[b, k] * values[k, b]`` for every row (weights computed on the host)."""
        return kernels.combine(weights, self.values)

    def nbytes(self) -> int:
        return 0 if self.values is None else self.values.numel() * self.values.element_size()
