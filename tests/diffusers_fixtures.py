"""Tiny random-weight diffusers pipelines built offline from config dicts (no hub, no tokenizer).

Pipelines are fed ``prompt_embeds`` directly, so no text encoder or tokenizer is needed.
"""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(4,),
        latent_channels=4,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def tiny_unet(cross_dim=32, addition=False):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    extra = (
        dict(
            addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 32
        )
        if addition
        else {}
    )
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_dim,
        norm_num_groups=8,
        **extra,
    )


def scheduler(name, prediction_type="epsilon"):
    import diffusers

    cls = getattr(diffusers, name)
    if name == "FlowMatchEulerDiscreteScheduler":
        return cls(shift=3.0)
    kw = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        timestep_spacing="trailing",
        steps_offset=1,
    )
    if name == "DDIMScheduler":
        kw.update(clip_sample=False, set_alpha_to_one=False)
    return cls(**kw)


def sd_pipeline(
    scheduler_name="DPMSolverMultistepScheduler", prediction_type="epsilon", controlnet=False, img2img=False
):
    import diffusers

    components = dict(
        unet=tiny_unet(),
        vae=tiny_vae(),
        scheduler=scheduler(scheduler_name, prediction_type),
        text_encoder=None,
        tokenizer=None,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if controlnet:
        torch.manual_seed(1)
        components["controlnet"] = diffusers.ControlNetModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            in_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=8,
            conditioning_embedding_out_channels=(16,),
        )
        cls = diffusers.StableDiffusionControlNetPipeline
    else:
        cls = diffusers.StableDiffusionImg2ImgPipeline if img2img else diffusers.StableDiffusionPipeline
    pipe = cls(**components)
    return _ready(pipe)


def sd_embeds(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 6, 32, generator=g), torch.randn(batch, 6, 32, generator=g)


def sd_call(pipe, steps=30, batch=2, seed=0, **kwargs):
    """A latent-output call of :func:`sd_pipeline` on 16x16 images with classifier-free guidance."""
    pos, neg = sd_embeds(batch, seed)
    options = dict(height=16, width=16, output_type="latent", guidance_scale=5.0)
    options.update(kwargs)
    return pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        **options,
    ).images


def sdxl_pipeline(scheduler_name="EulerDiscreteScheduler"):
    import diffusers

    pipe = diffusers.StableDiffusionXLPipeline(
        unet=tiny_unet(addition=True),
        vae=tiny_vae(),
        scheduler=scheduler(scheduler_name),
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
    )
    return _ready(pipe)


def sd3_pipeline():
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    )
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        vae=tiny_vae(),
        scheduler=scheduler("FlowMatchEulerDiscreteScheduler"),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    return _ready(pipe)


def flux_pipeline():
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    pipe = diffusers.FluxPipeline(
        transformer=transformer,
        vae=tiny_vae(),
        scheduler=scheduler("FlowMatchEulerDiscreteScheduler"),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
    )
    return _ready(pipe)


def dit_pipeline(scheduler_name="DPMSolverMultistepScheduler"):
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=16,
        num_attention_heads=2,
        in_channels=4,
        out_channels=8,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    )
    pipe = diffusers.DiTPipeline(
        transformer=transformer,
        vae=tiny_vae(),
        scheduler=scheduler(scheduler_name),
        id2label={0: "zero", 1: "one", 2: "two"},
    )
    return _ready(pipe)


def _ready(pipe):
    """Eval mode everywhere (DiT's label embedding drops labels at random in training mode), no progress bar."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


class RowCounter:
    """Counts the batch rows that actually enter a module (forward pre-hook on a submodule)."""

    def __init__(self, module):
        self.rows = 0
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1
        self.rows += args[0].shape[0]

    def remove(self):
        self.handle.remove()
