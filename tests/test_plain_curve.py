"""The plain-curve yardstick of ``benchmarks.plain_curve``: the trend line, its scatter and the best grid below."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.plain_curve import best_at_most, trend_at


@given(
    intercept=st.floats(20, 60),
    slope=st.floats(-5, 30),
    nfe=st.floats(20, 80),
)
def test_the_trend_reproduces_a_curve_that_is_linear_in_log_evaluations_with_zero_scatter(intercept, slope, nfe):
    evaluations = np.arange(10, 121)
    psnrs = intercept + slope * np.log(evaluations)
    value, scatter, points = trend_at(evaluations, psnrs, nfe)
    assert value == pytest.approx(intercept + slope * math.log(nfe), abs=1e-9)
    assert scatter == pytest.approx(0.0, abs=1e-9)
    assert points == int(np.sum((evaluations >= nfe / 1.25) & (evaluations <= nfe * 1.25)))


def test_the_scatter_is_the_rms_of_an_alternating_deviation_and_the_trend_ignores_it():
    evaluations = np.arange(20, 61)  # 41 grids; the window around 40 holds 32..50 (19 grids)
    wiggle = np.where(evaluations % 2 == 0, 2.0, -2.0)
    psnrs = 50 + 10 * np.log(evaluations) + wiggle
    value, scatter, points = trend_at(evaluations, psnrs, 40.0)
    assert points == 19
    assert scatter == pytest.approx(2.0, abs=0.02)
    assert value == pytest.approx(50 + 10 * math.log(40) + 2.0 / 19, abs=0.05)  # one more even grid than odd


def test_the_best_plain_grid_at_most_is_the_maximum_over_cheaper_grids_only():
    assert best_at_most([10, 20, 30, 40], [50.0, 58.0, 55.0, 70.0], 30) == 58.0
    assert best_at_most([10, 20, 30, 40], [50.0, 58.0, 55.0, 70.0], 40) == 70.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(evaluations=[10, 11], psnrs=[1.0, 2.0], nfe=10.5), "at least 3 plain grids"),
        (dict(evaluations=[10, 11, 12], psnrs=[1.0, 2.0], nfe=11), "one length"),
        (dict(evaluations=[10, 0, 12], psnrs=[1.0, 2.0, 3.0], nfe=11), "evaluations must be finite and > 0"),
        (dict(evaluations=[10, 11, 12], psnrs=[1.0, float("nan"), 3.0], nfe=11), "psnrs must be finite"),
        (dict(evaluations=[10, 11, 12], psnrs=[1.0, 2.0, 3.0], nfe=-1.0), "nfe must be finite and > 0"),
        (dict(evaluations=[10, 11, 12], psnrs=[1.0, 2.0, 3.0], nfe=11, span=1.0), "span must be finite and > 1"),
    ],
)
def test_the_trend_rejects_bad_input_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        trend_at(**kwargs)


def test_no_plain_grid_below_the_budget_is_an_error():
    with pytest.raises(ValueError, match="no plain grid uses at most 5"):
        best_at_most([10, 20], [1.0, 2.0], 5)


def test_the_plot_is_a_png_of_the_curve_and_the_runs(tmp_path):
    from benchmarks.plain_curve import save_plot

    plain = {s: (40.0 + s / 10, float(s)) for s in range(20, 40)}
    rows = [dict(steps=50, nfe=27.0, psnr=44.0, trend=42.7, scatter=0.5)]
    save_plot(plain, rows, "test", tmp_path / "curve.png")
    data = (tmp_path / "curve.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
