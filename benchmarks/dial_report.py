"""The accuracy dial on every cell: one row per cell, one column per tolerance (the ``tolerance`` group of
``sada bench``), each point's evaluation ratio and its difference to the best plain grid at equal evaluations, and
the dial goal checked per cell (at least :data:`MIN_COUNTS` distinct evaluation counts, monotone in the tolerance,
from the exact run to at least :data:`MIN_RATIO` x):

    sada bench --cells '*/50' --groups main tolerance --out dial-out
    sada bench-report dial-out/results.json --dial --update docs/benchmarks.md

Rendered from the stored JSON only (``docs/results/bench-dial-results.json`` after ``--update``).
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.merge_results import merged_note
from benchmarks.methods import TOLERANCES, dial_method
from benchmarks.render import DOCS_END, RESULTS_DIR, _replace_section, draw_pareto, load_for_storage

__all__ = ["DIAL_BEGIN", "dial_points", "dial_check", "plot_name", "render_dial", "update_dial"]

DIAL_BEGIN = "<!-- begin generated: sada bench-report docs/results/bench-dial-results.json --dial -->"
STORED = "bench-dial-results.json"
MIN_COUNTS = 6
MIN_RATIO = 3.0


def dial_points(cell: dict) -> list[tuple[float, float, float | None, float | None]]:
    """``(tolerance, NFE, PSNR vs ODE, delta)`` of the cell's dial, from the exact run (tolerance 0: the full run,
    no difference by definition) through every swept tolerance the cell ran, in increasing tolerance. ``delta``
    (dB against the best plain grid at equal evaluations) is ``None`` where the run did not bracket the point with
    plain grids (``sada bench --dial-peers`` does)."""
    rows = {row["method"]: row for row in cell["rows"]}
    base = rows.get("baseline", {})
    points: list[tuple[float, float, float | None, float | None]] = [
        (0.0, float(cell["baseline_nfe"]), base.get("PSNR vs ODE"), None)
    ]
    for tolerance in TOLERANCES:
        row = rows.get(dial_method(tolerance))
        if row and "NFE" in row:
            points.append((tolerance, float(row["NFE"]), row.get("PSNR vs ODE"), row.get("Δ vs peer")))
    return points


def dial_check(cell: dict) -> dict:
    """The dial goal on one cell: distinct evaluation counts (rounded to 0.01), whether the count never rises as
    the tolerance grows, the largest evaluation ratio, and whether all three meet the goal."""
    points = dial_points(cell)
    if len(points) < 2:
        raise ValueError(f"cell {cell['name']!r} has no 'SADA, tolerance ...' rows: run the tolerance group")
    counts = [nfe for _, nfe, _, _ in points]
    distinct = len({round(n, 2) for n in counts})
    monotone = all(b <= a + 1e-9 for a, b in zip(counts, counts[1:], strict=False))
    ratio = cell["baseline_nfe"] / min(counts)
    return {
        "distinct": distinct,
        "monotone": monotone,
        "max_ratio": ratio,
        "met": distinct >= MIN_COUNTS and monotone and ratio >= MIN_RATIO,
    }


def _point(cell: dict, nfe: float, psnr: float | None, delta: float | None) -> str:
    ratio = f"{cell['baseline_nfe'] / nfe:.2f}x"
    if delta is not None:
        return f"{ratio}, {delta:+.1f}"
    return ratio if psnr is None else f"{ratio}, {psnr:.1f} dB"


def render_dial(results: dict) -> str:
    """The generated section: the per-cell dial table and the goal's tally."""
    cells = [c for c in results["cells"] if len(dial_points(c)) > 1]
    if not cells:
        raise ValueError("no cell ran the tolerance group ('SADA, tolerance ...'): run sada bench --groups tolerance")
    s = results["settings"]
    head = ["cell", "default"] + [f"{t:g}" for t in TOLERANCES] + ["counts", "monotone", "goal"]
    lines = [
        DIAL_BEGIN,
        "",
        f"Seeds {s['seeds'][0]}-{s['seeds'][-1]} ({s['seed_set']}). Each entry: evaluation ratio, then dB against "
        "the best plain grid at equal evaluations (signed; PSNR against the ODE solution), or the PSNR itself "
        "(dB) where no plain grid bracketed the point; the exact run (tolerance 0) is 1.00x."
        + (f" {merged_note(s)}" if s.get("merged") else ""),
        "",
        "| " + " | ".join(head) + " |",
        "|---" * len(head) + "|",
    ]
    met = 0
    for cell in cells:
        by_tolerance = {t: rest for t, *rest in dial_points(cell)}
        default = cell["variants"].get("SADA") or {}
        row = [
            cell["name"],
            _point(cell, default["NFE"], default.get("psnr_ode"), (default.get("peer") or {}).get("delta"))
            if "NFE" in default
            else "",
        ]
        row += [_point(cell, *by_tolerance[t]) if t in by_tolerance else "not run" for t in TOLERANCES]
        check = dial_check(cell)
        met += check["met"]
        row += [
            str(check["distinct"]),
            "yes" if check["monotone"] else "**no**",
            f"{'met' if check['met'] else '**not met**'} (up to {check['max_ratio']:.2f}x)",
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        f"The dial goal (>= {MIN_COUNTS} distinct evaluation counts, monotone, from 1.00x to >= {MIN_RATIO:g}x): "
        f"met in {met} of {len(cells)} cells.",
        "",
        "Each cell's front: PSNR against the ODE solution over evaluations per sample, every plain grid the cell "
        "ran as a line, the dial's points joined in tolerance order and labelled with their tolerance (a range where "
        "several gave the same run; `= default` marks the default's point, the large dot; 0 is the full run).",
        "",
    ]
    lines += [f"![The dial, {cell['name']}]({RESULTS_DIR}/img/{plot_name(cell)})" for cell in cells]
    lines += ["", DOCS_END]
    return "\n".join(lines) + "\n"


def plot_name(cell: dict) -> str:
    """The file name of a cell's dial plot in the results folder's ``img/``."""
    return f"dial-pareto-{cell['name'].replace('/', '-')}.png"


def update_dial(results_path, page_path) -> Path:
    """Store the results (without per-image arrays) as ``results/bench-dial-results.json`` beside ``page_path``,
    draw each dial cell's Pareto plot from them into ``results/img/`` (:func:`plot_name`) and replace the page's
    generated dial section. Returns the stored JSON's path."""
    page_path = Path(page_path)
    data = load_for_storage(results_path)
    text = render_dial(data)
    if page_path.read_text().count(DIAL_BEGIN) != 1:
        raise ValueError(f"{page_path} needs exactly one '{DIAL_BEGIN}' line and an end marker after it")
    stored = page_path.parent / RESULTS_DIR / STORED
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps(data, indent=1) + "\n")
    images = stored.parent / "img"
    images.mkdir(exist_ok=True)
    for cell in data["cells"]:
        if len(dial_points(cell)) > 1:
            draw_pareto(cell, images / plot_name(cell), compact=True)
    _replace_section(page_path, DIAL_BEGIN, text)
    return stored
