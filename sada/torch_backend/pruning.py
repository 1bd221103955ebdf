"""Token-wise cache-assisted pruning (paper section 3.5; SADA_SPEC 5) for transformer blocks.

On a computed step inside the acceleration range, each pruned block runs only on the tokens that must be
recomputed -- an always-computed anchor grid (one random token per ``anchor_stride`` window) plus the
tokens the engine marks unstable -- and takes the other tokens' outputs from a per-block cache of its
last full output. The cache is refreshed (full computation) on the first computed step after a skip and
every ``max_interval`` steps, exactly the official cadence, but per sample.

Batches: every sample keeps its own token set; sets are padded to one size with that sample's own next
most unstable tokens so the block runs on a dense ``[rows, K, D]`` tensor (never duplicated tokens, so
attention is unchanged). Blocks that take rotary position embeddings for the image tokens (Flux) need
one token set for the whole call: there the union of the samples' sets is used.

Supported blocks (diffusers): ``BasicTransformerBlock`` (U-Net ``Transformer2DModel``, DiT, PixArt),
``JointTransformerBlock`` (SD3), ``FluxTransformerBlock`` and ``FluxSingleTransformerBlock``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from sada.config import SADAConfig
from sada.torch_backend.rows import slice_rows

__all__ = ["PRUNABLE_BLOCKS", "anchor_mask", "pool_token_map", "TokenPruner", "find_blocks"]

PRUNABLE_BLOCKS = ("BasicTransformerBlock", "JointTransformerBlock", "FluxTransformerBlock",
                   "FluxSingleTransformerBlock")
ROTARY_BLOCKS = ("FluxTransformerBlock", "FluxSingleTransformerBlock")


def anchor_mask(shape: tuple[int, ...], stride: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """One random anchor per full ``stride`` window of a ``(h, w)`` grid (or of a 1-D token sequence);
    tokens of incomplete border windows are never anchors. Returns a flat boolean mask."""
    sy, sx = stride
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
    """Bring a per-sample boolean map of unstable latent tokens ``[S, H, W]`` (or ``[S, L]``) to a block's ``tokens``.

    Returns ``(unstable fraction per block token [S, tokens], grid shape)``: the fraction of unstable latent
    tokens pooled over each block token's window (the official rule marks a pooled token unstable when
    the fraction exceeds 0.25).
    """
    unstable = unstable.float()
    if unstable.ndim == 2:
        if unstable.shape[1] != tokens:
            raise ValueError(f"token map has {unstable.shape[1]} tokens, block has {tokens}")
        return unstable, (tokens,)
    h, w = unstable.shape[1:]
    factor = math.isqrt(h * w // tokens) if tokens else 0
    if factor < 1 or (h // factor) * (w // factor) != tokens:
        raise ValueError(f"a block with {tokens} tokens is not a square downsampling of the {h}x{w} latent")
    pooled = F.avg_pool2d(unstable[:, None], factor)[:, 0] if factor > 1 else unstable
    return pooled.flatten(1), (h // factor, w // factor)


def find_blocks(denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The denoiser's prunable transformer blocks, in module order."""
    return [(name, m) for name, m in denoiser.named_modules() if type(m).__name__ in PRUNABLE_BLOCKS]


class TokenPruner:
    """Per-run pruning state shared by the block hooks of one denoiser."""

    def __init__(self, config: SADAConfig, seed: int = 0):
        self.config = config
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self.caches: dict[str, torch.Tensor] = {}
        self.anchors: dict[tuple, torch.Tensor] = {}
        self.generator = torch.Generator().manual_seed(self.seed)  # reset every run: reproducible anchors
        self.last_refresh: np.ndarray | None = None
        self.prev_computed: np.ndarray | None = None
        self.modes: np.ndarray | None = None
        self.unstable: torch.Tensor | None = None
        self.active_rows: torch.Tensor | None = None
        self.total_rows: int | None = None
        self.stats = {"tokens_in": 0, "tokens_total": 0}

    def plan_step(self, step: int, computed: np.ndarray, unstable: torch.Tensor | None) -> None:
        """Set each sample's mode for ``step``: ``full`` (no pruning, no cache), ``refresh`` (full + cache),
        ``prune``. ``computed`` marks the samples that run the network; ``unstable`` is the engine's map of
        tokens to recompute (``SADAEngine.token_map()``, ``None`` when unknown: refresh)."""
        cfg = self.config
        samples = computed.size
        if self.last_refresh is None or self.last_refresh.size != samples:
            self.last_refresh = np.full(samples, -10**9)
            self.prev_computed = np.ones(samples, bool)
            self.caches.clear()
        in_range = cfg.acc_start <= step < cfg.acc_end
        modes = np.full(samples, "full", dtype=object)
        if in_range:
            due = (~self.prev_computed) | (step - self.last_refresh >= max(cfg.max_interval, 1)) | (unstable is None)
            modes[:] = np.where(due, "refresh", "prune")
            self.last_refresh = np.where(computed & due, step, self.last_refresh)
        else:
            self.caches.clear()
        self.prev_computed = computed.copy()
        self.modes, self.unstable = modes, unstable
        self.active_rows, self.total_rows = None, None

    def cache_bytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in self.caches.values())

    # ------------------------------------------------------------------ block execution
    def _token_sets(self, rows_samples: np.ndarray, tokens: int, shared: bool):
        """``[P, K]`` indices of the tokens each pruned row computes (ascending), padded to one size."""
        fraction, grid = pool_token_map(self.unstable, tokens)
        key = (grid, self.config.anchor_stride)
        if key not in self.anchors:
            self.anchors[key] = anchor_mask(grid, self.config.anchor_stride, self.generator)
        anchors = self.anchors[key].to(fraction.device)
        pooled = self.unstable.ndim == 3 and tokens < self.unstable[0].numel()
        fraction = fraction[rows_samples]
        keep = anchors[None] | (fraction > (0.25 if pooled else 0.0))
        if shared:
            keep = keep.any(dim=0, keepdim=True).expand_as(keep)
        k = int(keep.sum(dim=1).max())
        if k == tokens:
            return torch.arange(tokens, device=keep.device)[None].expand(keep.shape[0], -1), k
        priority = keep.float() * 2.0 + fraction  # every kept token, then the most unstable others
        idx = torch.topk(priority, k, dim=1).indices
        return torch.sort(idx, dim=1).values, k

    def run_block(self, key: str, block_type: str, original, args: tuple, kwargs: dict):
        """Execute one block call with pruning according to the current plan."""
        hidden = args[0] if args else kwargs["hidden_states"]
        rows = hidden.shape[0]
        if self.modes is None:
            return original(*args, **kwargs)
        active = self.active_rows if self.active_rows is not None else torch.arange(rows)
        total = self.total_rows or rows
        samples = self.modes.size
        rows_samples = (active.cpu().numpy() % samples) if rows == active.numel() else np.arange(rows) % samples
        modes = self.modes[rows_samples]
        if (modes == "full").all():
            return original(*args, **kwargs)
        tokens = hidden.shape[1]
        self.stats["tokens_total"] += rows * tokens
        prune = modes == "prune"
        if self.unstable is None or not prune.any():
            out = original(*args, **kwargs)
            self._store(key, active, total, _image_output(out), modes != "full")
            self.stats["tokens_in"] += rows * tokens
            return out
        full_rows = np.flatnonzero(~prune)
        prune_rows = np.flatnonzero(prune)
        outputs = {}
        if full_rows.size:
            sub = torch.as_tensor(full_rows, device=hidden.device)
            out = original(*slice_rows(args, sub, rows), **slice_rows(kwargs, sub, rows))
            self._store(key, active[full_rows], total, _image_output(out), modes[full_rows] == "refresh")
            outputs["full"] = (sub, out)
            self.stats["tokens_in"] += full_rows.size * tokens
        sub = torch.as_tensor(prune_rows, device=hidden.device)
        cache = self.caches.get(key)
        if cache is None or cache.shape[1] != tokens:
            raise RuntimeError(f"sada: block {key} has no cache to reconstruct pruned tokens from")
        idx, k = self._token_sets(rows_samples[prune_rows], tokens, block_type in ROTARY_BLOCKS)
        self.stats["tokens_in"] += prune_rows.size * k
        p_args, p_kwargs = slice_rows(args, sub, rows), slice_rows(kwargs, sub, rows)
        gathered = torch.gather(hidden.index_select(0, sub), 1, idx[..., None].expand(-1, -1, hidden.shape[2]))
        if args:
            p_args = (gathered,) + tuple(p_args[1:])
        else:
            p_kwargs["hidden_states"] = gathered
        if block_type in ROTARY_BLOCKS and p_kwargs.get("image_rotary_emb") is not None:
            p_kwargs["image_rotary_emb"] = _gather_rotary(p_kwargs["image_rotary_emb"], idx[0], tokens)
        out = original(*p_args, **p_kwargs)
        part = _image_output(out)
        full_rows_cache = cache[active[prune_rows]]
        full_rows_cache.scatter_(1, idx[..., None].expand(-1, -1, part.shape[2]), part.to(cache.dtype))
        cache[active[prune_rows]] = full_rows_cache
        outputs["prune"] = (sub, _replace_image_output(out, full_rows_cache.to(part.dtype)))
        return _merge(outputs, rows)

    def _store(self, key, active_rows, total, image_out, refresh_mask):
        if not np.any(refresh_mask):
            return
        cache = self.caches.get(key)
        if cache is None or cache.shape[1:] != image_out.shape[1:] or cache.shape[0] < total:
            cache = self.caches[key] = torch.zeros((total,) + tuple(image_out.shape[1:]), dtype=image_out.dtype,
                                                   device=image_out.device)
        sel = np.flatnonzero(refresh_mask)
        cache[active_rows[sel]] = image_out[torch.as_tensor(sel, device=image_out.device)].detach()


def _image_output(out):
    return out[1] if isinstance(out, tuple) else out


def _replace_image_output(out, image):
    return (out[0], image) + tuple(out[2:]) if isinstance(out, tuple) else image


def _gather_rotary(rotary, idx: torch.Tensor, image_tokens: int):
    """Keep the text positions and the selected image positions of ``(cos, sin)`` ``[S_txt + S_img, D]``."""
    def pick(t):
        text = t.shape[0] - image_tokens
        return torch.cat([t[:text], t[text:].index_select(0, idx.to(t.device))], dim=0)
    return tuple(pick(t) for t in rotary) if isinstance(rotary, tuple) else pick(rotary)


def _merge(outputs: dict, rows: int):
    """Reassemble the row groups' outputs into one batch in the original row order."""
    parts = list(outputs.values())
    template = parts[0][1]

    def assemble(get):
        first = get(template)
        if first is None:
            return None
        full = torch.empty((rows,) + tuple(first.shape[1:]), dtype=first.dtype, device=first.device)
        for sub, out in parts:
            full[sub] = get(out)
        return full

    if isinstance(template, tuple):
        return tuple(assemble(lambda o, i=i: o[i]) for i in range(len(template)))
    return assemble(lambda o: o)
