"""Properties of the Lagrange reference (Theorem 3.1, Theorem 3.7, Proposition B.1)."""

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sada.reference import (
    backward_difference,
    equal_grid_extrapolation_weights,
    extrapolation_remainder_bound,
    interpolation_error_bound,
    lagrange_basis_weights,
    lagrange_estimate,
)

distinct_nodes = st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=6, unique=True).filter(
    lambda xs: min((abs(a - b) for i, a in enumerate(xs) for b in xs[i + 1 :]), default=1.0) > 0.05
)
points = st.floats(-8, 8, allow_nan=False)


@given(distinct_nodes, points)
def test_lagrange_weights_sum_to_one(nodes, at):
    assert math.isclose(lagrange_basis_weights(nodes, at).sum(), 1.0, rel_tol=0, abs_tol=1e-7 * 10 ** len(nodes))


@given(distinct_nodes, points, st.data())
def test_lagrange_estimate_is_exact_on_polynomials_of_degree_at_most_k(nodes, at, data):
    k = len(nodes) - 1
    coeffs = data.draw(st.lists(st.floats(-3, 3), min_size=k + 1, max_size=k + 1))
    poly = np.polynomial.Polynomial(coeffs)
    got = lagrange_estimate([np.array([poly(t)]) for t in nodes], nodes, at)[0]
    scale = 1 + sum(abs(c) * 8**i for i, c in enumerate(coeffs))
    assert abs(got - poly(at)) <= 1e-8 * scale * 10**k


@given(st.integers(0, 7), st.floats(-3, 3), st.floats(0.01, 2.0))
def test_theorem_3_1_weights_equal_general_weights_on_an_equal_grid(k, t0, h):
    nodes = t0 + h * np.arange(k + 1)
    general = lagrange_basis_weights(nodes, t0 + h * (k + 1))
    np.testing.assert_allclose(equal_grid_extrapolation_weights(k), general, rtol=1e-9, atol=1e-9)


def test_theorem_3_1_weights_known_values():
    np.testing.assert_array_equal(equal_grid_extrapolation_weights(0), [1.0])
    np.testing.assert_array_equal(equal_grid_extrapolation_weights(2), [1.0, -3.0, 3.0])
    np.testing.assert_array_equal(equal_grid_extrapolation_weights(3), [-1.0, 4.0, -6.0, 4.0])


# (function, its (k+1)-th derivative bound on [t0, t0 + (k+1) h]) for smooth test functions
SMOOTH = {
    "sin": (np.sin, lambda k, lo, hi: 1.0),
    "exp": (np.exp, lambda k, lo, hi: math.exp(hi)),
    "cos3": (lambda t: np.cos(3 * t), lambda k, lo, hi: 3.0 ** (k + 1)),
}


@given(st.sampled_from(sorted(SMOOTH)), st.integers(0, 5), st.floats(-2, 2), st.floats(0.01, 0.5))
def test_extrapolation_error_never_exceeds_the_theorem_3_1_bound(name, k, t0, h):
    f, bound = SMOOTH[name]
    nodes = t0 + h * np.arange(k + 1)
    target = t0 + h * (k + 1)
    err = abs(equal_grid_extrapolation_weights(k) @ f(nodes) - f(target))
    assert err <= extrapolation_remainder_bound(k, h, bound(k, t0, target)) * (1 + 1e-9) + 1e-12


@given(st.integers(1, 5), st.floats(-2, 2), st.floats(0.05, 0.5), st.data())
def test_degree_k_plus_1_polynomial_error_equals_the_remainder_exactly(k, t0, h, data):
    lead = data.draw(st.floats(0.1, 3))
    nodes = t0 + h * np.arange(k + 1)
    target = t0 + h * (k + 1)
    poly = np.polynomial.Polynomial([0.3] * (k + 1) + [lead])  # (k+1)-th derivative = lead * (k+1)!
    err = abs(equal_grid_extrapolation_weights(k) @ poly(nodes) - poly(target))
    bound = extrapolation_remainder_bound(k, h, lead * math.factorial(k + 1))
    assert err <= bound * (1 + 1e-6) + 1e-9
    assert err >= bound * (1 - 1e-6) - 1e-9  # the bound is attained for a degree-(k+1) polynomial


@given(st.sampled_from(sorted(SMOOTH)), distinct_nodes, points)
def test_interpolation_error_never_exceeds_the_theorem_3_7_bound(name, nodes, at):
    f, bound = SMOOTH[name]
    k = len(nodes) - 1
    lo, hi = min(min(nodes), at), max(max(nodes), at)
    assume(hi - lo < 6)
    err = abs(lagrange_basis_weights(nodes, at) @ f(np.array(nodes)) - f(at))
    assert err <= interpolation_error_bound(nodes, at, bound(k, lo, hi)) * (1 + 1e-7) + 1e-9


@given(st.integers(0, 6), st.lists(st.floats(-10, 10), min_size=8, max_size=8))
def test_proposition_b1_extrapolation_residual_is_the_backward_difference(k, values):
    x = np.array(values[: k + 2])
    residual = x[k + 1] - equal_grid_extrapolation_weights(k) @ x[: k + 1]
    assert math.isclose(residual, float(backward_difference(x, k + 1)), rel_tol=1e-9, abs_tol=1e-9 * 2**k * 10)


def test_backward_difference_of_known_sequence():
    squares = [float(i * i) for i in range(6)]
    assert backward_difference(squares, 1) == 9.0  # 25 - 16
    assert backward_difference(squares, 2) == 2.0
    assert backward_difference(squares, 3) == 0.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: lagrange_basis_weights([1.0, 1.0], 0.5), "pairwise distinct"),
        (lambda: lagrange_basis_weights([], 0.5), "at least 1"),
        (lambda: lagrange_basis_weights([0.0, np.nan], 0.5), "finite"),
        (lambda: lagrange_estimate([np.array([np.inf]), np.array([1.0])], [0, 1], 2), "NaN or Inf"),
        (lambda: extrapolation_remainder_bound(2, -0.1, 1.0), "h must be > 0"),
        (lambda: equal_grid_extrapolation_weights(-1), "k must be >= 0"),
        (lambda: backward_difference([1.0, 2.0], 3), "order 3 needs"),
    ],
)
def test_invalid_input_names_the_bad_value(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


@given(st.integers(1, 5), st.floats(-3, 3), st.floats(0.05, 1.0), st.data())
def test_embedded_pair_difference_vanishes_on_polynomials_of_degree_below_k(k, t0, h, data):
    """Both members reproduce a degree-(k-1) polynomial, so their difference (the error estimate) is ~0."""
    from sada.reference import embedded_pair_weights

    nodes = t0 - h * np.arange(k + 1)  # newest first, extrapolating one step ahead
    high, low = embedded_pair_weights(nodes, t0 + h)
    assert high.shape == low.shape == (k + 1,) and low[-1] == 0.0
    coeffs = data.draw(st.lists(st.floats(-3, 3), min_size=k, max_size=k))
    values = np.polynomial.Polynomial(coeffs)(nodes)
    assert abs((high - low) @ values) <= 1e-8 * (1 + sum(abs(c) * 8**i for i, c in enumerate(coeffs)))


@given(st.integers(1, 4), st.floats(0.01, 0.05))
def test_embedded_pair_estimates_the_lower_order_error_to_leading_order(k, h):
    """On a smooth function the pair's difference approaches the true error of the low-order member
    (ratio -> 1 as h -> 0), as in embedded Runge-Kutta pairs."""
    from sada.reference import embedded_pair_weights

    nodes = -h * np.arange(k + 1)
    high, low = embedded_pair_weights(nodes, h)
    values = np.exp(nodes)
    estimate, true_low_error = (high - low) @ values, np.exp(h) - low @ values
    assert estimate == pytest.approx(true_low_error, rel=(k + 2) * 2 * h)


def test_embedded_pair_rejects_repeated_nodes():
    from sada.reference import embedded_pair_weights

    with pytest.raises(ValueError, match="nodes"):
        embedded_pair_weights([1.0, 1.0, 0.0], 2.0)
