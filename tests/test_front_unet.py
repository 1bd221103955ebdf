"""The U-Net front: its method lists, the order it runs them in, the attention FLOPs it adds, its comparison of each
SADA point with the best alternative at no more compute, and the stored page."""

from pathlib import Path

import pytest

pytest.importorskip("diffusers")

import torch  # noqa: E402

from benchmarks.front_common import AttentionFlops, Method, counter_sees_attention  # noqa: E402
from benchmarks.front_unet import (  # noqa: E402
    _methods,
    _order,
    _todo,
    run,
    solver_order_class,
)
from benchmarks.front_unet_plan import (  # noqa: E402
    FULL_SAMPLER,
    HEUN_STEPS,
    PLAIN_STEPS,
    SADA_STEPS,
    SADA_STEPS_SOLVERS,
    SADA_STEPS_TOLERANCES,
    SOLVERS,
    STEPS,
    TOLERANCES,
)
from benchmarks.front_unet_render import (  # noqa: E402
    best_at_most,
    comparison_rows,
    envelope_rows,
    render,
    solver_points,
    trend_summary,
)
from benchmarks.models import SCHEDULERS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_the_plain_group_runs_every_solver_of_the_pipeline_at_each_step_count():
    methods = _methods("plain")
    assert set(SOLVERS) <= set(SCHEDULERS["unet"])
    assert len(methods) == 4 * len(PLAIN_STEPS) + len(HEUN_STEPS)
    assert all(m.apply is None and m.steps == m.knob for m in methods)
    assert {m.sampler for m in methods} == set(SOLVERS)
    assert [m.steps for m in methods if m.sampler == "heun"] == list(HEUN_STEPS)
    assert all(STEPS in (HEUN_STEPS if s == "heun" else PLAIN_STEPS) for s in SOLVERS)  # each has its own yardstick


def test_the_sada_group_sweeps_each_solvers_dial_around_its_default_at_full_steps():
    methods = _methods("sada")
    assert len(methods) == len(SOLVERS) * 5
    assert all(m.steps is None and m.apply is not None for m in methods)
    assert [m.knob for m in methods if m.sampler == "euler"] == [None, *TOLERANCES["first"]]
    assert [m.knob for m in methods if m.sampler == "unipc"] == [None, *TOLERANCES["higher"]]
    assert solver_order_class("euler") == "first" and solver_order_class("heun") == "higher"
    with pytest.raises(ValueError, match="'lms'"):
        solver_order_class("lms")


def test_the_sada_steps_group_runs_the_default_of_each_higher_order_solver_at_every_listed_step_count():
    methods = _methods("sada_steps")
    expected = [(s, n) for s in SADA_STEPS_SOLVERS for n in SADA_STEPS]
    expected += [(s, n) for s in SADA_STEPS_SOLVERS for n in SADA_STEPS_TOLERANCES]
    assert [(m.sampler, m.steps) for m in methods] == expected
    assert "SADA on UniPC, tolerance 0.02, 100 steps" in {m.name for m in methods}
    assert all(m.knob == m.steps and m.apply is not None for m in methods)
    assert all(solver_order_class(s) == "higher" for s in SADA_STEPS_SOLVERS) and STEPS not in SADA_STEPS
    assert len({m.name for m in methods}) == len(methods)


def test_peers_run_on_the_full_run_and_an_unknown_group_is_refused():
    for group in ("adaptive", "taylorseer", "first_block", "mag", "pab", "faster"):
        methods = _methods(group)
        assert methods and all(m.sampler == FULL_SAMPLER and m.steps is None for m in methods)
    assert [m.knob for m in _methods("adaptive")] == sorted(m.knob for m in _methods("adaptive"))
    with pytest.raises(ValueError, match="'cache_dit'"):
        _methods("cache_dit")


def test_the_full_run_comes_first_then_every_solvers_own_full_run():
    todo = _order([(m, "plain") for m in _methods("plain")][::-1])
    assert (todo[0][0].sampler, todo[0][0].steps) == (FULL_SAMPLER, STEPS)
    assert {m.sampler for m, _ in todo[: len(SOLVERS)]} == set(SOLVERS)
    assert all(m.steps == STEPS for m, _ in todo[: len(SOLVERS)])


def test_attention_flops_are_four_lq_lk_d_per_head_and_row():
    q, k = torch.zeros(2, 3, 5, 8), torch.zeros(2, 3, 7, 8)
    counter = AttentionFlops()
    with counter.counting():
        torch.nn.functional.scaled_dot_product_attention(q, k, k)
    assert counter.flops == 4 * 2 * 3 * 5 * 7 * 8
    torch.nn.functional.scaled_dot_product_attention(q, k, k)  # restored: no longer counted
    assert counter.flops == 4 * 2 * 3 * 5 * 7 * 8
    assert counter_sees_attention({"Global": {"aten.bmm": 1}})
    assert not counter_sees_attention({"Global": {"aten.convolution": 1}})


def _point(group, compute, psnr, sampler="dpmpp_2m"):
    return {"group": group, "sampler": sampler, "compute": compute, "psnr_ode": psnr}


def test_each_sada_point_is_compared_with_the_best_plain_point_at_no_more_compute():
    methods = {
        "SADA on UniPC, default": _point("sada", 0.54, 60.0, "unipc"),
        "SADA on UniPC, default, 80 steps": _point("sada_steps", 0.62, 64.0, "unipc"),
        "UniPC, 25 steps": _point("plain", 0.50, 61.5, "unipc"),
        "DPM-Solver++ 2M, 25 steps": _point("plain", 0.50, 58.0),
        "DPM-Solver++ 2M, 30 steps": _point("plain", 0.60, 63.0),  # more compute: not a peer of 0.54
        "PAB": _point("pab", 0.90, 40.0),
        "FirstBlockCache": {"group": "first_block", "sampler": "dpmpp_2m", "error": "IndexError"},
    }
    assert best_at_most(methods, 0.54, ("plain",))[0] == "UniPC, 25 steps"
    assert best_at_most(methods, 0.49, ("plain",)) is None
    rows = comparison_rows(methods)
    assert rows[2] == (
        "| SADA on UniPC, default, 80 steps | 0.620 | 64.00 | DPM-Solver++ 2M, 30 steps | 63.00 | +1.00 | none | -- |"
    )
    assert rows[3] == "| SADA on UniPC, default | 0.540 | 60.00 | UniPC, 25 steps | 61.50 | -1.50 | none | -- |"


def test_the_envelopes_are_compared_as_step_functions_at_every_compute_level_where_both_have_a_point():
    methods = {
        "SADA on UniPC, default, 16 steps": _point("sada_steps", 0.20, 45.0, "unipc"),
        "SADA on UniPC, default, 30 steps": _point("sada_steps", 0.34, 55.0, "unipc"),
        "UniPC, 8 steps": _point("plain", 0.16, 40.0, "unipc"),  # no SADA point this cheap: no row
        "UniPC, 10 steps": _point("plain", 0.20, 43.0, "unipc"),
        "UniPC, 18 steps": _point("plain", 0.36, 57.0, "unipc"),
        "PAB": _point("pab", 0.30, 60.0),  # a cache peer is not a plain solver
    }
    methods["UniPC, 11 steps"] = _point("plain", 0.22, 41.0, "unipc")  # a level where neither best point changes
    rows = envelope_rows(methods)
    assert rows[2:] == [
        "| 0.200 | SADA on UniPC, default, 16 steps | 45.00 | UniPC, 10 steps | 43.00 | +2.00 |",
        "| 0.340 | SADA on UniPC, default, 30 steps | 55.00 | UniPC, 10 steps | 43.00 | +12.00 |",
        "| 0.360 | SADA on UniPC, default, 30 steps | 55.00 | UniPC, 18 steps | 57.00 | -2.00 |",
        "",
        "SADA ahead at 3 of 4 compute levels from 0.200 up; not at 0.360 (-2.00).",
    ]
    assert envelope_rows(methods, rival_groups=("pab",), rival="best cache peer")[-1] == (
        "SADA ahead at 0 of 2 compute levels from 0.300 up; not at 0.300 (-15.00), 0.340 (-5.00)."
    )


def test_on_top_of_one_solver_only_its_own_sada_and_plain_points_are_compared():
    methods = {
        "SADA on UniPC, default, 16 steps": _point("sada_steps", 0.20, 45.0, "unipc"),
        "SADA on UniPC, default": _point("sada", 0.40, 59.0, "unipc"),
        "SADA on DPM-Solver++ 3M, default, 16 steps": _point("sada_steps", 0.20, 50.0, "dpmpp_3m"),
        "UniPC, 10 steps": _point("plain", 0.20, 43.0, "unipc"),
        "UniPC, 20 steps": _point("plain", 0.40, 60.0, "unipc"),
        "DPM-Solver++ 3M, 10 steps": _point("plain", 0.20, 48.0, "dpmpp_3m"),
        "TaylorSeer": _point("taylorseer", 0.30, 61.0, "unipc"),  # a cache peer is not the solver plain
    }
    assert set(solver_points(methods, "unipc")) == {
        "SADA on UniPC, default, 16 steps",
        "SADA on UniPC, default",
        "UniPC, 10 steps",
        "UniPC, 20 steps",
    }
    assert envelope_rows(solver_points(methods, "unipc"), rival="UniPC plain")[-1] == (
        "SADA ahead at 1 of 2 compute levels from 0.200 up; not at 0.400 (-1.00)."
    )
    assert envelope_rows(solver_points(methods, "dpmpp_3m"))[2] == (
        "| 0.200 | SADA on DPM-Solver++ 3M, default, 16 steps | 50.00 | DPM-Solver++ 3M, 10 steps | 48.00 | +2.00 |"
    )
    with pytest.raises(ValueError, match="'lms'"):
        solver_points(methods, "lms")


def test_each_sada_point_is_compared_with_its_solvers_plain_trend_where_the_window_holds_plain_grids():
    import math

    def point(group, evaluations, psnr):
        return {
            "group": group,
            "sampler": "unipc",
            "evaluations": evaluations,
            "compute": evaluations / 50,
            "psnr_ode": psnr,
        }

    methods = {f"UniPC, {n} steps": point("plain", n, 40 + 10 * math.log(n)) for n in range(10, 51)}
    methods["SADA on UniPC, default, 26 steps"] = point("sada_steps", 16, 40 + 10 * math.log(16) + 1.5)
    methods["SADA on UniPC, default"] = point("sada", 20, 40 + 10 * math.log(20) - 0.5)
    methods["SADA on UniPC, default, 16 steps"] = point("sada_steps", 10, 99.0)  # below 12.5: no window on its left
    methods["SADA on DPM-Solver++ 3M, default"] = {**point("sada", 20, 99.0), "sampler": "dpmpp_3m"}  # not UniPC
    line = trend_summary(methods, "unipc")
    assert "from 12.5 to 40 evaluations" in line
    assert "2 points, mean +0.50 dB, 1 above it, -0.50 to +1.50" in line
    assert "RMS scatter about their trend 0.00-0.00 dB" in line  # plain points on the line exactly
    with pytest.raises(ValueError, match="at least 3 plain points, got 0"):
        trend_summary(methods, "dpmpp_3m")


def test_a_resumed_run_keeps_what_is_stored_but_always_reruns_the_50_step_yardsticks():
    everything = _todo(["plain", "sada_steps"])
    done = {m.name for m, _ in everything[len(SOLVERS) :: 2]}  # every other stored
    resumed = _todo(["plain", "sada_steps"], done)
    assert [m.name for m, _ in resumed[: len(SOLVERS)]] == [m.name for m, _ in everything[: len(SOLVERS)]]
    assert all(m.steps == STEPS and g == "plain" for m, g in resumed[: len(SOLVERS)])
    assert [m.name for m, _ in resumed[len(SOLVERS) :]] == [
        m.name for m, _ in everything[len(SOLVERS) :] if m.name not in done
    ]
    assert len(everything) == len(SOLVERS) + len(_methods("plain")) - len(SOLVERS) + len(_methods("sada_steps"))


def test_a_results_file_of_another_seed_set_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "front.json"
    out.write_text('{"seeds": [1000, 1001], "methods": {}}')
    with pytest.raises(ValueError, match="holds seeds 1000-1001, not 2000-2015"):
        run(["plain"], out, tuple(range(2000, 2016)))


def test_the_unet_front_page_is_the_rendering_of_the_stored_data(tmp_path):
    data = ROOT / "docs" / "results" / "front-data" / "unet-karras.json"
    page = (ROOT / "docs" / "results" / "front-unet.md").read_text()
    assert page == render([data], tmp_path / "img")
    assert (tmp_path / "img" / "front-unet-karras.png").is_file()
    for label in SOLVERS.values():
        assert f"| {label}, 20 steps |" in page and f"| SADA on {label}, default |" in page
    assert isinstance(_methods("plain")[0], Method)
