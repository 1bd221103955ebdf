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

import os
from collections.abc import Callable
from typing import NamedTuple

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.diffusers_fixtures import _ready  # noqa: E402  (eval mode, no progress bar)

TEXT_LEN = 7  # prompt tokens; never equal to a denoiser batch size (row slicing keys on the leading dim)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _generator(seed, seeds=None):
    """One generator, or one per sample (``seeds``): per-sample generators make a sample's noise, initial and
    injected, independent of the other samples of the batch."""
    return [_gen(s) for s in seeds] if seeds is not None else _gen(seed)


def select(embeds, index):
    """Sample ``index`` of (nested tuples of) batched embeddings, batch dimension kept."""
    if isinstance(embeds, torch.Tensor):
        return embeds[index : index + 1]
    return type(embeds)(select(e, index) for e in embeds)


def _embeds(batch, seed, *shape):
    g = _gen(1000 + seed)
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


# ---------------------------------------------------------------------------------------------- MusicLDM
MEL_BINS = 8  # vocoder.model_in_dim: latent width (frequency bins)


def _vocoder():
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(0)
    return SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=MEL_BINS,
            sampling_rate=16,
            upsample_initial_channel=8,
            upsample_rates=[2],
            upsample_kernel_sizes=[4],
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1]],
        )
    )


def _audio_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        block_out_channels=(4,),
        latent_channels=4,
        norm_num_groups=1,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
    )


def musicldm_pipeline():
    import diffusers
    from transformers import ClapTextConfig, ClapTextModelWithProjection

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=(8, 16),
        attention_head_dim=2,
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=16,
        class_embeddings_concat=True,
    )
    torch.manual_seed(0)
    text_encoder = ClapTextModelWithProjection(
        ClapTextConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            projection_dim=16,
            max_position_embeddings=16,
        )
    )
    pipe = diffusers.MusicLDMPipeline(
        vae=_audio_vae(),
        text_encoder=text_encoder,
        tokenizer=None,
        feature_extractor=None,
        unet=unet,
        scheduler=ddim("epsilon"),
        vocoder=_vocoder(),
    )
    return _ready(pipe)


def musicldm_embeds(batch, seed):
    return _embeds(batch, seed, 16)  # pooled CLAP text features: (batch, projection_dim)


def musicldm_call(pipe, steps=10, seed=0, batch=2, seeds=None, embeds=None, **kwargs):
    pos, neg = embeds or musicldm_embeds(batch, seed)
    return pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        audio_length_in_s=2.0,
        num_inference_steps=steps,
        guidance_scale=3.0,
        generator=_generator(seed, seeds),
        output_type="latent",
        **kwargs,
    ).audios


# ---------------------------------------------------------------------------------------------- AudioLDM 2
def audioldm2_pipeline():
    import diffusers
    from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    unet = diffusers.AudioLDM2UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=([None, 16, 24], [None, 16, 24]),
        attention_head_dim=2,
    )
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=24, d_kv=8, d_ff=24, num_layers=1, num_heads=2))
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0)
    )
    pipe = diffusers.AudioLDM2Pipeline(
        vae=_audio_vae(),
        text_encoder=None,
        text_encoder_2=t5,
        projection_model=None,
        language_model=gpt2,
        tokenizer=None,
        tokenizer_2=None,
        feature_extractor=None,
        unet=unet,
        scheduler=ddim("v_prediction"),
        vocoder=_vocoder(),
    )
    return _ready(pipe)


def audioldm2_embeds(batch, seed):
    g = _gen(2000 + seed)
    t5, gpt = torch.randn(batch, TEXT_LEN, 24, generator=g), torch.randn(batch, 5, 16, generator=g)
    neg_t5, neg_gpt = torch.randn(batch, TEXT_LEN, 24, generator=g), torch.randn(batch, 5, 16, generator=g)
    return (t5, gpt), (neg_t5, neg_gpt)


def audioldm2_call(pipe, steps=10, seed=0, batch=2, seeds=None, embeds=None, **kwargs):
    (t5, gpt), (neg_t5, neg_gpt) = embeds or audioldm2_embeds(batch, seed)
    return pipe(
        prompt_embeds=t5,
        negative_prompt_embeds=neg_t5,
        generated_prompt_embeds=gpt,
        negative_generated_prompt_embeds=neg_gpt,
        audio_length_in_s=2.0,
        num_inference_steps=steps,
        guidance_scale=3.0,
        generator=_generator(seed, seeds),
        output_type="latent",
        **kwargs,
    ).audios


# ---------------------------------------------------------------------------------------------- Stable Audio
def stable_audio_pipeline():
    import diffusers
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel

    torch.manual_seed(0)
    transformer = diffusers.StableAudioDiTModel(
        sample_size=24,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        num_key_value_attention_heads=1,
        out_channels=4,
        cross_attention_dim=16,
        time_proj_dim=8,
        global_states_input_dim=16,
        cross_attention_input_dim=8,
    )
    torch.manual_seed(0)
    vae = diffusers.AutoencoderOobleck(
        encoder_hidden_size=4,
        downsampling_ratios=[2, 2],
        channel_multiples=[1, 2],
        decoder_channels=4,
        decoder_input_channels=4,
        audio_channels=2,
        sampling_rate=16,
    )
    torch.manual_seed(0)
    projection = StableAudioProjectionModel(text_encoder_dim=8, conditioning_dim=8, min_value=0, max_value=16)
    # as stable-audio-open-1.0 ships it: the cosine-preconditioned SDE DPM-Solver++ (noise from a Brownian tree)
    scheduler = diffusers.CosineDPMSolverMultistepScheduler(
        sigma_min=0.3,
        sigma_max=500,
        sigma_data=1.0,
        sigma_schedule="exponential",
        solver_order=2,
        prediction_type="v_prediction",
        rho=7.0,
    )
    pipe = diffusers.StableAudioPipeline(
        vae=vae,
        text_encoder=None,
        projection_model=projection,
        tokenizer=None,
        transformer=transformer,
        scheduler=scheduler,
    )
    return _ready(pipe)


def stable_audio_embeds(batch, seed):
    return _embeds(batch, seed, TEXT_LEN, 8)  # T5 hidden states: (batch, tokens, d_model)


def stable_audio_call(pipe, steps=10, seed=0, batch=2, seeds=None, embeds=None, **kwargs):
    pos, neg = embeds or stable_audio_embeds(batch, seed)
    return pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        audio_end_in_s=4.0,
        num_inference_steps=steps,
        guidance_scale=4.0,
        generator=_generator(seed, seeds),
        output_type="latent",
        **kwargs,
    ).audios


# ---------------------------------------------------------------------------------------------- CogVideoX
def cogvideox_pipeline():
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=4,
        text_embed_dim=16,
        num_layers=2,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=TEXT_LEN,
    )
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLCogVideoX(
        block_out_channels=(8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
        down_block_types=("CogVideoXDownBlock3D",) * 2,
        up_block_types=("CogVideoXUpBlock3D",) * 2,
    )
    # as CogVideoX-2b ships it: CogVideoXDDIMScheduler, v-prediction, zero terminal SNR, trailing spacing
    scheduler = diffusers.CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        snr_shift_scale=3.0,
    )
    pipe = diffusers.CogVideoXPipeline(
        tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler
    )
    return _ready(pipe)


def cogvideox_embeds(batch, seed):
    return _embeds(batch, seed, TEXT_LEN, 16)


def cogvideox_call(pipe, steps=10, seed=0, batch=2, seeds=None, embeds=None, **kwargs):
    pos, neg = embeds or cogvideox_embeds(batch, seed)
    return pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        height=16,
        width=16,
        num_frames=9,
        num_inference_steps=steps,
        guidance_scale=6.0,
        generator=_generator(seed, seeds),
        output_type="latent",
        max_sequence_length=TEXT_LEN,
        **kwargs,
    ).frames


# ---------------------------------------------------------------------------------------------- Wan 2.1
def wan_pipeline(two_experts=False, scheduler=None):
    """Wan 2.1; ``two_experts``: Wan 2.2 A14B layout, ``transformer_2`` denoises below timestep 500."""
    import diffusers

    def transformer(seed):
        torch.manual_seed(seed)
        return diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=32,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(
        base_dim=4,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    # as Wan2.1-T2V-*-Diffusers ships it: UniPC on flow-matching sigmas, flow (velocity) prediction
    scheduler = scheduler or diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    extra = dict(transformer_2=transformer(1), boundary_ratio=0.5) if two_experts else {}
    pipe = diffusers.WanPipeline(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=transformer(0), **extra
    )
    return _ready(pipe)


def wan_embeds(batch, seed):
    return _embeds(batch, seed, TEXT_LEN, 16)


def wan_call(pipe, steps=10, seed=0, batch=2, seeds=None, embeds=None, **kwargs):
    pos, neg = embeds or wan_embeds(batch, seed)
    return pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        height=32,
        width=32,
        num_frames=9,
        num_inference_steps=steps,
        guidance_scale=5.0,
        generator=_generator(seed, seeds),
        output_type="latent",
        **kwargs,
    ).frames


# ---------------------------------------------------------------------------------------------- LTX-Video
def ltx_pipeline():
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        num_layers=2,
        caption_channels=16,
    )
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    # as LTX-Video ships it: flow-matching Euler, resolution-dependent (dynamic) shift, terminal shift
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )
    pipe = diffusers.LTXPipeline(
        scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer
    )
    return _ready(pipe)


def ltx_embeds(batch, seed):
    return _embeds(batch, seed, TEXT_LEN, 16)


def ltx_call(pipe, steps=10, seed=0, batch=2, seeds=None, embeds=None, **kwargs):
    pos, neg = embeds or ltx_embeds(batch, seed)
    mask = torch.ones(pos.shape[:2], dtype=torch.long)
    return pipe(
        prompt_embeds=pos,
        prompt_attention_mask=mask,
        negative_prompt_embeds=neg,
        negative_prompt_attention_mask=mask,
        height=32,
        width=32,
        num_frames=17,
        num_inference_steps=steps,
        guidance_scale=3.0,
        generator=_generator(seed, seeds),
        output_type="latent",
        max_sequence_length=TEXT_LEN,
        **kwargs,
    ).frames


# ---------------------------------------------------------------------------------------------- HunyuanVideo
def hunyuan_video_pipeline():
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4),
    )
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLHunyuanVideo(
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=False,
    )
    # as HunyuanVideo ships it: flow-matching Euler, shift 7
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0)
    pipe = diffusers.HunyuanVideoPipeline(
        text_encoder=None,
        tokenizer=None,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder_2=None,
        tokenizer_2=None,
    )
    return _ready(pipe)


def hunyuan_video_embeds(batch, seed):
    g = _gen(3000 + seed)
    pos = torch.randn(batch, TEXT_LEN, 16, generator=g), torch.randn(batch, 8, generator=g)
    neg = torch.randn(batch, TEXT_LEN, 16, generator=g), torch.randn(batch, 8, generator=g)
    return pos, neg


def hunyuan_video_call(pipe, steps=10, seed=0, batch=2, seeds=None, embeds=None, **kwargs):
    (pos, pooled), (neg, neg_pooled) = embeds or hunyuan_video_embeds(batch, seed)
    mask = torch.ones(pos.shape[:2], dtype=torch.long)
    return pipe(
        prompt_embeds=pos,
        pooled_prompt_embeds=pooled,
        prompt_attention_mask=mask,
        negative_prompt_embeds=neg,
        negative_pooled_prompt_embeds=neg_pooled,
        negative_prompt_attention_mask=mask,
        true_cfg_scale=4.0,
        guidance_scale=6.0,
        height=32,
        width=32,
        num_frames=9,
        num_inference_steps=steps,
        generator=_generator(seed, seeds),
        output_type="latent",
        **kwargs,
    ).frames


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
