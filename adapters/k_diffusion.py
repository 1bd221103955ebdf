"""SADA for k-diffusion samplers (and hosts that vendor them, such as ComfyUI), without importing k-diffusion.

``wrap(model, sigmas, config)`` returns a denoiser ``model(x, sigma, **extra_args) -> denoised`` that the
k-diffusion samplers accept unchanged::

    denoiser = sada.adapters.k_diffusion.wrap(model, sigmas)
    x = K.sampling.sample_dpmpp_2m(denoiser, x, sigmas)
    print(denoiser.summary())

Each call's sigma is mapped to its step in ``sigmas``. Two-stage samplers (``sample_heun``: the corrector
at the next sigma; ``sample_dpm_2``: the midpoint) are recognised; on a skipped step both stages are
synthesised. A new run starts automatically when the first sigma comes again or sigma increases.

Samplers that inject noise (ancestral, SDE, adaptive) break the ODE assumption: the wrapper then runs
the model on every call (bit-identical to the unwrapped model) and warns once. The sampler is
identified by ``sampler=`` or, if not given, by the name of the calling ``sample_*`` function.
"""
from __future__ import annotations

import sys
import warnings
from typing import Callable

import numpy as np
import torch

from sada.adapters._k_import import load_sampling
from sada.config import SADAConfig
from sada.torch_backend.engine import SADAEngine
from sada.trace import Trace
from sada.trajectory import DiscreteVPSchedule, EDMSchedule, NoiseSchedule, StepGrid

__all__ = ["wrap", "SADADenoiser", "SINGLE_STAGE", "TWO_STAGE", "load_sampling"]

SINGLE_STAGE = frozenset({"sample_euler", "sample_dpmpp_2m", "sample_lms"})
TWO_STAGE = frozenset({"sample_heun", "sample_dpm_2"})


def _is_stochastic(name: str) -> bool:
    return "ancestral" in name or "sde" in name


def _caller_sampler_name(max_depth: int = 8) -> str | None:
    frame = sys._getframe(2)
    for _ in range(max_depth):
        if frame is None:
            return None
        if frame.f_code.co_name.startswith("sample_"):
            return frame.f_code.co_name
        frame = frame.f_back
    return None


def _schedule_for(model, sigmas: np.ndarray) -> NoiseSchedule:
    """A k-diffusion ``DiscreteSchedule`` model carries its training sigmas: use them as a discrete VP
    schedule (enables ``mode="paper"``); otherwise an EDM/VE schedule over the run's sigma range."""
    train = getattr(model, "sigmas", None)
    if isinstance(train, torch.Tensor) and train.ndim == 1 and train.numel() >= 10:
        s = train.detach().double().cpu().numpy()
        return DiscreteVPSchedule(1.0 / (1.0 + s**2))
    positive = sigmas[sigmas > 0]
    return EDMSchedule(float(positive.min()) * (1 - 1e-9), float(positive.max()) * (1 + 1e-9))


def _slice_extra(extra: dict, idx: torch.Tensor, batch: int) -> dict:
    return {k: (v.index_select(0, idx) if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == batch else v)
            for k, v in extra.items()}


class SADADenoiser:
    """A k-diffusion denoiser with SADA; see :func:`wrap`."""

    def __init__(self, model, sigmas, config: SADAConfig | None = None, schedule: NoiseSchedule | None = None,
                 sampler: str | None = None):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, sigma, **extra_args), got {type(model).__name__}")
        sig = torch.as_tensor(sigmas).detach().double().cpu().numpy()
        if sig.ndim != 1 or sig.size < 3 or np.any(np.diff(sig) >= 0):
            raise ValueError(f"sigmas must be a strictly decreasing 1-D schedule, got {sig.tolist()}")
        self.inner_model = model
        self.sigmas = sig
        self.schedule = schedule if schedule is not None else _schedule_for(model, sig)
        self.grid = StepGrid.from_edm_sigmas(self.schedule, sig)
        self.engine = SADAEngine(config or SADAConfig(), self.grid, "sample")
        self.sampler = sampler
        self.calls = 0  # network evaluations (rows), all runs
        self._warned: set[str] = set()
        self._expected = None
        self._prev_sigma = None
        self._mode, self._reason = "sada", ""

    # -------------------------------------------------------------- bookkeeping
    @property
    def trace(self) -> Trace | None:
        return self.engine.trace

    def summary(self) -> str:
        if self._mode == "exact":
            return f"exact compute ({self._reason}); {self.calls} model evaluations"
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
        return self.inner_model(x.index_select(0, idx), sigma.index_select(0, idx), **_slice_extra(extra, idx, x.shape[0]))

    def _match(self, s: float):
        k = int(np.argmin(np.abs(self.sigmas[:-1] - s)))
        return k if abs(self.sigmas[k] - s) <= 1e-5 * max(s, 1e-8) else None

    def _start_run(self) -> None:
        name = self.sampler or _caller_sampler_name()
        self._two_stage = name in TWO_STAGE
        self._stage2_of = None
        self._expected = 0
        self._mode, self._reason = "sada", ""
        if name in {"sample_dpm_fast", "sample_dpm_adaptive"}:
            self._exact(f"{name} chooses its own noise levels, which do not follow the sigma schedule")
        elif name is not None and _is_stochastic(name):
            self._exact(f"{name} injects noise, which breaks the ODE assumption")
        elif name is not None and name not in SINGLE_STAGE | TWO_STAGE:
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
            self._start_run()
        if self._mode == "exact":
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
        alpha = float(self.grid.alpha[k])
        self.engine.begin_step(k, x * alpha)
        rows = self.engine.compute_rows()
        if rows.size == x.shape[0]:
            out = self._model(x, sigma, extra_args)
        else:
            out = self.engine.synthesise(k, x * alpha)
            if rows.size:
                idx = torch.as_tensor(rows, device=x.device)
                out = out.index_copy(0, idx, self._model(x, sigma, extra_args, idx).to(out.dtype))
        self.engine.record(k, x * alpha, out)
        self._expected = k + 1
        if self._two_stage and self.sigmas[k + 1] > 0:
            self._stage2_of = k
        return out

    def _second_stage(self, x, sigma, s, extra_args):
        k, self._stage2_of = self._stage2_of, None
        rows = self.engine.compute_rows()
        if rows.size == x.shape[0]:
            return self._model(x, sigma, extra_args)
        alpha, _ = self.grid.alpha_sigma_at(s)
        out = self.engine.intermediate_output(k, s, x * alpha)
        if rows.size:
            idx = torch.as_tensor(rows, device=x.device)
            out = out.index_copy(0, idx, self._model(x, sigma, extra_args, idx).to(out.dtype))
        return out


def wrap(model: "Callable[..., torch.Tensor]", sigmas: "torch.Tensor | np.ndarray", config: SADAConfig | None = None,
         *, schedule: NoiseSchedule | None = None, sampler: str | None = None) -> SADADenoiser:
    """Wrap a k-diffusion denoiser ``model(x, sigma, **extra_args) -> denoised`` with SADA.

    Args:
        model: the denoiser (e.g. ``k_diffusion.external.CompVisDenoiser`` or any callable).
        sigmas: the run's sigma schedule (what you pass to the sampler, final 0 included).
        config: :class:`~sada.config.SADAConfig` (default ``SADAConfig()``: 50-step ranges).
        schedule: the training schedule; by default taken from ``model.sigmas`` when present (discrete VP),
            else an EDM schedule (``mode="paper"`` then unavailable).
        sampler: the k-diffusion sampler's function name, if the caller cannot be detected.
    """
    return SADADenoiser(model, sigmas, config, schedule, sampler)
