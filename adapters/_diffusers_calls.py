"""Reading a denoiser call of a diffusers pipeline: its batch size, its timestep, and its arguments sliced to rows.

Used by the hooks (:mod:`sada.adapters._diffusers_hooks`); nothing here holds state.
"""

from __future__ import annotations

import inspect

import torch

from sada.torch_backend.rows import slice_rows

__all__ = ["UNBATCHED_ARGUMENTS", "forward_params", "timestep_of", "batch_of", "slice_call"]

# keyword arguments that never carry the batch (tables shared by all rows), whatever their first dimension
UNBATCHED_ARGUMENTS = frozenset(
    {"image_rotary_emb", "rotary_emb", "freqs_cis", "img_ids", "txt_ids", "rotary_embedding", "position_ids"}
)
_NAMED = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def forward_params(module) -> tuple[str, ...]:
    """The positional parameter names of ``module``'s forward. A forward replaced by a pass-through wrapper
    (``lambda *args, **kwargs: original(*args, **kwargs)``, as profilers, LoRA loaders and quantisation wrappers
    install) names none: the class's own ``forward`` is read instead. ``torch.compile(module)``: the inner module."""
    inner = getattr(module, "_orig_mod", module)
    names = []
    for forward in (inner.forward, type(inner).forward):
        try:
            params = inspect.signature(forward).parameters.values()
        except (TypeError, ValueError):  # a builtin or a C callable without a signature
            continue
        names = [p.name for p in params if p.kind in _NAMED and p.name != "self"]
        if names:
            break
    return tuple(names)


def timestep_of(params: tuple[str, ...], args: tuple, kwargs: dict) -> float | None:
    """The call's timestep (first element), from ``timestep=`` or its position in ``params``; ``None`` if absent."""
    t = kwargs.get("timestep")
    if t is None and "timestep" in params and params.index("timestep") < len(args):
        t = args[params.index("timestep")]
    if t is None:
        return None
    t = torch.as_tensor(t)
    return float(t.flatten()[0]) if t.numel() else None


def batch_of(args: tuple, kwargs: dict) -> int | None:
    """The call's batch size: the leading dimension of its first tensor argument."""
    first = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim else None


def slice_call(args: tuple, kwargs: dict, idx: torch.Tensor, rows: int) -> tuple[tuple, dict]:
    """The call's arguments reduced to rows ``idx`` of ``rows`` (shared tables kept whole)."""
    kept = {k: v for k, v in kwargs.items() if k in UNBATCHED_ARGUMENTS}
    sliced = slice_rows({k: v for k, v in kwargs.items() if k not in UNBATCHED_ARGUMENTS}, idx, rows)
    return slice_rows(args, idx, rows), {**sliced, **kept}
