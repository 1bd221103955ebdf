"""Adams quadrature weights on arbitrary nodes (paper Theorem B.2, eq. A.30-A.33), validated float64.

For the ODE ``x' = f(t, x)`` the Adams family integrates a Lagrange interpolant of ``f``:
``x(b) ~ x(a) + sum_i c_i f(t_i)`` with ``c_i = integral_a^b l_i(tau) d tau``. When the nodes include
the end point ``b`` the method is Adams-Moulton (implicit); when they do not it is Adams-Bashforth
(explicit). ``p`` nodes give local truncation error ``O(h^(p+1))``, i.e. a method of order ``p``.
The formula is the kernel :func:`sada.kernels.adams_weights`.
"""

from __future__ import annotations

import numpy as np

from sada import kernels
from sada.validation import as_int, as_real, distinct_nodes

__all__ = ["adams_coefficients", "adams_moulton_coefficients", "adams_bashforth_coefficients"]


def adams_coefficients(nodes, start: float, end: float) -> np.ndarray:
    """Theorem B.2, eq. (A.32): ``c_i = integral_start^end l_i(tau) d tau`` on arbitrary distinct nodes.

    ``x(end) ~ x(start) + sum_i c_i f(nodes[i])``. Works on non-uniform nodes and in either direction
    (``end < start`` integrates backwards, as a sampler that walks down the noise levels does).
    ``sum_i c_i = end - start`` (exact for constant ``f``).
    """
    return kernels.adams_weights(distinct_nodes("nodes", nodes), as_real("start", start), as_real("end", end))


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
