"""The k-diffusion adapter with the real k-diffusion samplers and the lab's closed-form mixture denoiser."""

import warnings

import numpy as np
import pytest
import torch

from benchmarks.lab.distributions import random_mixture
from sada import SADAConfig, preset
from sada.adapters import k_diffusion as kd
from sada.config import StepSchedule
from sada.errors import ConfigError, ExactRunWarning, SADAWarning
from sada.trajectory import DiscreteVPSchedule
from tests.kdiffusion_shim import load_k_sampling

K = load_k_sampling()
pytestmark = pytest.mark.skipif(K is None, reason="k-diffusion is not installed (pip install --no-deps k-diffusion)")

VP = DiscreteVPSchedule.from_beta_schedule("scaled_linear")
MIX = random_mixture(32, 6, seed=1)


class MixtureDenoiser:
    """A k-diffusion denoiser (x~, sigma) -> E[x0 | x~] with training sigmas like a DiscreteSchedule model."""

    def __init__(self):
        self.sigmas = torch.tensor(np.sqrt((1 - VP.alphas_cumprod) / VP.alphas_cumprod))
        self.calls = 0

    def __call__(self, x, sigma, **extra):
        self.calls += x.shape[0]
        out = np.stack([MIX.denoise(x[i : i + 1].double().numpy(), float(sigma[i]))[0] for i in range(x.shape[0])])
        return torch.tensor(out, dtype=x.dtype)


def _sigmas(n=50):
    return torch.tensor(np.append(VP.edm_sigma(VP.timesteps(n, "trailing")), 0.0))


def _noise(batch=4, seed=0):
    return torch.randn(batch, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * float(
        _sigmas()[0]
    )


DETERMINISTIC = ["sample_euler", "sample_heun", "sample_dpmpp_2m", "sample_dpm_2", "sample_lms"]


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_never_skip_config_is_bit_identical_with_the_same_number_of_calls(name):
    sampler = getattr(K, name)
    plain_model, model = MixtureDenoiser(), MixtureDenoiser()
    plain = sampler(plain_model, _noise(), _sigmas(), disable=True)
    wrapped = kd.wrap(model, _sigmas(), SADAConfig(max_interval=0), sampler=sampler)
    out = sampler(wrapped, _noise(), _sigmas(), disable=True)
    assert torch.equal(out, plain) and model.calls == plain_model.calls


def test_lms_runs_exactly_under_the_default_and_warns_why():
    """LMS (order 4): the dial computes every step (its skips lost 8-18 dB on the shipped U-Net; docs/theory.md)."""
    plain_model, model = MixtureDenoiser(), MixtureDenoiser()
    plain = K.sample_lms(plain_model, _noise(), _sigmas(), disable=True)
    wrapped = kd.wrap(model, _sigmas(), sampler=K.sample_lms)
    with pytest.warns(UserWarning, match="order 4 .* computes every step"):
        out = K.sample_lms(wrapped, _noise(), _sigmas(), disable=True)
    assert torch.equal(out, plain) and model.calls == plain_model.calls
    assert "computes every step" in " ".join(text for _, text in wrapped.trace.notes)


def _rms(a, b):
    return float(torch.sqrt(torch.mean((a - b) ** 2)))


@pytest.mark.parametrize(
    "name, tolerance",
    [("sample_euler", 2e-3), ("sample_heun", 3e-3), ("sample_dpmpp_2m", 2e-3), ("sample_dpm_2", 3e-3)],
)
def test_defaults_at_50_steps_cut_model_calls_1_6x_and_beat_the_plain_grid_at_equal_calls(name, tolerance):
    sampler = getattr(K, name)
    plain_model = MixtureDenoiser()
    plain = sampler(plain_model, _noise(), _sigmas(), disable=True)
    results = {}
    for mode in ("paper", "default"):
        model = MixtureDenoiser()
        cfg = SADAConfig() if mode == "default" else preset("sd2", 50, reduce="sample")
        wrapped = kd.wrap(model, _sigmas(), cfg, sampler=sampler)
        out = sampler(wrapped, _noise(), _sigmas(), disable=True)
        results[mode] = (plain_model.calls / model.calls, _rms(out, plain))
        assert wrapped.calls == model.calls
    speed, err = results["default"]
    assert speed >= 1.6 and err <= 2.5 * tolerance, results
    calls_per_step = plain_model.calls / 50
    steps = max(2, round(plain_model.calls / speed / calls_per_step))  # the plain grid at SADA's model calls
    fewer = sampler(MixtureDenoiser(), _noise(), _sigmas(steps), disable=True)
    assert err < _rms(fewer, plain), (results, steps)
    assert results["paper"][0] >= 1.6 and results["paper"][1] <= 5 * tolerance, results


def test_per_sample_skip_paths_in_a_batch_equal_the_paths_alone():
    cfg = SADAConfig(schedule=StepSchedule(), criterion="corrected")  # its decisions differ between these samples
    batch = kd.wrap(MixtureDenoiser(), _sigmas(), cfg, sampler=K.sample_dpmpp_2m)
    K.sample_dpmpp_2m(batch, _noise(4), _sigmas(), disable=True)
    paths = [batch.trace.skip_path(i) for i in range(4)]
    for i in range(4):
        alone = kd.wrap(MixtureDenoiser(), _sigmas(), cfg, sampler=K.sample_dpmpp_2m)
        K.sample_dpmpp_2m(alone, _noise(4)[i : i + 1], _sigmas(), disable=True)
        assert alone.trace.skip_path(0) == paths[i]
    assert len(set(map(tuple, paths))) > 1


def test_a_new_run_resets_itself_and_reuses_nothing():
    wrapped = kd.wrap(MixtureDenoiser(), _sigmas(), sampler=K.sample_euler)
    first = K.sample_euler(wrapped, _noise(seed=1), _sigmas(), disable=True)
    K.sample_euler(wrapped, _noise(seed=2), _sigmas(), disable=True)
    again = K.sample_euler(wrapped, _noise(seed=1), _sigmas(), disable=True)
    assert torch.equal(first, again)


@pytest.mark.parametrize(
    "name",
    [
        "sample_euler_ancestral",
        "sample_dpm_2_ancestral",
        "sample_dpmpp_2s_ancestral",
        "sample_dpmpp_sde",
        "sample_dpmpp_2m_sde",
        "sample_dpmpp_3m_sde",
    ],
)
def test_noise_injecting_samplers_run_exactly_with_a_single_warning(name):
    sampler = getattr(K, name)
    torch.manual_seed(3)
    plain = sampler(MixtureDenoiser(), _noise(), _sigmas(), disable=True)
    model = MixtureDenoiser()
    wrapped = kd.wrap(model, _sigmas(), sampler=sampler)
    torch.manual_seed(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = sampler(wrapped, _noise(), _sigmas(), disable=True)
    sada_warnings = [w for w in caught if issubclass(w.category, SADAWarning)]
    assert torch.equal(out, plain) and len(sada_warnings) == 1 and "injects noise" in str(sada_warnings[0].message)
    assert sada_warnings[0].category is ExactRunWarning
    assert wrapped.summary().startswith("exact compute")


def test_unknown_caller_that_breaks_the_schedule_falls_back_to_exact_compute():
    model = MixtureDenoiser()
    wrapped = kd.wrap(model, _sigmas(), sampler="my_sampler")
    x = _noise()
    with pytest.warns(SADAWarning, match="sada:"):
        wrapped(x, _sigmas()[0].expand(4))
        wrapped(x, torch.full((4,), 3.3333, dtype=torch.float64))  # not the next sigma of the schedule
    assert wrapped._mode == "exact"


def test_schedule_detection_and_argument_errors():
    wrapped = kd.wrap(MixtureDenoiser(), _sigmas())
    assert isinstance(wrapped.schedule, DiscreteVPSchedule)
    assert wrapped.grid.training_beta is not None
    with pytest.raises(ValueError, match="strictly decreasing"):
        kd.wrap(MixtureDenoiser(), torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(TypeError, match="must be callable"):
        kd.wrap(object(), _sigmas())


def test_adaptive_dpm_fast_runs_exactly_with_a_single_warning():
    plain = K.sample_dpm_fast(MixtureDenoiser(), _noise(), 0.05, 14.0, 10, disable=True)
    wrapped = kd.wrap(MixtureDenoiser(), _sigmas(), sampler=K.sample_dpm_fast)
    with pytest.warns(ExactRunWarning, match="sample_dpm_fast chooses its own noise levels"):
        out = K.sample_dpm_fast(wrapped, _noise(), 0.05, 14.0, 10, disable=True)
    assert torch.equal(out, plain)


class NestedConditioningDenoiser(MixtureDenoiser):
    """Takes CompVis/ComfyUI-style nested conditioning and checks every tensor in it has the rows of ``x``."""

    def __call__(self, x, sigma, cond=None):
        leaves = [cond["c_crossattn"][0], cond["c_concat"][0], cond["extra"]["scale"]]
        assert all(t.shape[0] == x.shape[0] for t in leaves), [t.shape for t in leaves]
        assert torch.equal(cond["c_concat"][0][:, 0], x[:, 0] * 0 + cond["c_concat"][0][:, 0])
        return super().__call__(x, sigma)


def test_nested_conditioning_is_sliced_with_the_rows_that_run():
    cond = {
        "c_crossattn": [torch.arange(4.0)[:, None].expand(4, 3)],
        "c_concat": [torch.zeros(4, 2)],
        "extra": {"scale": torch.ones(4)},
        "shared": torch.ones(7),
    }
    model = NestedConditioningDenoiser()
    wrapped = kd.wrap(
        model, _sigmas(), SADAConfig(schedule=StepSchedule(), criterion="corrected"), sampler=K.sample_dpmpp_2m
    )
    out = K.sample_dpmpp_2m(wrapped, _noise(4), _sigmas(), extra_args={"cond": cond}, disable=True)
    d = wrapped.trace.decisions
    assert torch.isfinite(out).all() and any(len(set(row)) > 1 for row in d)  # some steps ran a subset of rows
    assert model.calls == wrapped.trace.network_evaluations() < 4 * 50


def test_a_wrapped_denoiser_reused_with_new_sigmas_plans_the_new_schedule():
    wrapped = kd.wrap(MixtureDenoiser(), _sigmas(50))
    wrapped.sample(K.sample_euler, _noise(), disable=True)
    assert wrapped.trace.num_steps == 50 and wrapped.trace.speedup() > 1.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # re-planning is silent: sample() declared the sigmas
        wrapped.sample(K.sample_euler, _noise(), _sigmas(25), disable=True)
    assert wrapped.trace.num_steps == 25 and wrapped.trace.speedup() > 1.2, wrapped.summary()
    assert not wrapped.summary().startswith("exact")


def test_any_step_count_is_fitted_and_too_short_runs_say_so():
    counts = {}
    for n in (6, 15, 25, 50, 100):
        wrapped = kd.wrap(MixtureDenoiser(), _sigmas(n), sampler=K.sample_dpmpp_2m)
        very_coarse = wrapped.engine.grid.median_log_snr_step > 0.48
        with warnings.catch_warnings():
            warnings.simplefilter("error", SADAWarning)  # no grid makes a second-order host run exactly
            K.sample_dpmpp_2m(wrapped, _noise(), _sigmas(n), disable=True)
        notes = " ".join(text for _, text in wrapped.trace.notes)
        assert very_coarse == ("the grid is very coarse for a solver of order 2" in notes), n
        counts[n] = (very_coarse, wrapped.trace.extras["dial"]["tolerance"], wrapped.trace.speedup())
    # a second-order host on a very coarse grid tightens the default tolerance (docs/theory.md, "Coarse grids")
    assert counts[6][:2] == (True, 0.002) and counts[6][2] >= 1.0, counts
    assert all(counts[n][:2] == (False, 0.03) for n in (15, 25, 50, 100)), counts
    assert counts[15][2] > 1.3 and counts[25][2] > 1.3 and counts[50][2] > 1.5 and counts[100][2] > 1.8, counts
    short = kd.wrap(MixtureDenoiser(), _sigmas(5), sampler="sample_euler")
    K.sample_euler(short, _noise(), _sigmas(5), disable=True)
    assert short.summary().startswith("5 steps: below the skipping range") and short.calls == 5 * 4


def _karras(n=30):
    return K.get_sigmas_karras(n, 0.03, 14.6, rho=7.0).double()


@pytest.mark.parametrize(
    "config", [SADAConfig(mode="paper"), SADAConfig(criterion="paper")], ids=["mode=paper", "criterion=paper"]
)
def test_a_config_the_grid_cannot_serve_raises_config_error_at_wrap(config):
    """Issue 19 item 3: a paper config on an EDM (Karras) grid used to run exactly with the error in the summary."""
    with pytest.raises(ConfigError, match="'paper' needs a discrete VP grid"):
        kd.wrap(lambda x, sigma: x, _karras(), config, sampler="sample_euler")


def test_too_short_is_the_only_case_that_runs_exactly():
    model = MixtureDenoiser()
    short = kd.wrap(model, _sigmas(4), sampler="sample_euler")
    out = K.sample_euler(short, _noise(), _sigmas(4), disable=True)
    assert torch.equal(out, K.sample_euler(MixtureDenoiser(), _noise(), _sigmas(4), disable=True))
    assert short.summary() == "4 steps: below the skipping range, ran exactly" and model.calls == 4 * 4


def test_bad_sigmas_name_the_length_and_the_first_offending_entry_not_the_schedule():
    sig = _sigmas(50).clone()
    sig[7] = sig[6] + 1.0
    with pytest.raises(ValueError) as info:
        kd.wrap(MixtureDenoiser(), sig)
    message = str(info.value)
    assert "got 51 entries, entry 7" in message and "entry 6" in message and len(message) < 200, message
    nan = _sigmas(50).clone()
    nan[3] = float("nan")
    with pytest.raises(ValueError, match="got 51 entries, entry 3 is nan"):
        kd.wrap(MixtureDenoiser(), nan)


def test_an_undeclared_sampler_warns_once_and_a_direct_call_on_other_sigmas_runs_exactly():
    model = MixtureDenoiser()
    wrapped = kd.wrap(model, _sigmas(50))
    with pytest.warns(SADAWarning, match="sampler was not declared"):
        K.sample_euler(wrapped, _noise(), _sigmas(50), disable=True)
    assert wrapped.trace.speedup() > 1.5
    model.calls = 0
    with pytest.warns(ExactRunWarning, match="does not follow the schedule"):
        out = K.sample_euler(wrapped, _noise(), _sigmas(25), disable=True)
    assert torch.equal(out, K.sample_euler(MixtureDenoiser(), _noise(), _sigmas(25), disable=True))
    assert model.calls == 25 * 4 and wrapped.summary().startswith("exact compute")


def test_the_summary_counts_the_rows_that_entered_the_model():
    model = MixtureDenoiser()
    wrapped = kd.wrap(
        model, _sigmas(), SADAConfig(schedule=StepSchedule(), criterion="corrected"), sampler=K.sample_heun
    )
    K.sample_heun(wrapped, _noise(4), _sigmas(), disable=True)
    computed = float(wrapped.summary().split("/")[0].split()[-1])
    assert wrapped.trace.network_evaluations() == round(computed * 4)
    assert model.calls == wrapped.calls == wrapped.session.network_rows


def test_sigmas_that_jump_to_zero_from_far_above_the_models_smallest_are_noted_with_the_fix():
    smallest = float(MixtureDenoiser().sigmas.min())
    trailing = kd.wrap(MixtureDenoiser(), _sigmas(50))  # trailing timesteps: the last is 19, sigma 0.134
    trailing.sample(K.sample_euler, _noise(), disable=True)
    notes = [message for step, message in trailing.trace.notes if "jumps to the clean sample" in message]
    last = float(_sigmas(50)[-2])
    assert last > 2 * smallest and len(notes) == 1
    assert f"from sigma {last:.3g}, {last / smallest:.1f}x the model's smallest noise level {smallest:.3g}" in notes[0]
    assert "get_sigmas_karras(n, model.sigma_min, model.sigma_max)" in notes[0]
    down = kd.wrap(MixtureDenoiser(), K.get_sigmas_karras(30, smallest, 14.6, rho=7.0).double())
    down.sample(K.sample_euler, _noise(), disable=True)
    assert not [message for step, message in down.trace.notes if "jumps to the clean sample" in message]
