"""The benchmark harness on the shipped models (small settings; the real numbers come from `sada bench`)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("torchmetrics")

ASSETS = Path(__file__).resolve().parents[1] / "sada" / "assets"
pytestmark = pytest.mark.skipif(not (ASSETS / "digits-unet" / "sada_model.json").is_file(),
                                reason="shipped models not present")
ARGS = ["--model", "unet", "--steps", "15", "--batch", "2", "--seeds", "4", "--groups", "main", "--repeats", "1",
        "--methods", "SADA", "SADA, skipping disabled",
        "--threads", "1"]  # matmul round-off depends on the thread count; accelerate's workers run one each


def _rows(folder: Path) -> dict:
    data = json.loads((folder / "results.json").read_text())
    return {r["method"]: r for r in data["models"]["unet"]["rows"]}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-single")
    subprocess.run([sys.executable, "-m", "sada.cli", "bench", *ARGS, "--out", str(out)], check=True,
                   env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True)
    return out


def test_bench_writes_every_output_and_disabled_skipping_is_bit_identical(single):
    for name in ("results.json", "results.md", "grid-unet.png", "pareto-unet.png"):
        assert (single / name).is_file(), name
    rows = _rows(single)
    assert rows["SADA, skipping disabled"]["bit-identical"] and rows["SADA, skipping disabled"]["NFE"] == 15
    assert rows["baseline"]["NFE"] == 15 and rows["baseline"]["PSNR"] == 100.0
    sada = rows["SADA"]
    assert sada["NFE"] < 15 and 15 < sada["PSNR"] < 100 and 0 <= sada["accuracy"] <= 1
    assert rows["fewer steps ({}) = SADA's NFE".format(round(sada["NFE"]))]["NFE"] == round(sada["NFE"])
    assert "| SADA |" in (single / "results.md").read_text()


def test_sharded_run_over_two_processes_merges_to_the_single_process_results(single, tmp_path):
    pytest.importorskip("accelerate")
    out = tmp_path / "sharded"
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sada.cli", "bench", *ARGS,
                    "--out", str(out)], check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True)
    one, two = _rows(single), _rows(out)
    assert set(one) == set(two)
    for name in one:
        for key in ("NFE", "PSNR", "SSIM", "accuracy", "bit-identical"):
            assert one[name][key] == two[name][key], (name, key)
        # FD-digits: same images, but the merged report's classifier runs on rank 0's threads
        assert one[name]["FD-digits"] == pytest.approx(two[name]["FD-digits"], rel=1e-9), name


@pytest.mark.parametrize("size", ["tiny", "tiny-xl"])  # StableDiffusionPipeline and StableDiffusionXLPipeline
def test_timing_run_reports_every_method_with_consistent_evaluation_counts(size):
    from sada.bench.timing import run_timing

    rows = {r["method"]: r for r in run_timing(size, steps=15, batch=1, repeats=1)}
    assert rows["baseline"]["NFE"] == rows["SADA, skipping disabled"]["NFE"] == 15
    sada = rows["SADA"]["NFE"]
    assert sada < 15
    fewer = rows[f"fewer steps ({round(sada)})"]
    assert fewer["NFE"] == round(sada) and fewer["NFE speedup"] == pytest.approx(15 / round(sada))
    assert all(r["median_s"] > 0 and len(r["times_s"]) == 1 for r in rows.values())


def test_timing_run_rejects_steps_without_a_preset():
    from sada.bench.timing import run_timing

    with pytest.raises(ValueError, match="steps must be 50, 25 or 15"):
        run_timing("tiny", steps=20)
