"""How the defaults of schedule-free SADA (:class:`~sada.config.ErrorControl`) were chosen: variants on the tuning seeds.

Every variant runs through the diffusers adapter on the shipped models, on the **tuning** seeds only (the held-out
seeds of the reported benchmark never enter), and is scored by PSNR against the cached converged ODE solution; its
peer is the best plain grid at the same number of network evaluations (the families of ``sada bench``, linearly
interpolated between the two whole step counts around a fractional NFE)::

    python -m benchmarks.tune_error_control                      # the four cells of docs/benchmarks.md, 16 seeds
    python -m benchmarks.tune_error_control --cells diffusers/mmdit/flow_euler/shift1/50 --seeds 8
    python -m benchmarks.tune_error_control --roughness          # why: the networks' outputs along a trajectory

``tail`` is the number of last steps that always run the network (:attr:`sada.policy.ErrorControlPolicy.protected_tail`;
the library uses 2, and this script sets it per variant to show why). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sada.config import ErrorControl, SADAConfig

__all__ = ["VARIANTS", "TUNING_CELLS", "run_variants", "roughness", "input_probe", "main"]

TUNING_CELLS = (
    "diffusers/unet/dpmpp_2m/karras/50",
    "diffusers/unet/dpmpp_2m/karras/25",
    "diffusers/mmdit/flow_euler/shift1/50",
    "diffusers/mmdit/flow_euler/shift1/25",
)
# name -> (ErrorControl fields, protected tail)
VARIANTS = {
    "previous default: tol 2, nodes 4, up to 4 skips, tail 1": (dict(tolerance=2.0, history=4, max_interval=4), 1),
    "interleaved: tol 8, nodes 3, tail 1": (dict(tolerance=8.0, history=3, max_interval=1), 1),
    "interleaved: tol 8, nodes 4, tail 1": (dict(tolerance=8.0, history=4, max_interval=1), 1),
    "interleaved: tol 8, nodes 4, tail 2": (dict(tolerance=8.0, history=4, max_interval=1), 2),
    "interleaved: tol 8, nodes 5, tail 2": (dict(tolerance=8.0, history=5, max_interval=1), 2),
    "interleaved: tol 2, nodes 3, tail 2": (dict(tolerance=2.0, history=3, max_interval=1), 2),
    "up to 2 skips: tol 8, nodes 3, tail 2": (dict(tolerance=8.0, history=3, max_interval=2), 2),
    "default: tol 8, nodes 3, interleaved, tail 2": (dict(tolerance=8.0, history=3, max_interval=1), 2),
}


def _best_plain(runner, evaluate, nfe: float, cache: dict) -> tuple[float, str]:
    """PSNR of the best plain grid family at ``nfe`` evaluations (interpolated between whole step counts)."""
    from benchmarks.grids import grid_families, plain_grid, steps_around
    from benchmarks.methods import Method

    best = (-np.inf, "")
    steps = runner.cell.steps_of_nfe(nfe)
    for family in grid_families(runner.cell):
        points = []
        for k in steps_around(runner.cell, nfe):
            if (family, k) not in cache:
                try:
                    grid = plain_grid(runner.cell, family, k, runner.model, runner.denoiser)
                except ValueError:
                    cache[family, k] = None
                    continue
                cache[family, k] = evaluate(Method(f"plain {family} {k}", "tuning", "plain", grid=grid))[1]
            if cache[family, k] is not None:
                points.append((k, cache[family, k]))
        if not points:
            continue
        if len(points) == 1:
            value = points[0][1]
        else:
            (k0, p0), (k1, p1) = points
            value = p0 + (p1 - p0) * (steps - k0) / (k1 - k0)
        if value > best[0]:
            best = (value, family)
    return best


def run_variants(cells=TUNING_CELLS, variants=None, num_seeds: int = 16, progress: bool = True) -> list[dict]:
    """One row per (cell, variant): NFE, PSNR vs the ODE solution, the best plain grid's PSNR at that NFE."""
    from tqdm.auto import tqdm

    from benchmarks.cells import Cell, seed_list
    from benchmarks.execute import CellRunner, RowCounter
    from benchmarks.methods import Method
    from benchmarks.metrics import psnr
    from benchmarks.models import load_model
    from benchmarks.reference import ReferenceSpec, reference_images
    from sada.policy import ErrorControlPolicy

    variants = VARIANTS if variants is None else variants
    if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
        raise ValueError(f"num_seeds must be a positive int, got {num_seeds!r}")
    seeds = seed_list("tuning", num_seeds)
    labels = [s % 10 for s in seeds]
    rows, models = [], {}
    bar = tqdm(total=len(cells) * len(variants), desc="ErrorControl variants", disable=not progress)
    default_tail = ErrorControlPolicy.protected_tail
    try:
        for name in cells:
            cell = Cell.parse(name)
            model = models.get(cell.model) or models.setdefault(cell.model, load_model(cell.model))
            reference = reference_images(
                model, ReferenceSpec(cell.model, cell.reference_start, model.guidance), seeds, labels
            )
            runner = CellRunner(cell, model)

            def evaluate(method):
                counter = RowCounter(runner.model.network)
                try:
                    images, _, _ = runner.run(method, seeds, labels)
                finally:
                    counter.remove()
                return counter.rows / (2 * len(seeds)), psnr(images.float(), reference)

            full = evaluate(Method("baseline", "tuning", "plain", grid=runner.full_grid))[1]
            plain_cache = {}
            for variant, (fields, tail) in variants.items():
                ErrorControlPolicy.protected_tail = tail
                nfe, value = evaluate(Method(variant, "tuning", "sada", SADAConfig(schedule=ErrorControl(**fields))))
                ErrorControlPolicy.protected_tail = default_tail
                plain, family = _best_plain(runner, evaluate, nfe, plain_cache)
                rows.append(
                    {
                        "cell": name,
                        "variant": variant,
                        "nfe": nfe,
                        "ratio": cell.steps / nfe,
                        "psnr": value,
                        "full_run_psnr": full,
                        "plain_psnr": plain,
                        "plain_family": family,
                        "delta": value - plain,
                    }
                )
                bar.update(1)
    finally:
        ErrorControlPolicy.protected_tail = default_tail
        bar.close()
    return rows


def _differences(values: list, order: int) -> float:
    """RMS of the ``order``-th backward difference of the newest ``order + 1`` tensors of ``values``."""
    current = values[-(order + 1) :]
    for _ in range(order):
        current = [b - a for a, b in zip(current[:-1], current[1:])]
    return float(current[0].pow(2).mean().sqrt())


@torch.no_grad()
def roughness(model_name: str, steps: int = 50, num_seeds: int = 16, every: int = 10) -> list[dict]:
    """Backward differences (orders 1-4) of the clean-sample predictions ``D`` along one plain run of ``steps``
    steps (U-Net: DPM-Solver++(2M) on Karras sigmas; MMDiT: flow Euler, uniform t), every ``every`` steps, on the
    tuning seeds. For a function smooth on the scale of a step they shrink with the order; for a rough one they grow.
    """
    import math

    from benchmarks.cells import seed_list
    from benchmarks.models import load_model

    model = load_model(model_name)
    seeds = seed_list("tuning", num_seeds)
    labels = torch.tensor([s % 10 for s in seeds])
    x = model.noise(seeds).double()
    predictions, rows = [], []
    if model.family == "vp":
        sig = model.training_sigmas()
        ramp = np.linspace(0, 1, steps)
        sigmas = (sig[-1] ** (1 / 7) + ramp * (sig[0] ** (1 / 7) - sig[-1] ** (1 / 7))) ** 7  # Karras, rho 7
        x = x * float(sigmas[0])
        log_sig = np.log(sig)
        previous, h_prev = None, 1.0  # h_prev is read only once a previous step exists
        for i, s in enumerate(sigmas):
            t = float(np.interp(math.log(s), log_sig, np.arange(len(sig))))  # the network's (fractional) timestep
            eps = model.guided_output((x / math.sqrt(s * s + 1)).float(), t, labels).double()
            D = x - s * eps
            predictions.append(D)
            if i + 1 < steps:
                s1, h = float(sigmas[i + 1]), math.log(s / float(sigmas[i + 1]))
                Dd = D if previous is None else (1 + h_prev / (2 * h)) * D - h_prev / (2 * h) * previous
                x = (s1 / s) * x - math.expm1(-h) * Dd
                previous, h_prev = D, h
        levels = sigmas
    else:
        ts = np.linspace(1, 0, steps + 1)
        for i in range(steps):
            v = model.guided_output(x.float(), float(ts[i]) * 1000, labels).double()
            predictions.append(x - float(ts[i]) * v)
            x = x + float(ts[i + 1] - ts[i]) * v
        levels = ts[:steps]
    for i in range(every - 1, steps, every):
        rows.append(
            {
                "model": model_name,
                "step": i,
                "noise level": float(levels[i]),
                **{f"order {k}": _differences(predictions[: i + 1], k) for k in range(1, 5)},
            }
        )
    return rows


@torch.no_grad()
def input_probe(num_seeds: int = 16, sigma: float = 1.35, points: int = 20) -> list[dict]:
    """Backward differences (orders 1-4, mean RMS over the sequence) of the U-Net's guided output when only its
    timestep input moves (by one training step, from the timestep of ``sigma``) and when only its sample moves
    (along the start noise, in steps of 0.002 of it)."""
    from benchmarks.cells import seed_list
    from benchmarks.models import load_model

    model = load_model("unet")
    seeds = seed_list("tuning", num_seeds)
    labels = torch.tensor([s % 10 for s in seeds])
    noise = model.noise(seeds)
    sig = model.training_sigmas()
    t0 = float(np.interp(np.log(sigma), np.log(sig), np.arange(len(sig))))
    x = noise * sigma / (sigma * sigma + 1) ** 0.5
    along_t = [model.guided_output(x, t0 + k, labels).double() for k in range(points)]
    along_x = [model.guided_output(x + 0.002 * k * noise, t0, labels).double() for k in range(points)]
    rows = []
    for name, values in (("timestep, +1 per point", along_t), ("sample, +0.002 noise per point", along_x)):
        row = {"input moved": name}
        for order in range(1, 5):
            current = values
            for _ in range(order):
                current = [b - a for a, b in zip(current[:-1], current[1:])]
            row[f"order {order}"] = float(np.mean([float(c.pow(2).mean().sqrt()) for c in current]))
        rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    lines = [
        "| cell (full run vs ODE) | variant | NFE (ratio) | PSNR vs ODE | best plain grid at equal NFE | difference (dB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cell']} ({r['full_run_psnr']:.2f}) | {r['variant']} | {r['nfe']:.1f} ({r['ratio']:.2f}x) | "
            f"{r['psnr']:.2f} | {r['plain_psnr']:.2f} ({r['plain_family']}) | {r['delta']:+.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tune_error_control",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--cells", nargs="+", default=list(TUNING_CELLS), help="diffusers cells")
    parser.add_argument("--seeds", type=int, default=16, help="tuning seeds 0..seeds-1")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (none: torch's default)")
    parser.add_argument(
        "--roughness",
        action="store_true",
        help="instead: backward differences of the predictions along a 50-step run of each model",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.roughness:
        rows = roughness("unet", num_seeds=args.seeds) + roughness("mmdit", num_seeds=args.seeds)
        print(
            "| model | step | sigma (U-Net) / t (MMDiT) | 1st difference | 2nd | 3rd | 4th |\n|---|---|---|---|---|---|---|"
        )
        for r in rows:
            print(
                f"| {r['model']} | {r['step']} | {r['noise level']:.3f} | "
                + " | ".join(f"{r[f'order {k}']:.2e}" for k in range(1, 5))
                + " |"
            )
        probe = input_probe(num_seeds=args.seeds)
        print("\n| U-Net input moved (sigma 1.35) | 1st difference | 2nd | 3rd | 4th |\n|---|---|---|---|---|")
        for r in probe:
            print(f"| {r['input moved']} | " + " | ".join(f"{r[f'order {k}']:.2e}" for k in range(1, 5)) + " |")
        print(f"\n{len(rows)} trajectory rows in {time.perf_counter() - started:.0f} s")
        return rows + probe
    rows = run_variants(args.cells, num_seeds=args.seeds)
    print(render(rows))
    print(f"\n{len(rows)} runs in {time.perf_counter() - started:.0f} s")
    return rows


if __name__ == "__main__":
    main()
