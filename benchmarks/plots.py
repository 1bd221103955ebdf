"""Per-cell figures: sample grids (ODE solution on top) and the Pareto plot (NFE vs PSNR against the ODE
solution, plain grids as curves, SADA variants as points)."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["save_samples", "save_pareto"]


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


def save_pareto(cell: dict, path: Path) -> None:
    """PSNR against the ODE solution vs evaluations: each plain grid family as a line through its runs, each
    SADA variant (and any other method with a curve, e.g. the Pareto group) as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {r["method"]: r for r in cell["rows"] if "NFE" in r}
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    families: dict[str, list] = {}
    for point in cell["plain_points"]:
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
        ax.scatter(xs, ys, color=next(colors), s=40 if curve in cell["variants"] else 14, zorder=3, label=curve)
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_ylabel("PSNR vs the ODE solution (dB)")
    ax.set_title(cell["name"], fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
