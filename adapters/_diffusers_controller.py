"""Per-pipeline state of the diffusers adapter: one run per pipeline call, driven by the scheduler's calls.

The wrapped ``scheduler.step`` starts a run at the scheduler's first call (a new timestep schedule, or a call that
is not the one the current run expects), completes every step through a :class:`~sada.torch_backend.session.SADASession`
(run fitting, engine, lockstep, sample scaling, the "too short" result) and plans the next step from the solver's
result; the denoiser hook asks :meth:`Controller.rows_mask` which rows of its batch must run and reports the rows
that entered the network (:meth:`Controller.note_rows`), which the next scheduler call attributes to its step.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np
import torch

from sada.adapters._diffusers_replay import SchedulerReplay
from sada.adapters._diffusers_scheduler import SchedulerInfo, describe_scheduler, early_end_note, step_noise_reason
from sada.adapters._other_caches import check_at_run
from sada.config import SADAConfig
from sada.torch_backend.compiled import is_compiled
from sada.torch_backend.engine import SADAEngine
from sada.torch_backend.reintegration import replay_applies
from sada.torch_backend.session import SADASession, WarnOnce
from sada.trace import Trace
from sada.trajectory import StepGrid

__all__ = ["Controller", "Run", "NETWORKS"]

NETWORKS = ("unet", "transformer", "transformer_2", "controlnet")  # modules whose compilation sets lockstep


@dataclass
class Run:
    """One pipeline call: its session (``None``: a noise-injecting run, every step exact), its grid and the
    scheduler position."""

    session: SADASession | None
    grid: StepGrid | None
    info: SchedulerInfo
    timesteps: list  # the scheduler's timestep at every call of this run (two per step for Heun)
    note: str = ""  # why the run computes exactly, if it does
    offset: int = 0  # the scheduler's step index at the run's first call (img2img starts part-way)
    pos: int = 0  # index into ``timesteps`` of the next scheduler call
    step: int = 0  # SADA step of the next first-stage call
    second_stage: bool = False
    compute: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # rows that compute at ``step``
    done: bool = False
    replay: SchedulerReplay | None = None  # re-integrates skipped stretches (Numerics.reintegrate)

    @property
    def engine(self):
        """The run's engine, ``None`` when every step computes exactly."""
        return None if self.session is None else self.session.engine


class Controller:
    """State of one enabled pipeline: config, scheduler capabilities, the current run and token pruning."""

    def __init__(
        self,
        pipe,
        config: SADAConfig,
        info: SchedulerInfo,
        engine_factory=None,
        pruner=None,
        lockstep: bool | None = None,
    ):
        self.pipe = pipe
        self.lockstep = lockstep  # None: automatic (on when a denoiser is torch.compile'd)
        self.config = config
        self.engine_factory = engine_factory
        self.pruner = pruner
        self.info = info
        self._info_of = id(pipe.scheduler)
        self.run: Run | None = None
        self.last_session: SADASession | None = None
        self.last_note = ""
        self.latent_tokens: int | None = None
        self.peers: list = []  # controllers of other pipelines sharing a module or the scheduler
        self.warn = WarnOnce()
        self._pending: list = []  # (row indices or None for all, batch rows) of denoiser calls since the last step
        self.scheduler_binding: tuple = (None, None)  # (the wrapped scheduler, its StepWrapper), set by enable

    @property
    def last_trace(self) -> Trace | None:
        return None if self.last_session is None else self.last_session.trace

    # ------------------------------------------------------------------ runs
    def _scheduler_info(self, scheduler) -> SchedulerInfo:
        if id(scheduler) != self._info_of:  # the user swapped the scheduler after enable
            self.info, self._info_of = describe_scheduler(scheduler), id(scheduler)
        return self.info

    def use_scheduler(self, scheduler, info: SchedulerInfo) -> None:
        """The pipeline's scheduler was replaced after ``enable`` (``info``: the new one's): the next call starts a
        run on it."""
        self.info, self._info_of, self.run = info, id(scheduler), None

    def start_run(self, scheduler, timestep, sample: torch.Tensor, call_args: dict) -> Run:
        check_at_run(self)  # a cache enabled on the denoiser after SADA that does not compose with it
        for peer in self.peers:  # a shared module/scheduler now serves this pipeline's call
            peer.run = None
        info = self._scheduler_info(scheduler)
        all_t = [float(t) for t in scheduler.timesteps]
        pos = min(range(len(all_t)), key=lambda i: abs(all_t[i] - float(timestep)))
        offset = getattr(scheduler, "step_index", None)
        offset = offset if isinstance(offset, int) else pos
        noise = info.noise or step_noise_reason(scheduler, call_args)
        if noise:
            self.warn(f"{noise}; computing every step exactly", stacklevel=5)
            self.run = Run(None, None, info, all_t[pos:], note=f"exact compute: {noise}", offset=offset)
            self.last_note, self.last_session = self.run.note, None
            return self.run
        grid, calls = info.grid_for_run(scheduler, pos)
        replays, replay_note = replay_applies(self.config, info, self.engine_factory is None, grid)
        notes = [n for n in [early_end_note(scheduler, grid), replay_note] if n]
        session = SADASession(
            grid,
            info.kind,
            self.config,
            groups=_duplicated_halves(sample),
            sample_scaling=info.scaling,
            solver_order=info.order,
            engine_factory=self.engine_factory,
            host_notes=tuple(notes),
            reintegrates=replays,
            **self._lockstep_arguments(),
        )
        self.run = Run(session, grid, info, calls, note=session.note, offset=offset)
        if replays and isinstance(session.engine, SADAEngine):
            self.run.replay = SchedulerReplay(session)
        self.last_note, self.last_session = session.note, session
        if self.pruner is not None:
            self.pruner.reset()
            self.pruner.config = session.engine.config if isinstance(session.engine, SADAEngine) else self.config
        return self.run

    def _lockstep_arguments(self) -> dict:
        """The session's lockstep: the explicit setting, else automatic on the first compiled network."""
        if self.lockstep is not None:
            return {"lockstep": self.lockstep}
        compiled = [getattr(self.pipe, name, None) for name in NETWORKS]
        return {"lockstep": None, "network": next((m for m in compiled if is_compiled(m)), None)}

    # ------------------------------------------------------------------ scheduler side
    def scheduler_step(self, original, model_output, timestep, sample, *args, **kwargs):
        scheduler = self.pipe.scheduler if getattr(original, "__self__", None) is None else original.__self__
        if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
            return original(model_output, timestep, sample, *args, **kwargs)
        run = self.run
        first_call = getattr(scheduler, "step_index", 0) is None
        if (
            run is None
            or run.done
            or first_call
            or run.pos >= len(run.timesteps)
            or abs(float(timestep) - run.timesteps[run.pos]) > 1e-4 * max(1.0, abs(float(timestep)))
        ):
            call_args = _bound_arguments(original, model_output, timestep, sample, args, kwargs)
            run = self.start_run(scheduler, timestep, sample, call_args)
        session = run.session
        if session is None or session.exact:
            self._pending.clear()
            return self._advance(run, scheduler, original(model_output, timestep, sample, *args, **kwargs))
        n = run.step
        if run.second_stage:
            self._record_rows(session, n, sample.shape[0])
            s = float(run.grid.edm_sigma[n + 1])
            model_output = session.complete_stage(n, s, sample, model_output)
            return self._advance(run, scheduler, original(model_output, timestep, sample, *args, **kwargs))
        self.latent_tokens = int(np.prod(sample.shape[2:])) if sample.ndim == 4 else None
        if n == 0:
            run.compute = session.plan(0, sample, edm_sigma=float(run.grid.edm_sigma[0]))
        self._record_rows(session, n, sample.shape[0])
        model_output = session.complete(n, sample, model_output, edm_sigma=float(run.grid.edm_sigma[n]), record=False)
        if run.replay is not None:
            sample, model_output = run.replay.before_step(
                n, scheduler, original, timestep, sample, model_output, run.compute
            )
        return self._advance(run, scheduler, original(model_output, timestep, sample, *args, **kwargs))

    def _advance(self, run: Run, scheduler, result):
        run.pos += 1
        if (
            run.engine is not None
            and run.info.two_stage
            and not run.second_stage
            and not scheduler.state_in_first_order
        ):
            run.second_stage = True
            return result
        run.second_stage = False
        run.step += 1
        if run.engine is None or run.step >= run.grid.num_steps:
            run.done = run.engine is not None or run.pos >= len(run.timesteps)
            run.compute = np.zeros(0, bool)
            return result
        prev = result.prev_sample if hasattr(result, "prev_sample") else result[0]
        n = run.step
        run.compute = run.session.plan(n, prev, edm_sigma=float(run.grid.edm_sigma[n]))
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
    def note_rows(self, idx: np.ndarray | None, rows: int) -> None:
        """A denoiser call ran rows ``idx`` (``None``: all) of its ``rows``-row batch; the next scheduler call
        attributes them to its step."""
        self._pending.append((idx, rows))

    def _record_rows(self, session: SADASession, step: int, samples: int) -> None:
        """The denoiser rows since the last scheduler call, as rows of the ``samples``-row latent batch (guidance
        copies fold onto their sample), into the session's count for ``step``."""
        for idx, rows in self._pending:
            idx = np.arange(rows) if idx is None else np.asarray(idx)
            session.record_rows(step, np.unique(idx % samples) if rows % samples == 0 else np.arange(samples))
        self._pending.clear()

    def rows_mask(self, timestep_value: float | None, rows: int, scheduler=None) -> np.ndarray | None:
        """Row mask of a denoiser call's batch that must run, or ``None`` (= run everything normally).

        The call belongs to the step the scheduler runs next: checked on its timestep, or, when the timestep cannot
        be read (a forward wrapped as ``(*args, **kwargs)`` with no named parameter), on the scheduler's step index.
        """
        run = self.run
        if run is None or run.done or run.engine is None or not run.compute.size:
            return None
        expected = run.timesteps[run.pos] if run.pos < len(run.timesteps) else None
        if expected is None:
            return None
        if timestep_value is None:
            index = getattr(scheduler, "step_index", run.offset + run.pos)
            if index != run.offset + run.pos:  # None: a new pipeline call that has not stepped yet
                return None
        elif not any(abs(timestep_value - e) <= 1e-4 * max(1.0, abs(e)) for e in (expected, expected / 1000.0)):
            return None
        compute = run.compute
        if rows % compute.size:
            return None
        return np.tile(compute, rows // compute.size)  # classifier-free guidance: [uncond rows, cond rows]

    def summary(self) -> str:
        if self.last_note:
            return self.last_note
        return "no run yet" if self.last_session is None else self.last_session.summary()


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
