"""The benchmark's matrix of cells: (host library, model, sampler, spacing, steps), and its seed sets.

A cell is named ``backend/model/sampler/spacing/steps``, e.g. ``diffusers/unet/dpmpp_2m/trailing/50``,
``diffusers/mmdit/flow_euler/shift3/25``, ``k-diffusion/unet/lms/karras/15``; ``--cells`` selects cells by
shell-style patterns over these names (``'*/unet/*/karras/50'``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

__all__ = [
    "Cell",
    "VP_START_SAMPLERS",
    "FULL_MATRIX",
    "DEFAULT_CELLS",
    "select_cells",
    "seed_list",
    "SEED_SETS",
    "STEP_COUNTS",
]

STEP_COUNTS = (15, 25, 50, 100)
# seed sets: tuning seeds are the ones defaults and presets may be tuned on; held-out seeds are for reporting
SEED_SETS = {"heldout": 1000, "tuning": 0}

# backend -> model -> sampler -> spacings
_MATRIX = {
    "diffusers": {
        "unet": {
            "dpmpp_2m": ("trailing", "karras"),
            # karras-linspace: Karras sigmas with timestep_spacing="linspace", the host fix these two schedulers need
            # (on the configured spacing their Karras grid ends 4.6-11.7x above the noise table's smallest level)
            "euler": ("trailing", "karras", "karras-linspace"),
            "heun": ("trailing", "karras", "karras-linspace"),
            # the third-order-accurate hosts on the spacing their users pick (trailing is 11-12 dB behind Karras for
            # DPM-Solver++ 2M at equal evaluations, a gap of the grid, not of SADA)
            "unipc": ("karras",),
            "dpmpp_3m": ("karras",),
        },
        # flow Euler is what SD3/Flux pipelines ship; DPM-Solver++ 2M and UniPC with flow sigmas are the
        # higher-order solvers of the same pipeline
        "mmdit": {
            "flow_euler": ("shift1", "shift3"),
            "flow_dpmpp_2m": ("shift1", "shift3"),
            "flow_unipc": ("shift1", "shift3"),
        },
    },
    "k-diffusion": {
        "unet": {
            "euler": ("karras", "exponential"),
            "heun": ("karras", "exponential"),
            "dpmpp_2m": ("karras", "exponential"),
            "lms": ("karras", "exponential"),
        }
    },
}
TWO_STAGE_SAMPLERS = {"heun"}
# diffusers samplers that start from the VP state ``x_T = noise`` (the others from ``sigma_max * noise``)
VP_START_SAMPLERS = frozenset({"dpmpp_2m", "dpmpp_3m", "unipc", "ddim"})


@dataclass(frozen=True)
class Cell:
    """One configuration of the matrix; ``steps`` is the full run's step count."""

    backend: str
    model: str
    sampler: str
    spacing: str
    steps: int

    def __post_init__(self):
        samplers = _MATRIX.get(self.backend, {}).get(self.model)
        if samplers is None:
            raise ValueError(f"no cells for backend={self.backend!r}, model={self.model!r}; backends {sorted(_MATRIX)}")
        if self.spacing not in samplers.get(self.sampler, ()):
            raise ValueError(
                f"no cell {self.backend}/{self.model}/{self.sampler}/{self.spacing}; samplers and spacings: {samplers}"
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 4:
            raise ValueError(f"steps must be an int >= 4, got {self.steps!r}")

    @property
    def name(self) -> str:
        return f"{self.backend}/{self.model}/{self.sampler}/{self.spacing}/{self.steps}"

    @property
    def slug(self) -> str:
        return self.name.replace("/", "-")

    @property
    def family(self) -> str:
        """The authors' preset family of the model (``sd2`` for the U-Net, ``flux`` for the MMDiT)."""
        return "flux" if self.model == "mmdit" else "sd2"

    @property
    def evals_per_step(self) -> int:
        return 2 if self.sampler in TWO_STAGE_SAMPLERS else 1

    def nfe_of_steps(self, steps: int) -> int:
        """Network evaluations of a plain ``steps``-step run (two-stage samplers skip the corrector of the
        last step, to sigma = 0)."""
        return self.evals_per_step * steps - (self.evals_per_step - 1)

    def steps_of_nfe(self, nfe: float) -> float:
        """The (fractional) step count of a plain run with ``nfe`` evaluations."""
        return (nfe + self.evals_per_step - 1) / self.evals_per_step

    @property
    def reference_start(self) -> str:
        """The start convention of the cell's samplers (see :mod:`benchmarks.reference`)."""
        if self.model == "mmdit":
            return "flow"
        return "vp" if (self.backend == "diffusers" and self.sampler in VP_START_SAMPLERS) else "edm"

    @classmethod
    def parse(cls, name: str) -> Cell:
        parts = name.split("/")
        if len(parts) != 5 or not parts[4].isdigit():
            raise ValueError(f"a cell name is backend/model/sampler/spacing/steps, got {name!r}")
        return cls(*parts[:4], int(parts[4]))


FULL_MATRIX = tuple(
    Cell(backend, model, sampler, spacing, steps)
    for backend, models in _MATRIX.items()
    for model, samplers in models.items()
    for sampler, spacings in samplers.items()
    for spacing in spacings
    for steps in STEP_COUNTS
)
# the main job's subset: the shipped models' recommended samplers at the two most used step counts; the U-Net on its
# shipped (trailing) spacing and on the Karras sigmas most users pick
DEFAULT_CELLS = tuple(
    Cell.parse(n)
    for n in (
        "diffusers/unet/dpmpp_2m/trailing/50",
        "diffusers/unet/dpmpp_2m/karras/50",
        "diffusers/mmdit/flow_euler/shift1/50",
        "diffusers/mmdit/flow_euler/shift1/25",
    )
)


def select_cells(patterns=None, full: bool = False) -> list[Cell]:
    """Cells of the full matrix matching any of ``patterns`` (shell-style), or the default subset
    (``full=False``) / the whole matrix (``full=True``) when no pattern is given."""
    if not patterns:
        return list(FULL_MATRIX if full else DEFAULT_CELLS)
    chosen = []
    for pattern in patterns:
        matches = [c for c in FULL_MATRIX if fnmatch.fnmatchcase(c.name, pattern)]
        if not matches:
            try:  # a cell outside the standard step counts, named exactly
                matches = [Cell.parse(pattern)]
            except ValueError:
                raise ValueError(f"no cell matches {pattern!r}; names look like {FULL_MATRIX[0].name}") from None
        chosen += [c for c in matches if c not in chosen]
    return chosen


def seed_list(seed_set: str, count: int) -> list[int]:
    """``count`` seeds of ``seed_set`` (``heldout``: 1000, 1001, ...; ``tuning``: 0, 1, ...)."""
    if seed_set not in SEED_SETS:
        raise ValueError(f"seed_set must be one of {sorted(SEED_SETS)}, got {seed_set!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    if seed_set == "tuning" and count > SEED_SETS["heldout"]:
        raise ValueError(f"the tuning set has {SEED_SETS['heldout']} seeds (0..999), asked for {count}")
    return list(range(SEED_SETS[seed_set], SEED_SETS[seed_set] + count))
