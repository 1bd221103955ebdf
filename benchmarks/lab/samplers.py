"""Reference ODE samplers in numpy, written the way k-diffusion writes them.

``denoise(i, x~)`` returns the data prediction ``D`` at node ``i`` of ``sigmas`` (EDM variables); the
samplers never see a schedule. ``sigmas`` is descending; a final ``0`` is the clean end point.
:func:`sample_flow_euler` works in rectified-flow time with a velocity model instead.

Orders (global error vs. step size): Euler 1, Heun 2, DPM-Solver++(2M) 2, flow Euler 1.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sample_euler", "sample_heun", "sample_dpmpp_2m", "sample_flow_euler", "SAMPLERS"]


def _sigmas(sigmas) -> np.ndarray:
    s = np.asarray(sigmas, dtype=np.float64)
    if s.ndim != 1 or s.size < 2 or np.any(np.diff(s) >= 0) or s[-1] < 0 or not np.all(np.isfinite(s)):
        raise ValueError(f"sigmas must be finite, >= 0 and strictly decreasing with >= 2 entries, got {s.tolist()}")
    return s


def sample_euler(denoise, x, sigmas) -> np.ndarray:
    """Euler on ``dx~/dsigma~ = (x~ - D) / sigma~`` (DDIM in EDM form)."""
    s = _sigmas(sigmas)
    for i in range(s.size - 1):
        d = (x - denoise(i, x)) / s[i]
        x = x + d * (s[i + 1] - s[i])
    return x


def sample_heun(denoise, x, sigmas) -> np.ndarray:
    """Heun's second-order method (Karras et al. 2022, Alg. 1); Euler on a final step to ``sigma = 0``.

    Calls ``denoise(i + 1, x_pred)`` for the corrector: two evaluations per step.
    """
    s = _sigmas(sigmas)
    for i in range(s.size - 1):
        d = (x - denoise(i, x)) / s[i]
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0:
            x = x + d * dt
        else:
            x_pred = x + d * dt
            d2 = (x_pred - denoise(i + 1, x_pred)) / s[i + 1]
            x = x + (d + d2) / 2 * dt
    return x


def sample_dpmpp_2m(denoise, x, sigmas) -> np.ndarray:
    """DPM-Solver++(2M) (Lu et al. 2022) in log-SNR time ``lambda = -log sigma~``, variable step."""
    s = _sigmas(sigmas)
    old = None
    for i in range(s.size - 1):
        den = denoise(i, x)
        if s[i + 1] == 0:
            x = den
        else:
            lam, lam_next = -np.log(s[i]), -np.log(s[i + 1])
            h = lam_next - lam
            if old is None:
                d = den
            else:
                r = (lam - (-np.log(s[i - 1]))) / h
                d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
            x = (s[i + 1] / s[i]) * x - np.expm1(-h) * d
        old = den
    return x


def sample_flow_euler(velocity, x, times) -> np.ndarray:
    """Euler on the rectified-flow ODE ``dx/dt = u(x, t)``; ``times`` descending from ~1 to 0."""
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or t.size < 2 or np.any(np.diff(t) >= 0) or t[0] > 1 or t[-1] < 0:
        raise ValueError(f"times must decrease strictly within [0, 1], got {t.tolist()}")
    for i in range(t.size - 1):
        x = x + (t[i + 1] - t[i]) * velocity(i, x)
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m, "flow_euler": sample_flow_euler}
