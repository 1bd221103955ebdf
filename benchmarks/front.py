"""The fidelity-versus-compute front on the shipped MMDiT: the accuracy dial swept against every peer that runs on it.

    python -m benchmarks.front run --shift 1 --out front-out/shift1.json [--groups plain sada taylorseer ...]
    python -m benchmarks.front render front-out/*.json --update docs/results/front.md   (benchmarks.front_render)

One process per call (cache-dit patches the transformer and cannot be removed: run its group in its own process).
Every method samples the same held-out seeds (1000.., labels ``seed % 10``) with flow Euler at 50 steps (the groups
``solvers`` / ``sada_solvers``: the pipeline's other solvers, DPM-Solver++ and UniPC with flow sigmas), and is scored
against the converged ODE solution (:mod:`benchmarks.reference`) and against the full run. Compute is the fraction of
the full run's FLOPs, counted by torch's FLOP counter around every whole sampling call (so whatever a method skips --
steps, blocks, attention -- is credited); on this model attention runs as matrix products the counter sees (checked
per block by :func:`_flop_split`, which would add ``4 L^2 d`` per head and row for a fused kernel it cannot see). Peers run through their own public APIs (``diffusers.hooks``'s
``apply_*`` functions inside a ``cache_context``, ``cache_dit.enable_cache``) with their documented settings, each swept
over its knob.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.front_common import (
    Method,
    adaptive_methods,
    apply_faster_cache,
    apply_pab,
    diffusers_hook,
    remove_hooks,
    sada_context,
)
from benchmarks.front_plan import (
    GROUPS,
    PLAIN_STEPS,
    SADA_STEPS,
    SADA_STEPS_SOLVERS,
    SEEDS,
    SOLVER_STEPS,
    SOLVER_TOLERANCES,
    SOLVERS,
    STEPS,
    TOLERANCES,
)
from benchmarks.models import shift_override


def _flop_split(model) -> dict:
    """FLOPs per network row outside the transformer blocks and per block row (the mean over the blocks), from one
    guided evaluation under torch's FLOP counter. Attention is counted when it runs as matrix products (``bmm``);
    where the counter shows no attention op in a block (a fused CPU kernel it does not know), ``4 L_q L_k d`` per
    head and row is added from the shapes seen by ``scaled_dot_product_attention``."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    net = model.network
    seen = []
    original = F.scaled_dot_product_attention

    def recorded(q, k, v, *args, **kwargs):
        seen.append(4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3])
        return original(q, k, v, *args, **kwargs)

    F.scaled_dot_product_attention = recorded
    try:
        with FlopCounterMode(display=False) as counter:
            model.guided_output(model.noise([0]), 500.0, [0])
    finally:
        F.scaled_dot_product_attention = original
    counts = counter.get_flop_counts()
    root = type(net).__name__
    blocks = [counts.get(f"{root}.transformer_blocks.{i}", {}) for i in range(len(net.transformer_blocks))]
    block_flops = [sum(b.values()) for b in blocks]
    missed = sum(seen) if not any("bmm" in str(op) or "attention" in str(op) for b in blocks for op in b) else 0
    rows = 2  # one guided evaluation = two rows
    total = counter.get_total_flops() + missed
    per_block_row = (sum(block_flops) + missed) / len(blocks) / rows
    return {
        "per_row": total / rows,
        "outside_per_row": total / rows - len(blocks) * per_block_row,
        "per_block_row": per_block_row,
        "attention_added": missed,
    }


class Counter:
    """Rows entering the network (evaluations) and rows a transformer block computes: counted at the block's first
    norm, inside its forward (a cache hook that skips the block replaces that forward, so it never runs)."""

    def __init__(self, net):
        self.evals = self.blocks = 0
        self.handles = [net.pos_embed.register_forward_pre_hook(self._eval)]
        self.handles += [
            b.norm1.register_forward_pre_hook(self._block, with_kwargs=True) for b in net.transformer_blocks
        ]

    def _eval(self, module, args):
        self.evals += args[0].shape[0]

    def _block(self, module, args, kwargs):
        hidden = args[0] if args else next(iter(kwargs.values()))
        self.blocks += hidden.shape[0]

    def reset(self):
        self.evals = self.blocks = 0

    def remove(self):
        for h in self.handles:
            h.remove()


def _methods(group: str, model, shift: float):
    """The :class:`Method` s of one group."""
    from diffusers import hooks

    hook = diffusers_hook

    if group == "plain":
        return [Method(f"flow Euler, {n} steps", n, None, steps=n) for n in PLAIN_STEPS]
    if group == "solvers":
        return [
            Method(f"{label}, {n} steps", n, None, sampler=sampler, steps=n)
            for sampler, label in SOLVERS.items()
            for n in SOLVER_STEPS
        ]
    if group in ("sada", "sada_solvers"):
        from sada.config import SADAConfig

        sada = sada_context

        if group == "sada":
            out = [Method("SADA default", None, sada(SADAConfig()))]
            return out + [Method(f"SADA tolerance {t:g}", t, sada(SADAConfig(tolerance=t))) for t in TOLERANCES]
        return [
            Method(f"SADA on {label}, {'default' if t is None else f'tolerance {t:g}'}", t, sada(config), sampler)
            for sampler, label in SOLVERS.items()
            if sampler != "flow_dpmpp_3m"
            for t, config in [(None, SADAConfig())] + [(t, SADAConfig(tolerance=t)) for t in SOLVER_TOLERANCES]
        ]
    if group == "sada_steps":
        from sada.config import SADAConfig

        return [
            Method(f"SADA default on {label}, {n} steps", n, sada_context(SADAConfig()), sampler, n)
            for sampler, label in SADA_STEPS_SOLVERS.items()
            for n in SADA_STEPS
        ]
    if group == "adaptive":
        return adaptive_methods("flow_euler")
    if group == "taylorseer":
        out = []
        for lite in (True, False):
            for interval in (2, 3, 4, 5, 6):
                for warmup in (3, 5):
                    config = hooks.TaylorSeerCacheConfig(
                        cache_interval=interval,
                        disable_cache_before_step=warmup,
                        taylor_factors_dtype=torch.float32,
                        use_lite_mode=lite,
                    )
                    name = f"TaylorSeer{' lite' if lite else ''}, interval {interval}, warm-up {warmup}"
                    out.append(
                        Method(name, interval, hook(lambda net, pipe, c=config: hooks.apply_taylorseer_cache(net, c)))
                    )
        return out
    if group == "first_block":
        return [
            Method(
                f"FirstBlockCache, threshold {t:g}",
                t,
                hook(
                    lambda net, pipe, t=t: hooks.apply_first_block_cache(net, hooks.FirstBlockCacheConfig(threshold=t))
                ),
            )
            for t in (0.05, 0.1, 0.2, 0.3, 0.5)
        ]
    if group == "mag":
        ratios = _mag_ratios(model, shift)
        return [
            Method(
                f"MagCache (calibrated), threshold {t:g}",
                t,
                hook(
                    lambda net, pipe, t=t: hooks.apply_mag_cache(
                        net, hooks.MagCacheConfig(threshold=t, mag_ratios=ratios, num_inference_steps=STEPS)
                    )
                ),
            )
            for t in (0.02, 0.04, 0.06, 0.1, 0.2)
        ]
    if group in ("pab", "faster"):
        apply = apply_pab if group == "pab" else apply_faster_cache
        label = "PyramidAttentionBroadcast" if group == "pab" else "FasterCache"
        return [
            Method(f"{label}, block skip range {k}", k, hook(lambda net, pipe, k=k: apply(net, pipe, k)))
            for k in (2, 3, 4)
        ]
    if group in ("cache_dit", "sada_cache_dit"):
        thresholds = (0.04, 0.08, 0.12, 0.2, 0.3) if group == "cache_dit" else (0.08, 0.12)
        return [
            Method(
                f"{'SADA + ' if group != 'cache_dit' else ''}cache-dit DBCache F1B0, threshold {t:g}",
                t,
                _cache_dit(t, with_sada=group != "cache_dit"),
            )
            for t in thresholds
        ]
    raise ValueError(f"group must be one of {GROUPS}, got {group!r}")


def _cache_dit(threshold: float, with_sada: bool):
    @contextlib.contextmanager
    def ctx(pipe, net):
        import cache_dit

        cache_dit.enable_cache(
            pipe,
            cache_config=cache_dit.DBCacheConfig(
                Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold
            ),
        )
        try:
            if with_sada:
                import sada.adapters.diffusers as sada_d

                with sada_d.enabled(pipe, lockstep=True) as handle:
                    yield handle
            else:
                yield None
        finally:
            cache_dit.disable_cache(pipe)

    return ctx


def _mag_ratios(model, shift: float) -> list:
    """MagCache's calibration run (its documented procedure: ``calibrate=True`` on a stock pipeline, read the
    printed ratios)."""
    import io

    from diffusers import hooks
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    net = model.network
    hooks.apply_mag_cache(net, hooks.MagCacheConfig(calibrate=True, num_inference_steps=STEPS))
    printed = io.StringIO()
    pipe = model.pipeline("flow_euler", shift=shift)
    _set_cache_context(net, CacheContext("cond"))
    try:
        with contextlib.redirect_stdout(printed):
            model.sample(pipe, [0, 1, 2, 3], [0, 1, 2, 3], STEPS)  # tuning seeds 0-3
    finally:
        _set_cache_context(net, None)
        remove_hooks(net)
    line = [v for v in printed.getvalue().splitlines() if v.startswith("[")][-1]
    return [float(v) for v in line.strip("[]").split(",")]


def run(shift: float, groups, out: Path) -> None:
    from torch.utils.flop_counter import FlopCounterMode
    from tqdm.auto import tqdm

    from benchmarks.metrics import psnr
    from benchmarks.models import load_model
    from benchmarks.reference import ReferenceSpec, reference_images

    torch.set_num_threads(1)  # the reference cache is keyed by the thread count of `make bench`
    model = load_model("mmdit")
    labels = [s % 10 for s in SEEDS]
    reference = reference_images(model, ReferenceSpec("mmdit", "flow", model.guidance), SEEDS, labels)
    split = _flop_split(model)
    net = model.network
    counter = Counter(net)
    full_flops = None  # the full run's, counted like every method's
    results = json.loads(out.read_text()) if out.is_file() else {"shift": shift, "methods": {}}
    results.update(flops=split, seeds=list(SEEDS), steps=STEPS)
    full = None
    todo = [(Method("full run", STEPS, None), "plain")] + [(m, g) for g in groups for m in _methods(g, model, shift)]
    for method, group in tqdm(todo, desc=f"front shift {shift:g}", unit="method"):
        name, knob, apply = method.name, method.knob, method.apply
        pipe = model.pipeline(method.sampler, **shift_override(method.sampler, shift))
        steps = STEPS if method.steps is None else method.steps
        counter.reset()
        start = time.perf_counter()
        try:
            with FlopCounterMode(display=False) as flop_counter:
                if apply is None:
                    images = model.sample(pipe, labels, list(SEEDS), steps)
                    summary = None
                else:
                    with apply(pipe, net) as handle:
                        images = model.sample(pipe, labels, list(SEEDS), steps)
                        summary = handle.summary() if handle is not None else None
        except Exception as exc:  # a peer that cannot run here is reported with its error
            results["methods"][name] = {"group": group, "error": f"{type(exc).__name__}: {exc}"}
            continue
        seconds = time.perf_counter() - start
        if full is None:
            full = images
        flops = flop_counter.get_total_flops() + split["attention_added"] * counter.evals / 2
        if full_flops is None:
            full_flops = flops
        results["methods"][name] = {
            "group": group,
            "sampler": method.sampler,
            "knob": knob,
            "compute": flops / full_flops,
            "evaluations": counter.evals / (2 * len(SEEDS)),
            "block_rows": counter.blocks / (2 * len(SEEDS) * len(net.transformer_blocks)),
            "psnr_ode": psnr(images, reference),
            "psnr_full": psnr(images, full) if name != "full run" else 100.0,
            "seconds": seconds,
            "summary": summary,
        }
    counter.remove()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.front", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--shift", type=float, default=1.0)
    r.add_argument("--groups", nargs="+", default=[g for g in GROUPS if "cache_dit" not in g], choices=GROUPS)
    r.add_argument("--out", required=True)
    d = sub.add_parser("render")
    d.add_argument("results", nargs="+")
    d.add_argument("--update", help="write the markdown page here (figures beside it under img/)")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.shift, args.groups, Path(args.out))
        return 0
    from benchmarks.front_render import render

    page = render(args.results, Path(args.update).parent / "img" if args.update else None)
    if args.update:
        Path(args.update).write_text(page)
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
