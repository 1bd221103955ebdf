"""Shared by the dial's tests: the two host kinds, one run of the engine on the Gaussian stub, runs of skips."""

import numpy as np
import torch

from benchmarks.overhead import GaussianStub, _grid, run_once
from sada.policy import Decision
from sada.torch_backend.engine import SADAEngine

HOSTS = {"first": ("flow", "flow_velocity", 1), "higher": ("vp", "epsilon", 2)}


def run_dial(config, family="vp", kind="epsilon", order=2, steps=50, batch=3, seed=0, reintegrates=False):
    grid = _grid(family, steps)
    engine = SADAEngine(config, grid, kind, solver_order=order, reintegrates=reintegrates)
    x = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x * float(grid.sigma[0]) if family != "flow" else x
    with torch.no_grad():
        _, final = run_once(engine, grid, GaussianStub(kind, (1, 16, 16)), x)
    return engine, final


def runs_of_skips(decisions: np.ndarray) -> np.ndarray:
    computed = np.r_[True, decisions == Decision.COMPUTE, True]
    return np.diff(np.flatnonzero(computed)) - 1
