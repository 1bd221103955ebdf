"""The benchmark harness never writes into the shipped bundles by default and never unpickles what it reads back
(issue 19, items 6 and 7)."""

import hashlib
import re
from pathlib import Path

import pytest
import torch

import benchmarks.train as train
from benchmarks.classifier import ASSETS_DIR

ROOT = Path(__file__).resolve().parents[1]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def cheap_sampling(monkeypatch):
    """Sampling replaced by a constant image (the bundle and the classifier are still loaded for real)."""

    def sample(bundle, labels, steps=50, guidance_scale=None, seed=0):
        return torch.zeros(len(labels), 1, 16, 16)

    monkeypatch.setattr(train, "sample_unet", sample)
    monkeypatch.setattr(train, "sample_mmdit", sample)


def test_eval_only_without_out_leaves_the_shipped_bundle_untouched(cheap_sampling, tmp_path, monkeypatch):
    """``python -m benchmarks.train --eval-only`` rewrote benchmarks/assets/digits-unet/sada_model.json."""
    before = _digest(ASSETS_DIR)
    shipped = (ASSETS_DIR / "digits-unet" / "sada_model.json").read_bytes()
    monkeypatch.chdir(tmp_path)
    try:
        train.main(["--model", "unet", "--eval-only"])
    finally:
        after = _digest(ASSETS_DIR)
        if after != before:  # put the shipped file back before failing
            (ASSETS_DIR / "digits-unet" / "sada_model.json").write_bytes(shipped)
    assert after == before
    report = tmp_path / "sada-train-out" / "digits-unet-eval.json"
    assert report.is_file() and '"class_accuracy"' in report.read_text()


def test_library_calls_never_default_to_the_shipped_bundles():
    with pytest.raises(ValueError, match="record=True needs the bundle's path"):
        train.evaluate_bundle("unet", record=True)
    with pytest.raises(ValueError, match="out must name the folder of the new bundle, got None"):
        train.train_diffusion("unet", steps=1)


def test_bundles_is_only_for_eval_only(capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--model", "unet", "--bundles", "x"])
    assert info.value.code == 2 and "--bundles is for --eval-only" in capsys.readouterr().err


class _Planted:
    """What an attacker writes into the output folder: unpickling it would run code."""

    ran = []

    def __reduce__(self):
        return (_Planted.ran.append, ("code ran",))


class _OneProcess:
    def wait_for_everyone(self):
        pass


def test_merging_the_ranks_results_unpickles_nothing(tmp_path):
    """The merge read ``rank{r}.pt`` with ``torch.load(weights_only=False)``: a planted file ran code."""
    from benchmarks.run import _gather

    folder = tmp_path / ".shard-cell"
    folder.mkdir()
    torch.save({"SADA": {"images": {1: torch.ones(1)}, "planted": _Planted()}}, folder / "rank1.pt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        _gather({"SADA": {"images": {0: torch.zeros(1)}}}, folder, 0, 2, _OneProcess())
    assert _Planted.ran == []


def test_merged_results_are_bit_identical_to_the_ranks_own(tmp_path):
    import numpy as np

    from benchmarks.run import _gather

    folder = tmp_path / ".shard-cell"
    images1 = {1: torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))}
    part1 = {
        "SADA": {
            "images": images1,
            "rows": 7,
            "n_samples": 2,
            "trace": "computed 3/5 steps",
            "state_bytes": 1234,
            "timing": {"median_s": 0.1 + 0.2, "times_s": [1 / 3]},
        },
        "skipped": {"skipped": "not for this sampler"},
    }
    folder.mkdir()
    torch.save(part1, folder / "rank1.pt")
    images0 = {0: torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))}
    part0 = {
        "SADA": {
            "images": dict(images0),
            "rows": np.int64(5),
            "n_samples": 2,
            "trace": None,
            "state_bytes": None,
            "timing": None,
        },
        "skipped": {"skipped": "not for this sampler"},
    }
    merged = _gather(part0, folder, 0, 2, _OneProcess())
    sada = merged["SADA"]
    assert torch.equal(sada["images"][0], images0[0]) and torch.equal(sada["images"][1], images1[1])
    assert sada["rows"] == 12 and type(sada["rows"]) is int and sada["n_samples"] == 4
    assert sada["timing"] == {"median_s": 0.1 + 0.2, "times_s": [1 / 3]}  # the same float bits
    assert merged["skipped"] == {"skipped": "not for this sampler"} and not folder.exists()


def test_nothing_in_the_project_unpickles():
    """Every ``torch.load`` passes ``weights_only=True``; no ``pickle``, ``np.load(allow_pickle)``."""
    offenders = []
    for path in [*ROOT.glob("sada/**/*.py"), *ROOT.glob("adapters/**/*.py"), *ROOT.glob("benchmarks/**/*.py")]:
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in match.group(0):
                offenders.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
        for bad in ("import pickle", "allow_pickle=True", "weights_only=False"):
            if bad in text:
                offenders.append(f"{path.relative_to(ROOT)}: {bad}")
    assert offenders == []
