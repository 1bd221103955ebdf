"""The accuracy dial in float64 numpy (:class:`~sada.config.ErrorControl`), the oracle of
:mod:`sada.torch_backend.rules.error_control`: per sample, the estimated error a skip adds to the sample
(:func:`sada.reference.skip_error`) against ``tolerance`` (docs/theory.md, "The accuracy dial")."""

from __future__ import annotations

from collections import deque

import numpy as np

from sada.config import ErrorControl
from sada.engine.rules.base import register_rule
from sada.engine.rules.oracle import NumpyRule
from sada.policy import Decision
from sada.reference import multistep_estimate, skip_error
from sada.trajectory import synthesise_output, to_x0

__all__ = ["NumpyErrorControlRule"]


@register_rule("numpy", ErrorControl)
class NumpyErrorControlRule(NumpyRule):
    """Each sample's last ``history + 1`` clean-sample predictions (keyed by abscissa), their extrapolation and its
    test."""

    uses_criterion = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        schedule = self.config.schedule
        self.recent = [deque(maxlen=schedule.history + 1) for _ in range(self.batch_size)]  # newest first
        self.min_count = schedule.predictions_to_skip  # a pair of lower degree while filling
        explicit = self.config.numerics.abscissa
        self.abscissae = self.grid.abscissae(
            ErrorControl.abscissa_for(self.solver_order) if explicit is None else str(explicit)
        )
        self.log_snr = self.grid.log_snr

    def record(self, step, x, output, computed):
        entry = super().record(step, x, output, computed)
        if np.isfinite(self.abscissae[step]) and (
            self.grid.alpha[step] > 0 or self.kind != "epsilon"
        ):  # only the rows that ran the network
            x0 = to_x0(self.kind, output, x, self.grid.alpha[step], self.grid.sigma[step])
            for b in np.flatnonzero(computed):
                self.recent[b].appendleft((self.abscissae[step], x0[b]))
        return entry

    def decide(self, step: int, x_next: np.ndarray):
        """The decisions for ``step + 1`` (None after the last step)."""
        self.estimate = None
        if step >= self.grid.num_steps - 1:
            return None
        at = self.abscissae[step + 1]
        h = float(self.log_snr[step + 2] - self.log_snr[step + 1])
        errors = np.full(self.batch_size, np.nan)
        schedule, alpha = self.config.schedule, float(self.grid.alpha[step + 1])
        by_sample = schedule.relative_to == "sample"
        for b, recent in enumerate(self.recent):
            if len(recent) >= self.min_count and (alpha > 0 or not by_sample):
                sample = x_next[b : b + 1] / alpha if by_sample else None
                errors[b] = skip_error([v[None] for _, v in recent], [k for k, _ in recent], at, h, sample)[0]
        self.trace.extras.setdefault("skip_error", {})[step + 1] = errors.tolist()
        can_skip = np.where(np.isfinite(errors), errors <= self.config.schedule.tolerance, False)
        return self.policy.decide(step, None, can_skip=can_skip)

    def prepare(self, step: int, x_next: np.ndarray, decisions: np.ndarray) -> None:
        """The extrapolated clean sample of every row that skips ``step + 1``."""
        skipped = decisions != Decision.COMPUTE
        if skipped.any():
            at = self.abscissae[step + 1]
            self.estimate = np.zeros((self.batch_size,) + self.recent[0][0][1].shape)
            for b in np.flatnonzero(skipped):
                used = len(self.recent[b]) - 1  # the newest: all but the one kept for the error estimate
                keys = np.array([k for k, _ in self.recent[b]])[:used]
                values = [v for _, v in self.recent[b]][:used]
                self.estimate[b] = multistep_estimate(values, keys, at)

    def synthesise(self, step, x):
        if self.estimate is None:
            return np.zeros_like(x)
        return synthesise_output(self.kind, self.estimate, x, self.grid.alpha[step], self.grid.sigma[step])
