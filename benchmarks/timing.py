"""Timing-only run on a larger random-weight U-Net: SADA's wall-clock ratio when the network dominates.

    python -m benchmarks.timing [--size sd-medium|sdxl] [--steps 25] [--batch 2] [--repeats 3] [--device cpu]

The shipped digit models are so small that SADA's per-step host work is a visible share of a step. This
run builds an SD-style ``UNet2DConditionModel`` with random weights (``sd-medium``: SD-1.x layout at half
width on 32x32 latents, ~0.2 s a step on 2 CPU cores; ``sdxl``: the full SDXL U-Net configuration on
128x128 latents, meant for a GPU) inside a stock ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``
and times baseline, SADA with skipping disabled, SADA (corrected) and the fewer-steps baseline at SADA's
evaluation count, round-robin in one process. Images are meaningless (random weights): only NFE and time
are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

SIZES = {
    "tiny": dict(
        unet=dict(
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            norm_num_groups=8,
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        ),
        latent=8,
        text=(4, 32),
    ),  # for the tests
    "tiny-xl": dict(
        unet=dict(
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            norm_num_groups=8,
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 6 + 32,
        ),
        latent=8,
        text=(4, 32),
        pooled=32,
    ),  # the SDXL code path, for the tests
    "sd-medium": dict(
        unet=dict(
            block_out_channels=(160, 320, 640, 640),
            layers_per_block=2,
            cross_attention_dim=768,
            attention_head_dim=8,
            sample_size=32,
            in_channels=4,
            out_channels=4,
        ),
        latent=32,
        text=(77, 768),
    ),
    "sdxl": dict(
        unet=dict(
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            cross_attention_dim=2048,
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            sample_size=128,
            in_channels=4,
            out_channels=4,
        ),
        latent=128,
        text=(77, 2048),
        pooled=1280,
    ),
}


def build_pipeline(size: str, device: str, dtype: torch.dtype):
    """A stock diffusers pipeline around a random-weight U-Net of ``size`` (no hub access)."""
    import diffusers

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    spec = SIZES[size]
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**spec["unet"]).to(device, dtype).eval().requires_grad_(False)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(4,),
        latent_channels=4,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
    ).to(device, dtype)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing", steps_offset=1
    )
    if "pooled" in spec:
        pipe = diffusers.StableDiffusionXLPipeline(
            unet=unet,
            vae=vae,
            scheduler=scheduler,
            text_encoder=None,
            text_encoder_2=None,
            tokenizer=None,
            tokenizer_2=None,
        )
    else:
        pipe = diffusers.StableDiffusionPipeline(
            unet=unet,
            vae=vae,
            scheduler=scheduler,
            text_encoder=None,
            tokenizer=None,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call(pipe, size: str, batch: int, steps: int, device: str, dtype: torch.dtype):
    spec = SIZES[size]
    g = torch.Generator().manual_seed(1)
    text = torch.randn((batch,) + spec["text"], generator=g).to(device, dtype)
    kwargs = dict(
        prompt_embeds=text,
        negative_prompt_embeds=torch.zeros_like(text),
        num_inference_steps=steps,
        guidance_scale=5.0,
        output_type="latent",
        height=spec["latent"] * pipe.vae_scale_factor,
        width=spec["latent"] * pipe.vae_scale_factor,
        generator=[torch.Generator().manual_seed(i) for i in range(batch)],
    )
    if "pooled" in spec:
        pooled = torch.randn(batch, spec["pooled"], generator=g).to(device, dtype)
        kwargs.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=torch.zeros_like(pooled))
    return pipe(**kwargs).images


COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune")


def run_timing(
    size: str = "sd-medium",
    steps: int = 25,
    batch: int = 2,
    repeats: int = 3,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    compile_mode: str | None = None,
) -> list[dict]:
    """Rows ``method, NFE, median seconds, wall speedup, wall/NFE`` (all methods timed round-robin).

    ``compile_mode``: ``torch.compile`` the U-Net with this mode (``"reduce-overhead"``: CUDA graphs on a GPU)
    after counting the evaluations eagerly; SADA then takes batch-level decisions, as the adapter does by itself
    for a compiled network, so the counts are taken eagerly with ``lockstep=True``."""
    import sada.adapters.diffusers as sada_diffusers
    from sada.config import SADAConfig, preset

    if steps not in (50, 25, 15):
        raise ValueError(f"steps must be 50, 25 or 15 (a preset exists for those), got {steps}")
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
    lockstep = True if compile_mode else None
    pipe = build_pipeline(size, device, dtype)
    family = "sdxl" if size == "sdxl" else "sd2"
    sada = preset(family, steps, mode="corrected", reduce="sample", max_downsample=0)
    counter = {"rows": 0}
    hook = pipe.unet.conv_in.register_forward_pre_hook(
        lambda m, a: counter.__setitem__("rows", counter["rows"] + a[0].shape[0])
    )

    def method(config, n_steps):
        def call():
            if config is None:
                return _call(pipe, size, batch, n_steps, device, dtype)
            with sada_diffusers.enabled(pipe, config, lockstep=lockstep):
                return _call(pipe, size, batch, n_steps, device, dtype)

        return call

    def nfe(call):
        counter["rows"] = 0
        call()
        return counter["rows"] / (2 * batch)

    methods = {
        "baseline": method(None, steps),
        "SADA, skipping disabled": method(SADAConfig(max_interval=0), steps),
        "SADA": method(sada, steps),
    }
    counts = {name: nfe(call) for name, call in methods.items()}  # also the warm-up
    k = int(round(counts["SADA"]))
    methods[f"fewer steps ({k})"] = method(None, k)
    counts[f"fewer steps ({k})"] = nfe(methods[f"fewer steps ({k})"])
    hook.remove()
    if compile_mode:
        pipe.unet = torch.compile(pipe.unet, mode=compile_mode)
        for call in methods.values():  # compile (and capture graphs) outside the timed rounds
            call()
    times = {name: [] for name in methods}
    names = list(methods)
    for r in range(repeats):
        for name in names if r % 2 else names[::-1]:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            methods[name]()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["baseline"])
    rows = []
    for name in names:
        t = statistics.median(times[name])
        speed, ratio = base / t, counts["baseline"] / counts[name]
        rows.append(
            {
                "method": name,
                "NFE": counts[name],
                "median_s": t,
                "times_s": times[name],
                "wall speedup": speed,
                "NFE speedup": ratio,
                "wall/NFE": speed / ratio,
            }
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="sd-medium")
    p.add_argument("--steps", type=int, default=25, choices=[50, 25, 15])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--fp16", action="store_true", help="half-precision weights (GPU)")
    p.add_argument(
        "--compile",
        choices=[m for m in COMPILE_MODES if m],
        default=None,
        help="torch.compile the U-Net with this mode (reduce-overhead: CUDA graphs on a GPU)",
    )
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        raise SystemExit(f"--batch and --repeats must be >= 1, got {args.batch}, {args.repeats}")
    rows = run_timing(
        args.size,
        args.steps,
        args.batch,
        args.repeats,
        args.device,
        torch.float16 if args.fp16 else torch.float32,
        args.compile,
    )
    print(
        f"{args.size} U-Net (random weights), {args.steps} DPM++ steps, batch {args.batch} (CFG: "
        f"{2 * args.batch} rows), device {args.device}, compile {args.compile or 'off'}, median of {args.repeats}"
    )
    print("| method | NFE | wall s | NFE speedup | wall speedup | wall/NFE |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['NFE']:.1f} | {r['median_s']:.2f} | {r['NFE speedup']:.2f}x | "
            f"{r['wall speedup']:.2f}x | {r['wall/NFE']:.2f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
