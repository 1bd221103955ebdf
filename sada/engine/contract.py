"""The engine contract: what a host (a diffusers pipeline, a k-diffusion sampler, a hand-written loop) calls per step.

One sampling step ``n`` of a run with ``N`` steps, for a batch of rows::

    compute = engine.plan(n, x_n)            # closes step n-1 with its result x_n; bool mask of rows that must run
    out[compute] = network(x_n[compute])     # the host runs only those rows
    out = engine.complete(n, x_n, out)       # synthesised outputs for the other rows; the step is recorded
    x_{n+1} = solver(x_n, out)               # the unchanged solver
    ...
    trace = engine.finish(x_N)               # optional: closes the last step

``x`` is the schedule's sample ``alpha x0 + sigma eps``; outputs are in the model's own parameterisation.
``complete`` accepts either a full-batch output (rows that skip may hold anything) or the outputs of the
planned rows only, in row order. Two-stage solvers (Heun, DPM2) call :meth:`~SamplingEngine.complete_stage`
for their second evaluation of step ``n`` at noise level ``edm_sigma``.

:class:`StepSequence` implements ``plan``/``complete``/``complete_stage`` once, on top of four methods an engine
provides: ``_begin(step, x)`` (row decisions), ``_synthesise(step, x)``, ``_record(step, x, output)`` and
``_stage_output(step, edm_sigma, x)``. It works on any array namespace (numpy, torch, ...).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from sada.config import SADAConfig
from sada.policy import Decision
from sada.trace import Trace
from sada.trajectory import StepGrid, check_kind

__all__ = ["SamplingEngine", "StepSequence"]


@runtime_checkable
class SamplingEngine(Protocol):
    """The per-step contract shared by SADA's engines and the peer methods' engines."""

    num_steps: int
    trace: Trace | None

    def plan(self, step: int, x) -> np.ndarray:
        """Start ``step`` (closing ``step - 1`` with its result ``x``); return the mask of rows that must compute."""

    def complete(self, step: int, x, output):
        """The full model output of ``step``: the planned rows' outputs plus synthesised ones; records the step."""

    def complete_stage(self, step: int, edm_sigma: float, x, output):
        """A two-stage solver's second evaluation of ``step`` at ``edm_sigma``: skipped rows get estimates."""

    def finish(self, x_final) -> Trace | None:
        """Close the last step (its criterion, for the trace) and return the trace."""


def _namespace(x):
    from sada.kernels._namespace import namespace

    return namespace(x)


def _row_mask(xp, mask: np.ndarray, like):
    """``mask`` as an array of ``like``'s namespace and device, shaped to broadcast over its rows."""
    from array_api_compat import device

    m = xp.asarray(mask, device=device(like))
    return xp.reshape(m, (-1,) + (1,) * (like.ndim - 1))


class StepSequence:
    """``plan`` / ``complete`` / ``complete_stage`` written once for every engine (see the module docstring)."""

    # the four methods an engine provides (declared for the type checker; every engine defines them)
    def _begin(self, step: int, x) -> np.ndarray:
        raise NotImplementedError

    def _synthesise(self, step: int, x):
        raise NotImplementedError

    def _record(self, step: int, x, output) -> None:
        raise NotImplementedError

    def _stage_output(self, step: int, edm_sigma: float, x):
        raise NotImplementedError

    _planned: tuple[int, np.ndarray] | None = None

    def _configure(self, config: SADAConfig, grid: StepGrid, kind: str, sample_scaling: str) -> None:
        """What every SADA engine derives the same way from its arguments: the config checked against the grid's
        step count and its numerics resolved for this grid and host (:meth:`SADAConfig.resolve`)."""
        if not isinstance(config, SADAConfig):
            raise TypeError(f"config must be a SADAConfig, got {type(config).__name__}")
        if not isinstance(grid, StepGrid):
            raise TypeError(f"grid must be a StepGrid, got {type(grid).__name__}")
        self.kind = check_kind(kind)
        self.grid = grid
        self.num_steps = grid.num_steps
        self.config = config.for_steps(self.num_steps)
        self.settings = self.config.resolve(grid, sample_scaling)

    @property
    def estimator(self):
        """The resolved estimator numerics (:class:`~sada.config.Variant`)."""
        return self.settings.estimator

    @property
    def criterion(self):
        """The resolved criterion numerics (:class:`~sada.config.Variant`)."""
        return self.settings.criterion

    @property
    def lagrange_target(self):
        return self.settings.lagrange_target

    def plan(self, step: int, x) -> np.ndarray:
        decisions = np.asarray(self._begin(step, x))
        compute = decisions == Decision.COMPUTE
        self._planned = (int(step), compute)
        return compute.copy()

    def step(self, step: int, x, network):
        """One whole step: :meth:`plan`, ``network(x[rows], rows)`` for the planned rows only (``rows``: integer
        indices), :meth:`complete`. Returns the full output to hand to the solver."""
        compute = self.plan(step, x)
        rows = np.flatnonzero(compute)
        if rows.size == compute.size:
            return self.complete(step, x, network(x, rows))
        return self.complete(step, x, network(x[rows], rows) if rows.size else None)

    def complete(self, step: int, x, output):
        compute = self._check_planned(step)
        xp = _namespace(x)
        rows = x.shape[0]
        if output is None or output.shape[0] != rows:
            output = self._scatter(xp, compute, x, output)
        if output.shape != x.shape:
            raise ValueError(
                f"step {step}: output shape {tuple(output.shape)} must equal the sample shape {tuple(x.shape)}"
            )
        if not compute.all():
            synthesised = xp.astype(self._synthesise(step, x), output.dtype)
            output = synthesised if not compute.any() else xp.where(_row_mask(xp, compute, output), output, synthesised)
        self._record(step, x, output)
        self._planned = None
        return output

    def complete_stage(self, step: int, edm_sigma: float, x, output):
        compute = self._stage_rows(step)
        if compute.all():
            return output
        xp = _namespace(x)
        if output is None or output.shape[0] != x.shape[0]:
            output = self._scatter(xp, compute, x, output)
        estimate = xp.astype(self._stage_output(step, float(edm_sigma), x), output.dtype)
        if not compute.any():
            return estimate
        return xp.where(_row_mask(xp, compute, output), output, estimate)

    # -------------------------------------------------------------- helpers
    def _check_planned(self, step: int) -> np.ndarray:
        if self._planned is None or self._planned[0] != step:
            planned = None if self._planned is None else self._planned[0]
            raise ValueError(f"complete({step}) needs plan({step}, x) first (planned step: {planned})")
        self._stage = self._planned
        return self._planned[1]

    def _stage_rows(self, step: int) -> np.ndarray:
        stage = getattr(self, "_stage", None)
        if stage is None or stage[0] != step:
            raise ValueError(f"complete_stage({step}) needs step {step} planned and completed first")
        return stage[1]

    @staticmethod
    def _scatter(xp, compute: np.ndarray, x, partial):
        """A full-batch output holding the planned rows' outputs (zeros elsewhere)."""
        n = int(compute.sum())
        got = 0 if partial is None else partial.shape[0]
        if got != n:
            raise ValueError(
                f"got outputs for {got} rows, expected the {n} planned rows "
                f"{np.flatnonzero(compute).tolist()} (or a full batch of {x.shape[0]})"
            )
        from array_api_compat import device

        full = xp.zeros(x.shape, dtype=x.dtype if partial is None else partial.dtype, device=device(x))
        if n:
            full = _put_rows(xp, full, np.flatnonzero(compute), partial)
        return full


def _put_rows(xp, full, rows: np.ndarray, values):
    """``full`` with ``full[rows] = values`` (functional for namespaces without in-place assignment)."""
    try:
        full[rows] = values
        return full
    except TypeError:  # namespaces that forbid item assignment: rebuild by concatenation
        parts = [None] * full.shape[0]
        for i, r in enumerate(rows.tolist()):
            parts[r] = values[i : i + 1]
        for r in range(full.shape[0]):
            if parts[r] is None:
                parts[r] = full[r : r + 1]
        return xp.concat(parts, axis=0)
