"""Benchmark: a transformer block's time on token-pruned steps vs full steps (not a test).

    python -m sada.bench.pruning_speed [--tokens 1024] [--dim 320] [--batch 2] [--repeats 20]

Runs a diffusers ``BasicTransformerBlock`` (SD-like width) on ``tokens`` image tokens, fully and through
:class:`sada.torch_backend.pruning.TokenPruner` with maps marking 10-100% of the tokens unstable (the
anchor grid adds 1/9), and prints the median times side by side, measured in one process.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    from diffusers.models.attention import BasicTransformerBlock

    from sada import SADAConfig
    from sada.torch_backend.pruning import TokenPruner

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="image tokens (a square number, >= 256)")
    parser.add_argument("--dim", type=int, default=320)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    side = int(round(args.tokens ** 0.5))
    if side * side != args.tokens or args.tokens < 256:
        parser.error(f"--tokens must be a square number >= 256, got {args.tokens}")
    torch.manual_seed(0)
    block = BasicTransformerBlock(args.dim, 8, args.dim // 8, cross_attention_dim=768).eval()
    x = torch.randn(args.batch, args.tokens, args.dim)
    ctx = torch.randn(args.batch, 77, 768)
    config = SADAConfig(acc_range=(0, 40), max_downsample=1, lagrange_term=0)
    print(f"BasicTransformerBlock dim={args.dim}, {args.tokens} tokens, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print("| unstable tokens | tokens computed | full step (ms) | pruned step (ms) | speedup |")
    print("|---|---|---|---|---|")
    with torch.no_grad():
        full_ms = _median_ms(lambda: block(x, encoder_hidden_states=ctx), args.repeats)
        for fraction in (0.1, 0.25, 0.5, 1.0):
            pruner = TokenPruner(config)
            unstable = torch.rand(args.batch, side, side, generator=torch.Generator().manual_seed(1)) < fraction
            pruner.plan_step(5, np.ones(args.batch, bool), unstable)
            pruner.run_block("b", "BasicTransformerBlock", block, (x,), {"encoder_hidden_states": ctx})  # refresh
            pruner.plan_step(6, np.ones(args.batch, bool), unstable)
            pruner.stats = {"tokens_in": 0, "tokens_total": 0}
            run = (lambda p=pruner: p.run_block("b", "BasicTransformerBlock", block, (x,),
                                                {"encoder_hidden_states": ctx}))
            pruned_ms = _median_ms(run, args.repeats)
            computed = pruner.stats["tokens_in"] / pruner.stats["tokens_total"]
            print(f"| {fraction:.0%} | {computed:.0%} | {full_ms:.2f} | {pruned_ms:.2f} | {full_ms / pruned_ms:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
