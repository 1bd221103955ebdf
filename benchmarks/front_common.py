"""What the two fronts (:mod:`benchmarks.front` on the MMDiT, :mod:`benchmarks.front_unet` on the U-Net) share: a
point of the front, the contexts that switch a method on (SADA, AdaptiveDiffusion, a diffusers cache hook) and the
attention FLOPs torch's counter cannot see."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

ADAPTIVE_THRESHOLDS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)  # AdaptiveDiffusion's knob, swept (max_skip_steps 4)
ADAPTIVE_MAX_SKIP = 4


class Method(NamedTuple):
    """One point of the front: ``apply(pipe, net)`` a context manager (``None``: the plain sampler), run with
    ``sampler`` at ``steps`` steps (``None``: the front's full step count)."""

    name: str
    knob: float | None
    apply: object
    sampler: str = "flow_euler"
    steps: int | None = None


def sada_context(config):
    """SADA with ``config`` on the pipeline (``sada.adapters.diffusers.enabled``); yields the handle."""

    @contextlib.contextmanager
    def ctx(pipe, net):
        import sada.adapters.diffusers as sada_d

        with sada_d.enabled(pipe, config) as handle:
            yield handle

    return ctx


def adaptive_context(threshold: float, max_skip_steps: int = ADAPTIVE_MAX_SKIP):
    """AdaptiveDiffusion (Ye et al., NeurIPS 2024: skip while the third-order difference of the model output stays
    under ``threshold`` times its last change, at most ``max_skip_steps`` in a row), as ``sada.torch_backend.peers``
    implements it, on the pipeline's scheduler; yields the handle."""

    @contextlib.contextmanager
    def ctx(pipe, net):
        import sada.adapters.diffusers as sada_d
        from sada.torch_backend.peers import AdaptiveDiffusionEngine

        def factory(grid, kind):
            return AdaptiveDiffusionEngine(grid, kind, threshold, max_skip_steps)

        with sada_d.enabled(pipe, engine_factory=factory) as handle:
            yield handle

    return ctx


def adaptive_methods(sampler: str, steps: int | None = None) -> list[Method]:
    """AdaptiveDiffusion swept over its threshold on ``sampler``."""
    return [
        Method(f"AdaptiveDiffusion, threshold {t:g}", t, adaptive_context(t), sampler, steps)
        for t in ADAPTIVE_THRESHOLDS
    ]


def diffusers_hook(apply_fn):
    """A diffusers cache hook applied with its public ``apply_*`` function (``apply_fn(net, pipe)``), run inside a
    ``cache_context("cond")`` (the shipped pipelines set none) and removed afterwards."""

    @contextlib.contextmanager
    def ctx(pipe, net):
        from diffusers.hooks.hooks import CacheContext, HookRegistry, _set_cache_context

        apply_fn(net, pipe)
        HookRegistry.check_if_exists_or_initialize(net).invalidate_child_registries_cache()
        _set_cache_context(net, CacheContext("cond"))
        try:
            yield None
        finally:
            _set_cache_context(net, None)
            remove_hooks(net)

    return ctx


def _current_timestep(pipe):
    return lambda: pipe.scheduler.timesteps[pipe.scheduler.step_index or 0]


def apply_pab(net, pipe, skip: int) -> None:
    """diffusers' PyramidAttentionBroadcast with its documented settings: spatial attention reused for ``skip``
    blocks' calls inside the timestep range (100, 800)."""
    from diffusers import hooks

    hooks.apply_pyramid_attention_broadcast(
        net,
        hooks.PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=skip,
            spatial_attention_timestep_skip_range=(100, 800),
            current_timestep_callback=_current_timestep(pipe),
        ),
    )


def apply_faster_cache(net, pipe, skip: int) -> None:
    """diffusers' FasterCache with its documented settings (attention weight 0.3, ``BCHW`` tensors)."""
    from diffusers import hooks

    hooks.apply_faster_cache(
        net,
        hooks.FasterCacheConfig(
            spatial_attention_block_skip_range=skip,
            current_timestep_callback=_current_timestep(pipe),
            attention_weight_callback=lambda _: 0.3,
            tensor_format="BCHW",
        ),
    )


def remove_hooks(net) -> None:
    """Every diffusers hook on ``net`` and its submodules."""
    for sub in net.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        for name in list(getattr(registry, "_hook_order", ())):
            registry.remove_hook(name, recurse=False)


class AttentionFlops:
    """The FLOPs of every ``scaled_dot_product_attention`` call while active (``4 L_q L_k d`` per head and row: the
    two matrix products), for a fused CPU kernel torch's FLOP counter does not count."""

    def __init__(self):
        self.flops = 0

    @contextlib.contextmanager
    def counting(self):
        import torch.nn.functional as F

        original = F.scaled_dot_product_attention

        def recorded(q, k, v, *args, **kwargs):
            self.flops += 4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
            return original(q, k, v, *args, **kwargs)

        F.scaled_dot_product_attention = recorded
        try:
            yield self
        finally:
            F.scaled_dot_product_attention = original


def counter_sees_attention(flop_counts: dict) -> bool:
    """Whether torch's FLOP counter (``FlopCounterMode.get_flop_counts()``) counted an attention op itself."""
    return any("attention" in str(op) or "bmm" in str(op) for ops in flop_counts.values() for op in ops)
