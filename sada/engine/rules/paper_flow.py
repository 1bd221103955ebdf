"""The paper's flow-matching rule in float64 numpy (``mode="paper"`` on a rectified-flow grid), the oracle of
:mod:`sada.torch_backend.rules.paper_flow`: the step schedule decides from ``-Delta^2 v`` and a skipped step receives
the velocity extrapolation ``2 v_n - v_{n-1}`` (``v_n`` with a one-step history); no clean-sample nodes."""

from __future__ import annotations

import numpy as np

from sada import kernels
from sada.config import StepSchedule, Variant
from sada.engine.rules.base import register_rule
from sada.engine.rules.step_schedule import NumpyStepScheduleRule
from sada.trajectory import convert

__all__ = ["NumpyPaperFlowRule"]


@register_rule("numpy", StepSchedule, when=lambda settings: settings.estimator == Variant.PAPER_FLOW)
class NumpyPaperFlowRule(NumpyStepScheduleRule):
    """The official flow-matching path: decided like the step schedule, estimated by velocity extrapolation."""

    stores_nodes = False

    def prepare(self, step, x_next, decisions):
        self.estimate = None  # the extrapolation needs no clean-sample estimate

    def synthesise(self, step, x):
        if self.last_raw is None:
            return np.zeros_like(x)
        alpha, sigma = self.grid.alpha[step], self.grid.sigma[step]
        raws = [h["raw_velocity"] for h in self.history][-2:]
        last = convert(self.last_raw, self.kind, "flow_velocity", x, alpha, sigma)
        velocity = kernels.flow_velocity_extrapolation(raws[-1], raws[-2]) if len(raws) == 2 else last
        return convert(velocity, "flow_velocity", self.kind, x, alpha, sigma)
