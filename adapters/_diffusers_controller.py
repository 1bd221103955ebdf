"""Per-pipeline state of the diffusers adapter: one run per pipeline call, driven by the scheduler's calls.

The wrapped ``scheduler.step`` starts a run at the scheduler's first call (a new timestep schedule, or a call that
is not the one the current run expects), completes every step through the engine contract
(:mod:`sada.engine.contract`) and plans the next step from the solver's result; the denoiser hook asks
:meth:`Controller.rows_mask` which rows of its batch must run.
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from sada.adapters._diffusers_scheduler import SchedulerInfo, describe_scheduler, step_noise_reason
from sada.config import SADAConfig, fit_for_run
from sada.torch_backend.compiled import LOCKSTEP_NOTE, resolve_lockstep
from sada.torch_backend.engine import SADAEngine
from sada.torch_backend.rows import slice_rows
from sada.trace import Trace
from sada.trajectory import StepGrid

__all__ = ["Controller", "Run"]

NETWORKS = ("unet", "transformer", "transformer_2", "controlnet")  # modules whose compilation sets lockstep
# keyword arguments that never carry the batch (tables shared by all rows), whatever their first dimension
UNBATCHED_ARGUMENTS = frozenset({"image_rotary_emb", "rotary_emb", "freqs_cis", "img_ids", "txt_ids",
                                 "rotary_embedding", "position_ids"})


@dataclass
class Run:
    """One pipeline call: the engine (``None``: every step computes exactly), its grid and the scheduler position."""

    engine: object | None
    grid: StepGrid | None
    info: SchedulerInfo
    timesteps: list  # the scheduler's timestep at every call of this run (two per step for Heun)
    note: str = ""  # why the run computes exactly, if it does
    pos: int = 0  # index into ``timesteps`` of the next scheduler call
    step: int = 0  # SADA step of the next first-stage call
    second_stage: bool = False
    compute: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # rows that compute at ``step``
    done: bool = False


def _rows(mask: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(mask, device=like.device).reshape((-1,) + (1,) * (like.ndim - 1))


class Controller:
    """State of one enabled pipeline: config, scheduler capabilities, the current run and token pruning."""

    def __init__(self, pipe, config: SADAConfig, info: SchedulerInfo, engine_factory=None, pruner=None,
                 lockstep: bool | None = None):
        self.pipe = pipe
        self.lockstep = lockstep  # None: automatic (on when a denoiser is torch.compile'd)
        self.config = config
        self.engine_factory = engine_factory
        self.pruner = pruner
        self.info = info
        self._info_of = id(pipe.scheduler)
        self.run: Run | None = None
        self.last_trace: Trace | None = None
        self.last_note = ""
        self.latent_tokens: int | None = None
        self.peers: list = []  # controllers of other pipelines sharing a module or the scheduler
        self._warned: set[str] = set()

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(f"sada: {message}; computing every step exactly", RuntimeWarning, stacklevel=4)

    # ------------------------------------------------------------------ runs
    def _scheduler_info(self, scheduler) -> SchedulerInfo:
        if id(scheduler) != self._info_of:  # the user swapped the scheduler after enable
            self.info, self._info_of = describe_scheduler(scheduler), id(scheduler)
        return self.info

    def start_run(self, scheduler, timestep, sample: torch.Tensor, call_args: dict) -> Run:
        for peer in self.peers:  # a shared module/scheduler now serves this pipeline's call
            peer.run = None
        info = self._scheduler_info(scheduler)
        all_t = [float(t) for t in scheduler.timesteps]
        pos = min(range(len(all_t)), key=lambda i: abs(all_t[i] - float(timestep)))
        noise = info.noise or step_noise_reason(scheduler, call_args)
        if noise:
            self._warn_once(noise)
            self.run = Run(None, None, info, all_t[pos:], note=f"exact compute: {noise}")
            self.last_note, self.last_trace = self.run.note, None
            return self.run
        grid, calls = info.grid_for_run(scheduler, pos)
        engine, note = None, ""
        try:
            if self.engine_factory is not None:
                engine = self.engine_factory(grid, info.kind)
            else:
                groups = _duplicated_halves(sample)
                lockstep = self.run_lockstep()
                engine = SADAEngine(fit_for_run(self.config, grid.num_steps), grid, info.kind, groups=groups,
                                    sample_scaling=info.scaling, solver_order=info.order, lockstep=lockstep)
                if lockstep and self.lockstep is None:
                    engine.lockstep_note = LOCKSTEP_NOTE
        except ValueError as exc:
            if "too short" not in str(exc):
                raise
            note = f"{grid.num_steps} steps: below the skipping range, ran exactly"
        self.run = Run(engine, grid, info, calls, note=note)
        self.last_note, self.last_trace = note, None
        if self.pruner is not None:
            self.pruner.reset()
            self.pruner.config = engine.config if isinstance(engine, SADAEngine) else self.config
        return self.run

    def run_lockstep(self) -> bool:
        """Batch-level decisions for this run: the explicit setting, else on when a denoiser is compiled."""
        if self.lockstep is not None:
            return resolve_lockstep(self.lockstep, None)
        return any(resolve_lockstep(None, getattr(self.pipe, name, None)) for name in NETWORKS)

    def canonical(self, run: Run, x: torch.Tensor, edm_sigma: float) -> torch.Tensor:
        if run.info.scaling == "edm":
            return x * run.grid.alpha_sigma_at(edm_sigma)[0]
        return x

    # ------------------------------------------------------------------ scheduler side
    def scheduler_step(self, original, model_output, timestep, sample, *args, **kwargs):
        scheduler = self.pipe.scheduler if getattr(original, "__self__", None) is None else original.__self__
        if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
            return original(model_output, timestep, sample, *args, **kwargs)
        run = self.run
        first_call = getattr(scheduler, "step_index", 0) is None
        if run is None or run.done or first_call or run.pos >= len(run.timesteps) \
                or abs(float(timestep) - run.timesteps[run.pos]) > 1e-4 * max(1.0, abs(float(timestep))):
            call_args = _bound_arguments(original, model_output, timestep, sample, args, kwargs)
            run = self.start_run(scheduler, timestep, sample, call_args)
        if run.engine is None:
            return self._advance(run, scheduler, original(model_output, timestep, sample, *args, **kwargs))
        engine, n = run.engine, run.step
        if run.second_stage:
            s = float(run.grid.edm_sigma[n + 1])
            model_output = engine.complete_stage(n, s, self.canonical(run, sample, s), model_output)
            return self._advance(run, scheduler, original(model_output, timestep, sample, *args, **kwargs))
        xc = self.canonical(run, sample, float(run.grid.edm_sigma[n]))
        self.latent_tokens = int(np.prod(sample.shape[2:])) if sample.ndim == 4 else None
        if n == 0:
            run.compute = engine.plan(0, xc)
        model_output = engine.complete(n, xc, model_output)
        return self._advance(run, scheduler, original(model_output, timestep, sample, *args, **kwargs))

    def _advance(self, run: Run, scheduler, result):
        run.pos += 1
        if run.engine is not None and run.info.two_stage and not run.second_stage \
                and not scheduler.state_in_first_order:
            run.second_stage = True
            return result
        run.second_stage = False
        run.step += 1
        if run.engine is None or run.step >= run.grid.num_steps:
            run.done = run.engine is not None or run.pos >= len(run.timesteps)
            if run.engine is not None:
                self.last_trace = run.engine.trace
            run.compute = np.zeros(0, bool)
            return result
        prev = result.prev_sample if hasattr(result, "prev_sample") else result[0]
        n = run.step
        run.compute = run.engine.plan(n, self.canonical(run, prev, float(run.grid.edm_sigma[n])))
        self.last_trace = run.engine.trace
        if self.pruner is not None and isinstance(run.engine, SADAEngine):
            self._record_pruning(run, n)
            self.pruner.plan_step(n, run.compute, run.engine.token_map())
        return result

    def _record_pruning(self, run: Run, step: int) -> None:
        stats, trace = self.pruner.stats, run.engine.trace
        info = trace.extras.setdefault("pruning", {"token_fraction": {}, "cache_bytes": 0, "kv_cache_bytes": 0})
        if stats["tokens_total"]:
            info["token_fraction"][step - 1] = stats["tokens_in"] / stats["tokens_total"]
        info["cache_bytes"] = max(info["cache_bytes"], self.pruner.cache_bytes())  # block outputs + keys/values
        info["kv_cache_bytes"] = max(info["kv_cache_bytes"], self.pruner.kv_cache_bytes())
        if self.pruner.fallbacks:
            info["fallbacks"] = dict(self.pruner.fallbacks)
        self.pruner.stats = {"tokens_in": 0, "tokens_total": 0}

    # ------------------------------------------------------------------ denoiser side
    def rows_mask(self, timestep_value: float | None, rows: int) -> np.ndarray | None:
        """Row mask of a denoiser call's batch that must run, or ``None`` (= run everything normally)."""
        run = self.run
        if run is None or run.done or run.engine is None or not run.compute.size or timestep_value is None:
            return None
        expected = run.timesteps[run.pos] if run.pos < len(run.timesteps) else None
        if expected is None or not any(abs(timestep_value - e) <= 1e-4 * max(1.0, abs(e))
                                       for e in (expected, expected / 1000.0)):
            return None
        compute = run.compute
        if rows % compute.size:
            return None
        return np.tile(compute, rows // compute.size)  # classifier-free guidance: [uncond rows, cond rows]

    def summary(self) -> str:
        if self.last_note:
            return self.last_note
        return "no run yet" if self.last_trace is None else self.last_trace.summary()


def _duplicated_halves(sample: torch.Tensor) -> list | None:
    """Row groups when a pipeline steps both guidance copies of every sample (DiT): rows ``i`` and ``i + B`` hold
    the same latent, so they are one sample (one decision, counted once)."""
    rows = sample.shape[0]
    if rows % 2 or rows < 2:
        return None
    half = rows // 2
    if torch.equal(sample[:half], sample[half:]):
        return list(range(half)) * 2
    return None


def _bound_arguments(original, model_output, timestep, sample, args, kwargs) -> dict:
    try:
        return inspect.signature(original).bind(model_output, timestep, sample, *args, **kwargs).arguments
    except (TypeError, ValueError):
        return dict(kwargs)


# ---------------------------------------------------------------------- denoiser-call helpers (the hook's)
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


def _slice_call(args, kwargs, idx, rows):
    kept = {k: v for k, v in kwargs.items() if k in UNBATCHED_ARGUMENTS}
    sliced = slice_rows({k: v for k, v in kwargs.items() if k not in UNBATCHED_ARGUMENTS}, idx, rows)
    return slice_rows(args, idx, rows), {**sliced, **kept}
