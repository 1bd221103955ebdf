"""Schedule-free SADA on tensors: each row's recent clean-sample predictions, their extrapolation and its error test.

Every computed step stores the row's clean-sample prediction ``D`` at its log-SNR ``lambda``. A skipped step
receives the Lagrange extrapolation of the last ``history`` predictions (Theorem 3.7 on log-SNR abscissae). The
test that allows the skip compares two local errors in the same units:

* the extrapolation's, estimated by the embedded pair (degree ``history - 1`` minus degree ``history - 2``):
  ``e = RMS((l_high - l_low) . D)``;
* the host solver's own at that step, for a method of order ``p`` (at most ``history - 1``:
  :meth:`~sada.config.ErrorControl.test_order`): ``s = h^p RMS(D[lambda_n, ..., lambda_{n-p}])``,
  ``h`` the log-SNR step that consumes the estimate and ``D[...]`` the ``p``-th divided difference of the
  predictions (``D^(p) / p!`` for smooth ``D``).

The step may be skipped when ``e <= tolerance * s``. Both are ratios of RMS norms of the same predictions, so the
test is invariant to the data's scale; it needs no step index, so it adapts to any step count and spacing.
"""

from __future__ import annotations

import numpy as np
import torch

from sada import kernels
from sada.config import ErrorControl
from sada.torch_backend.rings import TensorRing

__all__ = ["RecentPredictions"]


class RecentPredictions:
    """The last ``max(history, order + 1)`` computed clean-sample predictions of every row, keyed by log-SNR."""

    def __init__(self, schedule: ErrorControl, order: int):
        if not isinstance(schedule, ErrorControl):
            raise TypeError(f"schedule must be an ErrorControl, got {type(schedule).__name__}")
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 4:
            raise ValueError(f"solver order must be an int in 1..4, got {order!r}")
        # ``order``: the order of the local-error scale of the test (the solver's, at most history - 1)
        self.history, self.order = schedule.history, schedule.test_order(order)
        self.ring = TensorRing(max(self.history, self.order + 1))
        self._cache: dict = {}

    def push(self, computed: np.ndarray, log_snr: float, x0: torch.Tensor) -> None:
        self.ring.push(computed, float(log_snr), x0)
        self._cache = {}  # weights depend on the stored abscissae, which just changed

    def invalidate(self, rows: np.ndarray) -> None:
        """Forget the predictions of ``rows`` (after a non-finite output); they refill from scratch."""
        self.ring.invalidate(rows)
        self._cache = {}

    def ready(self, rows: int) -> np.ndarray:
        """Rows holding enough predictions for the extrapolation and the solver's error estimate."""
        return self.ring.full(rows)

    def _weights(self, kernel, depth: int, *args) -> np.ndarray:
        """``kernel`` on every ready row's newest ``depth`` abscissae (:meth:`TensorRing.row_weights`), computed once per
        history state and arguments: the step's error test and the skipped step's estimate share their weights."""
        key = (kernel, depth, args)
        if key not in self._cache:
            self._cache[key] = self.ring.row_weights(kernel, *args, depth=depth)
        return self._cache[key]

    def estimate(self, log_snr: float) -> torch.Tensor:
        """The extrapolated clean sample of every row at ``log_snr`` (zeros for rows not ready)."""
        return self.ring.combine(self._weights(kernels.lagrange_weights, self.history, float(log_snr)))

    def error_ratio(self, log_snr: float, like: torch.Tensor) -> torch.Tensor:
        """Per row of ``like``: the extrapolation's estimated error at ``log_snr`` over the ``p``-th divided difference
        of the predictions, ``e / (s / h^p)`` (NaN for rows not ready). Skip iff ``ratio <= tolerance * h^p``."""
        if self.ring.values is None or not self.ready(like.shape[0]).any():
            return torch.full((like.shape[0],), float("nan"), dtype=like.dtype, device=like.device)
        # the embedded pair (sada.kernels.embedded_pair_weights): the extrapolation through all nodes, whose weights the
        # skipped step's estimate reuses from the cache, minus the one through the newest history - 1
        high = self._weights(kernels.lagrange_weights, self.history, float(log_snr))
        pair = high - self._weights(kernels.lagrange_weights, self.history - 1, float(log_snr))
        divided = self._weights(kernels.divided_difference_weights, self.order + 1)
        ratio = kernels.relative_rms(self.ring.combine(pair), self.ring.combine(divided))
        ready = torch.as_tensor(self.ready(ratio.shape[0]), device=ratio.device)
        return torch.where(ready, ratio, torch.full_like(ratio, float("nan")))

    def nbytes(self) -> int:
        return self.ring.nbytes()
