"""``benchmarks.roughness``: the extrapolation stencils that diagnose how predictable a trajectory's clean
prediction is."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.roughness import STENCILS, extrapolation_errors


@given(a=st.floats(-2, 2), b=st.floats(-2, 2), c=st.floats(-2, 2))
def test_every_stencil_of_degree_two_or_more_extrapolates_a_quadratic_in_the_noise_level_exactly(a, b, c):
    sigmas = np.geomspace(10.0, 0.05, 20)
    shape = np.linspace(-1, 1, 6).reshape(2, 3)
    predictions = np.stack([(a + b * s + c * s**2) * shape for s in sigmas])
    errors = extrapolation_errors(predictions, sigmas)
    scale = 1 + abs(a) + abs(b) * 10 + abs(c) * 100
    for name, offsets in STENCILS.items():
        if len(offsets) >= 3:
            assert np.nanmax(errors[name]) <= 1e-9 * scale, name
        assert np.all(np.isnan(errors[name][: max(offsets)])) and np.all(np.isfinite(errors[name][max(offsets) :]))


def test_a_line_misses_a_quadratic_by_its_curvature_times_the_node_distances():
    sigmas = np.arange(10.0, 0.0, -1.0)  # 10, 9, ..., 1
    predictions = (sigmas**2)[:, None]  # D = sigma^2 in one pixel
    errors = extrapolation_errors(predictions, sigmas)
    # the line through sigma+1 and sigma+2 misses sigma^2 by (1)(2) = 2; through sigma+1 and sigma+3 by 3
    assert errors["line i-1,2"][2:] == pytest.approx(2.0)
    assert errors["line i-1,3"][3:] == pytest.approx(3.0)
    assert errors["|dD|"][1:] == pytest.approx(2 * sigmas[1:] + 1)


def test_the_stencils_reject_bad_input_naming_it():
    with pytest.raises(ValueError, match="one abscissa per node"):
        extrapolation_errors(np.zeros((4, 2)), np.arange(3.0))
    with pytest.raises(ValueError, match="distinct"):
        extrapolation_errors(np.zeros((3, 2)), np.array([1.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="finite"):
        extrapolation_errors(np.full((3, 2), np.nan), np.arange(3.0))
