"""SADA for diffusers pipelines, through diffusers' own hook mechanism (no class swapping, no copied code).

    handle = sada.adapters.diffusers.enable(pipe)        # or: with enabled(pipe) as handle: ...
    image = pipe(prompt, num_inference_steps=50).images[0]
    print(handle.summary())                             # computed 27/50 steps (1.85x), AM 6, Lagrange 17
    sada.adapters.diffusers.disable(pipe)               # the exact original objects are back

Two pieces per pipeline:

* the scheduler instance's ``step`` is wrapped (an instance attribute that keeps the original's signature, so the
  pipeline still passes ``eta`` / ``generator``; ``disable`` deletes it): it completes the model output of every
  step through the engine (synthesised outputs for the samples that skip), runs the unchanged solver step and
  plans the next step;
* a ``diffusers.hooks`` ``ModelHook`` named ``"sada"`` on the denoiser (``unet`` / ``transformer`` /
  ``transformer_2``) and on a ControlNet runs the module on the rows that compute only.

State is per pipeline call: a run starts at the scheduler's first step, and any call whose timestep is not the one
SADA expects simply runs the network (so an exception mid-call leaves nothing behind). Pipelines built from another
pipeline's components (``Pipeline(**other.components)``) may share the denoiser and the scheduler: each enabled
pipeline keeps its own state, and the shared hook serves the pipeline whose call is running.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import math

import numpy as np
import torch

from sada.adapters._diffusers_controller import Controller, _batch_of, _slice_call, _timestep_of
from sada.adapters._diffusers_scheduler import describe_scheduler
from sada.config import SADAConfig
from sada.torch_backend.compiled import is_compiled, resolve_lockstep
from sada.torch_backend.pruning import TokenPruner, find_blocks
from sada.torch_backend.rows import map_tensors, scatter_rows, zeros_like_rows
from sada.trace import Trace

__all__ = ["enable", "disable", "enabled", "SADAHandle", "DENOISERS"]

HOOK_NAME = "sada"
DENOISERS = ("unet", "transformer", "transformer_2")


def _pipeline_in_frames(controllers, depth: int = 16):
    """The controller of the enabled pipeline whose ``__call__`` is running (for shared modules/schedulers)."""
    frame = sys._getframe(2)
    for _ in range(depth):
        if frame is None:
            return None
        handle = getattr(frame.f_locals.get("self"), "_sada_handle", None)
        if handle is not None and handle._controller in controllers:
            return handle._controller
        frame = frame.f_back
    return None


def _active(controllers: list):
    if len(controllers) == 1:
        return controllers[0]
    return _pipeline_in_frames(controllers)


class _StepWrapper:
    """The scheduler instance's ``step``: dispatches to the enabled pipeline that owns the call."""

    def __init__(self, scheduler):
        self.original = type(scheduler).step.__get__(scheduler)
        self.controllers: list[Controller] = []

        @functools.wraps(self.original)
        def step(*args, **kwargs):
            controller = _active(self.controllers)
            if controller is None:
                return self.original(*args, **kwargs)
            if len(args) < 3:  # model_output / timestep / sample passed by keyword
                names = ("model_output", "timestep", "sample")
                args = args + tuple(kwargs.pop(n) for n in names[len(args):] if n in kwargs)
            return controller.scheduler_step(self.original, *args, **kwargs)

        step._sada_wrapper = self
        self.function = step


def _make_hook_classes():
    from diffusers.hooks import ModelHook

    class SkipHook(ModelHook):
        """Runs the module only on the rows whose sample computes at this step (shared by pipelines)."""

        def __init__(self, role: str):
            super().__init__()
            self.role = role
            self.controllers: list[Controller] = []
            self.template = None

        def initialize_hook(self, module):
            import inspect
            inner = getattr(module, "_orig_mod", module)  # torch.compile(module): the compiled forward is (*args)
            module._sada_forward_params = tuple(p for p in inspect.signature(inner.forward).parameters if p != "self")
            return module

        def deinitalize_hook(self, module):
            getattr(module, "_orig_mod", module).__dict__.pop("_sada_forward_params", None)
            return module

        def new_forward(self, module, *args, **kwargs):
            original = self.fn_ref.original_forward
            ctl = _active(self.controllers)
            if ctl is not None:
                _follow_scheduler(ctl)
            rows = _batch_of(args, kwargs)
            mask = ctl.rows_mask(_timestep_of(module, args, kwargs), rows) if ctl is not None and rows else None
            pruner = None if ctl is None else ctl.pruner
            if mask is None or mask.all():
                if pruner is not None:
                    pruner.active_rows, pruner.total_rows = None, rows
                out = original(*args, **kwargs)
                self.template = map_tensors(out, lambda t: t[:1].detach().clone() if t.ndim else t.detach().clone())
                return out
            if not mask.any() and self.template is not None:
                return zeros_like_rows(self.template, rows)
            idx = torch.as_tensor(np.flatnonzero(mask), dtype=torch.long)
            if pruner is not None:
                pruner.active_rows, pruner.total_rows = idx, rows
            sub_args, sub_kwargs = _slice_call(args, kwargs, idx, rows)
            out = original(*sub_args, **sub_kwargs)
            device = next(iter(_tensors(out)), torch.empty(0)).device
            return scatter_rows(out, idx.to(device), rows)

    class BlockHook(ModelHook):
        """Token-wise pruning of one transformer block (decided per call by resolution or index)."""

        def __init__(self, role: str, index: int, key: str):
            super().__init__()
            self.role, self.index, self.key = role, index, key
            self.controllers: list[Controller] = []

        def new_forward(self, module, *args, **kwargs):
            original = self.fn_ref.original_forward
            ctl = _active(self.controllers)
            hidden = args[0] if args else kwargs.get("hidden_states")
            run = None if ctl is None else ctl.run
            if ctl is None or ctl.pruner is None or run is None or run.engine is None or hidden is None \
                    or hidden.ndim != 3 or kwargs.get("attention_mask") is not None \
                    or not _prunes(ctl, self.role, self.index, hidden.shape[1]):
                return original(*args, **kwargs)
            return ctl.pruner.run_block(self.key, module, original, args, kwargs)

    return SkipHook, BlockHook


def _tensors(out):
    found = []
    map_tensors(out, lambda t: found.append(t) or t)
    return found


def _prunes(ctl: Controller, role: str, index: int, tokens: int) -> bool:
    """Whether block ``index`` of the denoiser (with ``tokens`` image tokens) is pruned at this call."""
    cfg = ctl.pruner.config.pruning
    if role == "unet":
        if not ctl.latent_tokens or tokens > ctl.latent_tokens:
            return False
        return math.ceil(math.sqrt(ctl.latent_tokens / tokens)) <= cfg.max_downsample
    return index in cfg.prune_blocks


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
    found = [(name, getattr(pipe, name)) for name in DENOISERS if isinstance(getattr(pipe, name, None), torch.nn.Module)]
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
            raise ValueError(f"prune_blocks={pruning.prune_blocks} selects transformer blocks of a DiT; this pipeline's "
                             f"denoiser is a U-Net: use max_downsample to choose its blocks by resolution")
        return [(role, i, name, block) for i, (name, block) in enumerate(blocks)]
    if pruning.max_downsample:
        raise ValueError(f"max_downsample={pruning.max_downsample} selects U-Net blocks by resolution; this pipeline's "
                         f"denoiser is a transformer with {len(blocks)} prunable blocks: use prune_blocks")
    unknown = [i for i in pruning.prune_blocks if i >= len(blocks)]
    if unknown:
        raise ValueError(f"prune_blocks has indices {unknown} but {type(denoiser).__name__} has {len(blocks)} "
                         f"prunable blocks (0..{len(blocks) - 1})")
    return [(role, i, name, block) for i, (name, block) in enumerate(blocks) if i in pruning.prune_blocks]


def _attach(module, name: str, make, controller: Controller, hooked: list) -> None:
    """Register our hook on ``module`` (or join the one another enabled pipeline registered there)."""
    from diffusers.hooks import HookRegistry

    had_registry = hasattr(module, "_diffusers_hook")
    registry = HookRegistry.check_if_exists_or_initialize(module)
    hook = registry.get_hook(name)
    if hook is None:
        hook = make()
        hook.created_registry = not had_registry  # remove the registry with the hook's last user
        registry.register_hook(hook, name)
    for other in hook.controllers:
        _link(controller, other)
    hook.controllers.append(controller)
    hooked.append((module, hook))


def _link(a: Controller, b: Controller) -> None:
    if b not in a.peers:
        a.peers.append(b)
    if a not in b.peers:
        b.peers.append(a)


def _detach(module, name: str, hook, controller: Controller) -> None:
    hook.controllers.remove(controller)
    if hook.controllers:
        return
    registry = module._diffusers_hook
    registry.remove_hook(name, recurse=False)
    if not registry.hooks:  # the registry re-assigned the original bound forward: drop that instance attribute
        forward = module.__dict__.get("forward")
        if forward is not None and getattr(forward, "__func__", None) is type(module).forward:
            del module.forward
        if hook.created_registry:
            del module._diffusers_hook


def _wrap_scheduler(scheduler, controller: Controller) -> _StepWrapper:
    current = scheduler.__dict__.get("step")
    wrapper = getattr(current, "_sada_wrapper", None)
    if wrapper is None:
        if current is not None:
            raise RuntimeError(f"sada: {type(scheduler).__name__}.step is already replaced on this instance by "
                               "something else; remove that first")
        wrapper = _StepWrapper(scheduler)
        scheduler.step = wrapper.function
    for other in wrapper.controllers:
        _link(controller, other)
    wrapper.controllers.append(controller)
    return wrapper


def _follow_scheduler(controller: Controller) -> None:
    """Move the wrapper to the pipeline's scheduler if the user replaced it after ``enable``."""
    handle = controller.pipe._sada_handle
    scheduler, wrapper = handle._scheduler
    if controller.pipe.scheduler is scheduler:
        return
    info = describe_scheduler(controller.pipe.scheduler)
    _unwrap_scheduler(scheduler, wrapper, controller)
    handle._scheduler = (controller.pipe.scheduler, _wrap_scheduler(controller.pipe.scheduler, controller))
    controller.info, controller._info_of, controller.run = info, id(controller.pipe.scheduler), None


def _unwrap_scheduler(scheduler, wrapper: _StepWrapper, controller: Controller) -> None:
    wrapper.controllers.remove(controller)
    if not wrapper.controllers and scheduler.__dict__.get("step") is wrapper.function:
        del scheduler.step


def enable(pipe, config: SADAConfig | None = None, *, engine_factory=None, lockstep: bool | None = None) -> SADAHandle:
    """Enable SADA on a diffusers pipeline instance; returns a :class:`SADAHandle`.

    Everything is validated before anything is changed: the config, the scheduler (a ``ValueError`` names the
    setting SADA cannot follow), the denoiser and the pruned blocks. Enabling twice is an error (use
    ``handle.configure(config)``). ``engine_factory(grid, kind)`` replaces the SADA engine by another engine with the
    same contract (the benchmark runs peer methods such as
    :class:`sada.torch_backend.peers.AdaptiveDiffusionEngine` this way). ``lockstep``: batch-level decisions (every
    row computes or every row skips); ``None`` (default) turns it on when the denoiser is ``torch.compile``d, so a
    compiled network never sees partial batches (``False`` forces per-sample decisions).
    """
    config = SADAConfig() if config is None else config
    if not isinstance(config, SADAConfig):
        raise TypeError(f"config must be a SADAConfig, got {type(config).__name__}")
    if getattr(pipe, "_sada_handle", None) is not None:
        raise RuntimeError("sada is already enabled on this pipeline: use handle.configure(config) to change the "
                           "config, or disable(pipe) first")
    if getattr(pipe, "scheduler", None) is None:
        raise TypeError(f"sada: {type(pipe).__name__} has no scheduler")
    info = describe_scheduler(pipe.scheduler)
    modules = _denoiser_modules(pipe)
    resolve_lockstep(lockstep, None)  # validates it
    if config.prunes_tokens and any(is_compiled(m) for _, m in modules):
        raise ValueError("sada: token pruning hooks blocks inside the denoiser, which torch.compile traces; "
                         "enable pruning on the uncompiled denoiser (or disable pruning for a compiled one)")
    blocks = _check_pruning(config, modules)
    current = pipe.scheduler.__dict__.get("step")
    if current is not None and getattr(current, "_sada_wrapper", None) is None:
        raise RuntimeError(f"sada: {type(pipe.scheduler).__name__}.step is already replaced on this instance by "
                           "something else; remove that first")
    # validated: now change things, undoing them all if anything fails
    pruner = TokenPruner(config) if config.prunes_tokens else None
    controller = Controller(pipe, config, info, engine_factory, pruner, lockstep)
    skip_hook, block_hook = _make_hook_classes()
    hooked: list = []
    wrapper = None
    try:
        wrapper = _wrap_scheduler(pipe.scheduler, controller)
        for role, module in modules:
            _attach(module, HOOK_NAME, lambda role=role: skip_hook(role), controller, hooked)
        for role, index, name, block in blocks:
            _attach(block, HOOK_NAME, lambda role=role, index=index, name=name: block_hook(role, index, name),
                    controller, hooked)
    except Exception:
        for module, hook in reversed(hooked):
            _detach(module, HOOK_NAME, hook, controller)
        if wrapper is not None:
            _unwrap_scheduler(pipe.scheduler, wrapper, controller)
        raise
    handle = SADAHandle(pipe, controller, hooked)
    handle._scheduler = (pipe.scheduler, wrapper)
    pipe._sada_handle = handle
    return handle


def disable(pipe) -> None:
    """Remove SADA from ``pipe``: its hooks and its scheduler wrapper (other pipelines sharing components keep theirs);
    with nothing else enabled on them, the modules' own ``forward`` and the scheduler's own ``step`` are back."""
    handle = getattr(pipe, "_sada_handle", None)
    if handle is None:
        raise RuntimeError("sada is not enabled on this pipeline")
    controller = handle._controller
    scheduler, wrapper = handle._scheduler
    _unwrap_scheduler(scheduler, wrapper, controller)
    for module, hook in reversed(handle._hooked):
        _detach(module, HOOK_NAME, hook, controller)
    for peer in controller.peers:
        if controller in peer.peers:
            peer.peers.remove(controller)
    del pipe._sada_handle


@contextlib.contextmanager
def enabled(pipe, config: SADAConfig | None = None, *, engine_factory=None, lockstep: bool | None = None):
    """``with enabled(pipe) as handle: ...`` -- SADA inside the block, the original pipeline after it."""
    handle = enable(pipe, config, engine_factory=engine_factory, lockstep=lockstep)
    try:
        yield handle
    finally:
        disable(pipe)
