"""Stability criteria (paper Criterion 3.4 and section 3.5; AdaptiveDiffusion's rule).

Criterion 3.4, eq. (13): step ``n`` is *stable* -- the next step may be skipped -- when the extrapolation error is
anti-aligned with the local curvature of the drift,

    M_n = (x_{n+1} - x^_{n+1}) * (f_n - 2 f_{n-1} + f_{n-2}),      stable  iff  mean(M_n) <= 0.

The mean runs over each sample (or over the whole batch, as the official code does); over the channels alone it is
the per-token map of section 3.5, where a token is unstable iff its mean is ``>= 0``.
"""
from __future__ import annotations

from sada.kernels._namespace import namespace

__all__ = ["second_difference", "stability_product", "flow_stability_product", "sample_means", "stable_samples",
           "token_scores", "token_instability", "relative_rms", "adaptive_diffusion_skip"]


def second_difference(f_n, f_prev, f_prev2):
    """The curvature term of eq. (13): ``f_n - 2 f_{n-1} + f_{n-2}`` (``~ h^2 f''`` on a uniform grid)."""
    return f_n - 2.0 * f_prev + f_prev2


def stability_product(x_next, x_hat_next, curvature):
    """Criterion 3.4, eq. (13): the element-wise ``M_n = (x_{n+1} - x^_{n+1}) * curvature``."""
    return (x_next - x_hat_next) * curvature


def flow_stability_product(v_n, v_prev, v_prev2):
    """The official flow-matching criterion: ``M_n = -(v_n - 2 v_{n-1} + v_{n-2})`` (no residual factor)."""
    return -second_difference(v_n, v_prev, v_prev2)


def sample_means(product):
    """``mean(M_n)`` of every sample (first axis) of a ``[rows, ...]`` product."""
    xp = namespace(product)
    return xp.mean(xp.reshape(product, (product.shape[0], -1)), axis=1)


def stable_samples(means, reduce: str):
    """Criterion 3.4's decision from per-sample means: ``mean <= 0``. ``reduce="sample"``: one decision per sample;
    ``"batch"``: one for all (the mean of the samples' means, the official code's mean over every element). Samples
    whose mean is NaN (no criterion yet) are never stable and are left out of the batch mean."""
    xp = namespace(means)
    finite = xp.isfinite(means)
    if reduce == "sample":
        return xp.logical_and(finite, xp.where(finite, means, xp.zeros_like(means)) <= 0.0)
    count = xp.sum(xp.astype(finite, means.dtype))
    total = xp.sum(xp.where(finite, means, xp.zeros_like(means)))
    decision = xp.logical_and(count > 0, total <= 0.0)
    return xp.logical_and(xp.ones_like(finite), decision)


def token_scores(product, channel_axis: int):
    """Section 3.5: the channel mean of ``M_n`` per token (``[B, C, H, W] -> [B, H, W]``, video
    ``[B, C, F, H, W] -> [B, F, H, W]``, token layout ``[B, L, D] -> [B, L]`` with ``channel_axis=-1``)."""
    xp = namespace(product)
    return xp.mean(product, axis=channel_axis)


def token_instability(scores, max_fix: int | None):
    """Section 3.5: tokens to recompute, per sample of ``scores [rows, ...]``: unstable iff the score is ``>= 0``;
    when more than ``max_fix`` tokens of a sample are unstable only the ``max_fix`` largest scores stay marked
    (``max_fix=0``: none, ``None``: no cap)."""
    xp = namespace(scores)
    flat = xp.reshape(scores, (scores.shape[0], -1))
    unstable = flat >= 0.0
    if max_fix is not None and max_fix < flat.shape[1]:
        order = xp.argsort(flat, axis=1, descending=True, stable=True)
        rank = xp.argsort(order, axis=1, stable=True)  # position of every token in the descending order
        unstable = xp.logical_and(unstable, rank < max_fix)
    return xp.reshape(unstable, scores.shape)


def relative_rms(difference, reference):
    """Per-sample ``RMS(difference) / RMS(reference)`` (the embedded-pair local error relative to the estimate)."""
    xp = namespace(difference)
    rows = difference.shape[0]
    rms = xp.sqrt(xp.mean(xp.reshape(difference, (rows, -1)) ** 2, axis=1))
    scale = xp.sqrt(xp.mean(xp.reshape(reference, (rows, -1)) ** 2, axis=1))
    return rms / xp.maximum(scale, xp.full_like(scale, 1e-12))


def adaptive_diffusion_skip(d_new, d_prev, d_prev2, threshold: float):
    """AdaptiveDiffusion (Ye et al. 2024): skip the next step iff ``|(d_new + d_prev2)/2 - d_prev| <= threshold d_prev``,
    with ``d_k = mean |x_k - x_{k-1}|``; elementwise over samples."""
    xp = namespace(d_new)
    return xp.abs((d_new + d_prev2) / 2.0 - d_prev) <= threshold * d_prev
