"""The dial's grid rules: more skips in a row on a fine grid, fewer on a coarse one, the tolerance a very coarse
grid tightens (second order) or loosens (first order), the note on an unused slot, and the trace of what the grid
changed."""

import warnings

import numpy as np
import pytest

from benchmarks.overhead import _grid
from sada import SADAConfig
from sada.config import (
    DIAL_BY_ORDER,
    ErrorControl,
    grid_tolerance,
    higher_order_max_interval,
)
from sada.config.dial import spare_skip_note
from sada.errors import ExactRunWarning
from sada.policy import Decision
from tests.dial_helpers import run_dial, runs_of_skips


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
    fine, _ = run_dial(SADAConfig(), "vp", "epsilon", 2, steps=100)
    coarse, _ = run_dial(SADAConfig(), "vp", "epsilon", 2, steps=50)
    assert fine.grid.median_log_snr_step <= DIAL_BY_ORDER["higher"]["fine_log_snr_step"]
    assert coarse.grid.median_log_snr_step > DIAL_BY_ORDER["higher"]["fine_log_snr_step"]
    assert runs_of_skips(fine.policy.decisions[:, 0]).max() == 3
    assert runs_of_skips(coarse.policy.decisions[:, 0]).max() == 2


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
    engine, _ = run_dial(SADAConfig(), "flow", "flow_velocity", 1, steps=12)
    step = engine.grid.median_log_snr_step
    assert step > DIAL_BY_ORDER["first"]["coarse_log_snr_step"]
    assert engine.trace.extras["dial"] == {"tolerance": 0.005, "max_interval": 6, "median_log_snr_step": step}
    notes = [text for n, text in engine.trace.notes if n == 0]
    assert any(text.startswith("the grid is coarse for a solver of order 1") for text in notes), notes
    assert any("uses tolerance=0.005 instead of 0.002" in text for text in notes)
    loose, _ = run_dial(SADAConfig(tolerance=0.005), "flow", "flow_velocity", 1, steps=12)  # the same run as setting it
    assert np.array_equal(loose.policy.decisions, engine.policy.decisions)
    tight, _ = run_dial(SADAConfig(tolerance=0.002), "flow", "flow_velocity", 1, steps=12)
    assert (tight.policy.decisions != Decision.COMPUTE).sum() < (engine.policy.decisions != Decision.COMPUTE).sum()
    fine, _ = run_dial(SADAConfig(), "flow", "flow_velocity", 1, steps=50)
    assert fine.trace.extras["dial"]["tolerance"] == 0.002
    assert not any("the grid is" in text for _, text in fine.trace.notes)


def test_a_default_run_on_a_very_coarse_grid_uses_the_tight_tolerance_says_so_and_does_not_warn_of_an_exactrun_dial():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExactRunWarning)
        engine, _ = run_dial(SADAConfig(), "vp", "epsilon", 2, steps=6)
    step = engine.grid.median_log_snr_step
    assert step > DIAL_BY_ORDER["higher"]["very_coarse_log_snr_step"]
    assert engine.trace.extras["dial"] == {"tolerance": 0.002, "max_interval": 1, "median_log_snr_step": step}
    notes = [text for n, text in engine.trace.notes if n == 0]
    assert any(text.startswith("the grid is very coarse for a solver of order 2") for text in notes)
    assert any("uses tolerance=0.002 instead of 0.03" in text for text in notes)
    assert runs_of_skips(engine.policy.decisions[:, 0]).max(initial=0) <= 1
    tight, _ = run_dial(SADAConfig(tolerance=0.002), "vp", "epsilon", 2, steps=6)  # the same run as setting it
    assert np.array_equal(tight.policy.decisions, engine.policy.decisions)
    loose, _ = run_dial(SADAConfig(tolerance=0.5), "vp", "epsilon", 2, steps=6)  # an explicit tolerance is kept
    assert (loose.policy.decisions != Decision.COMPUTE).sum() >= 1


def test_an_odd_step_count_with_one_skip_in_a_row_notes_the_unused_slot_and_one_more_step_takes_one_more_skip():
    odd, _ = run_dial(SADAConfig(), "vp", "epsilon", 2, steps=15)
    even, _ = run_dial(SADAConfig(), "vp", "epsilon", 2, steps=16)
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
    two, _ = run_dial(SADAConfig(max_interval=2), "vp", "epsilon", 2, steps=15)  # two in a row: no spare slot
    assert not any("stays unused" in text for _, text in two.trace.notes)
    coarse, _ = run_dial(SADAConfig(), "vp", "epsilon", 2, steps=7)  # very coarse: skips are the exception, no note
    assert not any("stays unused" in text for _, text in coarse.trace.notes)
    assert spare_skip_note(1, 25, 2).startswith("25 steps") and "to the 23rd" in spare_skip_note(1, 25, 2)
    assert spare_skip_note(1, 16, 2) is None and spare_skip_note(1, 6, 2) is None
    with pytest.raises(ValueError, match="num_steps must be an int >= 0, got 15.0"):
        spare_skip_note(1, 15.0, 2)


def test_the_trace_says_when_the_grid_changed_the_run_cap_and_records_the_resolved_dial():
    assert ErrorControl().grid_note(2, 0.2).startswith("the grid is coarse for a solver of order 2")
    assert "at most 1 step in a row, one fewer than tolerance=0.03" in ErrorControl().grid_note(2, 0.2)
    assert "at most 3 steps in a row, one more" in ErrorControl().grid_note(3, 0.05)
    assert ErrorControl().grid_note(2, 0.12) is None  # the tolerance's own cap
    assert ErrorControl().grid_note(2, 0.6).startswith("the grid is very coarse for a solver of order 2")
    assert ErrorControl(tolerance=0.03).grid_note(2, 0.6).startswith("the grid is coarse")  # set: kept, cap 1
    assert ErrorControl(max_interval=2).grid_note(2, 0.2) is None and ErrorControl().grid_note(1, 0.12) is None
    assert ErrorControl(tolerance=0.2).grid_note(2, 0.05) is None  # 4 in a row either way
    coarse, _ = run_dial(SADAConfig(), "vp", "epsilon", 2, steps=20)  # the trailing VP grid: 0.197
    step = coarse.grid.median_log_snr_step
    assert DIAL_BY_ORDER["higher"]["coarse_log_snr_step"] < step <= DIAL_BY_ORDER["higher"]["very_coarse_log_snr_step"]
    assert any(n == 0 and "the grid is coarse" in text for n, text in coarse.trace.notes)
    assert coarse.trace.extras["dial"] == {"tolerance": 0.03, "max_interval": 1, "median_log_snr_step": step}
    assert runs_of_skips(coarse.policy.decisions[:, 0]).max() == 1
    plain, _ = run_dial(SADAConfig(), "vp", "epsilon", 2, steps=50)
    assert not any("the grid is" in text for _, text in plain.trace.notes)
    assert plain.trace.extras["dial"]["max_interval"] == 2
