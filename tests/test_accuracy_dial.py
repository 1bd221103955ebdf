"""The accuracy dial (``ErrorControl``, the default): its settings per host solver order, the monotone evaluation
count, runs of skips on first-order hosts and interleaving on higher-order ones, the protected tail and large steps
that compute. Its error estimate is tested in ``test_dial_error_estimate.py``, its grid rules in
``test_dial_grids.py``."""

import numpy as np
import pytest
import torch

from sada import SADAConfig
from sada.config import (
    DEFAULT_SCHEDULE,
    DIAL_BY_ORDER,
    MIN_SKIP_PREDICTIONS,
    ErrorControl,
    StepSchedule,
    higher_order_max_interval,
)
from sada.policy import Decision, ErrorControlPolicy, make_policy
from tests.dial_helpers import HOSTS, run_dial, runs_of_skips


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


@pytest.mark.parametrize("value, error", [(-0.1, ValueError), (1.0, ValueError), (True, TypeError), ("a", TypeError)])
def test_a_tolerance_outside_0_1_is_refused_with_its_value(value, error):
    with pytest.raises(error, match=f"tolerance must be a number.*{value!r}"):
        ErrorControl(tolerance=value)


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_the_evaluation_count_is_monotone_in_the_tolerance_from_the_exactrun_dial(host):
    family, kind, order = HOSTS[host]
    counts = []
    for tolerance in (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5):
        engine, _ = run_dial(SADAConfig(tolerance=tolerance), family, kind, order)
        counts.append(int((engine.policy.decisions == Decision.COMPUTE).sum()))
    assert counts[0] == 50 * 3  # tolerance 0: the exact run
    assert all(a >= b for a, b in zip(counts, counts[1:])), counts
    assert counts[-1] < counts[0]


def test_tolerance_zero_is_bit_identical_to_the_plainrun_dial():
    exact, final = run_dial(SADAConfig(tolerance=0.0), "flow", "flow_velocity", 1)
    plain, plain_final = run_dial(SADAConfig(max_interval=0), "flow", "flow_velocity", 1)
    assert SADAConfig(tolerance=0.0).never_skips and not exact.observes
    assert torch.equal(final, plain_final)


def test_a_first_order_host_skips_several_steps_in_a_row_where_the_trajectory_is_smooth():
    engine, _ = run_dial(SADAConfig(tolerance=0.05), "flow", "flow_velocity", 1)
    runs = runs_of_skips(engine.policy.decisions[:, 0])
    assert runs.max() >= 3 and runs.max() <= DIAL_BY_ORDER["first"]["max_interval"]


def test_a_higher_order_host_never_skips_two_steps_in_a_row_by_default():
    engine, _ = run_dial(SADAConfig(tolerance=0.02), "vp", "epsilon", 2)
    d = engine.policy.decisions[:, 0]
    assert runs_of_skips(d).max() == 1 and (d != Decision.COMPUTE).sum() >= 20


@pytest.mark.parametrize(
    "tolerance, cap", [(0.0, 1), (0.005, 1), (0.02, 1), (0.021, 2), (0.04, 2), (0.05, 3), (0.08, 3), (0.1, 4), (0.9, 4)]
)
def test_each_doubling_of_the_tolerance_past_0_01_allows_one_more_skip_in_a_row_on_a_higher_order_host(tolerance, cap):
    assert higher_order_max_interval(tolerance) == cap
    assert ErrorControl(tolerance=tolerance).for_solver(2).max_interval == cap
    if tolerance >= 0.1:  # the cap is reached where the trajectory allows it
        engine, _ = run_dial(SADAConfig(tolerance=tolerance), "vp", "epsilon", 2)
        assert runs_of_skips(engine.policy.decisions[:, 0]).max() == cap


def test_the_run_cap_of_a_higher_order_host_refuses_a_bad_tolerance_by_name():
    with pytest.raises(ValueError, match="tolerance must be finite, got nan"):
        higher_order_max_interval(float("nan"))
    with pytest.raises(ValueError, match="median_log_snr_step must be finite, got nan"):
        higher_order_max_interval(0.03, float("nan"))


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize("steps", [8, 15, 50])
def test_the_last_two_steps_always_run_the_network(host, steps):
    family, kind, order = HOSTS[host]
    engine, _ = run_dial(SADAConfig(schedule=ErrorControl(tolerance=0.9, max_interval=3)), family, kind, order, steps)
    d = engine.policy.decisions
    assert (d[-2:] == Decision.COMPUTE).all()
    assert (d != Decision.COMPUTE).any()  # it does skip elsewhere
    assert engine.policy.protected_tail == 2


@pytest.mark.parametrize("steps", [9, 15, 50])  # counts where three skips in a row reach the second-to-last step
def test_a_reintegrating_run_at_a_loose_tolerance_protects_only_its_last_step_on_a_vp_grid(steps):
    config = SADAConfig(schedule=ErrorControl(tolerance=0.9, max_interval=3))
    engine, _ = run_dial(config, "vp", "epsilon", 2, steps, batch=4, reintegrates=True)
    d = engine.policy.decisions
    assert engine.policy.protected_tail == 1
    assert (d[-1] == Decision.COMPUTE).all()
    assert (d[-2] != Decision.COMPUTE).any()  # the second-to-last step skips where the cap allows it
    assert runs_of_skips(d[:, 0]).max() <= 3


@pytest.mark.parametrize(
    "family, kind, tolerance, tail",
    [("vp", "epsilon", 0.01, 1), ("vp", "epsilon", 0.005, 2), ("flow", "flow_velocity", 0.9, 2)],
)
def test_the_tail_of_a_reintegrating_run_is_one_step_only_from_tolerance_0_01_on_a_vp_grid(
    family, kind, tolerance, tail
):
    config = SADAConfig(schedule=ErrorControl(tolerance=tolerance, max_interval=3))
    engine, _ = run_dial(config, family, kind, 2, 15, reintegrates=True)
    assert engine.policy.protected_tail == tail
    assert (engine.policy.decisions[-tail:] == Decision.COMPUTE).all()


def test_the_protected_tail_is_refused_by_name_when_it_is_not_a_positive_int_or_meets_a_step_schedule():
    with pytest.raises(ValueError, match="protected_tail must be >= 1, got 0"):
        ErrorControlPolicy(ErrorControl(max_interval=2), num_steps=10, protected_tail=0)
    with pytest.raises(TypeError, match="reintegrates must be a bool, got 1"):
        run_dial(SADAConfig(), reintegrates=1)
    with pytest.raises(ValueError, match="protected_tail=1 applies to a schedule-free part"):
        make_policy(SADAConfig(acc_range=(10, 47)), 50, 1, protected_tail=1)


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_larger_steps_add_larger_estimated_errors_so_short_runs_skip_less(host):
    family, kind, order = HOSTS[host]
    fractions = []
    for steps in (10, 25, 100):
        engine, _ = run_dial(SADAConfig(tolerance=1e-3), family, kind, order, steps)
        errors = [np.nanmedian(v) for v in engine.trace.extras["skip_error"].values() if np.isfinite(v).any()]
        fractions.append(((engine.policy.decisions != Decision.COMPUTE).mean(), float(np.median(errors))))
    skipped, median_error = zip(*fractions)
    assert median_error[0] > median_error[1] > median_error[2]
    assert skipped[0] <= skipped[1] <= skipped[2] and skipped[2] > skipped[0]


def test_token_pruning_without_a_named_schedule_selects_the_step_schedule():
    assert isinstance(SADAConfig(max_downsample=1).schedule, StepSchedule)
    assert isinstance(SADAConfig(prune_blocks=(0, 1)).schedule, StepSchedule)
    assert isinstance(SADAConfig(max_downsample=1, tolerance=0.01).schedule, ErrorControl)  # an explicit choice stays
    assert isinstance(SADAConfig(schedule=ErrorControl(), max_downsample=1).schedule, ErrorControl)
    assert isinstance(SADAConfig(max_fix=7).schedule, ErrorControl)  # pruning settings without pruning enabled


@pytest.mark.parametrize("host, first_skip", [("higher", 3), ("first", 3)])
def test_the_first_skip_can_come_at_the_fourth_step_once_three_predictions_are_stored(host, first_skip):
    """A skip needs a line and the quadratic that estimates its error (``MIN_SKIP_PREDICTIONS``): the fourth step
    (index 3) at the earliest, on every host, also where a longer history is still filling."""
    family, kind, order = HOSTS[host]
    assert MIN_SKIP_PREDICTIONS == 3
    engine, _ = run_dial(SADAConfig(schedule=ErrorControl(tolerance=0.5, max_interval=1)), family, kind, order)
    d = engine.policy.decisions
    assert (d[:first_skip] == Decision.COMPUTE).all()
    assert (d[first_skip] != Decision.COMPUTE).all()
