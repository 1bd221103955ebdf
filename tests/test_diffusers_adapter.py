"""The diffusers adapter on tiny random-weight pipelines built offline (see tests/diffusers_fixtures.py)."""

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import sada.adapters.diffusers as sada_d  # noqa: E402
from sada import SADAConfig  # noqa: E402
from sada.config import StepSchedule  # noqa: E402
from sada.policy import Decision  # noqa: E402
from sada.torch_backend.engine import SADAEngine  # noqa: E402
from tests import diffusers_fixtures as fx  # noqa: E402

NEVER = SADAConfig(max_interval=0)


def _sd_call(pipe, batch=2, steps=50, size=16, seed=0, **kw):
    pos, neg = fx.sd_embeds(batch, seed)
    return pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        num_inference_steps=steps,
        height=size,
        width=size,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        guidance_scale=5.0,
        **kw,
    ).images


def _sdxl_call(pipe, steps=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb, pooled = torch.randn(2, 6, 32, generator=g), torch.randn(2, 32, generator=g)
    return pipe(
        prompt_embeds=emb,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=torch.zeros_like(emb),
        negative_pooled_prompt_embeds=torch.zeros_like(pooled),
        num_inference_steps=steps,
        height=16,
        width=16,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    ).images


def _sd3_call(pipe, steps=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb, pooled = torch.randn(2, 6, 32, generator=g), torch.randn(2, 64, generator=g)
    return pipe(
        prompt_embeds=emb,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=torch.zeros_like(emb),
        negative_pooled_prompt_embeds=torch.zeros_like(pooled),
        num_inference_steps=steps,
        height=16,
        width=16,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    ).images


def _flux_call(pipe, steps=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb, pooled = torch.randn(2, 6, 32, generator=g), torch.randn(2, 32, generator=g)
    return pipe(
        prompt_embeds=emb,
        pooled_prompt_embeds=pooled,
        num_inference_steps=steps,
        height=16,
        width=16,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    ).images


def _dit_call(pipe, steps=50, seed=0):
    images = pipe(
        class_labels=[0, 2], num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="np"
    ).images  # DiTPipeline always decodes
    return torch.from_numpy(np.asarray(images))


def _controlnet_call(pipe, steps=50, seed=0):
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    return _sd_call(pipe, steps=steps, seed=seed, image=image)


def _img2img_call(pipe, steps=50, seed=0):
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))  # diffusers' [0, 1] tensor range
    return _sd_call(pipe, steps=steps, seed=seed, image=image, strength=0.7)


PIPELINES = {
    "sd": (fx.sd_pipeline, _sd_call, "unet"),
    "sdxl": (fx.sdxl_pipeline, _sdxl_call, "unet"),
    "sd3": (fx.sd3_pipeline, _sd3_call, "transformer"),
    "flux": (fx.flux_pipeline, _flux_call, "transformer"),
    "dit": (fx.dit_pipeline, _dit_call, "transformer"),
    "controlnet": (lambda: fx.sd_pipeline(controlnet=True), _controlnet_call, "unet"),
    "img2img": (lambda: fx.sd_pipeline(img2img=True), _img2img_call, "unet"),
}


def _first_layer(module):
    return next(m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_never_skip_is_bit_identical_and_defaults_save_forward_rows(name):
    make, call, role = PIPELINES[name]
    pipe = make()
    own_forward = getattr(pipe, role).__dict__.get("forward")
    base = call(pipe)
    handle = sada_d.enable(pipe, NEVER)
    assert torch.equal(call(pipe), base)
    handle.configure(SADAConfig())
    counter = fx.RowCounter(_first_layer(getattr(pipe, role)))
    fast = call(pipe)
    counter.remove()
    plain = fx.RowCounter(_first_layer(getattr(pipe, role)))
    sada_d.disable(pipe)
    again = call(pipe)
    plain.remove()
    assert torch.equal(again, base)  # disable restores the exact original behaviour
    assert fast.shape == base.shape and torch.isfinite(fast).all()
    assert counter.rows < 0.75 * plain.rows, handle.summary()
    assert getattr(pipe, role).__dict__.get("forward") is own_forward and "step" not in pipe.scheduler.__dict__


@pytest.mark.parametrize(
    "scheduler_name",
    [
        "DPMSolverMultistepScheduler",
        "EulerDiscreteScheduler",
        "DDIMScheduler",
        "UniPCMultistepScheduler",
        "HeunDiscreteScheduler",
    ],
)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_unet_schedulers_and_prediction_types(scheduler_name, prediction_type):
    pipe = fx.sd_pipeline(scheduler_name, prediction_type)
    steps = 30 if scheduler_name == "HeunDiscreteScheduler" else 50
    base = _sd_call(pipe, steps=steps)
    counter = fx.RowCounter(pipe.unet.conv_in)
    # random weights are rough in the timestep: the default dial skips little; a looser one tests the skipping path
    first_order = scheduler_name in ("EulerDiscreteScheduler", "DDIMScheduler")
    with sada_d.enabled(pipe, SADAConfig(tolerance=0.02 if first_order else 0.05)) as handle:
        fast = _sd_call(pipe, steps=steps)
        trace = handle.trace
    assert trace.num_steps == steps and trace.speedup() > 1.3
    computed = trace.network_evaluations()  # summed over the 2 samples
    per_step_calls = 2 if scheduler_name == "HeunDiscreteScheduler" else 1
    assert counter.rows <= 2 * computed * per_step_calls  # CFG: two rows per computed sample and evaluation
    rel = float((fast - base).norm() / base.norm())
    assert torch.isfinite(fast).all() and rel < 0.05, rel


@pytest.mark.parametrize(
    "name, message",
    [
        ("PNDMScheduler", "PNDMScheduler visits repeated or increasing timesteps"),
        ("KDPM2DiscreteScheduler", "KDPM2DiscreteScheduler evaluates the model twice per step at interpolated"),
    ],
)
def test_unsupported_scheduler_is_a_clear_error_at_enable_and_changes_nothing(name, message):
    pipe = fx.sd_pipeline()
    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config)
    forward = pipe.unet.forward
    with pytest.raises(ValueError, match=message):
        sada_d.enable(pipe)
    assert "step" not in pipe.scheduler.__dict__ and not hasattr(pipe.unet, "_diffusers_hook")
    assert pipe.unet.forward == forward and getattr(pipe, "_sada_handle", None) is None


def test_enabling_twice_is_an_error_and_configure_changes_the_config():
    pipe = fx.sd_pipeline()
    handle = sada_d.enable(pipe)
    with pytest.raises(RuntimeError, match="already enabled"):
        sada_d.enable(pipe)
    handle.configure(NEVER)
    assert handle.config.never_skips
    handle.disable()
    with pytest.raises(RuntimeError, match="not enabled"):
        sada_d.disable(pipe)


def test_decisions_equal_the_torch_engine_fed_with_the_same_trajectory():
    pipe = fx.sd_pipeline()
    seen = []
    original_step = type(pipe.scheduler).step

    def spy(self, model_output, timestep, sample, *args, **kwargs):
        seen.append((model_output.clone(), sample.clone()))
        return original_step(self, model_output, timestep, sample, *args, **kwargs)

    type(pipe.scheduler).step = spy
    config = SADAConfig(reintegrate=False)  # the solver steps once per call (re-integration: test_reintegration.py)
    try:
        with sada_d.enabled(pipe, config) as handle:
            _sd_call(pipe, batch=3)
            grid = handle._controller.run.grid
            decisions = handle.trace.decisions.copy()
    finally:
        type(pipe.scheduler).step = original_step
    engine = SADAEngine(config, grid, "epsilon")
    for n, (output, sample) in enumerate(seen):
        compute = engine.plan(n, sample)
        np.testing.assert_array_equal(compute, decisions[n] == Decision.COMPUTE, err_msg=f"step {n}")
        completed = engine.complete(n, sample, output[compute])
        torch.testing.assert_close(completed, output)  # skipped rows: the synthesised output the scheduler saw


def test_exception_inside_the_denoiser_leaves_the_pipeline_usable():
    pipe = fx.sd_pipeline()
    handle = sada_d.enable(pipe)
    reference = _sd_call(pipe)
    calls = {"n": 0}

    def boom(module, args):
        calls["n"] += 1
        if calls["n"] == 15:  # mid-run
            raise RuntimeError("boom")

    hook = pipe.unet.conv_in.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        _sd_call(pipe)
    hook.remove()
    assert torch.equal(_sd_call(pipe), reference)
    assert handle.trace.num_steps == 50


def test_second_call_with_other_resolution_and_step_count_needs_no_reset():
    pipe = fx.sd_pipeline()
    with sada_d.enabled(pipe) as handle:
        a = _sd_call(pipe, steps=50, size=16)
        b = _sd_call(pipe, steps=30, size=24, batch=3)
        trace = handle.trace
    assert a.shape == (2, 4, 16, 16) and b.shape == (3, 4, 24, 24)
    assert trace.num_steps == 30 and trace.batch_size == 3 and trace.speedup() > 1.2


def test_per_sample_decisions_run_only_the_rows_that_need_the_network():
    pipe = fx.sd_pipeline()
    counter = fx.RowCounter(pipe.unet.conv_in)
    with sada_d.enabled(pipe, SADAConfig(schedule=StepSchedule())) as handle:
        _sd_call(
            pipe, batch=3, seed=0
        )  # the authors' step schedule: with these weights the samples disagree at step 11
        d = handle.trace.decisions
    counter.remove()
    mixed = [n for n in range(50) if len(set(d[n])) > 1]
    assert mixed, "the three samples never disagreed"
    assert counter.rows == 2 * int(np.sum(d == Decision.COMPUTE))  # two CFG rows per computing sample, no more


def test_controlnet_is_not_run_on_skipped_steps():
    pipe = fx.sd_pipeline(controlnet=True)
    counter = fx.RowCounter(pipe.controlnet.conv_in)
    with sada_d.enabled(pipe) as handle:
        _controlnet_call(pipe)
        computed = handle.trace.network_evaluations()
    counter.remove()
    assert counter.rows == 2 * computed < 2 * 2 * 50


def test_img2img_runs_a_partial_schedule():
    pipe = fx.sd_pipeline(img2img=True)
    with sada_d.enabled(pipe) as handle:
        _img2img_call(pipe)
    assert handle.trace.num_steps == 35 and handle.trace.speedup() > 1.3


@pytest.mark.parametrize(
    "name, config",
    [
        ("sd", SADAConfig(max_downsample=2)),  # the tiny U-Net's attention runs at half resolution
        ("dit", SADAConfig(prune_blocks=(0, 1))),
        ("sd3", SADAConfig(prune_blocks=(0, 1))),
        ("flux", SADAConfig(prune_blocks=(0, 1))),  # rotary embeddings gathered with the tokens
    ],
)
def test_token_pruning_in_pipelines_prunes_tokens_and_reports_cache_memory(name, config):
    make, call, role = PIPELINES[name]
    pipe = make()
    base = call(pipe)
    with sada_d.enabled(pipe, config) as handle:
        out = call(pipe)
        assert "pruned blocks computed" in handle.summary()
    pruning = handle.trace.extras["pruning"]
    fractions = list(pruning["token_fraction"].values())
    assert fractions and min(fractions) < 1.0 and pruning["cache_bytes"] > 0
    rel = float((out - base).norm() / base.norm())
    assert torch.isfinite(out).all() and rel < 0.05, rel
    assert sada_d.enable(pipe, SADAConfig()) is not None  # hooks fully removed: enabling again works


def test_adaptive_diffusion_peer_runs_through_the_same_adapter():
    from sada.torch_backend.peers import AdaptiveDiffusionEngine

    pipe = fx.sd_pipeline()
    base = _sd_call(pipe)
    counter = fx.RowCounter(pipe.unet.conv_in)
    with sada_d.enabled(pipe, engine_factory=lambda grid, kind: AdaptiveDiffusionEngine(grid, kind, 0.05)) as h:
        out = _sd_call(pipe)
        trace = h.trace
    counter.remove()
    d = trace.decisions
    assert np.all(d[:4] == Decision.COMPUTE) and trace.speedup() > 1.2  # warm-up (steps 0-3), then reuse
    assert counter.rows == 2 * trace.network_evaluations()
    assert torch.isfinite(out).all() and float((out - base).norm() / base.norm()) < 0.2


def test_a_run_that_jumps_to_the_clean_sample_from_far_above_the_tables_smallest_level_is_noted_with_the_fix():
    import diffusers

    from sada.adapters._diffusers_scheduler import describe_scheduler, early_end_note
    from sada.trajectory import EARLY_END_RATIO

    pipe = fx.sd_pipeline("HeunDiscreteScheduler")
    config = pipe.scheduler.config  # trailing spacing, as the shipped configurations
    pipe.scheduler = diffusers.HeunDiscreteScheduler.from_config(config, use_karras_sigmas=True)
    with sada_d.enabled(pipe) as handle:
        _sd_call(pipe, steps=20)
        notes = [message for step, message in handle.trace.notes if "jumps to the clean sample" in message]
    last = float(pipe.scheduler.sigmas[-2])
    smallest = float(((1 - pipe.scheduler.alphas_cumprod[0]) / pipe.scheduler.alphas_cumprod[0]) ** 0.5)
    assert last > EARLY_END_RATIO * smallest  # Karras between the ends of the trailing spacing: 20 steps end early
    assert len(notes) == 1 and f"from sigma {last:.3g}, {last / smallest:.1f}x" in notes[0]
    assert "set timestep_spacing='linspace' (now 'trailing')" in notes[0]

    def note(scheduler, steps=20):
        scheduler.set_timesteps(steps)
        return early_end_note(scheduler, describe_scheduler(scheduler).grid_for_run(scheduler, 0)[0])

    linspace = diffusers.HeunDiscreteScheduler.from_config(config, use_karras_sigmas=True, timestep_spacing="linspace")
    assert note(linspace) is None  # the fix: the grid ends at the table's smallest level
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(config)
    assert "use a grid that ends nearer" in note(dpm)  # trailing without Karras sigmas ends early too
    assert note(diffusers.DPMSolverMultistepScheduler.from_config(config, use_karras_sigmas=True)) is None
    assert note(fx.scheduler("FlowMatchEulerDiscreteScheduler")) is None  # flow matching: no noise table
