"""The paper's flow-matching rule on tensors (``mode="paper"`` on a rectified-flow grid, :class:`Variant.PAPER_FLOW`):
Criterion 3.4 as ``-Delta^2 v`` on the raw velocity history, and a skipped step receives the official velocity
extrapolation ``2 v_n - v_{n-1}`` (or ``v_n`` with a one-step history). No clean-sample nodes are stored."""

from __future__ import annotations

import numpy as np
import torch

from sada import kernels
from sada.config import StepSchedule, Variant
from sada.engine.rules.base import register_rule
from sada.torch_backend.rules.base import TorchRule

__all__ = ["PaperFlowRule"]


@register_rule("torch", StepSchedule, when=lambda settings: settings.estimator == Variant.PAPER_FLOW)
class PaperFlowRule(TorchRule):
    """The official flow-matching path: velocity extrapolation, decided by the step schedule."""

    def record(self, step, h, out, computed):
        self.history.record(step, h, out, computed)

    def can_skip(self, step, rows, test):
        return np.ones(rows, bool)  # the extrapolation needs no more history than the criterion

    def synthesise(self, step, x, decisions):
        v = self.history.velocity
        if v.values is None:
            return torch.zeros_like(x)
        h = x.to(self.dtype)
        both = v.full(x.shape[0])
        out = torch.where(
            self.mask(both, h), kernels.flow_velocity_extrapolation(v.values[0], v.values[1]), v.values[0]
        )
        return out.to(x.dtype)

    def stage_output(self, step, edm_sigma, x, decisions):
        return self.synthesise(step, x, decisions)  # the official path holds the velocity over the step
