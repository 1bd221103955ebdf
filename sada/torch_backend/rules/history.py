"""Criterion 3.4 on tensors and the trajectory histories it reads (shared by the step-schedule rules, and by error
control when token pruning needs the criterion's token map).

Which histories are kept depends on the resolved numerics (the estimator and the criterion, which may differ):

* ``paper-vp``: the official drift of the last three steps (from the *reused* raw output) and its step estimate;
* ``paper-flow``: the raw velocity history (duplicates on skipped steps) and the criterion product ``-Delta^2 v``;
* ``corrected``: each row's last three computed noise predictions at their EDM sigmas and the Adams step estimate.
"""

from __future__ import annotations

import numpy as np
import torch

from sada import kernels
from sada.config import Variant
from sada.torch_backend.rings import TensorRing
from sada.trajectory import to_eps

__all__ = ["CriterionHistory", "row_mask"]


def row_mask(mask: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A host row mask on ``like``'s device, shaped to broadcast over its rows."""
    return torch.as_tensor(mask, device=like.device).reshape((-1,) + (1,) * (like.ndim - 1))


class CriterionHistory:
    """The trajectory histories of one run and Criterion 3.4's product ``M_n`` computed from them."""

    def __init__(self, settings, grid, kind: str, dtype: torch.dtype):
        self.settings, self.grid, self.kind, self.dtype = settings, grid, kind, dtype
        self.edm = grid.edm_sigma
        self.eps = TensorRing(3)  # corrected: last three computed noise predictions per row
        self.drift = TensorRing(2)  # paper-vp: the two previous official drifts
        self.velocity = TensorRing(2)  # paper-flow: raw velocity history (duplicates on skips)
        self.paper_ready = np.zeros(0, bool)  # rows whose paper step estimate exists for this step
        self.raw: torch.Tensor = None  # paper: the last computed raw output
        self.paper_x_hat: torch.Tensor = None  # paper-vp: the official step estimate of x_{n+1}
        self.corrected_x_hat: torch.Tensor = None  # corrected: step estimate of x~_{n+1}
        self.curvature: torch.Tensor = None  # paper-vp curvature of the criterion
        self.flow_product: torch.Tensor = None  # paper-flow: per-row criterion product (needs no x_{n+1})

    @property
    def variants(self) -> tuple:
        return self.settings.estimator, self.settings.criterion

    def rings(self) -> tuple:
        return self.eps, self.drift, self.velocity

    def nbytes(self) -> int:
        held = [self.raw, self.paper_x_hat, self.corrected_x_hat, self.curvature]
        return sum(r.nbytes() for r in self.rings()) + sum(t.numel() * t.element_size() for t in held if t is not None)

    def record(self, step: int, h: torch.Tensor, out: torch.Tensor, computed: np.ndarray) -> None:
        """Push what step ``step`` produced (``h``, ``out`` in the history dtype)."""
        grid, num_steps = self.grid, self.grid.num_steps
        alpha, sigma = float(grid.alpha[step]), float(grid.sigma[step])
        if Variant.PAPER_VP in self.variants:
            self.raw = out.clone() if self.raw is None else torch.where(row_mask(computed, h), out, self.raw)
            eps = to_eps(self.kind, self.raw, h, alpha, sigma)
            f_n = kernels.paper_vp_drift(h, eps, float(grid.training_beta[step]), sigma, num_steps)
            self.paper_ready = self.drift.full(h.shape[0])
            if self.paper_ready.any():
                f1, f2 = self.drift.values[0], self.drift.values[1]
                self.paper_x_hat = kernels.paper_step_estimate(h, f_n, f1, f2, num_steps)
                self.curvature = (
                    kernels.second_difference(f_n, f1, f2) if self.settings.criterion == Variant.PAPER_VP else None
                )
            self.drift.push(np.ones_like(computed), step, f_n)
        if Variant.PAPER_FLOW in self.variants:
            v = self.velocity
            if v.count.size == h.shape[0] and v.full(h.shape[0]).all():
                product = kernels.flow_stability_product(out, v.values[0], v.values[1])
                # a skipped row used v^ = 2 v_n - v_{n-1} (or v_n), so its product is zero in exact arithmetic; it is
                # set to exactly zero (the official code leaves the rounding noise: docs/paper-mode.md)
                self.flow_product = torch.where(row_mask(computed, product), product, torch.zeros_like(product))
            else:
                self.flow_product = None
            raw = out if v.values is None else torch.where(row_mask(computed, h), out, v.values[0])
            v.push(np.ones_like(computed), step, raw)
        if Variant.CORRECTED in self.variants:
            edm = self.edm
            if np.isfinite(edm[step]):
                self.eps.push(computed, float(edm[step]), to_eps(self.kind, out, h, alpha, sigma))
            if self.settings.criterion == Variant.CORRECTED or self.settings.am_noise == "reuse":
                self.corrected_x_hat = self.corrected_x_tilde_hat(step, h)

    def corrected_x_tilde_hat(self, step: int, h: torch.Tensor):
        """The corrected Theorem 3.5 estimate of ``x~_{n+1}``: the Adams quadrature of the last three noise
        predictions over the real interval ``[sigma~_n, sigma~_{n+1}]``."""
        if self.eps.values is None:
            return None
        edm = self.edm
        weights = self.eps.row_weights(kernels.adams_weights, float(edm[step]), float(edm[step + 1]))
        return h / float(self.grid.alpha[step]) + self.eps.combine(weights)

    def product(self, step: int, x_next: torch.Tensor):
        """Criterion 3.4's ``M_n`` for ``step`` (``None`` while the history is too short)."""
        criterion = self.settings.criterion
        if criterion == Variant.PAPER_FLOW:
            return self.flow_product
        if criterion == Variant.PAPER_VP:
            if self.curvature is None:
                return None
            return kernels.stability_product(x_next.to(self.dtype), self.paper_x_hat, self.curvature)
        if not self.eps.full(x_next.shape[0]).any() or self.corrected_x_hat is None:
            return None
        curvature = self.eps.combine(self.eps.row_weights(kernels.divided_difference_weights))
        x_tilde_next = x_next.to(self.dtype) / float(self.grid.alpha[step + 1])
        return kernels.stability_product(x_tilde_next, self.corrected_x_hat, curvature)

    def criterion_rows(self, rows: int) -> np.ndarray:
        """Rows whose criterion inputs are complete (others report NaN, never 'stable')."""
        criterion = self.settings.criterion
        if criterion == Variant.PAPER_VP:
            return self.ready_rows(rows)
        if criterion == Variant.PAPER_FLOW:
            return self.velocity.full(rows)
        return self.eps.full(rows)

    def ready_rows(self, rows: int) -> np.ndarray:
        """Rows whose paper step estimate exists for this step."""
        return self.paper_ready if self.paper_ready.size == rows else np.zeros(rows, bool)

    def closed(self) -> None:
        """The criterion and the step's estimate are formed: drop what only they needed."""
        self.paper_x_hat = self.curvature = None

    def invalidate(self, rows: np.ndarray) -> None:
        for ring in self.rings():
            ring.invalidate(rows)
