"""The benchmark harness on the shipped models (tiny settings; the real numbers come from `sada bench`)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("torchmetrics")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "benchmarks" / "assets"
pytestmark = pytest.mark.skipif(
    not (ASSETS / "digits-unet" / "sada_model.json").is_file(), reason="shipped models not present"
)
CELL = "diffusers/unet/dpmpp_2m/karras/15"
METHODS = ["SADA", "SADA, skipping disabled", "SADA, tolerance 0.02"]  # 15 Karras steps: a coarse grid
ARGS = [
    "--cells",
    CELL,
    "--seeds",
    "2",
    "--batch",
    "1",
    "--reference-steps",
    "16",
    "--repeats",
    "1",
    "--methods",
    *METHODS,
    "--threads",
    "1",
]  # matmul round-off depends on the thread count; accelerate's workers run one each


@pytest.fixture(autouse=True)
def one_torch_thread():
    """In-process runs use one thread like the subprocess runs (and like a machine shared with other jobs,
    where a second spinning thread can make each step many times slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cell(folder: Path) -> dict:
    data = json.loads((folder / "results.json").read_text())
    return next(c for c in data["cells"] if c["name"] == CELL)


def _rows(folder: Path) -> dict:
    return {r["method"]: r for r in _cell(folder)["rows"]}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-single")
    subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", "bench", *ARGS, "--out", str(out), "--cache", str(out / "cache")],
        check=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        capture_output=True,
    )
    return out


def test_bench_writes_every_output_and_scores_against_the_ode_solution(single):
    slug = CELL.replace("/", "-")
    for name in ("results.json", "results.md", f"grid-{slug}.png", f"pareto-{slug}.png"):
        assert (single / name).is_file(), name
    data = json.loads((single / "results.json").read_text())
    check = data["references"]["unet/vp"]
    assert check["seeds"] == [1000] and 25 < check["psnr_min"] < 100  # 16 vs 8 solver steps agree loosely
    rows = _rows(single)
    disabled, base, sada = rows["SADA, skipping disabled"], rows["baseline"], rows["SADA"]
    assert disabled["bit-identical"] and disabled["NFE"] == 15 and base["NFE"] == 15
    assert base["PSNR vs full run"] == 100.0 and 25 < base["PSNR vs ODE"] < 60
    # 15 Karras steps are a coarse grid: the default skips every other step from the fourth; re-integrating, only the
    # last step is protected (3 + 6 computed: steps 0-2 and every other step from the fifth to the last)
    assert sada["NFE"] == 9 and not sada["bit-identical"] and 20 < sada["PSNR vs ODE"] < 60
    assert sada["PSNR vs ODE"] == pytest.approx(sum(sada["psnr_ode_per_image"]) / 2, abs=0.5)
    dial = rows["SADA, tolerance 0.02"]  # a set tolerance has the same cap (one in a row) on this grid
    assert dial["NFE"] == 9 and 20 < dial["PSNR vs ODE"] < 60 and len(dial["psnr_ode_per_image"]) == 2
    assert sada["wall s"] > 0 and base["wall/NFE"] == 1.0 and "wall s" not in disabled  # the control is not timed
    families = {r["family"] for r in rows.values() if r["method"].startswith("plain: ")}
    assert families == {"karras", "trailing", "same ends"}  # every spacing at the default's 9 evaluations
    peer = _cell(single)["variants"]["SADA"]["peer"]
    assert peer["family"] in families and sada["Δ vs peer"] == pytest.approx(
        sada["PSNR vs ODE"] - peer["psnr"], abs=1e-4
    )
    assert "| SADA | " in (single / "results.md").read_text()


def test_the_same_configuration_run_twice_gives_identical_evaluations_and_psnr(single, tmp_path):
    """A second run in another process with a fresh reference cache: the references and every image are
    recomputed, and every number matches the first run exactly."""
    from benchmarks.cells import select_cells
    from benchmarks.run import run_benchmark

    run_benchmark(
        cells=select_cells([CELL]),
        num_seeds=2,
        batch=1,
        methods_filter=METHODS,
        repeats=0,
        out=tmp_path,
        cache_dir=tmp_path / "cache",
        reference_steps=16,
        progress_bar=False,
    )
    first, second = _rows(single), _rows(tmp_path)
    assert set(first) == set(second)
    for name in first:
        for key in ("NFE", "PSNR vs ODE", "PSNR vs full run", "SSIM vs ODE", "psnr_ode_per_image", "bit-identical"):
            assert first[name][key] == second[name][key], (name, key)


def test_sharded_run_over_two_processes_merges_to_the_single_process_results(single, tmp_path):
    pytest.importorskip("accelerate")
    out = tmp_path / "sharded"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "benchmarks.cli",
            "bench",
            *ARGS,
            "--repeats",
            "0",
            "--out",
            str(out),
            "--cache",
            str(out / "cache"),
        ],
        check=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        capture_output=True,
    )
    one, two = _rows(single), _rows(out)
    assert set(one) == set(two)
    for name in one:
        for key in ("NFE", "PSNR vs ODE", "PSNR vs full run", "SSIM vs ODE", "accuracy", "bit-identical"):
            assert one[name][key] == two[name][key], (name, key)
        # FD-digits: same images, but the merged report's classifier runs on rank 0's threads
        assert one[name]["FD-digits"] == pytest.approx(two[name]["FD-digits"], rel=1e-9), name


def test_reference_cache_returns_the_stored_images_only_for_an_exact_key(tmp_path):
    import torch

    from benchmarks.models import load_model
    from benchmarks.reference import ReferenceSpec, reference_images

    model = load_model("unet")
    spec = ReferenceSpec("unet", "edm", 3.0, steps=8)
    computed = []
    first = reference_images(model, spec, [1000], [0], tmp_path, on_compute=lambda: computed.append(1))
    again = reference_images(model, spec, [1000], [0], tmp_path, on_compute=lambda: computed.append(2))
    assert computed == [1] and torch.equal(first, again)
    other = reference_images(
        model, ReferenceSpec("unet", "edm", 2.5, steps=8), [1000], [0], tmp_path, on_compute=lambda: computed.append(3)
    )
    assert computed == [1, 3] and not torch.equal(first, other)
    assert len(list((tmp_path / "references").iterdir())) == 2


def test_bench_report_regenerates_a_page_section_from_a_run(single, tmp_path):
    from benchmarks.cli import main
    from benchmarks.render import DOCS_BEGIN, DOCS_END, render_file

    page = tmp_path / "page.md"
    page.write_text(f"# Title\n\nprose\n\n{DOCS_BEGIN}\nold numbers\n{DOCS_END}\n\nmore prose\n")
    assert main(["bench-report", str(single / "results.json"), "--update", str(page)]) == 0
    stored = json.loads((tmp_path / "results" / "bench-results.json").read_text())
    assert all("psnr_ode_per_image" not in r for c in stored["cells"] for r in c["rows"])
    text = page.read_text()
    assert text.startswith("# Title\n\nprose\n\n") and text.endswith("\n\nmore prose\n") and "old numbers" not in text
    section = text[text.index(DOCS_BEGIN) : text.index(DOCS_END) + len(DOCS_END)] + "\n"
    assert section == render_file(tmp_path / "results" / "bench-results.json", docs=True)
    assert not (tmp_path / "bench-results.json").exists()  # generated files stay out of the hand-written pages' folder
    assert f"| {CELL} | " in section and "| baseline |" not in section  # not a main cell: no detail table


def test_bench_report_matrix_page_shows_every_cell_with_its_pareto_plot(single, tmp_path):
    from PIL import Image

    from benchmarks.cli import main
    from benchmarks.render import DOCS_END, MATRIX_BEGIN, render_file

    page = tmp_path / "matrix.md"  # the matrix page lives in the results folder, beside its JSON and img/
    page.write_text(f"# Matrix\n\n{MATRIX_BEGIN}\nold\n{DOCS_END}\n")
    assert main(["bench-report", str(single / "results.json"), "--matrix", "--update", str(page)]) == 0
    assert not (tmp_path / "bench-results.json").exists()  # the benchmarks page's stored run is left alone
    text = page.read_text()
    section = text[text.index(MATRIX_BEGIN) : text.index(DOCS_END) + len(DOCS_END)] + "\n"
    assert section == render_file(tmp_path / "bench-matrix-results.json", matrix=True)
    slug = CELL.replace("/", "-")
    rows = {r["method"]: r for r in _cell(single)["rows"]}
    ratio = rows["baseline"]["NFE"] / rows["SADA"]["NFE"]
    assert f"| {CELL.rsplit('/', 1)[0]} | {ratio:.2f}x, " in section  # the pivot: one row per configuration
    assert f"### {CELL}" in section and "| baseline |" in section  # every cell's detail table, even off the main job
    assert f"](img/matrix-pareto-{slug}.png)" in section and "bench-grid" not in section
    with Image.open(tmp_path / "img" / f"matrix-pareto-{slug}.png") as image:
        assert image.mode == "P"  # stored compact


def test_matrix_update_also_regenerates_the_summary_on_the_benchmarks_page_beside_it(single, tmp_path):
    from benchmarks.cli import main
    from benchmarks.render import DOCS_BEGIN, DOCS_END, MATRIX_BEGIN, SUMMARY_BEGIN, render_matrix_summary

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "matrix.md").write_text(f"{MATRIX_BEGIN}\n{DOCS_END}\n")
    bench = tmp_path / "benchmarks.md"
    bench.write_text(f"a\n{SUMMARY_BEGIN}\nold\n{DOCS_END}\nb\n{DOCS_BEGIN}\nkept\n{DOCS_END}\nc\n")
    assert (
        main(
            [
                "bench-report",
                str(single / "results.json"),
                "--matrix",
                "--update",
                str(tmp_path / "results" / "matrix.md"),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "results" / "bench-matrix-results.json").read_text())
    assert bench.read_text() == f"a\n{render_matrix_summary(data)}b\n{DOCS_BEGIN}\nkept\n{DOCS_END}\nc\n"


def test_render_refuses_both_page_kinds_at_once(single):
    from benchmarks.render import render_file

    with pytest.raises(ValueError, match="choose one"):
        render_file(single / "results.json", docs=True, matrix=True)


def test_docs_page_tables_are_the_rendering_of_the_stored_results():
    from benchmarks.render import DOCS_BEGIN, DOCS_END, render_file

    page = (ROOT / "docs" / "benchmarks.md").read_text()
    start = page.index(DOCS_BEGIN)
    stored = page[start : page.index(DOCS_END, start) + len(DOCS_END)] + "\n"
    assert stored == render_file(ROOT / "docs" / "results" / "bench-results.json", docs=True)


def test_benchmarks_page_matrix_summary_is_the_rendering_of_the_stored_full_run():
    from benchmarks.render import DOCS_END, SUMMARY_BEGIN, render_matrix_summary

    page = (ROOT / "docs" / "benchmarks.md").read_text()
    start = page.index(SUMMARY_BEGIN)
    stored = page[start : page.index(DOCS_END, start) + len(DOCS_END)] + "\n"
    data = json.loads((ROOT / "docs" / "results" / "bench-matrix-results.json").read_text())
    assert stored == render_matrix_summary(data)
    assert "| diffusers/mmdit/flow_euler/shift1 |" in stored and "| k-diffusion/unet/lms/karras |" in stored


def test_matrix_page_is_the_rendering_of_the_stored_full_run():
    from benchmarks.cells import FULL_MATRIX
    from benchmarks.render import DOCS_END, MATRIX_BEGIN, render_file

    results = ROOT / "docs" / "results"
    page = (results / "benchmark-matrix.md").read_text()
    stored = page[page.index(MATRIX_BEGIN) : page.index(DOCS_END) + len(DOCS_END)] + "\n"
    assert stored == render_file(results / "bench-matrix-results.json", matrix=True)
    data = json.loads((results / "bench-matrix-results.json").read_text())
    assert [c["name"] for c in data["cells"]] == [c.name for c in FULL_MATRIX]
    assert data["settings"]["seed_set"] == "heldout"
    for cell in FULL_MATRIX:
        assert (results / "img" / f"matrix-pareto-{cell.slug}.png").is_file(), cell.name


@pytest.mark.parametrize("size", ["tiny", "tiny-xl"])  # StableDiffusionPipeline and StableDiffusionXLPipeline
def test_timing_run_reports_every_method_with_consistent_evaluation_counts(size):
    from benchmarks.timing import run_timing

    rows = {r["method"]: r for r in run_timing(size, steps=15, batch=1, repeats=1)}
    assert rows["baseline"]["NFE"] == rows["SADA, skipping disabled"]["NFE"] == 15
    sada = rows["SADA"]["NFE"]
    assert sada < 15
    fewer = rows[f"fewer steps ({round(sada)})"]
    assert fewer["NFE"] == round(sada) and fewer["NFE speedup"] == pytest.approx(15 / round(sada))
    assert all(r["median_s"] > 0 and len(r["times_s"]) == 1 for r in rows.values())


def test_timing_run_rejects_steps_without_a_preset():
    from benchmarks.timing import run_timing

    with pytest.raises(ValueError, match="steps must be 50, 25 or 15"):
        run_timing("tiny", steps=20)


def test_timing_run_rejects_an_unknown_compile_mode_naming_it():
    from benchmarks.timing import run_timing

    with pytest.raises(ValueError, match="compile_mode must be one of .* got 'fast'"):
        run_timing("tiny", steps=15, compile_mode="fast")


def test_dial_peers_bracket_every_dial_point_and_the_dial_report_shows_its_difference(tmp_path):
    """With ``dial_peers`` each tolerance point gets plain grids around its evaluation count and its paired
    difference to the best of them, which ``bench-report --dial`` prints signed."""
    from benchmarks.cells import select_cells
    from benchmarks.dial_report import render_dial
    from benchmarks.run import run_benchmark

    run_benchmark(
        cells=select_cells([CELL]),
        num_seeds=2,
        batch=2,
        methods_filter=["SADA, tolerance 0.02"],
        repeats=0,
        out=tmp_path,
        cache_dir=tmp_path / "cache",
        reference_steps=16,
        progress_bar=False,
        dial_peers=True,
    )
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["settings"]["dial_peers"] is True
    rows = _rows(tmp_path)
    dial = rows["SADA, tolerance 0.02"]
    assert dial["NFE"] < 15
    plain = {r["method"]: r for r in rows.values() if r["method"].startswith("plain: ")}
    assert any(r["NFE"] <= dial["NFE"] for r in plain.values()) and any(r["NFE"] >= dial["NFE"] for r in plain.values())
    assert dial["equal-NFE peer"] and math.isfinite(dial["Δ vs peer"]) and dial["Δ 2se"] >= 0
    assert f"{15 / dial['NFE']:.2f}x, {dial['Δ vs peer']:+.1f} |" in render_dial(data)


def test_the_third_order_cells_start_from_the_vp_state_and_unipc_has_no_custom_timestep_family():
    from benchmarks.cells import FULL_MATRIX, Cell
    from benchmarks.grids import grid_families
    from benchmarks.models import SCHEDULER_SETTINGS

    names = {c.name for c in FULL_MATRIX}
    for sampler in ("unipc", "dpmpp_3m"):
        cell = Cell.parse(f"diffusers/unet/{sampler}/karras/50")
        assert cell.name in names and cell.reference_start == "vp"
    assert grid_families(Cell.parse("diffusers/unet/unipc/karras/50")) == ("trailing", "karras")
    assert grid_families(Cell.parse("diffusers/unet/dpmpp_3m/karras/50")) == ("trailing", "karras", "same ends")
    assert SCHEDULER_SETTINGS["dpmpp_3m"] == {"solver_order": 3}


def test_the_flow_multistep_cells_shift_with_flow_shift_and_have_no_same_ends_family():
    from benchmarks.cells import Cell
    from benchmarks.grids import grid_families, plain_grid, resolve_grid
    from benchmarks.models import load_model

    model = load_model("mmdit")
    for sampler in ("flow_unipc", "flow_dpmpp_2m"):
        cell = Cell.parse(f"diffusers/mmdit/{sampler}/shift3/50")
        assert cell.reference_start == "flow"
        assert grid_families(cell) == ("shift 1", "shift 3")
        grid = plain_grid(cell, "shift 3", 10, model)
        assert grid.overrides == (("flow_shift", 3.0),)
        scheduler = model.scheduler(sampler, **dict(grid.overrides))
        assert scheduler.config.use_flow_sigmas and scheduler.config.prediction_type == "flow_prediction"
        _, sigmas = resolve_grid(cell, grid, model)
        # the shifted flow grid: sigma' = 3 s / (1 + 2 s) of the unshifted one, ending at 0
        _, unshifted = resolve_grid(cell, plain_grid(cell, "shift 1", 10, model), model)
        expected = 3 * unshifted[:-1] / (1 + 2 * unshifted[:-1])
        assert np.allclose(sigmas[:-1], expected, rtol=1e-5) and sigmas[-1] == 0
    euler = Cell.parse("diffusers/mmdit/flow_euler/shift3/50")
    assert plain_grid(euler, "shift 3", 10, model).overrides == (("shift", 3.0),)
    assert grid_families(euler) == ("shift 1", "shift 3", "same ends")


def test_euler_and_heun_also_meet_the_karras_grid_that_ends_at_the_noise_tables_smallest_level():
    from benchmarks.cells import Cell
    from benchmarks.grids import grid_families, plain_grid, resolve_grid, same_grid
    from benchmarks.models import load_model

    model = load_model("unet")
    smallest = float(
        ((1 - model.scheduler("euler").alphas_cumprod[0]) / model.scheduler("euler").alphas_cumprod[0]) ** 0.5
    )
    for sampler in ("euler", "heun"):
        cell = Cell.parse(f"diffusers/unet/{sampler}/trailing/50")
        assert grid_families(cell) == ("trailing", "karras", "karras linspace", "same ends")
        _, karras = resolve_grid(cell, plain_grid(cell, "karras", 10, model), model)
        _, fixed = resolve_grid(cell, plain_grid(cell, "karras linspace", 10, model), model)
        # same start, same step count; the configured spacing ends 11.7x above the table's smallest level, the fix at it
        assert karras[0] == pytest.approx(fixed[0]) and karras.size == fixed.size and karras[-1] == fixed[-1] == 0
        assert karras[-2] == pytest.approx(11.7 * smallest, rel=0.01) and fixed[-2] == pytest.approx(smallest, rel=1e-3)
    dpm = Cell.parse("diffusers/unet/dpmpp_2m/trailing/50")  # its Karras grid spans the whole table already
    assert "karras linspace" not in grid_families(dpm)
    overrides = dict(plain_grid(Cell.parse("diffusers/unet/heun/karras/50"), "karras linspace", 10, model).overrides)
    linspace = plain_grid(dpm, "karras", 10, model)
    linspace = type(linspace)("karras", 10, overrides=tuple(overrides.items()))
    assert same_grid(resolve_grid(dpm, plain_grid(dpm, "karras", 10, model), model), resolve_grid(dpm, linspace, model))
