"""Adams weights (Theorem B.2) and SADA's step estimators (Theorem 3.5) against known solutions."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sada.reference import (
    adams_bashforth_coefficients,
    adams_coefficients,
    adams_moulton_coefficients,
    corrected_step_estimate,
    corrected_step_weights,
    paper_step_estimate,
    paper_step_weights,
    paper_vp_drift,
)

# Textbook Adams-Moulton weights (Hairer, Norsett & Wanner I, Table III.1.2), ordered (f_{n+1}, f_n, f_{n-1}, ...)
# and normalised by the step h.
ADAMS_MOULTON_TABLE = {
    1: (Fraction(1),),
    2: (Fraction(1, 2), Fraction(1, 2)),
    3: (Fraction(5, 12), Fraction(8, 12), Fraction(-1, 12)),
    4: (Fraction(9, 24), Fraction(19, 24), Fraction(-5, 24), Fraction(1, 24)),
    5: (Fraction(251, 720), Fraction(646, 720), Fraction(-264, 720), Fraction(106, 720), Fraction(-19, 720)),
}


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_adams_moulton_coefficients_equal_the_textbook_table(order):
    expected = [float(Fraction(c)) for c in ADAMS_MOULTON_TABLE[order]]
    np.testing.assert_allclose(adams_moulton_coefficients(order), expected, rtol=0, atol=1e-14)


def test_adams_bashforth_coefficients_known_values():
    np.testing.assert_allclose(adams_bashforth_coefficients(2), [1.5, -0.5], atol=1e-14)
    np.testing.assert_allclose(adams_bashforth_coefficients(3) * 12, [23, -16, 5], atol=1e-12)
    np.testing.assert_allclose(adams_bashforth_coefficients(4) * 24, [55, -59, 37, -9], atol=1e-12)


@given(
    st.lists(st.floats(-3, 3), min_size=1, max_size=5, unique=True).filter(
        lambda xs: min((abs(a - b) for i, a in enumerate(xs) for b in xs[i + 1 :]), default=1) > 0.1
    ),
    st.floats(-3, 3),
    st.floats(-3, 3),
)
def test_adams_weights_integrate_polynomials_of_degree_below_node_count_exactly(nodes, a, b):
    k = len(nodes) - 1
    poly = np.polynomial.Polynomial(np.arange(1, k + 2) * 0.5)
    exact = poly.integ()(b) - poly.integ()(a)
    got = adams_coefficients(nodes, a, b) @ poly(np.array(nodes))
    assert abs(got - exact) <= 1e-7 * (1 + abs(exact)) * 10**k


@given(st.lists(st.floats(0.1, 5), min_size=1, max_size=4, unique=True), st.floats(0.1, 5), st.floats(0.1, 5))
def test_adams_weights_sum_to_the_interval_length(nodes, a, b):
    if min((abs(x - y) for i, x in enumerate(nodes) for y in nodes[i + 1 :]), default=1) < 0.05:
        return
    assert math.isclose(adams_coefficients(nodes, a, b).sum(), b - a, rel_tol=1e-7, abs_tol=1e-7 * 10 ** len(nodes))


def _fitted_slope(hs, errs):
    return np.polyfit(np.log(hs), np.log(errs), 1)[0]


# y(t) = sin(2t) + exp(0.5 t): a smooth ODE y' = f(t) with known solution
def _y(t):
    return np.sin(2 * t) + np.exp(0.5 * t)


def _dy(t):
    return 2 * np.cos(2 * t) + 0.5 * np.exp(0.5 * t)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_adams_moulton_local_truncation_error_shrinks_at_order_plus_one(order):
    hs = np.array([0.2, 0.1, 0.05, 0.025])
    errs = []
    for h in hs:
        t_n = 0.3
        nodes = t_n + h * (1 - np.arange(order))  # t_{n+1}, t_n, t_{n-1}, ...
        step = adams_moulton_coefficients(order) * h @ _dy(nodes)
        errs.append(abs(_y(t_n) + step - _y(t_n + h)))
    assert abs(_fitted_slope(hs, errs) - (order + 1)) <= 0.3


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_non_uniform_adams_local_truncation_error_shrinks_at_order_plus_one(order):
    ratios = np.array([1.0, 0.0, -0.7, -1.9, -2.6])[:order]  # fixed non-uniform pattern, scaled by h
    hs = np.array([0.2, 0.1, 0.05, 0.025])
    errs = []
    for h in hs:
        nodes = 0.3 + h * ratios
        errs.append(abs(_y(0.3) + adams_coefficients(nodes, 0.3, 0.3 + h) @ _dy(nodes) - _y(0.3 + h)))
    assert abs(_fitted_slope(hs, errs) - (order + 1)) <= 0.3


def test_paper_step_weights_are_1p5_am3_minus_0p5_am2():
    np.testing.assert_allclose(paper_step_weights(), [5 / 8, 3 / 4, -3 / 8], atol=1e-15)
    assert math.isclose(paper_step_weights().sum(), 1.0)


def test_paper_weights_evaluate_a_linear_drift_at_t_n_not_over_the_interval():
    # f(s) = a + b s with f_n at s=0, f_{n-1} at s=-1, f_{n-2} at s=-2: the combination gives a (= f(t_n)),
    # whereas the exact mean over [t_n, t_{n+1}] is a + b/2 (the paper estimator is first order).
    a, b = 0.7, 1.3
    assert math.isclose(paper_step_weights() @ [a, a - b, a - 2 * b], a)


def test_paper_step_estimate_uses_delta_one_over_n():
    x = np.ones((1, 3))
    f = [np.full((1, 3), 2.0)] * 3  # constant drift
    np.testing.assert_allclose(paper_step_estimate(x, f, 50), 1 - 2.0 / 50)


def test_paper_vp_drift_matches_formula_and_v_prediction_identity():
    x, eps, beta, s, n = np.array([[0.4, -1.0]]), np.array([[0.2, 0.5]]), 0.01, 0.6, 50
    np.testing.assert_allclose(paper_vp_drift(x, eps, beta, s, n), n * beta / 2 * (-x + eps / s))
    alpha = math.sqrt(1 - s * s)
    v = (eps - s * x) / alpha  # eps = s x + alpha v in VP
    np.testing.assert_allclose(paper_vp_drift(x, eps, beta, s, n), n * beta / 2 * alpha / s * v, rtol=1e-12)


def test_corrected_weights_on_a_uniform_grid_are_adams_bashforth_3():
    nodes = [2.0, 2.5, 3.0]  # sigma~_n, sigma~_{n-1}, sigma~_{n-2}: noise decreasing along the run
    np.testing.assert_allclose(corrected_step_weights(nodes, 1.5), -0.5 * np.array([23, -16, 5]) / 12, atol=1e-13)


@given(st.floats(0.5, 5), st.floats(0.05, 0.5), st.floats(0.05, 0.5), st.floats(0.05, 0.5))
def test_corrected_step_estimate_is_exact_when_eps_is_quadratic_in_sigma(s_next, h0, h1, h2):
    s_n = s_next + h0
    nodes = np.array([s_n, s_n + h1, s_n + h1 + h2])
    eps = np.polynomial.Polynomial([0.2, -0.4, 0.3])  # eps(sigma~) quadratic -> x~(sigma~) = its integral
    x_tilde = eps.integ()
    got = corrected_step_estimate(np.array([x_tilde(s_n)]), [np.array([eps(s)]) for s in nodes], nodes, s_next)
    assert abs(got[0] - x_tilde(s_next)) < 1e-10


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: paper_step_estimate(np.zeros(2), [np.zeros(2)] * 2, 50), "f_n, f_\\(n-1\\), f_\\(n-2\\)"),
        (lambda: paper_step_estimate(np.zeros(2), [np.zeros(2), np.zeros(2), np.full(2, np.nan)], 50), "NaN or Inf"),
        (lambda: paper_vp_drift(np.zeros(2), np.zeros(2), -0.1, 0.5, 50), "beta and sigma must be > 0"),
        (lambda: corrected_step_weights([1.0, 2.0, 3.0, 4.0, 5.0], 0.5), "1 to 4 nodes"),
        (lambda: adams_moulton_coefficients(0), "order must be >= 1"),
        (lambda: adams_coefficients([0.0, 1.0], "a", 1.0), "start must be a real number"),
    ],
)
def test_invalid_input_names_the_bad_value(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_multistep_estimate_extrapolates_polynomials_of_degree_below_node_count_exactly():
    from sada.reference import multistep_estimate

    nodes = [13.0, 17.0, 21.0, 25.0]
    cubic = np.polynomial.Polynomial([0.5, -0.1, 0.02, -0.001])
    for at in (26.0, 27.0, 28.0):
        got = multistep_estimate([np.array([cubic(k)]) for k in nodes], nodes, at)[0]
        assert abs(got - cubic(at)) < 1e-10
