"""Stability criteria (paper Criterion 3.4 and section 3.5; AdaptiveDiffusion), validated float64.

Criterion 3.4, eq. (13): step ``n`` is *stable* -- the next step may be skipped -- when the
extrapolation error is anti-aligned with the local curvature of the drift,

    M_n = (x_{n+1} - x_hat_{n+1}) * (f_n - 2 f_{n-1} + f_{n-2}),      stable  iff  mean(M_n) <= 0.

``x_{n+1}`` is the solver's actual output, ``x_hat_{n+1}`` the step estimate it is compared with
(Theorem 3.5), so the criterion and the estimator are coupled. The mean can run over the whole batch
(the official code), over each sample, or over channels only (the per-token map of section 3.5).
The formulas are the kernels of :mod:`sada.kernels.criterion`.
"""

from __future__ import annotations

import numpy as np

from sada import kernels
from sada.validation import as_int, as_real, distinct_nodes, finite_array, stack_finite

__all__ = [
    "REDUCTIONS",
    "second_difference",
    "second_divided_difference",
    "stability_product",
    "flow_stability_product",
    "is_stable",
    "token_instability_map",
    "adaptive_diffusion_skip",
]

# one decision per sample, or one for the whole batch (the official code)
REDUCTIONS = ("sample", "batch")


def second_difference(f_n, f_prev, f_prev2) -> np.ndarray:
    """The curvature term of eq. (13): ``f_n - 2 f_{n-1} + f_{n-2}`` (~ h^2 f'' on a uniform grid)."""
    return kernels.second_difference(
        finite_array("f_n", f_n), finite_array("f_prev", f_prev), finite_array("f_prev2", f_prev2)
    )


def second_divided_difference(values, nodes) -> np.ndarray:
    """``f[t_0, t_1, t_2]`` on non-uniform nodes; equals ``f''/2`` for quadratics, any node order.

    The corrected criterion uses it in place of :func:`second_difference`: on a uniform grid of step
    ``h`` it is ``second_difference / (2 h^2)``, a positive multiple, so the sign (all the criterion
    uses) is unchanged there.
    """
    t = distinct_nodes("nodes", nodes, min_len=3)
    f = stack_finite("values", list(values))
    if t.size != 3 or f.shape[0] != 3:
        raise ValueError(f"need exactly 3 values and 3 nodes, got {f.shape[0]} and {t.size}")
    return kernels.combine(kernels.divided_difference_weights(t), f)


def stability_product(x_next, x_hat_next, curvature) -> np.ndarray:
    """Criterion 3.4, eq. (13): the element-wise ``M_n = (x_{n+1} - x_hat_{n+1}) * curvature``."""
    residual_shape = np.shape(x_next)
    curv = finite_array("curvature", curvature)
    if residual_shape != curv.shape or np.shape(x_hat_next) != curv.shape:
        raise ValueError(
            f"x_next {residual_shape}, x_hat_next {np.shape(x_hat_next)} and curvature {curv.shape} must have one shape"
        )
    return kernels.stability_product(finite_array("x_next", x_next), finite_array("x_hat_next", x_hat_next), curv)


def flow_stability_product(v_n, v_prev, v_prev2) -> np.ndarray:
    """The flow-matching variant of the official code: ``M_n = -(v_n - 2 v_{n-1} + v_{n-2})``.

    It has no residual factor; stable iff ``mean(M_n) <= 0``, i.e. the velocity's second difference
    is non-negative on average.
    """
    return kernels.flow_stability_product(
        finite_array("v_n", v_n), finite_array("v_prev", v_prev), finite_array("v_prev2", v_prev2)
    )


def is_stable(product, reduce: str = "batch") -> np.ndarray:
    """Decide stability from ``M_n``: ``mean <= 0``.

    ``reduce="batch"`` (the official code) averages over every element and returns one boolean broadcast to
    the batch; ``reduce="sample"`` averages each sample (first axis) separately. Returns a boolean
    array of length ``batch``.
    """
    m = finite_array("product", product)
    if m.ndim < 1 or m.shape[0] < 1:
        raise ValueError(f"product needs a leading batch axis, got shape {m.shape}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    return kernels.stable_samples(kernels.sample_means(m.reshape(m.shape[0], -1)), reduce)


def token_instability_map(product, channel_axis: int = 1, max_fix: int | None = None) -> np.ndarray:
    """Per-token map of section 3.5: ``True`` where a token must be recomputed.

    ``m_tok = mean over channels of M_n``; a token is unstable iff ``m_tok >= 0`` (the per-token
    opposite of the step-level rule). When more than ``max_fix`` tokens of a sample are unstable only
    the ``max_fix`` largest ``m_tok`` stay marked (``max_fix=0``: none; ``None``: no cap). The map is kept per
    sample, so any batch size works. Returns a boolean array shaped like ``product`` without the channel axis.
    """
    m = finite_array("product", product)
    axis = as_int("channel_axis", channel_axis, minimum=-m.ndim)
    if not -m.ndim <= axis < m.ndim or axis in (0, -m.ndim):
        raise ValueError(f"channel_axis {channel_axis} must name a non-batch axis of a {m.ndim}-D product")
    cap = None if max_fix is None else as_int("max_fix", max_fix, minimum=0)
    return kernels.token_instability(kernels.token_scores(m, axis), cap)


def adaptive_diffusion_skip(d_new: float, d_prev: float, d_prev2: float, threshold: float) -> bool:
    """AdaptiveDiffusion's rule (Ye et al. 2024): skip the next step iff
    ``|(d_new + d_prev2)/2 - d_prev| <= threshold * d_prev``.

    ``d_k = mean |x_k - x_{k-1}|`` are the first-difference magnitudes of the latents; the rule bounds
    their second difference, which the paper calls a third-order estimator.
    """
    d_new, d_prev, d_prev2 = (as_real(n, v) for n, v in (("d_new", d_new), ("d_prev", d_prev), ("d_prev2", d_prev2)))
    thr = as_real("threshold", threshold)
    if thr < 0:
        raise ValueError(f"threshold must be >= 0, got {thr}")
    return bool(kernels.adaptive_diffusion_skip(np.asarray(d_new), d_prev, d_prev2, thr))
