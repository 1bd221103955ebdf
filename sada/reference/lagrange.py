"""Lagrange interpolation and extrapolation (paper Theorem 3.1, Theorem 3.7, Proposition B.1), validated float64.

Notation follows the paper: nodes ``t_0 < ... < t_k`` carry values ``x_i = x(t_i)``; the degree-``k``
interpolant is ``P(t) = sum_i x_i * l_i(t)`` with the Lagrange basis
``l_i(t) = prod_{j != i} (t - t_j) / (t_i - t_j)`` (eq. 16 / A.12, A.21-A.22). The formulas are the kernels of
:mod:`sada.kernels.lagrange`; these functions validate their arguments and compute in float64 numpy.
"""

from __future__ import annotations

import math

import numpy as np

from sada import kernels
from sada.validation import as_int, as_real, distinct_nodes, stack_finite

__all__ = [
    "lagrange_basis_weights",
    "lagrange_estimate",
    "equal_grid_extrapolation_weights",
    "extrapolation_remainder_bound",
    "node_polynomial",
    "interpolation_error_bound",
    "backward_difference",
]


def lagrange_basis_weights(nodes, at) -> np.ndarray:
    """Values ``l_i(at)`` of the Lagrange basis on arbitrary distinct ``nodes`` (eq. 16 / A.12).

    ``sum_i l_i(at) = 1`` for every ``at`` (the interpolant of a constant is that constant), and
    ``sum_i l_i(at) * p(t_i) = p(at)`` for every polynomial ``p`` of degree <= ``len(nodes) - 1``.
    ``at`` may lie outside the node hull: that is extrapolation, as in SADA's multistep estimate.
    """
    return kernels.lagrange_weights(distinct_nodes("nodes", nodes), as_real("at", at))


def lagrange_estimate(values, nodes, at) -> np.ndarray:
    """``P(at) = sum_i l_i(at) x_i`` for array-valued ``values`` (eq. 16): the multistep estimate of Theorem 3.7.

    ``values[i]`` belongs to ``nodes[i]``. NaN/Inf in any value raises instead of propagating into the estimate.
    """
    stacked = stack_finite("values", list(values))
    weights = lagrange_basis_weights(nodes, at)
    if weights.size != stacked.shape[0]:
        raise ValueError(f"got {stacked.shape[0]} values for {weights.size} nodes")
    return kernels.combine(weights, stacked)


def equal_grid_extrapolation_weights(k: int) -> np.ndarray:
    """Theorem 3.1, eq. (9) / (A.18): weights ``w_i`` with ``x(t_{k+1}) ~ sum_{i=0..k} w_i x(t_i)``.

    On equally spaced nodes ``t_i = t_0 + i h`` the degree-``k`` extrapolation one step past the last
    node has the closed form ``w_i = (-1)^(k - i) * binom(k + 1, i)``. For ``k = 2``: ``(1, -3, 3)``.
    """
    return kernels.equal_grid_extrapolation_weights(as_int("k", k, minimum=0))


def extrapolation_remainder_bound(k: int, h: float, derivative_bound: float) -> float:
    """Theorem 3.1, eq. (10) / (A.20): ``|x(t_{k+1}) - sum_i w_i x(t_i)| <= h^(k+1) * M_{k+1}``.

    ``M_{k+1} = sup |x^(k+1)|`` over ``[t_0, t_{k+1}]``. It follows from the Lagrange remainder
    ``x^(k+1)(xi) / (k+1)! * prod_i (t_{k+1} - t_i)`` with ``prod_i (t_{k+1} - t_i) = (k+1)! h^(k+1)``
    (eq. A.24).
    """
    k = as_int("k", k, minimum=0)
    h = as_real("h", h)
    m = as_real("derivative_bound", derivative_bound)
    if h <= 0:
        raise ValueError(f"h must be > 0, got {h}")
    if m < 0:
        raise ValueError(f"derivative_bound must be >= 0, got {m}")
    return h ** (k + 1) * m


def node_polynomial(nodes, at) -> float:
    """``omega(at) = prod_i (at - t_i)``, the factor of the Lagrange remainder (eq. A.14)."""
    t = distinct_nodes("nodes", nodes)
    return float(np.prod(as_real("at", at) - t))


def interpolation_error_bound(nodes, at, derivative_bound: float) -> float:
    """Theorem 3.7, eq. (17) / (A.13)-(A.15): ``|x(at) - P(at)| <= M_{k+1} / (k+1)! * |omega(at)|``.

    ``k + 1 = len(nodes)``; ``M_{k+1} = sup |x^(k+1)|`` over the hull of ``nodes`` and ``at``. With the
    maximum node spacing ``h`` and ``at`` within a bounded number of spacings of the nodes this is
    ``O(h^(k+1))`` (eq. A.16); this function returns the sharp classical bound, not the ``O`` form.
    """
    t = distinct_nodes("nodes", nodes)
    m = as_real("derivative_bound", derivative_bound)
    if m < 0:
        raise ValueError(f"derivative_bound must be >= 0, got {m}")
    return m / math.factorial(t.size) * abs(node_polynomial(t, at))


def backward_difference(values, order: int) -> np.ndarray:
    """The ``order``-th backward difference of the last entry, eq. (A.29).

    ``nabla^m x_n = sum_{j=0..m} (-1)^j binom(m, j) x_{n-j}``; ``values`` are ``x_0 .. x_n`` in order.
    Proposition B.1 (eq. A.28): ``x_{k+1} - sum_i w_i x_i = nabla^(k+1) x_{k+1}`` with ``w`` from
    :func:`equal_grid_extrapolation_weights`.
    """
    m = as_int("order", order, minimum=0)
    stacked = stack_finite("values", list(values))
    if stacked.shape[0] < m + 1:
        raise ValueError(f"order {m} needs at least {m + 1} values, got {stacked.shape[0]}")
    coeffs = np.array([(-1.0) ** j * math.comb(m, j) for j in range(m + 1)])
    return kernels.combine(coeffs, stacked[::-1][: m + 1])
