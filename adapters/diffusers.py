"""SADA for diffusers pipelines, through diffusers' own hook mechanism (no class swapping, no copied code).

    handle = sada.adapters.diffusers.enable(pipe)        # or: with enabled(pipe) as handle: ...
    image = pipe(prompt, num_inference_steps=50).images[0]
    print(handle.summary())                             # computed 27/50 steps (1.85x), AM 6, Lagrange 17
    sada.adapters.diffusers.disable(pipe)               # the exact original objects are back

Two pieces per pipeline instance:

* the scheduler instance's ``step`` is wrapped (an instance attribute; ``disable`` deletes it): it
  records the guided model output, substitutes SADA's synthesised output for skipped samples, runs the
  unchanged solver step and decides the next step;
* a ``diffusers.hooks`` ``ModelHook`` named ``"sada"`` on the denoiser (``unet``/``transformer``) and on a
  ControlNet short-circuits the forward for samples that skip (only the rows that compute run).

State is per pipeline call: a run starts at the scheduler's first step, and any call whose timestep is
not the one SADA expects simply runs the network (so an exception mid-call leaves nothing behind).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from sada.config import SADAConfig
from sada.policy import Decision
from sada.torch_backend.engine import SADAEngine
from sada.torch_backend.pruning import TokenPruner, find_blocks
from sada.torch_backend.rows import scatter_rows, slice_rows, zeros_like_rows
from sada.trace import Trace
from sada.trajectory import DiscreteVPSchedule, RectifiedFlowSchedule, StepGrid

__all__ = ["enable", "disable", "enabled", "SADAHandle", "SUPPORTED_SCHEDULERS"]

HOOK_NAME = "sada"
# scheduler class -> how its ``sample`` is scaled: "vp" (x = alpha x0 + sigma eps), "edm" (x / alpha), "flow"
SUPPORTED_SCHEDULERS = {
    "DPMSolverMultistepScheduler": "vp", "DDIMScheduler": "vp", "UniPCMultistepScheduler": "vp",
    "EulerDiscreteScheduler": "edm", "HeunDiscreteScheduler": "edm", "FlowMatchEulerDiscreteScheduler": "flow",
}
TWO_STAGE = {"HeunDiscreteScheduler"}
DENOISERS = ("unet", "transformer")


def _scheduler_kind(scheduler) -> str:
    name = type(scheduler).__name__
    if name not in SUPPORTED_SCHEDULERS:
        raise ValueError(f"sada: scheduler {name} is not supported; supported: {sorted(SUPPORTED_SCHEDULERS)}")
    return SUPPORTED_SCHEDULERS[name]


def _prediction_kind(scheduler) -> str:
    if SUPPORTED_SCHEDULERS[type(scheduler).__name__] == "flow":
        return "flow_velocity"
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"sada: prediction_type {kind!r} is not supported (epsilon, v_prediction, sample)")
    return kind


@dataclass
class _Run:
    """One pipeline call: the engine, the run's grid and where the scheduler is in it."""

    engine: SADAEngine | None
    grid: StepGrid
    scaling: str
    timesteps: list  # the scheduler's timestep at every call of this run (two per step for Heun)
    pos: int = 0  # index into ``timesteps`` of the next scheduler call
    step: int = 0  # SADA step (first stage) of the next call
    second_stage: bool = False
    decisions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    done: bool = False


class _Controller:
    """Shared state of one enabled pipeline: config, current run, hooks' output templates."""

    def __init__(self, pipe, config: SADAConfig, engine_factory=None):
        self.pipe = pipe
        self.config = config
        self.engine_factory = engine_factory
        self.run: _Run | None = None
        self.last_trace: Trace | None = None
        self.templates: dict[str, object] = {}
        self.scheduler = None
        self.pruner = TokenPruner(config) if config.prunes_tokens else None
        self.latent_tokens: int | None = None

    # ------------------------------------------------------------------ scheduler wrapping
    def ensure_scheduler(self) -> None:
        """Wrap the pipeline's current scheduler instance (again, if the user swapped it)."""
        scheduler = self.pipe.scheduler
        if scheduler is self.scheduler:
            return
        _scheduler_kind(scheduler)
        self.release_scheduler()
        original = type(scheduler).step.__get__(scheduler)
        controller = self

        def step(model_output, timestep, sample, *args, **kwargs):
            return controller.scheduler_step(original, model_output, timestep, sample, *args, **kwargs)

        scheduler.step = step
        self.scheduler, self.run = scheduler, None

    def release_scheduler(self) -> None:
        if self.scheduler is not None and "step" in self.scheduler.__dict__:
            del self.scheduler.step
        self.scheduler, self.run = None, None

    # ------------------------------------------------------------------ grid of a run
    def _start_run(self, scheduler, timestep) -> _Run:
        scaling = _scheduler_kind(scheduler)
        all_t = [float(t) for t in scheduler.timesteps]
        pos = min(range(len(all_t)), key=lambda i: abs(all_t[i] - float(timestep)))
        calls = all_t[pos:]
        if type(scheduler).__name__ in TWO_STAGE:
            # [s_k, s_{k+1} (corrector), s_{k+1}, s_{k+2} (corrector), ..., 0]: first stages and the end point
            sig = scheduler.sigmas.double().cpu().numpy()[pos:]
            edm = np.append(sig[:1], sig[1::2])
        elif hasattr(scheduler, "sigmas") and scheduler.sigmas is not None and scaling != "flow":
            edm = np.append(scheduler.sigmas.double().cpu().numpy()[pos:-1], 0.0)
        else:
            edm = None
        if scaling == "flow":
            times = scheduler.sigmas.double().cpu().numpy()[pos:-1]
            grid = StepGrid.from_times(RectifiedFlowSchedule(), times)
        else:
            vp = DiscreteVPSchedule(scheduler.alphas_cumprod.double().cpu().numpy())
            grid = StepGrid.from_edm_sigmas(vp, edm) if edm is not None else StepGrid.from_times(vp, calls)
            # the training beta at the scheduler's own timestep of every step (first stages of two-stage solvers),
            # read from its own table as the official criterion does: never recovered from float32 sigmas
            first_stage = calls[::2] if type(scheduler).__name__ in TWO_STAGE else calls
            betas = scheduler.betas.double().cpu().numpy()
            grid = grid.with_training_beta(betas[np.asarray(first_stage[:grid.num_steps]).astype(np.int64)])
        kind = _prediction_kind(scheduler)
        try:
            if self.engine_factory is not None:
                engine = self.engine_factory(grid, kind)
            else:
                engine = SADAEngine(self.config.fit_steps(grid.num_steps), grid, kind,
                                    sample_scaling="edm" if scaling == "edm" else "schedule")
        except ValueError:
            engine = None  # too short for SADA: the run computes every step
        if self.pruner is not None:
            self.pruner.reset()
            self.pruner.config = getattr(engine, "config", None) or self.config
        return _Run(engine, grid, scaling, calls)

    def canonical(self, run: _Run, x: torch.Tensor, edm_sigma: float) -> torch.Tensor:
        if run.scaling == "edm":
            return x * run.grid.alpha_sigma_at(edm_sigma)[0]
        return x

    # ------------------------------------------------------------------ scheduler side
    def scheduler_step(self, original, model_output, timestep, sample, *args, **kwargs):
        scheduler = self.scheduler
        if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
            return original(model_output, timestep, sample, *args, **kwargs)
        run = self.run
        first_call = getattr(scheduler, "step_index", 0) is None
        if run is None or run.done or first_call or run.pos >= len(run.timesteps) \
                or abs(float(timestep) - run.timesteps[run.pos]) > 1e-4 * max(1.0, abs(float(timestep))):
            run = self.run = self._start_run(scheduler, timestep)
        if run.engine is None:
            return self._advance(run, original(model_output, timestep, sample, *args, **kwargs))
        engine, n = run.engine, run.step
        skipped = run.decisions != Decision.COMPUTE if run.decisions.size else np.zeros(sample.shape[0], bool)
        if run.second_stage:
            if skipped.any():
                s = float(run.grid.edm_sigma[n + 1])
                est = engine.intermediate_output(n, s, self.canonical(run, sample, s))
                model_output = torch.where(_rows(skipped, sample), est.to(model_output.dtype), model_output)
            return self._advance(run, original(model_output, timestep, sample, *args, **kwargs))
        xc = self.canonical(run, sample, float(run.grid.edm_sigma[n]))
        self.latent_tokens = int(np.prod(sample.shape[2:])) if sample.ndim == 4 else int(sample.shape[1])
        if n == 0:
            run.decisions = engine.begin_step(0, xc)
            skipped = run.decisions != Decision.COMPUTE
        if skipped.any():
            model_output = torch.where(_rows(skipped, sample), engine.synthesise(n, xc).to(model_output.dtype),
                                       model_output)
        engine.record(n, xc, model_output)
        return self._advance(run, original(model_output, timestep, sample, *args, **kwargs))

    def _advance(self, run: _Run, result):
        scheduler = self.scheduler
        run.pos += 1
        if run.engine is not None and type(scheduler).__name__ in TWO_STAGE and not run.second_stage \
                and not scheduler.state_in_first_order:
            run.second_stage = True
            return result
        run.second_stage = False
        run.step += 1
        if run.engine is None or run.step >= run.grid.num_steps:
            run.done = True
            if run.engine is not None:
                self.last_trace = run.engine.trace
            run.decisions = np.zeros(0, np.int8)
            return result
        prev = result.prev_sample if hasattr(result, "prev_sample") else result[0]
        n = run.step
        run.decisions = run.engine.begin_step(n, self.canonical(run, prev, float(run.grid.edm_sigma[n])))
        self.last_trace = run.engine.trace
        if self.pruner is not None:
            self._record_pruning(run, n)
            self.pruner.plan_step(n, run.decisions == Decision.COMPUTE, run.engine.token_map())
        return result

    def _record_pruning(self, run: _Run, step: int) -> None:
        stats, trace = self.pruner.stats, run.engine.trace
        info = trace.extras.setdefault("pruning", {"token_fraction": {}, "cache_bytes": 0})
        if stats["tokens_total"]:
            info["token_fraction"][step - 1] = stats["tokens_in"] / stats["tokens_total"]
        info["cache_bytes"] = max(info["cache_bytes"], self.pruner.cache_bytes())
        self.pruner.stats = {"tokens_in": 0, "tokens_total": 0}

    def prunes(self, role: str, index: int, tokens: int) -> bool:
        """Whether block ``index`` of the denoiser (with ``tokens`` image tokens) is pruned."""
        cfg = self.pruner.config
        if role == "unet":
            if not self.latent_tokens or tokens > self.latent_tokens:
                return False
            return math.ceil(math.sqrt(self.latent_tokens / tokens)) <= cfg.max_downsample
        return index in cfg.prune_blocks

    # ------------------------------------------------------------------ denoiser side
    def plan(self, timestep_value: float | None, rows: int):
        """Row mask of the module's batch that must run, or ``None`` (= run everything normally)."""
        run = self.run
        if run is None or run.done or run.engine is None or not run.decisions.size or timestep_value is None:
            return None
        expected = run.timesteps[run.pos] if run.pos < len(run.timesteps) else None
        if expected is None or not any(abs(timestep_value - e) <= 1e-4 * max(1.0, abs(e))
                                       for e in (expected, expected / 1000.0)):
            return None
        samples = run.decisions.size
        if rows % samples:
            return None
        compute = run.decisions == Decision.COMPUTE
        return np.tile(compute, rows // samples)


def _rows(mask: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(mask, device=like.device).reshape((-1,) + (1,) * (like.ndim - 1))


def _timestep_of(module, args, kwargs):
    t = kwargs.get("timestep")
    if t is None:
        names = list(getattr(module, "_sada_forward_params", ()))
        if "timestep" in names and names.index("timestep") < len(args):
            t = args[names.index("timestep")]
    if t is None:
        return None
    t = torch.as_tensor(t)
    return float(t.flatten()[0]) if t.numel() else None


def _batch_of(args, kwargs) -> int | None:
    first = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim else None


def _make_hook_class():
    from diffusers.hooks import ModelHook

    class SkipHook(ModelHook):
        """Runs the module only on the rows whose sample computes at this step."""

        def __init__(self, controller: _Controller, role: str):
            super().__init__()
            self.controller, self.role = controller, role

        def initialize_hook(self, module):
            import inspect
            params = [p for p in inspect.signature(module.forward).parameters if p != "self"]
            module._sada_forward_params = tuple(params)
            return module

        def deinitalize_hook(self, module):
            if "_sada_forward_params" in module.__dict__:
                del module._sada_forward_params
            return module

        def new_forward(self, module, *args, **kwargs):
            ctl = self.controller
            ctl.ensure_scheduler()
            original = self.fn_ref.original_forward
            rows = _batch_of(args, kwargs)
            mask = ctl.plan(_timestep_of(module, args, kwargs), rows) if rows else None
            pruner = ctl.pruner
            if mask is None or mask.all():
                if pruner is not None:
                    pruner.active_rows, pruner.total_rows = None, rows
                out = original(*args, **kwargs)
                ctl.templates[self.role] = _template(out)
                return out
            if not mask.any() and self.role in ctl.templates:
                return zeros_like_rows(ctl.templates[self.role], rows)
            idx = torch.as_tensor(np.flatnonzero(mask), dtype=torch.long)
            if pruner is not None:
                pruner.active_rows, pruner.total_rows = idx, rows
            out = original(*slice_rows(args, idx, rows), **slice_rows(kwargs, idx, rows))
            return scatter_rows(out, idx.to(_device_of(out)), rows)

    class BlockHook(ModelHook):
        """Token-wise pruning of one transformer block (decided per call by resolution or index)."""

        def __init__(self, controller: _Controller, role: str, index: int, key: str):
            super().__init__()
            self.controller, self.role, self.index, self.key = controller, role, index, key

        def new_forward(self, module, *args, **kwargs):
            original = self.fn_ref.original_forward
            ctl = self.controller
            hidden = args[0] if args else kwargs.get("hidden_states")
            run = ctl.run
            if ctl.pruner is None or run is None or run.engine is None or hidden is None or hidden.ndim != 3 \
                    or kwargs.get("attention_mask") is not None or not ctl.prunes(self.role, self.index, hidden.shape[1]):
                return original(*args, **kwargs)
            return ctl.pruner.run_block(self.key, type(module).__name__, original, args, kwargs)

    return SkipHook, BlockHook


def _template(out):
    from sada.torch_backend.rows import map_tensors
    return map_tensors(out, lambda t: t[:1].detach().clone() if t.ndim else t.detach().clone())


def _device_of(out):
    from sada.torch_backend.rows import map_tensors
    found = []
    map_tensors(out, lambda t: found.append(t.device) or t)
    return found[0] if found else "cpu"


class SADAHandle:
    """What ``enable`` returns: the trace of the latest run, ``summary()``, ``configure()``, ``disable()``."""

    def __init__(self, pipe, controller: _Controller, hooked: list):
        self.pipe, self._controller, self._hooked = pipe, controller, hooked

    @property
    def config(self) -> SADAConfig:
        return self._controller.config

    @property
    def trace(self) -> Trace | None:
        """Trace of the latest (or running) pipeline call."""
        return self._controller.last_trace

    def summary(self) -> str:
        return "no run yet" if self.trace is None else self.trace.summary()

    def configure(self, config: SADAConfig) -> None:
        """Replace the config (takes effect at the next pipeline call)."""
        if not isinstance(config, SADAConfig):
            raise TypeError(f"config must be a SADAConfig, got {type(config).__name__}")
        self._controller.config = config
        self._controller.run = None
        if (self._controller.pruner is not None) != config.prunes_tokens:
            raise ValueError("configure() cannot switch token pruning on or off: disable(pipe) and enable it again")
        if self._controller.pruner is not None:
            self._controller.pruner.config = config

    def disable(self) -> None:
        disable(self.pipe)


def _denoiser_modules(pipe) -> list[tuple[str, torch.nn.Module]]:
    found = [(name, getattr(pipe, name)) for name in DENOISERS if isinstance(getattr(pipe, name, None), torch.nn.Module)]
    if not found:
        raise TypeError(f"sada: {type(pipe).__name__} has no unet or transformer to accelerate")
    controlnet = getattr(pipe, "controlnet", None)
    if isinstance(controlnet, torch.nn.Module):
        found.append(("controlnet", controlnet))
    return found


def enable(pipe, config: SADAConfig | None = None, *, engine_factory=None) -> SADAHandle:
    """Enable SADA on a diffusers pipeline instance; returns a :class:`SADAHandle`.

    Enabling twice is an error (use ``handle.configure(config)`` to change the config). Raises
    ``ValueError`` naming the supported schedulers when the pipeline's scheduler is not one of them.
    ``engine_factory(grid, kind)`` replaces the SADA engine by another one with its protocol (the
    benchmark runs peer methods such as :class:`sada.torch_backend.peers.AdaptiveDiffusionEngine` this way).
    """
    from diffusers.hooks import HookRegistry

    config = config or SADAConfig()
    if not isinstance(config, SADAConfig):
        raise TypeError(f"config must be a SADAConfig, got {type(config).__name__}")
    if getattr(pipe, "_sada_handle", None) is not None:
        raise RuntimeError("sada is already enabled on this pipeline: use handle.configure(config) to change the "
                           "config, or disable(pipe) first")
    if getattr(pipe, "scheduler", None) is None:
        raise TypeError(f"sada: {type(pipe).__name__} has no scheduler")
    _scheduler_kind(pipe.scheduler)
    modules = _denoiser_modules(pipe)
    controller = _Controller(pipe, config, engine_factory)
    controller.ensure_scheduler()
    hook_class, block_hook_class = _make_hook_class()
    hooked = []
    for role, module in modules:
        had_registry = hasattr(module, "_diffusers_hook")
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook_class(controller, role), HOOK_NAME)
        hooked.append((module, had_registry))
    if config.prunes_tokens:
        role, denoiser = modules[0]
        for index, (name, block) in enumerate(find_blocks(denoiser)):
            if role == "unet" or index in config.prune_blocks:
                had_registry = hasattr(block, "_diffusers_hook")
                HookRegistry.check_if_exists_or_initialize(block).register_hook(
                    block_hook_class(controller, role, index, name), HOOK_NAME)
                hooked.append((block, had_registry))
    handle = SADAHandle(pipe, controller, hooked)
    pipe._sada_handle = handle
    return handle


def disable(pipe) -> None:
    """Remove SADA from ``pipe``: hooks removed, the scheduler's own ``step`` and the modules' own ``forward`` back."""
    handle = getattr(pipe, "_sada_handle", None)
    if handle is None:
        raise RuntimeError("sada is not enabled on this pipeline")
    controller = handle._controller
    controller.release_scheduler()
    for module, had_registry in handle._hooked:
        registry = module._diffusers_hook
        registry.remove_hook(HOOK_NAME, recurse=False)
        if not registry.hooks:  # the registry re-assigned the original bound forward: drop that instance attribute
            forward = module.__dict__.get("forward")
            if forward is not None and getattr(forward, "__func__", None) is type(module).forward:
                del module.forward
            if not had_registry:
                del module._diffusers_hook
    del pipe._sada_handle


@contextlib.contextmanager
def enabled(pipe, config: SADAConfig | None = None, *, engine_factory=None):
    """``with enabled(pipe) as handle: ...`` -- SADA inside the block, the original pipeline after it."""
    handle = enable(pipe, config, engine_factory=engine_factory)
    try:
        yield handle
    finally:
        disable(pipe)
