"""The front's method lists: every other solver of the pipeline plain at fewer steps, and SADA on it at 50 steps."""

import pytest

pytest.importorskip("diffusers")

from benchmarks.front import _methods  # noqa: E402
from benchmarks.front_plan import (  # noqa: E402
    SADA_STEPS,
    SADA_STEPS_SOLVERS,
    SOLVER_STEPS,
    SOLVER_TOLERANCES,
    SOLVERS,
    STEPS,
)
from benchmarks.models import SCHEDULERS, shift_override  # noqa: E402


def test_the_solvers_group_runs_every_other_solver_plainly_at_each_step_count():
    methods = _methods("solvers", None, 1.0)
    assert len(methods) == len(SOLVERS) * len(SOLVER_STEPS)
    assert all(m.apply is None and m.steps == m.knob and m.sampler in SOLVERS for m in methods)
    assert {m.sampler for m in methods} == set(SOLVERS) <= set(SCHEDULERS["mmdit"])
    assert "UniPC flow, 20 steps" in {m.name for m in methods}


def test_the_sada_solvers_group_sweeps_the_dial_on_the_second_order_flow_solvers_at_full_steps():
    methods = _methods("sada_solvers", None, 3.0)
    assert len(methods) == 2 * (1 + len(SOLVER_TOLERANCES))
    assert all(m.steps is None and m.apply is not None for m in methods)  # None: the front's STEPS
    assert {m.sampler for m in methods} == {"flow_dpmpp_2m", "flow_unipc"}
    assert [m.knob for m in methods if m.sampler == "flow_unipc"] == [None, *SOLVER_TOLERANCES]
    assert STEPS == 50


def test_the_sada_steps_group_runs_the_default_on_flow_euler_and_the_second_order_solvers_at_each_step_count():
    methods = _methods("sada_steps", None, 1.0)
    assert [(m.sampler, m.steps) for m in methods] == [(s, n) for s in SADA_STEPS_SOLVERS for n in SADA_STEPS]
    assert all(m.knob == m.steps and m.apply is not None for m in methods) and STEPS not in SADA_STEPS
    assert "SADA default on flow Euler, 100 steps" in {m.name for m in methods}
    assert set(SADA_STEPS_SOLVERS) - {"flow_euler"} <= set(SOLVERS)


def test_shift_override_names_the_shift_as_each_scheduler_does():
    assert shift_override("flow_euler", 3) == {"shift": 3.0}
    assert shift_override("flow_unipc", 3) == {"flow_shift": 3.0}
    with pytest.raises(ValueError, match="'dpmpp_2m'"):
        shift_override("dpmpp_2m", 1.0)


def test_a_scheduler_override_the_class_does_not_take_is_refused_by_name():
    from pathlib import Path

    from benchmarks.models import load_model

    if not (Path(__file__).resolve().parents[1] / "benchmarks" / "assets" / "digits-mmdit").is_dir():
        pytest.skip("shipped models not present")
    model = load_model("mmdit")
    with pytest.raises(ValueError, match=r"no config key \['shift'\].*flow_shift"):
        model.scheduler("flow_unipc", shift=3.0)  # diffusers would keep the key and run shift 1
    assert model.scheduler("flow_unipc", flow_shift=3.0).config.flow_shift == 3.0
    assert model.scheduler("flow_euler", shift=3.0).config.shift == 3.0


def test_the_front_page_is_the_rendering_of_the_stored_data_with_every_solver(tmp_path):
    from pathlib import Path

    from benchmarks.front_render import render
    from benchmarks.regenerate_front import commands

    root = Path(__file__).resolve().parents[1]
    data = root / "docs" / "results" / "front-data"
    render_cmd = commands(data, None)[-1]
    paths = render_cmd[4:]
    page = (root / "docs" / "results" / "front.md").read_text()
    assert page == render(paths, tmp_path / "img")
    for shift in (1, 3):
        assert (tmp_path / "img" / f"front-shift{shift}.png").is_file()
    for label in SOLVERS.values():  # every other solver of the pipeline is on the page, plain and (2nd order) with SADA
        assert f"| {label}, 20 steps |" in page
    assert "| SADA on DPM-Solver++ 2M flow, default |" in page and "| SADA on UniPC flow, tolerance 0.1 |" in page
    assert "| SADA default on flow Euler, 100 steps |" in page  # the default at other step counts, compared too
    assert page.count("| SADA point | compute | PSNR vs ODE | best plain solver at <= compute |") == 2
