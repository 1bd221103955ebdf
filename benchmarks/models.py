"""The shipped digit models as diffusers pipelines, sampled from per-seed noise.

``unet``: the SD-like ``UNet2DConditionModel`` (epsilon, scaled-linear betas) in a
``StableDiffusionPipeline``; ``mmdit``: the flow-matching ``SD3Transformer2DModel`` in a
``StableDiffusion3Pipeline``. Both are fed label embeddings as ``prompt_embeds`` (no text encoder) and
return pixel-space latents (a 1-level VAE gives a scale factor of 1; it is never used to decode).

Besides the pipelines, :meth:`BenchModel.guided_output` calls the network directly (classifier-free guidance
on a doubled batch, unconditional rows first, as the pipelines do) for the ODE reference and the k-diffusion
denoiser, and :meth:`BenchModel.noise` gives the exact start noise the pipelines draw for a list of seeds.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "BenchModel",
    "SCHEDULERS",
    "SCHEDULER_SETTINGS",
    "DEFAULT_SCHEDULER",
    "FLOW_MULTISTEP_SAMPLERS",
    "load_model",
    "shift_override",
]

# sampler name -> diffusers scheduler class (per model family)
SCHEDULERS = {
    "unet": {
        "dpmpp_2m": "DPMSolverMultistepScheduler",
        "dpmpp_3m": "DPMSolverMultistepScheduler",
        "euler": "EulerDiscreteScheduler",
        "ddim": "DDIMScheduler",
        "unipc": "UniPCMultistepScheduler",
        "heun": "HeunDiscreteScheduler",
    },
    "mmdit": {
        "flow_euler": "FlowMatchEulerDiscreteScheduler",
        "flow_dpmpp_2m": "DPMSolverMultistepScheduler",
        "flow_dpmpp_3m": "DPMSolverMultistepScheduler",
        "flow_unipc": "UniPCMultistepScheduler",
    },
}
# a sampler that is one of the classes above with settings of its own (overridable by ``config_overrides``)
_FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
SCHEDULER_SETTINGS = {
    "dpmpp_3m": {"solver_order": 3},
    "flow_dpmpp_2m": _FLOW,
    "flow_dpmpp_3m": {**_FLOW, "solver_order": 3},
    "flow_unipc": _FLOW,
}
# the MMDiT's multistep solvers with flow sigmas (DPM-Solver++, UniPC): their config names the shift ``flow_shift``
FLOW_MULTISTEP_SAMPLERS = frozenset(s for s, settings in SCHEDULER_SETTINGS.items() if settings.get("use_flow_sigmas"))
DEFAULT_SCHEDULER = {"unet": "dpmpp_2m", "mmdit": "flow_euler"}


def shift_override(sampler: str, shift: float) -> dict:
    """The scheduler config override that sets the flow shift of an MMDiT ``sampler``: FlowMatch Euler calls it
    ``shift``, the multistep solvers with flow sigmas (DPM-Solver++, UniPC) ``flow_shift``."""
    if sampler not in SCHEDULERS["mmdit"]:
        raise ValueError(f"sampler must be one of the MMDiT's {sorted(SCHEDULERS['mmdit'])}, got {sampler!r}")
    return {("flow_shift" if sampler in FLOW_MULTISTEP_SAMPLERS else "shift"): float(shift)}


def _pixel_vae(channels: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(4,),
        latent_channels=channels,
        norm_num_groups=1,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


@dataclass
class BenchModel:
    """A shipped model with its label table; ``pipeline(sampler)`` builds a fresh diffusers pipeline."""

    name: str
    network: torch.nn.Module
    base_scheduler: object
    table: dict
    meta: dict
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def family(self) -> str:
        return "flow" if self.name == "mmdit" else "vp"

    @property
    def denoiser_role(self) -> str:
        return "transformer" if self.name == "mmdit" else "unet"

    @property
    def guidance(self) -> float:
        return float(self.meta["recommended_guidance_scale"])

    def fingerprint(self) -> str:
        """SHA-256 of the network weights, the label table and the training scheduler's config."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            tensors = {
                **{f"net.{k}": v for k, v in self.network.state_dict().items()},
                **{f"table.{k}": v for k, v in self.table.items() if isinstance(v, torch.Tensor)},
            }
            for key in sorted(tensors):
                digest.update(key.encode())
                digest.update(tensors[key].detach().float().contiguous().cpu().numpy().tobytes())
            digest.update(json.dumps(dict(self.base_scheduler.config), sort_keys=True, default=str).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def scheduler(self, sampler: str | None = None, **config_overrides):
        """A fresh diffusers scheduler of ``sampler`` built from the training config plus ``config_overrides``
        (e.g. ``use_karras_sigmas=True``, ``shift=3.0``)."""
        import diffusers

        sampler = sampler or DEFAULT_SCHEDULER[self.name]
        if sampler not in SCHEDULERS[self.name]:
            raise ValueError(
                f"scheduler {sampler!r} is not available for the {self.name} model; "
                f"choose from {sorted(SCHEDULERS[self.name])}"
            )
        cls = getattr(diffusers, SCHEDULERS[self.name][sampler])
        scheduler = cls.from_config(
            self.base_scheduler.config, **{**SCHEDULER_SETTINGS.get(sampler, {}), **config_overrides}
        )
        unknown = sorted(set(config_overrides) - set(inspect.signature(cls.__init__).parameters))
        if unknown:  # diffusers keeps or drops a key its class does not take, silently: the wrong cell would run
            raise ValueError(
                f"{cls.__name__} takes no config key {unknown} (sampler {sampler!r}); "
                f"for the flow shift use {shift_override(sampler, 1.0)}"
                if any("shift" in key for key in unknown)
                else f"{cls.__name__} takes no config key {unknown} (sampler {sampler!r})"
            )
        return scheduler

    def pipeline(self, sampler: str | None = None, **config_overrides):
        """A stock diffusers pipeline around the network with ``scheduler(sampler, **config_overrides)``."""
        import diffusers

        sched = self.scheduler(sampler, **config_overrides)
        vae = _pixel_vae(self.meta.get("channels", 1))
        if self.name == "unet":
            pipe = diffusers.StableDiffusionPipeline(
                unet=self.network,
                vae=vae,
                scheduler=sched,
                text_encoder=None,
                tokenizer=None,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        else:
            pipe = diffusers.StableDiffusion3Pipeline(
                transformer=self.network,
                vae=vae,
                scheduler=sched,
                text_encoder=None,
                tokenizer=None,
                text_encoder_2=None,
                tokenizer_2=None,
                text_encoder_3=None,
                tokenizer_3=None,
            )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _labels(self, labels, seeds) -> torch.Tensor:
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        if len(seeds) != labels.numel():
            raise ValueError(f"need one seed per label, got {len(seeds)} seeds for {labels.numel()} labels")
        if labels.numel() == 0 or labels.min() < 0 or labels.max() >= self.meta["null_label"]:
            raise ValueError(f"labels must be class indices in 0..{self.meta['null_label'] - 1}, got {labels.tolist()}")
        return labels

    @torch.no_grad()
    def sample(
        self, pipe, labels, seeds, steps: int | None, guidance: float | None = None, timesteps=None, sigmas=None
    ) -> torch.Tensor:
        """Images ``[B, 1, 16, 16]`` (~[-1, 1]) for ``labels``; sample ``i`` starts from ``seeds[i]``'s noise.

        ``steps`` with the scheduler's own spacing, or a custom grid: ``timesteps`` (U-Net schedulers) or
        ``sigmas`` (flow matching, before the scheduler's shift) with ``steps=None``.
        """
        labels = self._labels(labels, seeds)
        if (steps is None) == (timesteps is None and sigmas is None):
            raise ValueError("give either steps or a custom grid (timesteps or sigmas), not both or neither")
        null = torch.full_like(labels, self.meta["null_label"])
        size = self.meta["image_size"]
        common = dict(
            num_inference_steps=steps,
            height=size,
            width=size,
            output_type="latent",
            guidance_scale=self.guidance if guidance is None else guidance,
            generator=[torch.Generator().manual_seed(int(s)) for s in seeds],
        )
        if timesteps is not None:
            common["timesteps"] = list(timesteps)
        if sigmas is not None:
            common["sigmas"] = list(sigmas)
        emb = self.table["embeddings"]
        if self.name == "unet":
            return pipe(prompt_embeds=emb[labels], negative_prompt_embeds=emb[null], **common).images
        pooled = self.table["pooled"]
        return pipe(
            prompt_embeds=emb[labels],
            pooled_prompt_embeds=pooled[labels],
            negative_prompt_embeds=emb[null],
            negative_pooled_prompt_embeds=pooled[null],
            **common,
        ).images

    def noise(self, seeds) -> torch.Tensor:
        """The unit-variance start noise ``[B, C, H, W]`` the pipelines draw: one generator per seed."""
        seeds = list(seeds)
        if not seeds or any(isinstance(s, bool) or int(s) != s or s < 0 for s in seeds):
            raise ValueError(f"seeds must be a non-empty list of non-negative ints, got {seeds!r}")
        c, size = self.meta.get("channels", 1), self.meta["image_size"]
        return torch.cat(
            [torch.randn((1, c, size, size), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        )

    @torch.no_grad()
    def guided_output(self, x: torch.Tensor, model_time, labels, guidance: float | None = None) -> torch.Tensor:
        """The network's guided prediction (epsilon for the U-Net, velocity for the MMDiT) at ``model_time``
        (the network's timestep input, 0..999: a number or one value per row) for the batch ``x`` in the
        network's own input scaling."""
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        if labels.numel() != x.shape[0]:
            raise ValueError(f"need one label per row of x, got {labels.numel()} labels for {x.shape[0]} rows")
        g = self.guidance if guidance is None else float(guidance)
        null = torch.full_like(labels, self.meta["null_label"])
        emb = self.table["embeddings"]
        rows = torch.cat([x, x]).to(torch.float32)
        t = torch.as_tensor(model_time, dtype=torch.float32).flatten()
        if t.numel() not in (1, x.shape[0]):
            raise ValueError(f"model_time must be one number or one per row, got {t.numel()} for {x.shape[0]} rows")
        t = t.expand(x.shape[0]).repeat(2)
        if self.name == "unet":
            out = self.network(rows, t, encoder_hidden_states=torch.cat([emb[null], emb[labels]])).sample
        else:
            pooled = self.table["pooled"]
            out = self.network(
                hidden_states=rows,
                encoder_hidden_states=torch.cat([emb[null], emb[labels]]),
                pooled_projections=torch.cat([pooled[null], pooled[labels]]),
                timestep=t,
            ).sample
        uncond, cond = out.chunk(2)
        return uncond + g * (cond - uncond)

    def training_sigmas(self) -> np.ndarray:
        """VP models: the EDM sigma of every training timestep 0..999, ``sqrt((1 - abar) / abar)`` (float64 of
        diffusers' float32 ``alphas_cumprod``)."""
        if self.family != "vp":
            raise ValueError(f"training sigmas exist for VP models only, not {self.name!r}")
        abar = self.base_scheduler.alphas_cumprod.double().cpu().numpy()
        return np.sqrt((1 - abar) / abar)


def load_model(name: str, assets: str | None = None) -> BenchModel:
    """Load a shipped model bundle (offline) by name: ``unet`` or ``mmdit``.

    ``assets`` (or the ``SADA_BENCH_ASSETS`` environment variable) points at another folder holding
    ``digits-unet/`` and ``digits-mmdit/`` bundles (e.g. freshly trained with ``python -m benchmarks.train``).
    """
    import os
    from pathlib import Path

    from benchmarks.bundles import load_mmdit_bundle, load_unet_bundle

    loaders = {"unet": (load_unet_bundle, "digits-unet"), "mmdit": (load_mmdit_bundle, "digits-mmdit")}
    if name not in loaders:
        raise ValueError(f"model must be one of {sorted(loaders)}, got {name!r}")
    loader, folder = loaders[name]
    assets = assets or os.environ.get("SADA_BENCH_ASSETS")
    network, scheduler, table, meta = loader(Path(assets) / folder if assets else None)
    return BenchModel(name, network, scheduler, table, meta)
