"""One SADA session: what every host shares between its sampling loop and the torch engine.

The session owns, once for every adapter (a hand-written loop, k-diffusion, diffusers):

* run fitting (:func:`sada.config.fit_for_run`) and the typed "too short" result: a run with too few steps for any
  skip (:class:`sada.errors.RunTooShortError`) is computed exactly, with a note in :meth:`SADASession.summary`;
  any other configuration error (:class:`sada.errors.ConfigError`) is raised where the session is built;
* engine construction (:class:`~sada.torch_backend.engine.SADAEngine`, or another engine with the same contract
  through ``engine_factory``) and lockstep resolution (:mod:`sada.torch_backend.compiled`);
* EDM sample scaling (a host that keeps ``x / alpha`` hands its sample over as it is);
* the order of steps (a run starts at step 0 and goes one step at a time; a bad step index is named as such);
* the rows that actually entered the network (:meth:`SADASession.record_rows`, called where the network runs), from
  which :meth:`SADASession.summary` is derived -- not from the plan;
* warn-once (:class:`WarnOnce`): every warning is a :class:`sada.errors.SADAWarning`.

It lives in the torch layer because it builds the torch engine; ``sada.adapters.loop`` re-exports it.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch

from sada.config import SADAConfig, fit_for_run
from sada.errors import ExactRunWarning, RunTooShortError, SADAWarning
from sada.policy import Decision
from sada.torch_backend.compiled import LOCKSTEP_NOTE, resolve_lockstep
from sada.torch_backend.engine import SADAEngine
from sada.trace import Trace
from sada.trajectory import NoiseSchedule, StepGrid

__all__ = ["SADASession", "WarnOnce", "network_summary"]

SCALINGS = ("schedule", "edm")


class WarnOnce:
    """Emit each warning once per owner (keyed by ``key`` or the message); always a :class:`SADAWarning`."""

    def __init__(self):
        self.seen: set[str] = set()

    def __call__(
        self, message: str, category: type = ExactRunWarning, key: str | None = None, stacklevel: int = 3
    ) -> bool:
        if not (isinstance(category, type) and issubclass(category, SADAWarning)):
            raise TypeError(f"category must be a SADAWarning subclass, got {category!r}")
        key = message if key is None else key
        if key in self.seen:
            return False
        self.seen.add(key)
        warnings.warn(message if message.startswith("sada:") else f"sada: {message}", category, stacklevel=stacklevel)
        return True


def _format_counts(computed: float, am: float, lagrange: float, total: float, per: int) -> str:
    text = (
        f"computed {computed / per:g}/{total / per:g} steps ({total / max(computed, 1):.2f}x), "
        f"AM {am / per:g}, Lagrange {lagrange / per:g}"
    )
    return text + (f" (mean over {per} samples)" if per > 1 else "")


def network_summary(trace: Trace, ran: np.ndarray) -> str:
    """``trace.summary()`` with its counts taken from ``ran`` (``[steps, samples]``: whether the network ran for the
    sample at the step), not from the plan. A planned skip whose rows still entered the network is counted as
    computed, and said."""
    steps = trace.steps_done
    d, ran = trace.decisions[:steps], np.asarray(ran, bool)[:steps]
    per = trace.batch_size
    planned = d == Decision.COMPUTE
    own_head = _format_counts(
        planned.sum(), (d == Decision.SKIP_AM).sum(), (d == Decision.SKIP_LAGRANGE).sum(), d.size, per
    )
    full = trace.summary()
    tail = full[len(own_head) :] if full.startswith(own_head) else ""
    head = _format_counts(
        ran.sum(), ((d == Decision.SKIP_AM) & ~ran).sum(), ((d == Decision.SKIP_LAGRANGE) & ~ran).sum(), d.size, per
    )
    ignored = int(np.sum(~planned & ran))
    if ignored:
        head += f"; {ignored / per:g} planned skips ran the network anyway"
    return head + tail


def _check_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int, got {step!r}")
    return int(step)


class SADASession:
    """A SADA session for one or more sampling runs over the same step grid.

    Args:
        grid: a :class:`~sada.trajectory.StepGrid`, or a schedule together with ``times``.
        kind: what the network predicts: ``epsilon``, ``sample``, ``v_prediction`` or ``flow_velocity``.
        config: a :class:`~sada.config.SADAConfig` (default: ``SADAConfig()``), fitted to the grid's step count.
        times: the schedule times of the steps when ``grid`` is a schedule.
        groups: optional row -> sample map; rows of one sample are decided together.
        sample_scaling: ``"schedule"`` (default) or ``"edm"`` (the loop's ``x`` is ``x / alpha``).
        replay: a recorded decision array (``trace.decisions``) to reproduce a run exactly.
        solver_order: the order of the loop's solver (a positive int: 1 for Euler/DDIM, 2 for DPM-Solver++ 2M or
            Heun, ...), used by the schedule-free error control.
        lockstep: batch-level decisions (every row computes or none does); ``None``: on when ``network`` is
            ``torch.compile``d (then the trace notes why).
        network: the denoiser, only to resolve ``lockstep=None``.
        engine_factory: ``engine_factory(grid, kind)`` builds another engine with the same contract instead.
        host_notes: what the host adapter found about the run's grid (e.g. a grid that ends far above the noise
            table's smallest level), added to the trace at step 0 of every run.
        reintegrates: the host re-integrates skipped stretches once the network runs again
            (:mod:`sada.torch_backend.reintegration`); then the second-to-last step may skip on a VP / VE grid from
            the dial's tolerance 0.01 (:func:`~sada.torch_backend.reintegration.protected_tail`).

    Raises :class:`~sada.errors.ConfigError` for a configuration the grid cannot serve. A grid too short for any
    skip is not an error: every step computes, and :meth:`summary` says so.
    """

    def __init__(
        self,
        grid: StepGrid | NoiseSchedule,
        kind: str,
        config: SADAConfig | None = None,
        *,
        times: np.ndarray | list[float] | None = None,
        groups: list[int] | None = None,
        sample_scaling: str = "schedule",
        replay: np.ndarray | None = None,
        solver_order: int = 2,
        lockstep: bool | None = False,
        network=None,
        engine_factory=None,
        host_notes: tuple[str, ...] = (),
        reintegrates: bool = False,
    ):
        if isinstance(grid, NoiseSchedule):
            if times is None:
                raise ValueError("pass times= (the steps' schedule times) when grid is a schedule")
            grid = StepGrid.from_times(grid, times)
        elif not isinstance(grid, StepGrid):
            raise TypeError(f"grid must be a StepGrid or a NoiseSchedule, got {type(grid).__name__}")
        if config is not None and not isinstance(config, SADAConfig):
            raise TypeError(f"config must be a SADAConfig, got {type(config).__name__}")
        if sample_scaling not in SCALINGS:
            raise ValueError(f"sample_scaling must be 'schedule' or 'edm', got {sample_scaling!r}")
        if isinstance(solver_order, bool) or not isinstance(solver_order, (int, np.integer)) or solver_order < 1:
            raise ValueError(
                f"solver_order must be a positive int (1 for Euler/DDIM, 2 for DPM-Solver++ 2M or "
                f"Heun, ...), got {solver_order!r}"
            )
        if not isinstance(reintegrates, bool):
            raise TypeError(f"reintegrates must be a bool, got {reintegrates!r}")
        if engine_factory is not None and not callable(engine_factory):
            raise TypeError(f"engine_factory must be callable as engine_factory(grid, kind), got {engine_factory!r}")
        self.grid, self.kind, self.sample_scaling = grid, kind, sample_scaling
        self.config = config or SADAConfig()
        self.lockstep = resolve_lockstep(lockstep, network)
        self.lockstep_note = LOCKSTEP_NOTE if lockstep is None and self.lockstep else ""
        self.note = ""  # why every step computes exactly (a run too short to skip), else ""
        self.too_short_reason = ""
        self.engine = None
        if engine_factory is not None:
            self.engine = engine_factory(grid, kind)
        else:
            try:
                fitted = fit_for_run(self.config, grid.num_steps)
            except RunTooShortError as exc:
                self.note = f"{grid.num_steps} steps: below the skipping range, ran exactly"
                self.too_short_reason = str(exc)
            else:
                self.engine = SADAEngine(
                    fitted,
                    grid,
                    kind,
                    groups=groups,
                    replay=replay,
                    sample_scaling=sample_scaling,
                    solver_order=int(solver_order),
                    lockstep=self.lockstep,
                    reintegrates=reintegrates,
                )
        if isinstance(host_notes, str) or not all(isinstance(n, str) for n in host_notes):
            raise TypeError(f"host_notes must be a sequence of strings, got {host_notes!r}")
        if isinstance(self.engine, SADAEngine):
            self.engine.host_notes = tuple(host_notes)
        self._next: int | None = None  # the step the run expects next (None: no run started)
        self._planned: tuple[int, np.ndarray] | None = None
        self._ran: np.ndarray | None = None
        self._ran_trace: Trace | None = None
        self.network_rows = 0  # rows that entered the network, all runs

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> SADASession:
        return self

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        self._next = self._planned = None  # an aborted run leaves nothing behind: the next step 0 starts afresh
        return False

    # ------------------------------------------------------------------ what ran
    @property
    def trace(self) -> Trace | None:
        return None if self.engine is None else self.engine.trace

    @property
    def exact(self) -> bool:
        """Whether every step computes exactly (no engine: the run is too short to skip)."""
        return self.engine is None

    def summary(self) -> str:
        """What the latest run did, counted from the rows that entered the network."""
        if self.note:
            return self.note
        trace = self.trace
        if trace is None:
            return "no run yet"
        return network_summary(trace, self._ran_matrix(trace))

    def _ran_matrix(self, trace: Trace) -> np.ndarray:
        if self._ran_trace is not trace:
            self._ran_trace, self._ran = trace, np.zeros(trace.decisions.shape, bool)
        return self._ran

    def record_rows(self, step: int, rows) -> None:
        """Record that the network ran on engine rows ``rows`` (indices, or a bool mask) at ``step``; call it where
        the network is called. Rows of one sample group count once per step."""
        rows = np.asarray(rows)
        idx = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64).ravel()
        self.network_rows += int(idx.size)
        trace = self.trace
        if trace is None or not idx.size or not 0 <= step < trace.num_steps:
            return
        groups = getattr(self.engine, "groups", None)
        samples = np.asarray(groups)[idx] if groups is not None and len(groups) > idx.max() else idx
        self._ran_matrix(trace)[step, samples[samples < trace.batch_size]] = True

    # ------------------------------------------------------------------ scaling
    def canonical(self, x: torch.Tensor, step: int | None = None, edm_sigma: float | None = None) -> torch.Tensor:
        """``x`` in the schedule's scaling (``alpha x0 + sigma eps``), as the engine takes it: unchanged for
        ``sample_scaling="schedule"``, else multiplied by ``alpha`` of grid ``step`` (or of the EDM noise level
        ``edm_sigma``, e.g. a solver's intermediate stage)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if self.sample_scaling == "schedule":
            return x
        if edm_sigma is not None:
            return x * self.grid.alpha_sigma_at(float(edm_sigma))[0]
        return x * float(self.grid.alpha[step])

    # ------------------------------------------------------------------ the contract
    def _check_order(self, step: int) -> None:
        n = self.grid.num_steps
        if not 0 <= step < n:
            raise ValueError(f"step {step} is outside this run's {n} steps (0..{n - 1})")
        if step == 0:
            return
        if self._next is None:
            raise ValueError(f"step {step}: no run has started; a run starts at step 0 and goes one step at a time")
        if step != self._next:
            raise ValueError(
                f"step {step}: the run expects step {self._next} next (steps go one at a time; step 0 starts a new run)"
            )

    def plan(self, step: int, x: torch.Tensor, *, edm_sigma: float | None = None) -> np.ndarray:
        """Start ``step``: the boolean mask of the rows that must run the network. ``x`` in the host's scaling."""
        step = _check_step(step)
        self._check_order(step)
        if self.engine is None:
            compute = np.ones(x.shape[0], bool)
        else:
            compute = np.asarray(self.engine.plan(step, self.canonical(x, step, edm_sigma)), bool)
            if step == 0:
                self.note_lockstep()
        self._planned, self._next = (step, compute), step + 1
        return compute.copy()

    def complete(self, step: int, x: torch.Tensor, computed, *, edm_sigma: float | None = None, record: bool = True):
        """The full model output for ``step``: ``computed`` (the planned rows' outputs in order, or the full batch;
        ``None`` when no row computes) plus synthesised outputs for the rest. ``record``: count the rows of
        ``computed`` as network rows (an adapter that counts at its network call passes ``False``)."""
        step = _check_step(step)
        if self._planned is None or self._planned[0] != step:
            raise ValueError(f"complete({step}) without rows_to_compute({step}) first")
        compute = self._planned[1]
        self._planned = None
        if record and computed is not None:
            self.record_rows(step, np.ones(compute.size, bool) if computed.shape[0] == compute.size else compute)
        if self.engine is None:
            if computed is None or computed.shape[0] != x.shape[0]:
                raise ValueError(
                    f"step {step} computes every row (the run is too short to skip): pass the outputs "
                    f"of all {x.shape[0]} rows"
                )
            return computed
        return self.engine.complete(step, self.canonical(x, step, edm_sigma), computed)

    def complete_stage(self, step: int, edm_sigma: float, x: torch.Tensor, computed):
        """A two-stage solver's second evaluation of ``step`` at the EDM noise level ``edm_sigma``: ``computed`` for
        the rows planned at ``step`` (or the full batch, or ``None``), synthesised outputs for the others."""
        if self.engine is None:
            return computed
        return self.engine.complete_stage(step, edm_sigma, self.canonical(x, edm_sigma=edm_sigma), computed)

    def rows_to_compute(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """Start ``step`` and return the indices of the rows that must run the network (maybe none)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        return torch.as_tensor(np.flatnonzero(self.plan(step, x)), dtype=torch.long, device=x.device)

    def step(self, step: int, x: torch.Tensor, network) -> torch.Tensor:
        """``rows_to_compute`` + ``network(x[rows], rows)`` + ``complete`` in one call."""
        rows = self.rows_to_compute(step, x)
        computed = network(x.index_select(0, rows), rows) if rows.numel() else None
        return self.complete(step, x, computed)

    def finish(self, x_final: torch.Tensor) -> Trace | None:
        """Optional: close the last step (records its criterion in the trace)."""
        self._next = None
        if self.engine is None:
            return None
        return self.engine.finish(self.canonical(x_final, self.grid.num_steps))

    def note_lockstep(self) -> None:
        """Add the automatic lockstep's reason to the trace (once per run, at its first step)."""
        trace = self.trace
        if self.lockstep_note and trace is not None and (0, self.lockstep_note) not in trace.notes:
            trace.note(0, self.lockstep_note)
