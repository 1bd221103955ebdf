"""The benchmark's image metrics against closed forms."""

import numpy as np
import pytest

pytest.importorskip("torchmetrics")
from scipy import linalg  # noqa: E402

from benchmarks.metrics import frechet_distance, psnr  # noqa: E402


def test_frechet_distance_equals_the_sqrtm_closed_form_on_full_rank_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 5)), rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)) + 0.3
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb - 2 * np.real(linalg.sqrtm(ca @ cb)))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_a_set_with_itself_is_zero_even_when_rank_deficient():
    feats = np.random.default_rng(1).normal(size=(8, 32))  # 8 samples, 32 features: covariance of rank 7
    assert abs(frechet_distance(feats, feats)) < 1e-5  # sqrt of round-off on the null space: ~1e-8 each
    shifted = feats + 2.0
    assert frechet_distance(feats, shifted) == pytest.approx(32 * 4.0, rel=1e-6)


def test_psnr_of_a_known_error():
    import torch

    ref = torch.zeros(2, 1, 4, 4)
    img = ref + 0.02  # data range 2: PSNR = 10 log10(4 / 4e-4) = 40 dB
    assert psnr(img, ref) == pytest.approx(40.0, abs=1e-4)
    assert psnr(ref, ref) == 100.0


def test_frechet_distance_rejects_mismatched_widths():
    with pytest.raises(ValueError, match="feature sets"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))


# --------------------------------------------------------------------------- the ODE reference solver
def _gaussian_vp_problem(order, steps, c=0.5, sigma_max=14.6, sigma_min=0.03):
    import torch

    from benchmarks.reference import probability_flow_solve

    edm = np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), steps))
    alphas = 1 / np.sqrt(1 + edm**2)
    sigmas = edm * alphas
    x_t = torch.linspace(-2, 2, 7, dtype=torch.float64)  # VP state at sigma_max
    out = probability_flow_solve(
        lambda x, i: alphas[i] * c**2 * x / (alphas[i] ** 2 * c**2 + sigmas[i] ** 2), x_t, alphas, sigmas, order
    )
    x_hat_t = x_t / alphas[0]  # exact: x_hat(s) = x_hat_T sqrt((c^2 + s^2) / (c^2 + s_T^2)), then D at sigma_min
    exact = x_hat_t * c**2 / np.sqrt((c**2 + sigma_max**2) * (c**2 + sigma_min**2))
    return float((out - exact).abs().max())


def test_reference_solver_converges_at_second_order_on_a_gaussian():
    errors = [_gaussian_vp_problem(2, n) for n in (40, 80, 160)]
    assert errors[2] < 1e-4
    for coarse, fine in zip(errors, errors[1:]):
        assert coarse / fine == pytest.approx(4.0, rel=0.1)


def test_third_order_reference_is_more_accurate_but_its_first_order_start_caps_the_rate():
    second = [_gaussian_vp_problem(2, n) for n in (40, 80)]
    third = [_gaussian_vp_problem(3, n) for n in (40, 80)]
    assert third[0] < 0.4 * second[0] and third[1] < 0.4 * second[1]
    assert 4.0 <= third[0] / third[1] < 5.0  # the start (orders 1, 2) leaves a second-order error term


def test_reference_solver_starts_a_flow_at_pure_noise():
    import torch

    from benchmarks.reference import probability_flow_solve

    c, t_min = 0.5, 1e-3
    x1 = torch.tensor([-1.0, 0.3, 2.0], dtype=torch.float64)
    exact = x1 * c**2 / np.sqrt(c**2 + (t_min / (1 - t_min)) ** 2)  # x_hat(s) = x_1 sqrt(c^2 + s^2); D at t_min
    errors = []
    for n in (200, 400):
        t = np.linspace(1.0, t_min, n)
        alphas, sigmas = 1 - t, t
        out = probability_flow_solve(
            lambda x, i: alphas[i] * c**2 * x / (alphas[i] ** 2 * c**2 + sigmas[i] ** 2), x1, alphas, sigmas, 2
        )
        errors.append(float((out - exact).abs().max()))
    assert errors[1] < 2e-4 and errors[0] / errors[1] > 4.0


def test_reference_solver_rejects_a_grid_that_does_not_decrease():
    import torch

    from benchmarks.reference import probability_flow_solve

    with pytest.raises(ValueError, match="strictly decreasing"):
        probability_flow_solve(lambda x, i: x, torch.zeros(2), [0.5, 0.4], [0.5, 0.9])


# --------------------------------------------------------------------------- equal-evaluation peers and goals
def test_equal_nfe_peer_interpolates_per_image_and_picks_the_best_family():
    from benchmarks.stats import equal_nfe_peer

    plain = {
        ("a", 10): [30.0, 32.0],
        ("a", 11): [31.0, 35.0],
        ("b", 10): [33.0, 33.0],
        ("b", 11): [33.0, 33.0],
        ("c", 11): [50.0, 50.0],
    }  # c has no run at or below 10.25 evaluations: left out
    peer = equal_nfe_peer(10.25, [34.0, 35.0], plain, lambda steps: steps)
    assert peer["family"] == "b" and peer["steps"] == [10, 11] and peer["weight"] == pytest.approx(0.25)
    assert peer["candidates"] == {"a": 31.5, "b": 33.0}
    assert peer["delta"] == pytest.approx(1.5) and peer["delta_2se"] == pytest.approx(1.0)
    assert peer["name"] == "b, 10-11 steps at NFE 10.2"


def test_equal_nfe_peer_needs_the_floor_and_ceil_runs_not_distant_ones():
    from benchmarks.stats import equal_nfe_peer

    plain = {("a", 28): [55.0], ("a", 50): [65.0], ("b", 43): [60.0], ("b", 44): [62.0]}
    assert equal_nfe_peer(43.25, [61.0], {k: v for k, v in plain.items() if k[0] == "a"}, lambda s: s) == {}
    peer = equal_nfe_peer(43.25, [61.0], plain, lambda s: s)  # a's 28-50 line would say 60.3: left out
    assert peer["family"] == "b" and peer["psnr"] == pytest.approx(60.5) and peer["candidates"] == {"b": 60.5}
    assert equal_nfe_peer(28.0, [56.0], plain, lambda s: s)["delta"] == pytest.approx(1.0)  # a run at exactly nfe


def test_equal_nfe_peer_of_two_stage_samplers_counts_evaluations_not_steps():
    from benchmarks.cells import Cell
    from benchmarks.stats import equal_nfe_peer

    heun = Cell.parse("diffusers/unet/heun/karras/15")
    assert heun.nfe_of_steps(15) == 29 and heun.steps_of_nfe(24.0) == 12.5
    plain = {("karras", 12): [40.0], ("karras", 13): [42.0]}  # 23 and 25 evaluations
    peer = equal_nfe_peer(24.0, [41.0], plain, heun.nfe_of_steps)
    assert peer["weight"] == pytest.approx(0.5) and peer["psnr"] == pytest.approx(41.0) and peer["delta"] == 0.0


def test_goal_rows_apply_the_goal_of_the_step_count():
    from benchmarks.stats import goal_rows

    def cell(steps, nfe, delta):
        peer = {"name": "p", "psnr": 40.0, "delta": delta, "delta_2se": 0.1}
        return {
            "name": f"c{steps}",
            "steps": steps,
            "baseline_nfe": float(steps),
            "variants": {"SADA": {"NFE": nfe, "psnr_ode": 40 + delta, "peer": peer}},
        }

    rows = goal_rows([cell(50, 24.0, 3.5), cell(50, 26.0, 5.0), cell(25, 13.0, 1.2), cell(15, 11.0, -0.31)], ("SADA",))
    assert [r["met"] for r in rows] == [True, False, True, False]  # 26 NFE at 50 steps is 1.92x < 2x
    assert [r["no_loss"] for r in rows] == [True, True, True, False]
    assert rows[2]["goal_ratio"] == 1.8 and rows[2]["goal_delta"] == 1.0


def test_a_loss_is_the_grids_when_the_full_run_is_itself_behind_else_a_tie_within_two_se_else_the_skips():
    from benchmarks.stats import loss_cause

    assert loss_cause(-0.2, 0.1, -5.0) is None  # within the allowed loss: no cause, whatever the grid
    assert loss_cause(-8.3, 0.9, -8.4) == "grid"  # the full run is as far behind: the host's grid loses
    assert loss_cause(-0.9, 0.15, -0.15) == "skips"  # full run within the allowed loss, the skips cost 0.75
    assert loss_cause(-0.39, 1.06, 10.9) == "tie"  # -0.39 + 1.06 reaches the allowed loss
    assert loss_cause(-0.31, float("nan"), None) == "skips"  # one image, no full run: no evidence of either
    with pytest.raises(ValueError, match="delta must be a finite number or NaN, got inf"):
        loss_cause(float("inf"), 0.1, None)


def test_goal_rows_name_the_cause_of_each_loss_from_the_cells_full_run():
    from benchmarks.render import _loss_causes
    from benchmarks.stats import goal_rows

    def cell(name, full, delta, two_se):
        peer = {"name": "p", "psnr": 40.0, "delta": delta, "delta_2se": two_se}
        return {
            "name": name,
            "steps": 50,
            "baseline_nfe": 50.0,
            "rows": [{"method": "baseline", "PSNR vs ODE": full}],
            "variants": {"SADA": {"NFE": 20.0, "psnr_ode": 40 + delta, "peer": peer}},
        }

    cells = [cell("a", 31.0, -8.0, 0.5), cell("b", 40.2, -0.9, 0.2), cell("c", 41.0, -0.4, 0.3), cell("d", 41, 1, 1)]
    rows = goal_rows(cells, ("SADA",))
    assert [(r["full_psnr"], r["loss_cause"]) for r in rows] == [
        (31.0, "grid"),
        (40.2, "skips"),
        (41.0, "tie"),
        (41, None),
    ]
    text = _loss_causes(rows)
    assert text.startswith("; behind: 1 the cell's own full run is itself more than")
    assert (
        ", so no skip rule can pass it (the variant there is within 0.00 dB of the full run, least close on a)" in text
    )
    assert "; 1 within two standard errors" in text and text.endswith("; 1 behind by the skips: b -0.90")
    assert _loss_causes([{k: v for k, v in r.items() if k != "loss_cause"} for r in rows]) == ""


def test_steps_around_brackets_the_evaluation_count():
    from benchmarks.cells import Cell
    from benchmarks.grids import steps_around

    dpm = Cell.parse("diffusers/unet/dpmpp_2m/trailing/50")
    assert steps_around(dpm, 23.3) == [23, 24] and steps_around(dpm, 23.0) == [23]
    assert steps_around(Cell.parse("k-diffusion/unet/heun/karras/50"), 50.0) == [25, 26]
    with pytest.raises(ValueError, match="nfe must be a positive number"):
        steps_around(dpm, 0.0)


def test_seed_sets_are_disjoint_and_labels_cycle():
    from benchmarks.cells import seed_list

    assert seed_list("heldout", 3) == [1000, 1001, 1002] and seed_list("tuning", 2) == [0, 1]
    with pytest.raises(ValueError, match="the tuning set has 1000 seeds"):
        seed_list("tuning", 1001)
    with pytest.raises(ValueError, match="seed_set must be one of"):
        seed_list("test", 2)


def test_the_corrector_experiment_switches_unipc_off_exactly_on_the_steps_no_network_row_ran():
    from types import SimpleNamespace

    import torch
    from diffusers import DDIMScheduler, UniPCMultistepScheduler

    from benchmarks.unipc_corrector import switch_corrector_off_on_skips

    runner = SimpleNamespace(pipe=SimpleNamespace(scheduler=UniPCMultistepScheduler()), counter=SimpleNamespace(rows=0))
    state = switch_corrector_off_on_skips(runner)
    patched, reference, plain = (
        runner.pipe.scheduler,
        UniPCMultistepScheduler(disable_corrector=[1]),
        UniPCMultistepScheduler(),
    )
    for scheduler in (patched, reference, plain):
        scheduler.set_timesteps(6)
    gen = torch.Generator().manual_seed(0)
    x = y = z = torch.randn(1, 2, 4, 4, generator=gen)
    for i, rows in enumerate([2, 4, 4, 6]):  # the network ran at steps 0, 1 and 3; step 2 was skipped
        runner.counter.rows = rows
        out = torch.randn(1, 2, 4, 4, generator=gen)
        x = patched.step(out, patched.timesteps[i], x).prev_sample
        y = reference.step(out, reference.timesteps[i], y).prev_sample
        z = plain.step(out, plain.timesteps[i], z).prev_sample
    assert (
        state["off"] == 1 and torch.equal(x, y) and not torch.allclose(x, z)
    )  # the corrector at step 2 (listed as 1) was the only one off
    runner.pipe.scheduler = DDIMScheduler()
    with pytest.raises(ValueError, match="needs a UniPC scheduler, got DDIMScheduler"):
        switch_corrector_off_on_skips(runner)


@pytest.mark.parametrize("name", ["UniPCMultistepScheduler", "DPMSolverMultistepScheduler"])
def test_the_history_experiment_replaces_the_skipped_steps_entries_of_the_schedulers_history(name):
    """Where the clean predictions are exactly quadratic in sigma, refining the history replaces the skipped step's
    entry by the exact value, but the sample the skipped step produced keeps its error (why the library re-integrates
    the whole stretch instead)."""
    from types import SimpleNamespace

    import diffusers
    import torch

    import benchmarks.history_refinement as refinement

    cls = getattr(diffusers, name)
    config = dict(prediction_type="sample", use_karras_sigmas=True)
    runner = SimpleNamespace(pipe=SimpleNamespace(scheduler=cls(**config)), counter=SimpleNamespace(rows=0))
    state = refinement.refine_history_after_skips(runner, "history")
    patched, plain = runner.pipe.scheduler, cls(**config)
    for scheduler in (patched, plain):
        scheduler.set_timesteps(8)
    gen = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(1, 2, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    x = y = torch.randn(1, 2, 4, 4, generator=gen, dtype=torch.float64) * 10
    for i, rows in enumerate([2, 4, 6, 6, 8]):  # the network ran on every step but step 3
        runner.counter.rows = rows
        sigma = float(plain.sigmas[i])
        exact = a + b * sigma + c * sigma**2  # the clean prediction, quadratic in sigma
        x = patched.step(exact + 5.0 if i == 3 else exact, patched.timesteps[i], x).prev_sample
        y = plain.step(exact, plain.timesteps[i], y).prev_sample
    exact_3 = a + b * float(plain.sigmas[3]) + c * float(plain.sigmas[3]) ** 2
    assert state["refined"] == 1
    torch.testing.assert_close(patched.model_outputs[-2], exact_3, rtol=1e-9, atol=1e-9)
    assert (x - y).abs().max() > 0.01
    runner.pipe.scheduler = diffusers.DDIMScheduler()
    with pytest.raises(ValueError, match="needs a UniPC or DPM-Solver"):
        refinement.refine_history_after_skips(runner)
    with pytest.raises(ValueError, match="mode must be one of"):
        refinement.refine_history_after_skips(runner, "replay")
