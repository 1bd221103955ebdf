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


@pytest.mark.parametrize("flow", [False, True])
def test_the_trajectory_recovers_the_clean_sample_from_the_guided_output_of_either_parameterisation(flow):
    """A network that returns the exact epsilon (U-Net) or velocity (flow, called with ``hidden_states=``) of a fixed
    clean sample: every node's recovered prediction is that sample, and the abscissa is the EDM ``sigma / alpha``."""
    import torch

    from benchmarks.roughness import _trajectory

    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, generator=generator), torch.randn(2, 3, generator=generator)
    times = torch.tensor([0.9, 0.6, 0.3, 0.1, 0.0], dtype=torch.float64) if flow else None
    sigmas = torch.tensor([5.0, 2.0, 0.7, 0.2, 0.0], dtype=torch.float64)
    nodes = times if flow else sigmas

    class Net(torch.nn.Module):
        def forward(self, sample=None, hidden_states=None):
            x = (hidden_states if flow else sample).double().chunk(2)[0]
            s = self.level
            if flow:
                out = (x - x0.double()) / s  # x = (1 - t) x0 + t n  =>  x - t v = x0 with v = n - x0
            else:
                alpha = 1 / (1 + s**2) ** 0.5  # x = alpha x0 + sigma alpha eps
                out = (x - alpha * x0.double()) / (s * alpha)
            return (torch.cat([out, out]),)  # the unconditional and conditional halves agree

    net = Net()

    class Model:
        network, guidance = net, 3.0

        def sample(self, pipe, labels, seeds, steps):
            for s in nodes[:-1].tolist():
                net.level = s
                if flow:
                    x = (1 - s) * x0 + s * noise
                    net(hidden_states=torch.cat([x, x]))
                else:
                    alpha = 1 / (1 + s**2) ** 0.5
                    x = alpha * x0 + s * alpha * noise
                    net(torch.cat([x, x]))

    class Cell:
        model, labels, seeds = Model(), [0], [0]
        pipe = type("Pipe", (), {"scheduler": type("Scheduler", (), {"sigmas": nodes})()})()

    predictions, abscissae = _trajectory(Cell(), 4, flow=flow)
    assert np.allclose(predictions, x0.double().numpy()[None], atol=1e-6)
    expected = (times / (1 - times) if flow else sigmas)[:-1].numpy()
    assert np.allclose(abscissae, expected)
