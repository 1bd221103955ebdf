"""SADA's estimates of a skipped step (paper Theorem 3.5 and its flow-matching form in the official code).

* the step estimate as the official code computes it: the VP probability-flow drift scaled by ``N beta_n`` and
  integrated with ``delta = 1/N`` and the fixed weights ``(5/8, 3/4, -3/8) = 1.5 AM3 - 0.5 AM2``
  (docs/paper-mode.md);
* the corrected step estimate: the Adams quadrature of the noise predictions on the run's real noise levels, in the
  EDM variables ``x~ = x / alpha``, ``sigma~ = sigma / alpha`` where every schedule's ODE reads ``dx~/dsigma~ = eps``;
* the official flow-matching skip: linear extrapolation of the velocity in the step index.

The multistep estimate of Theorem 3.7 is :func:`sada.kernels.lagrange.combine` of
:func:`sada.kernels.lagrange.lagrange_weights` and the stored clean samples.
"""
from __future__ import annotations

import functools

import numpy as np

from sada.kernels.lagrange import adams_weights, combine

__all__ = ["paper_step_weights", "paper_vp_drift", "paper_step_estimate", "corrected_step_estimate",
           "flow_velocity_extrapolation"]


def paper_step_weights() -> np.ndarray:
    """Theorem 3.5, eq. (14) / (A.41) as implemented: ``(5/8, 3/4, -3/8)`` on ``(f_n, f_{n-1}, f_{n-2})``.

    ``1.5 * AM3 - 0.5 * AM2``: AM3 ``(5, 8, -1)/12`` is the increment over ``[t_{n-1}, t_n]`` with ``f_n`` as the
    implicit end point, AM2 ``(1/2, 1/2)`` the increment over ``[t_{n-2}, t_{n-1}]``; the two are extrapolated one
    interval ahead with the Adams-Bashforth weights ``(3/2, -1/2)`` (numpy float64).
    """
    return _paper_step_weights().copy()


@functools.lru_cache(maxsize=1)
def _paper_step_weights() -> np.ndarray:
    am3 = adams_weights(np.array([1.0, 0.0, -1.0]), 0.0, 1.0)  # nodes t_n = 1, t_{n-1} = 0, t_{n-2} = -1
    am2 = np.concatenate([[0.0], adams_weights(np.array([0.0, -1.0]), -1.0, 0.0)])
    return 1.5 * am3 - 0.5 * am2


def paper_vp_drift(x, eps, beta: float, sigma: float, num_steps: int):
    """The official code's velocity ``f_n = (N beta_n / 2) (-x_n + eps_n / s_n)`` (VP sample ``x``, training beta,
    VP noise std ``s_n``, ``N`` steps)."""
    return (num_steps * beta / 2.0) * (-x + eps / sigma)


def paper_step_estimate(x, f_n, f_prev, f_prev2, num_steps: int):
    """Theorem 3.5 as implemented: ``x^_{n+1} = x_n - (5/8 f_n + 3/4 f_{n-1} - 3/8 f_{n-2}) / N``."""
    w = _paper_step_weights()  # constants, computed once
    return x - (float(w[0]) * f_n + float(w[1]) * f_prev + float(w[2]) * f_prev2) / num_steps


def corrected_step_estimate(x_tilde, eps_history, sigma_nodes, sigma_next):
    """The corrected Theorem 3.5 estimate ``x~^_{n+1} = x~_n + sum_i c_i eps_i``, ``c_i = integral_{sigma~_n}^{sigma~_{n+1}}
    l_i``: the interpolated drift ``dx~/dsigma~ = eps`` of the last network evaluations integrated over the real
    interval. ``eps_history`` is ``[k, rows, ...]`` (newest first), ``sigma_nodes`` ``[rows, k]`` or ``[k]``."""
    weights = adams_weights(sigma_nodes, sigma_nodes[..., 0], sigma_next)
    return x_tilde + combine(weights, eps_history)


def flow_velocity_extrapolation(v_n, v_prev):
    """The official flow-matching skip ``v^ = 2 v_n - v_{n-1}``: linear extrapolation in the step index (after a
    skipped step the history holds a duplicate, so a following skip reuses ``v_n``)."""
    return 2.0 * v_n - v_prev
