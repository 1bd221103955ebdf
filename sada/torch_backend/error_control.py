"""The accuracy dial on tensors: each row's recent clean-sample predictions, their extrapolation and its error test.

Every computed step stores the row's clean-sample prediction ``D`` at the step's abscissa (the schedule's time by
default). A skipped step receives the Lagrange extrapolation of the newest ``history`` predictions (Theorem 3.7).
The test that allows the skip (:func:`sada.reference.skip_error`) estimates the error that the skip adds to the
sample, relative to the clean sample:

* the extrapolation's error, estimated by the embedded pair (through ``history + 1`` minus through ``history``
  predictions): ``RMS((high - low) . D)``, over ``RMS(low . D)`` (relative to the clean sample) or over
  ``RMS(x / alpha)`` (relative to the sample: what the error leaves in the final sample);
* times ``1 - exp(-h)``, the share of an error of ``D`` that a step of log-SNR ``h`` moves into the sample.

The step may be skipped when this is at most ``tolerance``. It is a ratio of RMS norms of the same predictions, so
the test is invariant to the data's scale, and it needs no step index, so it adapts to any step count and spacing.
"""

from __future__ import annotations

import numpy as np
import torch

from sada import kernels
from sada.config import ErrorControl
from sada.torch_backend.rings import TensorRing

__all__ = ["RecentPredictions"]


class RecentPredictions:
    """The last ``history + 1`` computed clean-sample predictions of every row, keyed by their abscissa."""

    def __init__(self, schedule: ErrorControl):
        if not isinstance(schedule, ErrorControl):
            raise TypeError(f"schedule must be an ErrorControl, got {type(schedule).__name__}")
        self.history = schedule.history
        self.ring = TensorRing(self.history + 1)
        self.min_count = schedule.predictions_to_skip  # a pair of lower degree while filling
        self._cache: dict = {}

    def push(self, computed: np.ndarray, abscissa: float, x0: torch.Tensor) -> None:
        self.ring.push(computed, float(abscissa), x0)
        self._cache = {}  # weights depend on the stored abscissae, which just changed

    def invalidate(self, rows: np.ndarray) -> None:
        """Forget the predictions of ``rows`` (after a non-finite output); they refill from scratch."""
        self.ring.invalidate(rows)
        self._cache = {}

    def ready(self, rows: int) -> np.ndarray:
        """Rows holding enough predictions for an extrapolation and its error estimate (at least
        ``MIN_SKIP_PREDICTIONS``, or the full ``history + 1`` if fewer)."""
        return self.ring.full(rows, at_least=self.min_count)

    def _pair(self, at: float) -> tuple[np.ndarray, np.ndarray]:
        """Per ready row, the embedded pair at ``at``: ``(high, low)`` weights on the ring (``low`` -- the estimate a
        skipped step receives -- leaves the oldest entry out), computed once per history state: the step's test and
        the skipped step's estimate share them."""
        if at not in self._cache:
            high = self.ring.weights_by_count(kernels.lagrange_weights, at, min_count=self.min_count)
            low = self.ring.weights_by_count(kernels.lagrange_weights, at, min_count=self.min_count, drop_oldest=1)
            self._cache[at] = (high, low)
        return self._cache[at]

    def estimate(self, abscissa: float) -> torch.Tensor:
        """The extrapolated clean sample of every row at ``abscissa`` (zeros for rows not ready)."""
        return self.ring.combine(self._pair(float(abscissa))[1])

    def skip_error(
        self, abscissa: float, h: float, like: torch.Tensor, sample: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per row of ``like``: the estimated error a skip at ``abscissa`` adds to the sample, relative to the clean
        sample, or to ``sample`` (``x / alpha`` of the step, what the error leaves in the final sample) where given
        (:func:`sada.reference.skip_error`; ``h`` the log-SNR step that consumes the estimate), NaN for rows not
        ready. Skip iff ``error <= tolerance``."""
        if self.ring.values is None or not self.ready(like.shape[0]).any():
            return torch.full((like.shape[0],), float("nan"), dtype=like.dtype, device=like.device)
        high, low = self._pair(float(abscissa))
        reference = self.ring.combine(low) if sample is None else sample
        error = kernels.step_transfer(h) * kernels.relative_rms(self.ring.combine(high - low), reference)
        ready = torch.as_tensor(self.ready(error.shape[0]), device=error.device)
        return torch.where(ready, error, torch.full_like(error, float("nan")))

    def nbytes(self) -> int:
        return self.ring.nbytes()
