"""Comparing a stored benchmark run with a new one, value by value (is a merged file what one run gives?)."""

import json

import pytest

from benchmarks.compare_results import Difference, compared_values, differences, main


def _row(method, nfe, psnr):
    return {"method": method, "NFE": nfe, "PSNR vs ODE": psnr, "SSIM vs ODE": 0.99, "PSNR vs full run": None}


def _run(*cells):
    return {"settings": {}, "cells": [{"name": name, "rows": rows} for name, rows in cells]}


STORED = _run(
    ("a/unet/euler/karras/50", [_row("baseline", 50.0, 40.0), _row("SADA", 20.0, 41.5)]),
    ("b/unet/heun/karras/50", [_row("baseline", 50.0, 42.0)]),
)


def test_identical_runs_have_no_difference_and_every_present_value_is_compared():
    assert differences(STORED, json.loads(json.dumps(STORED))) == []
    # 3 rows x 3 columns that hold a value ("PSNR vs full run" is None in both, "SSIM vs full run" absent)
    assert len(list(compared_values(STORED, STORED))) == 9


def test_a_changed_value_beyond_the_tolerance_is_reported_with_both_values_and_one_within_it_is_not():
    new = json.loads(json.dumps(STORED))
    new["cells"][0]["rows"][1]["PSNR vs ODE"] = 41.5 + 1e-6
    assert differences(STORED, new) == [Difference("a/unet/euler/karras/50", "SADA", "PSNR vs ODE", 41.5, 41.5 + 1e-6)]
    assert differences(STORED, new, rtol=1e-6) == []
    new["cells"][1]["rows"][0]["NFE"] = 49.0
    assert [(d.cell, d.what, d.new) for d in differences(STORED, new)][1] == ("b/unet/heun/karras/50", "NFE", 49.0)


def test_cells_and_methods_only_one_run_has_are_listed_first():
    new = _run(("a/unet/euler/karras/50", [_row("baseline", 50.0, 40.0)]), ("c/x/y/z/15", []))
    found = differences(STORED, new)
    assert found[:3] == [
        Difference("b/unet/heun/karras/50", None, "cell", True, False),
        Difference("c/x/y/z/15", None, "cell", False, True),
        Difference("a/unet/euler/karras/50", "SADA", "method", True, False),
    ]
    assert len(found) == 3


def test_a_value_that_became_nan_or_none_differs():
    new = json.loads(json.dumps(STORED))
    new["cells"][0]["rows"][0]["PSNR vs ODE"] = float("nan")
    new["cells"][1]["rows"][0]["SSIM vs ODE"] = None
    assert [d.what for d in differences(STORED, new)] == ["PSNR vs ODE", "SSIM vs ODE"]


def test_bad_inputs_fail_with_the_bad_value_named():
    with pytest.raises(ValueError, match="rtol must be a finite number >= 0, got -1"):
        differences(STORED, STORED, rtol=-1)
    with pytest.raises(ValueError, match="new must be a results.json of sada bench.*got list"):
        differences(STORED, [])


def test_the_command_exits_1_on_a_difference_and_0_on_none(tmp_path, capsys):
    stored, new = tmp_path / "stored.json", tmp_path / "new.json"
    stored.write_text(json.dumps(STORED))
    new.write_text(json.dumps(STORED))
    assert main([str(stored), str(new)]) == 0
    assert (
        "2 cells in both, 9 values compared, 0 differences; 0 cells only in the stored run" in capsys.readouterr().out
    )
    partial = _run(("b/unet/heun/karras/50", [_row("baseline", 50.0, 42.0)]))
    new.write_text(json.dumps(partial))
    assert main([str(stored), str(new)]) == 0  # a run over some of the cells: compared on those
    assert (
        "1 cells in both, 3 values compared, 0 differences; 1 cells only in the stored run" in capsys.readouterr().out
    )
    changed = json.loads(json.dumps(STORED))
    changed["cells"][0]["rows"][0]["NFE"] = 48.0
    new.write_text(json.dumps(changed))
    assert main([str(stored), str(new)]) == 1
    out = capsys.readouterr().out
    assert "a/unet/euler/karras/50  baseline  NFE: stored 50.0, new 48.0" in out and "1 difference;" in out
