"""Equal-evaluation comparisons and the benchmark's goals.

The best plain grid at a method's evaluation count ``m``: for every grid family, the per-image PSNRs of the
two plain runs that bracket ``m`` (floor and ceil of the step count) are interpolated linearly in NFE at
``m`` -- the expected PSNR of a plain sampler that spends exactly ``m`` evaluations per image on average
(running that fraction of the images with the larger step count). The family with the highest mean wins;
the method's paired difference to it is the mean of the per-image differences +- 2 standard errors.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["paired_difference", "equal_nfe_peer", "GOALS", "MAX_LOSS_DB", "LOSS_CAUSES", "goal_rows", "loss_cause"]

# steps -> (minimum evaluation ratio, minimum PSNR gain over the best plain grid at equal evaluations, dB)
GOALS = {50: (2.0, 3.0), 25: (1.8, 1.0), 15: (1.4, 0.0), 100: (3.0, 3.0)}
MAX_LOSS_DB = 0.3  # in no cell may a SADA variant lose more than this to the best plain grid at equal NFE
# why a variant is more than MAX_LOSS_DB behind the best plain grid at equal NFE (:func:`loss_cause`), in report order
LOSS_CAUSES = {
    "grid": "the cell's own full run is itself more than the allowed loss behind that grid, so no skip rule can pass it",
    "tie": "within two standard errors of the allowed loss",
    "skips": "behind by the skips",
}


def loss_cause(delta: float, delta_2se: float, full_minus_peer: float | None) -> str | None:
    """Why a variant ``delta`` dB from the best plain grid at equal evaluations (± ``delta_2se``) misses the
    allowed loss :data:`MAX_LOSS_DB` (``None``: it does not miss it). ``grid`` when the cell's full run -- every step
    computed -- is itself more than the allowed loss behind that grid (``full_minus_peer``, ``None`` where unknown):
    the host's grid, not the skipping, is what loses, and no rule that only skips steps of that grid can pass it;
    else ``tie`` when the shortfall is within two standard errors; else ``skips``."""
    for name, value in (("delta", delta), ("delta_2se", delta_2se)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isinf(value):
            raise ValueError(f"{name} must be a finite number or NaN, got {value!r}")
    if delta >= -MAX_LOSS_DB:
        return None
    if full_minus_peer is not None and full_minus_peer < -MAX_LOSS_DB:
        return "grid"
    if not math.isnan(delta_2se) and delta + delta_2se >= -MAX_LOSS_DB:
        return "tie"
    return "skips"


def paired_difference(a, b) -> tuple[float, float]:
    """Mean of ``a - b`` (paired per image) and two standard errors of that mean (NaN for one image)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two 1-D arrays of one non-zero length, got shapes {a.shape} and {b.shape}")
    d = a - b
    two_se = 2.0 * d.std(ddof=1) / math.sqrt(d.size) if d.size > 1 else float("nan")
    return float(d.mean()), float(two_se)


def equal_nfe_peer(nfe: float, method_psnr, plain: dict, nfe_of_steps) -> dict:
    """The best plain grid at ``nfe`` evaluations and the method's paired difference to it.

    Args:
        nfe: the method's evaluations per image.
        method_psnr: its per-image PSNR (against the ODE solution).
        plain: ``{(family, steps): per-image PSNR}`` of the plain runs.
        nfe_of_steps: evaluations of a plain run with a given step count.

    A family qualifies only with runs at the step counts just below and above ``nfe`` (floor and ceil: adjacent step
    counts, or one run at exactly ``nfe``); a family whose nearest runs lie further apart is left out, because
    PSNR is concave in the step count and a straight line between distant runs under-states the plain grid between
    them. Returns ``{}`` when none qualifies.
    """
    if not isinstance(nfe, (int, float, np.floating)) or not math.isfinite(nfe) or nfe <= 0:
        raise ValueError(f"nfe must be a positive number, got {nfe!r}")
    method_psnr = np.asarray(method_psnr, np.float64)
    candidates = {}
    for family in sorted({f for f, _ in plain}):
        steps = sorted(s for f, s in plain if f == family)
        below = [s for s in steps if nfe_of_steps(s) <= nfe + 1e-9]
        above = [s for s in steps if nfe_of_steps(s) >= nfe - 1e-9]
        if not below or not above:
            continue
        low, high = below[-1], above[0]
        if high - low > 1:  # not the floor and ceil of nfe: no run of this family close enough to compare with
            continue
        n_low, n_high = nfe_of_steps(low), nfe_of_steps(high)
        weight = 0.0 if high == low else (nfe - n_low) / (n_high - n_low)
        values = (1 - weight) * np.asarray(plain[(family, low)]) + weight * np.asarray(plain[(family, high)])
        candidates[family] = {
            "steps": sorted({low, high}),
            "weight": weight,
            "per_image": values,
            "psnr": float(values.mean()),
        }
    if not candidates:
        return {}
    family = max(candidates, key=lambda f: (candidates[f]["psnr"], f))
    best = candidates[family]
    delta, two_se = paired_difference(method_psnr, best["per_image"])
    steps = best["steps"]
    label = (
        f"{family}, {steps[0]} steps" if len(steps) == 1 else f"{family}, {steps[0]}-{steps[1]} steps at NFE {nfe:.1f}"
    )
    return {
        "family": family,
        "steps": steps,
        "weight": best["weight"],
        "name": label,
        "psnr": best["psnr"],
        "delta": delta,
        "delta_2se": two_se,
        "candidates": {f: round(c["psnr"], 4) for f, c in candidates.items()},
    }


def goal_rows(cells: list[dict], variants: tuple[str, ...]) -> list[dict]:
    """One row per (cell, SADA variant) with the goal of its step count and whether it is met.

    ``cells``: the report's cell dicts (``name``, ``steps``, ``baseline_nfe``, ``variants``: name ->
    ``{"NFE", "psnr_ode", "peer"}``, and optionally ``rows`` with the ``baseline`` -- the full run -- whose mean
    ``PSNR vs ODE`` sets ``full_psnr`` and lets :func:`loss_cause` tell the grid's loss from the skips').
    """
    if not variants or not all(isinstance(v, str) for v in variants):
        raise ValueError(f"variants must be a non-empty tuple of method names, got {variants!r}")
    rows = []
    for cell in cells:
        goal = GOALS.get(cell["steps"])
        full = next((r for r in cell.get("rows", ()) if r.get("method") == "baseline"), None)
        full_psnr = None if full is None else full["PSNR vs ODE"]
        for variant in variants:
            entry = cell["variants"].get(variant)
            if not entry or "error" in entry or not entry.get("peer"):
                continue
            peer = entry["peer"]
            ratio = cell["baseline_nfe"] / entry["NFE"]
            row = {
                "cell": cell["name"],
                "steps": cell["steps"],
                "variant": variant,
                "NFE": entry["NFE"],
                "ratio": ratio,
                "psnr_ode": entry["psnr_ode"],
                "peer": peer["name"],
                "peer_psnr": peer["psnr"],
                "delta": peer["delta"],
                "delta_2se": peer["delta_2se"],
                "no_loss": peer["delta"] >= -MAX_LOSS_DB,
                "full_psnr": full_psnr,
                "loss_cause": loss_cause(
                    peer["delta"], peer["delta_2se"], None if full_psnr is None else full_psnr - peer["psnr"]
                ),
            }
            if goal is not None:
                row.update(
                    {
                        "goal_ratio": goal[0],
                        "goal_delta": goal[1],
                        "met": bool(ratio >= goal[0] and peer["delta"] >= goal[1]),
                    }
                )
            rows.append(row)
    return rows
