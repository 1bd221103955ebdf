"""Adams quadrature weights on arbitrary nodes (paper Theorem B.2, eq. A.30-A.33).

For the ODE ``x' = f(t, x)`` the Adams family integrates a Lagrange interpolant of ``f``:
``x(b) ~ x(a) + sum_i c_i f(t_i)`` with ``c_i = integral_a^b l_i(tau) d tau``. When the nodes include
the end point ``b`` the method is Adams-Moulton (implicit); when they do not it is Adams-Bashforth
(explicit). ``p`` nodes give local truncation error ``O(h^(p+1))``, i.e. a method of order ``p``.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from sada.reference._validate import as_int, as_real, distinct_nodes
from sada.reference.lagrange import lagrange_basis_polynomials

__all__ = [
    "adams_coefficients",
    "adams_moulton_coefficients",
    "adams_bashforth_coefficients",
    "ADAMS_MOULTON_TABLE",
]

# Textbook Adams-Moulton weights (Hairer, Norsett & Wanner I, Table III.1.2), ordered
# (f_{n+1}, f_n, f_{n-1}, ...) and normalised by the step h. Used as a cross-check in the tests.
ADAMS_MOULTON_TABLE: dict[int, tuple[Fraction, ...]] = {
    1: (Fraction(1),),
    2: (Fraction(1, 2), Fraction(1, 2)),
    3: (Fraction(5, 12), Fraction(8, 12), Fraction(-1, 12)),
    4: (Fraction(9, 24), Fraction(19, 24), Fraction(-5, 24), Fraction(1, 24)),
    5: (Fraction(251, 720), Fraction(646, 720), Fraction(-264, 720), Fraction(106, 720), Fraction(-19, 720)),
}


def adams_coefficients(nodes, start: float, end: float) -> np.ndarray:
    """Theorem B.2, eq. (A.32): ``c_i = integral_start^end l_i(tau) d tau`` on arbitrary distinct nodes.

    ``x(end) ~ x(start) + sum_i c_i f(nodes[i])``. Works on non-uniform nodes and in either direction
    (``end < start`` integrates backwards, as a sampler that walks down the noise levels does).
    ``sum_i c_i = end - start`` (exact for constant ``f``).
    """
    t = distinct_nodes("nodes", nodes)
    a = as_real("start", start)
    b = as_real("end", end)
    coeffs = np.empty(t.size)
    for i, basis in enumerate(lagrange_basis_polynomials(t)):
        antiderivative = basis.integ()
        coeffs[i] = antiderivative(b) - antiderivative(a)
    return coeffs


def adams_moulton_coefficients(order: int) -> np.ndarray:
    """Uniform-grid Adams-Moulton weights of ``order`` p, normalised by ``h`` (Theorem B.2).

    Ordered ``(f_{n+1}, f_n, ..., f_{n+2-p})``: ``x_{n+1} = x_n + h * sum_i c_i f_{n+1-i}``.
    Order 1 is backward Euler, 2 the trapezoid rule, 3 ``(5, 8, -1)/12``.
    """
    p = as_int("order", order, minimum=1)
    nodes = [1.0 - i for i in range(p)]  # t_{n+1} = 1, t_n = 0, t_{n-1} = -1, ...
    return adams_coefficients(nodes, 0.0, 1.0)


def adams_bashforth_coefficients(order: int) -> np.ndarray:
    """Uniform-grid Adams-Bashforth weights of ``order`` p, ordered ``(f_n, f_{n-1}, ...)``, per unit ``h``.

    Order 1 is explicit Euler, 2 is ``(3, -1)/2``, 3 is ``(23, -16, 5)/12``.
    """
    p = as_int("order", order, minimum=1)
    nodes = [-float(i) for i in range(p)]
    return adams_coefficients(nodes, 0.0, 1.0)
