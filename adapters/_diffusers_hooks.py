"""The pieces SADA attaches to a diffusers pipeline, and which enabled pipeline a call belongs to.

* :class:`SkipHook` (a ``diffusers.hooks.ModelHook`` named ``"sada"``) on the denoiser and a ControlNet: runs the
  module on the rows that compute only, and reports the rows that entered it;
* :class:`BlockHook` on a pruned transformer block (token pruning);
* :class:`StepWrapper`: the scheduler instance's ``step``;
* :class:`ProgressBarOwner`: the pipeline instance's ``progress_bar``, which every diffusers pipeline calls when its
  denoising loop starts; it records the running pipeline in a :class:`contextvars.ContextVar`, so that a denoiser
  or a scheduler shared by several enabled pipelines (``Pipeline(**other.components)``) serves the one whose call is
  running -- without walking stack frames.

Hooks and wrappers are shared by the pipelines whose components they sit on (``controllers``).
"""

from __future__ import annotations

import contextvars
import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook

from sada.adapters._diffusers_calls import batch_of, forward_params, slice_call, timestep_of
from sada.adapters._diffusers_controller import Controller
from sada.adapters._diffusers_scheduler import describe_scheduler
from sada.torch_backend.rows import map_tensors, scatter_rows, zeros_like_rows

__all__ = [
    "HOOK_NAME",
    "RUNNING",
    "SkipHook",
    "BlockHook",
    "StepWrapper",
    "ProgressBarOwner",
    "active",
    "attach",
    "detach",
    "wrap_scheduler",
    "unwrap_scheduler",
    "follow_scheduler",
]

HOOK_NAME = "sada"
DENOISERS = ("unet", "transformer", "transformer_2")
RUNNING: contextvars.ContextVar = contextvars.ContextVar("sada_running_pipeline", default=None)


def active(controllers: list) -> Controller | None:
    """The controller a shared hook or wrapper serves now: its only one, or the running pipeline's."""
    if len(controllers) == 1:
        return controllers[0]
    running = RUNNING.get()
    return running if running in controllers else None


class ProgressBarOwner:
    """The pipeline instance's ``progress_bar``: marks the pipeline as running, then the original."""

    def __init__(self, pipe, controller: Controller):
        self.previous = pipe.__dict__.get("progress_bar")  # another instance-level replacement, restored on removal
        self.original = self.previous if self.previous is not None else type(pipe).progress_bar.__get__(pipe)
        self.controller = controller
        functools.update_wrapper(self, self.original)

    def __call__(self, *args, **kwargs):
        RUNNING.set(self.controller)
        return self.original(*args, **kwargs)


class StepWrapper:
    """The scheduler instance's ``step``: dispatches to the enabled pipeline that owns the call."""

    def __init__(self, scheduler):
        self.original = type(scheduler).step.__get__(scheduler)
        self.controllers: list[Controller] = []

        @functools.wraps(self.original)
        def step(*args, **kwargs):
            controller = active(self.controllers)
            if controller is None:
                return self.original(*args, **kwargs)
            if len(args) < 3:  # model_output / timestep / sample passed by keyword
                names = ("model_output", "timestep", "sample")
                args = args + tuple(kwargs.pop(n) for n in names[len(args) :] if n in kwargs)
            return controller.scheduler_step(self.original, *args, **kwargs)

        step._sada_wrapper = self
        self.function = step


def _tensors(out) -> list:
    found = []

    def keep(t):
        found.append(t)
        return t

    map_tensors(out, keep)
    return found


class SkipHook(ModelHook):
    """Runs the module only on the rows whose sample computes at this step (shared by pipelines)."""

    def __init__(self, role: str):
        super().__init__()
        self.role = role
        self.controllers: list[Controller] = []
        self.template = None
        self.params: tuple[str, ...] = ()
        self.created_registry = False

    def initialize_hook(self, module):
        self.params = forward_params(module)
        return module

    def new_forward(self, module, *args, **kwargs):
        original = self.fn_ref.original_forward
        ctl = active(self.controllers)
        if ctl is not None:
            follow_scheduler(ctl)
        rows = batch_of(args, kwargs)
        mask = None
        if ctl is not None and rows:
            mask = ctl.rows_mask(timestep_of(self.params, args, kwargs), rows, ctl.pipe.scheduler)
        pruner = None if ctl is None else ctl.pruner
        counts = ctl is not None and self.role in DENOISERS and rows is not None
        if mask is None or mask.all():
            if pruner is not None:
                pruner.set_call_rows(None, rows)
            out = original(*args, **kwargs)
            if counts:
                ctl.note_rows(None, rows)
            self.template = map_tensors(out, lambda t: t[:1].detach().clone() if t.ndim else t.detach().clone())
            return out
        if not mask.any() and self.template is not None:
            return zeros_like_rows(self.template, rows)
        idx = torch.as_tensor(np.flatnonzero(mask), dtype=torch.long)
        if pruner is not None:
            pruner.set_call_rows(idx, rows)
        sub_args, sub_kwargs = slice_call(args, kwargs, idx, rows)
        out = original(*sub_args, **sub_kwargs)
        if counts:
            ctl.note_rows(idx.numpy(), rows)
        device = next(iter(_tensors(out)), torch.empty(0)).device
        return scatter_rows(out, idx.to(device), rows)


class BlockHook(ModelHook):
    """Token-wise pruning of one transformer block (decided per call by resolution or index)."""

    def __init__(self, role: str, index: int, key: str):
        super().__init__()
        self.role, self.index, self.key = role, index, key
        self.controllers: list[Controller] = []
        self.created_registry = False

    def new_forward(self, module, *args, **kwargs):
        original = self.fn_ref.original_forward
        ctl = active(self.controllers)
        hidden = args[0] if args else kwargs.get("hidden_states")
        run = None if ctl is None else ctl.run
        if (
            ctl is None
            or ctl.pruner is None
            or run is None
            or run.engine is None
            or hidden is None
            or hidden.ndim != 3
            or kwargs.get("attention_mask") is not None
            or not _prunes(ctl, self.role, self.index, hidden.shape[1])
        ):
            return original(*args, **kwargs)
        return ctl.pruner.run_block(self.key, module, original, args, kwargs)


def _prunes(ctl: Controller, role: str, index: int, tokens: int) -> bool:
    """Whether block ``index`` of the denoiser (with ``tokens`` image tokens) is pruned at this call."""
    cfg = ctl.pruner.config.pruning
    if role == "unet":
        if not ctl.latent_tokens or tokens > ctl.latent_tokens:
            return False
        return math.ceil(math.sqrt(ctl.latent_tokens / tokens)) <= cfg.max_downsample
    return index in cfg.prune_blocks


# ---------------------------------------------------------------------- attaching and detaching
def attach(module, make: Callable[[], Any], controller: Controller, hooked: list) -> None:
    """Register our hook on ``module`` (or join the one another enabled pipeline registered there)."""
    had_registry = hasattr(module, "_diffusers_hook")
    registry = HookRegistry.check_if_exists_or_initialize(module)
    hook: Any = registry.get_hook(HOOK_NAME)  # our SkipHook / BlockHook (they carry .controllers)
    if hook is None:
        hook = make()
        hook.created_registry = not had_registry  # remove the registry with the hook's last user
        registry.register_hook(hook, HOOK_NAME)
    for other in hook.controllers:
        _link(controller, other)
    hook.controllers.append(controller)
    hooked.append((module, hook))


def _link(a: Controller, b: Controller) -> None:
    if b not in a.peers:
        a.peers.append(b)
    if a not in b.peers:
        b.peers.append(a)


def detach(module, hook, controller: Controller) -> None:
    hook.controllers.remove(controller)
    if hook.controllers:
        return
    registry = module._diffusers_hook
    registry.remove_hook(HOOK_NAME, recurse=False)
    if not registry.hooks:  # the registry re-assigned the original bound forward: drop that instance attribute
        forward = module.__dict__.get("forward")
        if forward is not None and getattr(forward, "__func__", None) is type(module).forward:
            del module.forward
        if hook.created_registry:
            del module._diffusers_hook


def wrap_scheduler(scheduler, controller: Controller) -> StepWrapper:
    current = scheduler.__dict__.get("step")
    wrapper = getattr(current, "_sada_wrapper", None)
    if wrapper is None:
        if current is not None:
            raise RuntimeError(
                f"sada: {type(scheduler).__name__}.step is already replaced on this instance by "
                "something else; remove that first"
            )
        wrapper = StepWrapper(scheduler)
        scheduler.step = wrapper.function
    for other in wrapper.controllers:
        _link(controller, other)
    wrapper.controllers.append(controller)
    return wrapper


def unwrap_scheduler(scheduler, wrapper: StepWrapper, controller: Controller) -> None:
    wrapper.controllers.remove(controller)
    if not wrapper.controllers and scheduler.__dict__.get("step") is wrapper.function:
        del scheduler.step


def follow_scheduler(controller: Controller) -> None:
    """Move the wrapper to the pipeline's scheduler if the user replaced it after ``enable``."""
    scheduler, wrapper = controller.scheduler_binding
    if controller.pipe.scheduler is scheduler:
        return
    info = describe_scheduler(controller.pipe.scheduler)
    unwrap_scheduler(scheduler, wrapper, controller)
    controller.scheduler_binding = (controller.pipe.scheduler, wrap_scheduler(controller.pipe.scheduler, controller))
    controller.use_scheduler(controller.pipe.scheduler, info)
