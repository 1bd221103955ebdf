"""Re-integrating a skipped stretch (``Numerics.reintegrate``): the interpolant's properties, the diffusers replay
erasing a skip's error where the clean predictions are quadratic in the noise level, per row, and when it applies."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

diffusers = pytest.importorskip("diffusers")

import sada.adapters.diffusers as sada_d  # noqa: E402
from sada import SADAConfig  # noqa: E402
from sada.adapters._diffusers_replay import SchedulerReplay  # noqa: E402
from sada.adapters._diffusers_scheduler import describe_scheduler  # noqa: E402
from sada.policy import Decision  # noqa: E402
from sada.torch_backend.reintegration import (  # noqa: E402
    FIRST_ORDER_FINE_GRID,
    StretchNodes,
    protected_tail,
    replay_applies,
    stretch_abscissae,
)
from sada.torch_backend.session import SADASession  # noqa: E402
from sada.trajectory import RectifiedFlowSchedule, StepGrid, to_eps  # noqa: E402
from tests import diffusers_fixtures as fx  # noqa: E402

C, S = int(Decision.COMPUTE), int(Decision.SKIP_LAGRANGE)


def _vp_grid(steps=10):
    return StepGrid.from_times(RectifiedFlowSchedule(), np.linspace(0.95, 0.05, steps))


@settings(max_examples=25, deadline=None)
@given(coefficients=st.lists(st.floats(-3, 3), min_size=3, max_size=3), skipped=st.integers(1, 3))
def test_the_interpolant_through_the_nodes_around_a_stretch_reproduces_every_quadratic_in_sigma(coefficients, skipped):
    grid = _vp_grid()
    nodes, s = StretchNodes(grid), stretch_abscissae(grid)
    a, b, c = coefficients

    def x0(step):
        return torch.full((1, 3), a + b * s[step] + c * s[step] ** 2, dtype=torch.float64)

    computed_steps = [0, 1, 2 + skipped]
    for step in range(3 + skipped):
        starts = nodes.push(step, x0(step), np.array([step in computed_steps]))
    assert list(starts) == [1] and starts[1].tolist() == [True]
    torch.testing.assert_close(nodes.computed_x0(), x0(1))
    for j in range(2, 2 + skipped):
        torch.testing.assert_close(nodes.interpolate(j), x0(j), rtol=1e-9, atol=1e-9)


def test_the_interpolation_error_falls_with_the_cube_of_the_spacing():
    """Third order: halving the spacing of the nodes around the skipped level divides the error by ~8."""
    errors = []
    for h in (0.2, 0.1, 0.05):
        grid = StepGrid.from_times(RectifiedFlowSchedule(), np.linspace(0.8, 0.8 - 3 * h, 4))
        nodes, s = StretchNodes(grid), stretch_abscissae(grid)
        for step in range(4):
            nodes.push(step, torch.tensor([[np.exp(s[step])]], dtype=torch.float64), np.array([step != 2]))
        errors.append(abs(float(nodes.interpolate(2)) - np.exp(s[2])))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(orders > 2.7) and np.all(orders < 3.3), orders


def test_only_rows_that_compute_after_a_skip_with_three_nodes_reintegrate_grouped_by_their_start():
    nodes = StretchNodes(_vp_grid())
    x = torch.zeros(3, 2)
    plan = [[1, 1, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]]  # rows: computed at which steps
    starts = {}
    for step, row in enumerate(plan):
        starts = nodes.push(step, x, np.array(row, bool))
    # row 0 skipped step 3 (last computed 2); row 1 skipped step 2 (last computed 3, no stretch now); row 2 skipped
    # step 1 and computed 2, 3 (no stretch now)
    assert {k: v.tolist() for k, v in starts.items()} == {2: [True, False, False]}
    assert nodes.oldest_start() == 4
    with pytest.raises(ValueError, match="computed must be a bool mask of the 3 rows"):
        nodes.push(5, x, np.ones(2, bool))
    with pytest.raises(ValueError, match="step 12 is outside the grid's 11 levels"):
        nodes.push(12, x, np.ones(3, bool))
    with pytest.raises(TypeError, match="grid must be a StepGrid"):
        stretch_abscissae("grid")


def _scheduler(name, prediction):
    cls = getattr(diffusers, name)
    if name == "FlowMatchEulerDiscreteScheduler":
        return cls()
    return cls(prediction_type=prediction, use_karras_sigmas=True)


def _run(name, decisions, prediction="sample", reintegrate=True, hold="clean"):
    """A run of ``name`` (Karras sigmas, float64) fed the exact clean predictions ``a + b s + c s^2`` where the plan
    computes and wrong ones where it skips; returns the final sample and the trace's re-integration counts. This
    model's clean prediction does not depend on the sample, so the replay holds the clean prediction (``hold``)."""
    scheduler = _scheduler(name, prediction)
    scheduler.set_timesteps(len(decisions))
    info = describe_scheduler(scheduler)
    grid, calls = info.grid_for_run(scheduler, 0)
    decisions = np.asarray(decisions, np.int8)
    session = SADASession(grid, info.kind, SADAConfig(), replay=decisions, solver_order=info.order)
    replay = SchedulerReplay(session, hold=hold) if reintegrate else None
    gen = torch.Generator().manual_seed(0)
    batch = decisions.shape[1]
    a, b, c = (torch.randn(batch, 2, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    x = (
        torch.randn(batch, 2, 4, 4, generator=gen, dtype=torch.float64)
        * float(getattr(scheduler, "init_noise_sigma", 1.0))
        * 10
    )
    original = type(scheduler).step.__get__(scheduler)
    for n in range(len(decisions) - 1):  # the last step returns the clean prediction itself
        compute = session.plan(n, x)
        s = float(scheduler.sigmas[n])
        alpha, sigma = float(grid.alpha[n]), float(grid.sigma[n])
        exact = a + b * s + c * s**2
        output = {
            "sample": exact,
            "epsilon": (x - alpha * exact) / sigma if info.kind == "epsilon" else None,
            "flow_velocity": (x - exact) / sigma,
        }[info.kind]
        out = session.complete(n, x, output)  # then a skip's estimate that missed:
        out = out + 3.0 * torch.as_tensor(~compute).view(-1, 1, 1, 1)
        if replay is not None:
            x, out = replay.before_step(n, scheduler, original, scheduler.timesteps[n], x, out, compute)
        x = original(out, calls[n], x, return_dict=False)[0].to(torch.float64)
    return x, session.trace.extras.get("reintegrated_steps", {})


@pytest.mark.parametrize(
    "name, prediction",
    [
        ("UniPCMultistepScheduler", "sample"),
        ("UniPCMultistepScheduler", "epsilon"),
        ("DPMSolverMultistepScheduler", "sample"),
        ("DPMSolverMultistepScheduler", "epsilon"),
        ("FlowMatchEulerDiscreteScheduler", "flow"),
    ],
)
def test_reintegration_erases_each_rows_skips_when_the_clean_predictions_are_quadratic_in_sigma(name, prediction):
    """Two samples skipping different stretches (steps 3; steps 4-5) re-integrate separately, each from its own last
    computed step, and both end where the run fed the exact outputs on every step ends (the replay holding the clean
    prediction, which this model keeps whatever the sample)."""
    plan = np.array([[C, C], [C, C], [C, C], [S, C], [C, S], [C, S], [C, C], [C, C], [C, C]])
    exact, _ = _run(name, np.full_like(plan, C), prediction)
    replayed, counts = _run(name, plan, prediction)
    kept, _ = _run(name, plan, prediction, reintegrate=False)
    tol = 1e-9 if prediction == "sample" else 1e-5
    torch.testing.assert_close(replayed, exact, rtol=tol, atol=tol)
    assert counts == {4: 1, 6: 2}  # sample 0's one skipped step at step 4, sample 1's two at step 6
    assert (kept - exact).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # without it, both samples keep an error


@pytest.mark.parametrize(
    "name, prediction",
    [
        ("DPMSolverMultistepScheduler", "epsilon"),
        ("UniPCMultistepScheduler", "sample"),
        ("FlowMatchEulerDiscreteScheduler", "flow"),
    ],
)
def test_the_default_replay_holds_the_networks_noise_estimate_at_the_reintegrated_sample(name, prediction):
    """Where a row computes after skips, step ``n`` gets the re-integrated sample and an output whose noise estimate
    there is the network's at its own sample (its clean prediction moved by ``(x' - x) / alpha``); rows that did not
    re-integrate keep the network's output bit for bit."""
    scheduler = _scheduler(name, prediction)
    scheduler.set_timesteps(9)
    info = describe_scheduler(scheduler)
    grid, calls = info.grid_for_run(scheduler, 0)
    plan = np.array([[C, C], [C, C], [C, C], [S, C], [C, C], [C, C], [C, C], [C, C], [C, C]], np.int8)
    session = SADASession(grid, info.kind, SADAConfig(), replay=plan, solver_order=info.order)
    replay, original = SchedulerReplay(session), type(scheduler).step.__get__(scheduler)
    with pytest.raises(ValueError, match="hold must be 'noise' .* got 'both'"):
        SchedulerReplay(session, hold="both")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 4, 4, generator=gen, dtype=torch.float64) * float(getattr(scheduler, "init_noise_sigma", 1))
    for n in range(5):
        compute = session.plan(n, x)
        network = torch.randn(2, 2, 4, 4, generator=gen, dtype=torch.float64)
        out = session.complete(n, x, network)
        stepped_x, stepped_out = replay.before_step(n, scheduler, original, scheduler.timesteps[n], x, out, compute)
        if n == 4:  # row 0 re-integrates its skipped step 3 here, row 1 computed throughout
            alpha, sigma = float(grid.alpha[n]), float(grid.sigma[n])
            canon = session.canonical

            def eps(output, sample):
                return to_eps(info.kind, output, canon(sample, n), alpha, sigma)

            assert not torch.equal(stepped_x[0], x[0]) and torch.equal(stepped_x[1], x[1])
            torch.testing.assert_close(eps(stepped_out, stepped_x)[0], eps(network, x)[0], rtol=1e-9, atol=1e-9)
            assert torch.equal(stepped_out[1], network[1])
        x = original(stepped_out, calls[n], stepped_x, return_dict=False)[0].to(torch.float64)
    assert replay.session.trace.extras["reintegrated_steps"] == {4: 1}


def test_reintegration_applies_by_the_solver_order_and_the_setting():
    def info(name):
        return describe_scheduler(fx.scheduler(name))

    unipc, euler, heun = info("UniPCMultistepScheduler"), info("EulerDiscreteScheduler"), info("HeunDiscreteScheduler")
    flow = info("FlowMatchEulerDiscreteScheduler")
    assert replay_applies(SADAConfig(), unipc, True)[0]
    assert "re-integrated" in replay_applies(SADAConfig(), unipc, True)[1]
    assert not replay_applies(SADAConfig(), euler, True)[0] and not replay_applies(SADAConfig(), flow, True)[0]
    # first order: from the dial's tolerance 0.01 on (the default, 0.002, stays off)
    assert (
        replay_applies(SADAConfig(tolerance=0.01), flow, True)[0]
        and replay_applies(SADAConfig(tolerance=0.02), euler, True)[0]
    )
    assert not replay_applies(SADAConfig(tolerance=0.005), euler, True)[0]
    # ... and at any tolerance on a fine grid (median log-SNR step <= 0.08: long runs of skips)
    for steps, fine in [(120, True), (30, False)]:
        scheduler = fx.scheduler("EulerDiscreteScheduler")
        scheduler.set_timesteps(steps)
        grid, _ = euler.grid_for_run(scheduler, 0)
        assert (grid.median_log_snr_step <= FIRST_ORDER_FINE_GRID) is fine
        assert replay_applies(SADAConfig(), euler, True, grid)[0] is fine
        assert replay_applies(SADAConfig(tolerance=0.001), euler, True, grid)[0] is fine
    assert not replay_applies(SADAConfig(acc_range=(10, 47)), euler, True)[0]  # a step schedule has no tolerance
    assert replay_applies(SADAConfig(acc_range=(10, 47)), unipc, True)[0]
    assert replay_applies(SADAConfig(reintegrate=True), flow, True)[0]
    assert replay_applies(SADAConfig(reintegrate=True), heun, True) == (
        False,
        "no re-integration of skipped steps: HeunDiscreteScheduler evaluates the model twice per step",
    )
    assert not replay_applies(SADAConfig(reintegrate=False), unipc, True)[0]
    assert not replay_applies(SADAConfig(), unipc, False)[0]  # a peer engine
    assert not replay_applies(SADAConfig(max_interval=0), unipc, True)[0]  # never skips: bit-identical
    assert not replay_applies(SADAConfig(mode="paper", acc_range=(10, 47)), unipc, True)[0]
    with pytest.raises(ValueError, match="reintegrate=True needs mode='corrected'"):
        SADAConfig(mode="paper", acc_range=(10, 47), reintegrate=True)
    with pytest.raises(TypeError, match="reintegrate must be True, False or None, got 'yes'"):
        SADAConfig(reintegrate="yes")
    assert SADAConfig.from_json(SADAConfig(reintegrate=False).to_json()) == SADAConfig(reintegrate=False)


def test_a_unipc_pipeline_reintegrates_by_default_and_says_so_in_the_trace():
    pipe = fx.sd_pipeline("UniPCMultistepScheduler")
    with sada_d.enabled(pipe, SADAConfig(tolerance=0.1)) as handle:
        on = fx.sd_call(pipe)
        trace = handle.trace
    with sada_d.enabled(pipe, SADAConfig(tolerance=0.1, reintegrate=False)) as handle:
        off = fx.sd_call(pipe)
        trace_off = handle.trace
    assert sum(trace.extras["reintegrated_steps"].values()) > 0
    assert any("re-integrated" in text for _, text in trace.notes)
    assert "reintegrated_steps" not in trace_off.extras
    assert not any("re-integrated" in text for _, text in trace_off.notes)
    assert not torch.equal(on, off) and torch.isfinite(on).all()


def test_a_reintegrating_run_protects_only_the_last_step_on_a_vp_grid_at_a_loose_dial_else_the_last_two():
    scheduler = fx.scheduler("UniPCMultistepScheduler")
    scheduler.set_timesteps(20)
    vp, _ = describe_scheduler(scheduler).grid_for_run(scheduler, 0)
    assert vp.family == "vp" and protected_tail(vp, 0.03) == 1 and protected_tail(vp, 0.01) == 1
    assert protected_tail(vp, 0.005) == 2 and protected_tail(vp, None) == 2  # a tight dial, a step schedule
    assert protected_tail(_vp_grid(), 0.1) == 2  # a rectified-flow grid
    with pytest.raises(TypeError, match="grid must be a StepGrid, got list"):
        protected_tail([1.0, 0.5], 0.03)
    with pytest.raises(TypeError, match="tolerance must be a number or None, got '0.03'"):
        protected_tail(vp, "0.03")


def test_a_unipc_pipeline_that_reintegrates_lets_the_second_to_last_step_skip_and_says_so():
    pipe = fx.sd_pipeline("UniPCMultistepScheduler")
    skipped_second_to_last = {}
    for reintegrate in (None, False):
        with sada_d.enabled(pipe, SADAConfig(tolerance=0.1, reintegrate=reintegrate)) as handle:
            fx.sd_call(pipe, steps=10)  # at 10 steps the cap of 0.1 reaches the second-to-last step
            trace = handle.trace
        assert (trace.decisions[-1] == Decision.COMPUTE).all()
        skipped_second_to_last[reintegrate] = bool((trace.decisions[-2] != Decision.COMPUTE).any())
        noted = any("the second-to-last step may skip" in text for _, text in trace.notes)
        assert noted is (reintegrate is None)
    assert skipped_second_to_last == {None: True, False: False}
