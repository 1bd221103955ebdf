"""Latent-sized tensors the torch engine holds per sample (``trace.extras["latent_copies_per_sample"]``), per mode,
on 50-step runs shaped like the shipped models (the stub network of ``benchmarks.overhead``)."""

import pytest
import torch

from benchmarks.overhead import CONFIGS, GaussianStub, _grid, measure, run_once
from sada import SADAConfig
from sada.config import ErrorControl, StepSchedule
from sada.torch_backend.engine import SADAEngine

# (model, config) -> latent copies per sample, as documented in docs/torch-engine.md ("Memory")
EXPECTED = {
    ("unet", "default"): 4,
    ("mmdit", "default"): 3,
    ("unet", "step-schedule"): 10,
    ("mmdit", "step-schedule"): 9,
    ("unet", "paper"): 8,
    ("mmdit", "paper"): 2,
    ("unet", "error-controlled"): 10,
    ("mmdit", "error-controlled"): 8,
}


@pytest.mark.parametrize("model, config", sorted(EXPECTED))
def test_latent_copies_per_sample_per_mode(model, config):
    r = measure(model, config, steps=50, batch=2, repeats=1)
    assert r["latent_copies_per_sample"] == EXPECTED[model, config]


def _copies(config, family="vp", kind="epsilon", batch=2):
    grid = _grid(family, 50)
    engine = SADAEngine(config, grid, kind)
    x = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * float(grid.sigma[0])
    with torch.no_grad():
        run_once(engine, grid, GaussianStub(kind, (1, 16, 16)), x)
    extras = engine.trace.extras
    assert extras["latent_copies_per_sample"] * batch * 16 * 16 * 4 == extras["history_bytes"]
    assert f"({extras['latent_copies_per_sample']:g} latents per sample)" in engine.trace.summary()
    return extras["latent_copies_per_sample"]


def test_corrected_criterion_holds_at_most_8_latents_per_sample():
    assert (
        _copies(SADAConfig(schedule=StepSchedule(), criterion="corrected")) == 8
    )  # 3 noise predictions, x~^, 4 multistep nodes


def test_error_control_holds_its_recent_predictions_only():
    assert _copies(SADAConfig(schedule=ErrorControl())) == 4  # history + 1 = 3 + 1 (second-order host)
    assert _copies(SADAConfig(schedule=ErrorControl(history=4))) == 5
    assert _copies(SADAConfig(schedule=ErrorControl()), family="flow", kind="flow_velocity") == 4


def test_default_config_holds_at_most_8_latents_per_sample():
    assert SADAConfig().schedule == ErrorControl()
    assert _copies(SADAConfig()) <= 8


def test_configs_of_the_overhead_script_are_named():
    assert set(CONFIGS) == {"default", "step-schedule", "paper", "error-controlled"}
    with pytest.raises(ValueError, match="'vae'"):
        measure("vae", "default")
    with pytest.raises(ValueError, match="repeats must be a positive int, got 0"):
        measure("unet", "default", repeats=0)
