"""Recognising ``torch.compile``d networks, and the lockstep rule SADA applies to them.

A compiled network is specialised to its input shapes. Per-sample decisions send it partial batches whose row
count changes from step to step; each new count is a guard failure (a recompilation, or with dynamo's automatic
dynamic shapes one more dynamic-shape graph, and with ``mode="reduce-overhead"`` one more CUDA graph per count).
SADA therefore decides in *lockstep* for a compiled network: every row of the batch computes or every row skips,
so the network always sees the full batch (:class:`sada.torch_backend.engine.SADAEngine` ``lockstep=True``).
"""

from __future__ import annotations

__all__ = ["is_compiled", "resolve_lockstep", "LOCKSTEP_NOTE"]

LOCKSTEP_NOTE = (
    "the denoiser is torch.compile'd: batch-level decisions (every row computes or every row skips, "
    "so the compiled network always sees the full batch)"
)


def is_compiled(network) -> bool:
    """Whether ``network`` is a ``torch.compile``d module or function (``torch.compile(module)``: an
    ``OptimizedModule`` holding ``_orig_mod``; ``module.compile()``: a compiled ``_call_impl``;
    ``torch.compile(fn)``: a function carrying ``_torchdynamo_orig_callable``), or a wrapper (k-diffusion's
    ``inner_model``, one level) around one."""
    if network is None:
        return False
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover - torch without dynamo
        OptimizedModule = ()  # type: ignore[misc, assignment]
    for candidate in (network, getattr(network, "inner_model", None)):
        if candidate is None:
            continue
        if (OptimizedModule and isinstance(candidate, OptimizedModule)) or hasattr(candidate, "_orig_mod"):
            return True
        if getattr(candidate, "_compiled_call_impl", None) is not None:
            return True
        if getattr(candidate, "_torchdynamo_orig_callable", None) is not None:
            return True
    return False


def resolve_lockstep(lockstep, network) -> bool:
    """The lockstep setting of a run: ``lockstep`` when it is ``True`` / ``False``; ``None`` means automatic
    (on exactly when ``network`` is compiled)."""
    if lockstep is None:
        return is_compiled(network)
    if not isinstance(lockstep, bool):
        raise TypeError(f"lockstep must be True, False or None (automatic), got {lockstep!r}")
    return lockstep
