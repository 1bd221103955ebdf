"""Plain sampler grids: the equal-evaluation peers of SADA.

For a cell and a step count ``k`` the benchmark runs the cell's sampler without SADA on several grid
families and keeps the best at SADA's evaluation count:

* U-Net (diffusers): ``trailing`` (the scheduler's configured spacing), ``karras`` (``use_karras_sigmas``),
  for Euler and Heun ``karras linspace`` (Karras sigmas with ``timestep_spacing="linspace"``: these schedulers take
  the Karras grid's smallest level from the spaced timesteps, so on the configured spacing it ends at 4.6 times the
  noise table's smallest level and jumps to the clean sample from there -- the host fix the early-end trace note
  names; DPM-Solver and UniPC take it from the whole table, so their Karras grid does not depend on the spacing)
  and ``same ends`` (custom integer timesteps evenly spaced between the full run's first and last nonzero
  timestep: with trailing spacing the last nonzero timestep of a k-step run moves with k -- 19 at 50
  steps, 42 at 23 -- and the final jump to zero dominates the error);
* MMDiT (flow matching): ``shift 1`` and ``shift 3`` (the scheduler's shifted grid) and ``same ends``
  (custom sigmas evenly spaced in t between the full run's first and last nonzero sigma);
* U-Net (k-diffusion): ``karras``, ``exponential`` and ``uniform t`` (k-diffusion's
  ``DiscreteSchedule.get_sigmas``), all spanning the training sigma range.

The full run of a cell (its baseline) is the cell's own family at the cell's step count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from benchmarks.cells import Cell
from benchmarks.models import FLOW_MULTISTEP_SAMPLERS, shift_override

__all__ = ["PlainGrid", "grid_families", "default_family", "plain_grid", "resolve_grid", "steps_around", "same_grid"]

_FAMILIES = {
    "unet": ("trailing", "karras", "same ends"),
    "mmdit": ("shift 1", "shift 3", "same ends"),
    "k-diffusion": ("karras", "exponential", "uniform t"),
}
_SPACING_FAMILY = {
    "trailing": "trailing",
    "karras": "karras",
    "karras-linspace": "karras linspace",
    "shift1": "shift 1",
    "shift3": "shift 3",
    "exponential": "exponential",
}
_OVERRIDES = {
    "trailing": (),
    "karras": (("use_karras_sigmas", True),),
    "karras linspace": (("use_karras_sigmas", True), ("timestep_spacing", "linspace")),
    "shift 1": (("shift", 1.0),),
    "shift 3": (("shift", 3.0),),
}


@dataclass(frozen=True)
class PlainGrid:
    """One plain run: ``family`` at ``steps`` steps; ``overrides`` of the diffusers scheduler config and a
    custom grid (diffusers ``timesteps`` / flow ``sigmas``; k-diffusion: the whole sigma schedule, final 0
    included)."""

    family: str
    steps: int
    overrides: tuple = ()
    timesteps: tuple | None = None
    sigmas: tuple | None = None

    @property
    def name(self) -> str:
        return f"{self.family}, {self.steps} steps"


def _key(cell: Cell) -> str:
    return "k-diffusion" if cell.backend == "k-diffusion" else cell.model


# diffusers schedulers whose ``set_timesteps`` takes no custom grid of the kind the ``same ends`` family builds (UniPC
# takes ``sigmas`` only, DPM-Solver ``timesteps`` only; on the MMDiT the family is a custom flow ``sigmas`` grid that
# only FlowMatch Euler applies unshifted): no ``same ends`` family
_NO_CUSTOM_TIMESTEPS = frozenset({"unipc"}) | FLOW_MULTISTEP_SAMPLERS


# diffusers samplers whose Karras grid ends at the spaced timesteps' smallest level, not the noise table's: on them the
# ``karras linspace`` family is a different, better grid (on the others it would repeat ``karras``)
_SPACING_DEPENDENT_KARRAS = frozenset({"euler", "heun"})


def grid_families(cell: Cell) -> tuple[str, ...]:
    """The plain grid families compared in ``cell``."""
    families = _FAMILIES[_key(cell)]
    if cell.backend == "diffusers" and cell.model == "unet" and cell.sampler in _SPACING_DEPENDENT_KARRAS:
        after = families.index("karras") + 1  # beside the Karras grid it fixes
        families = (*families[:after], "karras linspace", *families[after:])
    if cell.backend == "diffusers" and cell.sampler in _NO_CUSTOM_TIMESTEPS:
        return tuple(f for f in families if f != "same ends")
    return families


def default_family(cell: Cell) -> str:
    """The family of the cell's own full run."""
    return _SPACING_FAMILY[cell.spacing]


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ValueError(f"steps must be an int >= 2, got {steps!r}")
    return int(steps)


def plain_grid(cell: Cell, family: str, steps: int, model, denoiser=None) -> PlainGrid:
    """The plain grid of ``family`` with ``steps`` steps for ``cell`` (``model``: the cell's BenchModel;
    ``denoiser``: the k-diffusion denoiser, k-diffusion cells only)."""
    steps = _check_steps(steps)
    if family not in grid_families(cell):
        raise ValueError(f"family must be one of {grid_families(cell)} for {cell.name}, got {family!r}")
    if cell.backend == "k-diffusion":
        from benchmarks.kdiff import kdiffusion_sigmas

        if denoiser is None:
            raise ValueError("k-diffusion grids need the denoiser (its training sigma range)")
        return PlainGrid(family, steps, sigmas=tuple(float(s) for s in kdiffusion_sigmas(denoiser, family, steps)))
    if family != "same ends":
        overrides = _OVERRIDES[family]
        if cell.model == "mmdit":  # the shift's name in the sampler's config
            overrides = tuple(shift_override(cell.sampler, value).popitem() for _, value in overrides)
        return PlainGrid(family, steps, overrides=overrides)
    full = plain_grid(cell, default_family(cell), cell.steps, model, denoiser)
    first, last = grid_span(cell, full, model)
    if cell.model == "mmdit":
        return PlainGrid(
            family,
            steps,
            overrides=_OVERRIDES["shift 1"],
            sigmas=tuple(float(s) for s in np.linspace(first, last, steps)),
        )
    times = np.round(np.linspace(first, last, steps)).astype(int)
    if np.any(np.diff(times) >= 0):
        raise ValueError(f"{steps} integer timesteps do not fit between {first} and {last}")
    return PlainGrid(family, steps, overrides=(), timesteps=tuple(int(t) for t in times))


def resolve_grid(cell: Cell, grid: PlainGrid, model) -> tuple[np.ndarray, np.ndarray]:
    """What the sampler will actually run: ``(timesteps, sigmas)`` as float64 arrays (k-diffusion: the
    sigma schedule twice)."""
    if not isinstance(grid, PlainGrid):
        raise TypeError(f"grid must be a PlainGrid, got {type(grid).__name__}")
    if cell.backend == "k-diffusion":
        sigmas = np.asarray(grid.sigmas, np.float64)
        return sigmas, sigmas
    scheduler = model.scheduler(cell.sampler, **dict(grid.overrides))
    if grid.timesteps is not None:
        scheduler.set_timesteps(timesteps=list(grid.timesteps))
    elif grid.sigmas is not None:
        scheduler.set_timesteps(sigmas=list(grid.sigmas))
    else:
        scheduler.set_timesteps(grid.steps)
    return scheduler.timesteps.double().cpu().numpy(), scheduler.sigmas.double().cpu().numpy()


def grid_span(cell: Cell, grid: PlainGrid, model) -> tuple[float, float]:
    """First and last nonzero time of a grid: timesteps (U-Net, diffusers), sigma = t (flow), EDM sigma
    (k-diffusion)."""
    timesteps, sigmas = resolve_grid(cell, grid, model)
    if cell.backend == "k-diffusion" or cell.model == "mmdit":
        nonzero = sigmas[sigmas > 0]
        return float(nonzero[0]), float(nonzero[-1])
    return float(timesteps[0]), float(timesteps[-1])


def same_grid(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    """Whether two resolved grids are the same (to float32 round-off)."""
    return all(x.shape == y.shape and np.allclose(x, y, rtol=1e-6, atol=1e-9) for x, y in zip(a, b))


def steps_around(cell: Cell, nfe: float) -> list[int]:
    """Step counts of the plain runs that bracket ``nfe`` evaluations: floor and ceil of the fractional step
    count (one value when it is whole)."""
    if not isinstance(nfe, (int, float, np.floating)) or not math.isfinite(nfe) or nfe <= 0:
        raise ValueError(f"nfe must be a positive number, got {nfe!r}")
    steps = cell.steps_of_nfe(float(nfe))
    low, high = max(2, math.floor(steps + 1e-9)), max(2, math.ceil(steps - 1e-9))
    return sorted({low, high})
