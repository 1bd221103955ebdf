"""Token-wise cache-assisted pruning (paper section 3.5; official code github.com/Ting-Justin-Jiang/sada-icml).

On a computed step inside the acceleration range, each pruned block computes only the tokens that must
be recomputed -- an always-computed anchor grid (one random token per ``anchor_stride`` window) plus the
tokens the engine marks unstable -- and takes the other tokens' outputs from a per-block cache of its
last full output. The cache is refreshed (full computation) on the first computed step after a skip and
every ``TokenPruning.refresh_interval`` steps (default: the schedule's ``max_interval``, the official cadence),
tracked per sample.

Context (default): the recomputed tokens' self-attention still sees every token. A refresh call also
caches the keys and values of every image token (exactly what enters scaled-dot-product attention); a
pruned call computes queries, keys and values for the kept tokens only, scatters the fresh keys and
values into that cache and lets the kept queries -- and in joint blocks the text queries -- attend over
the full set (:mod:`sada.torch_backend.kv_context`). Norms, MLPs, cross-attention and residuals run on
the kept tokens only. Blocks whose attention cannot be tapped fall back to whole-block pruning (the kept
tokens attend only to each other), with a warning and ``TokenPruner.fallbacks`` naming the reason.

Batches: every row keeps its own token set, padded to one size with its own next most unstable tokens
(real, distinct tokens) so the block runs on a dense ``[rows, K, D]`` tensor. Blocks with a positional
table without batch axis (Flux, CogVideoX) use the union of the rows' sets.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from sada.config import SADAConfig, StepSchedule
from sada.errors import PruningFallbackWarning
from sada.torch_backend.kv_context import KVContext
from sada.torch_backend.pruning_blocks import (
    BLOCK_SPECS,
    bind_inputs,
    block_spec,
    context_unsupported,
    gather_token_inputs,
    image_output,
    position_dependent,
    replace_image_output,
)
from sada.torch_backend.rows import slice_rows
from sada.torch_backend.token_map import anchor_mask, pool_token_map

__all__ = ["PRUNABLE_BLOCKS", "anchor_mask", "pool_token_map", "TokenPruner", "find_blocks"]

PRUNABLE_BLOCKS = tuple(BLOCK_SPECS)


@dataclass(frozen=True)
class PruningSettings:
    acc_start: int
    acc_end: int
    refresh_interval: int
    anchor_stride: tuple[int, int]


def pruning_settings(config: SADAConfig) -> PruningSettings:
    """The only place that reads the config: the fields pruning uses (a config rename changes this only)."""
    if not isinstance(config, SADAConfig):
        raise TypeError(f"config must be a SADAConfig, got {type(config).__name__}")
    schedule = config.schedule
    if isinstance(schedule, StepSchedule):
        start, end = schedule.acc_start, schedule.acc_end
    else:  # the dial: any step after the history is built may be pruned; fields left unset take a second-order
        # host's values (these settings are fixed before the host's solver order is known)
        schedule = schedule.for_solver(2)
        start, end = schedule.history, 10**9
    refresh = config.pruning.refresh_interval
    return PruningSettings(
        start,
        end,
        max(schedule.max_interval, 1) if refresh is None else refresh,
        (int(config.pruning.anchor_stride[0]), int(config.pruning.anchor_stride[1])),
    )


def find_blocks(denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The denoiser's prunable transformer blocks, in module order."""
    if not isinstance(denoiser, torch.nn.Module):
        raise TypeError(f"denoiser must be a torch.nn.Module, got {type(denoiser).__name__}")
    return [(name, m) for name, m in denoiser.named_modules() if type(m).__name__ in PRUNABLE_BLOCKS]


class TokenPruner:
    """Per-run pruning state shared by the block hooks of one denoiser.

    ``context=True`` (default) keeps every token's keys and values in the recomputed tokens' self-attention;
    ``context=False`` prunes whole blocks (the kept tokens attend only to each other)."""

    def __init__(self, config: SADAConfig, seed: int = 0, context: bool = True):
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if not isinstance(context, bool):
            raise TypeError(f"context must be a bool, got {context!r}")
        self.config = config
        self.seed, self.context = int(seed), context
        self.kv = KVContext()
        self.fallbacks: dict[str, str] = {}  # block key -> why it runs without context / unpruned
        self.reset()

    @property
    def config(self) -> SADAConfig:
        return self._config

    @config.setter
    def config(self, config: SADAConfig) -> None:
        self.settings = pruning_settings(config)
        self._config = config

    def reset(self) -> None:
        self.caches: dict[str, torch.Tensor] = {}
        self.kv.reset()
        self.anchors: dict[tuple, torch.Tensor] = {}
        self.generator = torch.Generator().manual_seed(self.seed)  # reset every run: reproducible anchors
        self.last_refresh: np.ndarray | None = None
        self.prev_computed: np.ndarray | None = None
        self.modes: np.ndarray | None = None
        self.unstable: torch.Tensor | None = None
        self._sets: dict[tuple, tuple[torch.Tensor, int]] = {}
        self.active_rows: torch.Tensor | None = None
        self.total_rows: int | None = None
        self.stats = {"tokens_in": 0, "tokens_total": 0}

    def plan_step(self, step: int, computed: np.ndarray, unstable: torch.Tensor | None) -> None:
        """Set each sample's mode for ``step``: ``full`` (no pruning, no cache), ``refresh`` (full + cache),
        ``prune``. ``computed`` marks the samples that run the network; ``unstable`` is the engine's map of
        tokens to recompute (``SADAEngine.token_map()``, ``None`` when unknown: refresh)."""
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        computed = np.asarray(computed)
        if computed.dtype != bool or computed.ndim != 1:
            raise ValueError(f"computed must be a 1-D boolean array, got {computed.dtype} {computed.shape}")
        if unstable is not None and (not isinstance(unstable, torch.Tensor) or unstable.shape[0] != computed.size):
            raise ValueError(
                f"unstable must be a tensor with one map per sample ({computed.size}), got "
                f"{getattr(unstable, 'shape', type(unstable).__name__)}"
            )
        cfg = self.settings
        samples = computed.size
        if self.last_refresh is None or self.last_refresh.size != samples:
            self.last_refresh = np.full(samples, -(10**9))
            self.prev_computed = np.ones(samples, bool)
            self.caches.clear()
            self.kv.reset()
        in_range = cfg.acc_start <= step < cfg.acc_end
        modes = np.full(samples, "full", dtype=object)
        if in_range:
            due = (
                (~self.prev_computed) | (step - self.last_refresh >= max(cfg.refresh_interval, 1)) | (unstable is None)
            )
            modes[:] = np.where(due, "refresh", "prune")
            self.last_refresh = np.where(computed & due, step, self.last_refresh)
        else:
            self.caches.clear()
            self.kv.reset()
        self.prev_computed = computed.copy()
        self.modes, self.unstable, self._sets = modes, unstable, {}
        self.active_rows, self.total_rows = None, None

    def set_call_rows(self, active_rows: torch.Tensor | None, total_rows: int | None) -> None:
        """The denoiser call now running: the batch rows it runs (``None``: all) out of ``total_rows``."""
        self.active_rows, self.total_rows = active_rows, total_rows

    def output_cache_bytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in self.caches.values())

    def kv_cache_bytes(self) -> int:
        """Bytes of the cached self-attention keys and values (context-keeping pruning)."""
        return self.kv.nbytes()

    def cache_bytes(self) -> int:
        """All pruning caches: block outputs plus self-attention keys and values."""
        return self.output_cache_bytes() + self.kv_cache_bytes()

    # ------------------------------------------------------------------ block execution
    def _token_sets(self, rows_samples: np.ndarray, tokens: int, shared: bool):
        """``[P, K]`` indices of the tokens each pruned row computes (ascending), padded to one size; computed
        once per step for all blocks of one token count."""
        memo = (tokens, shared, rows_samples.tobytes())
        if memo not in self._sets:
            self._sets[memo] = self._compute_token_sets(rows_samples, tokens, shared)
        return self._sets[memo]

    def _compute_token_sets(self, rows_samples: np.ndarray, tokens: int, shared: bool):
        fraction, grid = pool_token_map(self.unstable, tokens)
        key = (grid, self.settings.anchor_stride)
        if key not in self.anchors:
            self.anchors[key] = anchor_mask(grid, self.settings.anchor_stride, self.generator)
        anchors = self.anchors[key].to(fraction.device)
        pooled = tokens < self.unstable[0].numel()
        fraction = fraction[torch.as_tensor(rows_samples, device=fraction.device)]
        keep = anchors[None] | (fraction > (0.25 if pooled else 0.0))
        if shared:
            keep = keep.any(dim=0, keepdim=True).expand_as(keep)
        k = int(keep.sum(dim=1).max())
        if k == tokens:
            return torch.arange(tokens, device=keep.device)[None].expand(keep.shape[0], -1), k
        priority = keep.float() * 2.0 + fraction  # every kept token, then the most unstable others
        idx = torch.topk(priority, k, dim=1).indices
        return torch.sort(idx, dim=1).values, k

    def _resolve(self, key: str, block, original):
        """``(module or None, spec, use_context)`` of a block given as a module or (legacy) a class name."""
        module = block if isinstance(block, torch.nn.Module) else None
        if module is None:
            if not isinstance(block, str):
                raise TypeError(f"block must be the block module or its class name, got {type(block).__name__}")
            owner = getattr(original, "__self__", None)  # a bound ``forward``: the block itself
            module = owner if isinstance(owner, torch.nn.Module) and type(owner).__name__ == block else None
        spec = block_spec(block if module is None else module)
        if module is not None and key not in self.fallbacks:
            reason = position_dependent(module)
            if reason is None and self.context:
                reason = context_unsupported(module, spec)
                reason = reason and "runs without context: " + reason
            elif reason is not None:
                reason = "runs unpruned: " + reason
            if reason is not None:
                self._fall_back(key, spec, reason)
        use_context = self.context and module is not None and key not in self.fallbacks
        return module, spec, use_context

    def _fall_back(self, key: str, spec, reason: str) -> None:
        self.fallbacks[key] = reason
        self.kv.drop(key)
        warnings.warn(f"sada: pruned block {key} ({spec.name}) {reason}", PruningFallbackWarning, stacklevel=3)

    def run_block(self, key: str, block, original, args: tuple, kwargs: dict):
        """Execute one call of a pruned block according to the current plan.

        ``block``: the block module (its attention modules are tapped for context) or, for callers that
        have only the forward, its class name. ``original(*args, **kwargs)`` runs the block unpruned."""
        if not isinstance(key, str) or not callable(original):
            raise TypeError(f"run_block needs a str key and a callable block forward, got {key!r}, {original!r}")
        if self.modes is None:
            return original(*args, **kwargs)
        module, spec, use_context = self._resolve(key, block, original)
        if module is not None:
            args, kwargs = (), bind_inputs(module, args, kwargs)
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3:
            raise ValueError(
                f"sada: block {key} needs hidden_states [rows, tokens, dim], got "
                f"{getattr(hidden, 'shape', type(hidden).__name__)}"
            )
        rows, tokens = hidden.shape[:2]
        active = self.active_rows if self.active_rows is not None else torch.arange(rows)
        total = self.total_rows or rows
        samples = self.modes.size
        rows_samples = (active.cpu().numpy() % samples) if rows == active.numel() else np.arange(rows) % samples
        modes = self.modes[rows_samples]
        if (modes == "full").all() or self.fallbacks.get(key, "").startswith("runs unpruned"):
            return original(*args, **kwargs)
        self.stats["tokens_total"] += rows * tokens
        prune = (modes == "prune") & (self.unstable is not None)
        if prune.any():
            idx, k = self._token_sets(rows_samples[prune], tokens, spec.shared_tokens)
            if k == tokens:  # every token recomputed: the plain call (caches refreshed) is cheaper than gathering
                prune[:] = False
        outputs = {}
        full_rows, prune_rows = np.flatnonzero(~prune), np.flatnonzero(prune)
        if full_rows.size:
            sub = torch.as_tensor(full_rows, device=hidden.device)
            f_args, f_kwargs = (args, kwargs) if not prune.any() else _slice(spec, args, kwargs, sub, rows)
            if use_context:
                with self.kv.record(key, module, spec, active[full_rows], total, tokens) as problems:
                    out = original(*f_args, **f_kwargs)
                if problems:
                    self._fall_back(key, spec, "runs without context: " + "; ".join(problems))
                    use_context = False
            else:
                out = original(*f_args, **f_kwargs)
            self._store(key, active[full_rows], total, image_output(spec, out), modes[full_rows] != "full")
            outputs["full"] = (sub, out)
            self.stats["tokens_in"] += full_rows.size * tokens
        if not prune_rows.size:
            return outputs["full"][1]
        cache = self.caches.get(key)
        if cache is None or cache.shape[1] != tokens:
            raise RuntimeError(f"sada: block {key} has no cache to reconstruct pruned tokens from")
        sub = torch.as_tensor(prune_rows, device=hidden.device)
        idx = idx.to(hidden.device)
        self.stats["tokens_in"] += prune_rows.size * k
        p_args, p_kwargs = _slice(spec, args, kwargs, sub, rows)
        gathered = torch.gather(hidden.index_select(0, sub), 1, idx[..., None].expand(-1, -1, hidden.shape[2]))
        if args:
            p_args = (gathered,) + tuple(p_args[1:])
        else:
            p_kwargs["hidden_states"] = gathered
        p_kwargs = gather_token_inputs(spec, p_kwargs, idx, tokens)
        if use_context:
            with self.kv.attend(key, module, spec, active[prune_rows], idx):
                out = original(*p_args, **p_kwargs)
        else:
            out = original(*p_args, **p_kwargs)
        part = image_output(spec, out)
        at = active[prune_rows].to(cache.device)
        rebuilt = cache.index_select(0, at)
        rebuilt.scatter_(1, idx[..., None].expand(-1, -1, part.shape[2]).to(cache.device), part.to(cache.dtype))
        cache.index_copy_(0, at, rebuilt.detach())
        outputs["prune"] = (sub, replace_image_output(spec, out, rebuilt.to(part.dtype)))
        return _merge(outputs, rows)

    def _store(self, key, active_rows, total, image_out, refresh_mask):
        if not np.any(refresh_mask):
            return
        cache = self.caches.get(key)
        if cache is None or cache.shape[1:] != image_out.shape[1:] or cache.shape[0] < total:
            cache = self.caches[key] = torch.zeros(
                (total,) + tuple(image_out.shape[1:]), dtype=image_out.dtype, device=image_out.device
            )
        sel = np.flatnonzero(refresh_mask)
        cache[active_rows[sel]] = image_out[torch.as_tensor(sel, device=image_out.device)].detach()


def _slice(spec, args: tuple, kwargs: dict, sub: torch.Tensor, rows: int):
    """The call's arguments for batch rows ``sub``; per-token tables without a batch axis are left whole even
    when their length happens to equal the batch size."""
    whole = {e.name for e in spec.token_inputs if not e.batched}
    sliced = slice_rows({n: v for n, v in kwargs.items() if n not in whole}, sub, rows)
    sliced.update({n: v for n, v in kwargs.items() if n in whole})
    return slice_rows(args, sub, rows), sliced


def _merge(outputs: dict, rows: int):
    """Reassemble the row groups' outputs into one batch in the original row order."""
    parts = list(outputs.values())
    if (
        len(parts) == 1
        and parts[0][0].numel() == rows
        and bool((parts[0][0] == torch.arange(rows, device=parts[0][0].device)).all())
    ):
        return parts[0][1]
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
