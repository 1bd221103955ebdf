"""The shipped U-Net as a k-diffusion denoiser, and one sampling run through k-diffusion's samplers.

:class:`DigitsEpsDenoiser` follows k-diffusion's ``DiscreteEpsDDPMDenoiser`` convention: training sigmas
``sqrt((1 - abar) / abar)`` (float32), the network fed ``x * c_in`` with ``c_in = 1 / sqrt(sigma^2 + 1)`` at
the *nearest* training timestep of ``sigma`` (k-diffusion's ``quantize=True``), ``D = x - sigma * eps``;
classifier-free guidance happens inside (labels come in ``extra_args``, so SADA's partial batches slice
them with the rows). The samplers come from :func:`sada.adapters.k_diffusion.load_sampling`.
"""

from __future__ import annotations

import torch

__all__ = ["DigitsEpsDenoiser", "kdiffusion_sigmas", "run_kdiffusion", "KDIFFUSION_SAMPLERS", "SIGMA_FAMILIES"]

KDIFFUSION_SAMPLERS = ("euler", "heun", "dpmpp_2m", "lms")
SIGMA_FAMILIES = ("karras", "exponential", "uniform t")


class DigitsEpsDenoiser:
    """``denoiser(x, sigma, labels=...) -> denoised`` for the shipped epsilon U-Net (see module docstring)."""

    def __init__(self, model, guidance: float | None = None):
        if getattr(model, "family", None) != "vp":
            raise ValueError(
                f"the k-diffusion denoiser needs the VP (epsilon) U-Net, got {getattr(model, 'name', model)!r}"
            )
        self.model = model
        self.guidance = model.guidance if guidance is None else float(guidance)
        abar = model.base_scheduler.alphas_cumprod.float()
        self.sigmas = ((1 - abar) / abar) ** 0.5  # what k-diffusion's DiscreteSchedule stores
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The nearest training timestep (in log sigma) of every sigma."""
        return (sigma.float().log()[None, :] - self.log_sigmas[:, None]).abs().argmin(dim=0)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma at fractional timesteps, interpolated in log sigma (k-diffusion's ``t_to_sigma``)."""
        t = t.float()
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, labels=None) -> torch.Tensor:
        if labels is None:
            raise ValueError(
                "pass the class labels in extra_args: sampler(denoiser, x, sigmas, extra_args={'labels': ...})"
            )
        sigma = torch.as_tensor(sigma, dtype=x.dtype).flatten().expand(x.shape[0])
        c_in = (1.0 / (sigma**2 + 1).sqrt()).view(-1, *([1] * (x.ndim - 1)))
        eps = self.model.guided_output(x * c_in, self.sigma_to_t(sigma).float(), labels, self.guidance)
        return x - sigma.view(-1, *([1] * (x.ndim - 1))) * eps.to(x.dtype)


def kdiffusion_sigmas(denoiser: DigitsEpsDenoiser, family: str, steps: int) -> torch.Tensor:
    """The ``steps``-step sigma schedule (final 0 appended) of ``family``: ``karras`` (rho 7) and
    ``exponential`` between the training sigma range (k-diffusion's functions), or ``uniform t`` (k-diffusion's
    ``DiscreteSchedule.get_sigmas``: timesteps evenly spaced from 999 to 0)."""
    from sada.adapters.k_diffusion import load_sampling

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2, got {steps!r}")
    if family == "uniform t":
        t = torch.linspace(len(denoiser.sigmas) - 1, 0, steps)
        return torch.cat([denoiser.t_to_sigma(t), torch.zeros(1)])
    sampling = load_sampling()
    if sampling is None:
        raise RuntimeError("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    if family == "karras":
        return sampling.get_sigmas_karras(steps, denoiser.sigma_min, denoiser.sigma_max)
    if family == "exponential":
        return sampling.get_sigmas_exponential(steps, denoiser.sigma_min, denoiser.sigma_max)
    raise ValueError(f"family must be one of {SIGMA_FAMILIES}, got {family!r}")


@torch.no_grad()
def run_kdiffusion(denoiser: DigitsEpsDenoiser, sampler: str, sigmas: torch.Tensor, seeds, labels, sada=None):
    """Images of one k-diffusion run from the seeds' noise (``x_T = sigma_max * noise``) and the SADA
    wrapper used (``None`` without SADA).

    ``sada``: ``None`` (plain sampler), :data:`~benchmarks.methods.ADAPTER_DEFAULT` (``wrap(denoiser, sigmas)``,
    the adapter's default configuration) or a :class:`~sada.config.SADAConfig` (``wrap(denoiser, sigmas, config)``).
    """
    from benchmarks.methods import ADAPTER_DEFAULT
    from sada.adapters.k_diffusion import load_sampling, wrap

    if sampler not in KDIFFUSION_SAMPLERS:
        raise ValueError(f"sampler must be one of {KDIFFUSION_SAMPLERS}, got {sampler!r}")
    sampling = load_sampling()
    if sampling is None:
        raise RuntimeError("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    labels = torch.as_tensor(labels, dtype=torch.long)
    x = denoiser.model.noise(seeds) * sigmas[0]
    model = denoiser
    fn = getattr(sampling, f"sample_{sampler}")
    if sada is not None:  # the sampler is declared: the wrapper never guesses it
        config = None if isinstance(sada, str) and sada == ADAPTER_DEFAULT else sada
        model = wrap(denoiser, sigmas, config, sampler=fn)
    generator_state = torch.get_rng_state()
    try:  # sample_heun draws (unused) noise from the global generator: leave it as it was
        out = fn(model, x, sigmas, extra_args={"labels": labels}, disable=True)
    finally:
        torch.set_rng_state(generator_state)
    return out, (model if sada is not None else None)
