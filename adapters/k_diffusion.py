"""SADA for k-diffusion samplers (and hosts that vendor them, such as ComfyUI), without importing k-diffusion.

``wrap(model, sigmas, config, sampler=...)`` returns a denoiser ``model(x, sigma, **extra_args) -> denoised`` that the
k-diffusion samplers accept unchanged::

    K = sada.adapters.k_diffusion.load_sampling()
    denoiser = sada.adapters.k_diffusion.wrap(model, sigmas, sampler=K.sample_dpmpp_2m)
    x = K.sample_dpmpp_2m(denoiser, x, sigmas)
    print(denoiser.summary())

or ``x = denoiser.sample(K.sample_dpmpp_2m, x)`` (the sampler and the sigmas declared in one call; another sigma
schedule as ``denoiser.sample(K.sample_euler, x, other_sigmas)`` is planned before the run).

The sampler is what the wrapper is told (``sampler=``, a ``sample_*`` function or its name, or :meth:`sample`); it
is never guessed from the call stack. It selects the call pattern (two-stage samplers: ``sample_heun``, the
corrector at the next sigma; ``sample_dpm_2``, the midpoint -- on a skipped step both stages are synthesised) and
the solver order. Samplers that inject noise (ancestral, SDE) or choose their own noise levels (``sample_dpm_fast``,
``sample_dpm_adaptive``) run the model on every call (bit-identical to the unwrapped model) with one
:class:`~sada.errors.ExactRunWarning`; so does a run whose calls leave the planned sigma schedule. Without a
declared sampler, one :class:`~sada.errors.SADAWarning` says that one deterministic evaluation per step is assumed.

Each call's sigma is mapped to its step in the run's sigma schedule; a new run starts by itself when the first sigma
comes again or sigma increases. Conditioning in ``extra_args`` -- tensors, and lists / tuples / dicts of them at any
depth, as CompVis- and ComfyUI-style hosts pass it -- is sliced with the rows that run the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from sada.adapters._k_import import load_sampling
from sada.adapters._k_replay import LINEAR_STEPS, SamplerReplay
from sada.config import SADAConfig
from sada.errors import SADAWarning
from sada.torch_backend.engine import SADAEngine
from sada.torch_backend.reintegration import replay_applies
from sada.torch_backend.rows import slice_rows
from sada.torch_backend.session import SADASession, WarnOnce
from sada.trace import Trace
from sada.trajectory import DiscreteVPSchedule, EDMSchedule, NoiseSchedule, StepGrid, early_end_note

__all__ = ["wrap", "SADADenoiser", "SINGLE_STAGE", "TWO_STAGE", "load_sampling"]

SINGLE_STAGE = frozenset({"sample_euler", "sample_dpmpp_2m", "sample_lms"})
TWO_STAGE = frozenset({"sample_heun", "sample_dpm_2"})
# each sampler's order: schedule-free SADA compares its estimates with the sampler's own local error
ORDERS = {"sample_euler": 1, "sample_heun": 2, "sample_dpm_2": 2, "sample_dpmpp_2m": 2, "sample_lms": 4}
OWN_LEVELS = frozenset({"sample_dpm_fast", "sample_dpm_adaptive"})


class _Sampler(NamedTuple):
    """What :func:`sada.torch_backend.reintegration.replay_applies` reads of the declared sampler."""

    name: str
    order: int
    two_stage: bool


def _replay_blocker(name: str | None) -> str | None:
    """Why re-integration cannot steer this sampler (``None``: it can; its step is linear in what it holds)."""
    if name is None:
        return "the k-diffusion sampler was not declared (sampler=...), so its step is unknown"
    if name not in LINEAR_STEPS:
        return f"{name}'s step is not one the denoiser can steer (k-diffusion: {', '.join(sorted(LINEAR_STEPS))})"
    return None


def _is_stochastic(name: str) -> bool:
    return "ancestral" in name or "sde" in name


def _sampler_name(sampler) -> str | None:
    """The sampler's function name from ``sampler=`` (a ``sample_*`` function or its name), or ``None``."""
    if sampler is None:
        return None
    name = sampler if isinstance(sampler, str) else getattr(sampler, "__name__", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"sampler must be a k-diffusion sample_* function or its name, got {sampler!r}")
    return name


def _as_sigmas(sigmas) -> np.ndarray:
    """The schedule as float64; the error names its length and the first offending entry, not the whole schedule."""
    sig = torch.as_tensor(sigmas).detach().double().cpu().numpy()
    need = "sigmas must be a finite, strictly decreasing 1-D schedule ending at >= 0 (at least 3 entries)"
    if sig.ndim != 1 or sig.size < 3:
        raise ValueError(f"{need}; got shape {tuple(sig.shape)}")
    bad = np.flatnonzero(~np.isfinite(sig))
    if bad.size:
        raise ValueError(f"{need}; got {sig.size} entries, entry {bad[0]} is {sig[bad[0]]}")
    rising = np.flatnonzero(np.diff(sig) >= 0)
    if rising.size:
        i = int(rising[0])
        raise ValueError(
            f"{need}; got {sig.size} entries, entry {i + 1} ({sig[i + 1]:.6g}) is not below entry {i} ({sig[i]:.6g})"
        )
    if sig[-1] < 0:
        raise ValueError(f"{need}; got {sig.size} entries, the last is {sig[-1]:.6g}")
    return sig


def _schedule_for(model, sigmas: np.ndarray) -> NoiseSchedule:
    """A k-diffusion ``DiscreteSchedule`` model carries its training sigmas: use them as a discrete VP
    schedule (enables ``mode="paper"``); otherwise an EDM/VE schedule over the run's sigma range."""
    train = getattr(model, "sigmas", None)
    if isinstance(train, torch.Tensor) and train.ndim == 1 and train.numel() >= 10:
        s = train.detach().double().cpu().numpy()
        return DiscreteVPSchedule(1.0 / (1.0 + s**2))
    positive = sigmas[sigmas > 0]
    return EDMSchedule(float(positive.min()) * (1 - 1e-9), float(positive.max()) * (1 + 1e-9))


def _early_end_note(schedule: NoiseSchedule, grid: StepGrid) -> str | None:
    """:func:`sada.trajectory.early_end_note` against the smallest level of the model's training table (the discrete
    schedule :func:`_schedule_for` reads from a k-diffusion ``DiscreteSchedule`` model; other schedules: ``None``)."""
    if not isinstance(schedule, DiscreteVPSchedule):
        return None
    return early_end_note(
        grid,
        float(schedule.edm_sigma(0.0)),
        "build the sigmas down to the model's: e.g. K.sampling.get_sigmas_karras(n, model.sigma_min, model.sigma_max)",
    )


class SADADenoiser:
    """A k-diffusion denoiser with SADA; see :func:`wrap`."""

    def __init__(
        self,
        model,
        sigmas,
        config: SADAConfig | None = None,
        schedule: NoiseSchedule | None = None,
        sampler=None,
        lockstep: bool | None = None,
    ):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, sigma, **extra_args), got {type(model).__name__}")
        if config is not None and not isinstance(config, SADAConfig):
            raise TypeError(f"config must be a SADAConfig, got {type(config).__name__}")
        if schedule is not None and not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if lockstep is not None and not isinstance(lockstep, bool):
            raise TypeError(f"lockstep must be True, False or None (automatic), got {lockstep!r}")
        self.inner_model = model
        self.config = config or SADAConfig()
        self._schedule_arg, self._lockstep_arg = schedule, lockstep
        self.sampler = _sampler_name(sampler)
        self.calls = 0  # network evaluations (rows), all runs
        self._warn = WarnOnce()
        self._expected: int = None
        self._prev_sigma: float = None
        self._stage2_of: int = None
        self._mode, self._reason = "sada", ""
        self.set_sigmas(sigmas)  # a config the grid cannot serve raises ConfigError here

    def set_sigmas(self, sigmas) -> None:
        """Plan the following runs on another sigma schedule (:meth:`sample` does it when given other sigmas)."""
        sig = _as_sigmas(sigmas)
        schedule = self._schedule_arg if self._schedule_arg is not None else _schedule_for(self.inner_model, sig)
        self.sigmas, self.schedule, self._sigmas_arg = sig, schedule, sigmas
        self.grid = StepGrid.from_edm_sigmas(schedule, sig)
        name, order = self.sampler, ORDERS.get(self.sampler, 2)
        solver = _Sampler(name or "the sampler", order, name in TWO_STAGE)
        replays, replay_note = replay_applies(self.config, solver, True, self.grid, _replay_blocker(name))
        self.session = SADASession(
            self.grid,
            "sample",
            self.config,
            sample_scaling="edm",
            solver_order=order,
            lockstep=self._lockstep_arg,
            network=self.inner_model,
            host_notes=tuple(n for n in [_early_end_note(schedule, self.grid), replay_note] if n),
            reintegrates=replays,
        )
        self._replay = None  # re-integrates skipped stretches (Numerics.reintegrate; adapters/_k_replay.py)
        if replays and isinstance(self.session.engine, SADAEngine):
            self._replay = SamplerReplay(self.session, name, sig)
        self._expected = None

    def sample(self, sampler: Callable, x: torch.Tensor, sigmas=None, **kwargs):
        """``sampler(self, x, sigmas, **kwargs)`` with the sampler and the sigmas declared first: the run is planned
        for this sampler (its call pattern and order) on ``sigmas`` (default: the wrapped schedule)."""
        if not callable(sampler):
            raise TypeError(f"sampler must be a k-diffusion sample_* function, got {sampler!r}")
        name = _sampler_name(sampler)
        other = sigmas is not None and not np.array_equal(_as_sigmas(sigmas), self.sigmas)
        if name != self.sampler or other:
            self.sampler = name
            self.set_sigmas(self._sigmas_arg if sigmas is None else sigmas)
        self._expected = None  # a new run
        return sampler(self, x, self._sigmas_arg if sigmas is None else sigmas, **kwargs)

    # -------------------------------------------------------------- bookkeeping
    @property
    def engine(self):
        return self.session.engine

    @property
    def lockstep(self) -> bool:
        return self.session.lockstep

    @property
    def trace(self) -> Trace | None:
        return self.session.trace

    def summary(self) -> str:
        if self._mode == "exact":
            return f"exact compute ({self._reason}); {self.calls} model evaluations"
        return self.session.summary()

    def _model(self, x, sigma, extra, idx=None, step=None):
        """The model on every row (``idx=None``) or on rows ``idx``; counts the rows that entered it."""
        if idx is None:
            self.calls += x.shape[0]
            if step is not None:
                self.session.record_rows(step, np.ones(x.shape[0], bool))
            return self.inner_model(x, sigma, **extra)
        self.calls += int(idx.numel())
        if step is not None:
            self.session.record_rows(step, idx.cpu().numpy())
        return self.inner_model(
            x.index_select(0, idx), sigma.index_select(0, idx), **slice_rows(extra, idx, x.shape[0])
        )

    def _match(self, s: float):
        k = int(np.argmin(np.abs(self.sigmas[:-1] - s)))
        return k if abs(self.sigmas[k] - s) <= 1e-5 * max(s, 1e-8) else None

    def _start_run(self, s: float) -> None:
        name = self.sampler
        self._two_stage = name in TWO_STAGE
        self._stage2_of = None
        self._expected = 0
        self._mode, self._reason = "sada", ""
        if name in OWN_LEVELS:
            self._exact(f"{name} chooses its own noise levels, which do not follow the sigma schedule")
            return
        if name is not None and _is_stochastic(name):
            self._exact(f"{name} injects noise, which breaks the ODE assumption")
            return
        if self._match(s) != 0:
            self._exact(
                f"the first call's sigma={s:.6g} is not the first of the planned schedule "
                f"({self.sigmas[0]:.6g}); declare the sampler's sigmas with denoiser.sample(sampler, x, "
                "sigmas) or denoiser.set_sigmas(sigmas)"
            )
            return
        if name is None:
            self._warn(
                "the k-diffusion sampler was not declared (pass sampler=K.sample_... to wrap, or call "
                "denoiser.sample(K.sample_..., x)); assuming a deterministic sampler with one model evaluation "
                "per step (a call off the sigma schedule falls back to exact compute)",
                SADAWarning,
                key="undeclared",
            )
        elif name not in SINGLE_STAGE | TWO_STAGE:
            self._warn(
                f"sampler {name!r} is not in the tested list {sorted(SINGLE_STAGE | TWO_STAGE)}; assuming "
                "one deterministic evaluation per step (falls back to exact compute if its calls do not "
                "follow the sigma schedule)",
                SADAWarning,
                key=f"unknown:{name}",
            )

    def _exact(self, reason: str) -> None:
        self._mode, self._reason = "exact", reason
        self._warn(f"{reason}; running the model at every call (no acceleration)", key=reason, stacklevel=4)

    # -------------------------------------------------------------- the denoiser
    def __call__(self, x: torch.Tensor, sigma, **extra_args) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
        s = float(sigma[0])
        new_run = (
            self._expected is None
            or (self._prev_sigma is not None and s > self._prev_sigma * (1 + 1e-6))
            or (self._match(s) == 0 and self._stage2_of is None)
        )
        self._prev_sigma = s
        if new_run:
            self._start_run(s)
        if self._mode == "exact" or self.session.exact:
            return self._model(x, sigma, extra_args)
        if not torch.all(sigma == sigma[0]):
            self._exact("rows carry different sigmas")
            return self._model(x, sigma, extra_args)
        if self._stage2_of is not None:
            return self._second_stage(x, sigma, s, extra_args)
        k = self._match(s)
        if k is None or k != self._expected:
            self._exact(f"call at sigma={s:.6g} does not follow the schedule (expected step {self._expected})")
            return self._model(x, sigma, extra_args)
        compute = self.session.plan(k, x)
        out = self._run_rows(x, sigma, extra_args, compute, k)
        out = self.session.complete(k, x, out, record=False)
        if self._replay is not None:
            out = self._replay.output(k, x, out, compute)
        self._expected = k + 1
        if self._two_stage and self.sigmas[k + 1] > 0:
            self._stage2_of, self._stage_compute = k, compute
        return out

    def _run_rows(self, x, sigma, extra_args, compute: np.ndarray, step: int):
        """The model's outputs for the computing rows (the full batch when all compute, ``None`` when none)."""
        if compute.all():
            return self._model(x, sigma, extra_args, step=step)
        if not compute.any():
            return None
        return self._model(x, sigma, extra_args, torch.as_tensor(np.flatnonzero(compute), device=x.device), step)

    def _second_stage(self, x, sigma, s, extra_args):
        k, self._stage2_of = self._stage2_of, None
        outputs = self._run_rows(x, sigma, extra_args, self._stage_compute, k)
        return self.session.complete_stage(k, s, x, outputs)


def wrap(
    model: Callable[..., torch.Tensor],
    sigmas: torch.Tensor | np.ndarray,
    config: SADAConfig | None = None,
    *,
    schedule: NoiseSchedule | None = None,
    sampler=None,
    lockstep: bool | None = None,
) -> SADADenoiser:
    """Wrap a k-diffusion denoiser ``model(x, sigma, **extra_args) -> denoised`` with SADA.

    Args:
        model: the denoiser (e.g. ``k_diffusion.external.CompVisDenoiser`` or any callable).
        sigmas: the run's sigma schedule (what you pass to the sampler, final 0 included).
        config: :class:`~sada.config.SADAConfig` (default ``SADAConfig()``), fitted to the run's step count by the
            rule of :meth:`~sada.config.SADAConfig.fit_steps`. A config the grid cannot serve (``mode="paper"`` on
            an EDM grid) raises :class:`~sada.errors.ConfigError` here; a run too short to skip computes exactly.
        schedule: the training schedule; by default taken from ``model.sigmas`` when present (discrete VP),
            else an EDM schedule (``mode="paper"`` then unavailable).
        sampler: the k-diffusion sampler that will call the denoiser: its ``sample_*`` function or its name
            (sets the call pattern and the solver order; see :meth:`SADADenoiser.sample`).
        lockstep: batch-level decisions (every row runs the model or none does); ``None`` (default) turns them on
            when ``model`` (or its ``inner_model``) is ``torch.compile``d, so it never sees partial batches.
    """
    return SADADenoiser(model, sigmas, config, schedule, sampler, lockstep)
