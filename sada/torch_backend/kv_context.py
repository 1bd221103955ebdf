"""Keys and values of stable tokens kept for the recomputed tokens' self-attention (context-keeping pruning).

The block runs, unchanged, on the kept tokens. While one of its self-attention modules runs, a
``torch.overrides.TorchFunctionMode`` (the mechanism diffusers' own layer-skip hook uses) intercepts the
single call to ``torch.nn.functional.scaled_dot_product_attention`` -- the point where the processor has
already projected, normed and rotated the queries, keys and values:

* on a refresh call the image tokens' keys and values are copied into a per-(block, attention) cache
  ``[rows, heads, tokens, head_dim]`` and attention runs as usual;
* on a pruned call the fresh keys and values of the kept tokens are scattered into the cache and the kept
  queries (plus the text queries of a joint block) attend over the full set: cached + fresh image keys and
  the fresh text keys, in the processor's own order.

Everything else -- projections, norms, rotary embeddings, the output projection -- is the module's own
code. A processor that does not reach this function (another attention backend, xformers, a custom
processor) is detected on the refresh call and reported, never silently mixed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from sada.torch_backend.pruning_blocks import BlockSpec, SelfAttention

__all__ = ["KVContext"]

_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


@dataclass
class _Entry:
    key: torch.Tensor  # [rows, heads, image tokens, head_dim] (any leading layout with tokens at dim -2)
    value: torch.Tensor
    text: int  # text positions joined to the image tokens in this attention


class _Tap(TorchFunctionMode):
    def __init__(self, handler):
        super().__init__()
        self.handler = handler

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            return self.handler(func, args, kwargs or {})
        return func(*args, **(kwargs or {}))


class KVContext:
    """Per-run K/V caches of the pruned blocks' self-attention, filled on refresh calls, used on pruned calls."""

    def __init__(self):
        self.caches: dict[tuple[str, str], _Entry] = {}

    def reset(self) -> None:
        self.caches.clear()

    def drop(self, key: str) -> None:
        for k in [k for k in self.caches if k[0] == key]:
            del self.caches[k]

    def nbytes(self) -> int:
        return sum(
            e.key.numel() * e.key.element_size() + e.value.numel() * e.value.element_size()
            for e in self.caches.values()
        )

    # ------------------------------------------------------------------ the two kinds of call
    @contextlib.contextmanager
    def record(self, key: str, block: torch.nn.Module, spec: BlockSpec, rows: torch.Tensor, total: int, tokens: int):
        """Run the block on all ``tokens`` of batch rows ``rows`` (of ``total``) and cache its self-attention K/V.

        Yields a list that holds, after the block ran, the reasons the K/V could not be captured (empty on
        success)."""
        problems: list[str] = []

        def handle(att: SelfAttention, func, kw):
            k, v = kw["key"], kw["value"]
            if kw.get("attn_mask") is not None or kw.get("is_causal"):
                problems.append(f"{att.attr} uses an attention mask")
                return func(**kw)
            text = k.shape[-2] - tokens
            if text < 0 or (att.layout == "image") != (text == 0) or k.shape[0] != rows.numel():
                problems.append(
                    f"{att.attr}'s keys {tuple(k.shape)} do not match {rows.numel()} rows x {tokens} "
                    f"image tokens ({att.layout})"
                )
                return func(**kw)
            image = slice(0, tokens) if att.layout == "image_text" else slice(text, text + tokens)
            entry = self.caches.get((key, att.attr))
            shape = (total,) + tuple(k.shape[1:-2]) + (tokens, k.shape[-1])
            if (
                entry is None
                or tuple(entry.key.shape) != shape
                or entry.key.dtype != k.dtype
                or entry.key.device != k.device
            ):
                entry = self.caches[(key, att.attr)] = _Entry(k.new_zeros(shape), v.new_zeros(shape), text)
            entry.text = text
            at = rows.to(k.device)
            entry.key.index_copy_(0, at, k[..., image, :].detach())
            entry.value.index_copy_(0, at, v[..., image, :].detach())
            return func(**kw)

        with self._tapped(block, spec, handle, problems):
            yield problems

    @contextlib.contextmanager
    def attend(self, key: str, block: torch.nn.Module, spec: BlockSpec, rows: torch.Tensor, idx: torch.Tensor):
        """Run the block on the kept tokens ``idx`` ``[P, K]`` of batch rows ``rows``; their self-attention
        queries attend over the cached K/V updated with their own fresh K/V."""
        kept = idx.shape[1]

        def handle(att: SelfAttention, func, kw):
            entry = self.caches.get((key, att.attr))
            if entry is None:
                raise RuntimeError(
                    f"sada: block {key} ({spec.name}.{att.attr}) has no cached keys/values: "
                    "a pruned call must follow a refresh"
                )
            if kw.get("attn_mask") is not None or kw.get("is_causal"):
                raise RuntimeError(
                    f"sada: {spec.name}.{att.attr} got an attention mask on a pruned call; "
                    "context-keeping pruning supports unmasked self-attention only"
                )
            k, v = kw["key"], kw["value"]
            text = k.shape[-2] - kept
            if text != entry.text or k.shape[0] != idx.shape[0]:
                raise RuntimeError(
                    f"sada: {spec.name}.{att.attr} keys {tuple(k.shape)} do not match {idx.shape[0]} "
                    f"rows x {kept} kept tokens + {entry.text} text tokens"
                )
            image = slice(0, kept) if att.layout == "image_text" else slice(text, text + kept)
            at = rows.to(k.device)
            full_k = _merge(entry.key, at, idx, k, image, att.layout, text)
            full_v = _merge(entry.value, at, idx, v, image, att.layout, text)
            return func(**{**kw, "key": full_k, "value": full_v})

        problems: list[str] = []
        with self._tapped(block, spec, handle, problems):
            yield
        if problems:
            raise RuntimeError(f"sada: pruned call of block {key} ({spec.name}): " + "; ".join(problems))

    # ------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def _tapped(self, block, spec: BlockSpec, handle, problems: list):
        """Install the SDPA tap around each self-attention module's forward for the duration of the block call."""
        state: dict[str, Any] = {"att": None, "calls": 0, "tap": None}
        seen: dict[str, int] = {}

        def on_sdpa(func, args, kwargs):
            kw = dict(zip(_SDPA_ARGS, args))
            kw.update(kwargs)
            state["calls"] += 1
            if state["calls"] > 1:
                problems.append(f"{state['att'].attr} calls scaled_dot_product_attention more than once")
                return func(**kw)
            return handle(state["att"], func, kw)

        def pre(att):
            def hook(module, args):
                state["att"], state["calls"] = att, 0
                state["tap"] = _Tap(on_sdpa)
                state["tap"].__enter__()

            return hook

        def post(module, args, output):
            tap, state["tap"] = state["tap"], None
            if tap is not None:
                tap.__exit__(None, None, None)
            seen[state["att"].attr] = state["calls"]

        handles, present = [], []
        for att in spec.attentions:
            module = getattr(block, att.attr, None)
            if isinstance(module, torch.nn.Module):
                present.append(att)
                handles.append(module.register_forward_pre_hook(pre(att)))
                handles.append(module.register_forward_hook(post))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            if state["tap"] is not None:  # the attention raised: leave the mode stack as we found it
                state["tap"].__exit__(None, None, None)
        for att in present:
            calls = seen.get(att.attr, 0)
            if calls != 1:
                processor = type(getattr(getattr(block, att.attr), "processor", None)).__name__
                problems.append(
                    f"{att.attr} made {calls} calls to torch scaled_dot_product_attention (processor "
                    f"{processor}); context-keeping pruning needs the native SDPA path"
                )


def _merge(
    cache: torch.Tensor,
    rows: torch.Tensor,
    idx: torch.Tensor,
    fresh: torch.Tensor,
    image: slice,
    layout: str,
    text: int,
) -> torch.Tensor:
    """Full key (or value) tensor for the pruned rows: cached image entries with the kept tokens' fresh ones
    scattered in (and written back to the cache), joined with the fresh text entries in the layout's order."""
    part = fresh[..., image, :]
    full = cache.index_select(0, rows)
    shape = [idx.shape[0]] + [1] * (part.ndim - 3) + [idx.shape[1], 1]
    full.scatter_(-2, idx.to(part.device).reshape(shape).expand_as(part), part.to(full.dtype))
    cache.index_copy_(0, rows, full.detach())
    full = full.to(fresh.dtype)
    if text == 0:
        return full
    if layout == "image_text":
        return torch.cat([full, fresh[..., image.stop :, :]], dim=-2)
    return torch.cat([fresh[..., : image.start, :], full], dim=-2)
