"""The shipped digit models as diffusers pipelines, sampled from per-seed noise.

``unet``: the SD-like ``UNet2DConditionModel`` (epsilon, scaled-linear betas) in a
``StableDiffusionPipeline``; ``mmdit``: the flow-matching ``SD3Transformer2DModel`` in a
``StableDiffusion3Pipeline``. Both are fed label embeddings as ``prompt_embeds`` (no text encoder) and
return pixel-space latents (a 1-level VAE gives a scale factor of 1; it is never used to decode).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["BenchModel", "SCHEDULERS", "load_model"]

# sampler name -> diffusers scheduler class (per model family)
SCHEDULERS = {
    "unet": {"dpmpp_2m": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler", "ddim": "DDIMScheduler",
             "unipc": "UniPCMultistepScheduler", "heun": "HeunDiscreteScheduler"},
    "mmdit": {"flow_euler": "FlowMatchEulerDiscreteScheduler"},
}
DEFAULT_SCHEDULER = {"unet": "dpmpp_2m", "mmdit": "flow_euler"}


def _pixel_vae(channels: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=channels, out_channels=channels, block_out_channels=(4,), latent_channels=channels,
                         norm_num_groups=1, down_block_types=("DownEncoderBlock2D",),
                         up_block_types=("UpDecoderBlock2D",), use_quant_conv=False, use_post_quant_conv=False)


@dataclass
class BenchModel:
    """A shipped model with its label table; ``pipeline(scheduler)`` builds a fresh diffusers pipeline."""

    name: str
    network: torch.nn.Module
    base_scheduler: object
    table: dict
    meta: dict

    @property
    def family(self) -> str:
        return "flow" if self.name == "mmdit" else "vp"

    @property
    def denoiser_role(self) -> str:
        return "transformer" if self.name == "mmdit" else "unet"

    def pipeline(self, scheduler: str | None = None):
        import diffusers

        scheduler = scheduler or DEFAULT_SCHEDULER[self.name]
        if scheduler not in SCHEDULERS[self.name]:
            raise ValueError(f"scheduler {scheduler!r} is not available for the {self.name} model; "
                             f"choose from {sorted(SCHEDULERS[self.name])}")
        cls = getattr(diffusers, SCHEDULERS[self.name][scheduler])
        sched = cls.from_config(self.base_scheduler.config)
        vae = _pixel_vae(self.meta.get("channels", 1))
        if self.name == "unet":
            pipe = diffusers.StableDiffusionPipeline(unet=self.network, vae=vae, scheduler=sched, text_encoder=None,
                                                     tokenizer=None, safety_checker=None, feature_extractor=None,
                                                     requires_safety_checker=False)
        else:
            pipe = diffusers.StableDiffusion3Pipeline(transformer=self.network, vae=vae, scheduler=sched,
                                                      text_encoder=None, tokenizer=None, text_encoder_2=None,
                                                      tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def sample(self, pipe, labels, seeds, steps: int, guidance: float | None = None) -> torch.Tensor:
        """Images ``[B, 1, 16, 16]`` (~[-1, 1]) for ``labels``; sample ``i`` starts from ``seeds[i]``'s noise."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        if len(seeds) != labels.numel():
            raise ValueError(f"need one seed per label, got {len(seeds)} seeds for {labels.numel()} labels")
        null = torch.full_like(labels, self.meta["null_label"])
        size = self.meta["image_size"]
        common = dict(num_inference_steps=steps, height=size, width=size, output_type="latent",
                      guidance_scale=self.meta["recommended_guidance_scale"] if guidance is None else guidance,
                      generator=[torch.Generator().manual_seed(int(s)) for s in seeds])
        emb = self.table["embeddings"]
        if self.name == "unet":
            return pipe(prompt_embeds=emb[labels], negative_prompt_embeds=emb[null], **common).images
        pooled = self.table["pooled"]
        return pipe(prompt_embeds=emb[labels], pooled_prompt_embeds=pooled[labels], negative_prompt_embeds=emb[null],
                    negative_pooled_prompt_embeds=pooled[null], **common).images


def load_model(name: str, assets: str | None = None) -> BenchModel:
    """Load a shipped model bundle (offline) by name: ``unet`` or ``mmdit``.

    ``assets`` (or the ``SADA_BENCH_ASSETS`` environment variable) points at another folder holding
    ``digits-unet/`` and ``digits-mmdit/`` bundles (e.g. freshly trained with ``python -m sada.bench.train``).
    """
    import os
    from pathlib import Path

    from sada.bench.train import load_mmdit_bundle, load_unet_bundle

    loaders = {"unet": (load_unet_bundle, "digits-unet"), "mmdit": (load_mmdit_bundle, "digits-mmdit")}
    if name not in loaders:
        raise ValueError(f"model must be one of {sorted(loaders)}, got {name!r}")
    loader, folder = loaders[name]
    assets = assets or os.environ.get("SADA_BENCH_ASSETS")
    network, scheduler, table, meta = loader(Path(assets) / folder if assets else None)
    return BenchModel(name, network, scheduler, table, meta)
