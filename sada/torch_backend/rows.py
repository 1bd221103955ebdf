"""Run a module on a subset of batch rows and scatter the result back (nested inputs and outputs).

When only some samples of a batch must run the network, every tensor argument whose leading dimension is
the batch is sliced to those rows, the module runs on the dense sub-batch, and every tensor of its
output is scattered into a zero-filled full-batch tensor. Tuples, lists, dicts and diffusers'
``BaseOutput`` containers are traversed.
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["map_tensors", "slice_rows", "scatter_rows", "zeros_like_rows"]


def map_tensors(obj, fn):
    """Apply ``fn`` to every tensor inside ``obj`` (tuples, lists, dicts, dataclass-like outputs)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        mapped = {k: map_tensors(v, fn) for k, v in obj.items()}
        try:
            return type(obj)(**mapped) if type(obj) is not dict else mapped
        except TypeError:
            return mapped
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(map_tensors(v, fn) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)}
        )
    return obj


def slice_rows(obj, rows: torch.Tensor, batch: int):
    """``obj`` with every tensor of leading dimension ``batch`` reduced to ``rows``."""
    return map_tensors(obj, lambda t: t.index_select(0, rows.to(t.device)) if t.ndim and t.shape[0] == batch else t)


def scatter_rows(partial, rows: torch.Tensor, batch: int):
    """Full-batch copy of a sub-batch output: computed rows in place, zeros elsewhere."""
    n = rows.numel()

    def expand(t):
        if not t.ndim or t.shape[0] != n:
            return t
        full = torch.zeros((batch,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
        return full.index_copy(0, rows.to(t.device), t)

    return map_tensors(partial, expand)


def zeros_like_rows(template, batch: int):
    """A zero output shaped like ``template`` (a previous output of the module) for ``batch`` rows."""
    return map_tensors(
        template,
        lambda t: (
            torch.zeros((batch,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
            if t.ndim
            else torch.zeros_like(t)
        ),
    )
