"""Turn the benchmark's raw runs into metrics, ``results.json``, ``results.md`` and plots."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sada.bench.metrics import FeatureMetrics, psnr, ssim

__all__ = ["write_report", "compute_rows"]

COLUMNS = ("method", "group", "NFE", "NFE speedup", "wall s", "wall speedup", "wall/NFE", "SADA state MiB",
           "peak ΔRSS MiB", "PSNR", "SSIM", "FD-digits", "accuracy", "trace")


def _images(entry) -> torch.Tensor:
    return torch.cat([entry["images"][c] for c in sorted(entry["images"])])


def compute_rows(model_result: dict, labels, features: FeatureMetrics) -> list[dict]:
    raw, methods = model_result["raw"], {m.name: m for m in model_result["methods"]}
    base = raw["baseline"]
    base_images = _images(base)
    base_nfe = base["rows"] / (2 * base["n_samples"])
    base_time = (base.get("timing") or {}).get("median_s")
    n = base_images.shape[0]
    rows = []
    for name, entry in raw.items():
        method = methods.get(name)
        row = {"method": name, "group": method.group if method else "", "curve": method.curve if method else None}
        if "error" in entry:
            row["error"] = entry["error"]
            rows.append(row)
            continue
        images = _images(entry)
        nfe = entry["rows"] / (2 * entry["n_samples"])
        timing = entry.get("timing") or {}
        row.update({"NFE": nfe, "NFE speedup": base_nfe / nfe, "PSNR": psnr(images, base_images),
                    "SSIM": ssim(images, base_images), "FD-digits": features.fd_digits(images),
                    "accuracy": features.accuracy(images, labels[:n]), "trace": entry.get("trace"),
                    "bit-identical": bool(torch.equal(images, base_images))})
        if entry.get("state_bytes") is not None:
            row["SADA state MiB"] = entry["state_bytes"] / 2**20
        if timing:
            row.update({"wall s": timing["median_s"], "peak ΔRSS MiB": timing["peak_rss_mib"],
                        "wall speedup": base_time / timing["median_s"] if base_time else None,
                        "wall/NFE": (base_time / timing["median_s"]) / (base_nfe / nfe) if base_time else None,
                        "times_s": timing["times_s"]})
        rows.append(row)
    return rows


def _fmt(value, key):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if key == "wall/NFE":
            return f"{value:.2f}"
        if key in ("NFE speedup", "wall speedup"):
            return f"{value:.2f}x"
        if key in ("PSNR",):
            return f"{value:.2f}"
        if key in ("SSIM", "accuracy", "SADA state MiB", "peak ΔRSS MiB"):
            return f"{value:.3f}"
        return f"{value:.3g}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if c != "trace"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['method']} | {row['group']} | not run: {row['error'][:120]} |" + " |" * (len(cols) - 3))
            continue
        lines.append("| " + " | ".join(_fmt(row.get(c), c) for c in cols) + " |")
    return "\n".join(lines)


def _save_grid(model_result, rows, path: Path, per_row: int = 10) -> None:
    from PIL import Image

    raw = model_result["raw"]
    names = [r["method"] for r in rows if "error" not in r and r["group"] in ("main", "peer")]
    tiles = []
    for name in names:
        imgs = _images(raw[name])[:per_row].clamp(-1, 1)
        tiles.append(torch.cat(list(imgs[:, 0]), dim=1))
    grid = ((torch.cat(tiles, dim=0) + 1) * 127.5).round().byte().numpy()
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(path)
    (path.with_suffix(".txt")).write_text("rows, top to bottom:\n" + "\n".join(names) + "\n")


def _frontier(points):
    """Points not beaten by one at fewer or equal evaluations (the curve's Pareto front), by NFE."""
    front, best = [], -np.inf
    for nfe, value in sorted(points, key=lambda p: (p[0], -p[1])):
        if value > best:
            front.append((nfe, value))
            best = value
    return front


def _save_pareto(rows, path: Path, title: str) -> None:
    """PSNR vs evaluations: every method's points, each curve's Pareto front as a line (ablations and the
    no-skip control are left out; they are in the table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    curves: dict[str, list] = {}
    for row in rows:
        if "error" in row or row["group"] == "ablation" or row["method"] in ("baseline", "SADA, skipping disabled"):
            continue
        curve = row.get("curve") or ("fewer steps" if row["method"].startswith("fewer steps") else row["method"])
        curves.setdefault(curve, []).append((row["NFE"], min(row["PSNR"], 75.0)))
    colors = iter(plt.get_cmap("tab10").colors)
    for curve, points in sorted(curves.items(), key=lambda kv: kv[0] != "fewer steps"):
        color = "black" if curve == "fewer steps" else next(colors)
        style = "--" if curve == "fewer steps" else "-"
        xs, ys = zip(*points)
        ax.scatter(xs, ys, color=color, s=18, zorder=3)
        fx, fy = zip(*_frontier(points))
        ax.plot(fx, fy, style, color=color, label=curve, marker="o", markersize=4)
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_ylabel("PSNR vs the same-noise baseline (dB, capped at 75)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict, model_labels, out: Path) -> None:
    from sada.bench.classifier import load_classifier
    from sada.bench.train import load_digit_data

    _, _, x_test, _ = load_digit_data()
    features = FeatureMetrics(load_classifier(), x_test)
    summary = {"settings": results["settings"], "models": {}}
    md = [f"# sada bench results\n\nSettings: `{json.dumps(results['settings'])}`\n"]
    for name, model_result in results["models"].items():
        rows = compute_rows(model_result, model_labels, features)
        summary["models"][name] = {"scheduler": model_result["scheduler"], "rows": rows}
        md.append(f"## {name} / {model_result['scheduler']}\n\n{markdown_table(rows)}\n")
        md.append("Traces:\n\n" + "\n".join(f"- {r['method']}: {r['trace']}" for r in rows if r.get("trace")) + "\n")
        _save_grid(model_result, rows, out / f"grid-{name}.png")
        _save_pareto(rows, out / f"pareto-{name}.png", f"{name} / {model_result['scheduler']}, "
                     f"{results['settings']['steps']} steps")
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    (out / "results.md").write_text("\n".join(md))
