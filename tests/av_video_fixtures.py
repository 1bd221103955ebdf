"""Tiny random-weight video pipelines (CogVideoX, Wan, LTX-Video, HunyuanVideo) for :mod:`tests.av_fixtures`."""

import torch

from tests.av_common import TEXT_LEN, generators, random_embeds, seeded
from tests.diffusers_fixtures import _ready  # (eval mode, no progress bar)


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
    return random_embeds(batch, seed, TEXT_LEN, 16)


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
        generator=generators(seed, seeds),
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
    return random_embeds(batch, seed, TEXT_LEN, 16)


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
        generator=generators(seed, seeds),
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
    return random_embeds(batch, seed, TEXT_LEN, 16)


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
        generator=generators(seed, seeds),
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
    g = seeded(3000 + seed)
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
        generator=generators(seed, seeds),
        output_type="latent",
        **kwargs,
    ).frames
