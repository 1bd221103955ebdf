"""The methods the benchmark compares in a cell.

Groups: ``main`` (baseline = the full run, *SADA* = the adapter's default configuration (schedule-free error
control), *SADA paper* = the authors' preset, *SADA step-indexed* = the previous release's best configuration:
the authors' step schedule with an error veto; the plain-grid peers are added by the run once SADA's evaluation
counts are known), ``control`` (SADA with skipping disabled: must be bit-identical), ``tolerance`` (the one knob
of schedule-free SADA swept: its Pareto curve), and for diffusers cells the older studies: ``peer``
(AdaptiveDiffusion, diffusers' cache hooks, token pruning), ``ablation`` (where SADA's fidelity comes from) and
``pareto`` (knobs swept), all relative to *SADA corrected* -- the authors' schedule with this project's corrected
numerics and per-sample decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sada.config import ErrorControl, SADAConfig, early_multistep, error_controlled_preset, preset, step_error_tolerance

__all__ = ["Method", "methods_for", "GROUPS", "DEFAULT_GROUPS", "SADA_VARIANTS", "ADAPTER_DEFAULT"]

GROUPS = ("main", "control", "tolerance", "peer", "ablation", "pareto")
DEFAULT_GROUPS = ("main", "control", "tolerance")
SADA_VARIANTS = ("SADA", "SADA paper", "SADA step-indexed")
TOLERANCES = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)  # the accuracy dial swept (the tolerance group)
ADAPTER_DEFAULT = "adapter default"  # config sentinel: enable(pipe) / wrap(model, sigmas) without a config


@dataclass
class Method:
    """One run of a cell. ``kind``: ``plain`` (no SADA, on ``grid``), ``sada`` (``config`` a SADAConfig or
    :data:`ADAPTER_DEFAULT`), ``adaptive`` or ``diffusers-hook`` (diffusers cells only)."""

    name: str
    group: str
    kind: str
    config: object = None
    grid: object = None
    params: dict = field(default_factory=dict)
    curve: str | None = None  # Pareto curve this point belongs to
    timed: bool = False
    skipped: str | None = None  # why this method does not run in this cell


def _paper_schedule(family: str, steps: int) -> SADAConfig:
    """The authors' schedule at this step count: their preset at 50/25/15, else the 50-step one rescaled."""
    if steps in (50, 25, 15):
        return preset(family, steps)
    return preset(family, 50).replace(num_steps=None).fit_steps(steps)


def main_methods(cell, full_grid) -> list[Method]:
    """Baseline and the three SADA variants of ``cell`` (a variant without a preset at this step count is
    returned with ``skipped`` set)."""
    steps, family = cell.steps, cell.family
    out = [
        Method("baseline", "main", "plain", grid=full_grid, timed=True),
        Method("SADA", "main", "sada", ADAPTER_DEFAULT, timed=True, curve="SADA"),
    ]
    if steps in (50, 25, 15):  # token pruning off: the step-skipping method (pruning is a peer-group row)
        out.append(
            Method(
                "SADA paper",
                "main",
                "sada",
                preset(family, steps).replace(max_downsample=0, prune_blocks=()),
                timed=True,
                curve="SADA paper",
            )
        )
    else:
        out.append(Method("SADA paper", "main", "sada", skipped=f"no authors' preset at {steps} steps"))
    try:
        controlled = error_controlled_preset(family, steps)
        out.append(Method("SADA step-indexed", "main", "sada", controlled, timed=True, curve="SADA step-indexed"))
    except ValueError as exc:
        out.append(Method("SADA step-indexed", "main", "sada", skipped=str(exc).split(";")[0]))
    return out


def dial_method(tolerance: float) -> str:
    """The method name of the accuracy dial's point at ``tolerance`` (a row of the ``tolerance`` group)."""
    return f"SADA, tolerance {tolerance:g}"


def tolerance_methods() -> list[Method]:
    """The accuracy dial at every tolerance of :data:`TOLERANCES` (the adapter default's other settings)."""
    return [
        Method(
            dial_method(t),
            "tolerance",
            "sada",
            SADAConfig(schedule=ErrorControl(tolerance=t)),
            curve="SADA dial",
        )
        for t in TOLERANCES
    ]


def _legacy_methods(cell) -> list[Method]:
    """The earlier benchmark's peer, ablation and Pareto rows (diffusers cells)."""
    steps = cell.steps
    paper = _paper_schedule(cell.family, steps).replace(max_downsample=0, prune_blocks=())
    sada = paper.replace(mode="corrected", reduce="sample", name="sada-corrected")
    prune = dict(prune_blocks=(0, 1, 2, 3)) if cell.model == "mmdit" else dict(max_downsample=1)
    early = early_multistep(sada, steps)
    tolerance = step_error_tolerance(steps)
    lag = sada.schedule.lagrange_step
    out = [
        Method("SADA corrected", "peer", "sada", sada, curve="SADA corrected"),
        Method("SADA corrected + token pruning", "peer", "sada", sada.replace(**prune)),
        Method(
            "AdaptiveDiffusion",
            "peer",
            "adaptive",
            params=dict(threshold=0.01, max_skip_steps=4),
            curve="AdaptiveDiffusion",
        ),
    ]
    if cell.model == "mmdit":
        out.append(
            Method(
                "diffusers TaylorSeer",
                "peer",
                "diffusers-hook",
                curve="TaylorSeer",
                params=dict(hook="taylorseer", interval=3, warmup=steps // 5),
            )
        )
        out.append(
            Method(
                "diffusers FirstBlockCache",
                "peer",
                "diffusers-hook",
                params=dict(hook="first_block_cache", threshold=0.05),
            )
        )
    out += [
        Method("ablation: corrected criterion", "ablation", "sada", sada.replace(criterion="corrected")),
        Method("ablation: paper estimate (reduce per sample)", "ablation", "sada", paper.replace(reduce="sample")),
        Method("ablation: no AM skips", "ablation", "sada", sada.replace(acc_range=(lag, sada.schedule.acc_end))),
        Method("ablation: no multistep tail", "ablation", "sada", sada.replace(lagrange_term=0)),
        Method("ablation: multistep on step index", "ablation", "sada", sada.replace(abscissa="index")),
        Method("ablation: multistep on log-SNR", "ablation", "sada", sada.replace(abscissa="lambda")),
        Method(
            f"ablation: error-controlled schedule (multistep from {early.schedule.lagrange_step}), no error control",
            "ablation",
            "sada",
            early,
            curve="SADA corrected",
        ),
    ]
    if cell.sampler == "euler":
        out.append(
            Method(
                "ablation: Euler multistep on x0/alpha (official)",
                "ablation",
                "sada",
                sada.replace(lagrange_target="x0_over_alpha"),
            )
        )
    for interval in (2, 3):
        if lag % interval == 0:
            out.append(
                Method(
                    f"SADA corrected, multistep every {interval}",
                    "pareto",
                    "sada",
                    sada.replace(lagrange_int=interval),
                    curve="SADA corrected",
                )
            )
    for start in range(early.schedule.lagrange_step + sada.schedule.lagrange_int, lag, sada.schedule.lagrange_int):
        out.append(
            Method(
                f"SADA corrected, multistep from step {start}",
                "pareto",
                "sada",
                sada.replace(lagrange_step=start),
                curve="SADA corrected",
            )
        )
    for factor in (0.3, 3.0):
        out.append(
            Method(
                f"SADA step-indexed, error tolerance {tolerance * factor:.3g}",
                "pareto",
                "sada",
                early.replace(step_error_rms=tolerance * factor),
                curve="SADA step-indexed",
            )
        )
    for threshold in (0.005, 0.02, 0.05):
        out.append(
            Method(
                f"AdaptiveDiffusion thr {threshold}",
                "pareto",
                "adaptive",
                curve="AdaptiveDiffusion",
                params=dict(threshold=threshold, max_skip_steps=4),
            )
        )
    return out


def methods_for(cell, full_grid, groups=DEFAULT_GROUPS, names=None) -> list[Method]:
    """The methods of ``cell`` in run order (baseline first), restricted to ``groups`` and, if given, to
    the method ``names`` (the baseline always runs)."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"groups must be among {GROUPS}, got {sorted(unknown)}")
    out = main_methods(cell, full_grid)
    out += tolerance_methods()
    # never skips; fitted to the step count because the k-diffusion wrapper takes configs as given
    out.append(Method("SADA, skipping disabled", "control", "sada", SADAConfig(max_interval=0)))
    if cell.backend == "diffusers":
        out += _legacy_methods(cell)
    return [m for m in out if m.group in groups and (names is None or m.name in names or m.name == "baseline")]
