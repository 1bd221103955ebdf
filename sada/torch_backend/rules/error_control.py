"""Schedule-free SADA on tensors (:class:`~sada.config.ErrorControl`, the default): a skipped step receives the
Lagrange extrapolation of each row's last ``history`` clean-sample predictions in log-SNR, where the extrapolation's
embedded-pair error is within ``tolerance`` of the host solver's own local error
(:class:`sada.torch_backend.error_control.RecentPredictions` holds the predictions and computes both).

Criterion 3.4 is computed only when token pruning needs its token map."""

from __future__ import annotations

import math

import numpy as np

from sada.config import ErrorControl
from sada.engine.rules.base import register_rule
from sada.torch_backend.error_control import RecentPredictions
from sada.torch_backend.rules.base import TorchRule
from sada.trajectory import synthesise_output, to_x0

__all__ = ["ErrorControlRule"]


@register_rule("torch", ErrorControl)
class ErrorControlRule(TorchRule):
    """Skip where the extrapolation's estimated error passes the test against the solver's own error."""

    def __init__(self, config, settings, grid, kind, sample_scaling="schedule"):
        super().__init__(config, settings, grid, kind, sample_scaling)
        self.uses_criterion = config.prunes_tokens  # only the token map of pruning reads the criterion
        self.recent = None
        self.certified = True

    def reset(self, policy, trace, dtype, solver_order):
        super().reset(policy, trace, dtype, solver_order)
        schedule = self.config.schedule
        self.recent = RecentPredictions(schedule, solver_order)
        self.certified = schedule.certifies(solver_order)

    def uncertified_note(self, solver_order):
        schedule = self.config.schedule
        return None if schedule.certifies(solver_order) else schedule.uncertified_note(solver_order)

    def record(self, step, h, out, computed):
        if np.isfinite(self.log_snr[step]):  # not at pure noise (flow t = 1, zero terminal SNR)
            alpha, sigma = float(self.grid.alpha[step]), float(self.grid.sigma[step])
            self.recent.push(computed, self.log_snr[step], to_x0(self.kind, out, h, alpha, sigma))
        if self.history is not None:
            self.history.record(step, h, out, computed)

    def error_test(self, step, x_next, like):
        return self.recent.error_ratio(float(self.log_snr[step + 1]), like)

    def can_skip(self, step, rows, test):
        finite = np.isfinite(test)
        log_snr = self.log_snr
        h = float(log_snr[step + 2] - log_snr[step + 1]) if step + 2 <= self.grid.num_steps else np.inf
        limit = self.config.schedule.tolerance * h**self.recent.order
        self.trace.extras.setdefault("error_ratio", {})[step + 1] = (test / limit).tolist()
        return finite & (np.where(finite, test, np.inf) <= limit) & self.certified

    def synthesise(self, step, x, decisions):
        alpha, sigma = float(self.grid.alpha[step]), float(self.grid.sigma[step])
        x0 = self.recent.estimate(float(self.log_snr[step]))
        return synthesise_output(self.kind, x0, x.to(self.dtype), alpha, sigma).to(x.dtype)

    def stage_output(self, step, edm_sigma, x, decisions):
        alpha, sigma = self.grid.alpha_sigma_at(edm_sigma)
        x0 = self.recent.estimate(-math.log(edm_sigma))
        return synthesise_output(self.kind, x0, x.to(self.dtype), alpha, sigma).to(x.dtype)

    def invalidate(self, rows):
        super().invalidate(rows)
        self.recent.invalidate(rows)

    def nbytes(self):
        return super().nbytes() + (0 if self.recent is None else self.recent.nbytes())
