"""SADA's estimates of a skipped step (paper Theorem 3.5 and Theorem 3.7), validated float64.

Two variants of the step-wise estimator (Theorem 3.5):

* ``paper`` -- what the official code computes (docs/paper-mode.md): the drift of the VP probability-flow ODE
  scaled by ``N * beta_n`` and integrated with ``delta = 1/N`` and the fixed weights
  ``(5/8, 3/4, -3/8) = 1.5 * AM3 - 0.5 * AM2``. ``delta * f`` is the drift of *one training timestep*, so the
  estimate barely moves away from ``x_n``; the weights evaluate the mean drift at ``t_n`` (exact for constant drift
  only).
* ``corrected`` -- the same idea on the run's actual noise levels: integrate the Lagrange interpolant of the drift
  through the latest computed nodes over the real interval ``[t_n, t_{n+1}]`` (Theorem B.2 on non-uniform nodes),
  in the EDM variables ``x~ = x / alpha``, ``sigma~ = sigma / alpha`` where the probability-flow ODE of every
  schedule (VP, VE, rectified flow) reads ``dx~/dsigma~ = eps``.

The formulas are the kernels of :mod:`sada.kernels.estimators`.
"""

from __future__ import annotations

import math

import numpy as np

from sada import kernels
from sada.validation import as_int, as_real, distinct_nodes, finite_array, stack_finite

__all__ = [
    "paper_step_weights",
    "paper_vp_drift",
    "paper_step_estimate",
    "corrected_step_weights",
    "corrected_step_estimate",
    "multistep_estimate",
    "flow_velocity_extrapolation",
    "embedded_pair_weights",
    "skip_error",
]


def paper_step_weights() -> np.ndarray:
    """Theorem 3.5, eq. (14)/(A.41): ``(5/8, 3/4, -3/8)`` on ``(f_n, f_{n-1}, f_{n-2})`` = ``1.5 AM3 - 0.5 AM2``."""
    return kernels.paper_step_weights()


def paper_vp_drift(x, eps, beta: float, sigma: float, num_steps: int) -> np.ndarray:
    """The official code's velocity ``f_n = (N beta_n / 2) * (-x_n + eps_n / s_n)``.

    ``x`` is the VP-scaled sample, ``eps`` the (guided) noise prediction, ``beta`` the *training* beta at the
    step's discrete timestep, ``sigma`` the VP noise std ``s_n`` and ``num_steps`` N.
    """
    beta = as_real("beta", beta)
    sigma = as_real("sigma", sigma)
    n = as_int("num_steps", num_steps, minimum=1)
    if beta <= 0 or sigma <= 0:
        raise ValueError(f"beta and sigma must be > 0, got beta={beta}, sigma={sigma}")
    return kernels.paper_vp_drift(finite_array("x", x), finite_array("eps", eps), beta, sigma, n)


def paper_step_estimate(x, drifts, num_steps: int) -> np.ndarray:
    """Theorem 3.5 as implemented: ``x_hat_{n+1} = x_n - (1/N) (5/8 f_n + 3/4 f_{n-1} - 3/8 f_{n-2})``.

    ``drifts`` are ``(f_n, f_{n-1}, f_{n-2})`` from :func:`paper_vp_drift`.
    """
    n = as_int("num_steps", num_steps, minimum=1)
    f = stack_finite("drifts", list(drifts))
    if f.shape[0] != 3:
        raise ValueError(f"drifts must hold (f_n, f_(n-1), f_(n-2)), got {f.shape[0]} entries")
    return kernels.paper_step_estimate(finite_array("x", x), f[0], f[1], f[2], n)


def corrected_step_weights(sigma_nodes, sigma_next: float) -> np.ndarray:
    """Weights ``c_i`` with ``x~_{n+1} = x~_n + sum_i c_i eps_i`` on the run's real noise levels.

    ``sigma_nodes = (sigma~_n, sigma~_{n-1}, ...)`` (newest first, 1 to 4 nodes), ``sigma_next`` the
    next noise level. ``c = integral_{sigma~_n}^{sigma~_{n+1}} l_i`` (Theorem B.2, non-uniform nodes).
    With three equally spaced nodes this is ``(sigma~_{n+1} - sigma~_n) * (23, -16, 5)/12`` (AB3): the
    consistent counterpart of the paper's ``(5/8, 3/4, -3/8)``.
    """
    nodes = distinct_nodes("sigma_nodes", sigma_nodes)
    if nodes.size > 4:
        raise ValueError(f"sigma_nodes takes 1 to 4 nodes, got {nodes.size}")
    return kernels.adams_weights(nodes, nodes[0], as_real("sigma_next", sigma_next))


def corrected_step_estimate(x_tilde, eps_history, sigma_nodes, sigma_next: float) -> np.ndarray:
    """The corrected Theorem 3.5 estimate of ``x~_{n+1}`` in EDM variables.

    ``x_tilde`` is ``x_n / alpha_n``; ``eps_history`` holds ``(eps_n, eps_{n-1}, ...)`` matching
    ``sigma_nodes``. Integrates the interpolated drift ``dx~/dsigma~ = eps`` over the true interval.
    """
    eps = stack_finite("eps_history", list(eps_history))
    nodes = distinct_nodes("sigma_nodes", sigma_nodes)
    if nodes.size != eps.shape[0] or nodes.size > 4:
        raise ValueError(f"got {eps.shape[0]} noise predictions for {nodes.size} sigma nodes (1 to 4)")
    return kernels.corrected_step_estimate(
        finite_array("x_tilde", x_tilde), eps, nodes, as_real("sigma_next", sigma_next)
    )


def multistep_estimate(values, abscissae, at: float) -> np.ndarray:
    """Theorem 3.7, eq. (16): the Lagrange polynomial through stored ``(abscissa, value)`` pairs at ``at``.

    SADA stores the clean-sample estimate every ``lagrange_int`` steps and evaluates the polynomial at the skipped
    step. The paper's abscissae are integer step indices; the corrected variant passes the steps' noise levels.
    All nodes lie before ``at``, so this is an extrapolation (bounded by
    :func:`sada.reference.lagrange.interpolation_error_bound`).
    """
    vals = stack_finite("values", list(values))
    weights = kernels.lagrange_weights(distinct_nodes("abscissae", abscissae), as_real("at", at))
    if weights.size != vals.shape[0]:
        raise ValueError(f"got {vals.shape[0]} values for {weights.size} abscissae")
    return kernels.combine(weights, vals)


def flow_velocity_extrapolation(velocity_history) -> np.ndarray:
    """The official flow-matching skip: ``v_hat = h[-2] + (h[-2] - h[-3])``.

    ``velocity_history`` is the 3-deep history *after* the skipped step appended a duplicate of the
    last computed velocity, oldest first. On the first skip after computed steps ``n-1, n`` this is the
    linear step-index extrapolation ``2 v_n - v_{n-1}``; on later consecutive skips it is ``v_n``.
    """
    hist = stack_finite("velocity_history", list(velocity_history))
    if hist.shape[0] != 3:
        raise ValueError(f"velocity_history must hold 3 entries, got {hist.shape[0]}")
    return kernels.flow_velocity_extrapolation(hist[1], hist[0])


def embedded_pair_weights(nodes, at: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights of an embedded pair of extrapolations at ``at`` (newest node first).

    ``high`` uses every node (degree ``k``), ``low`` the newest ``k`` nodes only (degree ``k - 1``, padded with
    a zero weight for the oldest). As in embedded Runge-Kutta pairs, ``(high - low) . values`` estimates the
    local error of the lower-order estimate, an upper estimate for the one actually used; SADA's
    error-controlled mode skips a step only when it is small.
    """
    return kernels.embedded_pair_weights(distinct_nodes("nodes", nodes, min_len=2), as_real("at", at))


def skip_error(values, nodes, at: float, h: float, sample=None) -> np.ndarray:
    """The accuracy dial's test (docs/theory.md, "The accuracy dial"): per sample, the estimated error that skipping
    the step at ``at`` adds to the sample,

    ``e = (1 - exp(-h)) * RMS((high - low) . D) / RMS(low . D)``  (relative to the clean sample), or
    ``e = (1 - exp(-h)) * RMS((high - low) . D) / RMS(x / alpha)``  (relative to the sample, ``sample`` given),

    where ``D`` are the stored clean-sample predictions at ``nodes`` (newest first, ``k + 1`` of them), ``low`` the
    Lagrange extrapolation (Theorem 3.7) through the newest ``k`` -- the estimate a skipped step receives -- and
    ``high`` the one through all ``k + 1``: their difference estimates ``low``'s error (an embedded pair), and
    ``1 - exp(-h)`` (:func:`sada.kernels.step_transfer`, ``h`` the log-SNR step that consumes the estimate) is the
    share of it that a data-prediction step moves into ``x / alpha``. ``sample`` is ``x / alpha`` of the step
    that receives the estimate, ``[samples, ...]``: for Gaussian data of RMS ``s`` the ODE carries an error of
    ``x / alpha`` at noise ``sigma / alpha`` into the final sample scaled by ``s / sqrt(s^2 + (sigma / alpha)^2)
    = s / RMS(x / alpha)`` (:func:`final_sample_sensitivity`), so the second form is the relative error the skip
    leaves in the final sample. A step may be skipped iff ``e <= tolerance``.
    """
    nodes = distinct_nodes("nodes", nodes, min_len=2)
    stacked = stack_finite("values", values)
    if stacked.shape[0] != nodes.size:
        raise ValueError(f"need one value per node: {stacked.shape[0]} values for {nodes.size} nodes")
    if stacked.ndim < 2:
        raise ValueError(f"values must be [nodes, samples, ...], got shape {stacked.shape}")
    if isinstance(h, bool) or not isinstance(h, (int, float, np.floating)) or not h >= 0:
        raise ValueError(f"h (the log-SNR step) must be a number >= 0 (inf at a clean end), got {h!r}")
    high, low = kernels.embedded_pair_weights(nodes, as_real("at", at))
    reference = kernels.combine(low, stacked)
    if sample is not None:
        reference = stack_finite("sample", [sample])[0]
        if reference.shape != stacked.shape[1:]:
            raise ValueError(f"sample must have the shape of one value {stacked.shape[1:]}, got {reference.shape}")
    return kernels.step_transfer(h) * kernels.relative_rms(kernels.combine(high - low, stacked), reference)


def final_sample_sensitivity(data_rms: float, edm_sigma: float) -> float:
    """How an error of ``x / alpha`` at EDM noise level ``edm_sigma = sigma / alpha`` reaches the final sample of the
    probability-flow ODE when the data are Gaussian with per-element RMS ``data_rms``: the ODE's solution is
    ``x_0 = (x / alpha) * s / sqrt(s^2 + sigma~^2)``, linear, so the factor is ``s / sqrt(s^2 + sigma~^2)`` --
    ``s / RMS(x / alpha)`` in expectation. Why :func:`skip_error` measures against ``x / alpha``."""
    s, sigma = as_real("data_rms", data_rms), as_real("edm_sigma", edm_sigma)
    if not s > 0 or not sigma >= 0:
        raise ValueError(f"need data_rms > 0 and edm_sigma >= 0, got {data_rms!r}, {edm_sigma!r}")
    return s / math.sqrt(s * s + sigma * sigma)
