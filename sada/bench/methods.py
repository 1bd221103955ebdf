"""The methods the benchmark compares, each a context manager applied to one pipeline.

Groups: ``main`` (baseline, SADA paper / corrected / + token pruning / error-controlled, skipping disabled),
``peer`` (the fewer-steps baseline at each SADA variant's evaluation count, AdaptiveDiffusion, diffusers' own cache hooks),
``ablation`` (where SADA's fidelity comes from) and ``pareto`` (each method's knob swept).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from sada.config import SADAConfig, early_multistep, preset, step_error_tolerance

__all__ = ["Method", "methods_for", "GROUPS"]

GROUPS = ("main", "peer", "ablation", "pareto")


@dataclass
class Method:
    """``apply(pipe)`` is a context manager; ``steps`` overrides the step count (None: the run's)."""

    name: str
    group: str
    kind: str  # baseline | sada | adaptive | fewer | diffusers-hook
    config: SADAConfig | None = None
    steps: int | None = None
    params: dict = field(default_factory=dict)
    curve: str | None = None  # Pareto curve this point belongs to
    timed: bool = False

    @contextlib.contextmanager
    def apply(self, pipe, model):
        import sada.adapters.diffusers as sada_diffusers

        if self.kind in ("baseline", "fewer"):
            yield None
        elif self.kind == "sada":
            with sada_diffusers.enabled(pipe, self.config) as handle:
                yield handle
        elif self.kind == "adaptive":
            from sada.torch_backend.peers import AdaptiveDiffusionEngine

            def factory(grid, kind):
                return AdaptiveDiffusionEngine(grid, kind, self.params["threshold"], self.params["max_skip_steps"])
            with sada_diffusers.enabled(pipe, engine_factory=factory) as handle:
                yield handle
        elif self.kind == "diffusers-hook":
            with _diffusers_cache_hook(pipe, model, self.params) as handle:
                yield handle
        else:  # pragma: no cover - guarded by methods_for
            raise ValueError(f"unknown method kind {self.kind!r}")


@contextlib.contextmanager
def _diffusers_cache_hook(pipe, model, params):
    """Apply one of diffusers' cache hooks to the denoiser for the duration of the block.

    The shipped classes do not mix in ``CacheMixin`` in this diffusers version, so the hook is applied with
    the public ``apply_*`` function and the cache context is set around the pipeline call.
    """
    import torch
    from diffusers import hooks
    from diffusers.hooks.hooks import CacheContext, HookRegistry, _set_cache_context

    module = getattr(pipe, model.denoiser_role)
    name = params["hook"]
    if name == "taylorseer":
        hooks.apply_taylorseer_cache(module, hooks.TaylorSeerCacheConfig(
            cache_interval=params["interval"], disable_cache_before_step=params["warmup"],
            taylor_factors_dtype=torch.float32))
    elif name == "first_block_cache":
        hooks.apply_first_block_cache(module, hooks.FirstBlockCacheConfig(threshold=params["threshold"]))
    else:
        raise ValueError(f"unknown diffusers hook {name!r}")
    _set_cache_context(module, CacheContext("cond"))
    try:
        yield None
    finally:
        _set_cache_context(module, None)
        for sub in module.modules():
            registry = getattr(sub, "_diffusers_hook", None)
            if registry is not None:
                for hook_name in list(registry._hook_order):
                    registry.remove_hook(hook_name, recurse=False)
        HookRegistry.check_if_exists_or_initialize(module).invalidate_child_registries_cache()


def _schedule(model_name: str, steps: int) -> SADAConfig:
    """The authors' step schedule for this step count (presets at 50/25/15, else rescaled)."""
    family = "flux" if model_name == "mmdit" else "sd2"
    if steps in (50, 25, 15):
        return preset(family, steps)
    return preset(family, 50).replace(num_steps=None).fit_steps(steps)


def methods_for(model, scheduler: str, steps: int, groups=GROUPS) -> list[Method]:
    """All methods for a model/scheduler/step count, in run order (baseline first)."""
    paper = _schedule(model.name, steps).replace(max_downsample=0, prune_blocks=())
    sada = paper.replace(mode="corrected", reduce="sample", name="sada")
    prune = dict(prune_blocks=(0, 1, 2, 3)) if model.name == "mmdit" else dict(max_downsample=1)
    early = early_multistep(sada, steps)
    tolerance = step_error_tolerance(steps)
    out = [
        Method("baseline", "main", "baseline", timed=True),
        Method("SADA, skipping disabled", "main", "sada", SADAConfig(max_interval=0), timed=True),
        Method("SADA paper", "main", "sada", paper, timed=True, curve="SADA paper"),
        Method("SADA", "main", "sada", sada, timed=True, curve="SADA"),
        Method("SADA + token pruning", "main", "sada", sada.replace(**prune), timed=True),
        Method("SADA error-controlled", "main", "sada", early.replace(error_tolerance=tolerance), timed=True,
               curve="SADA error-controlled"),
        Method("AdaptiveDiffusion", "peer", "adaptive", params=dict(threshold=0.01, max_skip_steps=4), timed=True,
               curve="AdaptiveDiffusion"),
    ]
    if model.name == "mmdit":
        out.append(Method("diffusers TaylorSeer", "peer", "diffusers-hook", timed=True, curve="TaylorSeer",
                          params=dict(hook="taylorseer", interval=3, warmup=steps // 5)))
        out.append(Method("diffusers FirstBlockCache", "peer", "diffusers-hook",
                          params=dict(hook="first_block_cache", threshold=0.05)))
    lag = sada.lagrange_step
    out += [
        Method("ablation: corrected criterion", "ablation", "sada", sada.replace(criterion="corrected")),
        Method("ablation: paper estimate (reduce per sample)", "ablation", "sada", paper.replace(reduce="sample")),
        Method("ablation: no AM skips", "ablation", "sada", sada.replace(acc_range=(lag, sada.acc_end))),
        Method("ablation: no multistep tail", "ablation", "sada", sada.replace(lagrange_term=0)),
        Method("ablation: multistep on step index", "ablation", "sada", sada.replace(lagrange_nodes="index")),
        Method("ablation: multistep on log-SNR", "ablation", "sada", sada.replace(lagrange_nodes="lambda")),
        Method(f"ablation: error-controlled schedule (multistep from {early.lagrange_step}), no error control",
               "ablation", "sada", early, curve="SADA"),
    ]
    if scheduler == "euler":
        out.append(Method("ablation: Euler multistep on x0/alpha (official)", "ablation", "sada",
                          sada.replace(lagrange_target="x0_over_alpha")))
    for k in sorted({max(6, round(steps * f)) for f in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)}):
        out.append(Method(f"fewer steps ({k})", "pareto", "fewer", steps=k, curve="fewer steps"))
    for interval in (2, 3):
        if lag % interval == 0:
            out.append(Method(f"SADA, multistep every {interval}", "pareto", "sada",
                              sada.replace(lagrange_int=interval), curve="SADA"))
    for start in range(early.lagrange_step + sada.lagrange_int, lag, sada.lagrange_int):
        out.append(Method(f"SADA, multistep from step {start}", "pareto", "sada", sada.replace(lagrange_step=start),
                          curve="SADA"))
    wide = dict(acc_range=(4, steps - 2))  # adaptive skips from step 4 up to the last-but-one step
    aggressive = [(f"SADA, multistep from step {early.lagrange_step}, skips in 4..{steps - 2}", early.replace(**wide))]
    every3 = early_multistep(sada.replace(lagrange_int=3, lagrange_step=3 * -(-lag // 3), **wide), steps)
    if steps <= 30 and every3 != aggressive[0][1]:  # short runs: nodes every 3 steps, as early as they allow
        aggressive.append((f"SADA, multistep every 3 from step {every3.lagrange_step}, skips in 4..{steps - 2}",
                           every3.replace(**wide)))
    for label, config in aggressive:
        out.append(Method(label, "pareto", "sada", config, curve="SADA"))
    for factor in (0.3, 3.0):
        out.append(Method(f"SADA error-controlled, tolerance {tolerance * factor:.3g}", "pareto", "sada",
                          early.replace(error_tolerance=tolerance * factor), curve="SADA error-controlled"))
    for threshold in (0.005, 0.02, 0.05):
        out.append(Method(f"AdaptiveDiffusion thr {threshold}", "pareto", "adaptive", curve="AdaptiveDiffusion",
                          params=dict(threshold=threshold, max_skip_steps=4)))
    return [m for m in out if m.group in groups]
