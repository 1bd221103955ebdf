"""The dial's error estimate: the extrapolation it skips with, the embedded pair whose difference is the skip's
error, that error relative to the sample and its reach into the final sample (the float64 reference), pairs of a
history still filling, and the torch engine's cache of the pair's weights."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

from sada import SADAConfig, kernels
from sada.config import (
    ErrorControl,
)
from sada.reference import final_sample_sensitivity, multistep_estimate, skip_error
from sada.torch_backend.error_control import RecentPredictions
from sada.trajectory import EDMSchedule, StepGrid


@given(
    steps=st.integers(8, 60),
    at=st.integers(3, 200),
    coefficients=st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3),
)
def test_the_higher_order_default_extrapolates_a_clean_prediction_quadratic_in_the_noise_level_exactly(
    steps, at, coefficients
):
    # D(sigma) = x0 + O(sigma^2) at the clean end: a quadratic through the three latest predictions, written in the
    # abscissa the second-order dial defaults to, reproduces the skipped step's D up to rounding, clean end included.
    grid = StepGrid.from_edm_sigmas(EDMSchedule(), np.append(EDMSchedule().karras(steps), 0.0))
    at = 3 + at % (steps - 2)  # the skipped node: 3..steps (the last is sigma = 0)
    nodes = grid.abscissae(ErrorControl.abscissa_for(2))
    a, b, c = coefficients
    sigma = grid.edm_sigma
    clean = a + b * sigma + c * sigma**2
    estimate = multistep_estimate([[v] for v in clean[at - 3 : at]], nodes[at - 3 : at], nodes[at])
    scale = 1.0 + abs(a) + abs(b) * sigma[at - 3] + abs(c) * sigma[at - 3] ** 2
    assert abs(estimate[0] - clean[at]) <= 1e-9 * scale


def test_a_quadratic_in_log_snr_misses_what_one_in_the_noise_level_reproduces():
    grid = StepGrid.from_edm_sigmas(EDMSchedule(), np.append(EDMSchedule().karras(50), 0.0))
    clean = 0.3 + 0.5 * grid.edm_sigma**2
    at = 45

    def extrapolated(variable):
        nodes = grid.abscissae(variable)
        return multistep_estimate([[d] for d in clean[at - 3 : at]], nodes[at - 3 : at], nodes[at])[0]

    curvature = 0.5 * grid.edm_sigma[at] ** 2  # what D changes by between the clean end and this step
    assert abs(extrapolated("sigma") - clean[at]) < 1e-12
    assert abs(extrapolated("lambda") - clean[at]) > 0.5 * curvature


@given(
    history=st.integers(1, 4),
    coefficients=st.lists(st.floats(-2, 2), min_size=5, max_size=5),
    gaps=st.lists(st.floats(0.2, 1.0), min_size=5, max_size=5),
    h=st.floats(0.01, 3.0),
)
def test_the_embedded_pair_is_the_exact_error_of_the_estimate_on_polynomials_of_degree_history(
    history, coefficients, gaps, h
):
    """Values of a polynomial of degree ``history`` (in the abscissa): the pair's difference equals the estimate's true
    error, so ``skip_error`` is exactly ``(1 - e^-h) RMS(true error) / RMS(estimate)``; of lower degree it is 0."""
    nodes = -np.cumsum(gaps[: history + 1])  # newest first, descending away from the target at 0.5
    at = 0.5
    poly = np.polynomial.Polynomial(coefficients[: history + 1])
    values = [np.array([[poly(t), 2.0 * poly(t) + 1.0]]) for t in nodes]
    estimate = multistep_estimate(values[:history], nodes[:history], at)
    truth = np.array([[poly(at), 2.0 * poly(at) + 1.0]])
    expected = kernels.step_transfer(h) * kernels.relative_rms(truth - estimate, estimate)
    np.testing.assert_allclose(skip_error(values, nodes, at, h), expected, rtol=1e-7, atol=1e-9)
    lower = np.polynomial.Polynomial(coefficients[:history])
    flat = [np.array([[lower(t), 1.0]]) for t in nodes]
    np.testing.assert_allclose(skip_error(flat, nodes, at, h), 0.0, atol=1e-9)


@given(
    scale=st.floats(0.1, 10.0),
    h=st.floats(0.01, 3.0),
    seed=st.integers(0, 2**16),
)
def test_the_error_relative_to_the_sample_is_the_clean_relative_error_times_rms_estimate_over_rms_sample(
    scale, h, seed
):
    """``relative_to="sample"`` changes only the denominator: RMS of ``x / alpha`` instead of RMS of the estimate;
    both forms are invariant to the data's scale, and the torch ring computes the same number."""
    rng = np.random.default_rng(seed)
    nodes = np.array([0.0, -0.4, -0.9])
    values = [rng.standard_normal((2, 8)) for _ in nodes]
    sample = 3.0 * rng.standard_normal((2, 8))
    at = 0.5
    clean = skip_error(values, nodes, at, h)
    by_sample = skip_error(values, nodes, at, h, sample)
    estimate = multistep_estimate(values[:2], nodes[:2], at)
    rms = lambda v: np.sqrt((v**2).mean(axis=1))  # noqa: E731
    np.testing.assert_allclose(by_sample, clean * rms(estimate) / rms(sample), rtol=1e-10)
    scaled = skip_error([scale * v for v in values], nodes, at, h, scale * sample)
    np.testing.assert_allclose(scaled, by_sample, rtol=1e-9)
    recent = RecentPredictions(ErrorControl(history=2))
    for node, value in zip(nodes[::-1], values[::-1]):
        recent.push(np.ones(2, bool), node, torch.tensor(value))
    like = torch.zeros(2, dtype=torch.float64)
    torch.testing.assert_close(
        recent.skip_error(at, h, like, torch.tensor(sample)).numpy(), by_sample, rtol=1e-10, atol=0
    )


@given(data_rms=st.floats(0.2, 3.0), edm_sigma=st.floats(0.05, 20.0))
def test_an_error_of_x_over_alpha_reaches_the_final_sample_scaled_by_s_over_rms_of_the_sample_for_gaussian_data(
    data_rms, edm_sigma
):
    """The ODE ``dy/dsigma = (y - D(y, sigma)) / sigma`` with the exact denoiser of N(0, s^2) data,
    ``D = y s^2 / (s^2 + sigma^2)``, integrated from ``edm_sigma`` to 0: a perturbation of ``y = x / alpha`` arrives
    in the final sample multiplied by ``final_sample_sensitivity`` = ``s / sqrt(s^2 + sigma^2)``, which is ``s``
    over the expected RMS of ``y``: why the first-order dial measures a skip's error against ``x / alpha``."""
    s2 = data_rms**2

    def drift(sigma, y):
        return (y - y * s2 / (s2 + sigma**2)) / sigma

    def final(y0):
        return solve_ivp(drift, (edm_sigma, 1e-9), [y0], rtol=1e-11, atol=1e-13).y[0, -1]

    delta = 1e-3
    gain = (final(1.0 + delta) - final(1.0)) / delta
    expected = final_sample_sensitivity(data_rms, edm_sigma)
    assert gain == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(data_rms / math.sqrt(s2 + edm_sigma**2))
    assert 0 < expected <= 1  # the ODE contracts every error of y: less at lower noise


def test_relative_to_is_sample_or_clean_and_names_a_bad_value():
    assert ErrorControl(relative_to="clean").relative_to == "clean"
    with pytest.raises(ValueError, match="relative_to must be one of .*'noisy'"):
        ErrorControl(relative_to="noisy")
    with pytest.raises(ValueError, match="sample must have the shape"):
        skip_error([np.ones((1, 2))] * 3, [0.0, -1.0, -2.0], 1.0, 0.5, np.ones((1, 3)))
    with pytest.raises(ValueError, match="need data_rms > 0"):
        final_sample_sensitivity(0.0, 1.0)


def test_relative_to_is_a_flat_keyword_that_round_trips_and_overrides_the_host_default():
    config = SADAConfig(tolerance=0.005, relative_to="clean")  # the previous release's first-order default
    assert isinstance(config.schedule, ErrorControl) and config.schedule.relative_to == "clean"
    assert SADAConfig.from_dict(config.to_dict()) == config
    assert config.schedule.for_solver(1).relative_to == "clean"
    assert SADAConfig().schedule.for_solver(1).relative_to == "sample"
    assert SADAConfig().schedule.for_solver(2).relative_to == "sample"
    assert SADAConfig().replace(relative_to="clean").schedule.for_solver(2).relative_to == "clean"


def test_skip_error_names_a_bad_argument():
    values = [np.ones((1, 2))] * 3
    with pytest.raises(ValueError, match="h .* got -1"):
        skip_error(values, [0.0, -1.0, -2.0], 1.0, -1)
    with pytest.raises(ValueError, match="one value per node"):
        skip_error(values, [0.0, -1.0], 1.0, 0.5)
    with pytest.raises(ValueError, match="values contains NaN or Inf"):
        skip_error([np.full((1, 2), np.nan)] * 3, [0.0, -1.0, -2.0], 1.0, 0.5)


def test_cached_weights_follow_every_push_and_invalidation():
    """The weights are cached per history state: a quadratic is extrapolated exactly after every push (three of the
    four stored predictions), and a forgotten row gets no estimate (per-row weights where the rows' abscissae differ:
    the parity test against the numpy engine in test_torch_engine.py covers those)."""
    recent = RecentPredictions(ErrorControl(history=3))

    def quadratic(lam):
        return torch.full((2, 1, 2, 2), 1.0 + 0.5 * lam - 0.25 * lam**2, dtype=torch.float64)

    for lam in (0.0, 0.5, 1.0, 1.25):
        recent.push(np.ones(2, bool), lam, quadratic(lam))
    torch.testing.assert_close(recent.estimate(1.5), quadratic(1.5), rtol=1e-12, atol=1e-12)
    recent.push(np.ones(2, bool), 1.5, quadratic(1.5))
    torch.testing.assert_close(recent.estimate(2.5), quadratic(2.5), rtol=1e-12, atol=1e-12)
    assert torch.equal(recent.estimate(2.5), recent.estimate(2.5))  # served from the cache
    error = recent.skip_error(2.5, 0.3, quadratic(0.0))
    assert error.abs().max() < 1e-12  # the pair agrees on a quadratic
    recent.invalidate(np.array([True, False]))
    estimate = recent.estimate(2.5)
    assert torch.equal(estimate[0], torch.zeros_like(estimate[0]))
    torch.testing.assert_close(estimate[1:], quadratic(2.5)[1:], rtol=1e-12, atol=1e-12)


def test_a_history_still_filling_gets_a_pair_one_degree_lower_whose_difference_is_the_exact_error_on_a_quadratic():
    """Three stored predictions of a four-deep history (the fourth step of a second-order host): the skipped step
    gets the line through the newest two, and the pair's difference (quadratic minus line) is that line's exact
    error on a quadratic; two predictions are not enough for a skip."""
    recent = RecentPredictions(ErrorControl(history=3))

    def quadratic(lam):
        return torch.full((1, 1, 2, 2), 1.0 + 0.5 * lam - 0.25 * lam**2, dtype=torch.float64)

    for lam in (0.0, 0.5):
        recent.push(np.ones(1, bool), lam, quadratic(lam))
    assert not recent.ready(1).any() and torch.isnan(recent.skip_error(1.5, 0.3, quadratic(0.0))).all()
    recent.push(np.ones(1, bool), 1.0, quadratic(1.0))
    assert recent.ready(1).all()
    line = quadratic(1.0) + (quadratic(1.0) - quadratic(0.5)) / 0.5 * 0.5  # through 0.5 and 1.0, at 1.5
    torch.testing.assert_close(recent.estimate(1.5), line, rtol=1e-12, atol=1e-12)
    true_error = float((quadratic(1.5) - line).abs().max())
    expected = kernels.step_transfer(0.3) * true_error / float(line.abs().max())
    assert true_error > 0.01
    torch.testing.assert_close(
        recent.skip_error(1.5, 0.3, quadratic(0.0)), torch.tensor([expected], dtype=torch.float64)
    )


def test_rows_at_different_fill_levels_get_pairs_of_their_own_degree():
    """Row 0 forgotten and refilled with three predictions, row 1 holding four: row 1's estimate is exact on a
    quadratic (three nodes), row 0's is the line through its newest two."""
    recent = RecentPredictions(ErrorControl(history=3))

    def quadratic(lam):
        return torch.full((2, 1, 2, 2), 1.0 + 0.5 * lam - 0.25 * lam**2, dtype=torch.float64)

    for lam in (0.0, 0.5, 1.0, 1.25):
        recent.push(np.ones(2, bool), lam, quadratic(lam))
    recent.invalidate(np.array([True, False]))
    for lam in (1.5, 1.75, 2.0):
        recent.push(np.ones(2, bool), lam, quadratic(lam))
    assert recent.ring.count.tolist() == [3, 7]
    estimate = recent.estimate(2.5)
    torch.testing.assert_close(estimate[1], quadratic(2.5)[1], rtol=1e-12, atol=1e-12)
    line = quadratic(2.0)[0] + (quadratic(2.0)[0] - quadratic(1.75)[0]) * 2
    torch.testing.assert_close(estimate[0], line, rtol=1e-12, atol=1e-12)
