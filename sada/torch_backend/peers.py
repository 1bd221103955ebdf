"""Engines for peer methods, with the engine contract, so every host adapter can run them side by side.

:class:`AdaptiveDiffusionEngine` is AdaptiveDiffusion (Ye et al. 2024): skip a step when the
latents have moved evenly (the third-order rule of :func:`sada.reference.adaptive_diffusion_skip`), and on
a skipped step reuse the last computed model output unchanged -- no correction.
"""

from __future__ import annotations

import numpy as np
import torch

from sada.engine.contract import StepSequence
from sada.policy import AdaptiveDiffusionPolicy, Decision
from sada.trace import Trace
from sada.trajectory import StepGrid, check_kind

__all__ = ["AdaptiveDiffusionEngine"]


class AdaptiveDiffusionEngine(StepSequence):
    """Per-sample AdaptiveDiffusion on tensors, behind the engine contract of :mod:`sada.engine.contract`."""

    def __init__(self, grid: StepGrid, kind: str, threshold: float = 0.01, max_skip_steps: int = 4):
        if not isinstance(grid, StepGrid):
            raise TypeError(f"grid must be a StepGrid, got {type(grid).__name__}")
        self.grid, self.kind = grid, check_kind(kind)
        self.num_steps = grid.num_steps
        self.threshold, self.max_skip_steps = threshold, max_skip_steps
        self.trace: Trace | None = None

    def _begin(self, step: int, x: torch.Tensor) -> np.ndarray:
        if step == 0:
            self.policy = AdaptiveDiffusionPolicy(self.num_steps, x.shape[0], self.threshold, self.max_skip_steps)
            self.trace = Trace(self.num_steps, x.shape[0])
            self._last_x: torch.Tensor = None
            self._raw: torch.Tensor = None
        else:
            # d = mean |x_{n} - x_{n-1}| per sample: one small transfer, like SADA's criterion
            d = (x.float() - self._last_x).abs().flatten(1).mean(dim=1).cpu().numpy()
            self.policy.decide(step - 1, d)
        self._last_x = x.float().clone()
        self._decisions = self.policy.decisions[step].copy()
        self.trace.record_decisions(step, self._decisions)
        return self._decisions.copy()

    def _synthesise(self, step: int, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x) if self._raw is None else self._raw.to(x.dtype)

    def _stage_output(self, step: int, edm_sigma: float, x: torch.Tensor) -> torch.Tensor:
        return self._synthesise(step, x)

    def _record(self, step: int, x: torch.Tensor, output: torch.Tensor) -> None:
        computed = torch.as_tensor(self._decisions == Decision.COMPUTE, device=output.device)
        computed = computed.reshape((-1,) + (1,) * (output.ndim - 1))
        self._raw = output.clone() if self._raw is None else torch.where(computed, output, self._raw)

    def finish(self, x_final: torch.Tensor) -> Trace:
        return self.trace
