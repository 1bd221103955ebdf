"""The custom-loop adapter, and the documentation examples that use it (executed verbatim)."""
import re
from pathlib import Path

import numpy as np
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
                x = 0.98 * x + 0.01 * sada.step(n, x, lambda rows_x, rows: (seen.append(len(rows)), torch.tanh(rows_x))[1])
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
