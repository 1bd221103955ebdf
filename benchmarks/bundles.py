"""The shipped digit models as bundles: their architecture and scheduler settings, and how a bundle is written,
loaded offline and sampled (DPM-Solver++ 2M for the U-Net, flow-matching Euler for the MMDiT, both with
classifier-free guidance). :mod:`benchmarks.train` trains them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn as nn

from benchmarks.classifier import ASSETS_DIR, IMAGE_SIZE

NUM_DIGITS = 10
NULL_LABEL = 10  # label-table row used as the unconditional ("empty prompt") input for CFG
NUM_LABELS = 11
UNET_DIR, MMDIT_DIR, CLASSIFIER_DIR = "digits-unet", "digits-mmdit", "digits-classifier"

# Architecture / conditioning settings of the shipped models (kept here so that the CLI reproduces them).
UNET_TOKENS, UNET_DIM = 4, 32
UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    norm_num_groups=8,
    cross_attention_dim=UNET_DIM,
    attention_head_dim=4,
)  # diffusers legacy name: 4 heads
MMDIT_TOKENS, MMDIT_DIM, MMDIT_POOLED = 4, 64, 64
MMDIT_CONFIG = dict(
    sample_size=IMAGE_SIZE,
    patch_size=2,
    in_channels=1,
    out_channels=1,
    num_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=MMDIT_DIM,
    caption_projection_dim=128,
    pooled_projection_dim=MMDIT_POOLED,
    pos_embed_max_size=8,
)
DDPM_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    prediction_type="epsilon",
    clip_sample=False,
    timestep_spacing="trailing",
    steps_offset=1,
)
FLOW_CONFIG = dict(num_train_timesteps=1000, shift=1.0)
# Per-model training defaults: steps, batch size, peak learning rate, recommended CFG scale for sampling.
DEFAULTS = {
    "unet": dict(steps=550, batch_size=128, lr=2e-3, guidance=3.0),
    "mmdit": dict(steps=1500, batch_size=128, lr=1e-3, guidance=3.0),
    "classifier": dict(steps=1500, batch_size=128, lr=2e-3),
}


def save_bundle(kind: str, ema: nn.ModuleDict, out: Path, stats: dict) -> None:
    """Write the EMA network (fp16 safetensors), scheduler config, label table and ``sada_model.json``."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    cond = ema["cond"]
    net = copy.deepcopy(ema["net"]).half()  # fp16 on disk keeps benchmarks/assets small
    tensors = {"embeddings": cond.embeddings.detach().float().contiguous()}
    if kind == "unet":
        net.save_pretrained(out / "unet")
        DDPMScheduler(**DDPM_CONFIG).save_pretrained(out / "scheduler")
        meta = {
            "kind": "unet2d-condition",
            "model_class": "UNet2DConditionModel",
            "model_subfolder": "unet",
            "scheduler_class": "DDPMScheduler",
            "prediction_type": "epsilon",
            "recommended_sampler": "DPMSolverMultistepScheduler.from_config(scheduler.config), 50 steps",
            "num_tokens": UNET_TOKENS,
            "dim": UNET_DIM,
            "guidance": DEFAULTS["unet"]["guidance"],
        }
    else:
        net.save_pretrained(out / "transformer")
        FlowMatchEulerDiscreteScheduler(**FLOW_CONFIG).save_pretrained(out / "scheduler")
        tensors["pooled"] = cond.pooled.detach().float().contiguous()
        meta = {
            "kind": "sd3-mmdit",
            "model_class": "SD3Transformer2DModel",
            "model_subfolder": "transformer",
            "scheduler_class": "FlowMatchEulerDiscreteScheduler",
            "prediction_type": "flow_velocity",
            "flow_convention": "x_t=(1-t)*x0+t*noise, v=noise-x0, model timestep=t*1000",
            "recommended_sampler": "FlowMatchEulerDiscreteScheduler, 50 steps",
            "num_tokens": MMDIT_TOKENS,
            "dim": MMDIT_DIM,
            "pooled_dim": MMDIT_POOLED,
            "guidance": DEFAULTS["mmdit"]["guidance"],
        }
    save_file(tensors, str(out / "label_embeddings.safetensors"))
    guidance = meta.pop("guidance")
    meta = {
        **meta,
        "recommended_guidance_scale": guidance,
        "null_label": NULL_LABEL,
        "num_labels": NUM_LABELS,
        "image_size": IMAGE_SIZE,
        "channels": 1,
        "value_range": [-1.0, 1.0],
        "weights_dtype": "float16",
        "data": "sklearn load_digits, bilinear 8->16 px, 80% stratified split (seed 0)",
        "training": stats,
    }
    (out / "sada_model.json").write_text(json.dumps(meta, indent=2) + "\n")


def _load_bundle(path, default_dir: str, cls_name: str, subfolder: str, sched_name: str, dtype: torch.dtype):
    import diffusers
    from safetensors.torch import load_file

    path = Path(path) if path is not None else ASSETS_DIR / default_dir
    meta_file = path / "sada_model.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a sada model bundle (no sada_model.json)")
    meta = json.loads(meta_file.read_text())
    model = getattr(diffusers, cls_name).from_pretrained(
        path, subfolder=subfolder, torch_dtype=dtype, local_files_only=True, use_safetensors=True
    )  # no pickle
    scheduler = getattr(diffusers, sched_name).from_pretrained(path, subfolder="scheduler", local_files_only=True)
    labels = {k: v.to(dtype) for k, v in load_file(str(path / "label_embeddings.safetensors")).items()}
    return model.eval().requires_grad_(False), scheduler, labels, meta


def load_unet_bundle(path: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """(UNet2DConditionModel, DDPMScheduler, {"embeddings": [11,S,D]}, metadata dict), loaded offline."""
    return _load_bundle(path, UNET_DIR, "UNet2DConditionModel", "unet", "DDPMScheduler", dtype)


def load_mmdit_bundle(path: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """(SD3Transformer2DModel, FlowMatchEulerDiscreteScheduler, {"embeddings","pooled"}, metadata), loaded offline."""
    return _load_bundle(
        path, MMDIT_DIR, "SD3Transformer2DModel", "transformer", "FlowMatchEulerDiscreteScheduler", dtype
    )


def _check_labels(labels) -> torch.Tensor:
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if labels.numel() == 0 or labels.min() < 0 or labels.max() > NULL_LABEL:
        raise ValueError(f"labels must be a non-empty list of ints in 0..{NULL_LABEL}")
    return labels


@torch.no_grad()
def sample_unet(bundle, labels, steps: int = 50, guidance_scale: float | None = None, seed: int = 0) -> torch.Tensor:
    """DPM-Solver++(2M) sampling with CFG on a doubled batch; returns images [B,1,16,16] (unclamped, ~[-1,1])."""
    from diffusers import DPMSolverMultistepScheduler

    unet, scheduler, table, meta = bundle
    labels, g = _check_labels(labels), meta["recommended_guidance_scale"] if guidance_scale is None else guidance_scale
    sched = DPMSolverMultistepScheduler.from_config(scheduler.config)
    sched.set_timesteps(steps)
    emb = table["embeddings"]
    ctx = torch.cat([emb[torch.full_like(labels, NULL_LABEL)], emb[labels]])
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((len(labels), 1, IMAGE_SIZE, IMAGE_SIZE), generator=gen).to(emb.dtype) * sched.init_noise_sigma
    for t in sched.timesteps:
        e_u, e_c = unet(sched.scale_model_input(torch.cat([x, x]), t), t, encoder_hidden_states=ctx).sample.chunk(2)
        x = sched.step(e_u + g * (e_c - e_u), t, x).prev_sample
    return x


@torch.no_grad()
def sample_mmdit(bundle, labels, steps: int = 50, guidance_scale: float | None = None, seed: int = 0) -> torch.Tensor:
    """Flow-matching Euler sampling with CFG on a doubled batch; returns images [B,1,16,16] (unclamped)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    model, scheduler, table, meta = bundle
    labels, g = _check_labels(labels), meta["recommended_guidance_scale"] if guidance_scale is None else guidance_scale
    sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    sched.set_timesteps(steps)
    emb, pooled = table["embeddings"], table["pooled"]
    null = torch.full_like(labels, NULL_LABEL)
    ctx, pool = torch.cat([emb[null], emb[labels]]), torch.cat([pooled[null], pooled[labels]])
    x = torch.randn((len(labels), 1, IMAGE_SIZE, IMAGE_SIZE), generator=torch.Generator().manual_seed(seed))
    x = x.to(emb.dtype)
    for t in sched.timesteps:
        v_u, v_c = model(
            hidden_states=torch.cat([x, x]),
            encoder_hidden_states=ctx,
            pooled_projections=pool,
            timestep=t.expand(2 * len(labels)),
        ).sample.chunk(2)
        x = sched.step(v_u + g * (v_c - v_u), t, x).prev_sample
    return x


def save_grid(images: torch.Tensor, path: str | Path, ncol: int = 10, scale: int = 4) -> None:
    """Save [B,1,H,W] images in [-1,1] as a grayscale PNG grid (row-major, ``ncol`` per row, nearest upscaling)."""
    from PIL import Image

    b, _, h, w = images.shape
    nrow = -(-b // ncol)
    grid = torch.full((nrow * (h + 1) + 1, ncol * (w + 1) + 1), 0.5)
    img = ((images.float().clamp(-1, 1) + 1) / 2)[:, 0]
    for i in range(b):
        r, c = divmod(i, ncol)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img[i]
    arr = (grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1) * 255).round().byte().numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="L").save(path)
