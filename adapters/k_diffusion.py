"""SADA for k-diffusion samplers (and hosts that vendor them, such as ComfyUI), without importing k-diffusion.

``wrap(model, sigmas, config)`` returns a denoiser ``model(x, sigma, **extra_args) -> denoised`` that the
k-diffusion samplers accept unchanged::

    denoiser = sada.adapters.k_diffusion.wrap(model, sigmas)
    x = K.sampling.sample_dpmpp_2m(denoiser, x, sigmas)
    print(denoiser.summary())

Each call's sigma is mapped to its step in the run's sigma schedule. Two-stage samplers (``sample_heun``: the
corrector at the next sigma; ``sample_dpm_2``: the midpoint) are recognised; on a skipped step both stages are
synthesised. A new run starts by itself when the first sigma comes again or sigma increases; when the wrapped
denoiser is reused with *other* sigmas, the new schedule is read from the calling ``sample_*`` function (or given
with :meth:`SADADenoiser.set_sigmas`) and the run is planned on it. Conditioning in ``extra_args`` -- tensors,
and lists / tuples / dicts of them at any depth, as CompVis- and ComfyUI-style hosts pass it -- is sliced with
the rows that run the model.

Samplers that inject noise (ancestral, SDE, adaptive) break the ODE assumption: the wrapper then runs the model on
every call (bit-identical to the unwrapped model) and warns once. The sampler is identified by ``sampler=`` or, if
not given, by the name of the calling ``sample_*`` function.
"""
from __future__ import annotations

import sys
import warnings
from typing import Callable

import numpy as np
import torch

from sada.adapters._k_import import load_sampling
from sada.config import SADAConfig, fit_for_run
from sada.torch_backend.compiled import LOCKSTEP_NOTE, resolve_lockstep
from sada.torch_backend.engine import SADAEngine
from sada.torch_backend.rows import slice_rows
from sada.trace import Trace
from sada.trajectory import DiscreteVPSchedule, EDMSchedule, NoiseSchedule, StepGrid

__all__ = ["wrap", "SADADenoiser", "SINGLE_STAGE", "TWO_STAGE", "load_sampling"]

SINGLE_STAGE = frozenset({"sample_euler", "sample_dpmpp_2m", "sample_lms"})
TWO_STAGE = frozenset({"sample_heun", "sample_dpm_2"})
# each sampler's order: schedule-free SADA compares its estimates with the sampler's own local error
ORDERS = {"sample_euler": 1, "sample_heun": 2, "sample_dpm_2": 2, "sample_dpmpp_2m": 2, "sample_lms": 4}


def _is_stochastic(name: str) -> bool:
    return "ancestral" in name or "sde" in name


def _sampler_frame(max_depth: int = 8):
    """The frame of the calling k-diffusion ``sample_*`` function (or ``None``)."""
    frame = sys._getframe(2)
    for _ in range(max_depth):
        if frame is None:
            return None
        if frame.f_code.co_name.startswith("sample_"):
            return frame
        frame = frame.f_back
    return None


def _as_sigmas(sigmas) -> np.ndarray:
    sig = torch.as_tensor(sigmas).detach().double().cpu().numpy()
    if sig.ndim != 1 or sig.size < 3 or not np.all(np.isfinite(sig)) or np.any(np.diff(sig) >= 0) or sig[-1] < 0:
        raise ValueError(f"sigmas must be a finite, strictly decreasing 1-D schedule ending at >= 0, got {sig.tolist()}")
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


class SADADenoiser:
    """A k-diffusion denoiser with SADA; see :func:`wrap`."""

    def __init__(self, model, sigmas, config: SADAConfig | None = None, schedule: NoiseSchedule | None = None,
                 sampler: str | None = None, lockstep: bool | None = None):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, sigma, **extra_args), got {type(model).__name__}")
        if config is not None and not isinstance(config, SADAConfig):
            raise TypeError(f"config must be a SADAConfig, got {type(config).__name__}")
        if schedule is not None and not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        self.inner_model = model
        self.config = config or SADAConfig()
        self._schedule_arg = schedule
        self.sampler = sampler
        self.lockstep = resolve_lockstep(lockstep, model)  # None: on when the model is torch.compile'd
        self._lockstep_note = LOCKSTEP_NOTE if lockstep is None else ""
        self.calls = 0  # network evaluations (rows), all runs
        self._warned: set[str] = set()
        self._expected = None
        self._prev_sigma = None
        self._mode, self._reason = "sada", ""
        self.set_sigmas(sigmas)

    def set_sigmas(self, sigmas) -> None:
        """Plan the following runs on another sigma schedule (done automatically when a k-diffusion sampler
        passes new sigmas)."""
        sig = _as_sigmas(sigmas)
        schedule = self._schedule_arg if self._schedule_arg is not None else _schedule_for(self.inner_model, sig)
        self.sigmas, self.schedule = sig, schedule
        self.grid = StepGrid.from_edm_sigmas(schedule, sig)
        try:
            config = fit_for_run(self.config, self.grid.num_steps)
            self.engine = SADAEngine(config, self.grid, "sample", sample_scaling="edm",
                                     solver_order=ORDERS.get(self.sampler, 2), lockstep=self.lockstep)
            self.engine.lockstep_note = self._lockstep_note or self.engine.lockstep_note
            self._too_short = ""
        except ValueError as exc:
            self.engine, self._too_short = None, f"{self.grid.num_steps} steps: below the skipping range ({exc})"
        self._expected = None

    # -------------------------------------------------------------- bookkeeping
    @property
    def trace(self) -> Trace | None:
        return None if self.engine is None else self.engine.trace

    def summary(self) -> str:
        if self._mode == "exact":
            return f"exact compute ({self._reason}); {self.calls} model evaluations"
        if self.engine is None:
            return f"{self._too_short}; ran exactly"
        return "no run yet" if self.trace is None else self.trace.summary()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _model(self, x, sigma, extra, idx=None):
        if idx is None:
            self.calls += x.shape[0]
            return self.inner_model(x, sigma, **extra)
        self.calls += int(idx.numel())
        return self.inner_model(x.index_select(0, idx), sigma.index_select(0, idx), **slice_rows(extra, idx, x.shape[0]))

    def _match(self, s: float):
        k = int(np.argmin(np.abs(self.sigmas[:-1] - s)))
        return k if abs(self.sigmas[k] - s) <= 1e-5 * max(s, 1e-8) else None

    def _start_run(self, s: float) -> None:
        frame = _sampler_frame()
        name = self.sampler or (frame.f_code.co_name if frame is not None else None)
        self._two_stage = name in TWO_STAGE
        if self.engine is not None:
            self.engine.solver_order = ORDERS.get(name, 2)
        self._stage2_of = None
        self._expected = 0
        self._mode, self._reason = "sada", ""
        if name in {"sample_dpm_fast", "sample_dpm_adaptive"}:
            self._exact(f"{name} chooses its own noise levels, which do not follow the sigma schedule")
            return
        if name is not None and _is_stochastic(name):
            self._exact(f"{name} injects noise, which breaks the ODE assumption")
            return
        new = frame.f_locals.get("sigmas") if frame is not None else None
        if isinstance(new, (torch.Tensor, np.ndarray)):  # the sampler's own schedule: plan it if it is another one
            sig = torch.as_tensor(new).detach().double().cpu().numpy()
            if sig.shape != self.sigmas.shape or not np.allclose(sig, self.sigmas, rtol=1e-6, atol=0.0):
                self.set_sigmas(sig)
                self._expected = 0
        if self._match(s) != 0:
            self._exact(f"the first call's sigma={s:.6g} is not the first of the planned schedule "
                        f"({self.sigmas[0]:.6g}); call denoiser.set_sigmas(sigmas) with the sampler's sigmas")
            return
        if name is not None and name not in SINGLE_STAGE | TWO_STAGE:
            self._warn_once(f"unknown:{name}", f"sada: sampler {name!r} is not in the tested list "
                            f"{sorted(SINGLE_STAGE | TWO_STAGE)}; assuming one deterministic evaluation per step "
                            "(falls back to exact compute if its calls do not follow the sigma schedule)")

    def _exact(self, reason: str) -> None:
        self._mode, self._reason = "exact", reason
        self._warn_once(reason, f"sada: {reason}; running the model at every call (no acceleration)")

    # -------------------------------------------------------------- the denoiser
    def __call__(self, x: torch.Tensor, sigma, **extra_args) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
        s = float(sigma[0])
        new_run = self._expected is None or (self._prev_sigma is not None and s > self._prev_sigma * (1 + 1e-6)) \
            or (self._match(s) == 0 and self._stage2_of is None)
        self._prev_sigma = s
        if new_run:
            self._start_run(s)
        if self._mode == "exact" or self.engine is None:
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
        xc = x * float(self.grid.alpha[k])
        compute = self.engine.plan(k, xc)
        out = self._run_rows(x, sigma, extra_args, compute)
        out = self.engine.complete(k, xc, out)
        self._expected = k + 1
        if self._two_stage and self.sigmas[k + 1] > 0:
            self._stage2_of, self._stage_compute = k, compute
        return out

    def _run_rows(self, x, sigma, extra_args, compute: np.ndarray):
        """The model's outputs for the computing rows (the full batch when all compute, ``None`` when none)."""
        if compute.all():
            return self._model(x, sigma, extra_args)
        if not compute.any():
            return None
        return self._model(x, sigma, extra_args, torch.as_tensor(np.flatnonzero(compute), device=x.device))

    def _second_stage(self, x, sigma, s, extra_args):
        k, self._stage2_of = self._stage2_of, None
        alpha, _ = self.grid.alpha_sigma_at(s)
        outputs = self._run_rows(x, sigma, extra_args, self._stage_compute)
        return self.engine.complete_stage(k, s, x * alpha, outputs)


def wrap(model: "Callable[..., torch.Tensor]", sigmas: "torch.Tensor | np.ndarray", config: SADAConfig | None = None,
         *, schedule: NoiseSchedule | None = None, sampler: str | None = None,
         lockstep: bool | None = None) -> SADADenoiser:
    """Wrap a k-diffusion denoiser ``model(x, sigma, **extra_args) -> denoised`` with SADA.

    Args:
        model: the denoiser (e.g. ``k_diffusion.external.CompVisDenoiser`` or any callable).
        sigmas: the run's sigma schedule (what you pass to the sampler, final 0 included).
        config: :class:`~sada.config.SADAConfig` (default ``SADAConfig()``), fitted to the run's step count by the
            rule of :meth:`~sada.config.SADAConfig.fit_steps`.
        schedule: the training schedule; by default taken from ``model.sigmas`` when present (discrete VP),
            else an EDM schedule (``mode="paper"`` then unavailable).
        sampler: the k-diffusion sampler's function name, if the caller cannot be detected.
        lockstep: batch-level decisions (every row runs the model or none does); ``None`` (default) turns them on
            when ``model`` (or its ``inner_model``) is ``torch.compile``d, so it never sees partial batches.
    """
    return SADADenoiser(model, sigmas, config, schedule, sampler, lockstep)
