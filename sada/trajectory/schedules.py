"""Noise schedules (the trajectory interface, part 1).

A schedule maps its own time variable ``t`` to ``(alpha_t, sigma_t)`` with ``x_t = alpha_t x0 + sigma_t eps``.
Every schedule also has the EDM form ``sigma~ = sigma / alpha`` (Karras et al. 2022), in which the
probability-flow ODE is the same for all of them: ``d(x/alpha)/d(sigma~) = eps``. The log-SNR is
``lambda = log(alpha / sigma) = -log(sigma~)``.

* :class:`DiscreteVPSchedule` -- DDPM-style: ``alpha = sqrt(alphas_cumprod[t])`` over training
  timesteps ``t = 0 .. T-1`` (diffusers' convention); between integers ``log alphas_cumprod`` is
  interpolated linearly, so the continuous ``beta(t) = -d log(alphas_cumprod)/dt`` on ``(k-1, k]`` is
  ``-log(1 - betas[k])``.
* :class:`EDMSchedule` -- variance exploding / EDM: ``alpha = 1``, ``sigma = t``.
* :class:`RectifiedFlowSchedule` -- ``x_t = (1 - t) x0 + t eps`` for ``t`` in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sada.validation import as_float_vector, as_int, as_real

__all__ = [
    "BETA_SCHEDULES",
    "NoiseSchedule",
    "DiscreteVPSchedule",
    "EDMSchedule",
    "RectifiedFlowSchedule",
    "karras_sigmas",
]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


class NoiseSchedule:
    """Common interface; subclasses implement ``alpha_sigma``, ``derivatives`` and ``time_from_edm_sigma``."""

    family: str = ""

    def alpha_sigma(self, t):  # pragma: no cover - interface
        raise NotImplementedError

    def derivatives(self, t):  # pragma: no cover - interface
        raise NotImplementedError

    def time_from_edm_sigma(self, edm_sigma):  # pragma: no cover - interface
        raise NotImplementedError

    def clean_time(self) -> float:
        """The schedule time of the clean end (``sigma = 0``), the last node of a grid that ends there.

        By default the exact inverse at ``sigma~ = 0``; a schedule whose times do not reach the clean end must
        override this (a grid never holds a NaN time: :class:`~sada.trajectory.grid.StepGrid` refuses one).
        """
        try:
            t = float(np.asarray(self.time_from_edm_sigma(0.0), dtype=np.float64))
        except ValueError as exc:
            raise ValueError(
                f"{type(self).__name__} has no time at the clean end (sigma = 0): {exc}; override clean_time()"
            ) from None
        if not math.isfinite(t):
            raise ValueError(
                f"{type(self).__name__} has no finite time at the clean end (sigma = 0), got {t}; override clean_time()"
            )
        return t

    def edm_sigma(self, t):
        """``sigma~(t) = sigma_t / alpha_t`` (``inf`` where ``alpha_t = 0``)."""
        alpha, sigma = self.alpha_sigma(t)
        with np.errstate(divide="ignore"):
            return np.asarray(sigma, dtype=np.float64) / np.asarray(alpha, dtype=np.float64)

    def log_snr(self, t):
        """``lambda(t) = log(alpha_t / sigma_t)``."""
        alpha, sigma = self.alpha_sigma(t)
        with np.errstate(divide="ignore"):
            return np.log(np.asarray(alpha, dtype=np.float64)) - np.log(np.asarray(sigma, dtype=np.float64))


def _check_times(t, lo: float, hi: float, name: str = "t") -> np.ndarray:
    arr = np.asarray(t, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {t!r}")
    if np.any(arr < lo) or np.any(arr > hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got {t!r}")
    return arr


@dataclass(frozen=True)
class DiscreteVPSchedule(NoiseSchedule):
    """Discrete variance-preserving schedule given by ``alphas_cumprod`` (length T, decreasing in (0, 1]).

    The last entry may be exactly 0: a zero-terminal-SNR schedule (Lin et al. 2024, diffusers'
    ``rescale_betas_zero_snr``), where the final training timestep is pure noise (``alpha = 0``,
    ``sigma~ = inf``), like rectified flow at ``t = 1``.
    """

    alphas_cumprod: np.ndarray = field(repr=False)
    family: str = "vp"

    def __post_init__(self):
        acp = as_float_vector("alphas_cumprod", self.alphas_cumprod, min_len=2)
        if np.any(acp[:-1] <= 0) or acp[-1] < 0 or np.any(acp > 1):
            raise ValueError(
                f"alphas_cumprod must lie in (0, 1] (the last entry may be 0: zero terminal SNR), "
                f"got range [{acp.min():.3g}, {acp.max():.3g}]"
            )
        if np.any(np.diff(acp) >= 0):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        acp.setflags(write=False)
        object.__setattr__(self, "alphas_cumprod", acp)

    @classmethod
    def from_betas(cls, betas) -> DiscreteVPSchedule:
        """From training betas: ``alphas_cumprod = cumprod(1 - betas)``."""
        b = as_float_vector("betas", betas, min_len=2)
        if np.any(b <= 0) or np.any(b >= 1):
            raise ValueError("betas must lie in (0, 1)")
        return cls(np.cumprod(1.0 - b))

    @classmethod
    def from_beta_schedule(
        cls,
        beta_schedule: str = "scaled_linear",
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
    ) -> DiscreteVPSchedule:
        """The diffusers beta schedules: ``linear``, ``scaled_linear`` (Stable Diffusion), ``squaredcos_cap_v2``."""
        n = as_int("num_train_timesteps", num_train_timesteps, minimum=2)
        b0, b1 = as_real("beta_start", beta_start), as_real("beta_end", beta_end)
        if beta_schedule == "linear":
            betas = np.linspace(b0, b1, n)
        elif beta_schedule == "scaled_linear":
            betas = np.linspace(math.sqrt(b0), math.sqrt(b1), n) ** 2
        elif beta_schedule == "squaredcos_cap_v2":

            def abar(u):
                return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

            betas = np.array([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)])
        else:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
        return cls.from_betas(betas)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.size)

    @property
    def betas(self) -> np.ndarray:
        """Training betas ``1 - alphas_cumprod[k] / alphas_cumprod[k-1]``."""
        acp = self.alphas_cumprod
        return 1.0 - acp / np.concatenate([[1.0], acp[:-1]])

    @property
    def zero_terminal_snr(self) -> bool:
        return bool(self.alphas_cumprod[-1] == 0.0)

    def clean_time(self) -> float:
        """``-1.0``: the step before training timestep 0, where ``alphas_cumprod = 1`` (the ``1.0`` that
        :attr:`betas` prepends; diffusers' ``prev_timestep = -1`` with ``final_alpha_cumprod = 1``). The log-linear
        interpolation of ``alphas_cumprod`` extended from ``t = 0`` to ``t = -1`` reaches ``1`` exactly there; the
        training timesteps themselves (``0 .. T-1``) never reach ``sigma = 0``."""
        return -1.0

    def _acp(self, t):
        """``alphas_cumprod`` at (fractional) ``t``: log-linear between integers; linear on a last segment that ends
        at zero terminal SNR (where the logarithm is ``-inf``)."""
        t = _check_times(t, 0.0, self.num_train_timesteps - 1.0)
        acp = self.alphas_cumprod
        grid = np.arange(self.num_train_timesteps)
        if not self.zero_terminal_snr:
            return np.exp(np.interp(t, grid, np.log(acp)))
        last = t > self.num_train_timesteps - 2
        inner = np.exp(np.interp(np.minimum(t, self.num_train_timesteps - 2), grid[:-1], np.log(acp[:-1])))
        return np.where(last, np.interp(t, grid[-2:], acp[-2:]), inner)

    def alpha_sigma(self, t):
        acp = self._acp(t)
        return np.sqrt(acp), np.sqrt(1.0 - acp)

    def continuous_beta(self, t):
        """``beta(t) = -d log(alphas_cumprod)/dt`` of the log-linear interpolation (left segment at integers)."""
        t = _check_times(t, 0.0, self.num_train_timesteps - 1.0)
        k = np.clip(np.ceil(t).astype(int), 0, self.num_train_timesteps - 1)
        return -np.log(1.0 - self.betas[k])

    def training_beta(self, t):
        """The discrete training beta at ``int(t)``, as the official code looks it up (docs/paper-mode.md)."""
        t = _check_times(t, 0.0, self.num_train_timesteps - 1.0)
        return self.betas[np.asarray(t).astype(int)]

    def derivatives(self, t):
        alpha, sigma = self.alpha_sigma(t)
        d_alpha = -0.5 * self.continuous_beta(t) * alpha
        return d_alpha, -alpha * d_alpha / sigma

    def time_from_edm_sigma(self, edm_sigma):
        """Exact inverse of :meth:`edm_sigma`: ``log alphas_cumprod = -log(1 + sigma~^2)`` is linear in ``t``."""
        s = np.asarray(edm_sigma, dtype=np.float64)
        acp = self.alphas_cumprod
        if self.zero_terminal_snr:  # pure noise at the last timestep; finite sigmas lie on the other segments
            if np.any(np.isnan(s)) or np.any(s < 0):
                raise ValueError(f"edm_sigma must be >= 0, got {edm_sigma!r}")
            infinite = np.isinf(s)
            first, last_finite = math.sqrt(1.0 / acp[0] - 1.0), math.sqrt(1.0 / acp[-2] - 1.0)
            inside = np.clip(np.where(infinite, first, s), first, last_finite)
            inner = DiscreteVPSchedule(acp[:-1]).time_from_edm_sigma(inside) if acp.size > 2 else np.zeros_like(s)
            # beyond the last finite node, alphas_cumprod falls linearly to 0: acp(t) = acp[-2] (T - 1 - t)
            tail = (self.num_train_timesteps - 1) - 1.0 / (acp[-2] * (1.0 + np.where(infinite, 1.0, s) ** 2))
            out = np.where(s > last_finite, tail, inner)
            return np.where(infinite, self.num_train_timesteps - 1.0, out)
        log_acp = np.log(acp)
        lo, hi = math.sqrt(math.expm1(-log_acp[0])), math.sqrt(math.expm1(-log_acp[-1]))
        # hosts compute sigmas in float32: accept 1e-5 relative slack at the ends, then clip
        if not np.all(np.isfinite(s)) or np.any(s < lo * (1 - 1e-5)) or np.any(s > hi * (1 + 1e-5)):
            raise ValueError(f"edm_sigma must lie in [{lo:.6g}, {hi:.6g}] for this schedule, got {edm_sigma!r}")
        s = np.clip(s, lo, hi)
        target = -np.log1p(s * s)
        return np.interp(-target, -log_acp, np.arange(self.num_train_timesteps, dtype=np.float64))

    def timesteps(self, num_steps: int, spacing: str = "trailing", steps_offset: int = 0) -> np.ndarray:
        """Inference timesteps as diffusers spaces them (``leading``, ``trailing``, ``linspace``), descending."""
        n = as_int("num_steps", num_steps, minimum=1)
        T = self.num_train_timesteps
        if n > T:
            raise ValueError(f"num_steps must be <= num_train_timesteps={T}, got {n}")
        if spacing == "leading":
            ts = (np.arange(n) * (T // n)).round()[::-1] + steps_offset
        elif spacing == "trailing":
            ts = np.round(np.arange(T, 0, -T / n)) - 1
        elif spacing == "linspace":
            ts = np.linspace(0, T - 1, n).round()[::-1]
        else:
            raise ValueError(f"spacing must be 'leading', 'trailing' or 'linspace', got {spacing!r}")
        return np.clip(ts, 0, T - 1).astype(np.float64)


@dataclass(frozen=True)
class EDMSchedule(NoiseSchedule):
    """Variance-exploding / EDM schedule: ``alpha = 1``, ``sigma = t`` in ``[sigma_min, sigma_max]``."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    family: str = "ve"

    def __post_init__(self):
        lo, hi = as_real("sigma_min", self.sigma_min), as_real("sigma_max", self.sigma_max)
        if not 0 < lo < hi:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {lo}, {hi}")

    def alpha_sigma(self, t):
        t = _check_times(t, 0.0, math.inf)
        return np.ones_like(t), t

    def derivatives(self, t):
        t = _check_times(t, 0.0, math.inf)
        return np.zeros_like(t), np.ones_like(t)

    def time_from_edm_sigma(self, edm_sigma):
        return _check_times(edm_sigma, 0.0, math.inf, "edm_sigma")

    def karras(self, num_steps: int, rho: float = 7.0) -> np.ndarray:
        """Karras et al. (2022) noise levels between ``sigma_max`` and ``sigma_min`` (descending, no final 0)."""
        return karras_sigmas(num_steps, self.sigma_min, self.sigma_max, rho)


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """``(sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``, ``i = 0 .. n-1``."""
    n = as_int("num_steps", num_steps, minimum=2)
    lo, hi, r = as_real("sigma_min", sigma_min), as_real("sigma_max", sigma_max), as_real("rho", rho)
    if not 0 < lo < hi or r <= 0:
        raise ValueError(f"need 0 < sigma_min < sigma_max and rho > 0, got {lo}, {hi}, {r}")
    ramp = np.linspace(0, 1, n)
    return (hi ** (1 / r) + ramp * (lo ** (1 / r) - hi ** (1 / r))) ** r


@dataclass(frozen=True)
class RectifiedFlowSchedule(NoiseSchedule):
    """Rectified flow: ``alpha = 1 - t``, ``sigma = t``, ``t`` in [0, 1]; ``sigma~ = t / (1 - t)``."""

    family: str = "flow"

    def alpha_sigma(self, t):
        t = _check_times(t, 0.0, 1.0)
        return 1.0 - t, t

    def derivatives(self, t):
        t = _check_times(t, 0.0, 1.0)
        return -np.ones_like(t), np.ones_like(t)

    def time_from_edm_sigma(self, edm_sigma):
        s = _check_times(edm_sigma, 0.0, math.inf, "edm_sigma")
        with np.errstate(invalid="ignore"):
            return np.where(np.isinf(s), 1.0, s / (1.0 + s))

    def timesteps(self, num_steps: int, shift: float = 1.0, t_max: float = 1.0) -> np.ndarray:
        """``t_i = linspace(t_max, 0, n+1)[:-1]`` with the SD3/Flux time shift ``shift t / (1 + (shift-1) t)``."""
        n = as_int("num_steps", num_steps, minimum=1)
        s = as_real("shift", shift)
        top = as_real("t_max", t_max)
        if s <= 0 or not 0 < top <= 1:
            raise ValueError(f"need shift > 0 and 0 < t_max <= 1, got shift={s}, t_max={top}")
        t = np.linspace(top, 0.0, n + 1)[:-1]
        return s * t / (1.0 + (s - 1.0) * t)
