"""Per-cell figures: sample grids (ODE solution on top) and the Pareto plot (NFE vs PSNR against the ODE
solution, plain grids as curves, SADA variants as points, the accuracy dial's points labelled with their tolerance)."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.methods import TOLERANCES, dial_method

__all__ = ["dial_labels", "save_samples", "save_pareto"]


def save_samples(report, cell: dict, path: Path, per_row: int = 10) -> list[str]:
    """Rows top to bottom: the ODE solution, the full run, each SADA variant and the plain grid it is
    compared with (its larger step count); the row names go to ``path`` with suffix ``.txt``."""
    from PIL import Image

    raw = report.raw
    names, tiles = ["ODE solution"], [report.reference[:per_row]]
    wanted = ["baseline"]
    for variant, entry in cell["variants"].items():
        if "NFE" not in entry:
            continue
        wanted.append(variant)
        peer = entry["peer"]
        if peer:
            point = (peer["family"], peer["steps"][-1])
            wanted.append(report.points.get(point, ""))
    for name in dict.fromkeys(wanted):
        if name in raw and "images" in raw[name]:
            names.append(name)
            tiles.append(torch.cat([raw[name]["images"][c] for c in sorted(raw[name]["images"])])[:per_row])
    count = min(t.shape[0] for t in tiles)
    strips = [torch.cat(list(t[:count, 0].clamp(-1, 1)), dim=1) for t in tiles]
    grid = ((torch.cat(strips, dim=0) + 1) * 127.5).round().byte().numpy()
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(path)
    path.with_suffix(".txt").write_text("rows, top to bottom:\n" + "\n".join(names) + "\n")
    return names


def dial_labels(cell: dict) -> list[tuple[float, float, str]]:
    """``(NFE, PSNR vs ODE, label)`` of each distinct point of the cell's accuracy dial (its ``tolerance`` group
    rows) from the exact run (tolerance 0: the full run), in increasing tolerance; the label is the tolerance, or the range of tolerances that gave the same point
    (``"0.002-0.02"``), and ends in ``" = default"`` where that point is also the default's (the ``SADA``
    variant). Empty where the cell ran no dial."""
    rows = {r["method"]: r for r in cell["rows"] if "NFE" in r and r.get("PSNR vs ODE") is not None}
    points: dict[tuple[float, float], list[float]] = {}
    base = rows.get("baseline")
    if base is not None and any(dial_method(t) in rows for t in TOLERANCES):
        points[(float(base["NFE"]), float(base["PSNR vs ODE"]))] = [0.0]
    for tolerance in TOLERANCES:
        row = rows.get(dial_method(tolerance))
        if row is not None:
            points.setdefault((float(row["NFE"]), float(row["PSNR vs ODE"])), []).append(tolerance)
    default = rows.get("SADA")
    default_point = (float(default["NFE"]), float(default["PSNR vs ODE"])) if default is not None else None
    labels = []
    for point, tolerances in points.items():
        text = f"{tolerances[0]:g}" if len(tolerances) == 1 else f"{tolerances[0]:g}-{tolerances[-1]:g}"
        labels.append((*point, text + (" = default" if point == default_point else "")))
    return labels


def save_pareto(cell: dict, path: Path) -> None:
    """PSNR against the ODE solution vs evaluations: each plain grid family as a line through its runs, each
    SADA variant (and any other method with a curve, e.g. the Pareto group) as points; the accuracy dial's points
    joined in tolerance order and labelled with their tolerance (:func:`dial_labels`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {r["method"]: r for r in cell["rows"] if "NFE" in r}
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    families: dict[str, list] = {}
    for point in cell.get("plain_points", []):
        row = rows.get(point["method"])
        if row is not None:
            families.setdefault(point["family"], []).append((row["NFE"], row["PSNR vs ODE"]))
    for (family, points), style in zip(sorted(families.items()), ("--", ":", "-.", "--")):
        xs, ys = zip(*sorted(set(points)))
        ax.plot(xs, ys, style, color="black", marker="o", markersize=3, label=f"plain: {family}")
    colors = iter(plt.get_cmap("tab10").colors)
    curves: dict[str, list] = {}
    for row in rows.values():
        if row.get("curve") and not row["curve"].startswith("plain"):
            curves.setdefault(row["curve"], []).append((row["NFE"], row["PSNR vs ODE"]))
    for curve, points in sorted(curves.items()):
        xs, ys = zip(*points)
        ax.scatter(xs, ys, color=next(colors), s=40 if curve in cell.get("variants", {}) else 14, zorder=3, label=curve)
    labels = dial_labels(cell)
    if labels:
        ax.plot([p[0] for p in labels], [p[1] for p in labels], "-", color="tab:orange", alpha=0.35, lw=1, zorder=2)
        span = max(p[0] for p in labels) - min(p[0] for p in labels) or 1.0
        slot, last = 0, None
        for nfe, psnr, text in labels:
            slot = (slot + 1) % 3 if last is not None and abs(nfe - last) < 0.06 * span else 0  # close: stagger
            offset = (4, (4, -10, 13)[slot])
            ax.annotate(text, (nfe, psnr), xytext=offset, textcoords="offset points", fontsize=6.5, color="tab:orange")
            last = nfe
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_ylabel("PSNR vs the ODE solution (dB)")
    ax.set_title(cell["name"], fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
