"""The trajectory interface: schedules, exact conversions, synthesised outputs, drifts."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from benchmarks.lab.distributions import anisotropic_gaussian
from sada.trajectory import (
    PREDICTION_KINDS,
    DiscreteVPSchedule,
    EDMSchedule,
    RectifiedFlowSchedule,
    StepGrid,
    combine,
    convert,
    drift,
    edm_drift,
    split,
    synthesise_output,
    to_x0,
)

VP = DiscreteVPSchedule.from_beta_schedule("scaled_linear")
VP_LINEAR = DiscreteVPSchedule.from_beta_schedule("linear", beta_start=1e-4, beta_end=0.02)
VP_COS = DiscreteVPSchedule.from_beta_schedule("squaredcos_cap_v2")
SCHEDULES = {
    "vp": (VP, st.floats(0, 999)),
    "vp_cos": (VP_COS, st.floats(0, 990)),
    "ve": (EDMSchedule(), st.floats(0.002, 80)),
    "flow": (RectifiedFlowSchedule(), st.floats(0.001, 0.999)),
}
vectors = arrays(np.float64, 5, elements=st.floats(-3, 3))


@given(
    st.sampled_from(sorted(SCHEDULES)),
    st.data(),
    st.sampled_from(PREDICTION_KINDS),
    st.sampled_from(PREDICTION_KINDS),
    vectors,
    vectors,
)
def test_every_conversion_round_trips_to_1e_12(name, data, kind_a, kind_b, x0, eps):
    schedule, times = SCHEDULES[name]
    t = data.draw(times)
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(t))
    x = alpha * x0 + sigma * eps
    out_a = combine(kind_a, x0, eps, alpha, sigma)
    back = convert(convert(out_a, kind_a, kind_b, x, alpha, sigma), kind_b, kind_a, x, alpha, sigma)
    scale = 1 + (1 + sigma) / max(alpha, 1e-3) + sigma
    np.testing.assert_allclose(back, out_a, rtol=0, atol=1e-12 * scale * 10)
    got_x0, got_eps = split(kind_a, out_a, x, alpha, sigma)
    np.testing.assert_allclose(got_x0, x0, atol=1e-12 * scale * 10)
    np.testing.assert_allclose(got_eps, eps, atol=1e-12 * scale * 10)


@given(st.sampled_from(sorted(SCHEDULES)), st.data(), st.sampled_from(PREDICTION_KINDS), vectors, vectors)
def test_synthesised_output_makes_the_solver_recover_the_target_x0(name, data, kind, x, target):
    schedule, times = SCHEDULES[name]
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(data.draw(times)))
    out = synthesise_output(kind, target, x, alpha, sigma)
    np.testing.assert_allclose(to_x0(kind, out, x, alpha, sigma), target, atol=1e-11 * (1 + 1 / max(alpha, 1e-3)))


def test_synthesised_epsilon_is_reused_noise_plus_residual_over_sigma():
    alpha, sigma = 0.8, 0.6
    eps_prev, x, x_hat = np.array([0.3, -0.2]), np.array([1.0, 0.5]), np.array([0.9, 0.55])
    target = (x_hat - sigma * eps_prev) / alpha  # the paper's x0 estimate at the estimated state
    np.testing.assert_allclose(synthesise_output("epsilon", target, x, alpha, sigma), eps_prev + (x - x_hat) / sigma)


@given(st.sampled_from(["vp", "ve", "flow"]), st.data(), st.integers(0, 3))
def test_drift_of_the_exact_gaussian_denoiser_equals_the_analytic_drift(name, data, seed):
    schedule, times = SCHEDULES[name]
    t = data.draw(times)
    gauss = anisotropic_gaussian(6, seed=seed)
    mu, var = gauss.means[0], gauss.variances[0]
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(t))
    d_alpha, d_sigma = (float(v) for v in schedule.derivatives(t))
    s_tilde = sigma / alpha
    x_tilde = np.random.default_rng(seed).normal(size=(1, 6)) * (1 + s_tilde)
    x = alpha * x_tilde
    eps_model = gauss.eps(x_tilde, s_tilde)
    got = drift("epsilon", eps_model, x, alpha, sigma, d_alpha, d_sigma)
    # analytic: x~(s) = mu + (x~ - mu) sqrt((v + s^2)/(v + s0^2))  =>  dx~/ds = (x~ - mu) s / (v + s^2)
    dxt_ds = (x_tilde - mu) * s_tilde / (var + s_tilde**2)
    ds_dt = (d_sigma * alpha - sigma * d_alpha) / alpha**2
    expected = d_alpha * x_tilde + alpha * dxt_ds * ds_dt
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(edm_drift("epsilon", eps_model, x, alpha, sigma), dxt_ds, rtol=1e-10, atol=1e-12)


def test_vp_drift_is_half_beta_times_minus_x_plus_eps_over_sigma():
    t = 400.0
    alpha, sigma = (float(v) for v in VP.alpha_sigma(t))
    d_alpha, d_sigma = (float(v) for v in VP.derivatives(t))
    x, eps = np.array([0.3, -1.2]), np.array([0.5, 0.1])
    beta = float(VP.continuous_beta(t))
    np.testing.assert_allclose(
        drift("epsilon", eps, x, alpha, sigma, d_alpha, d_sigma), beta / 2 * (-x + eps / sigma), rtol=1e-12
    )


def test_beta_schedules_match_the_diffusers_formulas():
    np.testing.assert_allclose(VP.betas, np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, rtol=1e-10)
    np.testing.assert_allclose(VP_LINEAR.betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-10)
    assert VP_COS.betas.max() <= 0.999 + 1e-12
    assert math.isclose(VP.alphas_cumprod[-1], np.prod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2))
    assert math.isclose(float(VP.edm_sigma(999.0)), 14.6146, rel_tol=1e-4)  # SD's sigma_max


def test_timestep_spacings_match_diffusers():
    np.testing.assert_array_equal(VP.timesteps(10, "leading", steps_offset=1)[:3], [901, 801, 701])
    np.testing.assert_array_equal(VP.timesteps(10, "trailing")[:3], [999, 899, 799])
    np.testing.assert_array_equal(VP.timesteps(4, "linspace"), [999, 666, 333, 0])


def test_training_beta_is_looked_up_at_the_truncated_timestep():
    assert VP.training_beta(500.7) == VP.betas[500]


@given(st.floats(0.03, 14.0))
def test_time_from_edm_sigma_inverts_edm_sigma(s):
    t = VP.time_from_edm_sigma(s)
    assert math.isclose(float(VP.edm_sigma(t)), s, rel_tol=1e-9)


def test_flow_schedule_shift_and_edm_sigma():
    ts = RectifiedFlowSchedule().timesteps(4, shift=3.0)
    np.testing.assert_allclose(ts, [3 * t / (1 + 2 * t) for t in (1.0, 0.75, 0.5, 0.25)])
    assert math.isinf(float(RectifiedFlowSchedule().edm_sigma(1.0)))


def test_step_grid_quantities_and_abscissae():
    grid = StepGrid.from_times(VP, VP.timesteps(10, "trailing"))
    assert grid.num_steps == 10 and grid.sigma[-1] == 0.0 and grid.alpha[-1] == 1.0
    np.testing.assert_allclose(grid.edm_sigma[:-1], VP.edm_sigma(grid.times[:-1]))
    np.testing.assert_array_equal(grid.abscissae("index"), np.arange(11))
    np.testing.assert_allclose(grid.training_beta, VP.betas[grid.times[:-1].astype(int)])
    karras = EDMSchedule().karras(5)
    grid_ve = StepGrid.from_edm_sigmas(EDMSchedule(), np.append(karras, 0.0))
    np.testing.assert_allclose(grid_ve.sigma[:-1], karras)
    assert grid_ve.training_beta is None


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: to_x0("noise", 0.0, 0.0, 1.0, 1.0), "prediction kind must be one of"),
        (lambda: to_x0("epsilon", 0.0, 0.0, 0.0, 1.0), "alpha must be > 0"),
        (lambda: synthesise_output("epsilon", 0.0, 0.0, 1.0, 0.0), "sigma must be > 0"),
        (lambda: DiscreteVPSchedule.from_beta_schedule("cosine"), "beta_schedule must be one of"),
        (lambda: VP.alpha_sigma(1000.0), "t must lie in"),
        (lambda: VP.timesteps(10, "uniform"), "spacing must be"),
        (lambda: StepGrid.from_times(VP, [100.0, 500.0]), "strictly decrease"),
        (lambda: VP.time_from_edm_sigma(100.0), "edm_sigma must lie in"),
    ],
)
def test_invalid_input_names_the_bad_value(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


@pytest.mark.parametrize(
    "schedule, times, clean",
    [
        (RectifiedFlowSchedule(), RectifiedFlowSchedule().timesteps(8, shift=3.0), 0.0),
        (VP, VP.timesteps(8, "trailing"), -1.0),
        (EDMSchedule(), EDMSchedule().karras(8), 0.0),
    ],
)
def test_the_clean_end_has_the_schedules_real_time(schedule, times, clean):
    """Issue 19 item 4: ``times[-1]`` was NaN at the clean end, even for rectified flow where t = 0."""
    grid = StepGrid.from_times(schedule, times)
    assert grid.sigma[-1] == 0.0 and grid.times[-1] == clean == schedule.clean_time()
    assert np.all(np.isfinite(grid.times)) and np.all(np.isfinite(grid.abscissae("t")))
    if isinstance(schedule, DiscreteVPSchedule):
        # log alphas_cumprod extended linearly from t = 0 to t = -1 reaches alphas_cumprod = 1 (the 1.0 betas prepends)
        acp0 = VP.alphas_cumprod[0]
        assert math.isclose(math.exp(math.log(acp0) * (1 + clean)), 1.0) and math.isclose(1 - acp0, VP.betas[0])


def test_a_custom_flow_loop_that_reads_the_next_time_gets_finite_output():
    """Issue 19 item 4: ``x += (times[n + 1] - times[n]) * v`` returned all-NaN output, with no error."""
    flow = RectifiedFlowSchedule()
    grid = StepGrid.from_times(flow, flow.timesteps(10, shift=3.0))
    x0 = np.linspace(-1.0, 1.0, 6)
    eps = np.random.default_rng(0).standard_normal(6)
    x = grid.sigma[0] * eps  # t = 1: pure noise
    for n in range(grid.num_steps):
        x = x + (grid.times[n + 1] - grid.times[n]) * (eps - x0)  # the exact velocity of a straight path
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x, x0, atol=1e-12)


def test_a_grid_refuses_a_nan_time_and_a_schedule_without_a_clean_time():
    flow = RectifiedFlowSchedule()
    grid = StepGrid.from_times(flow, flow.timesteps(4))
    with pytest.raises(ValueError, match=r"times must be finite at every node .*clean_time"):
        StepGrid(grid.alpha, grid.sigma, np.append(grid.times[:-1], np.nan), "flow")
    with pytest.raises(ValueError, match="times must not increase"):
        StepGrid(grid.alpha, grid.sigma, grid.times[::-1], "flow")

    class NoCleanEnd(RectifiedFlowSchedule):
        def time_from_edm_sigma(self, edm_sigma):
            if np.any(np.asarray(edm_sigma) == 0):
                raise ValueError("edm_sigma must be > 0")
            return super().time_from_edm_sigma(edm_sigma)

    with pytest.raises(ValueError, match="NoCleanEnd has no time at the clean end .*override clean_time"):
        StepGrid.from_times(NoCleanEnd(), flow.timesteps(4))


def test_a_grid_that_jumps_to_the_clean_end_from_above_twice_the_smallest_level_is_noted_and_inputs_are_checked():
    from sada.trajectory import EARLY_END_RATIO, EDMSchedule, StepGrid, early_end_note

    schedule = EDMSchedule(0.002, 80.0)
    early = StepGrid.from_edm_sigmas(schedule, [10.0, 1.0, 0.2, 0.0])
    note = early_end_note(early, 0.05, "fix it")
    assert note.startswith(
        "the run jumps to the clean sample from sigma 0.2, 4.0x the model's smallest noise level 0.05"
    )
    assert note.endswith("; fix it (docs/troubleshooting.md)")
    assert early_end_note(early, 0.2 / EARLY_END_RATIO + 1e-9, "fix it") is None  # just under the ratio
    assert early_end_note(StepGrid.from_edm_sigmas(schedule, [10.0, 1.0, 0.2]), 0.05, "fix it") is None  # no jump
    with pytest.raises(ValueError, match="smallest_edm_sigma must be > 0, got 0.0"):
        early_end_note(early, 0.0, "fix it")
    with pytest.raises(TypeError, match="fix must be a non-empty string"):
        early_end_note(early, 0.05, "")
