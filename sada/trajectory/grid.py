"""The noise levels of one sampling run, as every engine sees them.

A run of ``N`` steps visits nodes ``n = 0 .. N-1`` and ends at node ``N`` (usually the clean end,
``sigma = 0``). :class:`StepGrid` holds ``alpha_n``, ``sigma_n`` and the schedule time ``t_n`` of every
node, plus what the estimators derive from them (EDM sigma, log-SNR, the paper's training beta).

Every node has a finite time, the clean end included: the schedule's own
:meth:`~sada.trajectory.schedules.NoiseSchedule.clean_time` (rectified flow and VE: ``0.0``; discrete VP: ``-1.0``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from sada.trajectory.schedules import DiscreteVPSchedule, NoiseSchedule
from sada.validation import as_float_vector, as_real

__all__ = ["EARLY_END_RATIO", "StepGrid", "early_end_note"]


@dataclass(frozen=True)
class StepGrid:
    """``alpha``, ``sigma`` and ``times`` have ``N + 1`` entries (steps and end point).

    ``times[n]`` is the schedule time of node ``n`` and is always finite, so a loop may read ``times[n + 1]`` at
    every step. At the clean end (``sigma = 0``) it is the schedule's
    :meth:`~sada.trajectory.schedules.NoiseSchedule.clean_time`: ``0.0`` for rectified flow (``x = x0`` at
    ``t = 0``) and VE (``sigma = t``); ``-1.0`` for a discrete VP schedule, the step before training timestep 0,
    where ``alphas_cumprod = 1`` (diffusers' ``prev_timestep = -1`` with ``final_alpha_cumprod = 1``; the
    log-linear interpolation of ``alphas_cumprod`` extended to ``t = -1`` reaches it exactly). Times never
    increase along the run.
    """

    alpha: np.ndarray = field(repr=False)
    sigma: np.ndarray = field(repr=False)
    times: np.ndarray = field(repr=False)
    family: str
    training_beta: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        a = as_float_vector("alpha", self.alpha, min_len=2)
        s = as_float_vector("sigma", self.sigma, min_len=2)
        t = np.asarray(self.times, dtype=np.float64)
        if not (a.shape == s.shape == t.shape):
            raise ValueError(f"alpha, sigma, times need one length, got {a.size}, {s.size}, {t.size}")
        if not np.all(np.isfinite(t)):
            raise ValueError(
                f"times must be finite at every node (the clean end too: use the schedule's "
                f"clean_time()), got {t.tolist()}"
            )
        if np.any(a < 0) or np.any(s < 0):
            raise ValueError("alpha and sigma must be >= 0")
        if np.any(s[:-1] <= 0):
            raise ValueError("sigma must be > 0 at every step before the end point")
        edm = np.divide(s, a, out=np.full_like(s, np.inf), where=a > 0)
        if np.any(np.diff(edm) >= 0):
            raise ValueError(f"noise levels must strictly decrease along the run, got sigma/alpha={edm.tolist()}")
        if np.any(np.diff(t) > 0):
            raise ValueError(f"times must not increase along the run, got {t.tolist()}")
        for arr in (a, s, t):
            arr.setflags(write=False)
        object.__setattr__(self, "alpha", a)
        object.__setattr__(self, "sigma", s)
        object.__setattr__(self, "times", t)
        if self.training_beta is not None:
            b = as_float_vector("training_beta", self.training_beta)
            if b.size != a.size - 1:
                raise ValueError(f"training_beta needs {a.size - 1} entries, got {b.size}")
            b.setflags(write=False)
            object.__setattr__(self, "training_beta", b)

    @property
    def num_steps(self) -> int:
        return int(self.alpha.size - 1)

    @property
    def edm_sigma(self) -> np.ndarray:
        """``sigma~_n = sigma_n / alpha_n`` (``inf`` where ``alpha_n = 0``, e.g. rectified flow at t = 1)."""
        return np.divide(self.sigma, self.alpha, out=np.full_like(self.sigma, np.inf), where=self.alpha > 0)

    @property
    def log_snr(self) -> np.ndarray:
        """``lambda_n = log(alpha_n / sigma_n)`` (``+inf`` at a clean end point, ``-inf`` at pure noise)."""
        with np.errstate(divide="ignore"):
            return np.log(self.alpha) - np.log(self.sigma)

    @property
    def median_log_snr_step(self) -> float | None:
        """The median of the run's finite log-SNR steps ``lambda_{n+1} - lambda_n`` (a step into a clean end point
        is infinite and left out; ``None`` if no step is finite): how coarse the grid is for a multistep solver."""
        steps = np.diff(self.log_snr)
        steps = steps[np.isfinite(steps)]
        return float(np.median(steps)) if steps.size else None

    def abscissae(self, variable: str) -> np.ndarray:
        """Node coordinates for multistep estimates: ``index`` (the paper), ``t``, ``sigma`` (EDM) or ``lambda``."""
        if variable == "index":
            return np.arange(self.num_steps + 1, dtype=np.float64)
        if variable == "t":
            return np.asarray(self.times)
        if variable == "sigma":
            return self.edm_sigma
        if variable == "lambda":
            return self.log_snr
        if variable == "noise_fraction":
            return noise_fraction(self.edm_sigma)
        raise ValueError(
            f"abscissa variable must be 'index', 't', 'sigma', 'lambda' or 'noise_fraction', got {variable!r}"
        )

    def alpha_sigma_at(self, edm_sigma: float) -> tuple[float, float]:
        """``(alpha, sigma)`` of this grid's schedule family at any EDM noise level (e.g. a solver's
        intermediate stage): VP ``alpha = 1/sqrt(1 + s^2)``, VE ``alpha = 1``, flow ``alpha = 1/(1 + s)``."""
        s = as_real("edm_sigma", edm_sigma)
        if s < 0:
            raise ValueError(f"edm_sigma must be >= 0, got {s}")
        alpha = {"vp": 1.0 / math.sqrt(1.0 + s * s), "ve": 1.0, "flow": 1.0 / (1.0 + s)}[self.family]
        return alpha, alpha * s

    def abscissa_at(self, variable: str, edm_sigma: float) -> float:
        """The multistep abscissa of an arbitrary noise level (interpolated in log-sigma between nodes)."""
        s = as_real("edm_sigma", edm_sigma)
        if variable == "sigma":
            return s
        if variable == "lambda":
            return -math.log(s)
        if variable == "noise_fraction":
            return float(noise_fraction(np.float64(s)))
        finite = np.isfinite(self.edm_sigma[:-1]) & (self.edm_sigma[:-1] > 0)
        log_s = -np.log(self.edm_sigma[:-1][finite])  # increasing along the run
        return float(np.interp(-math.log(s), log_s, self.abscissae(variable)[:-1][finite]))

    @classmethod
    def from_times(cls, schedule: NoiseSchedule, times, final_edm_sigma: float = 0.0) -> StepGrid:
        """Grid at schedule times ``t_0 .. t_{N-1}`` (descending noise), ending at ``final_edm_sigma``."""
        t = as_float_vector("times", times)
        end = as_real("final_edm_sigma", final_edm_sigma)
        alpha, sigma = schedule.alpha_sigma(t)
        a_end, s_end, t_end = cls._end_point(schedule, end)
        beta = schedule.training_beta(t) if isinstance(schedule, DiscreteVPSchedule) else None
        return cls(np.append(alpha, a_end), np.append(sigma, s_end), np.append(t, t_end), schedule.family, beta)

    @classmethod
    def from_edm_sigmas(cls, schedule: NoiseSchedule, edm_sigmas) -> StepGrid:
        """Grid from a k-diffusion style sigma list ``sigma~_0 > ... > sigma~_N`` (last usually 0).

        Only the sigmas are known here, so on a discrete VP schedule each step's training timestep is recovered
        by the schedule's exact inverse and *rounded* (not floored: hosts compute sigmas in float32, so a time
        that was the integer 979 comes back as 978.9999957 or 979.0000012) to read the training beta.
        """
        s = as_float_vector("edm_sigmas", edm_sigmas, min_len=2)
        times = schedule.time_from_edm_sigma(s[:-1])
        grid = cls.from_times(schedule, times, final_edm_sigma=float(s[-1]))
        if isinstance(schedule, DiscreteVPSchedule):
            grid = grid.with_training_beta(schedule.training_beta(np.rint(times)))
        return grid

    def with_training_beta(self, training_beta) -> StepGrid:
        """This grid with the training beta of every step given by the host (e.g. the scheduler's own
        ``betas[timesteps[n]]``), as the official criterion reads it."""
        return dataclasses.replace(self, training_beta=as_float_vector("training_beta", training_beta))

    @staticmethod
    def _end_point(schedule: NoiseSchedule, edm_sigma: float):
        if edm_sigma < 0:
            raise ValueError(f"final_edm_sigma must be >= 0, got {edm_sigma}")
        if edm_sigma == 0.0:
            return 1.0, 0.0, float(schedule.clean_time())
        t_end = float(schedule.time_from_edm_sigma(edm_sigma))
        a_end, s_end = schedule.alpha_sigma(t_end)
        return float(a_end), float(s_end), t_end


def noise_fraction(edm_sigma):
    """``s = sigma~ / (1 + sigma~)`` of EDM noise levels ``sigma~ = sigma / alpha``: 0 at the clean end, 1 at pure
    noise; on a rectified-flow schedule it is the flow time ``t`` itself (``sigma~ = t / (1 - t)``)."""
    edm_sigma = np.asarray(edm_sigma, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(edm_sigma), 1.0, edm_sigma / (1.0 + edm_sigma))


# a run whose last noise level before the clean sample is this many times the model's smallest gets a trace note
EARLY_END_RATIO = 2.0


def early_end_note(grid: StepGrid, smallest_edm_sigma: float, fix: str) -> str | None:
    """A trace note when the run jumps to the clean sample from an EDM noise level more than ``EARLY_END_RATIO`` times
    ``smallest_edm_sigma`` (the smallest level the model was trained at), else ``None`` (also when the run stops
    short of the clean end). That last jump then dominates the run's error, whatever the solver: on the shipped U-Net
    Euler, Heun and DPM-Solver++ 2M all end 43-44 dB from the ODE solution at 50 steps of a grid that jumps from
    4.6 times the smallest level, 58-66 dB on grids that reach it (docs/troubleshooting.md). ``fix`` says what to
    change in the host."""
    smallest = as_real("smallest_edm_sigma", smallest_edm_sigma)
    if not smallest > 0:
        raise ValueError(f"smallest_edm_sigma must be > 0, got {smallest_edm_sigma!r}")
    if not isinstance(fix, str) or not fix:
        raise TypeError(f"fix must be a non-empty string, got {fix!r}")
    edm = grid.edm_sigma
    if edm[-1] != 0.0 or not np.isfinite(edm[-2]) or edm[-2] < EARLY_END_RATIO * smallest:
        return None
    last = float(edm[-2])
    return (
        f"the run jumps to the clean sample from sigma {last:.3g}, {last / smallest:.1f}x the model's smallest noise "
        f"level {smallest:.3g}: that last jump dominates the run's error, so more steps gain little and what a skip "
        f"adds shows directly; {fix} (docs/troubleshooting.md)"
    )
