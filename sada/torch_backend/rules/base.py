"""What every torch skip rule shares: the run's grid, numerics and policy, and the per-run reset."""

from __future__ import annotations

import numpy as np
import torch

from sada.config import SampleScaling, Variant
from sada.policy import SkipPolicy
from sada.torch_backend.rules.history import CriterionHistory, row_mask
from sada.trace import Trace

__all__ = ["TorchRule"]


class TorchRule:
    """Base of the torch rules (:class:`sada.engine.rules.base.SkipRule`); subclasses register themselves with
    :func:`sada.engine.rules.base.register_rule` (``"torch"``)."""

    uses_criterion = True

    def __init__(self, config, settings, grid, kind: str, sample_scaling: str = "schedule"):
        self.config, self.settings, self.grid, self.kind = config, settings, grid, kind
        self.edm, self.log_snr = grid.edm_sigma, grid.log_snr
        # the official Euler path, v-prediction: the step estimate's clean sample uses the solver's actual x_{n+1}
        self.estimate_from_next_sample = (
            settings.estimator == Variant.PAPER_VP
            and kind == "v_prediction"
            and SampleScaling(sample_scaling) == SampleScaling.EDM
        )
        self.policy: SkipPolicy = None  # this rule's policy (the step schedule's; error control's subclasses it)
        self.trace: Trace = None
        self.history: CriterionHistory = None
        self.dtype = torch.float32

    def reset(self, policy, trace, dtype: torch.dtype, solver_order: int) -> None:
        """Start a run: the engine's policy and trace, the history dtype and the host solver's order."""
        self.policy, self.trace, self.dtype = policy, trace, dtype
        self.history = CriterionHistory(self.settings, self.grid, self.kind, dtype) if self.uses_criterion else None

    def uncertified_note(self, solver_order: int) -> str | None:
        """Why this rule can never skip for the host's solver (``None`` when it can)."""
        return None

    # ------------------------------------------------------------------ criterion
    def product(self, step: int, x_next: torch.Tensor):
        return None if self.history is None else self.history.product(step, x_next)

    def criterion_rows(self, rows: int) -> np.ndarray:
        return np.zeros(rows, bool) if self.history is None else self.history.criterion_rows(rows)

    def error_test(self, step: int, x_next: torch.Tensor, like: torch.Tensor):
        """A per-row error measure of the skip of ``step + 1`` (travels to the host with the criterion), or None."""
        return None

    def prepare(self, step: int, x_next: torch.Tensor, deciding: bool) -> None:
        """After the criterion of ``step``: form what the estimates of ``step + 1`` need."""
        if self.history is not None:
            self.history.closed()

    # ------------------------------------------------------------------ state
    def invalidate(self, rows: np.ndarray) -> None:
        if self.history is not None:
            self.history.invalidate(rows)

    def nbytes(self) -> int:
        return 0 if self.history is None else self.history.nbytes()

    @staticmethod
    def mask(rows: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return row_mask(rows, like)
