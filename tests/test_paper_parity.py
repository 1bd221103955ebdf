"""``mode="paper"`` against an independent transcription of the official code (tests/official_sada.py).

Same trajectories, batch 1, the authors' SD-2 preset without token pruning: the library must make the official
decision at every step and hand the solver the official clean-sample estimate on every skipped step (to float32
rounding), for DPM-Solver++ and Euler, epsilon and v-prediction, every timestep spacing, on a closed-form mixture
denoiser and on a tiny random-weight Stable Diffusion pipeline with classifier-free guidance.
"""

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import sada  # noqa: E402
import sada.adapters.diffusers as sada_d  # noqa: E402
from benchmarks.lab.distributions import random_mixture  # noqa: E402
from sada.policy import Decision  # noqa: E402
from sada.reference import lagrange_basis_weights  # noqa: E402
from tests import diffusers_fixtures as fx  # noqa: E402
from tests.official_sada import run_official  # noqa: E402

SHAPE = (1, 4, 4, 4)
MIXTURE = random_mixture(64, 6, seed=3)
SCHEDULERS = {"dpm": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler"}
NAMES = {Decision.COMPUTE: "compute", Decision.SKIP_AM: "am", Decision.SKIP_LAGRANGE: "lagrange"}


def _scheduler(solver, prediction, spacing):
    cls = getattr(diffusers, SCHEDULERS[solver])
    return cls(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction,
        timestep_spacing=spacing,
        steps_offset=1,
    )


class MixtureUNet(torch.nn.Module):
    """A 'U-Net' predicting the closed-form mixture's epsilon or v at the scheduler's current timestep."""

    def __init__(self, scheduler, prediction):
        super().__init__()
        self.scheduler, self.prediction = scheduler, prediction
        self.anchor = torch.nn.Linear(1, 1)  # a parameter, so the module looks like a network

    def forward(self, sample, timestep):
        index = int(torch.argmin((self.scheduler.timesteps.double() - float(timestep)).abs()))
        sigma = float(self.scheduler.sigmas[index])
        alpha = 1.0 / (1.0 + sigma * sigma) ** 0.5
        x_tilde = sample.double().reshape(sample.shape[0], -1).numpy() / alpha
        x0 = MIXTURE.denoise(x_tilde, sigma)
        eps = (x_tilde - x0) / sigma
        out = eps if self.prediction == "epsilon" else alpha * eps - alpha * sigma * x0
        return torch.from_numpy(out).reshape(sample.shape).to(sample.dtype)


class MixturePipeline:
    """The minimum the adapter needs from a pipeline: a scheduler and a denoiser module."""

    def __init__(self, solver, prediction, spacing):
        self.scheduler = _scheduler(solver, prediction, spacing)
        self.unet = MixtureUNet(self.scheduler, prediction)

    def __call__(self, latents, steps):
        s = self.scheduler
        s.set_timesteps(steps)
        x = latents * s.init_noise_sigma
        for t in s.timesteps:
            x = s.step(self.unet(s.scale_model_input(x, t), t), t, x).prev_sample
        return x


class StepSpy:
    """Records, per scheduler call, the model output the solver consumed and its clean-sample prediction."""

    def __init__(self, scheduler_cls, solver):
        self.cls, self.solver, self.x0 = scheduler_cls, solver, []
        self.original = scheduler_cls.step
        spy = self

        def step(sched, model_output, timestep, sample, *args, **kwargs):
            index = len(spy.x0)
            if spy.solver == "dpm":
                if sched.step_index is None:
                    sched._init_step_index(timestep)
                spy.x0.append(sched.convert_model_output(model_output, sample=sample))
            else:
                sigma = float(sched.sigmas[index])
                spy.x0.append(
                    sample - sigma * model_output
                    if sched.config.prediction_type == "epsilon"
                    else model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
                )
            return spy.original(sched, model_output, timestep, sample, *args, **kwargs)

        scheduler_cls.step = step

    def remove(self):
        self.cls.step = self.original


def _library_run(pipe, call, solver):
    spy = StepSpy(type(pipe.scheduler), solver)
    try:
        with sada_d.enabled(pipe, sada.preset("sd2", 50, max_downsample=0)) as handle:
            sample = call()
            trace, grid = handle.trace, handle._controller.run.grid
    finally:
        spy.remove()
    decisions = [NAMES[int(d)] for d in trace.decisions[:, 0]]
    return decisions, spy.x0, sample, grid


def _assert_same_run(official, decisions, x0_used, sample):
    first = next((n for n, (a, b) in enumerate(zip(official.decisions, decisions)) if a != b), None)
    assert first is None, (
        f"decisions differ from step {first}: official {official.decisions[first : first + 6]}, "
        f"sada {decisions[first : first + 6]}"
    )
    assert official.x0_used, "the official run never skipped: nothing compared"
    for n, expected in official.x0_used.items():
        got = x0_used[n]
        rel = float((got.detach().double() - expected.detach().double()).norm() / expected.detach().double().norm())
        # float32 rounding (1e-5); a multistep estimate sums its nodes' rounding with the Lagrange weights
        nodes = [k for k in range(n) if k % 4 == 1][-4:]
        amplification = (
            float(np.abs(lagrange_basis_weights(nodes, n)).sum()) if official.decisions[n] == "lagrange" else 1.0
        )
        assert rel < 1e-5 * amplification, (
            f"step {n} ({official.decisions[n]}): clean-sample estimate differs by {rel:.2e}"
        )


@pytest.mark.parametrize("spacing", ["linspace", "trailing", "leading"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("solver", ["dpm", "euler"])
def test_paper_mode_makes_the_official_decisions_and_estimates_on_a_mixture_ode(solver, prediction, spacing):
    latents = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    pipe = MixturePipeline(solver, prediction, spacing)
    official = run_official(pipe.scheduler, pipe.unet, latents, 50, solver=solver)
    decisions, x0_used, sample, grid = _library_run(pipe, lambda: pipe(latents, 50), solver)
    _assert_same_run(official, decisions, x0_used, sample)
    np.testing.assert_array_equal(grid.training_beta, official.betas)


@pytest.mark.parametrize("solver, prediction", [("dpm", "epsilon"), ("euler", "v_prediction")])
def test_paper_mode_makes_the_official_decisions_in_a_stable_diffusion_pipeline_with_guidance(solver, prediction):
    pipe = fx.sd_pipeline(SCHEDULERS[solver], prediction)
    pipe.scheduler.register_to_config(timestep_spacing="linspace")
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    pos, neg = fx.sd_embeds(1, seed=4)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    guidance = 7.5

    def denoise(model_input, t):
        out = pipe.unet(torch.cat([model_input] * 2), t, encoder_hidden_states=torch.cat([neg, pos])).sample
        uncond, text = out.chunk(2)
        return uncond + guidance * (text - uncond)

    official = run_official(
        type(pipe.scheduler).from_config(pipe.scheduler.config), denoise, latents, 50, solver=solver
    )

    def call():
        return pipe(
            prompt_embeds=pos,
            negative_prompt_embeds=neg,
            latents=latents.clone(),
            num_inference_steps=50,
            guidance_scale=guidance,
            output_type="latent",
            height=16,
            width=16,
        ).images

    decisions, x0_used, sample, _ = _library_run(pipe, call, solver)
    _assert_same_run(official, decisions, x0_used, sample)


SPACINGS = ["linspace", "trailing", "leading"]


@pytest.mark.parametrize(
    "name",
    [
        "DPMSolverMultistepScheduler",
        "EulerDiscreteScheduler",
        "DDIMScheduler",
        "UniPCMultistepScheduler",
        "HeunDiscreteScheduler",
    ],
)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_training_beta_of_every_step_is_the_hosts_beta_at_its_own_timestep(name, spacing):
    pipe = fx.sd_pipeline(name)
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, timestep_spacing=spacing)
    grids = []
    with sada_d.enabled(pipe, sada.preset("sd2", 25, max_downsample=0)) as handle:
        pos, neg = fx.sd_embeds(1)
        pipe(
            prompt_embeds=pos,
            negative_prompt_embeds=neg,
            num_inference_steps=25,
            output_type="latent",
            height=16,
            width=16,
        )
        grids.append(handle._controller.run.grid)
    s = pipe.scheduler
    first_stage = (
        s.timesteps[::2] if name == "HeunDiscreteScheduler" else s.timesteps
    ).tolist()  # Heun: t0 t1 t1 t2 ..
    expected = [float(s.betas[int(t)]) for t in first_stage]
    np.testing.assert_array_equal(grids[0].training_beta, expected)
