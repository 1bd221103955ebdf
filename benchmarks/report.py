"""Turn the benchmark's raw runs into metrics, ``results.json``, ``results.md`` and plots.

Every method row carries its PSNR/SSIM against the ODE solution (the primary fidelity measure) and
against the cell's full run (the paper's convention), FD-digits and class accuracy; every SADA variant
its best plain grid at equal evaluations and the paired difference to it (:mod:`benchmarks.stats`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.methods import SADA_VARIANTS
from benchmarks.metrics import FeatureMetrics, psnr_per_image, ssim
from benchmarks.stats import equal_nfe_peer, goal_rows

__all__ = ["CellReport", "compute_cell", "write_report", "load_features"]


@dataclass
class CellReport:
    """What a cell's runs left on rank 0: methods, merged raw entries, the plain-grid points
    ``{(family, steps): method name}`` and the reference images of all seeds."""

    cell: object
    methods: list
    raw: dict
    points: dict
    reference: torch.Tensor


def _images(entry) -> torch.Tensor:
    return torch.cat([entry["images"][c] for c in sorted(entry["images"])])


def load_features() -> FeatureMetrics:
    from benchmarks.classifier import load_classifier
    from benchmarks.train import load_digit_data

    _, _, x_test, _ = load_digit_data()
    return FeatureMetrics(load_classifier(), x_test)


def _method_row(name, method, entry, base, base_images, reference, labels, features) -> dict:
    row = {
        "method": name,
        "group": method.group if method else "",
        "kind": method.kind if method else "",
        "curve": method.curve if method else None,
    }
    if method is not None and method.grid is not None:
        row.update({"family": method.grid.family, "grid_steps": method.grid.steps})
    if "skipped" in entry or "error" in entry:
        row["error" if "error" in entry else "skipped"] = entry.get("error") or entry["skipped"]
        return row
    images = _images(entry)
    n = images.shape[0]
    nfe = entry["rows"] / (2 * entry["n_samples"])
    base_nfe = base["rows"] / (2 * base["n_samples"])
    per_image = psnr_per_image(images, reference)
    row.update(
        {
            "NFE": nfe,
            "NFE ratio": base_nfe / nfe,
            "PSNR vs ODE": float(per_image.mean()),
            "SSIM vs ODE": ssim(images, reference),
            "PSNR vs full run": float(psnr_per_image(images, base_images).mean()),
            "SSIM vs full run": ssim(images, base_images),
            "FD-digits": features.fd_digits(images),
            "accuracy": features.accuracy(images, labels[:n]),
            "trace": entry.get("trace"),
            "bit-identical": bool(torch.equal(images, base_images)),
            "psnr_ode_per_image": [round(float(v), 5) for v in per_image],
        }
    )
    if entry.get("state_bytes") is not None:
        row["SADA state MiB"] = entry["state_bytes"] / 2**20
    timing, base_time = entry.get("timing") or {}, (base.get("timing") or {}).get("median_s")
    if timing:
        row.update(
            {"wall s": timing["median_s"], "times_s": timing["times_s"], "peak ΔRSS MiB": timing["peak_rss_mib"]}
        )
        if base_time:
            row["wall speedup"] = base_time / timing["median_s"]
            row["wall/NFE"] = row["wall speedup"] / row["NFE ratio"]
    return row


def compute_cell(report: CellReport, labels, features: FeatureMetrics) -> dict:
    """The cell's rows, its SADA variants with their equal-evaluation peers, and its plain-grid points."""
    cell, raw = report.cell, report.raw
    methods = {m.name: m for m in report.methods}
    base = raw["baseline"]
    if "images" not in base:
        raise RuntimeError(f"{cell.name}: the baseline did not run: {base.get('error') or base.get('skipped')}")
    base_images = _images(base)
    reference = report.reference[: base_images.shape[0]]
    rows = [
        _method_row(name, methods.get(name), entry, base, base_images, reference, labels, features)
        for name, entry in raw.items()
    ]
    by_name = {r["method"]: r for r in rows}
    for (family, _), name in report.points.items():  # a grid run once for several families that give it
        row = by_name.get(name)
        if (
            row is not None
            and row.get("family") not in (None, family)
            and family not in row.setdefault("same grid as", [])
        ):
            row["same grid as"].append(family)
    plain = {
        point: by_name[name]["psnr_ode_per_image"]
        for point, name in report.points.items()
        if "psnr_ode_per_image" in by_name.get(name, {})
    }
    variants = {}
    for variant in SADA_VARIANTS:
        row = by_name.get(variant)
        if row is None:
            continue
        if "NFE" not in row:
            variants[variant] = {"error": row.get("error") or row.get("skipped")}
            continue
        peer = equal_nfe_peer(row["NFE"], row["psnr_ode_per_image"], plain, cell.nfe_of_steps)
        variants[variant] = {"NFE": row["NFE"], "psnr_ode": row["PSNR vs ODE"], "peer": peer}
        row["equal-NFE peer"] = peer.get("name")
        row["Δ vs peer"] = peer.get("delta")
        row["Δ 2se"] = peer.get("delta_2se")
    for row in rows:  # the dial's points: their peer where the run bracketed them (sada bench --dial-peers)
        if row.get("group") == "tolerance" and "NFE" in row and "psnr_ode_per_image" in row:
            peer = equal_nfe_peer(row["NFE"], row["psnr_ode_per_image"], plain, cell.nfe_of_steps)
            if peer:
                row["equal-NFE peer"], row["Δ vs peer"], row["Δ 2se"] = peer["name"], peer["delta"], peer["delta_2se"]
    return {
        "name": cell.name,
        "backend": cell.backend,
        "model": cell.model,
        "sampler": cell.sampler,
        "spacing": cell.spacing,
        "steps": cell.steps,
        "baseline_nfe": by_name["baseline"]["NFE"],
        "rows": rows,
        "variants": variants,
        "plain_points": [{"family": f, "steps": k, "method": name} for (f, k), name in sorted(report.points.items())],
    }


def write_report(results: dict, reports: list[CellReport], labels, out: Path, started: float | None = None) -> dict:
    """Fill ``results`` (cells, goals), write ``results.json``, ``results.md``, ``grid-<cell>.png`` and
    ``pareto-<cell>.png`` under ``out``; returns ``results``. ``started`` (a ``time.perf_counter()`` value)
    sets ``settings["wall_s"]``, the run's duration up to the written report."""
    import time

    from benchmarks.plots import save_pareto, save_samples
    from benchmarks.render import render_markdown

    features = load_features()
    for report in reports:
        cell = compute_cell(report, labels, features)
        results["cells"].append(cell)
        save_samples(report, cell, out / f"grid-{report.cell.slug}.png")
        save_pareto(cell, out / f"pareto-{report.cell.slug}.png")
    results["goals"] = goal_rows(results["cells"], SADA_VARIANTS)
    if started is not None:
        results["settings"]["wall_s"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    (out / "results.md").write_text(render_markdown(results, docs=False))
    return results
