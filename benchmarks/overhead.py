"""Per-step host time of the torch engine: ``python -m benchmarks.overhead``.

The engine (:class:`sada.torch_backend.engine.SADAEngine`) is driven through its contract (``plan`` -> network ->
``complete``) on latents shaped like the shipped models' (``[16, 1, 16, 16]``: the solver's batch; classifier-free
guidance doubles only the network's batch, which the engine never sees) with a stub network: the exact posterior
mean of a Gaussian data distribution, so the trajectory is smooth and SADA skips as on a real model, at the cost of
a few elementwise operations that are *not* timed. What is timed is ``plan(n, x)`` plus ``complete(n, x, out)`` of
every step: the criterion, the weights, the decision, the row bookkeeping, the estimates of skipped rows and the
one device -> host transfer. Reported: the median, mean and 90th percentile wall-clock microseconds per step over
all steps of ``--repeats`` runs (the first run is a warm-up and not counted), the median thread CPU time per step
(insensitive to other processes competing for the cores), the network-evaluation ratio and the latent-sized
tensors the engine held per sample (``history_bytes`` / one sample's latent bytes).

Weights of histories that every row shares are memoised across runs by exact bits (the next image at the same step
count reuses them). ``--cold`` clears the memo before every run, so each measured run pays for every weight set:
the cost of the first image on a new grid.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from sada.config import SADAConfig, StepSchedule, error_controlled_preset, preset
from sada.torch_backend.engine import SADAEngine
from sada.torch_backend.rings import clear_weight_memo
from sada.trajectory import DiscreteVPSchedule, RectifiedFlowSchedule, StepGrid, synthesise_output, to_eps, to_x0

__all__ = ["MODELS", "CONFIGS", "measure", "main"]

# model -> (grid family, prediction kind, solver order, latent shape per sample); the shipped models' settings
MODELS = {
    "unet": ("vp", "epsilon", 2, (1, 16, 16)),  # DPM-Solver++ 2M on SD's scaled-linear betas, trailing
    "mmdit": ("flow", "flow_velocity", 1, (1, 16, 16)),  # flow Euler, shift 1
}
# configuration name -> factory(model name, steps)
CONFIGS = {
    "default": lambda model, steps: SADAConfig(),  # schedule-free error control (ErrorControl)
    "step-schedule": lambda model, steps: SADAConfig(schedule=StepSchedule()),  # authors' schedule, corrected numerics
    "paper": lambda model, steps: preset("flux" if model == "mmdit" else "sd2", steps, max_downsample=0),
    "error-controlled": lambda model, steps: error_controlled_preset("flux" if model == "mmdit" else "sd2", steps),
}


def _grid(family: str, steps: int) -> StepGrid:
    if family == "vp":
        vp = DiscreteVPSchedule.from_beta_schedule("scaled_linear")
        return StepGrid.from_times(vp, vp.timesteps(steps, "trailing"))
    flow = RectifiedFlowSchedule()
    return StepGrid.from_times(flow, flow.timesteps(steps, shift=1.0))


class GaussianStub:
    """The exact model output for data ``N(mean, spread^2)`` per element: ``E[x0 | x]`` in the model's
    parameterisation (no network)."""

    def __init__(self, kind: str, shape: tuple, seed: int = 0, spread: float = 0.5):
        g = torch.Generator().manual_seed(seed)
        self.kind, self.mean, self.var = kind, torch.randn(shape, generator=g) * 0.5, spread**2

    def __call__(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        gain = alpha * self.var / (alpha**2 * self.var + sigma**2)
        x0 = self.mean + gain * (x - alpha * self.mean)
        return synthesise_output(self.kind, x0, x, alpha, sigma)


def run_once(
    engine: SADAEngine, grid: StepGrid, stub: GaussianStub, x: torch.Tensor
) -> tuple[list[float], torch.Tensor]:
    """One sampling run (first-order solver in the schedule scaling); returns ``[wall, thread CPU]`` seconds of
    every step (``finish`` counted in the last)."""
    times = []
    kind = engine.kind
    clocks = (time.perf_counter, time.thread_time)
    for n in range(grid.num_steps):
        a, s = float(grid.alpha[n]), float(grid.sigma[n])
        t0 = [c() for c in clocks]
        compute = engine.plan(n, x)
        t1 = [c() for c in clocks]
        rows = np.flatnonzero(compute)
        out = stub(x, a, s) if rows.size == compute.size else (stub(x[rows], a, s) if rows.size else None)
        t2 = [c() for c in clocks]
        out = engine.complete(n, x, out)
        t3 = [c() for c in clocks]
        times.append([(t1[i] - t0[i]) + (t3[i] - t2[i]) for i in range(2)])
        a1, s1 = float(grid.alpha[n + 1]), float(grid.sigma[n + 1])
        x = a1 * to_x0(kind, out, x, a, s) + s1 * to_eps(kind, out, x, a, s)
    t0 = [c() for c in clocks]
    engine.finish(x)
    times[-1] = [times[-1][i] + clocks[i]() - t0[i] for i in range(2)]
    return times, x


def measure(
    model: str,
    config_name: str,
    steps: int = 50,
    batch: int = 16,
    repeats: int = 5,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    cold: bool = False,
) -> dict:
    """Median / mean host microseconds per step of ``config_name`` on ``model``-shaped latents; ``cold``: every run
    computes its weights afresh (the memo of shared weights is cleared before it)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    if config_name not in CONFIGS:
        raise ValueError(f"config must be one of {sorted(CONFIGS)}, got {config_name!r}")
    for name, value in (("steps", steps), ("batch", batch), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    family, kind, order, shape = MODELS[model]
    grid = _grid(family, steps)
    config = CONFIGS[config_name](model, steps)
    stub = GaussianStub(kind, shape)
    stub.mean = stub.mean.to(device, dtype)
    per_step, trace, history = [], None, 0
    for r in range(repeats + 1):
        engine = SADAEngine(config, grid, kind, solver_order=order)
        x = torch.randn((batch,) + shape, generator=torch.Generator().manual_seed(r)).to(device, dtype)
        x = x * float(grid.sigma[0])
        if cold:
            clear_weight_memo()
        with torch.no_grad():
            times, _ = run_once(engine, grid, stub, x)
        if r:  # run 0 warms up allocators and caches
            per_step.extend(times)
        trace, history = engine.trace, engine.trace.extras.get("history_bytes", 0)
    us = np.asarray(per_step)[:, 0] * 1e6
    cpu_us = np.asarray(per_step)[:, 1] * 1e6
    latent_bytes = int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
    return {
        "model": model,
        "config": config_name,
        "steps": steps,
        "batch": batch,
        "repeats": repeats,
        "cold": cold,
        "median_us": float(np.median(us)),
        "mean_us": float(us.mean()),
        "p90_us": float(np.percentile(us, 90)),
        "median_cpu_us": float(np.median(cpu_us)),
        "speedup": trace.speedup(),
        "history_bytes": int(history),
        "latent_copies_per_sample": history / (batch * latent_bytes),
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mmdit,unet", help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument(
        "--configs", default="default,step-schedule,paper,error-controlled", help=f"from {sorted(CONFIGS)}"
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="clear the memo of shared weights before every run (the first image on a new grid)",
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(
        f"{'model':6} {'config':17} {'median us/step':>14} {'mean':>8} {'p90':>8} {'CPU median':>10} "
        f"{'NFE ratio':>9} {'latents/sample':>14}"
    )
    for model in args.models.split(","):
        for config in args.configs.split(","):
            r = measure(
                model.strip(), config.strip(), args.steps, args.batch, args.repeats, args.device, cold=args.cold
            )
            rows.append(r)
            print(
                f"{r['model']:6} {r['config']:17} {r['median_us']:14.0f} {r['mean_us']:8.0f} {r['p90_us']:8.0f} "
                f"{r['median_cpu_us']:10.0f} {r['speedup']:9.2f} {r['latent_copies_per_sample']:14.1f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
