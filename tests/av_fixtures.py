"""Tiny random-weight audio and video diffusers pipelines, built offline from config dicts (nothing downloaded).

Every pipeline is fed precomputed prompt embeddings and negative ones (classifier-free guidance), so no
tokenizer is needed. A tiny random text encoder is built only where the pipeline reads one even when the
embeddings are given: MusicLDM reads ``text_encoder.text_model.dtype``; AudioLDM 2 reads
``text_encoder_2.config.model_type`` / ``.dtype`` and ``language_model.dtype``. Every other text component
is ``None``.

Each ``<name>_call(pipe, steps, seed, batch=2, seeds=None, embeds=None, **kwargs)`` returns the final
latents (``output_type="latent"``) with a fixed generator; ``seeds`` gives one generator per sample (the
sample's initial and injected noise then do not depend on the rest of the batch) and ``embeds`` (from
``<name>_embeds(batch, seed)``, one sample taken with :func:`select`) replaces the default embeddings.

``PIPELINES[name]`` (a named tuple starting like the image tests' ``(builder, call, denoiser attribute)``)
also names the denoiser submodule whose input rows are counted, the scheduler class, the per-sample latent
shape, the latent layout and how guidance batches the rows into the denoiser.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch

from tests.av_audio_fixtures import (
    MEL_BINS,
    audioldm2_call,
    audioldm2_embeds,
    audioldm2_pipeline,
    musicldm_call,
    musicldm_embeds,
    musicldm_pipeline,
    stable_audio_call,
    stable_audio_embeds,
    stable_audio_pipeline,
)
from tests.av_common import TEXT_LEN, select
from tests.av_video_fixtures import (
    cogvideox_call,
    cogvideox_embeds,
    cogvideox_pipeline,
    hunyuan_video_call,
    hunyuan_video_embeds,
    hunyuan_video_pipeline,
    ltx_call,
    ltx_embeds,
    ltx_pipeline,
    wan_call,
    wan_embeds,
    wan_pipeline,
)

__all__ = ["MEL_BINS", "PIPELINES", "TEXT_LEN", "AVPipeline", "input_layer", "select", "wan_call", "wan_pipeline"]


# ---------------------------------------------------------------------------------------------- registry
class AVPipeline(NamedTuple):
    build: Callable  # () -> pipeline
    call: Callable  # (pipe, steps, seed, batch=, seeds=, embeds=, **kwargs) -> final latents
    denoiser: str  # pipeline attribute holding the denoiser
    embeds: Callable  # (batch, seed) -> the (positive, negative) embeddings ``call`` feeds by default
    input_layer: str  # denoiser submodule whose first argument has one row per denoiser batch row
    scheduler: str  # scheduler class the pipeline is built with (the checkpoint's)
    latent_shape: tuple  # per-sample shape of the latents the scheduler steps on
    layout: str
    cfg: str  # how the guidance rows reach the denoiser


PIPELINES = {
    "musicldm": AVPipeline(
        musicldm_pipeline,
        musicldm_call,
        "unet",
        musicldm_embeds,
        "conv_in",
        "DDIMScheduler",
        (4, 16, MEL_BINS),
        "(B, C, T, F): mel-spectrogram latent, time frames x frequency bins",
        "one call, rows [uncond x B, cond x B]; the pooled text embedding enters as class_labels",
    ),
    "audioldm2": AVPipeline(
        audioldm2_pipeline,
        audioldm2_call,
        "unet",
        audioldm2_embeds,
        "conv_in",
        "DDIMScheduler",
        (4, 16, MEL_BINS),
        "(B, C, T, F): mel-spectrogram latent, time frames x frequency bins",
        "one call, rows [uncond x B, cond x B]; two cross-attention streams (GPT-2 tokens, T5 tokens + mask)",
    ),
    "stable_audio": AVPipeline(
        stable_audio_pipeline,
        stable_audio_call,
        "transformer",
        stable_audio_embeds,
        "preprocess_conv",
        "CosineDPMSolverMultistepScheduler",
        (4, 24),
        "(B, C, L): 1-D waveform-autoencoder latent",
        "one call, rows [uncond x B, cond x B]; rotary table (L + 1 rows) shared by all rows",
    ),
    "cogvideox": AVPipeline(
        cogvideox_pipeline,
        cogvideox_call,
        "transformer",
        cogvideox_embeds,
        "patch_embed.text_proj",
        "CogVideoXDDIMScheduler",
        (3, 4, 8, 8),
        "(B, F, C, H, W): frames before channels",
        "one call, rows [uncond x B, cond x B]",
    ),
    "wan": AVPipeline(
        wan_pipeline,
        wan_call,
        "transformer",
        wan_embeds,
        "patch_embedding",
        "UniPCMultistepScheduler",
        (4, 3, 4, 4),
        "(B, C, F, H, W)",
        "two calls per step (cond, then uncond), B rows each",
    ),
    "ltx": AVPipeline(
        ltx_pipeline,
        ltx_call,
        "transformer",
        ltx_embeds,
        "proj_in",
        "FlowMatchEulerDiscreteScheduler",
        (48, 8),
        "(B, N, C): packed video tokens, N = F x H x W = 3 x 4 x 4, patch size 1",
        "one call, rows [uncond x B, cond x B] with a text attention mask",
    ),
    "hunyuan_video": AVPipeline(
        hunyuan_video_pipeline,
        hunyuan_video_call,
        "transformer",
        hunyuan_video_embeds,
        "x_embedder.proj",
        "FlowMatchEulerDiscreteScheduler",
        (4, 3, 4, 4),
        "(B, C, F, H, W)",
        "two calls per step (cond, then uncond: true_cfg_scale), B rows each; distilled guidance as an embedding",
    ),
}


def input_layer(pipe, spec: AVPipeline) -> torch.nn.Module:
    module = getattr(pipe, spec.denoiser)
    for part in spec.input_layer.split("."):
        module = getattr(module, part)
    return module
