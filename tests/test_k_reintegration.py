"""Re-integrating a skipped stretch under k-diffusion's samplers (``adapters/_k_replay.py``): the step the denoiser
steers is the sampler's own, a wrong skip leaves no trace where the clean predictions are quadratic in sigma, per row,
and when it applies."""

import numpy as np
import pytest
import torch

from sada import SADAConfig
from sada.adapters import k_diffusion as kd
from sada.adapters._k_replay import SamplerReplay, step_coefficients
from sada.policy import Decision
from sada.torch_backend.session import SADASession
from sada.trajectory import DiscreteVPSchedule, StepGrid
from tests.kdiffusion_shim import load_k_sampling

K = load_k_sampling()
pytestmark = pytest.mark.skipif(K is None, reason="k-diffusion is not installed (pip install --no-deps k-diffusion)")

VP = DiscreteVPSchedule.from_beta_schedule("scaled_linear")
C, S = int(Decision.COMPUTE), int(Decision.SKIP_LAGRANGE)
STEERED = ["sample_euler", "sample_dpmpp_2m"]


def _sigmas(n, to_zero=True):
    """``n`` steps: to 0 (the sampler's last step returns the clean prediction) or to the table's ``n + 1``-th level
    (every step's error stays in the final sample)."""
    levels = VP.edm_sigma(VP.timesteps(n if to_zero else n + 1, "trailing"))
    return torch.tensor(np.append(levels, 0.0) if to_zero else levels)


def _quadratic(batch, seed=0):
    """Clean predictions ``a + b s + c s^2`` that do not depend on the sample, and a starting sample."""
    gen = torch.Generator().manual_seed(seed)
    a, b, c = (torch.randn(batch, 2, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    return (lambda s: a + b * s + c * s**2), torch.randn(batch, 2, 3, generator=gen, dtype=torch.float64) * 10


@pytest.mark.parametrize("name", STEERED)
def test_the_step_coefficients_reproduce_the_samplers_own_step(name):
    sigmas = _sigmas(12)
    seen = []

    def model(x, sigma, **extra):
        out = torch.sin(3 * x) + float(sigma[0])  # any output: the step is linear in it
        seen.append((x.clone(), out))
        return out

    final = getattr(K, name)(model, torch.randn(2, 5, dtype=torch.float64) * 14, sigmas, disable=True)
    xs = [x for x, _ in seen] + [final]
    for i in range(len(seen)):
        a, b, c = step_coefficients(name, sigmas.numpy(), i)
        predicted = a * xs[i] + b * seen[i][1] + (c * seen[i - 1][1] if i else 0.0)
        torch.testing.assert_close(predicted, xs[i + 1], rtol=1e-12, atol=1e-12)


def _run(name, decisions, replay=True, hold="clean"):
    """k-diffusion's ``name`` fed the exact clean predictions where the plan computes and wrong ones (+3) where it
    skips, through a denoiser that re-integrates with :class:`SamplerReplay` (``replay``); returns the final sample
    and the trace's re-integration counts."""
    decisions = np.asarray(decisions, np.int8)
    sigmas = _sigmas(len(decisions), to_zero=False)
    grid = StepGrid.from_edm_sigmas(VP, sigmas.numpy())
    session = SADASession(grid, "sample", SADAConfig(), sample_scaling="edm", replay=decisions)
    steering = SamplerReplay(session, name, sigmas.numpy(), hold=hold) if replay else None
    exact, x = _quadratic(decisions.shape[1])
    step = iter(range(len(decisions)))

    def model(x, sigma, **extra):
        n = next(step)
        compute = session.plan(n, x)
        out = session.complete(n, x, exact(float(sigma[0]))) + 3.0 * torch.as_tensor(~compute).view(-1, 1, 1)
        return out if steering is None else steering.output(n, x, out, compute)

    return getattr(K, name)(model, x, sigmas, disable=True), session.trace.extras.get("reintegrated_steps", {})


@pytest.mark.parametrize("name", STEERED)
def test_reintegration_under_k_diffusion_erases_each_rows_skips_when_the_clean_predictions_are_quadratic_in_sigma(
    name,
):
    plan = [[C, C]] * 3 + [[S, C], [C, S], [S, S], [S, C], [C, C]] + [[C, C]] * 4
    exact, _ = _run(name, [[C, C]] * len(plan))
    without, _ = _run(name, plan, replay=False)
    with_replay, counts = _run(name, plan)
    assert (without - exact).abs().amax() > 0.01  # the wrong skips stay in the run without re-integration
    torch.testing.assert_close(with_replay, exact, rtol=1e-9, atol=1e-9)
    # row 0 skips 3 (re-integrated at 4) and 5-6 (at 7); row 1 skips 4-5 (at 6)
    assert counts == {4: 1, 6: 2, 7: 2}


def test_a_run_without_skips_gets_the_denoisers_outputs_unchanged():
    exact, _ = _run("sample_dpmpp_2m", [[C, C]] * 10, replay=False)
    steered, counts = _run("sample_dpmpp_2m", [[C, C]] * 10)
    assert torch.equal(steered, exact) and counts == {}


def test_the_default_replay_holds_the_networks_noise_estimate_at_the_reintegrated_sample():
    """With ``hold="noise"`` step ``n`` consumes ``D_n + x*_n - x_n``: on this sample-blind model it therefore
    differs from the exact run by exactly what the move adds, unlike ``hold="clean"``."""
    plan = [[C]] * 3 + [[S], [C]] + [[C]] * 3
    clean, _ = _run("sample_euler", plan)
    noise, _ = _run("sample_euler", plan, hold="noise")
    exact, _ = _run("sample_euler", [[C]] * len(plan))
    torch.testing.assert_close(clean, exact, rtol=1e-9, atol=1e-9)
    assert (noise - exact).abs().amax() > 1e-6
    with pytest.raises(ValueError, match="hold must be 'noise'"):
        SamplerReplay(None, "sample_euler", _sigmas(5).numpy(), hold="x")
    with pytest.raises(ValueError, match="sampler must be one of"):
        step_coefficients("sample_lms", _sigmas(5).numpy(), 0)
    with pytest.raises(ValueError, match="step 5 is outside the 5 steps"):
        step_coefficients("sample_euler", _sigmas(5).numpy(), 5)


class _Mixture:
    """A denoiser whose clean prediction depends on the sample (a two-point mixture), with training sigmas."""

    sigmas = torch.tensor(np.sqrt((1 - VP.alphas_cumprod) / VP.alphas_cumprod))

    def __call__(self, x, sigma, **extra):
        s2 = sigma.view(-1, 1) ** 2
        logits = torch.stack([-((x - m) ** 2).sum(1) / (2 * s2[:, 0]) for m in (1.0, -1.0)], 1)
        w = torch.softmax(logits, 1)
        return (w[:, :1] - w[:, 1:]).expand_as(x) * 1.0


@pytest.mark.parametrize("name, order_note", [("sample_dpmpp_2m", True), ("sample_euler", False)])
def test_a_k_diffusion_run_reintegrates_by_default_where_it_can_and_says_so(name, order_note):
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 14
    wrapped = kd.wrap(_Mixture(), _sigmas(50), sampler=name)
    getattr(K, name)(wrapped, x.clone(), _sigmas(50), disable=True)
    notes = " ".join(text for _, text in wrapped.trace.notes)
    # the default re-integrates at order >= 2, and at first order only from the dial's tolerance 0.01
    assert ("re-integrated once the network runs again" in notes) is order_note
    assert bool(wrapped.trace.extras.get("reintegrated_steps")) is order_note
    loose = kd.wrap(_Mixture(), _sigmas(50), SADAConfig(tolerance=0.02), sampler=name)
    getattr(K, name)(loose, x.clone(), _sigmas(50), disable=True)
    assert sum(loose.trace.extras["reintegrated_steps"].values()) > 0


def test_samplers_the_denoiser_cannot_steer_do_not_reintegrate_and_say_why_when_asked():
    for name, why in [("sample_lms", "sample_lms's step is not one the denoiser can steer"), (None, "not declared")]:
        wrapped = kd.wrap(_Mixture(), _sigmas(50), SADAConfig(reintegrate=True, tolerance=0.02), sampler=name)
        assert wrapped._replay is None
        assert any(why in note for note in wrapped.session.engine.host_notes)
    heun = kd.wrap(_Mixture(), _sigmas(50), SADAConfig(reintegrate=True), sampler="sample_heun")
    assert heun._replay is None and any("twice per step" in n for n in heun.session.engine.host_notes)
    assert not heun.session.engine.reintegrates  # a run that does not re-integrate keeps the last two steps


def test_a_steered_k_diffusion_run_computes_only_its_last_step_for_sure_and_may_skip_the_one_before():
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 14
    skipped = {}
    for reintegrate in (None, False):
        config = SADAConfig(tolerance=0.1, reintegrate=reintegrate)
        wrapped = kd.wrap(_Mixture(), _sigmas(10), config, sampler="sample_dpmpp_2m")
        K.sample_dpmpp_2m(wrapped, x.clone(), _sigmas(10), disable=True)
        d = wrapped.trace.decisions
        assert (d[-1] == C).all()
        skipped[reintegrate] = bool((d[-2] != C).any())
        assert wrapped.session.engine.policy.protected_tail == (1 if reintegrate is None else 2)
    assert skipped == {None: True, False: False}
    assert kd.wrap(_Mixture(), _sigmas(50), SADAConfig(reintegrate=False), sampler="sample_dpmpp_2m")._replay is None
