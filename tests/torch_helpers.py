"""Shared helpers for the torch-engine tests: drive both engines through identical random trajectories."""

import numpy as np
import torch

from sada.engine.numpy_engine import NumpyEngine
from sada.torch_backend.engine import SADAEngine


def drive_random(config, grid, kind, batch, seed, dtype=torch.float64, replay=None, shape=(3, 4), solver_order=2):
    """Feed the same random samples/outputs to both engines; return per-step records of each."""
    rng = np.random.default_rng(seed)
    ref = NumpyEngine(config, grid, kind, batch, replay=replay, solver_order=solver_order)
    eng = SADAEngine(config, grid, kind, replay=replay, solver_order=solver_order)
    x = rng.standard_normal((batch,) + shape)
    records = []
    for n in range(grid.num_steps):
        compute = ref.plan(n, x)
        compute_t = eng.plan(n, torch.tensor(x, dtype=dtype))
        real = rng.standard_normal(x.shape) * 0.3 + 0.5 * x
        out_ref = ref.complete(n, x, real)  # rows that skip are replaced by the engine's synthesised outputs
        out_t = eng.complete(n, torch.tensor(x, dtype=dtype), torch.tensor(real, dtype=dtype)).double().numpy()
        records.append(
            (ref.trace.decisions[n].copy(), eng.trace.decisions[n].copy(), out_ref[~compute], out_t[~compute_t])
        )
        x = 0.97 * x + 0.1 * out_ref + 0.01 * rng.standard_normal(x.shape)  # a smooth-ish trajectory
    ref.finish(x)
    eng.finish(torch.tensor(x, dtype=dtype))
    return ref, eng, records
