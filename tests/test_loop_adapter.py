"""The custom-loop adapter, and the documentation examples that use it (executed verbatim)."""

import re
from pathlib import Path

import pytest
import torch

from sada import SADAConfig
from sada.adapters.loop import SADASession
from sada.trajectory import DiscreteVPSchedule, StepGrid

DOCS = Path(__file__).resolve().parents[1] / "docs"
VP = DiscreteVPSchedule.from_beta_schedule("scaled_linear")
GRID = StepGrid.from_times(VP, VP.timesteps(50, "trailing"))


def _blocks(name):
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


@pytest.mark.parametrize("index", [0, 1])
def test_howto_loop_examples_run_as_written(index):
    exec(compile(_blocks("howto-loop.md")[index], f"howto-loop.md[{index}]", "exec"), {})


def test_only_the_requested_rows_reach_the_network_and_never_skip_is_exact():
    torch.manual_seed(0)
    x0 = torch.randn(3, 8, dtype=torch.float64)
    seen = []

    def run(config):
        x = x0.clone()
        with SADASession(GRID, "epsilon", config) as sada:
            for n in range(50):
                x = 0.98 * x + 0.01 * sada.step(
                    n, x, lambda rows_x, rows: (seen.append(len(rows)), torch.tanh(rows_x))[1]
                )
        return x, sada

    plain = x0.clone()
    for _ in range(50):
        plain = 0.98 * plain + 0.01 * torch.tanh(plain)
    exact, _ = run(SADAConfig(max_interval=0))
    assert torch.equal(exact, plain) and seen == [3] * 50
    seen.clear()
    _, sada = run(SADAConfig())
    assert sum(seen) == sada.trace.network_evaluations() < 150


def test_session_errors_are_clear():
    sada = SADASession(GRID, "epsilon")
    with pytest.raises(ValueError, match=r"complete\(0\) without rows_to_compute\(0\)"):
        sada.complete(0, torch.zeros(2, 3), torch.zeros(2, 3))
    sada.rows_to_compute(0, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="got outputs for 1 rows, expected the 2 planned rows"):
        sada.complete(0, torch.zeros(2, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="pass times="):
        SADASession(VP, "epsilon")
    with pytest.raises(ValueError, match="sample_scaling must be"):
        SADASession(GRID, "epsilon", sample_scaling="vp")
    assert SADASession(VP, "epsilon", times=VP.timesteps(50)).grid.num_steps == 50


GRID30 = StepGrid.from_times(VP, VP.timesteps(30, "trailing"))


@pytest.mark.parametrize(
    "step, message",
    [
        (30, r"step 30 is outside this run's 30 steps \(0\.\.29\)"),
        (-1, r"step -1 is outside this run's 30 steps \(0\.\.29\)"),
        (5, r"step 5: no run has started; a run starts at step 0"),
    ],
)
def test_a_bad_step_index_says_what_is_wrong_with_the_step(step, message):
    """Issue 19 item 5: all three said "the sample changed shape/dtype/device mid-run (None -> ...)"."""
    with pytest.raises(ValueError, match=message) as info:
        SADASession(GRID30, "epsilon").rows_to_compute(step, torch.zeros(2, 3))
    assert "changed shape" not in str(info.value)


def test_a_skipped_or_repeated_step_names_the_expected_one():
    sada = SADASession(GRID30, "epsilon")
    sada.step(0, torch.zeros(2, 3), lambda x, rows: x)
    with pytest.raises(ValueError, match="step 2: the run expects step 1 next"):
        sada.rows_to_compute(2, torch.zeros(2, 3))
    sada.step(0, torch.zeros(2, 3), lambda x, rows: x)  # step 0 starts a new run at any time


@pytest.mark.parametrize("order", [0, -1, 1.5, True, "2"])
def test_solver_order_must_be_a_positive_int(order):
    with pytest.raises(ValueError, match=f"solver_order must be a positive int .*got {order!r}"):
        SADASession(GRID30, "epsilon", solver_order=order)


def test_a_grid_too_short_to_skip_runs_exactly_and_says_so():
    short = StepGrid.from_times(VP, VP.timesteps(5, "trailing"))
    sada = SADASession(short, "epsilon")
    x = torch.randn(2, 3, dtype=torch.float64)
    for n in range(5):
        assert sada.rows_to_compute(n, x).tolist() == [0, 1]
        out = sada.complete(n, x, torch.tanh(x))
        assert torch.equal(out, torch.tanh(x))
    assert sada.exact and sada.summary() == "5 steps: below the skipping range, ran exactly"


def test_the_summary_counts_the_rows_passed_to_complete_not_the_plan():
    torch.manual_seed(0)
    x = torch.randn(2, 8, dtype=torch.float64)
    with SADASession(GRID, "epsilon") as sada:
        for n in range(50):
            sada.rows_to_compute(n, x)
            eps = sada.complete(n, x, torch.tanh(x))  # the loop ran every row anyway
            x = 0.98 * x + 0.01 * eps
    assert sada.trace.speedup() > 1.3  # the plan skipped ...
    assert sada.summary().startswith("computed 50/50 steps (1.00x)"), sada.summary()  # ... the network did not
    assert "planned skips ran the network anyway" in sada.summary() and sada.network_rows == 100


def test_host_notes_are_added_at_step_0_of_every_run_and_must_be_strings():
    sada = SADASession(GRID30, "epsilon", host_notes=("the grid ends early",))
    x = torch.zeros(2, 3)
    for _run in range(2):  # a second run starts a new trace: the note comes again, once
        for n in range(30):
            x = sada.step(n, x, lambda rows_x, rows: rows_x + 1.0)
        assert [message for step, message in sada.trace.notes if step == 0].count("the grid ends early") == 1
    for bad in ("the grid ends early", (1,)):
        with pytest.raises(TypeError, match="host_notes must be a sequence of strings"):
            SADASession(GRID30, "epsilon", host_notes=bad)
