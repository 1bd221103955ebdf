"""The paper's formulas (sada.kernels) hold their mathematical properties under numpy, torch and array-api-strict.

Running the same Hypothesis properties under the strict namespace proves that no framework-specific call slipped into
a kernel; running them under torch proves the torch engine computes with the same formulas as the reference.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sada import kernels

torch = pytest.importorskip("torch")
xs = pytest.importorskip("array_api_strict")

NAMESPACES = ["numpy", "torch", "array_api_strict"]


def arr(name, values):
    a = np.asarray(values, dtype=np.float64)
    if name == "torch":
        return torch.tensor(a)
    if name == "array_api_strict":
        return xs.asarray(a)
    return a


def to_numpy(x):
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def distinct_nodes(k):
    return st.lists(st.floats(-3, 3), min_size=k, max_size=k, unique=True).filter(
        lambda t: min(abs(a - b) for i, a in enumerate(t) for b in t[i + 1 :]) > 0.2 if k > 1 else True
    )


def coefficients(k):
    return st.lists(st.floats(-2, 2), min_size=k, max_size=k)


def poly(c, t):
    return sum(ci * np.asarray(t) ** i for i, ci in enumerate(c))


@pytest.mark.parametrize("xp", NAMESPACES)
@given(nodes=st.integers(1, 5).flatmap(distinct_nodes), at=st.floats(-4, 4), data=st.data())
def test_lagrange_weights_reproduce_every_polynomial_below_the_node_count(xp, nodes, at, data):
    c = data.draw(coefficients(len(nodes)))
    w = to_numpy(kernels.lagrange_weights(arr(xp, nodes), at))
    assert w.sum() == pytest.approx(1.0, abs=1e-8)
    assert w @ poly(c, nodes) == pytest.approx(poly(c, at), abs=1e-7 * max(1.0, np.abs(w).sum()))


@pytest.mark.parametrize("xp", NAMESPACES)
@given(nodes=st.integers(1, 4).flatmap(distinct_nodes), start=st.floats(-3, 3), end=st.floats(-3, 3), data=st.data())
def test_adams_weights_integrate_every_polynomial_below_the_node_count_exactly(xp, nodes, start, end, data):
    c = data.draw(coefficients(len(nodes)))
    w = to_numpy(kernels.adams_weights(arr(xp, nodes), start, end))
    exact = sum(ci * (end ** (i + 1) - start ** (i + 1)) / (i + 1) for i, ci in enumerate(c))
    assert w.sum() == pytest.approx(end - start, abs=1e-9)
    assert w @ poly(c, nodes) == pytest.approx(exact, abs=1e-7 * max(1.0, np.abs(w).sum()))


@pytest.mark.parametrize("xp", NAMESPACES)
@given(nodes=distinct_nodes(3), c=coefficients(3))
def test_second_divided_difference_of_a_quadratic_is_its_leading_coefficient(xp, nodes, c):
    w = to_numpy(kernels.divided_difference_weights(arr(xp, nodes)))
    assert w @ poly(c, nodes) == pytest.approx(c[2], abs=1e-7 * max(1.0, np.abs(w).sum()))


@pytest.mark.parametrize("xp", NAMESPACES)
@given(nodes=st.integers(2, 4).flatmap(distinct_nodes), at=st.floats(-4, 4), data=st.data())
def test_embedded_pair_difference_vanishes_on_polynomials_the_lower_member_reproduces(xp, nodes, at, data):
    c = data.draw(coefficients(len(nodes) - 1))
    high, low = (to_numpy(w) for w in kernels.embedded_pair_weights(arr(xp, nodes), at))
    assert low[-1] == 0.0
    assert (high - low) @ poly(c, nodes) == pytest.approx(0.0, abs=1e-6 * max(1.0, np.abs(high).sum()))


@pytest.mark.parametrize("xp", NAMESPACES)
def test_vectorised_rows_equal_one_call_per_row(xp):
    rng = np.random.default_rng(0)
    nodes = np.sort(rng.uniform(0.1, 5.0, (6, 3)), axis=1)[:, ::-1].copy()
    at = rng.uniform(0.0, 0.1, 6)
    together = to_numpy(kernels.lagrange_weights(arr(xp, nodes), arr(xp, at)))
    adams = to_numpy(kernels.adams_weights(arr(xp, nodes), arr(xp, nodes[:, 0]), arr(xp, at)))
    for r in range(6):
        np.testing.assert_allclose(together[r], to_numpy(kernels.lagrange_weights(arr(xp, nodes[r]), float(at[r]))))
        np.testing.assert_allclose(adams[r], to_numpy(kernels.adams_weights(arr(xp, nodes[r]), nodes[r, 0], at[r])))


@pytest.mark.parametrize("xp", NAMESPACES)
def test_combine_is_the_weighted_sum_over_the_history_axis(xp):
    rng = np.random.default_rng(1)
    values, shared, per_row = rng.normal(size=(3, 4, 5)), rng.normal(size=3), rng.normal(size=(4, 3))
    np.testing.assert_allclose(to_numpy(kernels.combine(shared, arr(xp, values))), np.tensordot(shared, values, axes=1))
    np.testing.assert_allclose(
        to_numpy(kernels.combine(per_row, arr(xp, values))), np.einsum("bk,kb...->b...", per_row, values)
    )


def test_paper_step_weights_are_one_and_a_half_am3_minus_half_am2():
    np.testing.assert_allclose(kernels.paper_step_weights(), [5 / 8, 3 / 4, -3 / 8], atol=1e-15)


@pytest.mark.parametrize("xp", NAMESPACES)
@given(f=st.floats(-3, 3), x=st.floats(-3, 3), n=st.integers(1, 200))
def test_paper_step_estimate_moves_by_one_training_step_of_a_constant_drift(xp, f, x, n):
    drift = arr(xp, [f, f])
    out = to_numpy(kernels.paper_step_estimate(arr(xp, [x, x]), drift, drift, drift, n))
    np.testing.assert_allclose(out, x - f / n, atol=1e-12)


@pytest.mark.parametrize("xp", NAMESPACES)
@given(nodes=distinct_nodes(3), x=st.floats(-2, 2), end=st.floats(-3, 3), c=coefficients(3))
def test_corrected_step_estimate_is_exact_when_the_noise_is_quadratic_in_sigma(xp, nodes, x, end, c):
    eps = np.array([[poly(c, t)] for t in nodes])  # [k, rows=1]
    out = to_numpy(kernels.corrected_step_estimate(arr(xp, [x]), arr(xp, eps), arr(xp, nodes), end))
    start = nodes[0]
    exact = x + sum(ci * (end ** (i + 1) - start ** (i + 1)) / (i + 1) for i, ci in enumerate(c))
    assert out[0] == pytest.approx(exact, abs=1e-6)


@pytest.mark.parametrize("xp", NAMESPACES)
@given(a=st.floats(-3, 3), b=st.floats(-3, 3))
def test_flow_extrapolation_is_exact_for_velocity_linear_in_the_step_index(xp, a, b):
    v = lambda n: a + b * n  # noqa: E731
    out = to_numpy(kernels.flow_velocity_extrapolation(arr(xp, [v(5)]), arr(xp, [v(4)])))
    assert out[0] == pytest.approx(v(6), abs=1e-12)
    zero = to_numpy(kernels.flow_stability_product(arr(xp, [v(6)]), arr(xp, [v(5)]), arr(xp, [v(4)])))
    assert zero[0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("xp", NAMESPACES)
@given(data=st.data())
def test_batch_decision_is_the_sign_of_the_mean_over_every_element(xp, data):
    rows = data.draw(st.integers(1, 4))
    product = np.asarray(data.draw(st.lists(st.floats(-1, 1), min_size=rows * 6, max_size=rows * 6))).reshape(
        rows, 2, 3
    )
    means = kernels.sample_means(arr(xp, product))
    np.testing.assert_allclose(to_numpy(means), product.reshape(rows, -1).mean(axis=1), atol=1e-12)
    per_sample = to_numpy(kernels.stable_samples(means, "sample"))
    batch = to_numpy(kernels.stable_samples(means, "batch"))
    np.testing.assert_array_equal(per_sample, product.reshape(rows, -1).mean(axis=1) <= 0)
    assert batch.shape == (rows,) and (batch.all() or not batch.any())  # one decision for every sample
    if abs(product.mean()) > 1e-12:  # equal-size samples: the mean of their means is the mean over every element
        assert bool(batch[0]) == bool(product.mean() <= 0)


@pytest.mark.parametrize("xp", NAMESPACES)
@given(data=st.data())
def test_token_map_keeps_at_most_max_fix_of_the_most_unstable_tokens(xp, data):
    scores = np.asarray(data.draw(st.lists(st.floats(-1, 1), min_size=12, max_size=12, unique=True))).reshape(2, 6)
    cap = data.draw(st.one_of(st.none(), st.integers(0, 7)))
    keep = to_numpy(kernels.token_instability(arr(xp, scores), cap))
    for row, kept in zip(scores, keep):
        unstable = row >= 0
        assert not np.any(kept & ~unstable)  # only unstable tokens
        expected = unstable.sum() if cap is None else min(cap, unstable.sum())
        assert kept.sum() == expected
        if kept.any() and (~kept & unstable).any():  # the kept ones are the largest
            assert row[kept].min() > row[~kept & unstable].max()


@pytest.mark.parametrize("xp", NAMESPACES)
@given(scale=st.floats(0.1, 10))
def test_relative_rms_is_invariant_to_a_common_scale(xp, scale):
    rng = np.random.default_rng(2)
    d, r = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    one = to_numpy(kernels.relative_rms(arr(xp, d), arr(xp, r)))
    scaled = to_numpy(kernels.relative_rms(arr(xp, scale * d), arr(xp, scale * r)))
    np.testing.assert_allclose(one, scaled, rtol=1e-10)
    np.testing.assert_allclose(one, np.sqrt((d**2).mean(1)) / np.sqrt((r**2).mean(1)))


@pytest.mark.parametrize("xp", NAMESPACES)
@given(d=st.floats(0.01, 1), thr=st.floats(0, 0.2), a=st.floats(-0.2, 0.2), b=st.floats(-0.2, 0.2))
def test_adaptive_diffusion_skips_iff_the_second_difference_is_within_the_threshold(xp, d, thr, a, b):
    out = to_numpy(kernels.adaptive_diffusion_skip(arr(xp, [d + a]), arr(xp, [d]), arr(xp, [d + b]), thr))
    assert bool(out[0]) == (abs((a + b) / 2) <= thr * d + 1e-15) or abs(abs((a + b) / 2) - thr * d) < 1e-12


def test_equal_grid_extrapolation_weights_are_alternating_binomials():
    for k in range(5):
        w = kernels.equal_grid_extrapolation_weights(k)
        assert w.tolist() == [(-1.0) ** (k - i) * math.comb(k + 1, i) for i in range(k + 1)]
        np.testing.assert_allclose(w, kernels.lagrange_weights(np.arange(k + 1.0), k + 1.0), atol=1e-9)


def test_adams_weights_on_torch_tensors_warn_nothing():
    """Issue 19: the cached Gauss-Legendre nodes were read-only numpy arrays, and torch warned ("The given NumPy array
    is not writable") when converting them; torch shows that warning once per process, so a fresh one checks."""
    import subprocess
    import sys

    code = (
        "import warnings, torch; warnings.simplefilter('error'); from sada import kernels; "
        "w = kernels.adams_weights(torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64), 0.0, 1.0) * 12; "
        "print([round(v, 9) for v in w.tolist()])"
    )
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[5.0, 8.0, -1.0]" in done.stdout
