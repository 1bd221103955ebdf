"""SADA with another cache on the shipped MMDiT: PSNR against the stock run, evaluations and block rows.

    python -m benchmarks.other_caches CACHE ORDER [SEEDS]

CACHE: ``mag``, ``pab``, ``taylorseer``, ``faster``, ``group_offload``, ``layerwise_cast``, ``cache_dit``;
ORDER: ``cache-only``, ``sada-first``, ``cache-first`` (``lockstep=True`` with ``LOCKSTEP=1``). Run each in its
own process (layerwise casting cannot be removed from a model). Refused combinations print the
``IncompatibleHookError``. Flow Euler, 50 steps, shift 1, labels ``seed % 10``; every cache is applied with its
``apply_*`` function inside a ``cache_context("cond")`` (the SD3 pipeline sets none). Docs: docs/howto-diffusers.md,
"Combining with other caches".
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

import torch

STEPS = 50
ORDERS = ("cache-only", "sada-first", "cache-first")


def _caches(net, hooks, steps: int) -> dict:
    def calibrated_mag(pipe, sample):
        hooks.apply_mag_cache(
            net, hooks.MagCacheConfig(mag_ratios=_calibrate_mag(net, hooks, steps, sample), num_inference_steps=steps)
        )

    def timestep(pipe):
        return lambda: pipe.scheduler.timesteps[pipe.scheduler.step_index or 0]

    def cache_dit_on(pipe, sample):
        import cache_dit

        cache_dit.enable_cache(
            pipe,
            cache_config=cache_dit.DBCacheConfig(
                Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.08
            ),
        )

    return {
        "mag": calibrated_mag,
        "pab": lambda pipe, sample: hooks.apply_pyramid_attention_broadcast(
            net,
            hooks.PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=2,
                spatial_attention_timestep_skip_range=(100, 800),
                current_timestep_callback=timestep(pipe),
            ),
        ),
        "taylorseer": lambda pipe, sample: hooks.apply_taylorseer_cache(
            net,
            hooks.TaylorSeerCacheConfig(
                cache_interval=3, disable_cache_before_step=5, taylor_factors_dtype=torch.float32
            ),
        ),
        "faster": lambda pipe, sample: hooks.apply_faster_cache(
            net,
            hooks.FasterCacheConfig(
                spatial_attention_block_skip_range=2,
                current_timestep_callback=timestep(pipe),
                attention_weight_callback=lambda _: 0.3,
                tensor_format="BCHW",
            ),
        ),
        "group_offload": lambda pipe, sample: net.enable_group_offload(
            torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1
        ),
        "layerwise_cast": lambda pipe, sample: net.enable_layerwise_casting(
            storage_dtype=torch.bfloat16, compute_dtype=torch.float32
        ),
        "cache_dit": cache_dit_on,
    }


_RATIOS: dict = {}


def _calibrate_mag(net, hooks, steps: int, sample) -> list:
    """MagCache's magnitude ratios for this model (its calibration run, on a stock pipeline), computed once."""
    if "mag" not in _RATIOS:
        hooks.apply_mag_cache(net, hooks.MagCacheConfig(calibrate=True, num_inference_steps=steps))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            sample(None)
        _remove_all(net)
        line = [v for v in printed.getvalue().splitlines() if v.startswith("[")][-1]
        _RATIOS["mag"] = [float(v) for v in line.strip("[]").split(",")]
    return _RATIOS["mag"]


def _remove_all(net) -> None:
    for sub in net.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        for name in list(getattr(registry, "_hook_order", ())):
            if name != "sada":
                registry.remove_hook(name, recurse=False)


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3) or argv[1] not in ORDERS:
        raise SystemExit(__doc__)
    from diffusers import hooks
    from diffusers.hooks.hooks import CacheContext, HookRegistry, _set_cache_context

    import sada.adapters.diffusers as sada_d
    from benchmarks.metrics import psnr
    from benchmarks.models import load_model

    model = load_model("mmdit")
    net = model.network
    seeds = list(range(int(argv[2]) if len(argv) == 3 else 4))
    labels = [s % 10 for s in seeds]
    lockstep = True if os.environ.get("LOCKSTEP") == "1" else None

    def sample(pipe):
        pipe = model.pipeline("flow_euler", shift=1.0) if pipe is None else pipe
        HookRegistry.check_if_exists_or_initialize(net).invalidate_child_registries_cache()
        _set_cache_context(net, CacheContext("cond"))
        try:
            return model.sample(pipe, labels, seeds, STEPS)
        finally:
            _set_cache_context(net, None)

    caches = _caches(net, hooks, STEPS)
    if argv[0] not in caches:
        raise SystemExit(f"CACHE must be one of {sorted(caches)}, got {argv[0]!r}")
    stock = sample(None)
    if argv[0] == "mag":
        _calibrate_mag(net, hooks, STEPS, sample)  # before SADA is enabled on the shared network
    pipe = model.pipeline("flow_euler", shift=1.0)
    rows = {"evals": 0, "blocks": 0}
    counters = [
        net.pos_embed.register_forward_pre_hook(lambda m, a: rows.__setitem__("evals", rows["evals"] + len(a[0])))
    ]
    counters += [
        b.norm1.register_forward_pre_hook(lambda m, a: rows.__setitem__("blocks", rows["blocks"] + len(a[0])))
        for b in net.transformer_blocks
    ]
    handle = None
    try:
        if argv[1] == "sada-first":
            handle = sada_d.enable(pipe, lockstep=lockstep)
        caches[argv[0]](pipe, sample)
        if argv[1] == "cache-first":
            handle = sada_d.enable(pipe, lockstep=lockstep)
        rows.update(evals=0, blocks=0)
        out = sample(pipe)
    except Exception as exc:  # a refusal (IncompatibleHookError) or the cache's own failure
        print(f"{argv[0]} {argv[1]}: {type(exc).__name__}: {exc}")
        return
    finally:
        for c in counters:
            c.remove()
    full = 2 * len(seeds) * STEPS
    print(
        f"{argv[0]} {argv[1]}: PSNR vs stock {psnr(out, stock):.2f} dB, evaluations {rows['evals'] / full:.2f}, "
        f"blocks {rows['blocks'] / (full * len(net.transformer_blocks)):.2f}"
        + (f" | {handle.summary()}" if handle is not None else "")
    )


if __name__ == "__main__":
    main(sys.argv[1:])
