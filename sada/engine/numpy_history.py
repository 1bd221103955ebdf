"""The numpy engine's per-row history: ``values[k, b]`` is row ``b``'s ``k``-th newest value, ``keys[k, b]`` its abscissa.

Rows are pushed independently (only the rows that ran the network, in the corrected numerics), so every sample
keeps its own history when the batch makes different decisions.
"""

from __future__ import annotations

import numpy as np

from sada import kernels

__all__ = ["RowRing"]


class RowRing:
    """Per-row ring buffer: ``values[k, b]`` is row ``b``'s ``k``-th newest pushed value."""

    def __init__(self, depth: int):
        self.depth = depth
        self.values: np.ndarray = None  # [depth, batch, ...]
        self.keys: np.ndarray = None  # [depth, batch] abscissae, nan while empty
        self.count: np.ndarray = None  # [batch] number of values pushed

    def push(self, rows: np.ndarray, key: float, value: np.ndarray) -> None:
        if self.values is None:
            self.values = np.zeros((self.depth,) + value.shape)
            self.keys = np.full((self.depth, value.shape[0]), np.nan)
            self.count = np.zeros(value.shape[0], dtype=np.int64)
        self.values[1:, rows] = self.values[:-1, rows]
        self.keys[1:, rows] = self.keys[:-1, rows]
        self.values[0, rows] = value[rows]
        self.keys[0, rows] = key
        self.count[rows] += 1

    def full(self) -> np.ndarray:
        return np.zeros(0, bool) if self.count is None else self.count >= self.depth

    def combine(self, weights: np.ndarray) -> np.ndarray:
        """``sum_k weights[b, k] * values[k, b]`` per row."""
        return kernels.combine(weights, self.values)
