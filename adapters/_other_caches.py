"""Other caches and wrappers on the denoiser SADA hooks: which compose with SADA, which are refused, and why.

SADA's hook on the denoiser skips whole calls (no row computes) and runs the network on *partial batches* (the
rows of the samples that compute at this step). A cache that keeps state from one denoiser call to the next sees
fewer calls than sampling steps and, per sample, batches whose rows change from call to call. Decided per hook
from measurement (docs/howto-diffusers.md, "Combining with other caches"):

* composable: hooks that keep no state between calls -- group offloading (outputs bit-identical with and without
  it) and layerwise casting;
* composable with ``lockstep=True`` only: FirstBlockCache and cache-dit's DBCache compare a call's first-block
  residual with the previous call's and reuse that call's tail residuals, which is right when every call holds the
  same rows (batch-level decisions), and mixes samples when SADA passes partial batches;
* refused: caches that count denoiser calls as sampling steps or key their state on the call (MagCache,
  FasterCache, PyramidAttentionBroadcast, TaylorSeer, SeaCache, text K/V cache), context parallelism, and every
  hook this module does not know.

:func:`check_at_enable` runs in ``enable`` (after SADA's hooks are attached, so a refusal undoes them), and
:func:`check_at_run` at the first scheduler step of every pipeline call (a cache enabled after SADA). Both raise
:class:`sada.errors.IncompatibleHookError` naming the hook and what to do.
"""

from __future__ import annotations

import functools

import torch

from sada.errors import IncompatibleHookError
from sada.torch_backend.compiled import is_compiled

__all__ = [
    "COMPOSABLE",
    "LOCKSTEP_ONLY",
    "REFUSED",
    "BindableForward",
    "check_at_enable",
    "check_at_run",
    "find_other_caches",
]

SADA_HOOK = "sada"
NETWORKS = ("unet", "transformer", "transformer_2", "controlnet")  # the modules SADA hooks (as the controller's)

# diffusers hook names that keep no state between denoiser calls
COMPOSABLE = {
    "group_offloading": "group offloading",
    "layer_execution_tracker": "group offloading",
    "lazy_prefetch_group_offloading": "group offloading",
    "layerwise_casting": "layerwise casting",
    "peft_autocast_disable": "layerwise casting",
}
_RESIDUAL_REASON = (
    "compares each call's first-block residual with the previous call's and reuses that call's "
    "tail residuals; with per-sample decisions SADA passes partial batches whose rows change from "
    "call to call, so it would mix samples"
)
LOCKSTEP_ONLY = {
    "fbc_leader_block_hook": "FirstBlockCache",
    "fbc_block_hook": "FirstBlockCache",
    "cache-dit": "cache-dit (DBCache)",
}
_COUNTS_CALLS = "counts denoiser calls as sampling steps, and the steps SADA skips make no call"
REFUSED = {
    "mag_cache": (
        "MagCache",
        f"{_COUNTS_CALLS} (its step index and magnitude ratios drift) and it reuses the "
        "previous call's residuals (measured on the shipped MMDiT: 43.8 dB from the stock run alone, "
        "39.6 dB with SADA)",
    ),
    "faster_cache": (
        "FasterCache",
        "splits every call's batch into unconditional and conditional halves and "
        "reuses earlier calls' attention, which SADA's partial batches and skipped calls break "
        "(an AssertionError or a size mismatch inside FasterCache)",
    ),
    "pyramid_attention_broadcast": (
        "PyramidAttentionBroadcast",
        f"{_COUNTS_CALLS} to decide which attention outputs to reuse (measured: 52.8 dB alone, 45.8 dB with SADA)",
    ),
    "taylorseer_cache": (
        "TaylorSeer",
        f"{_COUNTS_CALLS} and extrapolates block outputs along that count (measured: 51.4 dB alone, 42.9 dB with SADA)",
    ),
    "sea_cache": (
        "SeaCache",
        "reuses the previous call's residuals by step index, which SADA's skipped steps and "
        "partial batches desynchronise",
    ),
    "text_kv_cache": (
        "the text K/V cache",
        "keys its cache on the address of encoder_hidden_states; SADA's "
        "row-sliced copies are new tensors whose address can come back holding other rows",
    ),
    "cp_": ("context parallelism", "has not been verified with SADA's partial batches"),
}
_PREFIXES = {
    "mag_cache_": "mag_cache",
    "faster_cache_": "faster_cache",
    "sea_cache_": "sea_cache",
    "text_kv_cache_": "text_kv_cache",
    "cp_input---": "cp_",
    "cp_output---": "cp_",
}


def find_other_caches(module) -> list[tuple[str, str]]:
    """``(hook name, where)`` of every diffusers hook under ``module`` other than SADA's own, and ``("cache-dit",
    where)`` when cache-dit's adapter is applied to it (its ``_original_forward`` / ``_context_manager``)."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    found = []
    for path, sub in module.named_modules():
        registry = getattr(sub, "_diffusers_hook", None)
        for name in getattr(registry, "_hook_order", ()):
            if name != SADA_HOOK:
                found.append((name, path or type(module).__name__))
        if hasattr(sub, "_original_forward") and hasattr(sub, "_context_manager"):
            # SADA's forward outermost (cache-dit enabled first), or cache-dit's wrapped around it (enabled after)
            outer = sub is module and not isinstance(sub.__dict__.get("forward"), BindableForward)
            found.append(("cache-dit-after" if outer else "cache-dit", path or type(module).__name__))
    return found


def _family(name: str) -> str:
    return next((family for prefix, family in _PREFIXES.items() if name.startswith(prefix)), name)


def _refusal(role: str, name: str, where: str, lockstep: bool) -> str | None:
    """The message refusing hook ``name`` on the denoiser ``role``, or ``None`` when it composes with SADA."""
    if name in COMPOSABLE:
        return None
    if name == "cache-dit-after":
        return (
            f"sada: cache-dit was enabled on the {role} ({where}) after SADA: it replaces the forward that "
            "carries SADA's hook (for some models with its own patched copy, so SADA's hook is bypassed) and its "
            "disable_cache restores the forward it saved. Call cache_dit.disable_cache(pipe) and "
            "sada.adapters.diffusers.disable(pipe), then enable cache-dit first and SADA second, with "
            "lockstep=True"
        )
    remove = (
        "remove it (cache_dit.disable_cache(pipe))"
        if name == "cache-dit"
        else f"remove it ({role}.disable_cache() for a model with diffusers' CacheMixin, or "
        f"HookRegistry.check_if_exists_or_initialize({role}).remove_hook({name!r}, recurse=True))"
    )
    if name in LOCKSTEP_ONLY:
        if lockstep:
            return None
        return (
            f"sada: {LOCKSTEP_ONLY[name]} is on the {role} ({where}): it {_RESIDUAL_REASON}. Enable SADA with "
            f"lockstep=True (batch-level decisions: every call holds every row) to combine them, or {remove}"
        )
    family = _family(name)
    if family in REFUSED:
        label, reason = REFUSED[family]
        return (
            f"sada: {label} (hook {name!r} on the {role}, at {where}) does not compose with SADA: it {reason}. "
            f"Use one of the two: {remove} and keep SADA, or disable SADA"
        )
    return (
        f"sada: the {role} carries the diffusers hook {name!r} (at {where}), which sada does not know to compose "
        f"with its skipped calls and partial batches; {remove} before the pipeline call, or disable SADA. Hooks "
        f"known to compose: {sorted(set(COMPOSABLE.values()))}; with lockstep=True also "
        f"{sorted(set(LOCKSTEP_ONLY.values()))}"
    )


def _check(modules, lockstep: bool) -> None:
    for role, module in modules:
        for name, where in find_other_caches(module):
            message = _refusal(role, name, where, lockstep)
            if message is not None:
                raise IncompatibleHookError(message)


class BindableForward:
    """The ``forward`` diffusers' hook registry installs on the denoiser (a ``functools.partial``), made bindable:
    tools that save ``module.forward`` and later restore it with ``saved.__get__(module)`` (cache-dit's
    ``disable_cache``) get SADA's hooked forward back instead of an ``AttributeError``."""

    def __init__(self, forward):
        if not callable(forward):
            raise TypeError(f"forward must be callable, got {forward!r}")
        self.forward = forward
        functools.update_wrapper(self, forward)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def __get__(self, instance, owner=None):
        return self


def check_at_enable(modules, lockstep: bool | None) -> None:
    """In ``enable``, after SADA's hooks are attached: make each module's hooked ``forward`` bindable
    (:class:`BindableForward`), then refuse other caches on ``modules`` (``(role, module)`` pairs) that do not
    compose (``enable`` then detaches SADA again).
    ``lockstep``: the ``enable`` argument (``None``: on when a module is compiled)."""
    if lockstep is not None and not isinstance(lockstep, bool):
        raise TypeError(f"lockstep must be True, False or None (automatic), got {lockstep!r}")
    modules = list(modules)
    for _, module in modules:
        forward = module.__dict__.get("forward")
        if isinstance(forward, functools.partial) and hasattr(module, "_diffusers_hook"):
            module.forward = BindableForward(forward)
    on = lockstep if lockstep is not None else any(is_compiled(m) for _, m in modules)
    _check(modules, on)


def check_at_run(controller) -> None:
    """At the first scheduler step of a pipeline call: refuse a cache enabled on the denoiser after SADA."""
    pipe = getattr(controller, "pipe", None)
    if pipe is None:
        raise TypeError(f"controller must be a diffusers adapter Controller, got {type(controller).__name__}")
    modules = [
        (name, getattr(pipe, name)) for name in NETWORKS if isinstance(getattr(pipe, name, None), torch.nn.Module)
    ]
    lockstep = controller.lockstep
    on = lockstep if lockstep is not None else any(is_compiled(m) for _, m in modules)
    _check(modules, on)
