"""The diffusers adapter composes the session: what the summary says is what entered the network (issue 19 item 1),
the running pipeline is known without stack frames, and the diffusers idiom (config, apply/remove, already enabled)."""

import inspect
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import sada.adapters.diffusers as sada_d  # noqa: E402
from sada import SADAConfig  # noqa: E402
from sada.adapters import _diffusers_hooks  # noqa: E402
from sada.errors import AlreadyEnabledError  # noqa: E402
from tests import diffusers_fixtures as fx  # noqa: E402

ADAPTERS = Path(__file__).resolve().parents[1] / "adapters"


def _sd(pipe, steps=30, batch=2, seed=0):
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
    ).images


def _computed_per_sample(summary: str) -> float:
    return float(summary.split("/")[0].split()[-1])


def _run_counted(pipe, steps=30, batch=2):
    counter = fx.RowCounter(pipe.unet.conv_in)
    with sada_d.enabled(pipe) as handle:
        out = _sd(pipe, steps, batch)
        summary = handle.summary()
    counter.remove()
    return out, summary, counter.rows


def test_a_forward_wrapped_as_args_kwargs_still_skips_and_the_summary_counts_the_rows_that_ran():
    """Issue 19 item 1. Before: the hook could not read the timestep of a ``(*args, **kwargs)`` forward, so every row
    ran at every step (240 rows here) while the summary said ``computed 16/30 steps``."""
    pipe = fx.sd_pipeline()
    original = pipe.unet.forward
    pipe.unet.forward = lambda *a, **k: original(*a, **k)
    out, summary, rows = _run_counted(pipe)
    assert rows == round(_computed_per_sample(summary) * 2) * 2, summary  # two samples, two guidance rows each
    assert rows < 0.75 * 2 * 2 * 30, (rows, summary)
    plain = fx.sd_pipeline()
    _, plain_summary, plain_rows = _run_counted(plain)
    assert (summary, rows) == (plain_summary, plain_rows)  # the wrapper changes nothing
    assert torch.isfinite(out).all()


def test_an_unreadable_timestep_is_resolved_by_the_schedulers_step_index():
    """A call whose timestep cannot be read at all belongs to the step the scheduler runs next."""
    pipe = fx.sd_pipeline()
    _, reference_summary, reference_rows = _run_counted(pipe)
    handle = sada_d.enable(pipe)
    hook = pipe.unet._diffusers_hook.get_hook("sada")
    hook.params = ()  # as if the forward named no parameter: timestep_of() finds nothing
    counter = fx.RowCounter(pipe.unet.conv_in)
    _sd(pipe)
    counter.remove()
    assert (handle.summary(), counter.rows) == (reference_summary, reference_rows)
    sada_d.disable(pipe)


def test_the_summary_is_derived_from_the_rows_that_entered_the_network():
    """A second forward call per step outside the plan (here: a hook that reruns the unet on every row) is counted:
    the summary reports the skips that really happened, not the plan."""
    pipe = fx.sd_pipeline()
    with sada_d.enabled(pipe) as handle:
        _sd(pipe)
        session = handle._controller.last_session
        ran = session._ran_matrix(session.trace)
        planned = session.trace.decisions == 0
    assert (ran == planned).all()
    session.record_rows(20, [0, 1])  # as if both samples' rows had entered the network at step 20
    assert "planned skips ran the network anyway" in session.summary() or planned[20].all()


def test_no_stack_frames_are_walked():
    for path in ADAPTERS.glob("*.py"):
        assert "_getframe" not in path.read_text() and "inspect.stack" not in path.read_text(), path.name


def test_hook_classes_live_at_module_level():
    assert inspect.isclass(_diffusers_hooks.SkipHook) and inspect.isclass(_diffusers_hooks.BlockHook)
    from diffusers.hooks import ModelHook

    assert issubclass(_diffusers_hooks.SkipHook, ModelHook)


def test_apply_and_remove_in_diffusers_idiom_and_enabling_twice_names_what_to_do():
    pipe = fx.sd_pipeline()
    stock = _sd(pipe, steps=10)
    handle = sada_d.apply_sada(pipe, sada_d.SADAHookConfig(config=SADAConfig(max_interval=0)))
    assert torch.equal(_sd(pipe, steps=10), stock)
    for again in (lambda: sada_d.apply_sada(pipe), lambda: sada_d.enable(pipe)):
        with pytest.raises(ValueError, match=r"already enabled .* disable\(pipe\)") as info:
            again()
        assert isinstance(info.value, AlreadyEnabledError) and isinstance(info.value, RuntimeError)
    assert handle.config.never_skips
    sada_d.remove_sada(pipe)
    assert "progress_bar" not in pipe.__dict__ and not hasattr(pipe.unet, "_diffusers_hook")
    assert "step" not in pipe.scheduler.__dict__ and getattr(pipe, "_sada_handle", None) is None
    with pytest.raises(TypeError, match="SADAHookConfig"):
        sada_d.apply_sada(pipe, "fast")


def test_apply_sada_on_a_bare_denoiser_needs_its_scheduler_and_runs_the_pipeline():
    pipe = fx.sd_pipeline()
    stock = _sd(pipe, steps=30)
    with pytest.raises(TypeError, match=r"SADAHookConfig\(scheduler=pipe.scheduler\)"):
        sada_d.apply_sada(pipe.unet)
    handle = sada_d.apply_sada(pipe.unet, sada_d.SADAHookConfig(scheduler=pipe.scheduler))
    with pytest.raises(ValueError, match="already enabled"):
        sada_d.apply_sada(pipe.unet, sada_d.SADAHookConfig(scheduler=pipe.scheduler))
    out = _sd(pipe, steps=30)
    assert handle.trace.speedup() > 1.3 and float((out - stock).norm() / stock.norm()) < 0.05
    sada_d.remove_sada(pipe.unet)
    assert torch.equal(_sd(pipe, steps=30), stock)
    with pytest.raises(RuntimeError, match="was not applied"):
        sada_d.remove_sada(pipe.unet)
