"""Schedule-free SADA in float64 numpy (:class:`~sada.config.ErrorControl`), the oracle of
:mod:`sada.torch_backend.rules.error_control`: per sample, the embedded-pair error of the extrapolated clean sample
against ``tolerance * h^p`` times the solver's ``p``-th divided difference (docs/theory.md)."""

from __future__ import annotations

from collections import deque

import numpy as np

from sada import kernels
from sada.config import ErrorControl
from sada.engine.rules.base import register_rule
from sada.engine.rules.oracle import NumpyRule
from sada.policy import Decision
from sada.reference import embedded_pair_weights, multistep_estimate
from sada.trajectory import synthesise_output, to_x0

__all__ = ["NumpyErrorControlRule"]


@register_rule("numpy", ErrorControl)
class NumpyErrorControlRule(NumpyRule):
    """Each sample's last ``history`` clean-sample predictions (keyed by log-SNR), their extrapolation and its test."""

    uses_criterion = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        schedule = self.config.schedule
        depth = max(schedule.history, schedule.test_order(self.solver_order) + 1)
        self.recent = [deque(maxlen=depth) for _ in range(self.batch_size)]  # (log-SNR, x0) per row, newest first
        self.certified = schedule.certifies(self.solver_order)
        self.log_snr = self.grid.log_snr

    def uncertified_note(self):
        return None if self.certified else self.config.schedule.uncertified_note(self.solver_order)

    def record(self, step, x, output, computed):
        entry = super().record(step, x, output, computed)
        if np.isfinite(self.log_snr[step]):  # only the rows that ran the network
            x0 = to_x0(self.kind, output, x, self.grid.alpha[step], self.grid.sigma[step])
            for b in np.flatnonzero(computed):
                self.recent[b].appendleft((self.log_snr[step], x0[b]))
        return entry

    def decide(self, step: int, x_next: np.ndarray):
        """The decisions for ``step + 1`` (None after the last step)."""
        self.estimate = None
        if step >= self.grid.num_steps - 1:
            return None
        schedule = self.config.schedule
        p = schedule.test_order(self.solver_order)
        at = self.log_snr[step + 1]
        h = self.log_snr[step + 2] - at if step + 2 <= self.grid.num_steps else np.inf
        ratios = np.full(self.batch_size, np.nan)
        for b, recent in enumerate(self.recent):
            if len(recent) == recent.maxlen:
                keys = np.array([k for k, _ in recent])
                values = np.stack([v for _, v in recent])
                high, low = embedded_pair_weights(keys[: schedule.history], at)
                divided = kernels.divided_difference_weights(keys[: p + 1])
                ratios[b] = kernels.relative_rms(
                    kernels.combine(high - low, values[: schedule.history])[None],
                    kernels.combine(divided, values[: p + 1])[None],
                )[0]
        limit = schedule.tolerance * h**p
        self.trace.extras.setdefault("error_ratio", {})[step + 1] = (ratios / limit).tolist()
        can_skip = np.where(np.isfinite(ratios), ratios <= limit, False) & self.certified
        return self.policy.decide(step, None, can_skip=can_skip)

    def prepare(self, step: int, x_next: np.ndarray, decisions: np.ndarray) -> None:
        """The extrapolated clean sample of every row that skips ``step + 1``."""
        skipped = decisions != Decision.COMPUTE
        if skipped.any():
            history, at = self.config.schedule.history, self.log_snr[step + 1]
            self.estimate = np.zeros((self.batch_size,) + self.recent[0][0][1].shape)
            for b in np.flatnonzero(skipped):
                keys = np.array([k for k, _ in self.recent[b]])[:history]
                values = [v for _, v in self.recent[b]][:history]
                self.estimate[b] = multistep_estimate(values, keys, at)

    def synthesise(self, step, x):
        if self.estimate is None:
            return np.zeros_like(x)
        return synthesise_output(self.kind, self.estimate, x, self.grid.alpha[step], self.grid.sigma[step])
