"""The schedule-free default (``ErrorControl``): its settings, its interleaving, the protected tail, the order of its
error scale, the routing of token pruning to the step schedule, and the weight cache of the torch engine."""

import numpy as np
import pytest
import torch

from benchmarks.overhead import GaussianStub, _grid, run_once
from sada import SADAConfig
from sada.config import DEFAULT_SCHEDULE, ErrorControl, StepSchedule
from sada.policy import Decision, ErrorControlPolicy
from sada.torch_backend.engine import SADAEngine
from sada.torch_backend.error_control import RecentPredictions


def _run(config, family="vp", kind="epsilon", order=2, steps=50, batch=3, seed=0):
    grid = _grid(family, steps)
    engine = SADAEngine(config, grid, kind, solver_order=order)
    x = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x * float(grid.sigma[0])
    with torch.no_grad():
        _, final = run_once(engine, grid, GaussianStub(kind, (1, 16, 16)), x)
    return engine, final


def test_the_default_is_schedule_free_with_tolerance_8_three_nodes_and_single_skips():
    assert DEFAULT_SCHEDULE is ErrorControl
    assert SADAConfig().schedule == ErrorControl() == ErrorControl(tolerance=8.0, history=3, max_interval=1)


def test_the_default_interleaves_computed_and_skipped_steps_after_its_history_fills():
    engine, _ = _run(SADAConfig())
    d = engine.policy.decisions[:, 0]
    assert (d[:3] == Decision.COMPUTE).all()  # nodes = 3 computed predictions before the first skip
    skipped = np.flatnonzero(d != Decision.COMPUTE)
    assert skipped[0] == 3 and np.all(np.diff(skipped) == 2)  # every other step from then on
    assert (engine.policy.decisions == engine.policy.decisions[:, :1]).all()  # the same for every sample here


@pytest.mark.parametrize("family, kind, order", [("vp", "epsilon", 2), ("flow", "flow_velocity", 1)])
@pytest.mark.parametrize("steps", [8, 15, 50])
def test_the_last_two_steps_always_run_the_network(family, kind, order, steps):
    engine, _ = _run(SADAConfig(schedule=ErrorControl(tolerance=1e9, max_interval=3)), family, kind, order, steps)
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


@pytest.mark.parametrize(
    "nodes, solver_order, expected", [(3, 1, 1), (3, 2, 2), (3, 4, 2), (4, 3, 3), (5, 4, 4), (6, 2, 2)]
)
def test_the_error_scale_order_is_the_solvers_capped_at_nodes_minus_one(nodes, solver_order, expected):
    assert ErrorControl(history=nodes).test_order(solver_order) == expected
    with pytest.raises(ValueError, match="solver_order must be an int >= 1, got 0"):
        ErrorControl().test_order(0)


@pytest.mark.parametrize(
    "nodes, solver_order, certified",
    [(3, 1, True), (3, 2, True), (3, 3, False), (3, 4, False), (5, 4, True), (4, 4, False)],
)
def test_a_skip_is_certified_only_when_the_extrapolation_is_at_least_of_the_solvers_order(
    nodes, solver_order, certified
):
    schedule = ErrorControl(history=nodes)
    assert schedule.certifies(solver_order) is certified
    note = schedule.uncertified_note(solver_order)
    assert (note is None) is certified
    if note:
        assert f"order {solver_order}" in note and f"history={nodes}" in note and f"history={solver_order + 1}" in note


def test_a_fourth_order_host_never_skips_under_the_default_and_says_so():
    """LMS (order 4): the default's quadratic cannot certify a skip; the run computes every step, warns once and notes
    why in its trace. Measured on the shipped U-Net: skipping LMS steps lost 5-31 dB (docs/results/benchmark-matrix.md)."""
    with pytest.warns(UserWarning, match="order 4 .* every step computes"):
        high, high_final = _run(SADAConfig(), order=4)
    plain, plain_final = _run(SADAConfig(max_interval=0), order=4)
    assert (high.policy.decisions == Decision.COMPUTE).all() and high.trace.speedup() == 1.0
    assert torch.equal(high_final, plain_final)
    assert any("cannot certify" in text for _, text in high.trace.notes)
    low, _ = _run(SADAConfig(), order=2)
    assert low.trace.speedup() > 1.7  # the second-order host is accelerated as before
    five, _ = _run(SADAConfig(schedule=ErrorControl(history=5)), order=4)
    assert five.trace.speedup() > 1.0  # enough nodes: the fourth-order host may skip


def test_the_numpy_engine_applies_the_same_certification():
    from sada.engine.numpy_engine import NumpyEngine

    grid = _grid("vp", 20)
    for order, skips in ((2, True), (4, False)):
        engine = NumpyEngine(SADAConfig(), grid, "epsilon", batch_size=2, solver_order=order)
        stub = GaussianStub("epsilon", (4,))
        x = np.random.default_rng(0).standard_normal((2, 4)) * float(grid.sigma[0])
        for n in range(grid.num_steps):
            a, sg = float(grid.alpha[n]), float(grid.sigma[n])
            compute = engine.plan(n, x)
            out = stub(torch.as_tensor(x), a, sg).numpy() if compute.any() else None
            out = engine.complete(n, x, out if compute.all() else (out[compute] if out is not None else None))
            from sada.trajectory import to_eps, to_x0

            a1, s1 = float(grid.alpha[n + 1]), float(grid.sigma[n + 1])
            x = a1 * to_x0("epsilon", out, x, a, sg) + s1 * to_eps("epsilon", out, x, a, sg)
        assert bool((engine.policy.decisions != Decision.COMPUTE).any()) is skips, order


def test_token_pruning_without_a_named_schedule_selects_the_step_schedule():
    assert isinstance(SADAConfig(max_downsample=1).schedule, StepSchedule)
    assert isinstance(SADAConfig(prune_blocks=(0, 1)).schedule, StepSchedule)
    assert isinstance(SADAConfig(max_downsample=1, tolerance=4.0).schedule, ErrorControl)  # an explicit choice stays
    assert isinstance(SADAConfig(schedule=ErrorControl(), max_downsample=1).schedule, ErrorControl)
    assert isinstance(SADAConfig(max_fix=7).schedule, ErrorControl)  # pruning settings without pruning enabled


def test_cached_weights_follow_every_push_and_invalidation():
    """The weights are cached per history state: a quadratic in log-SNR is extrapolated exactly after every push, and
    a forgotten row gets no estimate (per-row weights where the rows' abscissae differ: the parity test against the
    numpy engine in test_torch_engine.py covers those)."""
    recent = RecentPredictions(ErrorControl(), order=2)

    def quadratic(lam):
        return torch.full((2, 1, 2, 2), 1.0 + 0.5 * lam - 0.25 * lam**2, dtype=torch.float64)

    for lam in (0.0, 0.5, 1.0):
        recent.push(np.ones(2, bool), lam, quadratic(lam))
    torch.testing.assert_close(recent.estimate(1.5), quadratic(1.5), rtol=1e-12, atol=1e-12)
    recent.push(np.ones(2, bool), 1.5, quadratic(1.5))
    torch.testing.assert_close(recent.estimate(2.5), quadratic(2.5), rtol=1e-12, atol=1e-12)
    assert torch.equal(recent.estimate(2.5), recent.estimate(2.5))  # served from the cache
    recent.invalidate(np.array([True, False]))
    estimate = recent.estimate(2.5)
    assert torch.equal(estimate[0], torch.zeros_like(estimate[0]))
    torch.testing.assert_close(estimate[1:], quadratic(2.5)[1:], rtol=1e-12, atol=1e-12)


def test_the_tuning_scripts_default_row_is_the_library_default_and_its_differences_are_exact():
    from benchmarks.tune_error_control import VARIANTS, _differences

    fields, tail = VARIANTS["default: tol 8, nodes 3, interleaved, tail 2"]
    assert ErrorControl(**fields) == ErrorControl() and tail == ErrorControlPolicy.protected_tail
    quadratic = [torch.full((2, 3), 1.0 + 2.0 * k + 0.5 * k * k, dtype=torch.float64) for k in range(6)]
    assert _differences(quadratic, 1) == pytest.approx(2.0 + 0.5 * (25 - 16))  # last step 4 -> 5
    assert _differences(quadratic, 2) == pytest.approx(1.0)
    assert _differences(quadratic, 3) == 0.0 and _differences(quadratic, 4) == 0.0
