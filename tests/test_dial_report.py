"""The dial report: per cell, every tolerance's point and the dial goal (distinct counts, monotone, >= 3x)."""

import json
from pathlib import Path

import pytest

from benchmarks.cli import main
from benchmarks.dial_report import DIAL_BEGIN, dial_check, dial_points, plot_name, render_dial, update_dial
from benchmarks.methods import TOLERANCES, dial_method
from benchmarks.plots import dial_labels
from benchmarks.render import DOCS_END


def _cell(name, nfes, default=28.0, deltas=None):
    """A stored cell: the full run, the default (a variant with its peer) and one row per swept tolerance."""
    rows = [{"method": "baseline", "group": "main", "NFE": 50.0, "PSNR vs ODE": 45.0}]
    for i, (tolerance, nfe) in enumerate(zip(TOLERANCES, nfes, strict=False)):
        row = {"method": f"SADA, tolerance {tolerance:g}", "group": "tolerance", "NFE": nfe, "PSNR vs ODE": 44.0 - i}
        if deltas is not None:
            row["Δ vs peer"] = deltas[i]
        rows.append(row)
    variants = {"SADA": {"NFE": default, "psnr_ode": 40.0, "peer": {"delta": 1.5, "delta_2se": 0.3}}}
    rows[0]["psnr_ode_per_image"] = [1.0]
    return {"name": name, "steps": 50, "baseline_nfe": 50, "variants": variants, "rows": rows}


def _results(*cells):
    return {"settings": {"seeds": [1000, 1031], "seed_set": "heldout"}, "cells": list(cells)}


GOOD = [49.0, 48.0, 40.0, 33.0, 28.0, 25.0, 20.0, 15.0]  # 9 counts with the exact run, down to 3.33x


def test_a_ladder_of_nine_monotone_counts_to_three_point_three_x_meets_the_goal():
    cell = _cell("a/unet/euler/karras/50", GOOD)
    assert [p[0] for p in dial_points(cell)] == [0.0, *TOLERANCES]
    assert dial_points(cell)[0] == (0.0, 50.0, 45.0, None)
    assert dial_points(cell)[-1] == (TOLERANCES[-1], 15.0, 37.0, None)
    check = dial_check(cell)
    assert check == {"distinct": 9, "monotone": True, "max_ratio": pytest.approx(50 / 15), "met": True}


def test_a_count_that_rises_with_the_tolerance_is_not_monotone():
    check = dial_check(_cell("b", [48.0, 40.0, 41.0, 28.0, 25.0, 20.0, 15.0]))
    assert check["monotone"] is False and check["met"] is False


def test_too_few_distinct_counts_or_too_little_range_fail_the_goal():
    assert dial_check(_cell("c", [50.0, 50.0, 28.0, 28.0, 28.0, 20.0, 15.0]))["distinct"] == 4
    assert dial_check(_cell("c", [50.0, 50.0, 28.0, 28.0, 28.0, 20.0, 15.0]))["met"] is False
    short = dial_check(_cell("d", [48.0, 44.0, 40.0, 36.0, 32.0, 28.0, 20.0]))
    assert short["distinct"] == 8 and short["max_ratio"] == 2.5 and short["met"] is False


def test_render_shows_each_point_and_tallies_the_goal():
    deltas = [0.6, 0.5, 0.4, 0.3, 0.2, 0.1, -0.75, -2.0]
    text = render_dial(
        _results(_cell("a/x/50", GOOD, deltas=deltas), _cell("b/x/50", [48.0, 40.0, 41.0, 28.0, 25.0, 20.0, 15.0]))
    )
    assert text.startswith(DIAL_BEGIN) and text.rstrip().endswith(DOCS_END)
    row = next(line for line in text.splitlines() if line.startswith("| a/x/50 "))
    assert "| 1.79x, +1.5 |" in row  # the default: 50 / 28
    assert "| 3.33x, -2.0 |" in row and row.endswith("| 9 | yes | met (up to 3.33x) |")
    unpeered = next(line for line in text.splitlines() if line.startswith("| b/x/50 "))
    assert "| 1.04x, 44.0 dB |" in unpeered  # no plain grid bracketed it: the PSNR itself
    assert unpeered.count("| not run |") == 1  # its run did not sweep the largest tolerance
    assert "| **no** | **not met** (up to 3.33x) |" in text
    assert "met in 1 of 2 cells" in text


def test_each_distinct_dial_point_is_labelled_with_its_tolerance_or_their_range_and_the_default_point_is_marked():
    rows = [
        {"method": "baseline", "NFE": 50.0, "PSNR vs ODE": 45.0},
        {"method": "SADA", "NFE": 22.0, "PSNR vs ODE": 44.0},
    ]
    points = [(48.0, 45.1), (30.0, 44.5), (22.0, 44.0), (22.0, 44.0), (22.0, 44.0), (15.0, 41.0), (12.0, 38.0)]
    rows += [{"method": dial_method(t), "NFE": n, "PSNR vs ODE": p} for t, (n, p) in zip(TOLERANCES, points)]
    labels = dial_labels({"name": "a", "rows": rows})
    assert labels == [
        (50.0, 45.0, "0"),
        (48.0, 45.1, "0.0005"),
        (30.0, 44.5, "0.001"),
        (22.0, 44.0, "0.002-0.01 = default"),
        (15.0, 41.0, "0.02"),
        (12.0, 38.0, "0.05"),
    ]  # 0.1 did not run: no label; the full run starts the dial
    assert dial_labels({"name": "b", "rows": rows[:2]}) == []  # no dial run, no labels (the matrix cells)


def test_render_without_a_tolerance_group_says_how_to_run_it():
    cell = _cell("a", [])
    with pytest.raises(ValueError, match="--groups tolerance"):
        render_dial(_results(cell))


def test_update_stores_the_json_and_replaces_only_the_section(tmp_path):
    run = tmp_path / "results.json"
    run.write_text(json.dumps(_results(_cell("a/x/50", GOOD))))
    page = tmp_path / "benchmarks.md"
    page.write_text(f"head\n{DIAL_BEGIN}\nold\n{DOCS_END}\ntail\n")
    assert main(["bench-report", str(run), "--dial", "--update", str(page)]) == 0
    stored = json.loads((tmp_path / "results" / "bench-dial-results.json").read_text())
    assert all("psnr_ode_per_image" not in row for row in stored["cells"][0]["rows"])
    assert page.read_text() == f"head\n{render_dial(stored)}tail\n"
    assert "![The dial, a/x/50](results/img/dial-pareto-a-x-50.png)" in page.read_text()
    assert (tmp_path / "results" / "img" / plot_name(stored["cells"][0])).stat().st_size > 1000  # drawn from the data
    page.write_text("no marker\n")
    with pytest.raises(ValueError, match="needs exactly one"):
        update_dial(run, page)


def test_bench_report_refuses_two_page_kinds_at_once(tmp_path):
    with pytest.raises(SystemExit, match="choose one of"):
        main(["bench-report", str(tmp_path / "r.json"), "--dial", "--matrix"])


def test_benchmarks_page_dial_section_is_the_rendering_of_the_stored_run():
    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "benchmarks.md").read_text()
    stored = json.loads((root / "docs" / "results" / "bench-dial-results.json").read_text())
    section = DIAL_BEGIN + page.split(DIAL_BEGIN, 1)[1].split(DOCS_END, 1)[0] + DOCS_END + "\n"
    assert section == render_dial(stored)
    assert "met in 20 of 20 cells" in section  # the dial goal, as measured
