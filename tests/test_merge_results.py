"""Merging a partial re-run into a stored benchmark run: cells replaced by name, goals recomputed, provenance kept."""

import json
from pathlib import Path

import pytest

from benchmarks.merge_results import main, merge_cells, merged_note
from benchmarks.render import render_markdown


def _cell(name, nfe, delta):
    peer = {"name": "karras, 25 steps", "psnr": 40.0, "delta": delta, "delta_2se": 0.2}
    return {
        "name": name,
        "steps": 50,
        "baseline_nfe": 50.0,
        "variants": {"SADA": {"NFE": nfe, "psnr_ode": 40.0 + delta, "peer": peer}},
        "rows": [],
    }


def _run(cells, **settings):
    base = {"seed_set": "heldout", "seeds": [1000, 1031], "num_seeds": 32, "batch": 16, "torch": "2.13.0+cpu"}
    base.update(diffusers="0.42.1", torch_threads=1, world_size=2, wall_s=600.0)
    base.update(settings)
    return {"settings": base, "references": {}, "cells": cells, "goals": []}


def test_merge_replaces_only_the_named_cells_and_recomputes_their_goals():
    base = _run([_cell("a/unet/euler/karras/50", 28.0, 1.0), _cell("b/unet/heun/karras/50", 28.0, -0.5)])
    update = _run([_cell("a/unet/euler/karras/50", 20.0, 3.0)], wall_s=120.0)
    merged = merge_cells(base, update)
    assert [c["variants"]["SADA"]["NFE"] for c in merged["cells"]] == [20.0, 28.0]
    goals = {g["cell"]: g for g in merged["goals"]}
    assert goals["a/unet/euler/karras/50"]["ratio"] == 2.5 and goals["a/unet/euler/karras/50"]["met"] is True
    assert goals["b/unet/heun/karras/50"]["delta"] == -0.5 and goals["b/unet/heun/karras/50"]["met"] is False
    record = merged["settings"]["merged"]
    assert record[0]["replaced"] == ["a/unet/euler/karras/50"] and record[0]["kept"] == ["b/unet/heun/karras/50"]
    assert base["cells"][0]["variants"]["SADA"]["NFE"] == 28.0  # the base is not modified
    note = merged_note(merged["settings"])
    assert "1 cells (a/unet/euler/karras/50) re-measured" in note and "2.0 min" in note


def test_a_merged_run_says_so_on_the_matrix_page():
    stored = json.loads((Path(__file__).resolve().parents[1] / "docs/results/bench-matrix-results.json").read_text())
    stored["settings"].pop("merged", None)  # as the full run wrote it
    update = {"settings": dict(stored["settings"], wall_s=60.0), "cells": [stored["cells"][3]]}
    merged = merge_cells(stored, update)
    assert merged["goals"] == stored["goals"]  # the same cell again: the same goals
    assert f"1 cells ({stored['cells'][3]['name']}) re-measured" in render_markdown(merged, matrix=True)
    assert "re-measured" not in render_markdown(stored, matrix=True)


def test_merge_refuses_runs_with_other_seeds_and_cells_the_base_lacks():
    base = _run([_cell("a", 28.0, 1.0)])
    with pytest.raises(ValueError, match="seeds"):
        merge_cells(base, _run([_cell("a", 20.0, 1.0)], seeds=[0, 31]))
    with pytest.raises(ValueError, match="cell 'z' is not in the base run"):
        merge_cells(base, _run([_cell("z", 20.0, 1.0)]))
    with pytest.raises(ValueError, match="must be a results.json"):
        merge_cells(base, {"cells": []})


def test_merge_command_writes_the_merged_results(tmp_path, capsys):
    (tmp_path / "base.json").write_text(json.dumps(_run([_cell("a", 28.0, 1.0), _cell("b", 28.0, 1.0)])))
    (tmp_path / "new.json").write_text(json.dumps(_run([_cell("b", 25.0, 2.0)])))
    assert main([str(tmp_path / "base.json"), str(tmp_path / "new.json"), "--out", str(tmp_path / "m.json")]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())
    assert [c["variants"]["SADA"]["NFE"] for c in merged["cells"]] == [28.0, 25.0]
    assert "1 of 2 cells replaced" in capsys.readouterr().out


def test_add_inserts_new_cells_in_the_matrix_order_and_the_page_says_they_were_added():
    first, new, last = (
        "diffusers/unet/heun/karras/100",
        "diffusers/unet/unipc/karras/50",
        "k-diffusion/unet/lms/karras/15",
    )
    base = _run([_cell(first, 60.0, 1.0), _cell(last, 15.0, 0.0)])
    base["settings"]["cells"] = [first, last]
    update = _run([_cell(new, 27.0, -0.5)], wall_s=300.0)
    with pytest.raises(ValueError, match="--add adds it"):
        merge_cells(base, update)
    merged = merge_cells(base, update, add=True)
    assert [c["name"] for c in merged["cells"]] == [first, new, last] == merged["settings"]["cells"]
    assert merged["settings"]["merged"][-1]["added"] == [new] and merged["settings"]["merged"][-1]["replaced"] == []
    assert {g["cell"] for g in merged["goals"]} >= {new}
    assert merged_note(merged["settings"]).startswith(f"1 cells ({new}) added by a later run (5.0 min")
