"""The accuracy dial on tensors (:class:`~sada.config.ErrorControl`, the default): a skipped step receives the
Lagrange extrapolation of each row's newest ``history`` clean-sample predictions, where the error that this estimate
adds to the sample is estimated to be at most ``tolerance`` (:class:`sada.torch_backend.error_control.RecentPredictions`
holds the predictions and computes both).

Criterion 3.4 is computed only when token pruning needs its token map."""

from __future__ import annotations

import numpy as np
import torch

from sada.config import ErrorControl
from sada.config.dial import spare_skip_note
from sada.engine.rules.base import register_rule
from sada.torch_backend.error_control import RecentPredictions
from sada.torch_backend.rules.base import TorchRule
from sada.trajectory import synthesise_output, to_x0

__all__ = ["ErrorControlRule"]


def log_snr_step(log_snr: np.ndarray, step: int) -> float:
    """The log-SNR step ``h`` that consumes the estimate of ``step`` (``inf`` into a clean end point)."""
    return float(log_snr[step + 1] - log_snr[step])


@register_rule("torch", ErrorControl)
class ErrorControlRule(TorchRule):
    """Skip where the estimated added error is within the tolerance."""

    def __init__(self, config, settings, grid, kind, sample_scaling="schedule"):
        super().__init__(config, settings, grid, kind, sample_scaling)
        self.uses_criterion = config.prunes_tokens  # only the token map of pruning reads the criterion
        self.variable: str | None = None
        self.abscissae = None
        self.schedule = None  # the dial for the host's solver order (its unset fields resolved at every reset)
        self.recent = None

    def reset(self, policy, trace, dtype, solver_order):
        super().reset(policy, trace, dtype, solver_order)
        self.schedule = self.config.schedule.for_solver(solver_order, self.grid.median_log_snr_step)
        explicit = self.config.numerics.abscissa
        variable = ErrorControl.abscissa_for(solver_order) if explicit is None else str(explicit)
        if variable != self.variable:
            self.variable, self.abscissae = variable, self.grid.abscissae(variable)
        self.recent = RecentPredictions(self.schedule)
        self.noted_veto = False
        median_step = self.grid.median_log_snr_step
        trace.extras["dial"] = {
            "tolerance": self.schedule.tolerance,
            "max_interval": self.schedule.max_interval,
            "median_log_snr_step": median_step,
        }
        grid_note = self.config.schedule.grid_note(solver_order, median_step)
        if grid_note is not None:
            trace.note(0, grid_note)
        if not self.config.schedule.very_coarse_grid(solver_order, median_step):  # there skips are the exception
            spare = spare_skip_note(self.schedule.max_interval, self.grid.num_steps, policy.protected_tail)
            if spare is not None:
                trace.note(0, spare)

    def uncertified_note(self, solver_order):
        return self.config.schedule.exact_note(solver_order, self.grid.median_log_snr_step)

    def record(self, step, h, out, computed):
        if np.isfinite(self.abscissae[step]) and (self.grid.alpha[step] > 0 or self.kind != "epsilon"):
            alpha, sigma = float(self.grid.alpha[step]), float(self.grid.sigma[step])
            self.recent.push(computed, self.abscissae[step], to_x0(self.kind, out, h, alpha, sigma))
        if self.history is not None:
            self.history.record(step, h, out, computed)

    def error_test(self, step, x_next, like):
        if step + 1 >= self.grid.num_steps:
            return None
        sample = None
        if self.schedule.relative_to == "sample":  # the error relative to x / alpha: what reaches the final sample
            alpha = float(self.grid.alpha[step + 1])
            if not alpha > 0:
                return torch.full(
                    (like.shape[0],), float("nan"), dtype=like.dtype, device=like.device
                )  # pure noise: no sample to measure against; compute
            sample = x_next / alpha
        return self.recent.skip_error(
            float(self.abscissae[step + 1]), log_snr_step(self.log_snr, step + 1), like, sample
        )

    def can_skip(self, step, rows, test):
        finite = np.isfinite(test)
        tolerance = self.schedule.tolerance
        self.trace.extras.setdefault("skip_error", {})[step + 1] = test.tolist()
        allowed = finite & (np.where(finite, test, np.inf) <= tolerance)
        if not self.noted_veto and (finite & ~allowed).any():
            self.noted_veto = True
            self.trace.note(
                step + 1,
                f"the accuracy dial computes where a skip is estimated to add more than tolerance={tolerance:g} to "
                f"the sample (here up to {float(np.nanmax(test)):.3g}; large steps, rough stretches): noted once; "
                "trace.extras['skip_error'] holds every estimate",
            )
        return allowed

    def synthesise(self, step, x, decisions):
        alpha, sigma = float(self.grid.alpha[step]), float(self.grid.sigma[step])
        x0 = self.recent.estimate(float(self.abscissae[step]))
        return synthesise_output(self.kind, x0, x.to(self.dtype), alpha, sigma).to(x.dtype)

    def stage_output(self, step, edm_sigma, x, decisions):
        alpha, sigma = self.grid.alpha_sigma_at(edm_sigma)
        x0 = self.recent.estimate(self.grid.abscissa_at(self.variable, edm_sigma))
        return synthesise_output(self.kind, x0, x.to(self.dtype), alpha, sigma).to(x.dtype)

    def invalidate(self, rows):
        super().invalidate(rows)
        self.recent.invalidate(rows)

    def nbytes(self):
        return super().nbytes() + (0 if self.recent is None else self.recent.nbytes())
