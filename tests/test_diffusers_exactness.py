"""The diffusers adapter is invisible where it claims to be: stochastic step arguments, noise-injecting schedulers,
unsupported settings, schedulers recognised by capability, shared components, lifecycle and step counts."""

import inspect
import warnings

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import sada.adapters.diffusers as sada_d  # noqa: E402
from sada import SADAConfig, preset  # noqa: E402
from sada.config import StepSchedule  # noqa: E402
from sada.errors import ExactRunWarning, SADAWarning  # noqa: E402
from sada.policy import Decision  # noqa: E402
from tests import diffusers_fixtures as fx  # noqa: E402

NEVER = SADAConfig(max_interval=0)


def _sd(pipe, steps=50, seed=0, batch=2, **kw):
    pos, neg = fx.sd_embeds(batch, seed)
    return pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        num_inference_steps=steps,
        height=16,
        width=16,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        guidance_scale=5.0,
        **kw,
    ).images


def _with_scheduler(name, **config):
    pipe = fx.sd_pipeline()
    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **config)
    return pipe


def _sada_warnings(caught):
    return [w for w in caught if issubclass(w.category, SADAWarning)]


def test_wrapped_step_keeps_the_schedulers_signature():
    pipe = _with_scheduler("DDIMScheduler", clip_sample=False)
    before = inspect.signature(pipe.scheduler.step)
    with sada_d.enabled(pipe):
        assert inspect.signature(pipe.scheduler.step) == before
        assert {"eta", "generator"} <= set(inspect.signature(pipe.scheduler.step).parameters)


@pytest.mark.parametrize(
    "name, config, call",
    [
        ("DDIMScheduler", {"clip_sample": False}, {"eta": 1.0}),
        ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, {}),
        ("EulerAncestralDiscreteScheduler", {}, {}),
    ],
)
def test_noise_injecting_settings_are_bit_identical_with_skipping_disabled_and_exact_with_one_warning(
    name, config, call
):
    pipe = _with_scheduler(name, **config)
    stock = _sd(pipe, steps=30, **call)
    again = _sd(pipe, steps=30, seed=0, **call)
    assert torch.equal(stock, again)  # the seeded stochastic run is reproducible
    with pytest.warns(ExactRunWarning, match="noise"), sada_d.enabled(pipe, NEVER):
        assert torch.equal(_sd(pipe, steps=30, **call), stock)
    counter = fx.RowCounter(pipe.unet.conv_in)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sada_d.enabled(pipe) as handle:
            out = _sd(pipe, steps=30, **call)
            _sd(pipe, steps=30, **call)
    counter.remove()
    assert torch.equal(out, stock)  # every step computed exactly, the generator's draws unchanged
    assert counter.rows == 2 * 2 * 2 * 30 and len(_sada_warnings(caught)) == 1
    assert handle.summary().startswith("exact compute:") and "noise" in handle.summary()


def test_flow_match_stochastic_sampling_is_exact_with_a_warning():
    pipe = fx.sd3_pipeline()
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, stochastic_sampling=True)
    g = torch.Generator().manual_seed(0)
    emb, pooled = torch.randn(1, 6, 32, generator=g), torch.randn(1, 64, generator=g)

    def call():
        torch.manual_seed(5)  # the SD3 pipeline does not pass its generator to step(): its noise is global-RNG noise
        return pipe(
            prompt_embeds=emb,
            pooled_prompt_embeds=pooled,
            negative_prompt_embeds=torch.zeros_like(emb),
            negative_pooled_prompt_embeds=torch.zeros_like(pooled),
            num_inference_steps=30,
            height=16,
            width=16,
            generator=torch.Generator().manual_seed(3),
            output_type="latent",
        ).images

    stock = call()
    assert torch.equal(call(), stock)
    with pytest.warns(ExactRunWarning, match="stochastic_sampling=True adds noise"):
        with sada_d.enabled(pipe) as handle:
            out = call()
    assert torch.equal(out, stock) and handle.trace is None


@pytest.mark.parametrize(
    "name, config, message",
    [
        ("EDMEulerScheduler", {}, "EDM preconditioning"),
        ("DPMSolverMultistepScheduler", {"prediction_type": "sample_x0"}, "prediction_type='sample_x0'"),
        ("DDIMScheduler", {"clip_sample": True}, "clip_sample=True: the solver clips the predicted clean sample"),
    ],
)
def test_unsupported_settings_fail_at_enable_naming_the_setting(name, config, message):
    pipe = fx.sd_pipeline()
    cls = getattr(diffusers, name)
    pipe.scheduler = cls(**config) if name.startswith("EDM") else cls.from_config(pipe.scheduler.config, **config)
    with pytest.raises(ValueError, match=message):
        sada_d.enable(pipe)
    assert "step" not in pipe.scheduler.__dict__ and getattr(pipe, "_sada_handle", None) is None


def test_unknown_prune_blocks_fail_at_enable_and_leave_no_trace():
    pipe = fx.sd3_pipeline()
    with pytest.raises(ValueError, match=r"prune_blocks has indices \[5\] but SD3Transformer2DModel has 2"):
        sada_d.enable(pipe, SADAConfig(prune_blocks=(0, 5)))
    assert not hasattr(pipe.transformer, "_diffusers_hook") and "step" not in pipe.scheduler.__dict__
    handle = sada_d.enable(pipe)
    with pytest.raises(ValueError, match="cannot switch token pruning"):
        handle.configure(SADAConfig(prune_blocks=(0,)))
    assert handle.config == SADAConfig()
    handle.disable()


@pytest.mark.parametrize(
    "name, config",
    [
        ("DEISMultistepScheduler", {}),
        ("DDIMScheduler", {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "clip_sample": False}),
        ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ],
)
def test_more_schedulers_by_capability_are_bit_identical_when_disabled_and_skip_when_enabled(name, config):
    pipe = _with_scheduler(name, **config)
    stock = _sd(pipe)
    with sada_d.enabled(pipe, NEVER):
        assert torch.equal(_sd(pipe), stock)
    with sada_d.enabled(pipe, SADAConfig(tolerance=0.02)) as handle:  # random weights: a looser dial
        out = _sd(pipe)
    assert handle.trace.speedup() > 1.3 and torch.isfinite(out).all()
    assert float((out - stock).norm() / stock.norm()) < 0.05


def test_lms_runs_exactly_under_the_default_with_a_warning_and_skips_on_the_step_schedule():
    """LMS (order 4): the dial computes every step (its skips lost 8-18 dB on the shipped U-Net; docs/theory.md)."""
    pipe = _with_scheduler("LMSDiscreteScheduler")
    stock = _sd(pipe)
    with pytest.warns(UserWarning, match="order 4 .* computes every step"):
        with sada_d.enabled(pipe) as handle:
            out = _sd(pipe)
    assert torch.equal(out, stock) and handle.trace.speedup() == 1.0
    with sada_d.enabled(pipe, SADAConfig(schedule=StepSchedule())) as handle:
        out = _sd(pipe)
    assert handle.trace.speedup() > 1.3 and torch.isfinite(out).all()
    assert float((out - stock).norm() / stock.norm()) < 0.05


def test_a_scheduler_subclass_is_recognised():
    class MyDPM(diffusers.DPMSolverMultistepScheduler):
        pass

    pipe = fx.sd_pipeline()
    stock = _sd(pipe)
    pipe.scheduler = MyDPM.from_config(pipe.scheduler.config)
    with sada_d.enabled(pipe, NEVER):
        assert torch.equal(_sd(pipe), stock)
    with sada_d.enabled(pipe) as handle:
        _sd(pipe)
    assert handle.trace.speedup() > 1.3


def test_dpm_solver_with_flow_sigmas_runs_on_the_flow_grid():
    pipe = fx.sd3_pipeline()
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0
    )
    g = torch.Generator().manual_seed(0)
    emb, pooled = torch.randn(2, 6, 32, generator=g), torch.randn(2, 64, generator=g)

    def call():
        return pipe(
            prompt_embeds=emb,
            pooled_prompt_embeds=pooled,
            negative_prompt_embeds=torch.zeros_like(emb),
            negative_pooled_prompt_embeds=torch.zeros_like(pooled),
            num_inference_steps=50,
            height=16,
            width=16,
            generator=torch.Generator().manual_seed(3),
            output_type="latent",
        ).images

    stock = call()
    with sada_d.enabled(pipe, NEVER):
        assert torch.equal(call(), stock)
    with sada_d.enabled(pipe) as handle:
        out = call()
        grid = handle._controller.run.grid
    assert grid.family == "flow" and handle.trace.speedup() > 1.3
    assert float((out - stock).norm() / stock.norm()) < 0.05


def test_pipelines_sharing_the_unet_and_the_scheduler_keep_their_own_state():
    a = fx.sd_pipeline()
    b = diffusers.StableDiffusionPipeline(**a.components)
    b.set_progress_bar_config(disable=True)
    solo = {}
    for name, config in (("a", SADAConfig()), ("b", preset("sd2", 50, max_downsample=0))):
        with sada_d.enabled(a, config) as handle:
            solo[name] = (_sd(a, seed=1), handle.trace.decisions.copy())
    ha = sada_d.enable(a, SADAConfig())
    hb = sada_d.enable(b, preset("sd2", 50, max_downsample=0))
    assert torch.equal(_sd(a, seed=1), solo["a"][0]) and torch.equal(_sd(b, seed=1), solo["b"][0])
    np.testing.assert_array_equal(ha.trace.decisions, solo["a"][1])
    np.testing.assert_array_equal(hb.trace.decisions, solo["b"][1])
    sada_d.disable(a)
    assert torch.equal(_sd(b, seed=1), solo["b"][0])  # b keeps its acceleration
    assert "step" in b.scheduler.__dict__ and hasattr(b.unet, "_diffusers_hook")
    sada_d.disable(b)
    assert "step" not in b.scheduler.__dict__ and not hasattr(b.unet, "_diffusers_hook")


def test_dit_summary_counts_images_not_guidance_copies():
    pipe = fx.dit_pipeline()
    with sada_d.enabled(pipe) as handle:
        pipe(class_labels=[0, 2], num_inference_steps=50, generator=torch.Generator().manual_seed(0), output_type="np")
    assert handle.trace.batch_size == 2 and "(mean over 2 samples)" in handle.summary()


def test_a_run_too_short_for_skipping_says_so():
    pipe = fx.sd_pipeline()
    with sada_d.enabled(pipe) as handle:
        assert handle.summary() == "no run yet"
        _sd(pipe, steps=5)
    assert handle.summary() == "5 steps: below the skipping range, ran exactly"


@pytest.mark.parametrize("steps, least", [(25, 1.3), (100, 1.45), (200, 1.45)])  # 50-step ranges kept: 1.32x, 1.15x
def test_the_default_config_is_fitted_to_any_step_count(steps, least):
    pipe = fx.sd_pipeline()
    with sada_d.enabled(pipe) as handle:
        _sd(pipe, steps=steps, batch=1)
    trace = handle.trace
    assert trace.num_steps == steps and trace.speedup() > least, handle.summary()
    assert np.all(trace.decisions[-2:] == Decision.COMPUTE)


def test_a_config_written_for_another_step_count_is_rescaled_with_a_warning():
    pipe = fx.sd_pipeline()
    with sada_d.enabled(pipe, preset("sd2", 50, max_downsample=0)) as handle:
        with pytest.warns(SADAWarning, match="was written for num_steps=50; this run has 30 steps"):
            _sd(pipe, steps=30, batch=1)
    assert handle.trace.num_steps == 30 and handle.trace.speedup() > 1.2
