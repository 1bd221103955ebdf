"""SADA for a hand-written sampling loop (or an evaluation inside a training loop).

Declare the schedule and the prediction kind once; then, per step, ask which rows must run the
network, run only those, and let the session fill in the rest::

    from sada.adapters.loop import SADASession

    with SADASession(grid, kind="epsilon", config=SADAConfig()) as sada:
        for n in range(grid.num_steps):
            rows = sada.rows_to_compute(n, x)            # LongTensor: run the network on x[rows] only
            eps = sada.complete(n, x, model(x[rows], t[n]))
            x = my_solver_step(x, eps, n)
    print(sada.summary())

or in one call per step: ``eps = sada.step(n, x, lambda x_rows, rows: model(x_rows, t[n]))``.

``sample_scaling="edm"`` declares that the loop keeps ``x~ = x / alpha`` (k-diffusion / EDM style);
the default ``"schedule"`` means ``x = alpha x0 + sigma eps`` of the declared schedule.
"""
from __future__ import annotations

import numpy as np
import torch

from sada.config import SADAConfig, fit_for_run
from sada.torch_backend.engine import SADAEngine
from sada.trace import Trace
from sada.trajectory import NoiseSchedule, StepGrid

__all__ = ["SADASession"]


class SADASession:
    """A SADA session for one or more sampling runs over the same step grid.

    Args:
        grid: a :class:`~sada.trajectory.StepGrid`, or a schedule together with ``times``.
        kind: what the network predicts: ``epsilon``, ``sample``, ``v_prediction`` or ``flow_velocity``.
        config: a :class:`~sada.config.SADAConfig` (default: ``SADAConfig()``).
        times: the schedule times of the steps when ``grid`` is a schedule.
        groups: optional row -> sample map; rows of one sample are decided together.
        sample_scaling: ``"schedule"`` (default) or ``"edm"`` (the loop's ``x`` is ``x / alpha``).
        replay: a recorded decision array (``trace.decisions``) to reproduce a run exactly.
        solver_order: the order of the loop's solver (1 for Euler/DDIM, 2 for DPM-Solver++ 2M or Heun, ...), used by
            the schedule-free error control.
    """

    def __init__(self, grid: "StepGrid | NoiseSchedule", kind: str, config: SADAConfig | None = None, *,
                 times: "np.ndarray | list[float] | None" = None, groups: "list[int] | None" = None,
                 sample_scaling: str = "schedule", replay: "np.ndarray | None" = None, solver_order: int = 2):
        if isinstance(grid, NoiseSchedule):
            if times is None:
                raise ValueError("pass times= (the steps' schedule times) when grid is a schedule")
            grid = StepGrid.from_times(grid, times)
        elif not isinstance(grid, StepGrid):
            raise TypeError(f"grid must be a StepGrid or a NoiseSchedule, got {type(grid).__name__}")
        if sample_scaling not in ("schedule", "edm"):
            raise ValueError(f"sample_scaling must be 'schedule' or 'edm', got {sample_scaling!r}")
        self.grid = grid
        self.sample_scaling = sample_scaling
        self.engine = SADAEngine(fit_for_run(config or SADAConfig(), grid.num_steps), grid, kind, groups=groups,
                                 replay=replay, sample_scaling=sample_scaling, solver_order=solver_order)
        self._step = None

    def __enter__(self) -> "SADASession":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._step = None  # an aborted run leaves nothing behind: the next step 0 starts afresh
        return False

    @property
    def trace(self) -> Trace | None:
        return self.engine.trace

    def summary(self) -> str:
        return "no run yet" if self.engine.trace is None else self.engine.trace.summary()

    def _canonical(self, step: int, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if self.sample_scaling == "edm":
            return x * float(self.grid.alpha[step])
        return x

    def rows_to_compute(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """Start ``step`` and return the indices of the rows that must run the network (maybe none)."""
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
            raise TypeError(f"step must be an int, got {step!r}")
        compute = self.engine.plan(int(step), self._canonical(step, x))
        self._step = int(step)
        return torch.as_tensor(np.flatnonzero(compute), dtype=torch.long, device=x.device)

    def complete(self, step: int, x: torch.Tensor, computed: torch.Tensor | None) -> torch.Tensor:
        """The full model output for ``step``: ``computed`` (outputs of the rows from :meth:`rows_to_compute`,
        in that order; ``None`` or empty when no row computes) plus synthesised outputs for the rest."""
        if self._step != step:
            raise ValueError(f"complete({step}) without rows_to_compute({step}) first")
        out = self.engine.complete(step, self._canonical(step, x), computed)
        self._step = None
        return out

    def step(self, step: int, x: torch.Tensor, network) -> torch.Tensor:
        """``rows_to_compute`` + ``network(x[rows], rows)`` + ``complete`` in one call."""
        rows = self.rows_to_compute(step, x)
        computed = network(x.index_select(0, rows), rows) if rows.numel() else None
        return self.complete(step, x, computed)

    def finish(self, x_final: torch.Tensor) -> Trace:
        """Optional: close the last step (records its criterion in the trace)."""
        return self.engine.finish(self._canonical(self.grid.num_steps, x_final))
