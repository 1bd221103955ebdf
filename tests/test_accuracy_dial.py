"""The accuracy dial (``ErrorControl``, the default): its settings per host solver order, the monotone evaluation
count, runs of skips on first-order hosts and interleaving on higher-order ones, the protected tail, large steps that
compute, the float64 reference of its test, and the weight cache of the torch engine."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

from benchmarks.overhead import GaussianStub, _grid, run_once
from sada import SADAConfig, kernels
from sada.config import (
    DEFAULT_SCHEDULE,
    DIAL_BY_ORDER,
    MIN_SKIP_PREDICTIONS,
    ErrorControl,
    StepSchedule,
    grid_tolerance,
    higher_order_max_interval,
)
from sada.config.dial import spare_skip_note
from sada.errors import ExactRunWarning
from sada.policy import Decision, ErrorControlPolicy
from sada.reference import final_sample_sensitivity, multistep_estimate, skip_error
from sada.torch_backend.engine import SADAEngine
from sada.torch_backend.error_control import RecentPredictions
from sada.trajectory import EDMSchedule, StepGrid

HOSTS = {"first": ("flow", "flow_velocity", 1), "higher": ("vp", "epsilon", 2)}


def _run(config, family="vp", kind="epsilon", order=2, steps=50, batch=3, seed=0):
    grid = _grid(family, steps)
    engine = SADAEngine(config, grid, kind, solver_order=order)
    x = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x * float(grid.sigma[0]) if family != "flow" else x
    with torch.no_grad():
        _, final = run_once(engine, grid, GaussianStub(kind, (1, 16, 16)), x)
    return engine, final


def _runs_of_skips(decisions: np.ndarray) -> np.ndarray:
    computed = np.r_[True, decisions == Decision.COMPUTE, True]
    return np.diff(np.flatnonzero(computed)) - 1


def test_the_default_is_the_dial_with_its_settings_taken_from_the_solver_order():
    assert DEFAULT_SCHEDULE is ErrorControl
    assert SADAConfig().schedule == ErrorControl() == ErrorControl(tolerance=None, history=None, max_interval=None)
    assert ErrorControl().for_solver(1) == ErrorControl(
        tolerance=0.002, history=2, max_interval=6, relative_to="sample"
    )
    for order in (2, 3):
        assert ErrorControl().for_solver(order) == ErrorControl(
            tolerance=0.03, history=3, max_interval=2, relative_to="sample"
        )
    assert ErrorControl().for_solver(4).never_skips and "order 4" in ErrorControl().exact_note(4)
    assert (
        ErrorControl(max_interval=1).for_solver(4).max_interval == 1
        and ErrorControl(max_interval=1).exact_note(4) is None
    )
    assert ErrorControl(tolerance=0.1).for_solver(2) == ErrorControl(
        tolerance=0.1, history=3, max_interval=4, relative_to="sample"
    )
    assert ErrorControl(relative_to="clean").for_solver(1).relative_to == "clean"  # an explicit field is kept
    assert ErrorControl(relative_to="clean").for_solver(2).relative_to == "clean"
    assert ErrorControl(tolerance=0.1, max_interval=1).for_solver(2).max_interval == 1
    assert ErrorControl(max_interval=3).for_solver(1).max_interval == 3  # an explicit field is kept
    assert ErrorControl.abscissa_for(1) == "t" and ErrorControl.abscissa_for(3) == "sigma"
    assert set(DIAL_BY_ORDER) == {"first", "higher", "fourth"}
    with pytest.raises(ValueError, match="solver_order must be an int >= 1, got 0"):
        ErrorControl().for_solver(0)


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


@pytest.mark.parametrize("value, error", [(-0.1, ValueError), (1.0, ValueError), (True, TypeError), ("a", TypeError)])
def test_a_tolerance_outside_0_1_is_refused_with_its_value(value, error):
    with pytest.raises(error, match=f"tolerance must be a number.*{value!r}"):
        ErrorControl(tolerance=value)


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_the_evaluation_count_is_monotone_in_the_tolerance_from_the_exact_run(host):
    family, kind, order = HOSTS[host]
    counts = []
    for tolerance in (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5):
        engine, _ = _run(SADAConfig(tolerance=tolerance), family, kind, order)
        counts.append(int((engine.policy.decisions == Decision.COMPUTE).sum()))
    assert counts[0] == 50 * 3  # tolerance 0: the exact run
    assert all(a >= b for a, b in zip(counts, counts[1:])), counts
    assert counts[-1] < counts[0]


def test_tolerance_zero_is_bit_identical_to_the_plain_run():
    exact, final = _run(SADAConfig(tolerance=0.0), "flow", "flow_velocity", 1)
    plain, plain_final = _run(SADAConfig(max_interval=0), "flow", "flow_velocity", 1)
    assert SADAConfig(tolerance=0.0).never_skips and not exact.observes
    assert torch.equal(final, plain_final)


def test_a_first_order_host_skips_several_steps_in_a_row_where_the_trajectory_is_smooth():
    engine, _ = _run(SADAConfig(tolerance=0.05), "flow", "flow_velocity", 1)
    runs = _runs_of_skips(engine.policy.decisions[:, 0])
    assert runs.max() >= 3 and runs.max() <= DIAL_BY_ORDER["first"]["max_interval"]


def test_a_higher_order_host_never_skips_two_steps_in_a_row_by_default():
    engine, _ = _run(SADAConfig(tolerance=0.02), "vp", "epsilon", 2)
    d = engine.policy.decisions[:, 0]
    assert _runs_of_skips(d).max() == 1 and (d != Decision.COMPUTE).sum() >= 20


@pytest.mark.parametrize(
    "tolerance, cap", [(0.0, 1), (0.005, 1), (0.02, 1), (0.021, 2), (0.04, 2), (0.05, 3), (0.08, 3), (0.1, 4), (0.9, 4)]
)
def test_each_doubling_of_the_tolerance_past_0_01_allows_one_more_skip_in_a_row_on_a_higher_order_host(tolerance, cap):
    assert higher_order_max_interval(tolerance) == cap
    assert ErrorControl(tolerance=tolerance).for_solver(2).max_interval == cap
    if tolerance >= 0.1:  # the cap is reached where the trajectory allows it
        engine, _ = _run(SADAConfig(tolerance=tolerance), "vp", "epsilon", 2)
        assert _runs_of_skips(engine.policy.decisions[:, 0]).max() == cap


@pytest.mark.parametrize(
    "tolerance, step, cap",
    [
        (0.03, 0.119, 2),
        (0.03, 0.08, 3),
        (0.03, 0.059, 3),
        (0.02, 0.05, 2),
        (0.05, 0.05, 4),
        (0.1, 0.05, 4),
        (0.03, None, 2),
    ],
)
def test_a_fine_grid_allows_one_more_skip_in_a_row_up_to_four(tolerance, step, cap):
    fine = DIAL_BY_ORDER["higher"]["fine_log_snr_step"]
    assert (
        fine
        == DIAL_BY_ORDER["higher"]["coarse_log_snr_step"] / 2
        == DIAL_BY_ORDER["higher"]["very_coarse_log_snr_step"] / 6
    )
    assert higher_order_max_interval(tolerance, step) == cap
    assert ErrorControl(tolerance=tolerance).for_solver(2, step).max_interval == cap
    assert ErrorControl(tolerance=tolerance, max_interval=1).for_solver(3, step).max_interval == 1  # explicit: kept


def test_the_default_runs_three_skips_in_a_row_on_a_fine_grid_and_two_on_a_coarser_one():
    fine, _ = _run(SADAConfig(), "vp", "epsilon", 2, steps=100)
    coarse, _ = _run(SADAConfig(), "vp", "epsilon", 2, steps=50)
    assert fine.grid.median_log_snr_step <= DIAL_BY_ORDER["higher"]["fine_log_snr_step"]
    assert coarse.grid.median_log_snr_step > DIAL_BY_ORDER["higher"]["fine_log_snr_step"]
    assert _runs_of_skips(fine.policy.decisions[:, 0]).max() == 3
    assert _runs_of_skips(coarse.policy.decisions[:, 0]).max() == 2


def test_the_run_cap_of_a_higher_order_host_refuses_a_bad_tolerance_by_name():
    with pytest.raises(ValueError, match="tolerance must be finite, got nan"):
        higher_order_max_interval(float("nan"))
    with pytest.raises(ValueError, match="median_log_snr_step must be finite, got nan"):
        higher_order_max_interval(0.03, float("nan"))


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize("steps", [8, 15, 50])
def test_the_last_two_steps_always_run_the_network(host, steps):
    family, kind, order = HOSTS[host]
    engine, _ = _run(SADAConfig(schedule=ErrorControl(tolerance=0.9, max_interval=3)), family, kind, order, steps)
    d = engine.policy.decisions
    assert (d[-2:] == Decision.COMPUTE).all()
    assert (d != Decision.COMPUTE).any()  # it does skip elsewhere
    assert ErrorControlPolicy.protected_tail == 2


def test_the_policy_refuses_a_skip_of_the_second_to_last_step_even_when_allowed():
    policy = ErrorControlPolicy(ErrorControl(max_interval=4), num_steps=10, batch_size=2)
    for step in range(9):
        out = policy.decide(step, can_skip=np.ones(2, bool))
        expected = Decision.COMPUTE if step + 1 >= 8 or policy.cons_skip.max() > 4 else out[0]
        assert out[0] == expected
    assert (policy.decisions[8:] == Decision.COMPUTE).all() and (policy.decisions[1:8] != Decision.COMPUTE).any()


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_larger_steps_add_larger_estimated_errors_so_short_runs_skip_less(host):
    family, kind, order = HOSTS[host]
    fractions = []
    for steps in (10, 25, 100):
        engine, _ = _run(SADAConfig(tolerance=1e-3), family, kind, order, steps)
        errors = [np.nanmedian(v) for v in engine.trace.extras["skip_error"].values() if np.isfinite(v).any()]
        fractions.append(((engine.policy.decisions != Decision.COMPUTE).mean(), float(np.median(errors))))
    skipped, median_error = zip(*fractions)
    assert median_error[0] > median_error[1] > median_error[2]
    assert skipped[0] <= skipped[1] <= skipped[2] and skipped[2] > skipped[0]


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


def test_token_pruning_without_a_named_schedule_selects_the_step_schedule():
    assert isinstance(SADAConfig(max_downsample=1).schedule, StepSchedule)
    assert isinstance(SADAConfig(prune_blocks=(0, 1)).schedule, StepSchedule)
    assert isinstance(SADAConfig(max_downsample=1, tolerance=0.01).schedule, ErrorControl)  # an explicit choice stays
    assert isinstance(SADAConfig(schedule=ErrorControl(), max_downsample=1).schedule, ErrorControl)
    assert isinstance(SADAConfig(max_fix=7).schedule, ErrorControl)  # pruning settings without pruning enabled


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


@pytest.mark.parametrize(
    ("tolerance", "step", "cap"),
    [(0.03, 0.2, 1), (0.03, 0.16, 2), (0.02, 0.2, 1), (0.05, 0.2, 2), (0.1, 0.3, 3), (0.2, 0.2, 3), (0.03, 0.5, 1)],
)
def test_a_coarse_grid_allows_one_skip_in_a_row_fewer_but_never_none(tolerance, step, cap):
    assert higher_order_max_interval(tolerance, step) == cap
    assert ErrorControl(tolerance=tolerance).for_solver(2, step).max_interval == cap  # a set tolerance skips anyway


def test_on_a_very_coarse_grid_the_default_tolerance_tightens_and_a_tolerance_the_user_set_is_kept():
    very_coarse, coarse, fine = 0.53, 0.2, 0.12  # median log-SNR steps of 12, 30 and 50 Karras steps (shipped U-Net)
    tight = DIAL_BY_ORDER["higher"]["very_coarse_tolerance"]
    assert tight == 0.002 and DIAL_BY_ORDER["higher"]["very_coarse_log_snr_step"] == 0.48
    for order in (2, 3):
        dial = ErrorControl().for_solver(order, very_coarse)
        assert (dial.tolerance, dial.max_interval) == (tight, 1) and not dial.never_skips
        assert ErrorControl().very_coarse_grid(order, very_coarse)
    assert ErrorControl().for_solver(2, 0.48).tolerance == 0.03  # the limit itself is not very coarse
    assert ErrorControl().for_solver(2, coarse).max_interval == 1  # every other step at most, at the tolerance
    assert ErrorControl().for_solver(2, coarse).tolerance == 0.03
    assert ErrorControl().for_solver(2, fine) == ErrorControl().for_solver(2) == ErrorControl().for_solver(2, None)
    assert ErrorControl().exact_note(2, very_coarse) is None  # no grid makes the dial exact
    assert ErrorControl(tolerance=0.02).for_solver(2, very_coarse).tolerance == 0.02  # a set tolerance is kept
    assert ErrorControl(max_interval=1).for_solver(2, very_coarse).tolerance == 0.03  # so is the default with a cap
    assert not ErrorControl(tolerance=0.02).very_coarse_grid(2, very_coarse)
    assert not ErrorControl().very_coarse_grid(1, very_coarse) and not ErrorControl().very_coarse_grid(4, 9.0)
    with pytest.raises(ValueError, match="median_log_snr_step must be finite, got nan"):
        ErrorControl().for_solver(2, float("nan"))


def test_the_median_log_snr_step_of_a_grid_leaves_out_the_infinite_step_into_the_clean_end():
    grid = _grid("vp", 50)
    steps = np.diff(grid.log_snr)
    assert not np.isfinite(steps[-1]) and grid.median_log_snr_step == pytest.approx(np.median(steps[:-1]), abs=0)
    assert _grid("vp", 6).median_log_snr_step > 0.48 > 0.16 > _grid("vp", 50).median_log_snr_step


@pytest.mark.parametrize(
    ("step", "tolerance"), [(0.12, 0.002), (0.16, 0.002), (0.17, 0.005), (0.53, 0.005), (None, 0.002)]
)
def test_on_a_coarse_grid_a_first_order_host_loosens_the_default_tolerance_and_keeps_one_the_user_set(step, tolerance):
    assert DIAL_BY_ORDER["first"]["coarse_log_snr_step"] == 0.16 and DIAL_BY_ORDER["first"]["coarse_tolerance"] == 0.005
    dial = ErrorControl().for_solver(1, step)
    assert dial.tolerance == tolerance and dial.max_interval == 6 and dial.history == 2
    assert ErrorControl(tolerance=0.001).for_solver(1, step).tolerance == 0.001
    assert ErrorControl(max_interval=2).for_solver(1, step).tolerance == 0.002  # a set field keeps the order's own
    assert ErrorControl().grid_tolerance(1, step) == (None if tolerance == 0.002 else 0.005)
    assert ErrorControl().for_solver(4, step).tolerance == 0.02  # fourth order: no grid rule


def test_the_grid_tolerance_rule_refuses_an_unknown_order_class_and_a_non_finite_step_by_name():
    assert grid_tolerance("first", 0.2) == 0.005 and grid_tolerance("higher", 0.6) == 0.002
    assert grid_tolerance("higher", 0.2) is None and grid_tolerance("fourth", 9.0) is None
    with pytest.raises(ValueError, match="order_class must be one of .*got 'second'"):
        grid_tolerance("second", 0.2)
    with pytest.raises(ValueError, match="median_log_snr_step must be finite, got inf"):
        grid_tolerance("first", float("inf"))


def test_a_first_order_run_on_a_coarse_grid_notes_the_looser_tolerance_and_skips_more_than_the_tight_one():
    engine, _ = _run(SADAConfig(), "flow", "flow_velocity", 1, steps=12)
    step = engine.grid.median_log_snr_step
    assert step > DIAL_BY_ORDER["first"]["coarse_log_snr_step"]
    assert engine.trace.extras["dial"] == {"tolerance": 0.005, "max_interval": 6, "median_log_snr_step": step}
    notes = [text for n, text in engine.trace.notes if n == 0]
    assert any(text.startswith("the grid is coarse for a solver of order 1") for text in notes), notes
    assert any("uses tolerance=0.005 instead of 0.002" in text for text in notes)
    loose, _ = _run(SADAConfig(tolerance=0.005), "flow", "flow_velocity", 1, steps=12)  # the same run as setting it
    assert np.array_equal(loose.policy.decisions, engine.policy.decisions)
    tight, _ = _run(SADAConfig(tolerance=0.002), "flow", "flow_velocity", 1, steps=12)
    assert (tight.policy.decisions != Decision.COMPUTE).sum() < (engine.policy.decisions != Decision.COMPUTE).sum()
    fine, _ = _run(SADAConfig(), "flow", "flow_velocity", 1, steps=50)
    assert fine.trace.extras["dial"]["tolerance"] == 0.002
    assert not any("the grid is" in text for _, text in fine.trace.notes)


def test_a_default_run_on_a_very_coarse_grid_uses_the_tight_tolerance_says_so_and_does_not_warn_of_an_exact_run():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExactRunWarning)
        engine, _ = _run(SADAConfig(), "vp", "epsilon", 2, steps=6)
    step = engine.grid.median_log_snr_step
    assert step > DIAL_BY_ORDER["higher"]["very_coarse_log_snr_step"]
    assert engine.trace.extras["dial"] == {"tolerance": 0.002, "max_interval": 1, "median_log_snr_step": step}
    notes = [text for n, text in engine.trace.notes if n == 0]
    assert any(text.startswith("the grid is very coarse for a solver of order 2") for text in notes)
    assert any("uses tolerance=0.002 instead of 0.03" in text for text in notes)
    assert _runs_of_skips(engine.policy.decisions[:, 0]).max(initial=0) <= 1
    tight, _ = _run(SADAConfig(tolerance=0.002), "vp", "epsilon", 2, steps=6)  # the same run as setting it
    assert np.array_equal(tight.policy.decisions, engine.policy.decisions)
    loose, _ = _run(SADAConfig(tolerance=0.5), "vp", "epsilon", 2, steps=6)  # an explicit tolerance is kept
    assert (loose.policy.decisions != Decision.COMPUTE).sum() >= 1


def test_an_odd_step_count_with_one_skip_in_a_row_notes_the_unused_slot_and_one_more_step_takes_one_more_skip():
    odd, _ = _run(SADAConfig(), "vp", "epsilon", 2, steps=15)
    even, _ = _run(SADAConfig(), "vp", "epsilon", 2, steps=16)
    assert odd.trace.extras["dial"]["max_interval"] == even.trace.extras["dial"]["max_interval"] == 1
    skips = [(run.policy.decisions != Decision.COMPUTE).sum(axis=0).tolist() for run in (odd, even)]
    assert skips == [[5, 5, 5], [6, 6, 6]]  # 10 evaluations each: the 16th step is free
    spare = [text for n, text in odd.trace.notes if n == 0 and "stays unused" in text]
    assert spare == [
        "15 steps with at most one skip in a row: the skips can fall on every other step from the 4th to the 13th, "
        "so one step of that stretch stays unused; 15 and 16 steps both run 10 evaluations at the most skips, and "
        "the extra step makes every step shorter (docs/troubleshooting.md)"
    ]
    assert not any("stays unused" in text for _, text in even.trace.notes)
    two, _ = _run(SADAConfig(max_interval=2), "vp", "epsilon", 2, steps=15)  # two in a row: no spare slot
    assert not any("stays unused" in text for _, text in two.trace.notes)
    coarse, _ = _run(SADAConfig(), "vp", "epsilon", 2, steps=7)  # very coarse: skips are the exception, no note
    assert not any("stays unused" in text for _, text in coarse.trace.notes)
    assert spare_skip_note(1, 25, 2).startswith("25 steps") and "to the 23rd" in spare_skip_note(1, 25, 2)
    assert spare_skip_note(1, 16, 2) is None and spare_skip_note(1, 6, 2) is None
    with pytest.raises(ValueError, match="num_steps must be an int >= 0, got 15.0"):
        spare_skip_note(1, 15.0, 2)


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


@pytest.mark.parametrize("host, first_skip", [("higher", 3), ("first", 3)])
def test_the_first_skip_can_come_at_the_fourth_step_once_three_predictions_are_stored(host, first_skip):
    """A skip needs a line and the quadratic that estimates its error (``MIN_SKIP_PREDICTIONS``): the fourth step
    (index 3) at the earliest, on every host, also where a longer history is still filling."""
    family, kind, order = HOSTS[host]
    assert MIN_SKIP_PREDICTIONS == 3
    engine, _ = _run(SADAConfig(schedule=ErrorControl(tolerance=0.5, max_interval=1)), family, kind, order)
    d = engine.policy.decisions
    assert (d[:first_skip] == Decision.COMPUTE).all()
    assert (d[first_skip] != Decision.COMPUTE).all()


def test_the_trace_says_when_the_grid_changed_the_run_cap_and_records_the_resolved_dial():
    assert ErrorControl().grid_note(2, 0.2).startswith("the grid is coarse for a solver of order 2")
    assert "at most 1 step in a row, one fewer than tolerance=0.03" in ErrorControl().grid_note(2, 0.2)
    assert "at most 3 steps in a row, one more" in ErrorControl().grid_note(3, 0.05)
    assert ErrorControl().grid_note(2, 0.12) is None  # the tolerance's own cap
    assert ErrorControl().grid_note(2, 0.6).startswith("the grid is very coarse for a solver of order 2")
    assert ErrorControl(tolerance=0.03).grid_note(2, 0.6).startswith("the grid is coarse")  # set: kept, cap 1
    assert ErrorControl(max_interval=2).grid_note(2, 0.2) is None and ErrorControl().grid_note(1, 0.12) is None
    assert ErrorControl(tolerance=0.2).grid_note(2, 0.05) is None  # 4 in a row either way
    coarse, _ = _run(SADAConfig(), "vp", "epsilon", 2, steps=20)  # the trailing VP grid: 0.197
    step = coarse.grid.median_log_snr_step
    assert DIAL_BY_ORDER["higher"]["coarse_log_snr_step"] < step <= DIAL_BY_ORDER["higher"]["very_coarse_log_snr_step"]
    assert any(n == 0 and "the grid is coarse" in text for n, text in coarse.trace.notes)
    assert coarse.trace.extras["dial"] == {"tolerance": 0.03, "max_interval": 1, "median_log_snr_step": step}
    assert _runs_of_skips(coarse.policy.decisions[:, 0]).max() == 1
    plain, _ = _run(SADAConfig(), "vp", "epsilon", 2, steps=50)
    assert not any("the grid is" in text for _, text in plain.trace.notes)
    assert plain.trace.extras["dial"]["max_interval"] == 2
