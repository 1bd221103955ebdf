"""Tiny random-weight audio pipelines (MusicLDM, AudioLDM 2, Stable Audio) for :mod:`tests.av_fixtures`."""

import torch

from tests.av_common import TEXT_LEN, ddim, generators, random_embeds, seeded
from tests.diffusers_fixtures import _ready  # (eval mode, no progress bar)

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
    return random_embeds(batch, seed, 16)  # pooled CLAP text features: (batch, projection_dim)


def musicldm_call(pipe, steps=10, seed=0, batch=2, seeds=None, embeds=None, **kwargs):
    pos, neg = embeds or musicldm_embeds(batch, seed)
    return pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        audio_length_in_s=2.0,
        num_inference_steps=steps,
        guidance_scale=3.0,
        generator=generators(seed, seeds),
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
    g = seeded(2000 + seed)
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
        generator=generators(seed, seeds),
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
    return random_embeds(batch, seed, TEXT_LEN, 8)  # T5 hidden states: (batch, tokens, d_model)


def stable_audio_call(pipe, steps=10, seed=0, batch=2, seeds=None, embeds=None, **kwargs):
    pos, neg = embeds or stable_audio_embeds(batch, seed)
    return pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        audio_end_in_s=4.0,
        num_inference_steps=steps,
        guidance_scale=4.0,
        generator=generators(seed, seeds),
        output_type="latent",
        **kwargs,
    ).audios
