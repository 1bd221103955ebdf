"""Helpers shared by the tiny audio and video pipelines of :mod:`tests.av_fixtures`: seeded generators, random
prompt embeddings, one sample of a batch of embeddings, and the DDIM scheduler the latent-diffusion audio models use."""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXT_LEN = 7  # prompt tokens; never equal to a denoiser batch size (row slicing keys on the leading dim)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def generators(seed, seeds=None):
    """One generator, or one per sample (``seeds``): per-sample generators make a sample's noise, initial and
    injected, independent of the other samples of the batch."""
    return [seeded(s) for s in seeds] if seeds is not None else seeded(seed)


def select(embeds, index):
    """Sample ``index`` of (nested tuples of) batched embeddings, batch dimension kept."""
    if isinstance(embeds, torch.Tensor):
        return embeds[index : index + 1]
    return type(embeds)(select(e, index) for e in embeds)


def random_embeds(batch, seed, *shape):
    g = seeded(1000 + seed)
    return torch.randn(batch, *shape, generator=g), torch.randn(batch, *shape, generator=g)


def ddim(prediction_type="epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0015,
        beta_end=0.0195,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
