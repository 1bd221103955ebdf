"""The fidelity-versus-compute front on the shipped U-Net (Karras sigmas): the accuracy dial on every solver of the
pipeline against the same solvers run plainly with fewer steps, AdaptiveDiffusion and diffusers' cache hooks.

    python -m benchmarks.front_unet run --out docs/results/front-data/unet-karras.json [--groups plain sada ...]
    python -m benchmarks.front_unet render docs/results/front-data/unet-karras.json --update docs/results/front-unet.md

Every method samples the held-out seeds 1000-1015 (labels ``seed % 10``) through the stock diffusers pipeline with
``use_karras_sigmas=True`` and is scored against the converged solution of its own ODE (:mod:`benchmarks.reference`:
DPM-Solver++ and UniPC start at the VP schedule's first noise level, Euler and Heun at ``sigma_max``, two slightly
different ODEs) and against its own solver's 50-step run. Compute is the fraction of the FLOPs of DPM-Solver++ 2M at 50
steps (the main job's U-Net cell), counted by torch's FLOP counter around every whole sampling call, with the
attention of the fused CPU kernel added where the counter does not see it (:class:`benchmarks.front_common.
AttentionFlops`). Caches run through their own public APIs (``diffusers.hooks``'s ``apply_*``) on the same 2M run; one
that cannot run, or applies to nothing on this network, is reported as such.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from benchmarks.front_common import (
    AttentionFlops,
    Method,
    adaptive_methods,
    apply_faster_cache,
    apply_pab,
    counter_sees_attention,
    diffusers_hook,
    sada_context,
)
from benchmarks.front_unet_plan import (
    FULL_SAMPLER,
    GROUPS,
    HEUN_STEPS,
    KARRAS,
    PLAIN_STEPS,
    SADA_STEPS,
    SADA_STEPS_SOLVERS,
    SADA_STEPS_TOLERANCES,
    SEEDS,
    SOLVERS,
    STEPS,
    TOLERANCES,
    UNET_ATTENTION,
)


def solver_order_class(sampler: str) -> str:
    """``first`` for Euler, ``higher`` for the second- and third-order solvers (their dial settings differ)."""
    if sampler not in SOLVERS:
        raise ValueError(f"sampler must be one of {sorted(SOLVERS)}, got {sampler!r}")
    return "first" if sampler == "euler" else "higher"


def _methods(group: str, pipe_of=None) -> list[Method]:
    """The :class:`Method` s of one group (``pipe_of(sampler)`` builds a pipeline; only the cache groups use it)."""
    from diffusers import hooks

    if group == "plain":
        return [
            Method(f"{label}, {n} steps", n, None, sampler, n)
            for sampler, label in SOLVERS.items()
            for n in (HEUN_STEPS if sampler == "heun" else PLAIN_STEPS)
        ]
    if group == "sada":
        from sada.config import SADAConfig

        return [
            Method(
                f"SADA on {label}, {'default' if t is None else f'tolerance {t:g}'}", t, sada_context(config), sampler
            )
            for sampler, label in SOLVERS.items()
            for t, config in [(None, SADAConfig())]
            + [(t, SADAConfig(tolerance=t)) for t in TOLERANCES[solver_order_class(sampler)]]
        ]
    if group == "sada_steps":
        from sada.config import SADAConfig

        return [
            Method(f"SADA on {SOLVERS[sampler]}, default, {n} steps", n, sada_context(SADAConfig()), sampler, n)
            for sampler in SADA_STEPS_SOLVERS
            for n in SADA_STEPS
        ] + [
            Method(
                f"SADA on {SOLVERS[sampler]}, tolerance {t:g}, {n} steps",
                n,
                sada_context(SADAConfig(tolerance=t)),
                sampler,
                n,
            )
            for sampler in SADA_STEPS_SOLVERS
            for n, t in SADA_STEPS_TOLERANCES.items()
        ]
    if group == "adaptive":
        return adaptive_methods(FULL_SAMPLER)

    def on_full(name, knob, apply_fn):
        return Method(name, knob, diffusers_hook(apply_fn), FULL_SAMPLER)

    if group == "taylorseer":
        out = []
        for lite, intervals in ((False, (2, 3, 4, 6)), (True, (2,))):
            for interval in intervals:
                config = hooks.TaylorSeerCacheConfig(
                    cache_interval=interval,
                    disable_cache_before_step=5,
                    taylor_factors_dtype=torch.float32,
                    use_lite_mode=lite,
                )
                name = f"TaylorSeer{' lite' if lite else ''}, interval {interval}, warm-up 5"
                out.append(on_full(name, interval, lambda net, pipe, c=config: hooks.apply_taylorseer_cache(net, c)))
        for interval in (2, 4):  # its documented knob for other networks: the modules to cache, named
            config = hooks.TaylorSeerCacheConfig(
                cache_interval=interval,
                disable_cache_before_step=5,
                taylor_factors_dtype=torch.float32,
                cache_identifiers=[UNET_ATTENTION],
            )
            name = f"TaylorSeer, U-Net attention named, interval {interval}, warm-up 5"
            out.append(on_full(name, interval, lambda net, pipe, c=config: hooks.apply_taylorseer_cache(net, c)))
        return out
    if group == "first_block":
        return [
            on_full(
                f"FirstBlockCache, threshold {t:g}",
                t,
                lambda net, pipe, t=t: hooks.apply_first_block_cache(net, hooks.FirstBlockCacheConfig(threshold=t)),
            )
            for t in (0.05, 0.1, 0.2)
        ]
    if group == "mag":
        return [on_full("MagCache (calibration run)", None, _mag_calibration)]
    if group in ("pab", "faster"):
        apply, label = (
            (apply_pab, "PyramidAttentionBroadcast") if group == "pab" else (apply_faster_cache, "FasterCache")
        )
        return [
            on_full(f"{label}, block skip range {k}", k, lambda net, pipe, k=k, a=apply: a(net, pipe, k))
            for k in ((2, 3, 4) if group == "pab" else (2,))
        ]
    raise ValueError(f"group must be one of {GROUPS}, got {group!r}")


def _mag_calibration(net, pipe) -> None:
    """MagCache's documented first step, ``calibrate=True``; it logs a warning and hooks nothing when the network has
    no transformer-block list it knows (raised here with diffusers' own words, so the page says why)."""
    from diffusers import hooks

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        hooks.apply_mag_cache(net, hooks.MagCacheConfig(calibrate=True, num_inference_steps=STEPS))
    finally:
        logger.removeHandler(handler)
    missing = [m for m in seen if "No transformer blocks" in m]
    if missing:
        raise RuntimeError(f"MagCache hooks nothing on this network ({missing[0].strip()!r})")


class Counter:
    """Rows entering the network (at ``conv_in``) and rows its transformer blocks compute (at each block's first
    norm, inside the block's forward)."""

    def __init__(self, net):
        self.evals = self.blocks = 0
        self.block_count = 0
        self.handles = [net.conv_in.register_forward_pre_hook(self._eval)]
        for module in net.modules():
            if type(module).__name__ == "BasicTransformerBlock":
                self.block_count += 1
                self.handles.append(module.norm1.register_forward_pre_hook(self._block))

    def _eval(self, module, args):
        self.evals += args[0].shape[0]

    def _block(self, module, args):
        self.blocks += args[0].shape[0]

    def reset(self):
        self.evals = self.blocks = 0

    def remove(self):
        for h in self.handles:
            h.remove()


def _order(methods: list[tuple[Method, str]]) -> list[tuple[Method, str]]:
    """The full run first (its FLOPs are the unit), then each solver's 50-step run (its own yardstick), then the rest."""

    def rank(item):
        method = item[0]
        if item[1] == "plain" and method.steps == STEPS:
            return 0 if method.sampler == FULL_SAMPLER else 1
        return 2

    return sorted(methods, key=rank)


def _todo(groups, done=frozenset()) -> list[tuple[Method, str]]:
    """What :func:`run` runs, in order: every solver's 50-step run first (the yardsticks, always run), then each
    group's methods but those named in ``done``."""
    todo = _order([(m, "plain") for m in _methods("plain") if m.steps == STEPS])
    return todo + [
        (m, g) for g in groups for m in _methods(g) if not (g == "plain" and m.steps == STEPS) and m.name not in done
    ]


def run(groups, out: Path, seeds=SEEDS, resume: bool = False) -> None:
    """Run ``groups`` on ``seeds`` (the held-out 1000-1015 by default) and merge them into ``out``; a results file of
    other seeds is refused, so that one file never mixes seed sets. With ``resume`` a method already in ``out`` is
    kept as it is (every run is deterministic) and only the new ones run, after the solvers' 50-step runs that every
    point is measured against."""
    from torch.utils.flop_counter import FlopCounterMode
    from tqdm.auto import tqdm

    from benchmarks.cells import VP_START_SAMPLERS
    from benchmarks.metrics import psnr
    from benchmarks.models import load_model
    from benchmarks.reference import ReferenceSpec, reference_images

    results = json.loads(out.read_text()) if out.is_file() else {"model": "unet", "spacing": "karras", "methods": {}}
    if results.get("seeds", list(seeds)) != list(seeds):
        raise ValueError(f"{out} holds seeds {results['seeds'][0]}-{results['seeds'][-1]}, not {seeds[0]}-{seeds[-1]}")
    torch.set_num_threads(1)  # the reference cache is keyed by the thread count of `make bench`
    model = load_model("unet")
    labels = [s % 10 for s in seeds]
    references = {
        start: reference_images(model, ReferenceSpec("unet", start, model.guidance), seeds, labels)
        for start in ("vp", "edm")
    }
    net = model.network
    counter = Counter(net)
    attention = AttentionFlops()
    results.update(seeds=list(seeds), steps=STEPS, full_sampler=FULL_SAMPLER)
    todo = _todo(groups, set(results["methods"]) if resume else set())
    full_flops, own_full = None, {}
    for method, group in tqdm(todo, desc="front U-Net", unit="method"):
        pipe = model.pipeline(method.sampler, **KARRAS)
        steps = STEPS if method.steps is None else method.steps
        counter.reset()
        attention.flops = 0
        start = time.perf_counter()
        try:
            with FlopCounterMode(display=False) as flop_counter, attention.counting():
                if method.apply is None:
                    images = model.sample(pipe, labels, list(seeds), steps)
                    summary = None
                else:
                    with method.apply(pipe, net) as handle:
                        images = model.sample(pipe, labels, list(seeds), steps)
                        summary = handle.summary() if handle is not None else None
        except Exception as exc:  # a peer that cannot run here is reported with its error
            results["methods"][method.name] = {"group": group, "sampler": method.sampler, "error": _error(exc)}
            continue
        seconds = time.perf_counter() - start
        seen = counter_sees_attention({"Global": flop_counter.get_flop_counts().get("Global", {})})
        flops = flop_counter.get_total_flops() + (0 if seen else attention.flops)
        if full_flops is None:
            full_flops = flops
        own_full.setdefault(method.sampler, images)
        start_convention = "vp" if method.sampler in VP_START_SAMPLERS else "edm"
        same = torch.equal(images, own_full[method.sampler])
        results["methods"][method.name] = {
            "group": group,
            "sampler": method.sampler,
            "knob": method.knob,
            "steps": steps,
            "compute": flops / full_flops,
            "evaluations": counter.evals / (2 * len(seeds)),
            "block_rows": counter.blocks / (2 * len(seeds) * max(counter.block_count, 1)),
            "psnr_ode": psnr(images, references[start_convention]),
            "psnr_full": 100.0 if same else psnr(images, own_full[method.sampler]),
            "identical_to_full": bool(same and method.apply is not None),
            "seconds": seconds,
            "summary": summary,
        }
    counter.remove()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.front_unet", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS)
    r.add_argument("--out", required=True)
    r.add_argument("--first-seed", type=int, default=SEEDS[0], help="16 seeds from here (default: the held-out 1000)")
    r.add_argument("--resume", action="store_true", help="keep the methods already in --out; run only the new ones")
    d = sub.add_parser("render")
    d.add_argument("results", nargs="+")
    d.add_argument("--update", help="write the markdown page here (figures beside it under img/)")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.groups, Path(args.out), tuple(range(args.first_seed, args.first_seed + len(SEEDS))), args.resume)
        return 0
    from benchmarks.front_unet_render import render

    page = render(args.results, Path(args.update).parent / "img" if args.update else None)
    if args.update:
        Path(args.update).write_text(page)
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
