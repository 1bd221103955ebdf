"""Re-integrating a skipped stretch once the network runs again (docs/theory.md, "Re-integrating the skipped stretch").

A skipped step's clean-sample estimate *extrapolates* the clean predictions computed before it. When the network
runs again at step ``n``, the skipped levels lie between computed ones: the quadratic through the clean predictions
of the two computed steps before the stretch and the new one *interpolates* them, with an error far smaller than the
extrapolation's (its node polynomial is bounded by the nodes around the point, see
:func:`sada.reference.interpolation_error_bound`). A host that can step its solver again (arithmetic only, no
network) re-integrates the stretch from the last computed step with these interpolated clean predictions and takes
step ``n`` from the re-integrated sample, the network's noise estimate at step ``n`` held (its clean prediction moved with
the sample: :mod:`sada.adapters._diffusers_replay`).

:class:`StretchNodes` keeps, per row, the clean predictions of the last three computed steps and which step each row
last computed; it says which rows re-integrate at a step and returns the interpolated clean predictions. The host
keeps its own solver state (:mod:`sada.adapters._diffusers_replay` for diffusers schedulers).
"""

from __future__ import annotations

import numpy as np
import torch

from sada import kernels
from sada.config import Mode
from sada.config.dial import DIAL_BY_ORDER
from sada.torch_backend.rings import TensorRing
from sada.trajectory import StepGrid

__all__ = [
    "StretchNodes",
    "stretch_abscissae",
    "replay_applies",
    "protected_tail",
    "NODES",
    "FIRST_ORDER_FROM",
    "FIRST_ORDER_FINE_GRID",
    "TAIL_FROM",
]

NODES = 3  # the interpolant's nodes: two computed steps before the stretch and the one after (a cubic, 4, measured
# worse on UniPC at 50 steps)


FIRST_ORDER_FROM = 0.01  # a first-order solver re-integrates from this tolerance on (chosen on the tuning seeds)
FIRST_ORDER_FINE_GRID = DIAL_BY_ORDER["higher"]["fine_log_snr_step"]  # ... and at any tolerance on a grid this fine
# from this tolerance on, a re-integrating run on a VP / VE grid protects only its last step (protected_tail)
TAIL_FROM = FIRST_ORDER_FROM


def replay_applies(config, solver, engine_is_sada: bool, grid=None, cannot: str | None = None) -> tuple[bool, str]:
    """Whether a run re-integrates its skipped stretches, and the trace note saying so (or why not).

    ``solver``: the host's solver, with ``name``, ``order`` and ``two_stage`` (evaluates the model twice per step);
    ``cannot``: why the host cannot step this solver again (``None``: it can). ``Numerics.reintegrate``: ``None``
    (default) re-integrates on a solver that evaluates the model once per step if it is of order >= 2 (DPM-Solver++
    2M/3M, UniPC, DEIS) or, first order (Euler, flow Euler, DDIM), when the run's dial tolerance is at least
    :data:`FIRST_ORDER_FROM` or its grid is fine (median log-SNR step at most :data:`FIRST_ORDER_FINE_GRID`, about 75
    Karras steps and more: long runs of skips) (``grid``: the run's, for the tolerance it resolves to and its
    median log-SNR step); ``True`` on any solver the host
    can step again with one evaluation per step; ``False`` never. Paper mode never re-integrates (its outputs are the
    official ones)."""
    wanted = config.numerics.reintegrate
    if wanted is False or not engine_is_sada or config.never_skips or config.numerics.mode == Mode.PAPER:
        return False, ""
    reason = f"{solver.name} evaluates the model twice per step" if solver.two_stage else cannot
    if reason:
        return False, (f"no re-integration of skipped steps: {reason}" if wanted else "")
    step = None if grid is None else grid.median_log_snr_step
    tolerance = getattr(config.for_solver(solver.order, step).schedule, "tolerance", None)
    if wanted is None and solver.order < 2:
        fine = step is not None and step <= FIRST_ORDER_FINE_GRID
        if tolerance is None or (tolerance < FIRST_ORDER_FROM and not fine):
            return False, ""
    tail = "" if grid is None or protected_tail(grid, tolerance) > 1 else "; the second-to-last step may skip"
    return True, (
        "skipped stretches are re-integrated once the network runs again (the interpolated clean predictions, "
        f"{solver.name} stepped again without the network){tail}"
    )


def protected_tail(grid: StepGrid, tolerance: float | None) -> int:
    """The last steps that always run the network on a run that re-integrates its skipped stretches: the last one on
    a VP / VE grid from the dial's ``tolerance`` :data:`TAIL_FROM` on, else the last two (a rectified-flow grid, a
    tighter tolerance, or none: a step schedule).

    Without re-integration the last two steps always compute (a skipped second-to-last step stays an extrapolation:
    up to 11 dB lost on the shipped flow model at 25 steps). Re-integrated, a skipped second-to-last step is replaced
    by the interpolant through the last step's clean prediction, but the last step's network evaluation still sees
    the sample the skip moved, and what the held noise estimate does not undo stays in the final sample. On the
    shipped U-Net (DPM-Solver++ 2M / 3M, UniPC, k-diffusion's 2M, Karras and exponential sigmas, 15-100 steps, the
    dial's loose half) letting it skip saved one evaluation for 0-1.5 dB, ahead of the same solver's plain grid at the
    saved count (UniPC at 50 steps and 0.1, held-out seeds: 14 evaluations at 51.60 dB -> 13 at 51.70); at the tight
    end (0.0005, DPM-Solver++ 2M, 50 Karras steps) it cost 1.4 dB for 0.7 evaluations. On the shipped flow model at
    shift 3 it lost 0.2-1.6 dB at 50 steps and up to 6 dB at 15, so a flow grid keeps two (docs/benchmarks.md, "The
    protected tail")."""
    if not isinstance(grid, StepGrid):
        raise TypeError(f"grid must be a StepGrid, got {type(grid).__name__}")
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))):
        raise TypeError(f"tolerance must be a number or None, got {tolerance!r}")
    loose = tolerance is not None and tolerance >= TAIL_FROM
    return 1 if loose and grid.family != "flow" else 2


def stretch_abscissae(grid: StepGrid) -> np.ndarray:
    """The coordinate the interpolant is written in, per step: the noise level the host solver steps in -- the EDM
    ``sigma`` on a VP / VE grid (DPM-Solver++, UniPC), the flow time ``t`` on a rectified-flow grid."""
    if not isinstance(grid, StepGrid):
        raise TypeError(f"grid must be a StepGrid, got {type(grid).__name__}")
    return np.asarray(grid.sigma if grid.family == "flow" else grid.edm_sigma, dtype=np.float64)


class StretchNodes:
    """Per-row clean predictions of the last :data:`NODES` computed steps and the step each row last computed.

    Use per step ``n`` of a run, after the step's outputs are complete and before the solver steps::

        starts = nodes.push(n, x0, computed)        # {c: rows that re-integrate from their last computed step c}
        for c, rows in starts.items():
            for j in range(c + 1, n):               # the skipped levels
                x0_j = nodes.interpolate(j)         # valid on ``rows``
    """

    def __init__(self, grid: StepGrid):
        self.abscissae = stretch_abscissae(grid)
        self.ring = TensorRing(NODES)
        self.last_computed = np.zeros(0, dtype=np.int64)  # per row: the last computed step (-1: none yet)

    def reset(self) -> None:
        """Forget every row (a new run)."""
        self.ring = TensorRing(NODES)
        self.last_computed = np.zeros(0, dtype=np.int64)

    def push(self, step: int, x0: torch.Tensor, computed: np.ndarray) -> dict[int, np.ndarray]:
        """Record the clean predictions ``x0`` of the rows that ``computed`` at ``step``; return, by the step ``c``
        they last computed before, the rows that skipped ``c + 1 .. step - 1`` and hold three nodes."""
        computed = np.asarray(computed, dtype=bool)
        if not isinstance(x0, torch.Tensor) or x0.ndim < 1 or computed.shape != (x0.shape[0],):
            raise ValueError(
                f"computed must be a bool mask of the {getattr(x0, 'shape', ['?'])[0]} rows of x0, got shape "
                f"{computed.shape}"
            )
        if not 0 <= step < self.abscissae.size:
            raise ValueError(f"step {step} is outside the grid's {self.abscissae.size} levels")
        if self.last_computed.size != computed.size:
            self.last_computed = np.full(computed.size, -1, dtype=np.int64)
        before = self.last_computed.copy()
        self.ring.push(computed, float(self.abscissae[step]), x0)
        self.last_computed[computed] = step
        ready = computed & (before >= 0) & (before < step - 1) & self.ring.full(computed.size)
        return {int(c): ready & (before == c) for c in np.unique(before[ready])}

    def computed_x0(self) -> torch.Tensor:
        """Per row, the clean prediction of its computed step before the newest (the start of a stretch)."""
        return self.ring.values[1]

    def interpolate(self, step: int) -> torch.Tensor:
        """Per row, the quadratic through its three newest nodes at ``step``'s level (zero on rows holding fewer)."""
        weights = self.ring.row_weights(kernels.lagrange_weights, float(self.abscissae[step]))
        return self.ring.combine(weights)

    def oldest_start(self) -> int:
        """The earliest step some row last computed (the solver states before it are no longer needed)."""
        known = self.last_computed[self.last_computed >= 0]
        return int(known.min()) if known.size else 0

    def nbytes(self) -> int:
        return self.ring.nbytes()
