"""SADA for diffusers pipelines, through diffusers' own hook mechanism (no class swapping, no copied code).

    handle = sada.adapters.diffusers.enable(pipe)        # or: with enabled(pipe) as handle: ...
    image = pipe(prompt, num_inference_steps=50).images[0]
    print(handle.summary())                             # computed 27/50 steps (1.85x), AM 6, Lagrange 17
    sada.adapters.diffusers.disable(pipe)               # the exact original objects are back

or in diffusers' own idiom for caches: ``apply_sada(pipe, SADAHookConfig(config=...))`` / ``remove_sada(pipe)``.

Three pieces per pipeline (:mod:`sada.adapters._diffusers_hooks`):

* the scheduler instance's ``step`` is wrapped (an instance attribute that keeps the original's signature, so the
  pipeline still passes ``eta`` / ``generator``; ``disable`` deletes it): it completes the model output of every
  step through the run's session (synthesised outputs for the samples that skip), runs the unchanged solver step
  and plans the next step;
* a ``diffusers.hooks`` ``ModelHook`` named ``"sada"`` on the denoiser (``unet`` / ``transformer`` /
  ``transformer_2``) and on a ControlNet runs the module on the rows that compute only and counts them;
* the pipeline instance's ``progress_bar`` marks the pipeline as running when its denoising loop starts.

State is per pipeline call: a run starts at the scheduler's first step, and any call whose timestep is not the one
SADA expects simply runs the network (so an exception mid-call leaves nothing behind). Pipelines built from another
pipeline's components (``Pipeline(**other.components)``) may share the denoiser and the scheduler: each enabled
pipeline keeps its own state, and the shared hook serves the pipeline whose call is running.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from sada.adapters._diffusers_controller import Controller
from sada.adapters._diffusers_hooks import (
    DENOISERS,
    BlockHook,
    ProgressBarOwner,
    SkipHook,
    attach,
    detach,
    unwrap_scheduler,
    wrap_scheduler,
)
from sada.adapters._diffusers_scheduler import describe_scheduler
from sada.adapters._other_caches import check_at_enable
from sada.config import SADAConfig
from sada.errors import AlreadyEnabledError
from sada.torch_backend.compiled import is_compiled, resolve_lockstep
from sada.torch_backend.pruning import TokenPruner, find_blocks
from sada.trace import Trace

__all__ = ["enable", "disable", "enabled", "apply_sada", "remove_sada", "SADAHookConfig", "SADAHandle", "DENOISERS"]


@dataclass(frozen=True)
class SADAHookConfig:
    """What :func:`apply_sada` attaches, in the form of diffusers' cache configs (``FirstBlockCacheConfig``, ...).

    Args:
        config: the :class:`~sada.config.SADAConfig` (default ``SADAConfig()``).
        engine_factory: ``engine_factory(grid, kind)``: another engine with the same contract (peer methods).
        lockstep: batch-level decisions; ``None`` (default): on when the denoiser is ``torch.compile``d.
        scheduler: the scheduler that drives the denoiser, needed only when :func:`apply_sada` is given a bare
            denoiser module instead of a pipeline.
    """

    config: SADAConfig | None = None
    engine_factory: object = None
    lockstep: bool | None = None
    scheduler: object = None

    def __post_init__(self):
        if self.config is not None and not isinstance(self.config, SADAConfig):
            raise TypeError(f"config must be a SADAConfig, got {type(self.config).__name__}")
        if self.engine_factory is not None and not callable(self.engine_factory):
            raise TypeError(
                f"engine_factory must be callable as engine_factory(grid, kind), got {self.engine_factory!r}"
            )
        resolve_lockstep(self.lockstep, None)  # validates it


class SADAHandle:
    """What ``enable`` returns: the trace of the latest run, ``summary()``, ``configure()``, ``disable()``."""

    def __init__(self, pipe, controller: Controller, hooked: list):
        self.pipe, self._controller, self._hooked = pipe, controller, hooked

    @property
    def config(self) -> SADAConfig:
        return self._controller.config

    @property
    def trace(self) -> Trace | None:
        """Trace of the latest (or running) pipeline call; ``None`` when it computed every step exactly."""
        return self._controller.last_trace

    def summary(self) -> str:
        """What SADA did in the latest pipeline call (or why it computed every step)."""
        return self._controller.summary()

    def configure(self, config: SADAConfig) -> None:
        """Replace the config (takes effect at the next pipeline call); validated before anything changes."""
        if not isinstance(config, SADAConfig):
            raise TypeError(f"config must be a SADAConfig, got {type(config).__name__}")
        ctl = self._controller
        if (ctl.pruner is not None) != config.prunes_tokens:
            raise ValueError("configure() cannot switch token pruning on or off: disable(pipe) and enable it again")
        _check_pruning(config, _denoiser_modules(self.pipe))
        ctl.config, ctl.run = config, None
        if ctl.pruner is not None:
            ctl.pruner.config = config

    def disable(self) -> None:
        disable(self.pipe)


def _denoiser_modules(pipe) -> list[tuple[str, torch.nn.Module]]:
    found = [
        (name, getattr(pipe, name)) for name in DENOISERS if isinstance(getattr(pipe, name, None), torch.nn.Module)
    ]
    if not found:
        raise TypeError(f"sada: {type(pipe).__name__} has no denoiser to accelerate (looked for {list(DENOISERS)})")
    controlnet = getattr(pipe, "controlnet", None)
    if isinstance(controlnet, torch.nn.Module):
        found.append(("controlnet", controlnet))
    return found


def _check_pruning(config: SADAConfig, modules) -> list:
    """The prunable blocks ``(role, index, name, block)`` the config selects; ``ValueError`` for impossible ones."""
    if not config.prunes_tokens:
        return []
    pruning = config.pruning
    role, denoiser = modules[0]
    blocks = find_blocks(denoiser)
    if role == "unet":
        if pruning.prune_blocks:
            raise ValueError(
                f"prune_blocks={pruning.prune_blocks} selects transformer blocks of a DiT; this pipeline's "
                f"denoiser is a U-Net: use max_downsample to choose its blocks by resolution"
            )
        return [(role, i, name, block) for i, (name, block) in enumerate(blocks)]
    if pruning.max_downsample:
        raise ValueError(
            f"max_downsample={pruning.max_downsample} selects U-Net blocks by resolution; this pipeline's "
            f"denoiser is a transformer with {len(blocks)} prunable blocks: use prune_blocks"
        )
    unknown = [i for i in pruning.prune_blocks if i >= len(blocks)]
    if unknown:
        raise ValueError(
            f"prune_blocks has indices {unknown} but {type(denoiser).__name__} has {len(blocks)} "
            f"prunable blocks (0..{len(blocks) - 1})"
        )
    return [(role, i, name, block) for i, (name, block) in enumerate(blocks) if i in pruning.prune_blocks]


def enable(pipe, config: SADAConfig | None = None, *, engine_factory=None, lockstep: bool | None = None) -> SADAHandle:
    """Enable SADA on a diffusers pipeline instance; returns a :class:`SADAHandle`.

    Everything is validated before anything is changed: the config, the scheduler (a ``ValueError`` names the
    setting SADA cannot follow), the denoiser and the pruned blocks. Enabling twice raises
    :class:`~sada.errors.AlreadyEnabledError` (a ``ValueError``, as diffusers' ``enable_cache`` raises, and a
    ``RuntimeError``): use ``handle.configure(config)``, or ``disable(pipe)`` first. ``engine_factory(grid, kind)``
    replaces the SADA engine by another engine with the same contract (the benchmark runs peer methods such as
    :class:`sada.torch_backend.peers.AdaptiveDiffusionEngine` this way). ``lockstep``: batch-level decisions (every
    row computes or every row skips); ``None`` (default) turns it on when the denoiser is ``torch.compile``d, so a
    compiled network never sees partial batches (``False`` forces per-sample decisions).
    """
    config = SADAConfig() if config is None else config
    if not isinstance(config, SADAConfig):
        raise TypeError(f"config must be a SADAConfig, got {type(config).__name__}")
    if getattr(pipe, "_sada_handle", None) is not None:
        raise AlreadyEnabledError(
            "sada is already enabled on this pipeline: use handle.configure(config) to change "
            "the config, or disable(pipe) (remove_sada(pipe)) first"
        )
    if getattr(pipe, "scheduler", None) is None:
        raise TypeError(f"sada: {type(pipe).__name__} has no scheduler")
    if engine_factory is not None and not callable(engine_factory):
        raise TypeError(f"engine_factory must be callable as engine_factory(grid, kind), got {engine_factory!r}")
    info = describe_scheduler(pipe.scheduler)
    modules = _denoiser_modules(pipe)
    resolve_lockstep(lockstep, None)  # validates it
    if config.prunes_tokens and any(is_compiled(m) for _, m in modules):
        raise ValueError(
            "sada: token pruning hooks blocks inside the denoiser, which torch.compile traces; "
            "enable pruning on the uncompiled denoiser (or disable pruning for a compiled one)"
        )
    blocks = _check_pruning(config, modules)
    current = pipe.scheduler.__dict__.get("step")
    if current is not None and getattr(current, "_sada_wrapper", None) is None:
        raise RuntimeError(
            f"sada: {type(pipe.scheduler).__name__}.step is already replaced on this instance by "
            "something else; remove that first"
        )
    # validated: now change things, undoing them all if anything fails
    pruner = TokenPruner(config) if config.prunes_tokens else None
    controller = Controller(pipe, config, info, engine_factory, pruner, lockstep)
    hooked: list = []
    wrapper = None
    try:
        wrapper = wrap_scheduler(pipe.scheduler, controller)
        for role, module in modules:
            attach(module, lambda role=role: SkipHook(role), controller, hooked)
        for role, index, name, block in blocks:
            attach(block, lambda role=role, index=index, name=name: BlockHook(role, index, name), controller, hooked)
        check_at_enable(modules, lockstep)  # other caches on the denoiser: refused (undone below) or composable
    except Exception:
        for module, hook in reversed(hooked):
            detach(module, hook, controller)
        if wrapper is not None:
            unwrap_scheduler(pipe.scheduler, wrapper, controller)
        raise
    handle = SADAHandle(pipe, controller, hooked)
    controller.scheduler_binding = (pipe.scheduler, wrapper)
    if callable(getattr(type(pipe), "progress_bar", None)):
        pipe.progress_bar = ProgressBarOwner(pipe, controller)
    pipe._sada_handle = handle
    return handle


def disable(pipe) -> None:
    """Remove SADA from ``pipe``: its hooks and its scheduler wrapper (other pipelines sharing components keep theirs);
    with nothing else enabled on them, the modules' own ``forward`` and the scheduler's own ``step`` are back."""
    handle = getattr(pipe, "_sada_handle", None)
    if handle is None:
        raise RuntimeError("sada is not enabled on this pipeline")
    controller = handle._controller
    scheduler, wrapper = controller.scheduler_binding
    unwrap_scheduler(scheduler, wrapper, controller)
    for module, hook in reversed(handle._hooked):
        detach(module, hook, controller)
    for peer in controller.peers:
        if controller in peer.peers:
            peer.peers.remove(controller)
    owner = pipe.__dict__.get("progress_bar")
    if isinstance(owner, ProgressBarOwner):
        if owner.previous is None:
            del pipe.progress_bar
        else:
            pipe.progress_bar = owner.previous
    del pipe._sada_handle


@contextlib.contextmanager
def enabled(pipe, config: SADAConfig | None = None, *, engine_factory=None, lockstep: bool | None = None):
    """``with enabled(pipe) as handle: ...`` -- SADA inside the block, the original pipeline after it."""
    handle = enable(pipe, config, engine_factory=engine_factory, lockstep=lockstep)
    try:
        yield handle
    finally:
        disable(pipe)


def _pipeline_of(module_or_pipe, hook_config: SADAHookConfig):
    """The pipeline (or, for a bare denoiser, a minimal host holding it and the config's scheduler)."""
    if not isinstance(module_or_pipe, torch.nn.Module):
        return module_or_pipe
    host = module_or_pipe.__dict__.get("_sada_host")
    if host is not None:
        return host
    if hook_config.scheduler is None:
        raise TypeError(
            f"sada: apply_sada on a bare {type(module_or_pipe).__name__} needs the scheduler that drives "
            "it: SADAHookConfig(scheduler=pipe.scheduler), or pass the pipeline"
        )
    role = "transformer" if "Transformer" in type(module_or_pipe).__name__ else "unet"
    return _ModuleHost(role, module_or_pipe, hook_config.scheduler)


class _ModuleHost:
    """A bare denoiser and its scheduler, standing in for a pipeline (:func:`apply_sada` on a module)."""

    def __init__(self, role: str, module, scheduler):
        setattr(self, role, module)
        self.scheduler, self.module = scheduler, module


def apply_sada(module_or_pipe, config: SADAHookConfig | SADAConfig | None = None) -> SADAHandle:
    """diffusers' cache idiom for :func:`enable`: ``apply_sada(pipe, SADAHookConfig(config=...))``; a bare denoiser
    module needs ``SADAHookConfig(scheduler=pipe.scheduler)``. Applying twice raises
    :class:`~sada.errors.AlreadyEnabledError`, as diffusers' ``enable_cache`` does; :func:`remove_sada` undoes it."""
    hook_config = SADAHookConfig(config=config) if config is None or isinstance(config, SADAConfig) else config
    if not isinstance(hook_config, SADAHookConfig):
        raise TypeError(f"config must be a SADAHookConfig or a SADAConfig, got {type(config).__name__}")
    pipe = _pipeline_of(module_or_pipe, hook_config)
    handle = enable(pipe, hook_config.config, engine_factory=hook_config.engine_factory, lockstep=hook_config.lockstep)
    if isinstance(pipe, _ModuleHost):
        pipe.module._sada_host = pipe
    return handle


def remove_sada(module_or_pipe) -> None:
    """Undo :func:`apply_sada` (or :func:`enable`) on the pipeline or the bare denoiser it was applied to."""
    if isinstance(module_or_pipe, torch.nn.Module):
        host = module_or_pipe.__dict__.get("_sada_host")
        if host is None:
            raise RuntimeError(
                f"sada was not applied to this {type(module_or_pipe).__name__} (apply_sada(module, "
                "...)); to remove it from a pipeline, pass the pipeline"
            )
        disable(host)
        del module_or_pipe._sada_host
        return
    disable(module_or_pipe)
