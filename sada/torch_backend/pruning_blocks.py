"""What token pruning must know about each supported diffusers transformer block, stated explicitly.

For every block class: where its image stream is in the output, which of its attention modules are
self-attention over the image tokens (and whether the text stream joins that attention, before or after
the image tokens), which inputs carry one entry per image token (rotary tables, per-token timestep
embeddings) and must be gathered with the kept tokens, and whether the kept token set must be the same
for every row of a call (positional tables without a batch axis).

Nothing here runs diffusers code; :func:`context_unsupported` inspects a block instance for structures the
context-keeping path cannot handle (the pruner then falls back to whole-block pruning, with a warning).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

__all__ = [
    "BlockSpec",
    "SelfAttention",
    "TokenInput",
    "BLOCK_SPECS",
    "block_spec",
    "context_unsupported",
    "image_output",
    "replace_image_output",
    "bind_inputs",
    "gather_token_inputs",
]

LAYOUTS = ("image", "image_text", "text_image")


@dataclass(frozen=True)
class SelfAttention:
    """An attention submodule whose keys are the block's image tokens (``layout``: ``"image"`` alone, or
    ``"image_text"`` / ``"text_image"``: joined with the text tokens in that order)."""

    attr: str
    layout: str


@dataclass(frozen=True)
class TokenInput:
    """A forward argument with one entry per image token along ``axis`` (tensor or tuple of tensors).

    ``batched``: the tensor has a leading batch axis (size = rows, or 1 = shared): gathered per row.
    Otherwise it has no batch axis and needs one token set for the whole call. ``text_first``: the
    axis holds the text positions first, then the image tokens. ``ndim``: only tensors of this rank
    are per-token (e.g. Wan's timestep embedding is per-token only as a 4-D tensor). A length of 1
    along ``axis`` broadcasts and is left alone."""

    name: str
    axis: int
    batched: bool
    text_first: bool = False
    ndim: int | None = None


@dataclass(frozen=True)
class BlockSpec:
    name: str
    image_output: int | None  # index of the image stream in the returned tuple; None: the block returns a tensor
    attentions: tuple[SelfAttention, ...]
    token_inputs: tuple[TokenInput, ...] = ()

    @property
    def shared_tokens(self) -> bool:
        """One token set per call: some per-token input has no batch axis."""
        return any(not t.batched for t in self.token_inputs)


_FLUX_ROPE = TokenInput("image_rotary_emb", axis=0, batched=False, text_first=True)
BLOCK_SPECS = {
    spec.name: spec
    for spec in (
        BlockSpec("BasicTransformerBlock", None, (SelfAttention("attn1", "image"),)),
        BlockSpec("JointTransformerBlock", 1, (SelfAttention("attn", "image_text"), SelfAttention("attn2", "image"))),
        BlockSpec("FluxTransformerBlock", 1, (SelfAttention("attn", "text_image"),), (_FLUX_ROPE,)),
        BlockSpec("FluxSingleTransformerBlock", 1, (SelfAttention("attn", "text_image"),), (_FLUX_ROPE,)),
        BlockSpec(
            "CogVideoXBlock",
            0,
            (SelfAttention("attn1", "text_image"),),
            (TokenInput("image_rotary_emb", axis=0, batched=False),),
        ),
        BlockSpec(
            "WanTransformerBlock",
            None,
            (SelfAttention("attn1", "image"),),
            (TokenInput("rotary_emb", axis=1, batched=True), TokenInput("temb", axis=1, batched=True, ndim=4)),
        ),
        BlockSpec(
            "LTXVideoTransformerBlock",
            None,
            (SelfAttention("attn1", "image"),),
            (TokenInput("image_rotary_emb", axis=1, batched=True), TokenInput("temb", axis=1, batched=True)),
        ),
    )
}


def block_spec(block) -> BlockSpec:
    """The spec of a block instance or class name; ``ValueError`` naming the supported ones otherwise."""
    name = block if isinstance(block, str) else type(block).__name__
    if name not in BLOCK_SPECS:
        raise ValueError(f"sada: {name!r} is not a prunable block; supported: {sorted(BLOCK_SPECS)}")
    return BLOCK_SPECS[name]


def context_unsupported(block: torch.nn.Module, spec: BlockSpec) -> str | None:
    """Why the context-keeping path cannot run ``block`` (``None`` when it can)."""
    if getattr(block, "only_cross_attention", False):
        return "its first attention is cross-attention (only_cross_attention=True)"
    if getattr(block, "fuser", None) is not None:
        return "it has a GLIGEN gated self-attention (fuser) over the visual tokens"
    if not any(isinstance(getattr(block, a.attr, None), torch.nn.Module) for a in spec.attentions):
        return f"it has none of the attention modules {[a.attr for a in spec.attentions]}"
    return None


def position_dependent(block: torch.nn.Module) -> str | None:
    """Why ``block`` cannot be pruned at all (it adds positions by sequence index), or ``None``."""
    if getattr(block, "pos_embed", None) is not None:
        return "it adds sinusoidal positions by sequence index (pos_embed), which gathering tokens would shift"
    return None


def image_output(spec: BlockSpec, out):
    """The image-token stream of a block output, by the block's declared output structure."""
    if spec.image_output is None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"sada: {spec.name} should return a tensor, got {type(out).__name__}")
        return out
    if (
        not isinstance(out, tuple)
        or len(out) <= spec.image_output
        or not isinstance(out[spec.image_output], torch.Tensor)
    ):
        raise TypeError(
            f"sada: {spec.name} should return a tuple with the image stream at index "
            f"{spec.image_output}, got {type(out).__name__}"
        )
    return out[spec.image_output]


def replace_image_output(spec: BlockSpec, out, image: torch.Tensor):
    if spec.image_output is None:
        return image
    i = spec.image_output
    return tuple(out[:i]) + (image,) + tuple(out[i + 1 :])


_SIGNATURES: dict[type, inspect.Signature] = {}


def bind_inputs(block: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """``block.forward``'s arguments as one name -> value dict (positional ones named)."""
    cls = type(block)
    if cls not in _SIGNATURES:
        _SIGNATURES[cls] = inspect.signature(cls.forward)
    try:
        bound = _SIGNATURES[cls].bind(block, *args, **kwargs).arguments
    except TypeError as exc:
        raise TypeError(f"sada: arguments do not match {cls.__name__}.forward: {exc}") from None
    bound.pop(next(iter(bound)))  # self
    out = {}
    for name, value in bound.items():
        kind = _SIGNATURES[cls].parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise TypeError(f"sada: {cls.__name__}.forward got extra positional arguments")
        else:
            out[name] = value
    return out


def gather_token_inputs(spec: BlockSpec, inputs: dict, idx: torch.Tensor, tokens: int) -> dict:
    """``inputs`` with every per-token input reduced to the kept tokens ``idx`` ``[rows, K]``."""
    out = dict(inputs)
    for entry in spec.token_inputs:
        value = inputs.get(entry.name)
        if value is None:
            continue
        if isinstance(value, (tuple, list)):
            out[entry.name] = type(value)(_gather_one(entry, t, idx, tokens) for t in value)
        else:
            out[entry.name] = _gather_one(entry, value, idx, tokens)
    return out


def _gather_one(entry: TokenInput, t: torch.Tensor, idx: torch.Tensor, tokens: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or (entry.ndim is not None and t.ndim != entry.ndim):
        return t
    axis = entry.axis
    length = t.shape[axis] if t.ndim > axis else 0
    if length == 1:
        return t
    text = length - tokens if entry.text_first else 0
    if text < 0 or (not entry.text_first and length != tokens):
        raise ValueError(
            f"sada: {entry.name} has {length} positions along axis {axis}, the block has {tokens} image tokens"
        )
    idx = idx.to(t.device)
    if not entry.batched:
        if idx.shape[0] > 1 and not bool((idx == idx[:1]).all()):
            raise ValueError(f"sada: {entry.name} has no batch axis: every row must keep the same tokens")
        pick = torch.cat([torch.arange(text, device=t.device), idx[0] + text])
        return t.index_select(axis, pick)
    rows = idx.shape[0]
    if t.shape[0] not in (1, rows):
        raise ValueError(f"sada: {entry.name} has batch {t.shape[0]}, the pruned call has {rows} rows")
    t = t.expand((rows,) + tuple(t.shape[1:]))
    pick = torch.cat([torch.arange(text, device=t.device).expand(rows, -1), idx + text], dim=1)
    shape = [rows] + [1] * (t.ndim - 1)
    shape[axis] = pick.shape[1]
    full = list(t.shape)
    full[axis] = pick.shape[1]
    return torch.gather(t, axis, pick.reshape(shape).expand(full))
