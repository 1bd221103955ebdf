"""The authors' step schedule in float64 numpy (:class:`~sada.config.StepSchedule`), the oracle of
:mod:`sada.torch_backend.rules.step_schedule`: Criterion 3.4 decides, a skipped step receives the Adams-Moulton step
estimate or, in the multistep regime, the Lagrange extrapolation of the stored nodes; ``Numerics.step_error_rms``
vetoes skips whose embedded-pair error estimate is larger."""

from __future__ import annotations

import numpy as np

from sada import kernels
from sada.config import StepSchedule, Variant
from sada.engine.numpy_history import RowRing
from sada.engine.rules.base import register_rule
from sada.engine.rules.oracle import NumpyRule
from sada.policy import Decision
from sada.reference import embedded_pair_weights, lagrange_basis_weights
from sada.trajectory import synthesise_output, to_x0

__all__ = ["NumpyStepScheduleRule"]


@register_rule("numpy", StepSchedule)
class NumpyStepScheduleRule(NumpyRule):
    """Criterion 3.4 + the AM step estimate + the Lagrange multistep estimate, per row."""

    stores_nodes = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.nodes = RowRing(max(getattr(self.config.schedule, "lagrange_term", 1), 1))  # (abscissa, x0) per row
        self.abscissae = self.grid.abscissae(self.settings.abscissa)

    def record(self, step, x, output, computed):
        entry = super().record(step, x, output, computed)
        self.record_history(step, x, output, computed, entry)
        if self.policy.is_node(step) and self.stores_nodes:
            alpha, sigma = self.grid.alpha[step], self.grid.sigma[step]
            # paper: every row stores the x0 it used; corrected: only rows that ran the network
            rows = computed if self.settings.estimator == Variant.CORRECTED else np.ones_like(computed)
            scale = 1.0 / alpha if self.settings.lagrange_target == "x0_over_alpha" else 1.0
            x0 = to_x0(self.kind, output, x, alpha, sigma)
            if self.estimate is not None:  # paper: a skipped row's node is the estimate it consumed
                x0 = np.where(computed.reshape((-1,) + (1,) * (x.ndim - 1)), x0, self.estimate)
            self.nodes.push(rows, self.abscissae[step], scale * x0)
        return entry

    def decide(self, step: int, x_next: np.ndarray):
        """Criterion of ``step`` (recorded in the trace) and the decisions for ``step + 1`` (None after the last)."""
        product = self.stability_product(step, x_next)
        stable = None
        if product is not None:
            per_sample = kernels.sample_means(product)
            self.trace.record_criterion(step, per_sample)
            stable = kernels.stable_samples(per_sample, self.config.reduce)
        if step >= self.grid.num_steps - 1:
            return None
        can_skip = None
        tolerance = self.config.numerics.step_error_rms
        if tolerance is not None:
            errors = self._embedded_errors(step, x_next)
            self.trace.extras.setdefault("error_estimate", {})[step + 1] = errors.tolist()
            can_skip = np.where(np.isfinite(errors), errors <= tolerance, False)
        return self.policy.decide(step, stable, can_skip=can_skip)

    def prepare(self, step: int, x_next: np.ndarray, decisions: np.ndarray) -> None:
        """The clean-sample estimates of the rows that skip ``step + 1``."""
        self.estimate = None
        if not np.any(decisions != Decision.COMPUTE):
            return
        estimate = np.empty_like(x_next)
        am = decisions == Decision.SKIP_AM
        lag = decisions == Decision.SKIP_LAGRANGE
        if am.any():
            estimate[am] = self._am_estimate(step, x_next)[am]
        if lag.any():
            estimate[lag] = self._multistep_estimate(step + 1)[lag]
        self.estimate = estimate

    def synthesise(self, step, x):
        if self.last_raw is None:
            return np.zeros_like(x)
        if self.estimate is None:
            return self.last_raw.copy()
        return synthesise_output(self.kind, self.estimate, x, self.grid.alpha[step], self.grid.sigma[step])

    # ---------------------------------------------------------------- estimates
    def _embedded_errors(self, step: int, x_next: np.ndarray) -> np.ndarray:
        """Relative local-error estimate of the skip estimate for step ``step + 1`` per sample (embedded pair:
        degree-k minus degree-(k-1) extrapolation, RMS over the RMS of the estimate); NaN if unavailable."""
        errors = np.full(self.batch_size, np.nan)
        edm = self.grid.edm_sigma
        if self.policy.skip_kind(step) == Decision.SKIP_LAGRANGE:
            ring, at, scale = self.nodes, self.abscissae[step + 1], 1.0
        else:
            ring, at, scale = self.eps_nodes, edm[step + 1], edm[step + 1]
        if ring.values is None or ring.depth < 2:
            return errors
        alpha = self.grid.alpha[step + 1]
        for b in np.flatnonzero(ring.full()):
            high, low = embedded_pair_weights(ring.keys[:, b], at)
            diff = scale * kernels.combine(high - low, ring.values[:, b])
            estimate = kernels.combine(high, ring.values[:, b])
            if ring is not self.nodes:
                estimate = x_next[b] / alpha - scale * estimate
            errors[b] = kernels.relative_rms(diff[None], estimate[None])[0]
        return errors

    def _am_estimate(self, step: int, x_next: np.ndarray) -> np.ndarray:
        """Clean-sample estimate for step ``step + 1`` from the step estimate (Theorem 3.5 / 3.6)."""
        if len(self.history) < 3:
            raise ValueError(f"step {step + 1}: an AM skip needs three drift nodes")
        last = self.history[-1]
        a1, s1 = self.grid.alpha[step + 1], self.grid.sigma[step + 1]
        if self.settings.estimator == Variant.PAPER_VP:
            # the official Euler path builds the v-prediction estimate from the solver's actual x_{n+1}
            from_next = self.sample_scaling == "edm" and self.kind == "v_prediction"
            return to_x0(self.kind, last["raw"], x_next if from_next else self.paper_x_hat(step), a1, s1)
        if not np.all(self.eps_nodes.full()):
            raise ValueError(f"step {step + 1}: the corrected estimate needs three computed steps at finite noise")
        edm_next = self.grid.edm_sigma[step + 1]
        if self.settings.am_noise == "reuse":
            return self.corrected_x_tilde_hat(step) - edm_next * self.eps_nodes.values[0]
        eps_next = self.eps_nodes.combine(self.eps_weights(None, edm_next))
        return x_next / a1 - edm_next * eps_next

    def _multistep_estimate(self, step: int) -> np.ndarray:
        ring = self.nodes
        if not np.all(ring.full()):
            raise ValueError(
                f"step {step}: the multistep estimate needs {self.config.schedule.lagrange_term} stored "
                f"nodes in every row"
            )
        at = self.abscissae[step]
        weights = np.stack([lagrange_basis_weights(ring.keys[:, b], at) for b in range(self.batch_size)])
        scale = self.grid.alpha[step] if self.settings.lagrange_target == "x0_over_alpha" else 1.0
        return scale * ring.combine(weights)
