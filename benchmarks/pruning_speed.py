"""Benchmarks of token pruning (not tests): block time on pruned steps, and fidelity on the shipped MMDiT.

    python -m benchmarks.pruning_speed [block] [--blocks basic joint] [--tokens 1024] [--batch 2] [--repeats 20]
    python -m benchmarks.pruning_speed fidelity [--samples 32] [--reference-steps 500] [--reference-file F]

``block`` runs a diffusers ``BasicTransformerBlock`` (SD width 320, 768-d text) and an SD3
``JointTransformerBlock`` (width 512, 77 text tokens) on ``tokens`` image tokens, fully and through
:class:`sada.torch_backend.pruning.TokenPruner` (with context, and whole-block pruning without it) with
maps marking 10-100% of the tokens unstable (the anchor grid adds 1/9). Full and pruned calls are
interleaved and the medians reported, with the K/V and output cache memory.

``fidelity`` samples the shipped 64-token MMDiT (32 seeds, labels ``s % 10``, CFG 3, 50 flow-Euler steps)
with the flux preset schedule and per-sample decisions, without pruning, with pruning of all 4 joint
blocks keeping context, and with whole-block pruning, and reports PSNR against the full 50-step run and
against a converged solution of the same ODE (a ``reference-steps`` run of the same pipeline from the
same noise; cached in ``--reference-file`` when given).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def _interleaved_medians(fns, repeats: int) -> list[float]:
    """Median milliseconds of each callable, calls interleaved so that load changes hit all alike."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times):
            start = time.perf_counter()
            fn()
            acc.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def _block_case(kind: str, tokens: int, batch: int):
    from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock

    torch.manual_seed(0)
    if kind == "basic":
        block = BasicTransformerBlock(320, 8, 40, cross_attention_dim=768).eval()
        return block, (torch.randn(batch, tokens, 320),), {"encoder_hidden_states": torch.randn(batch, 77, 768)}
    block = JointTransformerBlock(512, 8, 64, context_pre_only=False, qk_norm="rms_norm").eval()
    return (
        block,
        (),
        dict(
            hidden_states=torch.randn(batch, tokens, 512),
            encoder_hidden_states=torch.randn(batch, 77, 512),
            temb=torch.randn(batch, 512),
        ),
    )


def block_benchmark(kinds, tokens: int, batch: int, repeats: int) -> None:
    from sada import SADAConfig
    from sada.torch_backend.pruning import TokenPruner

    side = int(round(tokens**0.5))
    config = SADAConfig(acc_range=(0, 40), max_downsample=1, lagrange_term=0)
    mib = 1 / 2**20
    print(
        f"{tokens} image tokens, batch {batch}, {torch.get_num_threads()} threads, median of {repeats} interleaved "
        "calls; ctx = pruned with context (K/V cache), whole = whole-block pruning (no context)"
    )
    for kind in kinds:
        block, args, kwargs = _block_case(kind, tokens, batch)
        print(f"\n{type(block).__name__} ({kind})\n")
        print(
            "| unstable | tokens computed | full (ms) | pruned ctx (ms) | saved | pruned whole (ms) | saved | "
            "K/V cache (MiB) | output cache (MiB) |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        with torch.no_grad():
            for fraction in FRACTIONS:
                unstable = torch.rand(batch, side, side, generator=torch.Generator().manual_seed(1)) < fraction
                runs, pruners = [], []
                for context in (True, False):
                    pruner = TokenPruner(config, context=context)
                    pruner.plan_step(5, np.ones(batch, bool), unstable)
                    pruner.run_block("b", block, block.forward, args, kwargs)  # refresh: caches filled
                    pruner.plan_step(6, np.ones(batch, bool), unstable)
                    pruner.stats = {"tokens_in": 0, "tokens_total": 0}
                    runs.append(lambda p=pruner: p.run_block("b", block, block.forward, args, kwargs))
                    pruners.append(pruner)
                full, ctx, whole = _interleaved_medians([lambda: block(*args, **kwargs)] + runs, repeats)
                stats = pruners[0].stats
                computed = stats["tokens_in"] / stats["tokens_total"]
                print(
                    f"| {fraction:.0%} | {computed:.0%} | {full:.1f} | {ctx:.1f} | {1 - ctx / full:.0%} "
                    f"| {whole:.1f} | {1 - whole / full:.0%} | {pruners[0].kv_cache_bytes() * mib:.2f} | "
                    f"{pruners[0].output_cache_bytes() * mib:.2f} |"
                )


def fidelity_benchmark(samples: int, reference_steps: int, reference_file: str | None, guidance: float) -> None:
    import os

    import sada
    import sada.adapters.diffusers as sada_diffusers
    from benchmarks.metrics import psnr
    from benchmarks.models import load_model

    model = load_model("mmdit")
    pipe = model.pipeline()
    seeds = list(range(samples))
    labels = [s % 10 for s in seeds]
    key = f"{samples}-{reference_steps}-{guidance}"
    exists = reference_file and os.path.exists(reference_file)
    refs = torch.load(reference_file, weights_only=True) if exists else {}  # tensors and a key string: no pickle
    if refs.get("key") != key:
        start = time.perf_counter()
        refs = {
            "key": key,
            "full": model.sample(pipe, labels, seeds, 50, guidance),
            "converged": model.sample(pipe, labels, seeds, reference_steps, guidance),
        }
        print(f"references computed in {time.perf_counter() - start:.0f} s")
        if reference_file:
            torch.save(refs, reference_file)
    full, converged = refs["full"], refs["converged"]
    print(
        f"MMDiT, {samples} samples, CFG {guidance}; full 50-step run vs {reference_steps}-step run: "
        f"{psnr(full, converged):.2f} dB\n"
    )
    flux = sada.preset("flux", 50).replace(mode="corrected", reduce="sample", max_downsample=0)
    # the authors' step schedule with corrected numerics: what a pruning config that names no schedule gets
    default = sada.SADAConfig(schedule=sada.config.StepSchedule(), mode="corrected", reduce="sample")
    blocks = (0, 1, 2, 3)
    runs = [
        ("flux preset: SADA", flux, True),
        ("flux preset: + pruning, context", flux.replace(prune_blocks=blocks), True),
        ("flux preset: + pruning, whole-block", flux.replace(prune_blocks=blocks), False),
        ("flux preset: + pruning, context, max_fix=64", flux.replace(prune_blocks=blocks, max_fix=64), True),
        ("flux preset: + pruning, whole-block, max_fix=64", flux.replace(prune_blocks=blocks, max_fix=64), False),
        ("step schedule: SADA", default, True),
        ("step schedule: + pruning, context", default.replace(prune_blocks=blocks), True),
        ("step schedule: + pruning, whole-block", default.replace(prune_blocks=blocks), False),
    ]
    print(
        "| run | PSNR vs 50-step (dB) | PSNR vs converged (dB) | computed steps | tokens computed on pruned "
        "blocks | cache (KiB) | wall (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, config, context in runs:
        with sada_diffusers.enabled(pipe, config) as handle:
            pruner = getattr(getattr(handle, "_controller", None), "pruner", None)
            if pruner is not None:
                pruner.context = context
            start = time.perf_counter()
            out = model.sample(pipe, labels, seeds, 50, guidance)
            wall = time.perf_counter() - start
            trace = handle.trace
        info = trace.extras.get("pruning", {})
        fractions = list(info.get("token_fraction", {}).values())
        tokens = f"{np.mean(fractions):.0%}" if fractions else "-"
        print(
            f"| {name} | {psnr(out, full):.2f} | {psnr(out, converged):.2f} | "
            f"{trace.network_evaluations() / samples:.1f}/50 | {tokens} | {info.get('cache_bytes', 0) / 1024:.0f} "
            f"| {wall:.0f} |",
            flush=True,
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="block", choices=("block", "fidelity"))
    parser.add_argument("--blocks", nargs="+", default=["basic", "joint"], choices=("basic", "joint"))
    parser.add_argument("--tokens", type=int, default=1024, help="image tokens (a square number, >= 256)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--reference-steps", type=int, default=500)
    parser.add_argument("--reference-file", default=None, help="cache of the 50-step and converged runs")
    parser.add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.mode == "fidelity":
        if args.samples < 1 or args.reference_steps < 100:
            parser.error(
                f"need --samples >= 1 and --reference-steps >= 100, got {args.samples}, {args.reference_steps}"
            )
        fidelity_benchmark(args.samples, args.reference_steps, args.reference_file, args.guidance)
        return 0
    side = int(round(args.tokens**0.5))
    if side * side != args.tokens or args.tokens < 256:
        parser.error(f"--tokens must be a square number >= 256, got {args.tokens}")
    if args.batch < 1 or args.repeats < 1:
        parser.error(f"--batch and --repeats must be >= 1, got {args.batch}, {args.repeats}")
    block_benchmark(args.blocks, args.tokens, args.batch, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
