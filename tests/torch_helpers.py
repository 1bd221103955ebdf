"""Shared helpers for the torch-engine tests: drive both engines through identical random trajectories."""
import numpy as np
import torch

from sada.lab.engine import ReferenceEngine
from sada.policy import Decision
from sada.torch_backend.engine import SADAEngine


def drive_random(config, grid, kind, batch, seed, dtype=torch.float64, replay=None, shape=(3, 4)):
    """Feed the same random samples/outputs to both engines; return per-step records of each."""
    rng = np.random.default_rng(seed)
    ref = ReferenceEngine(config, grid, kind, batch, replay=replay)
    eng = SADAEngine(config, grid, kind, replay=replay)
    x = rng.standard_normal((batch,) + shape)
    records = []
    for n in range(grid.num_steps):
        d_ref = ref.begin_step(n, x)
        d_t = eng.begin_step(n, torch.tensor(x, dtype=dtype))
        synth_ref = ref.synthesise(n, x)
        synth_t = eng.synthesise(n, torch.tensor(x, dtype=dtype)).double().numpy()
        real = rng.standard_normal(x.shape) * 0.3 + 0.5 * x
        compute = d_ref == Decision.COMPUTE
        out_ref = np.where(compute.reshape((-1,) + (1,) * len(shape)), real, synth_ref)
        out_t = np.where((d_t == Decision.COMPUTE).reshape((-1,) + (1,) * len(shape)), real, synth_t)
        ref.record(n, x, out_ref)
        eng.record(n, torch.tensor(x, dtype=dtype), torch.tensor(out_t, dtype=dtype))
        records.append((d_ref.copy(), d_t.copy(), synth_ref[~compute], synth_t[~compute]))
        x = 0.97 * x + 0.1 * out_ref + 0.01 * rng.standard_normal(x.shape)  # a smooth-ish trajectory
    ref.finish(x)
    eng.finish(torch.tensor(x, dtype=dtype))
    return ref, eng, records
