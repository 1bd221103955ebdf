"""The step schedule's estimates and Criterion 3.4 on tensors (a part of :class:`sada.torch_backend.engine.SADAEngine`).

The corrected step estimate (the Adams quadrature of each row's last three computed noise predictions), the
multistep estimate over the stored clean-sample nodes, the criterion's product ``M_n`` for the official and the
corrected numerics, and the embedded-pair error of a skip. The formulas are the kernels of :mod:`sada.kernels`;
the weights are computed on the host for every row at once and applied on the device.
"""
from __future__ import annotations

import numpy as np
import torch

from sada import kernels
from sada.config import Variant
from sada.policy import Decision
from sada.torch_backend.rings import TensorRing

__all__ = ["StepScheduleEstimates"]


class StepScheduleEstimates:
    """Mixed into the engine: uses its histories (``_eps``, ``_nodes``, ...), grid and resolved settings."""

    def _corrected_x_tilde_hat(self, step: int, h: torch.Tensor):
        if self._eps.values is None:
            return None
        s_n, s_next = float(self._edm[step]), float(self._edm[step + 1])
        weights = self._eps.row_weights(kernels.adams_weights, s_n, s_next)
        return h / float(self.grid.alpha[step]) + self._eps.combine(weights)

    def _am_estimate(self, step: int, h: torch.Tensor) -> torch.Tensor:
        if self.estimator == Variant.PAPER_VP:
            return self._estimate
        s = float(self._edm[step])
        if self.settings.am_noise == "reuse":
            return self._corrected_x_hat - s * self._eps.values[0]
        eps_next = self._eps.combine(self._eps.row_weights(kernels.lagrange_weights, s))
        return h / float(self.grid.alpha[step]) - s * eps_next

    def _multistep_estimate(self, step: int, rows: np.ndarray) -> torch.Tensor:
        at = float(self._abscissae[step])
        scale = float(self.grid.alpha[step]) if self.lagrange_target == "x0_over_alpha" else 1.0
        return scale * self._nodes.combine(self._nodes.row_weights(kernels.lagrange_weights, at))

    def _product(self, step: int, x_next: torch.Tensor):
        if self.criterion == Variant.PAPER_FLOW:
            return self._flow_product
        if self.criterion == Variant.PAPER_VP:
            if self._curvature is None:
                return None
            return kernels.stability_product(x_next.to(self.dtype), self._paper_x_hat, self._curvature)
        if not self._eps.full(x_next.shape[0]).any() or self._corrected_x_hat is None:
            return None
        curvature = self._eps.combine(self._eps.row_weights(kernels.divided_difference_weights))
        x_tilde_next = x_next.to(self.dtype) / float(self.grid.alpha[step + 1])
        return kernels.stability_product(x_tilde_next, self._corrected_x_hat, curvature)

    def _criterion_rows(self, rows: int) -> np.ndarray:
        """Rows whose criterion inputs are complete (others report NaN, never 'stable')."""
        if self.criterion == Variant.PAPER_VP:
            return self._paper_ready if self._paper_ready.size == rows else np.zeros(rows, bool)
        if self.criterion == Variant.PAPER_FLOW:
            return self._velocity.full(rows)
        return self._eps.full(rows)

    def _embedded_errors(self, step: int, x_next: torch.Tensor) -> torch.Tensor:
        """Per-row relative local-error estimate of the skip estimate for step ``step + 1`` (embedded pair,
        see :func:`sada.reference.embedded_pair_weights`); NaN where the history is incomplete."""
        rows = x_next.shape[0]
        if self.policy.skip_kind(step) == Decision.SKIP_LAGRANGE:
            ring, at, scale = self._nodes, float(self._abscissae[step + 1]), 1.0
        else:
            ring, at, scale = self._eps, float(self._edm[step + 1]), float(self._edm[step + 1])
        nan = torch.full((rows,), float("nan"), dtype=self.dtype, device=x_next.device)
        if ring.values is None or ring.depth < 2 or not ring.full(rows).any():
            return nan
        # the embedded pair (sada.kernels.embedded_pair_weights): all nodes against the newest depth - 1
        high = ring.row_weights(kernels.lagrange_weights, at)
        low = ring.row_weights(kernels.lagrange_weights, at, depth=ring.depth - 1)
        diff = scale * ring.combine(high - low)
        estimate = scale * ring.combine(high)
        if ring is self._eps:
            estimate = x_next.to(self.dtype) / float(self.grid.alpha[step + 1]) - estimate
        errors = kernels.relative_rms(diff, estimate)
        return torch.where(self._b(ring.full(rows), errors), errors, nan)
