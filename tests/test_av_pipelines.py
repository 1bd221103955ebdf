"""The diffusers adapter on tiny random-weight audio and video pipelines (see tests/av_fixtures.py).

For every pipeline: never-skip is a bit-exact pass-through, the default config runs the denoiser on fewer
rows and stays close to the stock output, per-sample decisions respect the pipeline's batch layout, and a
scheduler the adapter does not support is refused at ``enable``.
"""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import sada.adapters.diffusers as sada_d  # noqa: E402
from sada import SADAConfig  # noqa: E402
from sada.config import StepSchedule  # noqa: E402
from sada.errors import ExactRunWarning  # noqa: E402
from tests import av_fixtures as fx  # noqa: E402
from tests.diffusers_fixtures import RowCounter  # noqa: E402

NEVER = SADAConfig(max_interval=0)
NAMES = sorted(fx.PIPELINES)

# Relative RMS (||sada - stock|| / ||stock||) of the default config at 50 steps, measured on these tiny
# random-weight pipelines (one thread); the bounds are about twice the measurement.
REL_BOUND = {  # the default configuration (the accuracy dial), 50 steps, against the full run; bound ~2x measured
    "musicldm": 0.012,  # measured 0.0051 (DDIM, first order: 2.94x)
    "audioldm2": 0.028,  # measured 0.0138 (DDIM: 2.56x)
    "ltx": 0.023,  # measured 0.0114 (FlowMatchEuler: 2.70x)
    "hunyuan_video": 0.01,  # measured 0.0038 (FlowMatchEuler: 3.03x)
    "cogvideox": 0.023,  # measured 0.0112 (CogVideoXDDIMScheduler, first order: runs of skips; v-prediction; 4.00x)
    "wan": 0.015,  # measured 0.0075 (UniPC with flow sigmas and flow prediction: 2.50x)
}
# Stable Audio ships an SDE solver (CosineDPMSolverMultistepScheduler adds noise at every step): computed exactly.
ODE_PIPELINES = sorted(REL_BOUND)

# Seeds of two samples that take different decisions at some step of a 50-step run of the authors' step schedule
# (the default interleaves computed and skipped steps, the same for every sample of these pipelines).
MIXED_SEEDS = {"ltx": (0, 1)}  # every other pipeline: (11, 12)

# A scheduler each pipeline accepts and the adapter does not support, with the reason it names.
UNSUPPORTED = {
    "musicldm": ("PNDMScheduler", "repeated or increasing timesteps"),
    "audioldm2": ("KDPM2DiscreteScheduler", "twice per step at interpolated noise levels"),
    "stable_audio": ("EDMEulerScheduler", "EDM preconditioning"),
    "cogvideox": ("CogVideoXDPMScheduler", "supports schedulers whose step"),
    "wan": ("EDMEulerScheduler", "EDM preconditioning"),
    "ltx": ("EDMEulerScheduler", "EDM preconditioning"),
    "hunyuan_video": ("EDMEulerScheduler", "EDM preconditioning"),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _untouched(pipe, spec):
    denoiser = getattr(pipe, spec.denoiser)
    return (
        "forward" not in denoiser.__dict__
        and "step" not in pipe.scheduler.__dict__
        and getattr(pipe, "_sada_handle", None) is None
    )


def test_registry_describes_every_pipeline_scheduler_and_latent_shape():
    for name, spec in fx.PIPELINES.items():
        pipe = spec.build()
        assert type(pipe.scheduler).__name__ == spec.scheduler, name
        assert isinstance(fx.input_layer(pipe, spec), torch.nn.Module), name
        assert tuple(spec.call(pipe, steps=2).shape) == (2,) + spec.latent_shape, name


@pytest.mark.parametrize("name", NAMES)
def test_never_skip_is_bit_identical_to_the_stock_pipeline_and_after_disable(name):
    spec = fx.PIPELINES[name]
    pipe = spec.build()
    base = spec.call(pipe, steps=10)
    sada_d.enable(pipe, NEVER)
    try:
        if name in ODE_PIPELINES:
            out = spec.call(pipe, steps=10)
        else:  # Stable Audio's SDE solver: computed exactly, with the one warning that says so
            with pytest.warns(ExactRunWarning, match="adds fresh noise"):
                out = spec.call(pipe, steps=10)
    finally:
        sada_d.disable(pipe)
    again = spec.call(pipe, steps=10)
    assert torch.equal(out, base)
    assert torch.equal(again, base)
    assert _untouched(pipe, spec)


def test_never_skip_keeps_eta_and_generator_reaching_the_scheduler():
    # pipelines pass ``eta``/``generator`` only if ``scheduler.step``'s signature names them (stochastic DDIM here)
    spec = fx.PIPELINES["musicldm"]
    pipe = spec.build()
    base = spec.call(pipe, steps=10, eta=1.0)
    assert not torch.equal(base, spec.call(pipe, steps=10))
    with pytest.warns(ExactRunWarning, match=r"step\(eta=1\) adds noise"), sada_d.enabled(pipe, NEVER):
        out = spec.call(pipe, steps=10, eta=1.0)
    assert torch.equal(out, base)


@pytest.mark.parametrize("name", ODE_PIPELINES)
def test_default_config_runs_the_denoiser_on_fewer_rows_and_stays_close(name):
    spec = fx.PIPELINES[name]
    pipe = spec.build()
    layer = fx.input_layer(pipe, spec)
    plain = RowCounter(layer)
    base = spec.call(pipe, steps=50)
    plain.remove()
    with sada_d.enabled(pipe) as handle:
        counter = RowCounter(layer)
        fast = spec.call(pipe, steps=50)
        counter.remove()
        trace = handle.trace
    assert plain.rows == 2 * 2 * 50  # two prompts, two guidance rows each, every step
    assert trace is not None and trace.num_steps == 50 and trace.batch_size == 2
    assert counter.rows == 2 * trace.network_evaluations()  # both guidance rows of every computing sample
    assert counter.rows < plain.rows, handle.summary()  # random weights are rough: the default skips a few steps
    assert fast.shape == base.shape and torch.isfinite(fast).all()
    rel = _rel(fast, base)
    assert rel < REL_BOUND[name], rel
    with sada_d.enabled(pipe, SADAConfig(tolerance=0.05)) as handle:  # a looser dial skips a quarter or more
        counter = RowCounter(layer)
        looser = spec.call(pipe, steps=50)
        counter.remove()
    assert counter.rows < 0.75 * plain.rows, handle.summary()
    assert torch.isfinite(looser).all()


def test_two_expert_wan_runs_neither_expert_on_skipped_samples():
    # Wan 2.2 A14B layout: ``transformer`` above the boundary timestep, ``transformer_2`` below it; a supported
    # scheduler, so that only the second expert's handling is under test
    pipe = fx.wan_pipeline(two_experts=True, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    high, low = RowCounter(pipe.transformer.patch_embedding), RowCounter(pipe.transformer_2.patch_embedding)
    with sada_d.enabled(pipe) as handle:
        fx.wan_call(pipe, steps=50)
        computed = handle.trace.network_evaluations()
    high.remove()
    low.remove()
    assert low.rows > 0 and high.rows > 0  # both experts denoise part of the run
    assert computed < 2 * 50 and high.rows + low.rows == 2 * computed  # cond and uncond call per computing sample


def test_stable_audio_sde_solver_is_computed_exactly_with_one_warning():
    spec = fx.PIPELINES["stable_audio"]
    pipe = spec.build()
    base = spec.call(pipe, steps=20, seeds=[3, 4])
    with pytest.warns(ExactRunWarning, match="CosineDPMSolverMultistepScheduler adds fresh noise at every step"):
        with sada_d.enabled(pipe) as handle:
            out = spec.call(pipe, steps=20, seeds=[3, 4])
    assert torch.equal(out, base) and handle.summary().startswith("exact compute:")


@pytest.mark.parametrize("name", ODE_PIPELINES)
def test_per_sample_decisions_a_batch_of_two_equals_each_sample_run_alone(name):
    spec = fx.PIPELINES[name]
    pipe = spec.build()
    embeds, seeds = spec.embeds(2, 0), MIXED_SEEDS.get(name, (11, 12))

    def one_by_one(steps):
        return [spec.call(pipe, steps=steps, seeds=[s], embeds=fx.select(embeds, i)) for i, s in enumerate(seeds)]

    stock_both = spec.call(pipe, steps=10, seeds=seeds, embeds=embeds)
    for i, alone in enumerate(one_by_one(10)):  # the stock pipeline treats the samples independently
        torch.testing.assert_close(stock_both[i : i + 1], alone, rtol=1e-5, atol=1e-5 * float(alone.abs().max()))
    with sada_d.enabled(pipe, SADAConfig(schedule=StepSchedule())) as handle:
        both = spec.call(pipe, steps=50, seeds=seeds, embeds=embeds)
        decisions = handle.trace.decisions.copy()
        alone = one_by_one(50)
    assert decisions.shape == (50, 2)
    mixed = [n for n in range(50) if decisions[n, 0] != decisions[n, 1]]
    assert mixed, "the two samples never took different decisions"
    for i in range(2):
        torch.testing.assert_close(both[i : i + 1], alone[i], rtol=1e-4, atol=1e-4 * float(alone[i].abs().max()))


@pytest.mark.parametrize("name", NAMES)
def test_unsupported_scheduler_is_refused_at_enable_naming_it(name):
    spec = fx.PIPELINES[name]
    pipe = spec.build()
    cls, reason = UNSUPPORTED[name]
    pipe.scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match=f"sada: {cls}.*{reason}"):
        sada_d.enable(pipe)
    assert _untouched(pipe, spec)
    assert getattr(pipe, spec.denoiser).__dict__.get("_diffusers_hook") is None
