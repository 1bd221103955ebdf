"""``benchmarks.skip_sensitivity`` (where skips cost: SADA allowed to skip inside one window of steps at a time) and
the k-diffusion runner of ``benchmarks.dial_sweep`` / ``benchmarks.plain_curve``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.overhead import GaussianStub, _grid, run_once
from benchmarks.skip_sensitivity import _predicted, skips_only_within, window_bounds
from sada import SADAConfig
from sada.policy import Decision, ErrorControlPolicy
from sada.torch_backend.engine import SADAEngine
from sada.trace import Trace


def _decisions(config, steps=40, batch=2):
    grid = _grid("flow", steps)
    engine = SADAEngine(config, grid, "flow_velocity", solver_order=1)
    x = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        run_once(engine, grid, GaussianStub("flow_velocity", (1, 16, 16)), x)
    return engine.policy.decisions


@pytest.mark.parametrize("steps, windows", [(100, 3), (50, 5), (7, 7), (2, 1)])
def test_the_windows_cover_every_step_once_in_equal_shares(steps, windows):
    bounds = window_bounds(steps, windows)
    assert len(bounds) == windows and bounds[0][0] == 0 and bounds[-1][1] == steps
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@pytest.mark.parametrize("steps, windows, name", [(1, 1, "num_steps"), (10, 0, "windows"), (10, 11, "windows")])
def test_bad_windows_are_refused_by_name(steps, windows, name):
    with pytest.raises(ValueError, match=name):
        window_bounds(steps, windows)


def test_inside_the_block_no_step_outside_the_window_is_skipped_and_the_rule_still_skips_inside_it():
    config = SADAConfig(tolerance=0.05)
    everywhere = _decisions(config)
    with skips_only_within(10, 25):
        windowed = _decisions(config)
    skipped = np.flatnonzero((windowed != Decision.COMPUTE).any(axis=1))
    assert skipped.size >= 3 and skipped.min() >= 10 and skipped.max() < 25
    assert (everywhere[:10] != Decision.COMPUTE).any()  # without the veto the rule skips before the window too
    assert ErrorControlPolicy.decide is not None and "skips_only_within" not in ErrorControlPolicy.decide.__qualname__
    assert np.array_equal(_decisions(config), everywhere)  # the patch is gone after the block


def test_an_empty_window_is_refused():
    with pytest.raises(ValueError, match="start < end"):
        with skips_only_within(5, 5):
            pass


def test_the_prediction_sums_the_estimates_of_the_skipped_steps_only():
    trace = Trace(5, 2)
    trace.decisions[2] = [Decision.SKIP_LAGRANGE, Decision.COMPUTE]
    trace.decisions[3] = [Decision.SKIP_LAGRANGE, Decision.SKIP_LAGRANGE]
    trace.extras["skip_error"] = {2: [0.1, 0.2], 3: [0.01, float("nan")], 4: [0.5, 0.5]}
    assert _predicted(trace) == pytest.approx([0.11, 0.0])


@pytest.mark.parametrize(
    "model, sampler, overrides, message",
    [
        ("mmdit", "dpmpp_2m", {}, "U-Net only"),
        ("unet", "dpmpp_3m", {}, "sampler must be one of"),
        ("unet", "euler", {"use_karras_sigmas": True}, "family"),
        ("unet", "euler", {"family": "linear"}, "family must be one of"),
    ],
)
def test_the_k_diffusion_runner_refuses_what_it_cannot_run_by_name(model, sampler, overrides, message):
    from benchmarks.dial_sweep import KDiffusionCellRunner

    with pytest.raises(ValueError, match=message):
        KDiffusionCellRunner(model, sampler, overrides, 0, 2)
