"""The authors' step schedule on tensors (:class:`~sada.config.StepSchedule`): Criterion 3.4 decides, a skipped step
receives the Adams-Moulton step estimate (Theorem 3.5/3.6) or, in the multistep regime, the Lagrange extrapolation of
the stored clean-sample nodes (Theorem 3.7); with ``Numerics.step_error_rms`` an embedded-pair error estimate vetoes
skips. Both numerics: ``corrected`` (real noise levels) and the official ``paper-vp`` path."""

from __future__ import annotations

import numpy as np
import torch

from sada import kernels
from sada.config import StepSchedule, Variant
from sada.engine.rules.base import register_rule
from sada.policy import Decision
from sada.torch_backend.rings import TensorRing
from sada.torch_backend.rules.base import TorchRule
from sada.trajectory import synthesise_output, to_x0

__all__ = ["StepScheduleRule"]


@register_rule("torch", StepSchedule)
class StepScheduleRule(TorchRule):
    """Criterion 3.4 + the AM step estimate + the Lagrange multistep estimate, per row."""

    def reset(self, policy, trace, dtype, solver_order):
        super().reset(policy, trace, dtype, solver_order)
        self.nodes = TensorRing(max(getattr(self.config.schedule, "lagrange_term", 1), 1))  # multistep nodes
        self.estimate: torch.Tensor = None  # paper-vp: clean-sample estimate for the next step
        self.synthesised_x0: torch.Tensor = None  # clean-sample estimates handed to the solver at the current step
        self.abscissae = self.grid.abscissae(self.settings.abscissa)

    def nbytes(self) -> int:
        held = self.nodes.nbytes() + (
            0 if self.estimate is None else self.estimate.numel() * self.estimate.element_size()
        )
        return super().nbytes() + held

    def invalidate(self, rows):
        super().invalidate(rows)
        self.nodes.invalidate(rows)

    # ------------------------------------------------------------------ record
    def record(self, step, h, out, computed):
        self.history.record(step, h, out, computed)
        if self.policy.is_node(step):
            alpha, sigma = float(self.grid.alpha[step]), float(self.grid.sigma[step])
            rows = computed if self.settings.estimator == Variant.CORRECTED else np.ones_like(computed)
            scale = 1.0 / alpha if self.settings.lagrange_target == "x0_over_alpha" else 1.0
            x0 = to_x0(self.kind, out, h, alpha, sigma)
            if self.synthesised_x0 is not None and not computed.all():  # paper: a skipped row's node is its estimate
                x0 = torch.where(self.mask(computed, h), x0, self.synthesised_x0)
            self.nodes.push(rows, float(self.abscissae[step]), scale * x0)
        self.synthesised_x0 = None

    # ------------------------------------------------------------------ decide
    def error_test(self, step, x_next, like):
        if self.config.numerics.step_error_rms is None:
            return None
        return self._embedded_errors(step, x_next)

    def prepare(self, step, x_next, deciding):
        history = self.history
        self.estimate = None
        if self.settings.estimator == Variant.PAPER_VP and history.paper_x_hat is not None and deciding:
            a1, s1 = float(self.grid.alpha[step + 1]), float(self.grid.sigma[step + 1])
            state = x_next.to(self.dtype) if self.estimate_from_next_sample else history.paper_x_hat
            self.estimate = to_x0(self.kind, history.raw, state, a1, s1)
        history.closed()

    def can_skip(self, step, rows, test):
        """Rows whose estimate for step ``step + 1`` can be formed from valid history and passes the error veto."""
        if self.policy.skip_kind(step) == Decision.SKIP_LAGRANGE:
            can = self.nodes.full(rows)
        elif self.settings.estimator == Variant.PAPER_VP:
            can = self.history.ready_rows(rows)
        else:
            can = self.history.eps.full(rows)
        return self._veto(step, can, test)

    def _veto(self, step, can, test):
        if test is not None:
            finite = np.isfinite(test)
            self.trace.extras.setdefault("error_estimate", {})[step + 1] = test.tolist()
            can = can & finite & (np.where(finite, test, np.inf) <= self.config.numerics.step_error_rms)
        return can

    # ------------------------------------------------------------------ estimates
    def synthesise(self, step, x, decisions):
        """Model outputs for the rows that skip (other rows hold placeholders to overwrite)."""
        alpha, sigma = float(self.grid.alpha[step]), float(self.grid.sigma[step])
        h = x.to(self.dtype)
        x0 = torch.zeros_like(h)
        am, lag = decisions == Decision.SKIP_AM, decisions == Decision.SKIP_LAGRANGE
        if am.any():
            x0 = torch.where(self.mask(am, h), self._am_estimate(step, h), x0)
        if lag.any():
            x0 = torch.where(self.mask(lag, h), self._multistep_estimate(step), x0)
        self.synthesised_x0 = x0  # paper mode stores it as the node of a skipped row (no output round trip)
        return synthesise_output(self.kind, x0, h, alpha, sigma).to(x.dtype)

    def stage_output(self, step, edm_sigma, x, decisions):
        """Estimated output at a solver's intermediate stage of ``step`` (Heun's corrector, DPM2's midpoint) for the
        rows that skip ``step``: the step's estimator evaluated at that noise level and sample."""
        alpha, sigma = self.grid.alpha_sigma_at(edm_sigma)
        h = x.to(self.dtype)
        eps = self.history.eps
        x0 = torch.zeros_like(h)
        am, lag = decisions == Decision.SKIP_AM, decisions == Decision.SKIP_LAGRANGE
        if am.any():
            if eps.full(h.shape[0]).any():
                am_x0 = h / alpha - edm_sigma * eps.combine(eps.row_weights(kernels.lagrange_weights, edm_sigma))
            else:  # the paper's estimator has no noise history: keep the step's own clean-sample estimate
                am_x0 = self.estimate
            x0 = torch.where(self.mask(am, h), am_x0, x0)
        if lag.any():
            at = self.grid.abscissa_at(self.settings.abscissa, edm_sigma)
            weights = self.nodes.row_weights(kernels.lagrange_weights, at)
            scale = alpha if self.settings.lagrange_target == "x0_over_alpha" else 1.0
            x0 = torch.where(self.mask(lag, h), scale * self.nodes.combine(weights), x0)
        return synthesise_output(self.kind, x0, h, alpha, sigma).to(x.dtype)

    def _am_estimate(self, step: int, h: torch.Tensor) -> torch.Tensor:
        if self.settings.estimator == Variant.PAPER_VP:
            return self.estimate
        eps = self.history.eps
        s = float(self.edm[step])
        if self.settings.am_noise == "reuse":
            return self.history.corrected_x_hat - s * eps.values[0]
        eps_next = eps.combine(eps.row_weights(kernels.lagrange_weights, s))
        return h / float(self.grid.alpha[step]) - s * eps_next

    def _multistep_estimate(self, step: int) -> torch.Tensor:
        at = float(self.abscissae[step])
        scale = float(self.grid.alpha[step]) if self.settings.lagrange_target == "x0_over_alpha" else 1.0
        return scale * self.nodes.combine(self.nodes.row_weights(kernels.lagrange_weights, at))

    def _embedded_errors(self, step: int, x_next: torch.Tensor) -> torch.Tensor:
        """Per-row relative local-error estimate of the skip estimate for step ``step + 1`` (embedded pair,
        see :func:`sada.reference.embedded_pair_weights`); NaN where the history is incomplete."""
        rows = x_next.shape[0]
        edm = self.edm
        if self.policy.skip_kind(step) == Decision.SKIP_LAGRANGE:
            ring, at, scale = self.nodes, float(self.abscissae[step + 1]), 1.0
        else:
            ring, at, scale = self.history.eps, float(edm[step + 1]), float(edm[step + 1])
        nan = torch.full((rows,), float("nan"), dtype=self.dtype, device=x_next.device)
        if ring.values is None or ring.depth < 2 or not ring.full(rows).any():
            return nan
        # the embedded pair (sada.kernels.embedded_pair_weights): all nodes against the newest depth - 1
        high = ring.row_weights(kernels.lagrange_weights, at)
        low = ring.row_weights(kernels.lagrange_weights, at, depth=ring.depth - 1)
        diff = scale * ring.combine(high - low)
        estimate = scale * ring.combine(high)
        if ring is self.history.eps:
            estimate = x_next.to(self.dtype) / float(self.grid.alpha[step + 1]) - estimate
        errors = kernels.relative_rms(diff, estimate)
        return torch.where(self.mask(ring.full(rows), errors), errors, nan)
