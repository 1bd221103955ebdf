"""Train and evaluate the tiny real benchmark models (16x16 sklearn digits, class-conditional).

Their bundles are written, loaded offline and sampled by :mod:`benchmarks.bundles`.

Shipped bundles (under ``benchmarks/assets/``), all loadable offline:

* ``digits-unet``  - SD-like ``UNet2DConditionModel`` (cross-attention), epsilon prediction, DDPM scaled-linear betas.
* ``digits-mmdit`` - SD3-like ``SD3Transformer2DModel`` (MMDiT), rectified-flow velocity prediction.
* ``digits-classifier`` - small CNN (see :mod:`benchmarks.classifier`) for sample accuracy / Frechet features.

Both diffusion models are conditioned by a learned label table of 11 rows (digits 0..9 plus the null label 10 used for
classifier-free guidance). Reproduce the shipped weights with ``python -m benchmarks.train --model all`` (written to
``sada-train-out/``; nothing this module does by default writes into ``benchmarks/assets/``: pass
``--out benchmarks/assets`` to replace the shipped bundles).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.bundles import (
    CLASSIFIER_DIR,
    DDPM_CONFIG,
    DEFAULTS,
    MMDIT_CONFIG,
    MMDIT_DIM,
    MMDIT_DIR,
    MMDIT_POOLED,
    MMDIT_TOKENS,
    NULL_LABEL,
    NUM_DIGITS,
    NUM_LABELS,
    UNET_CONFIG,
    UNET_DIM,
    UNET_DIR,
    UNET_TOKENS,
    load_mmdit_bundle,
    load_unet_bundle,
    sample_mmdit,
    sample_unet,
    save_bundle,
    save_grid,
)
from benchmarks.classifier import ASSETS_DIR, IMAGE_SIZE, accuracy, load_classifier, train_classifier

DEFAULT_OUT = "sada-train-out"  # never the shipped benchmarks/assets/
LABEL_DROPOUT = 0.12


def load_digit_data(seed: int = 0, test_fraction: float = 0.2):
    """sklearn digits (8x8, 0..16) -> bilinear 16x16 in [-1, 1]; stratified split. Returns x_tr, y_tr, x_te, y_te."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=IMAGE_SIZE, mode="bilinear", align_corners=False) * 2 - 1
    y = torch.tensor(d.target, dtype=torch.long)
    tr, te = train_test_split(list(range(len(y))), test_size=test_fraction, stratify=d.target, random_state=seed)
    return x[tr], y[tr], x[te], y[te]


class LabelConditioner(nn.Module):
    """Learned label table: ``embeddings`` [11, S, D] (token sequence) and optional ``pooled`` [11, P]."""

    def __init__(self, num_tokens: int, dim: int, pooled_dim: int = 0):
        super().__init__()
        self.embeddings = nn.Parameter(torch.randn(NUM_LABELS, num_tokens, dim))
        self.pooled = nn.Parameter(torch.randn(NUM_LABELS, pooled_dim)) if pooled_dim else None


def _lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warmup (min(100, steps/10) steps), constant, then a cosine tail over the last 30% of steps."""
    warmup, tail = max(1, min(100, steps // 10)), int(0.7 * steps)
    lr = peak * min(1.0, (step + 1) / warmup)
    if step >= tail:
        lr *= 0.5 * (1 + math.cos(math.pi * (step - tail) / max(1, steps - tail)))
    return lr


def train_diffusion(
    kind: str,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    log_every: int = 50,
) -> dict:
    """Train the ``unet`` (epsilon) or ``mmdit`` (flow matching) model with EMA; save the EMA bundle under ``out``
    (required: the shipped bundles are never a default destination)."""
    from diffusers import DDPMScheduler, SD3Transformer2DModel, UNet2DConditionModel

    if kind not in ("unet", "mmdit"):
        raise ValueError(f"kind must be 'unet' or 'mmdit', got {kind!r}")
    if out is None:
        raise ValueError(
            "out must name the folder of the new bundle, got None (the shipped bundles under "
            f"{ASSETS_DIR} are never written by default)"
        )
    d = DEFAULTS[kind]
    steps, batch_size, lr = steps or d["steps"], batch_size or d["batch_size"], lr or d["lr"]
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("steps and batch_size must be >= 1 and lr > 0")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all, _, _ = load_digit_data(seed)
    if kind == "unet":
        net, cond = UNet2DConditionModel(**UNET_CONFIG), LabelConditioner(UNET_TOKENS, UNET_DIM)
        acp = DDPMScheduler(**DDPM_CONFIG).alphas_cumprod
    else:
        net, cond = SD3Transformer2DModel(**MMDIT_CONFIG), LabelConditioner(MMDIT_TOKENS, MMDIT_DIM, MMDIT_POOLED)
    model = nn.ModuleDict({"net": net, "cond": cond}).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"[{kind}] {n_params / 1e6:.3f}M params, {steps} steps x bs {batch_size}, lr {lr}", flush=True)
    t0, smooth = time.time(), None
    for step in range(steps):
        idx = torch.randint(0, len(x_all), (batch_size,), generator=gen)
        x0, labels = x_all[idx], y_all[idx].clone()
        labels[torch.rand(batch_size, generator=gen) < LABEL_DROPOUT] = NULL_LABEL
        noise = torch.randn(x0.shape, generator=gen)
        if kind == "unet":  # epsilon prediction: x_t = sqrt(a) x0 + sqrt(1-a) eps
            t = torch.randint(0, DDPM_CONFIG["num_train_timesteps"], (batch_size,), generator=gen)
            a = acp[t].view(-1, 1, 1, 1)
            xt, target = a.sqrt() * x0 + (1 - a).sqrt() * noise, noise
            pred = net(xt, t, encoder_hidden_states=cond.embeddings[labels]).sample
        else:  # diffusers flow matching: sigma=t, x_t=(1-t) x0 + t eps, v = eps - x0, logit-normal t
            t = torch.sigmoid(torch.randn(batch_size, generator=gen))
            tt = t.view(-1, 1, 1, 1)
            xt, target = (1 - tt) * x0 + tt * noise, noise - x0
            pred = net(
                hidden_states=xt,
                encoder_hidden_states=cond.embeddings[labels],
                pooled_projections=cond.pooled[labels],
                timestep=t * 1000,
            ).sample
        loss = F.mse_loss(pred, target)
        cur = _lr_at(step, steps, lr)
        for g in opt.param_groups:
            g["lr"] = cur
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(decay).add_(pm, alpha=1 - decay)
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(
                f"[{kind}] step {step:5d}/{steps} loss {loss.item():.4f} (ema {smooth:.4f}) lr {cur:.2e} "
                f"elapsed {time.time() - t0:.1f}s",
                flush=True,
            )
    stats = {
        "steps": steps,
        "batch_size": batch_size,
        "peak_lr": lr,
        "seed": seed,
        "label_dropout": LABEL_DROPOUT,
        "final_loss": round(loss.item(), 5),
        "final_loss_smoothed": round(smooth, 5),
        "train_seconds": round(time.time() - t0, 1),
        "torch_threads": torch.get_num_threads(),
        "n_params": n_params,
        "n_train_images": len(x_all),
    }
    save_bundle(kind, ema, Path(out), stats)
    return stats


def evaluate_bundle(
    kind: str,
    path: str | Path | None = None,
    per_class: int = 20,
    steps: int = 50,
    guidance_scale: float | None = None,
    grid_path: str | Path | None = None,
    seed: int = 0,
    classifier_path: str | Path | None = None,
    record: bool = False,
) -> dict:
    """Sample ``per_class`` images per digit with CFG, score them with the classifier against the requested label.

    Writes a 10x10 grid (row = class) to ``grid_path`` if given, and (``record``) the result into the
    ``sada_model.json`` of the bundle at ``path``, which must then be given (the shipped bundle is never written by
    default).
    """
    if kind not in ("unet", "mmdit") or per_class < 1 or steps < 1:
        raise ValueError(
            f"kind must be 'unet' or 'mmdit'; per_class and steps must be >= 1, got {kind!r}, {per_class}, {steps}"
        )
    if record and path is None:
        raise ValueError("record=True needs the bundle's path (the shipped bundles are never written by default)")
    bundle = (load_unet_bundle if kind == "unet" else load_mmdit_bundle)(path)
    sampler = sample_unet if kind == "unet" else sample_mmdit
    clf = load_classifier(classifier_path)
    labels = torch.arange(NUM_DIGITS).repeat_interleave(per_class)
    t0 = time.time()
    images = torch.cat(
        [sampler(bundle, labels[i : i + 100], steps, guidance_scale, seed + i) for i in range(0, len(labels), 100)]
    )
    acc = accuracy(clf, images.clamp(-1, 1), labels)
    with torch.no_grad():
        conf = clf(images.clamp(-1, 1)).softmax(1).gather(1, labels[:, None]).mean().item()
    g = bundle[3]["recommended_guidance_scale"] if guidance_scale is None else guidance_scale
    res = {
        "samples": len(labels),
        "steps": steps,
        "guidance_scale": g,
        "seed": seed,
        "class_accuracy": round(acc, 4),
        "mean_p_requested": round(conf, 4),
        "sample_seconds": round(time.time() - t0, 1),
    }
    print(f"[{kind}] eval {res}", flush=True)
    if grid_path is not None:
        pick = torch.cat([torch.arange(c * per_class, c * per_class + min(10, per_class)) for c in range(NUM_DIGITS)])
        save_grid(images[pick], grid_path, ncol=min(10, per_class))
    if record:
        bundle_dir = Path(path)
        meta = json.loads((bundle_dir / "sada_model.json").read_text())
        meta["eval"] = res
        (bundle_dir / "sada_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, choices=["unet", "mmdit", "classifier", "all"])
    p.add_argument("--steps", type=int, default=None, help="training steps (default: per-model, see DEFAULTS)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"output root (default: {DEFAULT_OUT}): new bundles go to OUT/digits-{{unet,mmdit,classifier}}, "
        f"--eval-only results to OUT/digits-{{unet,mmdit}}-eval.json; the shipped bundles are written "
        f"only when OUT is {ASSETS_DIR.name}/ itself",
    )
    p.add_argument(
        "--bundles",
        default=None,
        help="--eval-only: root of the bundles to evaluate (default: the shipped benchmarks/assets)",
    )
    p.add_argument("--eval-only", action="store_true", help="skip training; evaluate existing bundle(s) (read only)")
    p.add_argument("--no-eval", action="store_true", help="skip the post-training sample evaluation")
    p.add_argument("--img-dir", default=None, help="write sample grids OUT_IMG/digits-{unet,mmdit}-samples.png")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale for evaluation (default: recommended)")
    a = p.parse_args(argv)
    for name in ("steps", "batch_size"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.eval_only and a.no_eval:
        p.error("--eval-only and --no-eval are mutually exclusive")
    if a.bundles is not None and not a.eval_only:
        p.error("--bundles is for --eval-only (training writes new bundles under --out)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(a.out)
    source = Path(a.bundles) if a.bundles is not None else (ASSETS_DIR if a.eval_only else root)
    kinds = ["classifier", "unet", "mmdit"] if a.model == "all" else [a.model]
    clf_dir = source / CLASSIFIER_DIR if (source / CLASSIFIER_DIR).is_dir() else ASSETS_DIR / CLASSIFIER_DIR
    for kind in kinds:
        if kind == "classifier":
            if not a.eval_only:
                x_tr, y_tr, x_te, y_te = load_digit_data(a.seed)
                d = DEFAULTS["classifier"]
                train_classifier(
                    x_tr,
                    y_tr,
                    x_te,
                    y_te,
                    steps=a.steps or d["steps"],
                    batch_size=a.batch_size or d["batch_size"],
                    lr=d["lr"],
                    seed=a.seed,
                    out=root / CLASSIFIER_DIR,
                )
                clf_dir = root / CLASSIFIER_DIR
            continue
        bundle = source / (UNET_DIR if kind == "unet" else MMDIT_DIR)
        if not a.eval_only:
            train_diffusion(kind, a.steps, a.batch_size, seed=a.seed, out=bundle)
        if not a.no_eval:
            grid = Path(a.img_dir) / f"digits-{kind}-samples.png" if a.img_dir else None
            res = evaluate_bundle(
                kind, bundle, guidance_scale=a.guidance, grid_path=grid, classifier_path=clf_dir, record=not a.eval_only
            )  # a freshly trained bundle records its own evaluation
            if a.eval_only:
                root.mkdir(parents=True, exist_ok=True)
                report = root / f"digits-{kind}-eval.json"
                report.write_text(json.dumps({"bundle": str(bundle), "eval": res}, indent=2) + "\n")
                print(f"[{kind}] evaluation of {bundle} written to {report}", flush=True)


if __name__ == "__main__":
    main()
