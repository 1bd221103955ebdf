"""The torch engine against the float64 numpy reference, plus dtypes, memory, NaN handling, replay, groups."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.lab.experiments import make_problem, run_sampler
from sada.config import MIN_SKIP_PREDICTIONS, SADAConfig, preset
from sada.policy import Decision
from sada.torch_backend.engine import SADAEngine
from sada.trajectory import DiscreteVPSchedule, EDMSchedule, RectifiedFlowSchedule, StepGrid
from tests.torch_helpers import drive_random

VP = DiscreteVPSchedule.from_beta_schedule("scaled_linear")
GRIDS = {
    "vp": StepGrid.from_times(VP, VP.timesteps(30, "trailing")),
    "ve": StepGrid.from_edm_sigmas(EDMSchedule(), np.append(EDMSchedule().karras(30), 0.0)),
    "flow": StepGrid.from_times(RectifiedFlowSchedule(), RectifiedFlowSchedule().timesteps(30, shift=3.0)),
}
BASE = dict(acc_range=(5, 27), lagrange_step=16, lagrange_int=4, lagrange_term=3, max_interval=3)


@st.composite
def setups(draw):
    family = draw(st.sampled_from(sorted(GRIDS)))
    mode = "corrected" if family == "ve" else draw(st.sampled_from(["paper", "corrected"]))
    criterion = None if family == "ve" else draw(st.sampled_from([None, "paper", "corrected"]))
    flow_paper = family == "flow" and "paper" in (mode, criterion if criterion else "paper")
    kinds = ["flow_velocity"] if flow_paper else ["epsilon", "v_prediction", "sample", "flow_velocity"]
    cfg = SADAConfig(
        mode=mode,
        criterion=criterion,
        reduce=draw(st.sampled_from(["batch", "sample"])),
        am_noise=draw(st.sampled_from([None, "reuse", "extrapolate"])),
        abscissa=draw(st.sampled_from([None, "index", "sigma", "t"])),
        lagrange_target=draw(st.sampled_from(["x0", "x0_over_alpha"])),
        step_error_rms=draw(st.sampled_from([None, 0.05, 1.0])) if mode == "corrected" else None,
        **BASE,
    )
    return cfg, GRIDS[family], draw(st.sampled_from(kinds)), draw(st.integers(1, 4)), draw(st.integers(0, 2**16))


@given(setups())
def test_float64_torch_engine_makes_the_reference_decisions_and_estimates(setup):
    cfg, grid, kind, batch, seed = setup
    ref, eng, records = drive_random(cfg, grid, kind, batch, seed)
    for n, (d_ref, d_t, s_ref, s_t) in enumerate(records):
        np.testing.assert_array_equal(d_ref, d_t, err_msg=f"step {n}")
        np.testing.assert_allclose(s_t, s_ref, rtol=1e-10, atol=1e-10, err_msg=f"step {n}")
    np.testing.assert_allclose(eng.trace.criterion, ref.trace.criterion, rtol=1e-9, atol=1e-12)


@given(
    family=st.sampled_from(sorted(GRIDS)),
    kind=st.sampled_from(["epsilon", "v_prediction", "flow_velocity"]),
    tolerance=st.sampled_from([0.001, 0.05, 0.999]),
    history=st.integers(1, 4),
    order=st.integers(1, 4),
    max_interval=st.integers(1, 4),
    reduce=st.sampled_from(["sample", "batch"]),
    abscissa=st.sampled_from([None, "sigma", "lambda", "index"]),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_float64_torch_engine_makes_the_reference_error_control_decisions_and_estimates(
    family, kind, tolerance, history, order, max_interval, reduce, abscissa, batch, seed
):
    cfg = SADAConfig(tolerance=tolerance, history=history, max_interval=max_interval, reduce=reduce, abscissa=abscissa)
    ref, eng, records = drive_random(cfg, GRIDS[family], kind, batch, seed, solver_order=order)
    for n, (d_ref, d_t, s_ref, s_t) in enumerate(records):
        np.testing.assert_array_equal(d_ref, d_t, err_msg=f"step {n}")
        np.testing.assert_allclose(s_t, s_ref, rtol=1e-10, atol=1e-10, err_msg=f"step {n}")
    errors_ref, errors_t = ref.trace.extras["skip_error"], eng.trace.extras["skip_error"]
    assert errors_ref.keys() == errors_t.keys()
    for step in errors_ref:
        np.testing.assert_allclose(errors_t[step], errors_ref[step], rtol=1e-9, err_msg=f"step {step}")
    d = ref.trace.decisions[:, 0]
    assert (d[-2:] == Decision.COMPUTE).all()  # the last two steps always run the network
    filled = min(history + 1, MIN_SKIP_PREDICTIONS)  # a line and its check at least; a longer history while it fills
    assert (d[:filled] == Decision.COMPUTE).all()
    runs = np.diff(np.flatnonzero(np.r_[True, d == Decision.COMPUTE, True])) - 1
    assert runs.max() <= max_interval


@pytest.mark.parametrize("mode", ["paper", "corrected"])
def test_float32_estimates_match_the_reference_to_1e_5_relative_on_the_same_skip_path(mode):
    grid = GRIDS["vp"]
    cfg = SADAConfig(mode=mode, **BASE)
    ref, _, _ = drive_random(cfg, grid, "epsilon", 3, seed=7)
    _, _, records = drive_random(cfg, grid, "epsilon", 3, seed=7, dtype=torch.float32, replay=ref.trace.decisions)
    skipped = 0
    for _, _, s_ref, s_t in records:
        if s_ref.size:
            skipped += 1
            scale = np.abs(s_ref).max() + 1e-3
            assert np.abs(s_t - s_ref).max() <= 1e-5 * scale
    assert skipped >= 8


def _torch_run(problem, config, dtype=torch.float64, **kw):
    """Run a lab problem with the torch engine (the model stays numpy float64)."""

    class NumpyFacade:
        """The torch engine behind the contract on numpy arrays, as ``run_sampler`` drives it."""

        def __init__(self, config, grid, kind, batch, replay=None):
            self.engine = SADAEngine(config, grid, kind, **kw)
            self.trace = None

        def step(self, step, x, network):
            def net(x_rows, rows):
                return torch.tensor(network(x_rows.double().numpy(), rows), dtype=dtype)

            return self.engine.step(step, torch.tensor(x, dtype=dtype), net).double().numpy()

        def finish(self, x):
            self.trace = self.engine.finish(torch.tensor(x, dtype=dtype))
            return self.trace

    return run_sampler(problem, config, engine_factory=NumpyFacade)


@pytest.mark.parametrize("schedule, solver", [("vp", "dpmpp_2m"), ("vp", "euler"), ("flow", "flow_euler")])
def test_torch_engine_reproduces_the_reference_sampler_run(schedule, solver):
    problem = make_problem(schedule, solver, 50, batch=4, dim=16)
    x_ref, nfe_ref, ref = run_sampler(problem, SADAConfig())
    x_t, nfe_t, adapter = _torch_run(problem, SADAConfig())
    assert nfe_t == nfe_ref and nfe_ref < 35
    np.testing.assert_array_equal(adapter.trace.decisions, ref.trace.decisions)
    np.testing.assert_allclose(x_t, x_ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_accepted_with_float32_history(dtype):
    grid = GRIDS["vp"]
    eng = SADAEngine(SADAConfig(**BASE), grid, "epsilon")
    x = torch.randn(2, 4, 8, 8, dtype=dtype)
    for n in range(grid.num_steps):
        out = eng.step(n, x, lambda rows, idx: (0.5 * rows + 0.1).to(dtype))
        assert out.dtype == dtype and torch.isfinite(out).all()
        x = (0.95 * x + 0.05 * out).to(dtype)
    eng.finish(x)
    assert eng.dtype == torch.float32 and eng.rule.history.eps.values.dtype == torch.float32
    assert eng.trace.counts()["computed"] < 2 * 30


LATENT = (4, 8, 8)


@pytest.mark.parametrize(
    "config, tensors",
    [
        (SADAConfig(criterion="corrected", **BASE), 3 + 1 + 3),  # eps ring + x~ estimate + 3 nodes
        (
            SADAConfig(
                criterion="corrected",
                am_noise="extrapolate",
                lagrange_term=4,
                lagrange_step=24,
                acc_range=(10, 27),
                lagrange_int=4,
            ),
            3 + 1 + 4,
        ),
        (SADAConfig(mode="paper", **BASE), 2 + 1 + 2 + 1 + 3),  # 2 drifts, raw, x^ + curvature, estimate, nodes
        (SADAConfig(**BASE), 3 + 2 + 1 + 2 + 3),  # default: corrected estimate + paper criterion
    ],
)
def test_engine_reports_the_bytes_it_holds(config, tensors):
    grid = GRIDS["vp"]
    eng = SADAEngine(config, grid, "epsilon")
    x = torch.randn((2,) + LATENT, dtype=torch.float32)
    peak = 0
    for n in range(grid.num_steps):
        out = eng.step(n, x, lambda rows, idx: 0.5 * rows)
        peak = max(peak, eng.nbytes())
        x = 0.9 * x + 0.1 * out
    per_latent = x.numel() * 4
    assert peak == tensors * per_latent


def test_non_finite_output_is_never_extrapolated_and_the_sample_recomputes():
    grid = GRIDS["vp"]
    cfg = SADAConfig(**BASE)
    eng = SADAEngine(cfg, grid, "epsilon")
    clean = SADAEngine(cfg, grid, "epsilon")
    torch.manual_seed(0)
    x = torch.randn(3, 4, 4, dtype=torch.float64)
    xs = x.clone()
    poisoned_step = 8
    for n in range(grid.num_steps):

        def net(rows, idx, n=n):
            out = 0.5 * rows + 0.01 * n
            if n == poisoned_step:
                out = out.clone()
                out[idx == 1] = float("nan")
            return out

        out = eng.step(n, x, net)
        clean_out = clean.step(n, xs, lambda rows, idx, n=n: 0.5 * rows + 0.01 * n)
        x = torch.where(torch.isfinite(out), 0.9 * x + 0.1 * out, x)  # the user's loop survives the NaN row
        xs = 0.9 * xs + 0.1 * clean_out
    d = eng.trace.decisions
    assert np.all(d[poisoned_step + 1 : poisoned_step + 4, 1] == Decision.COMPUTE)  # history refills first
    np.testing.assert_array_equal(d[:, [0, 2]], clean.trace.decisions[:, [0, 2]])  # other samples unaffected
    assert any("non-finite" in msg and "[1]" in msg for _, msg in eng.trace.notes)


def test_a_sample_whose_output_stays_non_finite_is_noted_once_at_the_first_step():
    """Issue 19: a NaN that propagates through the sample wrote one identical note per step (29 on a 30-step run)."""
    grid = GRIDS["vp"]
    eng = SADAEngine(SADAConfig(), grid, "epsilon")
    x = torch.randn(3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[1, 0, 0] = float("nan")  # sample 1 is NaN from the start: its output is never finite
    for n in range(grid.num_steps):
        x = 0.9 * x + 0.1 * eng.step(n, x, lambda rows, idx, n=n: 0.5 * rows + 0.01 * n)
    eng.finish(x)
    notes = [(step, msg) for step, msg in eng.trace.notes if "non-finite" in msg]
    assert len(notes) == 1 and notes[0][0] == 0 and "samples [1]" in notes[0][1]
    assert (eng.trace.decisions[:, 1] == Decision.COMPUTE).all()  # it never skips: no finite history


def test_the_engine_runs_the_rule_registered_for_its_config_part():
    from sada.torch_backend.rules import ErrorControlRule, PaperFlowRule, StepScheduleRule

    assert type(SADAEngine(SADAConfig(), GRIDS["vp"], "epsilon").rule) is ErrorControlRule
    assert type(SADAEngine(SADAConfig(**BASE), GRIDS["vp"], "epsilon").rule) is StepScheduleRule
    assert type(SADAEngine(SADAConfig(mode="paper", **BASE), GRIDS["vp"], "epsilon").rule) is StepScheduleRule
    assert type(SADAEngine(SADAConfig(mode="paper", **BASE), GRIDS["flow"], "flow_velocity").rule) is PaperFlowRule


def test_adapters_pass_solver_order_and_lockstep_note_to_the_constructor():
    eng = SADAEngine(SADAConfig(), GRIDS["vp"], "epsilon", solver_order=1, lockstep=True, lockstep_note="compiled")
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eng.plan(0, x)
    assert eng.solver_order == 1 and eng.trace.notes[0] == (0, "compiled")
    eng.set_solver_order(4)
    assert eng.solver_order == 4
    with pytest.raises(ValueError, match="solver_order must be an int >= 1, got 0"):
        eng.set_solver_order(0)
    with pytest.raises(TypeError, match="lockstep_note must be a string"):
        SADAEngine(SADAConfig(), GRIDS["vp"], "epsilon", lockstep_note=3)


def test_both_engines_implement_the_sampling_engine_protocol():
    from sada.engine import SamplingEngine
    from sada.engine.numpy_engine import NumpyEngine

    assert isinstance(SADAEngine(SADAConfig(), GRIDS["vp"], "epsilon"), SamplingEngine)
    assert isinstance(NumpyEngine(SADAConfig(), GRIDS["vp"], "epsilon", 2), SamplingEngine)


def test_replay_reproduces_outputs_bit_for_bit_and_runs_reset_automatically():
    grid = GRIDS["vp"]
    outs = []
    eng = SADAEngine(SADAConfig(**BASE), grid, "epsilon")
    for batch in (3, 2):  # a second run with another batch size needs no manual reset
        torch.manual_seed(1)
        x = torch.randn(batch, 4, 4, dtype=torch.float64)
        for n in range(grid.num_steps):
            x = 0.9 * x + 0.1 * eng.step(n, x, lambda rows, idx: torch.sin(rows) + 0.02)
        eng.finish(x)
        outs.append(x)
    replayed = SADAEngine(SADAConfig(**BASE), grid, "epsilon", replay=eng.trace.decisions)
    torch.manual_seed(1)
    x = torch.randn(2, 4, 4, dtype=torch.float64)
    for n in range(grid.num_steps):
        x = 0.9 * x + 0.1 * replayed.step(n, x, lambda rows, idx: torch.sin(rows) + 0.02)
    assert torch.equal(x, outs[1])
    with pytest.raises(ValueError, match="changed shape/dtype/device mid-run"):
        eng.plan(0, torch.zeros(2, 4, 4, dtype=torch.float64))
        eng.plan(1, torch.zeros(3, 4, 4, dtype=torch.float64))


def test_grouped_rows_share_one_decision_and_summary_reads_well():
    grid = GRIDS["vp"]
    eng = SADAEngine(SADAConfig(**BASE), grid, "epsilon", groups=[0, 1, 0, 1])
    x = torch.randn(4, 4, 4, dtype=torch.float64)
    calls = []
    for n in range(grid.num_steps):
        out = eng.step(n, x, lambda rows, idx: (calls.append(idx.tolist()), 0.5 * rows + 0.01 * n)[1])
        x = 0.9 * x + 0.1 * out
    eng.finish(x)
    for idx in calls:  # rows 0/2 and 1/3 always run together
        assert (0 in idx) == (2 in idx) and (1 in idx) == (3 in idx)
    assert eng.trace.batch_size == 2
    assert eng.trace.summary().startswith("computed ") and "x), AM " in eng.trace.summary()


def test_paper_mode_rejected_on_a_ve_grid_and_paper_flow_needs_velocity():
    with pytest.raises(ValueError, match="mode='paper' needs a discrete VP grid"):
        SADAEngine(SADAConfig(mode="paper", **BASE), GRIDS["ve"], "epsilon")
    with pytest.raises(ValueError, match="needs kind='flow_velocity'"):
        SADAEngine(
            preset("flux", 50).replace(num_steps=None, **{}),
            StepGrid.from_times(RectifiedFlowSchedule(), RectifiedFlowSchedule().timesteps(50)),
            "epsilon",
        )


def test_a_new_skip_rule_is_one_config_dataclass_and_one_rule_class(monkeypatch):
    """docs/architecture.md, "Adding a skip rule": a part registered in SCHEDULES and a rule registered for it run
    through the unchanged engine shell and the JSON round trip."""
    from dataclasses import dataclass

    from sada.config import core
    from sada.config.parts import _Part
    from sada.engine.rules import base
    from sada.torch_backend.rules import TorchRule

    @dataclass(frozen=True)
    class HoldLast(_Part):
        max_interval: int = 1
        kind = "hold_last"

    monkeypatch.setitem(core.SCHEDULES, "hold_last", HoldLast)
    monkeypatch.setattr(base, "_REGISTRY", {k: list(v) for k, v in base._REGISTRY.items()})

    @base.register_rule("torch", HoldLast)
    class HoldLastRule(TorchRule):  # a skipped step reuses each row's last computed output
        uses_criterion = False

        def record(self, step, h, out, computed):
            last = getattr(self, "last", None)
            self.last = out.clone() if step == 0 else torch.where(self.mask(computed, h), out, last)

        def can_skip(self, step, rows, test):
            return np.full(rows, step >= 2)

        def synthesise(self, step, x, decisions):
            return self.last.to(x.dtype)

        def stage_output(self, step, edm_sigma, x, decisions):
            return self.synthesise(step, x, decisions)

    cfg = SADAConfig(schedule=HoldLast())
    assert SADAConfig.from_json(cfg.to_json()) == cfg
    eng = SADAEngine(cfg, GRIDS["vp"], "epsilon")
    assert type(eng.rule) is HoldLastRule
    x = torch.ones(2, 3, dtype=torch.float64)
    outs = [eng.step(n, x, lambda rows, idx, n=n: rows * n) for n in range(GRIDS["vp"].num_steps)]
    d = eng.trace.decisions[:, 0]
    assert list(d[:6]) == [0, 0, 0, 2, 0, 2] and (d[-2:] == 0).all()  # interleaved by max_interval=1
    assert torch.equal(outs[3], outs[2]) and torch.equal(outs[4], 4 * x)
