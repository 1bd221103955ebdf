"""Stability criteria (paper Criterion 3.4 and section 3.5; AdaptiveDiffusion's rule).

Criterion 3.4, eq. (13): step ``n`` is *stable* -- the next step may be skipped -- when the extrapolation error is
anti-aligned with the local curvature of the drift,

    M_n = (x_{n+1} - x^_{n+1}) * (f_n - 2 f_{n-1} + f_{n-2}),      stable  iff  mean(M_n) <= 0.

The mean runs over each sample (or over the whole batch, as the official code does); over the channels alone it is
the per-token map of section 3.5, where a token is unstable iff its mean is ``>= 0``.
"""

from __future__ import annotations

import math

from sada.kernels._namespace import namespace

__all__ = [
    "second_difference",
    "stability_product",
    "flow_stability_product",
    "sample_means",
    "stable_samples",
    "token_scores",
    "token_instability",
    "relative_rms",
    "step_transfer",
    "adaptive_diffusion_skip",
]


def second_difference(f_n, f_prev, f_prev2):
    """The curvature term of Criterion 3.4.

    Args:
        f_n, f_prev, f_prev2: the drift at steps ``n``, ``n - 1`` and ``n - 2`` (arrays of one shape).

    Returns:
        ``f_n - 2 f_{n-1} + f_{n-2}``, element-wise.

    Notes:
        Eq. (13)'s second factor. On a uniform grid of step ``h`` it is ``h^2 f''(t_n) + O(h^3)``.

    Examples:
        >>> import numpy as np
        >>> second_difference(np.array([9.0]), np.array([4.0]), np.array([1.0]))  # f(t) = t^2 at t = 3, 2, 1
        array([2.])
    """
    return f_n - 2.0 * f_prev + f_prev2


def stability_product(x_next, x_hat_next, curvature):
    """Criterion 3.4's element-wise product.

    Args:
        x_next: the solver's sample ``x_{n+1}``.
        x_hat_next: the step estimate ``x^_{n+1}`` of the same sample.
        curvature: :func:`second_difference` of the drift.

    Returns:
        ``M_n = (x_{n+1} - x^_{n+1}) * (f_n - 2 f_{n-1} + f_{n-2})``, element-wise.

    Notes:
        Eq. (13). The step is stable (the next one may be skipped) when the mean of ``M_n`` is ``<= 0``: the
        estimate's error is anti-aligned with the drift's curvature.

    Examples:
        >>> import numpy as np
        >>> stability_product(np.array([1.0, 2.0]), np.array([1.5, 1.0]), np.array([2.0, 2.0]))
        array([-1.,  2.])
    """
    return (x_next - x_hat_next) * curvature


def flow_stability_product(v_n, v_prev, v_prev2):
    """Criterion 3.4 as the official code computes it for flow matching.

    Args:
        v_n, v_prev, v_prev2: the velocity at steps ``n``, ``n - 1``, ``n - 2``.

    Returns:
        ``M_n = -(v_n - 2 v_{n-1} + v_{n-2})``, element-wise.

    Notes:
        The official flow-matching path has no residual factor: the product is the negated second difference.

    Examples:
        >>> import numpy as np
        >>> flow_stability_product(np.array([3.0]), np.array([2.0]), np.array([0.0]))
        array([1.])
    """
    return -second_difference(v_n, v_prev, v_prev2)


def sample_means(product):
    """The per-sample mean of a criterion product.

    Args:
        product: ``M_n`` shaped ``[rows, ...]``.

    Returns:
        ``[rows]``: the mean of each row over all its other axes.

    Examples:
        >>> import numpy as np
        >>> sample_means(np.array([[[1.0, -3.0]], [[2.0, 2.0]]]))
        array([-1.,  2.])
    """
    xp = namespace(product)
    return xp.mean(xp.reshape(product, (product.shape[0], -1)), axis=1)


def stable_samples(means, reduce: str):
    """Criterion 3.4's decision from per-sample means.

    Args:
        means: ``[samples]`` means of ``M_n`` (:func:`sample_means`); NaN where a sample has no criterion yet.
        reduce: ``"sample"`` (one decision per sample) or ``"batch"`` (one decision for all).

    Returns:
        ``[samples]`` booleans: stable iff the mean is ``<= 0``.

    Notes:
        Eq. (13). ``"batch"`` reduces the mean of the samples' means, as the official code does over every element.
        A NaN mean is never stable and is left out of the batch mean.

    Examples:
        >>> import numpy as np
        >>> stable_samples(np.array([-1.0, 0.5, np.nan]), "sample")
        array([ True, False, False])
        >>> stable_samples(np.array([-1.0, 0.5, np.nan]), "batch")
        array([ True,  True,  True])
    """
    xp = namespace(means)
    finite = xp.isfinite(means)
    if reduce == "sample":
        return xp.logical_and(finite, xp.where(finite, means, xp.zeros_like(means)) <= 0.0)
    count = xp.sum(xp.astype(finite, means.dtype))
    total = xp.sum(xp.where(finite, means, xp.zeros_like(means)))
    decision = xp.logical_and(count > 0, total <= 0.0)
    return xp.logical_and(xp.ones_like(finite), decision)


def token_scores(product, channel_axis: int):
    """The token-level criterion of section 3.5: the channel mean of ``M_n`` per token.

    Args:
        product: ``M_n``: ``[B, C, H, W]``, video ``[B, C, F, H, W]`` or tokens ``[B, L, D]``.
        channel_axis: ``1`` for channel-first latents, ``-1`` for the token layout.

    Returns:
        ``[B, H, W]``, ``[B, F, H, W]`` or ``[B, L]``.

    Examples:
        >>> import numpy as np
        >>> token_scores(np.array([[[1.0, 3.0], [-2.0, 0.0]]]), -1)
        array([[ 2., -1.]])
    """
    xp = namespace(product)
    return xp.mean(product, axis=channel_axis)


def token_instability(scores, max_fix: int | None):
    """The tokens to recompute (section 3.5).

    Args:
        scores: ``[rows, ...]`` token scores (:func:`token_scores`).
        max_fix: at most this many tokens per sample stay marked (the largest scores); ``0``: none, ``None``: no cap.

    Returns:
        A boolean map shaped like ``scores``: a token is unstable iff its score is ``>= 0``.

    Examples:
        >>> import numpy as np
        >>> token_instability(np.array([[0.5, -1.0, 2.0, 0.0]]), 2)
        array([[ True, False,  True, False]])
    """
    xp = namespace(scores)
    flat = xp.reshape(scores, (scores.shape[0], -1))
    unstable = flat >= 0.0
    if max_fix is not None and max_fix < flat.shape[1]:
        order = xp.argsort(flat, axis=1, descending=True, stable=True)
        rank = xp.argsort(order, axis=1, stable=True)  # position of every token in the descending order
        unstable = xp.logical_and(unstable, rank < max_fix)
    return xp.reshape(unstable, scores.shape)


def relative_rms(difference, reference):
    """Per-sample relative RMS, the embedded pair's local error relative to the estimate.

    Args:
        difference: ``[rows, ...]``, e.g. the difference of two estimates of one step.
        reference: ``[rows, ...]``, the estimate it is relative to.

    Returns:
        ``[rows]``: ``RMS(difference) / max(RMS(reference), 1e-12)``.

    Examples:
        >>> import numpy as np
        >>> relative_rms(np.array([[3.0, 4.0]]), np.array([[0.0, 10.0]]))
        array([0.5])
    """
    xp = namespace(difference)
    rows = difference.shape[0]
    rms = xp.sqrt(xp.mean(xp.reshape(difference, (rows, -1)) ** 2, axis=1))
    scale = xp.sqrt(xp.mean(xp.reshape(reference, (rows, -1)) ** 2, axis=1))
    return rms / xp.maximum(scale, xp.full_like(scale, 1e-12))


def step_transfer(h: float) -> float:
    """How much of an error in the clean-sample prediction reaches the next sample (relative to the clean sample).

    Args:
        h: the log-SNR step ``lambda_{n+1} - lambda_n`` that consumes the prediction (``inf`` at a clean end).

    Returns:
        ``1 - exp(-h)``: a first-order data-prediction step ``x_{n+1} / alpha_{n+1} = e^{-h} x_n / alpha_n +
        (1 - e^{-h}) D_n`` (DDIM, flow Euler, the first term of every DPM-Solver++) moves an error ``delta`` of
        ``D_n`` into ``x_{n+1} / alpha_{n+1}`` as ``(1 - e^{-h}) delta``; 1 for the step to the clean end.

    Examples:
        >>> round(step_transfer(0.1), 6), step_transfer(float("inf"))
        (0.095163, 1.0)
    """
    if not h >= 0:
        raise ValueError(f"the log-SNR step h must be >= 0, got {h!r}")
    return -math.expm1(-h)


def adaptive_diffusion_skip(d_new, d_prev, d_prev2, threshold: float):
    """AdaptiveDiffusion's skip rule (Ye et al. 2024), a peer method.

    Args:
        d_new, d_prev, d_prev2: ``d_k = mean |x_k - x_{k-1}|`` of the last three steps, per sample.
        threshold: the rule's relative threshold.

    Returns:
        Per sample: skip the next step iff ``|(d_new + d_prev2) / 2 - d_prev| <= threshold d_prev``.

    Examples:
        >>> import numpy as np
        >>> adaptive_diffusion_skip(np.array([1.0, 1.0]), np.array([1.0, 2.0]), np.array([1.0, 1.0]), 0.1)
        array([ True, False])
    """
    xp = namespace(d_new)
    return xp.abs((d_new + d_prev2) / 2.0 - d_prev) <= threshold * d_prev
