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

__all__ = [
    "paper_step_weights",
    "paper_vp_drift",
    "paper_step_estimate",
    "corrected_step_estimate",
    "flow_velocity_extrapolation",
]


def paper_step_weights() -> np.ndarray:
    """The step estimate's weights as the official code implements Theorem 3.5.

    Returns:
        float64 ``(5/8, 3/4, -3/8)`` on ``(f_n, f_{n-1}, f_{n-2})`` (a fresh copy).

    Notes:
        Eq. (14) / (A.41): ``1.5 * AM3 - 0.5 * AM2``. AM3 ``(5, 8, -1)/12`` is the increment over ``[t_{n-1}, t_n]``
        with ``f_n`` as the implicit end point, AM2 ``(1/2, 1/2)`` the increment over ``[t_{n-2}, t_{n-1}]``; the two
        are extrapolated one interval ahead with the Adams-Bashforth weights ``(3/2, -1/2)``.

    Examples:
        >>> paper_step_weights() * 8
        array([ 5.,  6., -3.])
    """
    return _paper_step_weights().copy()


@functools.lru_cache(maxsize=1)
def _paper_step_weights() -> np.ndarray:
    am3 = adams_weights(np.array([1.0, 0.0, -1.0]), 0.0, 1.0)  # nodes t_n = 1, t_{n-1} = 0, t_{n-2} = -1
    am2 = np.concatenate([[0.0], adams_weights(np.array([0.0, -1.0]), -1.0, 0.0)])
    return 1.5 * am3 - 0.5 * am2


def paper_vp_drift(x, eps, beta: float, sigma: float, num_steps: int):
    """The VP drift as the official code computes it.

    Args:
        x: the VP sample ``x_n``.
        eps: the noise prediction at ``x_n``.
        beta: the training ``beta`` at the step's timestep.
        sigma: the VP noise std ``s_n``.
        num_steps: ``N``, the run's step count.

    Returns:
        ``f_n = (N beta_n / 2) (-x_n + eps_n / s_n)``: the probability-flow drift in the step index.

    Examples:
        >>> import numpy as np
        >>> paper_vp_drift(np.array([1.0]), np.array([0.5]), 0.02, 0.5, 50)
        array([0.])
    """
    return (num_steps * beta / 2.0) * (-x + eps / sigma)


def paper_step_estimate(x, f_n, f_prev, f_prev2, num_steps: int):
    """Theorem 3.5's step estimate as the official code implements it.

    Args:
        x: the sample ``x_n``.
        f_n, f_prev, f_prev2: :func:`paper_vp_drift` at steps ``n``, ``n - 1``, ``n - 2``.
        num_steps: ``N``.

    Returns:
        ``x^_{n+1} = x_n - (5/8 f_n + 3/4 f_{n-1} - 3/8 f_{n-2}) / N``.

    Notes:
        Eq. (14) with the weights of :func:`paper_step_weights` and ``delta = 1/N`` (the time runs backwards).

    Examples:
        >>> import numpy as np
        >>> paper_step_estimate(np.array([1.0]), np.array([8.0]), np.array([8.0]), np.array([8.0]), 4)
        array([-1.])
    """
    w = _paper_step_weights()  # constants, computed once
    return x - (float(w[0]) * f_n + float(w[1]) * f_prev + float(w[2]) * f_prev2) / num_steps


def corrected_step_estimate(x_tilde, eps_history, sigma_nodes, sigma_next):
    """Theorem 3.5's step estimate on the run's real noise levels (Adams quadrature).

    Args:
        x_tilde: the EDM sample ``x~_n = x_n / alpha_n``.
        eps_history: ``[k, rows, ...]`` noise predictions, newest first.
        sigma_nodes: ``[rows, k]`` or ``[k]``: the EDM noise levels ``sigma~`` of those predictions.
        sigma_next: ``sigma~_{n+1}``.

    Returns:
        ``x~^_{n+1} = x~_n + sum_i c_i eps_i`` with ``c_i = integral_{sigma~_n}^{sigma~_{n+1}} l_i`` (Theorem B.2).

    Notes:
        Every schedule's probability-flow ODE reads ``dx~/dsigma~ = eps`` in the EDM variables; the estimate
        integrates the Lagrange interpolant of the last evaluations over the real interval. With one node it is the
        Euler (DDIM) step.

    Examples:
        >>> import numpy as np
        >>> corrected_step_estimate(np.array([2.0]), np.array([[1.0]]), np.array([1.0]), 0.5)  # one Euler step
        array([1.5])
    """
    weights = adams_weights(sigma_nodes, sigma_nodes[..., 0], sigma_next)
    return x_tilde + combine(weights, eps_history)


def flow_velocity_extrapolation(v_n, v_prev):
    """The official flow-matching skip: linear extrapolation of the velocity in the step index.

    Args:
        v_n, v_prev: the velocities at steps ``n`` and ``n - 1``.

    Returns:
        ``v^ = 2 v_n - v_{n-1}``.

    Notes:
        After a skipped step the official history holds a duplicate, so a following skip reuses ``v_n``.

    Examples:
        >>> import numpy as np
        >>> flow_velocity_extrapolation(np.array([3.0]), np.array([1.0]))
        array([5.])
    """
    return 2.0 * v_n - v_prev
