"""Criterion 3.4 and its variants (step-level, token-level, AdaptiveDiffusion)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sada.reference import (
    adaptive_diffusion_skip,
    flow_stability_product,
    is_stable,
    second_difference,
    second_divided_difference,
    stability_product,
    token_instability_map,
)


def test_stable_iff_residual_is_anti_aligned_with_curvature():
    x_next = np.ones((1, 4))
    curvature = np.ones((1, 4))
    assert is_stable(stability_product(x_next, x_next + 0.1, curvature))[0]  # residual -0.1 vs +curvature
    assert not is_stable(stability_product(x_next, x_next - 0.1, curvature))[0]
    assert is_stable(stability_product(x_next, x_next, curvature))[0]  # mean == 0 counts as stable


def test_batch_reduction_is_one_global_decision_and_sample_reduction_is_per_sample():
    product = np.array([[1.0, 1.0], [-3.0, -3.0]])  # sample 0 unstable, sample 1 stable; global mean < 0
    np.testing.assert_array_equal(is_stable(product, "batch"), [True, True])
    np.testing.assert_array_equal(is_stable(product, "sample"), [False, True])


@given(arrays(np.float64, (3, 2, 4), elements=st.floats(-5, 5)), st.floats(0.1, 2))
def test_second_divided_difference_is_second_difference_over_2h2_on_uniform_nodes(values, h):
    nodes = [3.0, 3.0 + h, 3.0 + 2 * h]
    np.testing.assert_allclose(
        second_divided_difference(values, nodes),
        second_difference(values[0], values[1], values[2]) / (2 * h * h),
        atol=1e-9,
    )


def test_second_divided_difference_of_a_quadratic_is_half_its_second_derivative():
    nodes = np.array([0.3, 1.1, 2.9])
    np.testing.assert_allclose(second_divided_difference(2.5 * nodes**2 - nodes + 1, nodes), 2.5)


def test_flow_variant_is_minus_the_second_difference_of_velocity():
    v = [np.array([[4.0]]), np.array([[2.0]]), np.array([[1.0]])]  # convex: Delta^2 = 1 > 0 -> stable
    np.testing.assert_allclose(flow_stability_product(*v), [[-1.0]])
    assert is_stable(flow_stability_product(*v))[0]


def test_token_map_is_the_channel_mean_sign_with_top_k_cap_per_sample():
    product = np.zeros((2, 3, 2, 2))
    product[0, :, 0, 0] = 2.0
    product[0, :, 0, 1] = 1.0
    product[0, :, 1, :] = -1.0
    product[1] = -1.0
    product[1, :, 1, 1] = 0.5
    full = token_instability_map(product)
    np.testing.assert_array_equal(full, [[[True, True], [False, False]], [[False, False], [False, True]]])
    capped = token_instability_map(product, max_fix=1)
    np.testing.assert_array_equal(capped[0], [[True, False], [False, False]])  # keeps the largest score
    np.testing.assert_array_equal(capped[1], full[1])
    tokens = token_instability_map(np.ones((1, 5, 8)), channel_axis=-1)  # [B, L, D] layout
    assert tokens.shape == (1, 5) and tokens.all()


def test_adaptive_diffusion_rule():
    assert adaptive_diffusion_skip(1.0, 1.0, 1.0, 0.01)  # evenly moving latents
    assert not adaptive_diffusion_skip(1.5, 1.0, 1.0, 0.01)
    assert adaptive_diffusion_skip(1.005, 1.0, 1.005, 0.01)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: is_stable(np.zeros((2, 2)), "global"), "reduce must be one of"),
        (lambda: stability_product(np.zeros(3), np.zeros(3), np.zeros(2)), "shape"),
        (lambda: stability_product(np.zeros(2), np.array([0.0, np.nan]), np.zeros(2)), "NaN or Inf"),
        (lambda: token_instability_map(np.zeros((1, 2, 3)), channel_axis=0), "channel_axis"),
        (lambda: second_divided_difference([1.0, 2.0, 3.0], [0.0, 0.0, 1.0]), "pairwise distinct"),
        (lambda: adaptive_diffusion_skip(1.0, 1.0, 1.0, -0.1), "threshold must be >= 0"),
    ],
)
def test_invalid_input_names_the_bad_value(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
