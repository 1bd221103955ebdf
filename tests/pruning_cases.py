"""The stock diffusers transformer blocks the pruning tests run, each with the arguments its tiny model passes
to it (captured by a forward pre-hook, so rotary tables and embeddings are realistic)."""

import functools

import diffusers
import torch
from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock


# ---------------------------------------------------------------------------------------------- block cases
def capture(model, block, call):
    """The arguments the tiny model passes to ``block`` (realistic rotary tables and embeddings)."""
    got = {}
    handle = block.register_forward_pre_hook(lambda m, a, k: got.update(args=a, kwargs=k), with_kwargs=True)
    with torch.no_grad():
        call(model)
    handle.remove()
    return block.eval(), got["args"], got["kwargs"]


def basic_block(norm_type="layer_norm"):
    torch.manual_seed(0)
    extra = {"num_embeds_ada_norm": 10} if norm_type == "ada_norm_zero" else {}
    block = BasicTransformerBlock(16, 2, 8, cross_attention_dim=12, norm_type=norm_type, **extra).eval()
    kwargs = {"encoder_hidden_states": torch.randn(2, 5, 12)}
    if norm_type == "ada_norm_single":  # PixArt
        kwargs["timestep"] = torch.randn(2, 6 * 16)
    if norm_type == "ada_norm_zero":  # DiT
        kwargs.update(timestep=torch.tensor([3, 7]), class_labels=torch.tensor([1, 2]))
    return block, (torch.randn(2, 64, 16),), kwargs


def joint_block(context_pre_only=False, dual=False):
    torch.manual_seed(0)
    block = JointTransformerBlock(
        16, 2, 8, context_pre_only=context_pre_only, qk_norm="rms_norm", use_dual_attention=dual
    ).eval()
    return (
        block,
        (),
        dict(
            hidden_states=torch.randn(2, 64, 16), encoder_hidden_states=torch.randn(2, 5, 16), temb=torch.randn(2, 16)
        ),
    )


@functools.cache
def flux_model():
    torch.manual_seed(0)
    return diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 6, 6),
    )


def flux_transformer_block(single):
    model = flux_model()
    ids = torch.stack([torch.zeros(64), torch.arange(64) // 8, torch.arange(64) % 8], dim=1)

    def call(m):
        return m(
            hidden_states=torch.randn(2, 64, 4),
            encoder_hidden_states=torch.randn(2, 5, 32),  # noqa: E731
            pooled_projections=torch.randn(2, 32),
            timestep=torch.tensor([0.5, 0.5]),
            img_ids=ids,
            txt_ids=torch.zeros(5, 3),
        )

    return capture(model, model.single_transformer_blocks[0] if single else model.transformer_blocks[0], call)


def cogvideox_block():
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    torch.manual_seed(0)
    model = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        text_embed_dim=32,
        time_embed_dim=16,
        use_rotary_positional_embeddings=True,
        max_text_seq_length=5,
    )
    rope = get_3d_rotary_pos_embed(16, ((0, 0), (4, 4)), (4, 4), 3)

    def call(m):
        return m(
            hidden_states=torch.randn(2, 3, 4, 8, 8),
            encoder_hidden_states=torch.randn(2, 5, 32),  # noqa
            timestep=torch.tensor([10, 10]),
            image_rotary_emb=rope,
        )

    return capture(model, model.transformer_blocks[0], call)


def wan_block(per_token_timestep=False):
    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=32,
        ffn_dim=64,
        num_layers=1,
        rope_max_seq_len=32,
    )
    t = torch.randint(0, 1000, (2, 48)) if per_token_timestep else torch.tensor([10, 10])  # Wan 2.2 ti2v: [B, L]

    def call(m):
        return m(
            hidden_states=torch.randn(2, 4, 3, 8, 8),
            timestep=t,  # noqa: E731
            encoder_hidden_states=torch.randn(2, 5, 32),
        )

    return capture(model, model.blocks[0], call)


def ltx_block():
    torch.manual_seed(0)
    model = diffusers.LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=32,
    )

    def call(m):
        return m(
            hidden_states=torch.randn(2, 48, 8),
            encoder_hidden_states=torch.randn(2, 5, 32),  # noqa
            timestep=torch.tensor([10, 10]),
            encoder_attention_mask=torch.ones(2, 5),
            num_frames=3,
            height=4,
            width=4,
        )

    return capture(model, model.transformer_blocks[0], call)


IMAGE, VIDEO = (8, 8), (3, 4, 4)
CASES = {  # name -> (builder, token grid)
    "unet-basic": (basic_block, IMAGE),
    "pixart-basic": (lambda: basic_block("ada_norm_single"), IMAGE),
    "dit-basic": (lambda: basic_block("ada_norm_zero"), IMAGE),
    "sd3-joint": (joint_block, IMAGE),
    "sd3-joint-last": (lambda: joint_block(context_pre_only=True), IMAGE),
    "sd35-joint-dual": (lambda: joint_block(dual=True), IMAGE),
    "flux-double": (lambda: flux_transformer_block(False), IMAGE),
    "flux-single": (lambda: flux_transformer_block(True), IMAGE),
    "cogvideox": (cogvideox_block, VIDEO),
    "wan": (wan_block, VIDEO),
    "wan22-ti2v": (lambda: wan_block(True), VIDEO),
    "ltx-video": (ltx_block, VIDEO),
}


@functools.cache
def block_case(name):
    """``(block, args, kwargs, grid)`` of a case, built once (the tests never modify the block)."""
    return CASES[name][0]() + (CASES[name][1],)
