"""Markdown of a benchmark results dict (``results.json``): the run's ``results.md``, the generated part of
``docs/benchmarks.md`` (``sada bench-report results.json --docs``) and of the full-matrix page
``docs/results/benchmark-matrix.md`` (``--matrix``), all from the stored JSON only.

Generated files live apart from the hand-written pages, in the ``results/`` folder of the docs
(:data:`RESULTS_DIR`): the stored JSON, the figures (``results/img/``), the matrix page and the lab's page. The
hand-written ``docs/benchmarks.md`` keeps its generated sections between markers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from benchmarks.cells import DEFAULT_CELLS
from benchmarks.merge_results import merged_note
from benchmarks.methods import SADA_VARIANTS
from benchmarks.stats import GOALS, LOSS_CAUSES, MAX_LOSS_DB

__all__ = [
    "render_markdown",
    "render_matrix_summary",
    "render_file",
    "update_docs",
    "results_folder",
    "DOCS_BEGIN",
    "MATRIX_BEGIN",
    "SUMMARY_BEGIN",
    "DOCS_END",
    "RESULTS_DIR",
]

DOCS_BEGIN = "<!-- begin generated: sada bench-report docs/results/bench-results.json --docs -->"
MATRIX_BEGIN = "<!-- begin generated: sada bench-report docs/results/bench-matrix-results.json --matrix -->"
# the matrix's goals and pivot on the benchmarks page, regenerated with the matrix page
SUMMARY_BEGIN = "<!-- begin generated: sada bench-report docs/results/bench-matrix-results.json --matrix (summary) -->"
DOCS_END = "<!-- end generated -->"
STORED = {False: "bench-results.json", True: "bench-matrix-results.json"}  # by ``matrix``
# the folder of generated files beside the hand-written pages; the matrix page lives inside it
RESULTS_DIR = "results"


def _num(value, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _delta(peer: dict) -> str:
    if not peer:
        return ""
    return f"{_num(peer['delta'], 2, True)} ± {_num(peer['delta_2se'], 2)}"


def _references(results: dict) -> list[str]:
    lines = ["| reference | solver | convergence check | seeds | agreement min / mean (dB) |", "|---|---|---|---|---|"]
    for key, ref in sorted(results.get("references", {}).items()):
        lines.append(
            f"| {key} | {ref['reference']} | {ref['check']} | {ref['seeds'][0]}-{ref['seeds'][-1]} | "
            f"{_num(ref['psnr_min'], 1)} / {_num(ref['psnr_mean'], 1)} |"
        )
    return lines


def _goal_text(steps: int) -> str:
    ratio, gain = GOALS[steps]
    return f"{steps} steps: >= {ratio:g}x fewer evaluations and >= {gain:+g} dB"


def _goals(results: dict) -> list[str]:
    goals = results.get("goals", [])
    lines = [
        "| goal | variant | cells | met | evaluation ratio (min - max) | dB vs best plain grid at equal NFE "
        "(min - max) |",
        "|---|---|---|---|---|---|",
    ]
    for steps in GOALS:  # the goals' own order: 50, 25, 15, 100 steps
        for variant in SADA_VARIANTS:
            rows = [g for g in goals if g["steps"] == steps and g["variant"] == variant]
            if not rows:
                continue
            met = sum(1 for g in rows if g.get("met"))
            ratios, deltas = [g["ratio"] for g in rows], [g["delta"] for g in rows]
            lines.append(
                f"| {_goal_text(steps)} | {variant} | {len(rows)} | {met} | {min(ratios):.2f}x - "
                f"{max(ratios):.2f}x | {_num(min(deltas), 2, True)} - {_num(max(deltas), 2, True)} |"
            )
    for variant in SADA_VARIANTS:
        rows = [g for g in goals if g["variant"] == variant]
        if not rows:
            continue
        worst = min(rows, key=lambda g: g["delta"])
        ok = sum(1 for g in rows if g["no_loss"])
        lines.append(
            f"| never more than {MAX_LOSS_DB} dB below the best plain grid at equal NFE, any cell | {variant} | "
            f"{len(rows)} | {ok} | | worst {_num(worst['delta'], 2, True)} ({worst['cell']}){_loss_causes(rows)} |"
        )
    return lines


def _loss_causes(rows: list[dict]) -> str:
    """The cells behind by more than the allowed loss, counted by cause (:func:`benchmarks.stats.loss_cause`), the
    ones behind by the skips named; empty when none is behind or the stored goals predate the cause."""
    behind = [g for g in rows if not g["no_loss"]]
    if not behind or any("loss_cause" not in g for g in behind):
        return ""
    parts = []
    for cause, meaning in LOSS_CAUSES.items():
        cells = [g for g in behind if g["loss_cause"] == cause]
        if not cells:
            continue
        detail = ""
        if cause == "skips":
            detail = ": " + ", ".join(f"{g['cell']} {_num(g['delta'], 2, True)}" for g in cells)
        elif cause == "grid":  # what the skips add there: the variant against its own full run
            worst = max(cells, key=lambda g: g["full_psnr"] - g["psnr_ode"])
            detail = (
                f" (the variant there is within {_num(max(0.0, worst['full_psnr'] - worst['psnr_ode']))} dB of the full "
                f"run, least close on {worst['cell']})"
            )
        parts.append(f"{len(cells)} {meaning}{detail}")
    return "; behind: " + "; ".join(parts)


def _matrix(results: dict, variant: str) -> list[str]:
    lines = [
        f"| cell | full run vs ODE | {variant} NFE (ratio) | {variant} vs ODE | best plain grid at equal NFE | "
        "its PSNR vs ODE | difference (dB, ± 2 s.e.) | goal met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    goals = {(g["cell"], g["variant"]): g for g in results.get("goals", [])}
    for cell in results["cells"]:
        base = next(r for r in cell["rows"] if r["method"] == "baseline")
        entry = cell["variants"].get(variant)
        if entry is None:
            continue
        if "error" in entry:
            lines.append(f"| {cell['name']} | {_num(base['PSNR vs ODE'])} | not run: {entry['error']} | | | | | |")
            continue
        peer, goal = entry["peer"], goals.get((cell["name"], variant), {})
        met = "" if "met" not in goal else ("yes" if goal["met"] else "no")
        lines.append(
            f"| {cell['name']} | {_num(base['PSNR vs ODE'])} | {_num(entry['NFE'], 1)} "
            f"({cell['baseline_nfe'] / entry['NFE']:.2f}x) | {_num(entry['psnr_ode'])} | "
            f"{peer.get('name', '')} | {_num(peer.get('psnr'))} | {_delta(peer)} | {met} |"
        )
    return lines


def _variants_run(results: dict) -> list[str]:
    """The SADA variants (in :data:`SADA_VARIANTS` order) that have an entry in at least one cell."""
    return [v for v in SADA_VARIANTS if any(v in c["variants"] for c in results["cells"])]


def _pivot(results: dict, variant: str) -> list[str]:
    """One row per (backend, model, sampler, spacing), one column per step count: the variant's evaluation
    ratio and its paired difference to the best plain grid at equal evaluations (dB, against the ODE)."""
    steps = sorted({c["steps"] for c in results["cells"]})
    table: dict[str, dict] = {}
    for cell in results["cells"]:
        entry = cell["variants"].get(variant) or {}
        row = table.setdefault(cell["name"].rsplit("/", 1)[0], {})
        if "peer" in entry and entry["peer"]:
            row[cell["steps"]] = f"{cell['baseline_nfe'] / entry['NFE']:.2f}x, {_num(entry['peer']['delta'], 1, True)}"
        else:
            row[cell["steps"]] = "not run"
    lines = ["| configuration | " + " | ".join(f"{k} steps" for k in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(row.get(k, "") for k in steps) + " |")
    return lines


_DETAIL = (
    ("NFE", 1),
    ("NFE ratio", 2),
    ("PSNR vs ODE", 2),
    ("SSIM vs ODE", 4),
    ("PSNR vs full run", 2),
    ("SSIM vs full run", 4),
    ("Δ vs peer", 2),
    ("FD-digits", 2),
    ("accuracy", 3),
    ("wall s", 3),
    ("wall/NFE", 2),
    ("SADA state MiB", 2),
)


def _detail(cell: dict, timing: bool) -> list[str]:
    columns = [c for c in _DETAIL if timing or c[0] not in ("wall s", "wall/NFE")]
    header = [c[0] if c[0] != "PSNR vs full run" else "PSNR vs full run (paper's convention)" for c in columns]
    header = ["Δ vs best plain grid (dB)" if h == "Δ vs peer" else h for h in header]
    lines = ["| method | " + " | ".join(header) + " | bit-identical |", "|---" * (len(columns) + 2) + "|"]
    for row in cell["rows"]:
        if "NFE" not in row:
            reason = row.get("error") or row.get("skipped")
            lines.append(f"| {row['method']} | not run: {reason[:140]} |" + " |" * len(columns))
            continue
        cells = [_num(row.get(key), digits, key == "Δ vs peer") for key, digits in columns]
        name = row["method"] + (f" (= {', '.join(row['same grid as'])})" if row.get("same grid as") else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'yes' if row['bit-identical'] else 'no'} |")
    return lines


def render_markdown(results: dict, docs: bool = False, matrix: bool = False) -> str:
    """The report as markdown. ``docs=True``: the generated section of the benchmarks page (per-cell detail
    tables only for the main job's cells, no traces); ``matrix=True``: the generated section of the
    full-matrix page (a step-count pivot per variant, every cell's detail table and Pareto plot, no sample
    grids); neither: the run's ``results.md`` (everything)."""
    if not isinstance(results, dict) or "cells" not in results or "settings" not in results:
        raise ValueError("results must be a benchmark results dict with 'settings' and 'cells' (results.json)")
    if docs and matrix:
        raise ValueError("choose one of docs=True (the benchmarks page) and matrix=True (the matrix page)")
    s = results["settings"]
    out = [MATRIX_BEGIN if matrix else DOCS_BEGIN, ""] if docs or matrix else ["# sada bench results", ""]
    out.append(
        f"Seeds {s['seeds'][0]}-{s['seeds'][-1]} ({s['seed_set']}, labels = seed % 10), batch {s['batch']}, "
        f"torch threads per process: {s['torch_threads']}, processes: {s['world_size']}, torch {s['torch']}, "
        f"diffusers {s.get('diffusers', '?')}; the run took {s.get('wall_s', 0) / 60:.1f} min."
        + (f" {merged_note(s)}" if s.get("merged") else "")
    )
    out += ["", "### ODE references", ""] + _references(results)
    out += [
        "",
        "### Goals (held-out seeds: every SADA variant against the best plain grid at equal evaluations)",
        "",
    ] + _goals(results)
    ran = _variants_run(results)
    if matrix:
        for variant in ran:
            out += [
                "",
                f"### {variant} at a glance (evaluation ratio, dB vs the best plain grid at equal NFE)",
                "",
            ] + _pivot(results, variant)
    for variant in ran:
        out += ["", f"### {variant}: every cell", ""] + _matrix(results, variant)
    default_names = {c.name for c in DEFAULT_CELLS}
    timing = any("wall s" in r for c in results["cells"] for r in c["rows"])
    for cell in results["cells"]:
        if docs and cell["name"] not in default_names:
            continue
        out += ["", f"### {cell['name']}", ""] + _detail(cell, timing)
        if matrix:
            out += ["", f"![Pareto, {cell['name']}](img/matrix-pareto-{cell['name'].replace('/', '-')}.png)"]
        elif docs:
            slug = cell["name"].replace("/", "-")
            out += [
                "",
                f"![Pareto, {cell['name']}]({RESULTS_DIR}/img/bench-pareto-{slug}.png)",
                f"![Samples, {cell['name']}: ODE solution, full run, each SADA variant and its plain grid]"
                f"({RESULTS_DIR}/img/bench-grid-{slug}.png)",
            ]
        else:
            traces = [f"- {r['method']}: {r['trace']}" for r in cell["rows"] if r.get("trace")]
            out += ["", "Traces:", ""] + traces if traces else []
            out += ["", f"![Pareto](pareto-{cell['name'].replace('/', '-')}.png)"]
    if docs or matrix:
        out += ["", DOCS_END]
    return "\n".join(out) + "\n"


def render_matrix_summary(results: dict) -> str:
    """The full matrix's goals table and per-variant pivots, for the benchmarks page (between
    :data:`SUMMARY_BEGIN` and :data:`DOCS_END`)."""
    s = results["settings"]
    out = [
        SUMMARY_BEGIN,
        "",
        f"{len(results['cells'])} cells, seeds {s['seeds'][0]}-{s['seeds'][-1]} ({s['seed_set']}); "
        f"every cell's table and Pareto plot: [Benchmark matrix]({RESULTS_DIR}/benchmark-matrix.md).",
        "",
    ] + _goals(results)
    for variant in _variants_run(results):
        out += ["", f"{variant} (evaluation ratio, dB vs the best plain grid at equal NFE):", ""] + _pivot(
            results, variant
        )
    return "\n".join(out + ["", DOCS_END]) + "\n"


def _replace_section(page_path: Path, begin: str, text: str) -> None:
    """Replace the generated section of ``page_path`` that starts at ``begin`` (through the next end marker)."""
    page = page_path.read_text()
    if page.count(begin) != 1 or DOCS_END not in page.split(begin, 1)[-1]:
        raise ValueError(f"{page_path} needs exactly one '{begin}' line and a '{DOCS_END}' line after it")
    head, rest = page.split(begin)
    page_path.write_text(head + text.rstrip("\n") + rest.split(DOCS_END, 1)[1])


def render_file(path, docs: bool = False, matrix: bool = False) -> str:
    """:func:`render_markdown` of a stored ``results.json``."""
    with open(path) as f:
        return render_markdown(json.load(f), docs=docs, matrix=matrix)


def _copy_plot(source: Path, target: Path, compact: bool) -> None:
    """Copy a figure; ``compact``: as a 64-colour palette PNG (the matrix page has one plot per cell)."""
    if not compact:
        shutil.copyfile(source, target)
        return
    from PIL import Image

    with Image.open(source) as image:
        image.convert("RGB").quantize(colors=64).save(target, optimize=True)


def draw_pareto(cell: dict, target: Path, compact: bool) -> None:
    """Draw a cell's Pareto plot from its stored rows (:func:`benchmarks.plots.save_pareto`) into ``target``;
    ``compact`` as for :func:`_copy_plot`. A page's plots are thus redrawn from the results it stores."""
    import tempfile

    from benchmarks.plots import save_pareto

    with tempfile.TemporaryDirectory() as tmp:
        drawn = Path(tmp) / "pareto.png"
        save_pareto(cell, drawn)
        _copy_plot(drawn, target, compact)


def results_folder(page_path, matrix: bool = False) -> Path:
    """Where a page's generated files go: the :data:`RESULTS_DIR` folder beside the benchmarks page
    (``docs/results/``); the matrix page lives in that folder itself (``docs/results/benchmark-matrix.md``)."""
    page_path = Path(page_path)
    return page_path.parent if matrix else page_path.parent / RESULTS_DIR


def load_for_storage(results_path) -> dict:
    """A run's ``results.json`` without the per-image arrays, as the docs store it."""
    data = json.loads(Path(results_path).read_text())
    for cell in data.get("cells", []):
        for row in cell.get("rows", []):
            row.pop("psnr_ode_per_image", None)
    return data


def update_docs(results_path, page_path, matrix: bool = False) -> Path:
    """Regenerate a docs page from a run: store the results (without per-image arrays) in the page's
    :func:`results_folder` (``bench-results.json``; ``matrix=True``: ``bench-matrix-results.json``), copy the
    figures into its ``img/`` (the main cells' Pareto plots, redrawn from the stored results, and sample grids,
    copied from the run's folder; ``matrix=True``: every cell's Pareto plot) and replace the page's generated section; ``matrix=True`` also regenerates the matrix
    summary of the ``benchmarks.md`` that holds the results folder, where it has one (:data:`SUMMARY_BEGIN`).
    Returns the stored JSON's path."""
    results_path, page_path = Path(results_path), Path(page_path)
    data = load_for_storage(results_path)
    text = render_markdown(data, docs=not matrix, matrix=matrix)
    begin = MATRIX_BEGIN if matrix else DOCS_BEGIN
    if page_path.read_text().count(begin) != 1:
        raise ValueError(f"{page_path} needs exactly one '{begin}' line and a '{DOCS_END}' line after it")
    folder = results_folder(page_path, matrix)
    stored = folder / STORED[matrix]
    images = folder / "img"
    images.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps(data, indent=1) + "\n")
    main_cells = {c.name for c in DEFAULT_CELLS}
    prefix = "matrix" if matrix else "bench"
    for cell in data["cells"]:
        if not (matrix or cell["name"] in main_cells):
            continue
        slug = cell["name"].replace("/", "-")
        draw_pareto(cell, images / f"{prefix}-pareto-{slug}.png", compact=matrix)
        source = results_path.parent / f"grid-{slug}.png"  # sample images: not in the results, copied from the run
        if not matrix and source.is_file():
            _copy_plot(source, images / f"{prefix}-grid-{slug}.png", compact=False)
    _replace_section(page_path, begin, text)
    summary = folder.parent / "benchmarks.md"
    if matrix and summary.is_file() and SUMMARY_BEGIN in summary.read_text():
        _replace_section(summary, SUMMARY_BEGIN, render_matrix_summary(data))
    return stored
