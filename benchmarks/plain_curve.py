"""The plain grid at every step count, and SADA against its trend: one diffusers or k-diffusion cell of a shipped model.

Above about 60 dB from the ODE solution a plain grid's fidelity is not monotone in its step count: on the shipped
U-Net (Karras sigmas) UniPC at 44 steps ends 59.6 dB from the ODE solution and at 46 steps 67.4 dB; 50 / 51 steps
give 67.4 / 62.5 dB. The same seeds, a reference converged to about 99 dB, continuous timesteps instead of diffusers'
rounded ones: the scatter stays (docs/benchmarks.md, "The plain grid's own scatter"). A comparison with the two
neighbouring step counts (what :mod:`benchmarks.dial_sweep` and the matrix use) then inherits up to 3 dB of
one grid's luck. This command runs the plain grid at every step count of a range and reports each SADA run against

* the two neighbouring plain grids (linear in evaluations, the matrix's yardstick);
* the plain grids' trend: a least-squares line in log(evaluations) over the plain grids within a factor
  ``span`` of SADA's evaluation count, with the RMS scatter of those grids about it (a difference smaller than
  the scatter is a tie);
* the best plain grid at or below SADA's evaluation count (what a user who knew the lucky step count would pick);

and, beside them, SADA's PSNR against its own full run (the error its skips add, whatever the host's own error).

    python -m benchmarks.plain_curve unet unipc --override use_karras_sigmas=true --plain 20 104 \\
        --steps 38 40 45 50 60 75 100 --first-seed 1016 --seeds 8

``--host k-diffusion`` runs the U-Net through k-diffusion's sampler of that name on ``--override family=karras`` or
``exponential`` (:class:`benchmarks.dial_sweep.KDiffusionCellRunner`). Tuning seeds (0..) by default; report on held-out seeds (``--first-seed 1000`` and up). About 12 minutes for the
range 20-104 on 2 cores (one thread).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from benchmarks.dial_sweep import CellRunner, add_cell_arguments, cell_of

__all__ = ["trend_at", "best_at_most", "compare", "save_plot", "main"]


def _curve(evaluations, psnrs) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(evaluations, dtype=np.float64)
    p = np.asarray(psnrs, dtype=np.float64)
    if e.ndim != 1 or e.shape != p.shape or e.size == 0:
        raise ValueError(f"evaluations and psnrs must be 1-D of one length, got shapes {e.shape} and {p.shape}")
    if not (np.all(np.isfinite(e)) and np.all(e > 0)):
        raise ValueError(f"evaluations must be finite and > 0, got {e.tolist()}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"psnrs must be finite, got {p.tolist()}")
    return e, p


def trend_at(evaluations, psnrs, nfe: float, span: float = 1.25) -> tuple[float, float, int]:
    """``(value, scatter, points)``: the least-squares line ``psnr = a + b log(evaluations)`` through the plain
    grids with ``nfe / span <= evaluations <= nfe * span``, evaluated at ``nfe``; ``scatter`` is the RMS residual
    of those grids about the line. Needs at least 3 grids in the window."""
    e, p = _curve(evaluations, psnrs)
    if not (math.isfinite(nfe) and nfe > 0):
        raise ValueError(f"nfe must be finite and > 0, got {nfe!r}")
    if not (math.isfinite(span) and span > 1):
        raise ValueError(f"span must be finite and > 1, got {span!r}")
    inside = (e >= nfe / span) & (e <= nfe * span)
    points = int(inside.sum())
    if points < 3:
        raise ValueError(
            f"the trend at {nfe:g} evaluations needs at least 3 plain grids within a factor {span:g}, got {points} "
            f"(plain grids at {sorted(e.tolist())}): widen the plain range"
        )
    design = np.stack([np.ones(points), np.log(e[inside])], axis=1)
    coef, *_ = np.linalg.lstsq(design, p[inside], rcond=None)
    scatter = float(np.sqrt(np.mean((p[inside] - design @ coef) ** 2)))
    return float(coef[0] + coef[1] * math.log(nfe)), scatter, points


def best_at_most(evaluations, psnrs, nfe: float) -> float:
    """The best plain grid that uses at most ``nfe`` evaluations."""
    e, p = _curve(evaluations, psnrs)
    inside = e <= nfe + 1e-9
    if not inside.any():
        raise ValueError(f"no plain grid uses at most {nfe:g} evaluations (fewest: {e.min():g})")
    return float(p[inside].max())


def compare(cell: CellRunner, steps: int, config, span: float = 1.25) -> dict:
    """One SADA run at ``steps`` against the cell's plain grids (already run)."""
    from benchmarks.metrics import psnr
    from sada.config import SADAConfig

    value, nfe = cell.sample(steps, SADAConfig(**config))
    images = cell.last_images
    full = cell.plain_at(steps)[0]
    evaluations = [e for _, e in cell.plain.values()]
    psnrs = [p for p, _ in cell.plain.values()]
    trend, scatter, points = trend_at(evaluations, psnrs, nfe, span)
    return dict(
        steps=steps,
        nfe=nfe,
        ratio=steps * cell.per_step / nfe,
        psnr=value,
        full=full,
        vs_full=psnr(images, cell.plain_images[steps]),
        neighbours=cell.neighbours_at(nfe),
        trend=trend,
        scatter=scatter,
        trend_points=points,
        best_at_most=best_at_most(evaluations, psnrs, nfe),
    )


def save_plot(plain: dict, rows: list[dict], title: str, path) -> None:
    """PSNR against evaluations: every plain grid (dots joined in step order), the trend at each SADA run, and
    the SADA runs (labelled with their step counts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(plain)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.plot(
        [plain[s][1] for s in order],
        [plain[s][0] for s in order],
        "-o",
        ms=2.5,
        lw=0.8,
        color="0.45",
        label="plain grid, every step count",
    )
    ax.errorbar(
        [r["nfe"] for r in rows],
        [r["trend"] for r in rows],
        yerr=[r["scatter"] for r in rows],
        fmt="_",
        ms=12,
        color="tab:blue",
        capsize=3,
        label="plain trend at SADA's evaluations (± scatter)",
    )
    ax.plot([r["nfe"] for r in rows], [r["psnr"] for r in rows], "D", color="tab:red", ms=5, label="SADA default")
    for r in rows:
        ax.annotate(
            f"{r['steps']}",
            (r["nfe"], r["psnr"]),
            textcoords="offset points",
            xytext=(3, -10),
            fontsize=7,
            color="tab:red",
        )
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per image (log)")
    ax.set_ylabel("PSNR against the ODE solution (dB)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plain_curve", description=__doc__.split("\n\n")[0])
    add_cell_arguments(parser)
    parser.add_argument("--plain", nargs=2, type=int, default=[20, 104], metavar=("FIRST", "LAST"))
    parser.add_argument("--steps", nargs="+", type=int, default=[50], help="SADA runs (step counts)")
    parser.add_argument("--config", default="{}", help="SADAConfig fields as JSON (default: the default)")
    parser.add_argument("--span", type=float, default=1.25, help="the trend's window: a factor in evaluations")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--out", default=None, help="write the plain curve and the rows as JSON")
    parser.add_argument("--plot", default=None, help="save the curve and the SADA runs as a PNG")
    args = parser.parse_args(argv)
    first, last = args.plain
    if not 2 <= first <= last:
        parser.error(f"--plain needs 2 <= FIRST <= LAST, got {first} {last}")
    config = json.loads(args.config)
    cell = cell_of(args)
    for steps in range(first, last + 1):
        value, nfe = cell.plain_at(steps)
        print(f"plain {steps:4d} steps  NFE {nfe:6.1f}  PSNR {value:6.2f}", flush=True)
    rows = []
    for steps in args.steps:
        row = compare(cell, steps, config, args.span)
        rows.append(row)
        print(
            f"SADA {steps:4d} steps  NFE {row['nfe']:6.1f} ({row['ratio']:.2f}x)  PSNR {row['psnr']:6.2f}  "
            f"vs neighbours {row['psnr'] - row['neighbours']:+6.2f}  vs trend {row['psnr'] - row['trend']:+6.2f} "
            f"(scatter {row['scatter']:.2f})  vs best at most NFE {row['psnr'] - row['best_at_most']:+6.2f}  "
            f"(PSNR vs its full run {row['vs_full']:.2f})",
            flush=True,
        )
    cell.close()
    if args.plot:
        seeds = f"seeds {cell.seeds[0]}-{cell.seeds[-1]}"
        overrides_text = " ".join(args.override) + (" (k-diffusion)" if args.host == "k-diffusion" else "")
        save_plot(cell.plain, rows, f"{args.model} {args.sampler} {overrides_text}, {seeds}", args.plot)
    if args.out:
        plain = {str(k): {"psnr": p, "nfe": e} for k, (p, e) in sorted(cell.plain.items())}
        with open(args.out, "w") as f:
            json.dump({"plain": plain, "sada": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
