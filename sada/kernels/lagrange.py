"""Lagrange interpolation and the quadrature built on it (paper Theorem 3.1, Theorem 3.7, Theorem B.2).

Nodes ``t_0 .. t_{k-1}`` carry values ``x_i``; the interpolant is ``P(t) = sum_i x_i l_i(t)`` with the Lagrange
basis ``l_i(t) = prod_{j != i} (t - t_j) / (t_i - t_j)`` (eq. 16 / A.12). Every kernel is vectorised over leading
"row" axes: ``nodes`` is ``[..., k]``, so one call computes the weights of every sample of a batch.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from sada.kernels._namespace import as_array, namespace

__all__ = [
    "lagrange_weights",
    "adams_weights",
    "divided_difference_weights",
    "embedded_pair_weights",
    "equal_grid_extrapolation_weights",
    "combine",
]


def _off_diagonal(xp, k: int, like):
    from array_api_compat import device

    return xp.logical_not(xp.eye(k, dtype=xp.bool, device=device(like)))


def lagrange_weights(nodes, at):
    """The Lagrange basis at ``at`` (Theorem 3.7's multistep weights).

    Args:
        nodes: ``[..., k]`` distinct abscissae ``t_0 .. t_{k-1}``.
        at: abscissae broadcastable to ``[...]``.

    Returns:
        ``[..., k]``: ``l_i(at) = prod_{j != i} (at - t_j) / (t_i - t_j)``.

    Notes:
        Eq. (16) / (A.12). ``sum_i l_i(at) = 1`` and ``sum_i l_i(at) p(t_i) = p(at)`` for every polynomial of degree
        ``< k``; ``at`` outside the node hull is extrapolation (SADA's multistep estimate).

    Examples:
        >>> import numpy as np
        >>> lagrange_weights(np.array([2.0, 1.0, 0.0]), 3.0)  # quadratic extrapolation one step ahead
        array([ 3., -3.,  1.])
    """
    xp = namespace(nodes)
    at = as_array(xp, at, nodes)
    k = nodes.shape[-1]
    off = _off_diagonal(xp, k, nodes)
    t_i = xp.expand_dims(nodes, axis=-1)
    t_j = xp.expand_dims(nodes, axis=-2)
    tau = xp.expand_dims(xp.expand_dims(at, axis=-1), axis=-1)
    numerator = xp.where(off, tau - t_j, xp.ones_like(t_i - t_j))
    denominator = xp.where(off, t_i - t_j, xp.ones_like(t_i - t_j))
    return xp.prod(numerator / denominator, axis=-1)


def adams_weights(nodes, start, end):
    """Adams quadrature weights on arbitrary nodes (Theorem B.2).

    Args:
        nodes: ``[..., k]`` distinct abscissae.
        start, end: the integration interval (broadcastable to ``[...]``).

    Returns:
        ``[..., k]``: ``c_i = integral_start^end l_i(tau) d tau``.

    Notes:
        Eq. (A.32). ``x(end) ~ x(start) + sum_i c_i f(t_i)``: Adams-Moulton when the nodes contain ``end``,
        Adams-Bashforth when not. The degree ``k - 1`` basis polynomials are integrated exactly by ``k``-point
        Gauss-Legendre quadrature (exact up to degree ``2k - 1``); ``sum_i c_i = end - start``.

    Examples:
        >>> import numpy as np
        >>> adams_weights(np.array([1.0, 0.0, -1.0]), 0.0, 1.0) * 12  # AM3: (5, 8, -1) / 12
        array([ 5.,  8., -1.])
    """
    xp = namespace(nodes)
    start, end = as_array(xp, start, nodes), as_array(xp, end, nodes)
    k = nodes.shape[-1]
    roots, weights = _gauss_legendre(k)
    half = (end - start) / 2
    middle = (end + start) / 2
    taus = xp.expand_dims(middle, axis=-1) + xp.expand_dims(half, axis=-1) * as_array(xp, roots, nodes)  # [..., q]
    basis = lagrange_weights(xp.expand_dims(nodes, axis=-2), taus)  # [..., q, k]
    quadrature = xp.reshape(as_array(xp, weights, nodes), (k, 1))
    return xp.expand_dims(half, axis=-1) * xp.sum(basis * quadrature, axis=-2)


@functools.lru_cache(maxsize=16)
def _gauss_legendre(k: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``k``-point Gauss-Legendre roots and weights (computed once per ``k``), as tuples of floats: immutable, so the
    cache is safe, and converted by every namespace without a copy warning (torch warns on read-only numpy arrays)."""
    roots, weights = np.polynomial.legendre.leggauss(k)
    return tuple(roots.tolist()), tuple(weights.tolist())


def divided_difference_weights(nodes):
    """The divided difference as weights on the node values.

    Args:
        nodes: ``[..., k]`` distinct abscissae.

    Returns:
        ``[..., k]``: ``w_i = 1 / prod_{j != i} (t_i - t_j)``, so that ``f[t_0, ..., t_{k-1}] = sum_i w_i f(t_i)``.

    Notes:
        For three nodes this is the second divided difference, ``f''/2`` for quadratics; on a uniform grid of step
        ``h`` it is ``(f_0 - 2 f_1 + f_2) / (2 h^2)``, a positive multiple of eq. (13)'s second difference.

    Examples:
        >>> import numpy as np
        >>> divided_difference_weights(np.array([0.0, 1.0, 2.0]))
        array([ 0.5, -1. ,  0.5])
    """
    xp = namespace(nodes)
    k = nodes.shape[-1]
    off = _off_diagonal(xp, k, nodes)
    gaps = xp.expand_dims(nodes, axis=-1) - xp.expand_dims(nodes, axis=-2)
    return 1.0 / xp.prod(xp.where(off, gaps, xp.ones_like(gaps)), axis=-1)


def embedded_pair_weights(nodes, at):
    """An embedded pair of extrapolations at ``at``.

    Args:
        nodes: ``[..., k]`` abscissae, newest first.
        at: the abscissa to extrapolate to.

    Returns:
        ``(high, low)``, each ``[..., k]``: ``high`` uses all ``k`` nodes (degree ``k - 1``), ``low`` the newest
        ``k - 1`` (degree ``k - 2``, zero weight on the oldest).

    Notes:
        As in embedded Runge-Kutta pairs, ``(high - low) . values`` estimates the local error of the lower-order
        estimate.

    Examples:
        >>> import numpy as np
        >>> high, low = embedded_pair_weights(np.array([2.0, 1.0, 0.0]), 3.0)
        >>> high, low
        (array([ 3., -3.,  1.]), array([ 2., -1.,  0.]))
    """
    xp = namespace(nodes)
    high = lagrange_weights(nodes, at)
    low = lagrange_weights(nodes[..., :-1], at)
    zero = xp.zeros_like(high[..., :1])
    return high, xp.concat([low, zero], axis=-1)


def equal_grid_extrapolation_weights(k: int):
    """Theorem 3.1's extrapolation weights on equally spaced nodes.

    Args:
        k: the polynomial degree (``k + 1`` nodes).

    Returns:
        float64 ``[k + 1]``: ``w_i = (-1)^(k - i) binom(k + 1, i)``, oldest node first, with
        ``x(t_{k+1}) ~ sum_{i=0..k} w_i x(t_i)``.

    Notes:
        Eq. (9) / (A.18): exact for polynomials of degree ``<= k``.

    Examples:
        >>> equal_grid_extrapolation_weights(2)
        array([ 1., -3.,  3.])
    """
    return np.array([(-1.0) ** (k - i) * math.comb(k + 1, i) for i in range(k + 1)])


def combine(weights, values):
    """A weighted sum over a history's first axis.

    Args:
        weights: ``[k]`` (one combination for all rows) or ``[rows, k]`` (one per row).
        values: ``[k, rows, ...]``, the history.

    Returns:
        ``[rows, ...]``: ``sum_i weights[..., i] * values[i, ...]``.

    Examples:
        >>> import numpy as np
        >>> combine(np.array([[1.0, 1.0], [2.0, 0.0]]), np.array([[[1.0], [1.0]], [[3.0], [3.0]]]))
        array([[4.],
               [2.]])
    """
    xp = namespace(values)
    w = as_array(xp, weights, values)
    if w.ndim == 2:
        w = xp.permute_dims(w, (1, 0))  # [k, rows]
    w = xp.reshape(w, tuple(w.shape) + (1,) * (values.ndim - w.ndim))
    return xp.sum(w * values, axis=0)
