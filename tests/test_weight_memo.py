"""The memo of shared-history weights (sada.torch_backend.rings): a hit is exactly the kernel's result, a second
run on the same grid computes no shared weight set, and runs with and without the memo are bit-identical."""

import numpy as np
import pytest
import torch

from benchmarks.overhead import GaussianStub, _grid, run_once
from sada import kernels
from sada.config import SADAConfig
from sada.torch_backend import rings
from sada.torch_backend.engine import SADAEngine
from sada.torch_backend.rings import TensorRing, clear_weight_memo


class CountingKernel:
    def __init__(self, kernel):
        self.kernel, self.calls = kernel, 0

    def __call__(self, *args):
        self.calls += 1
        return self.kernel(*args)


def _ring(rows: int = 4) -> TensorRing:
    ring = TensorRing(3)
    for key in (0.5, 1.25, 2.0):
        ring.push(np.ones(rows, bool), key, torch.full((rows, 2), key))
    return ring


def test_memo_hit_equals_the_kernel_bit_for_bit_and_is_read_only():
    clear_weight_memo()
    counting = CountingKernel(kernels.lagrange_weights)
    first = _ring().row_weights(counting, 2.75)
    second = _ring().row_weights(counting, 2.75)
    direct = kernels.lagrange_weights(np.array([[2.0, 1.25, 0.5]]), 2.75)
    assert counting.calls == 1
    assert np.array_equal(first, second) and np.array_equal(first[0], direct[0])
    stored = next(iter(rings._SHARED_WEIGHTS.values()))
    with pytest.raises(ValueError):
        stored[0, 0] = 1.0


def test_memo_keys_on_exact_bits_of_abscissae_and_arguments():
    clear_weight_memo()
    counting = CountingKernel(kernels.lagrange_weights)
    _ring().row_weights(counting, 2.75)
    _ring().row_weights(counting, np.nextafter(2.75, 3.0))  # one ulp apart: a different key
    ring = _ring()
    ring.push(np.ones(4, bool), 2.5, torch.zeros(4, 2))
    ring.row_weights(counting, 2.75)
    assert counting.calls == 3


def test_memo_is_bounded():
    clear_weight_memo()
    for k in range(rings._SHARED_WEIGHTS_LIMIT + 5):
        _ring(2).row_weights(kernels.lagrange_weights, 3.0 + k)
    assert len(rings._SHARED_WEIGHTS) <= rings._SHARED_WEIGHTS_LIMIT


def _run(model_grid=("flow", "flow_velocity", 1)):
    family, kind, order = model_grid
    grid = _grid(family, 25)
    stub = GaussianStub(kind, (1, 8, 8))
    engine = SADAEngine(SADAConfig(), grid, kind, solver_order=order)
    x = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(3)) * float(grid.sigma[0])
    with torch.no_grad():
        _, out = run_once(engine, grid, stub, x)
    return out, engine.trace.speedup()


@pytest.mark.parametrize("model_grid", [("flow", "flow_velocity", 1), ("vp", "epsilon", 2)])
def test_second_run_on_the_same_grid_is_bit_identical_and_computes_no_shared_weights(model_grid):
    clear_weight_memo()
    cold, cold_ratio = _run(model_grid)
    filled = len(rings._SHARED_WEIGHTS)
    warm, warm_ratio = _run(model_grid)
    assert filled > 0 and len(rings._SHARED_WEIGHTS) == filled  # every weight set of the second run was a hit
    assert torch.equal(cold, warm) and cold_ratio == warm_ratio > 1.0
