"""Exact models and high-accuracy reference trajectories for the synthetic ODE lab.

:class:`ExactModel` plays the role of a perfectly trained network for a :class:`GaussianMixture`:
given the schedule's sample ``x = alpha x~`` and noise level it returns the ideal output in any
parameterisation. :func:`reference_trajectory` integrates the probability-flow ODE
``dx~/d log(sigma~) = x~ - D(x~, sigma~)`` with scipy's DOP853 at tight tolerances; :func:`reference_flow_end`
integrates the same ODE in rectified-flow time, where a run starts at pure noise (``t = 1``, ``sigma~ = inf``).
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp

from benchmarks.lab.distributions import GaussianMixture
from sada.trajectory.parameterization import check_kind, combine

__all__ = ["ExactModel", "reference_trajectory", "reference_flow_end", "SIGMA_FLOOR"]

# sigma~ stand-in for the clean end point: D(x~(s), s) = x~(0) + O(s^2), so 1e-7 is exact to ~1e-14.
SIGMA_FLOOR = 1e-7


class ExactModel:
    """The ideal network for ``distribution``, predicting ``kind``; counts evaluated rows."""

    def __init__(self, distribution: GaussianMixture, kind: str = "epsilon"):
        if not isinstance(distribution, GaussianMixture):
            raise TypeError(f"distribution must be a GaussianMixture, got {type(distribution).__name__}")
        self.distribution = distribution
        self.kind = check_kind(kind)
        self.calls = 0
        self.rows = 0

    def __call__(self, x, alpha: float, sigma: float) -> np.ndarray:
        """Model output at schedule sample ``x`` ``[batch, d]`` and noise level ``(alpha, sigma)``."""
        x = np.asarray(x, dtype=np.float64)
        self.calls += 1
        self.rows += x.shape[0]
        if alpha == 0.0:  # pure noise (rectified flow at t = 1): x = sigma * eps, E[x0] = mixture mean
            x0 = np.broadcast_to(self.distribution.weights @ self.distribution.means, x.shape).copy()
            eps = x / sigma
        else:
            x_tilde, edm_sigma = x / alpha, sigma / alpha
            x0 = self.distribution.denoise(x_tilde, edm_sigma)
            eps = (x_tilde - x0) / edm_sigma
        return combine(self.kind, x0, eps, alpha, sigma)


def reference_trajectory(
    distribution: GaussianMixture, x_tilde_start, edm_sigmas, rtol: float = 1e-11, atol: float = 1e-12
) -> np.ndarray:
    """``x~`` at every noise level of ``edm_sigmas`` (descending, first = start, ``0`` allowed last).

    Returns an array ``[len(edm_sigmas), batch, d]``. The whole batch is one ODE system (the mixture
    denoiser acts per sample).
    """
    s = np.asarray(edm_sigmas, dtype=np.float64)
    if s.ndim != 1 or s.size < 1 or np.any(np.diff(s) >= 0) or s[-1] < 0 or not np.all(np.isfinite(s)):
        raise ValueError(f"edm_sigmas must be finite, >= 0 and strictly decreasing, got {s.tolist()}")
    x0 = np.asarray(x_tilde_start, dtype=np.float64)
    shape = x0.shape
    floor = np.maximum(s, SIGMA_FLOOR)
    u = np.log(floor)

    def rhs(log_sigma, y):
        x = y.reshape(shape)
        return (x - distribution.denoise(x, float(np.exp(log_sigma)))).ravel()

    if s.size == 1:
        return x0[None].copy()
    sol = solve_ivp(rhs, (u[0], u[-1]), x0.ravel(), method="DOP853", t_eval=u, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference integration failed: {sol.message}")
    out = sol.y.T.reshape((s.size,) + shape)
    zero = s == 0
    if np.any(zero):
        out[zero] = distribution.denoise(out[zero][0], SIGMA_FLOOR)
    return out


def reference_flow_end(
    distribution: GaussianMixture, x_start, t_start: float = 1.0, rtol: float = 1e-11, atol: float = 1e-12
) -> np.ndarray:
    """The clean end (``t = 0``) of the rectified-flow ODE ``dx/dt = eps - x0`` from ``x_start`` at ``t_start``.

    ``t_start = 1`` is pure noise (``alpha = 0``), where the EDM form of :func:`reference_trajectory` has no finite
    starting point; the velocity is smooth in ``t`` on ``[SIGMA_FLOOR, 1]``, and the last stretch to ``t = 0`` is
    the denoiser at ``SIGMA_FLOOR`` (exact to ~1e-14, as in :func:`reference_trajectory`).
    """
    t0 = float(t_start)
    if not 0.0 < t0 <= 1.0:
        raise ValueError(f"t_start must lie in (0, 1], got {t_start!r}")
    x = np.asarray(x_start, dtype=np.float64)
    shape = x.shape
    model = ExactModel(distribution, "flow_velocity")
    t_floor = SIGMA_FLOOR / (1.0 + SIGMA_FLOOR)

    def rhs(t, y):
        return model(y.reshape(shape), 1.0 - t, t).ravel()

    sol = solve_ivp(rhs, (t0, t_floor), x.ravel(), method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference integration failed: {sol.message}")
    x_floor = sol.y[:, -1].reshape(shape)
    return distribution.denoise(x_floor / (1.0 - t_floor), SIGMA_FLOOR)
