"""The token map of section 3.5 on a denoiser's token grid: the unstable fraction pooled to a block's token count
and the always-computed anchor tokens (one random token per window), used by :class:`~sada.torch_backend.pruning.TokenPruner`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["anchor_mask", "pool_token_map"]


def anchor_mask(shape: tuple[int, ...], stride: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """One random anchor per full ``stride`` window of a ``(h, w)`` grid, of every frame of a ``(f, h, w)``
    grid, or of a 1-D token sequence; tokens of incomplete border windows are never anchors. Returns a flat
    boolean mask."""
    if len(stride) != 2 or min(stride) < 1:
        raise ValueError(f"stride must be a pair of positive ints, got {stride!r}")
    if not 1 <= len(shape) <= 3 or min(shape) < 1:
        raise ValueError(f"shape must be (tokens,), (h, w) or (frames, h, w) of positive sizes, got {shape!r}")
    sy, sx = stride
    if len(shape) == 3:
        return torch.cat([anchor_mask(tuple(shape[1:]), stride, generator) for _ in range(shape[0])])
    if len(shape) == 1:
        n, win = shape[0], sy * sx
        full = n // win
        mask = torch.zeros(n, dtype=torch.bool)
        offsets = torch.randint(0, win, (full,), generator=generator)
        mask[torch.arange(full) * win + offsets] = True
        return mask
    h, w = shape
    gh, gw = h // sy, w // sx
    mask = torch.zeros(h, w, dtype=torch.bool)
    pick = torch.randint(0, sy * sx, (gh, gw), generator=generator)
    rows = torch.arange(gh)[:, None] * sy + pick // sx
    cols = torch.arange(gw)[None, :] * sx + pick % sx
    mask[rows, cols] = True
    return mask.flatten()


def pool_token_map(unstable: torch.Tensor, tokens: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Bring a per-sample map of unstable latent tokens ``[S, H, W]``, ``[S, F, H, W]`` (video) or ``[S, L]``
    to a block's ``tokens``.

    Returns ``(unstable fraction per block token [S, tokens], grid shape)``: the fraction of unstable latent
    tokens pooled over each block token's window (the official rule marks a pooled token unstable when
    the fraction exceeds 0.25).
    """
    if not isinstance(unstable, torch.Tensor) or unstable.ndim not in (2, 3, 4):
        raise ValueError(
            f"token map must be a [S, L], [S, H, W] or [S, F, H, W] tensor, got "
            f"{getattr(unstable, 'shape', type(unstable).__name__)}"
        )
    if not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"tokens must be a positive int, got {tokens!r}")
    unstable = unstable.float()
    if unstable.ndim == 2:
        if unstable.shape[1] != tokens:
            raise ValueError(f"token map has {unstable.shape[1]} tokens, block has {tokens}")
        return unstable, (tokens,)
    if unstable.ndim == 4:
        f, h, w = unstable.shape[1:]
        for ft in (1, 2, 4):
            for fs in (1, 2, 4, 8):
                if f % ft == 0 and h % fs == 0 and w % fs == 0 and (f // ft) * (h // fs) * (w // fs) == tokens:
                    pooled = F.avg_pool3d(unstable[:, None], (ft, fs, fs))[:, 0]
                    return pooled.flatten(1), (f // ft, h // fs, w // fs)
        raise ValueError(f"a block with {tokens} tokens is not a downsampling of the {f}x{h}x{w} latent video")
    h, w = unstable.shape[1:]
    factor = math.isqrt(h * w // tokens) if tokens <= h * w else 0
    if factor < 1 or (h // factor) * (w // factor) != tokens:
        raise ValueError(f"a block with {tokens} tokens is not a square downsampling of the {h}x{w} latent")
    pooled = F.avg_pool2d(unstable[:, None], factor)[:, 0] if factor > 1 else unstable
    return pooled.flatten(1), (h // factor, w // factor)
