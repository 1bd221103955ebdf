"""How predictable the network's clean-sample prediction is along a plain trajectory: the limit of any skip.

A skipped step receives a polynomial extrapolation of earlier clean-sample predictions. This command runs one plain
diffusers grid of a shipped model, records the clean prediction ``D_i`` at every node, and for each node reports

* ``|dD|``: the RMS change from the previous node (what reusing the last prediction would miss);
* the RMS error of Lagrange extrapolations in the noise level through earlier nodes: the default's stencil on an
  every-other run (nodes ``i-1, i-3, i-5``), a line on it (``i-1, i-3``), the cubic (``i-1, i-3, i-5, i-7``) and the
  dense quadratic and line (``i-1, i-2, i-3``; ``i-1, i-2``),

summarised per band of the EDM noise level. On a smooth trajectory the errors fall with the step like ``h^3`` and
sit far below ``|dD|``; where they are as large as ``|dD|`` the prediction is rough at the scale of the steps and
no extrapolation recovers it (docs/benchmarks.md, "UniPC between the matrix's step counts"). With ``--probe`` it also
evaluates ``D`` along the forward-process path ``x = alpha x0 + sigma n`` at timesteps half a step apart around
a few timesteps: a second difference as large as the first is roughness in the timestep input itself.

    python -m benchmarks.roughness unet unipc --override use_karras_sigmas=true --steps 60 --first-seed 1016 --probe
    python -m benchmarks.roughness mmdit flow_unipc --override flow_shift=1.0 --steps 60 --first-seed 1016
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.dial_sweep import _value

__all__ = ["extrapolation_errors", "STENCILS", "main"]

# name -> offsets of the nodes an extrapolation to node i uses
STENCILS = {
    "quadratic i-1,3,5 (default)": (1, 3, 5),
    "line i-1,3": (1, 3),
    "cubic i-1,3,5,7": (1, 3, 5, 7),
    "quadratic i-1,2,3": (1, 2, 3),
    "line i-1,2": (1, 2),
}


def _lagrange_weights(nodes: np.ndarray, at: float) -> np.ndarray:
    weights = np.ones(nodes.size)
    for j in range(nodes.size):
        for k in range(nodes.size):
            if k != j:
                weights[j] *= (at - nodes[k]) / (nodes[j] - nodes[k])
    return weights


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values**2)))


def extrapolation_errors(predictions: np.ndarray, abscissae: np.ndarray) -> dict[str, np.ndarray]:
    """Per node ``i``: the RMS of ``D_i - D_{i-1}`` (``"|dD|"``) and of every :data:`STENCILS` extrapolation's
    error (NaN where the stencil reaches before the first node). ``predictions``: ``[nodes, ...]`` float64;
    ``abscissae``: one distinct finite value per node."""
    predictions = np.asarray(predictions, dtype=np.float64)
    abscissae = np.asarray(abscissae, dtype=np.float64)
    if predictions.ndim < 2 or abscissae.shape != predictions.shape[:1]:
        raise ValueError(
            f"predictions must be [nodes, ...] with one abscissa per node, got {predictions.shape} and "
            f"{abscissae.shape}"
        )
    if not (np.all(np.isfinite(predictions)) and np.all(np.isfinite(abscissae))):
        raise ValueError("predictions and abscissae must be finite")
    if np.unique(abscissae).size != abscissae.size:
        raise ValueError(f"abscissae must be distinct, got {abscissae.tolist()}")
    count = predictions.shape[0]
    out = {"|dD|": np.full(count, np.nan)}
    out["|dD|"][1:] = [_rms(predictions[i] - predictions[i - 1]) for i in range(1, count)]
    for name, offsets in STENCILS.items():
        errors = np.full(count, np.nan)
        for i in range(max(offsets), count):
            nodes = np.array([i - k for k in offsets])
            weights = _lagrange_weights(abscissae[nodes], abscissae[i])
            estimate = np.tensordot(weights, predictions[nodes], axes=1)
            errors[i] = _rms(estimate - predictions[i])
        out[name] = errors
    return out


def _trajectory(cell, steps: int, flow: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The guided clean predictions at every node of a plain ``steps``-step run and the nodes' EDM sigmas
    ``sigma / alpha`` (U-Net: the scheduler's ``sigmas``, where DPM-Solver and UniPC keep ``sigma / alpha``; ``flow``
    (the MMDiT, velocity prediction): the flow time ``t`` there, ``x0 = x - t v`` and ``sigma / alpha = t / (1 - t)``)."""
    model, recorded = cell.model, []

    def keep(module, args, kwargs, out):
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        recorded.append((x.detach().double(), (out[0] if isinstance(out, tuple) else out.sample).double()))

    hook = model.network.register_forward_hook(keep, with_kwargs=True)
    try:
        model.sample(cell.pipe, cell.labels, cell.seeds, steps)
    finally:
        hook.remove()
    times = cell.pipe.scheduler.sigmas.double().numpy()[:-1]
    if len(recorded) != steps or times.size != steps:
        raise RuntimeError(f"recorded {len(recorded)} network calls for {steps} steps (a two-stage sampler?)")
    predictions = []
    for (x, out), s in zip(recorded, times):
        uncond, cond = out.chunk(2)
        guided = uncond + model.guidance * (cond - uncond)  # eps (U-Net) or the velocity (flow)
        if flow:
            predictions.append((x.chunk(2)[0] - s * guided).numpy())
        else:
            alpha = 1.0 / np.sqrt(1.0 + s**2)
            predictions.append(((x.chunk(2)[0] - s * alpha * guided) / alpha).numpy())
    edm = times / (1.0 - times) if flow else times
    return np.stack(predictions), edm


def _probe(cell, centres) -> list[tuple[int, float, float]]:
    """``(t0, mean |first difference|, mean |second difference|)`` of ``D`` along the forward path at half-step
    spacing over ``t0 - 6 .. t0 + 6``."""
    import torch

    model = cell.model
    x0 = cell.plain_images.get(max(cell.plain_images)) if cell.plain_images else None
    if x0 is None:
        raise ValueError("the probe needs a plain run first")
    x0 = x0.double()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    table = model.base_scheduler.alphas_cumprod.double().numpy()
    rows = []
    for t0 in centres:
        values = []
        for t in np.arange(t0 - 6, t0 + 6.5, 0.5):
            abar = float(np.interp(t, np.arange(table.size), table))
            x = abar**0.5 * x0 + (1 - abar) ** 0.5 * noise
            eps = model.guided_output(x.float(), float(t), cell.labels).double()
            values.append(((x - (1 - abar) ** 0.5 * eps) / abar**0.5).numpy())
        v = np.stack(values)
        first = np.sqrt(np.mean((v[1:] - v[:-1]) ** 2, axis=tuple(range(1, v.ndim))))
        second = np.sqrt(np.mean((v[2:] - 2 * v[1:-1] + v[:-2]) ** 2, axis=tuple(range(1, v.ndim))))
        rows.append((int(t0), float(first.mean()), float(second.mean())))
    return rows


BANDS = ((3.0, np.inf), (1.0, 3.0), (0.3, 1.0), (0.0, 0.3))


def main(argv=None) -> int:
    from benchmarks.dial_sweep import CellRunner

    parser = argparse.ArgumentParser(prog="python -m benchmarks.roughness", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=["unet", "mmdit"])
    parser.add_argument("sampler")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE", help="scheduler config overrides")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--probe", action="store_true", help="also probe D in the timestep input (t = 50..600)")
    args = parser.parse_args(argv)
    if args.steps < 8:
        parser.error(f"--steps must be >= 8 (the cubic stencil reaches 7 nodes back), got {args.steps}")
    overrides = dict((k, _value(v)) for k, v in (item.split("=", 1) for item in args.override))
    if args.probe and args.model != "unet":
        parser.error("--probe reads the U-Net's discrete noise table; run it with the unet model")
    cell = CellRunner(args.model, args.sampler, overrides, args.first_seed, args.seeds)
    predictions, sigmas = _trajectory(cell, args.steps, flow=args.model == "mmdit")
    errors = extrapolation_errors(predictions, sigmas)
    names = list(errors)
    print(f"{args.sampler} {args.steps} steps, seeds {cell.seeds[0]}-{cell.seeds[-1]}: RMS over the nodes of a band")
    print("| EDM sigma | nodes | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    for low, high in BANDS:
        inside = (sigmas >= low) & (sigmas < high) & np.isfinite(errors["cubic i-1,3,5,7"])  # the same nodes
        if inside.any():
            cells = " | ".join(f"{np.sqrt(np.nanmean(errors[n][inside] ** 2)):.2e}" for n in names)
            print(f"| {low:g}-{high:g} | {int(inside.sum())} | {cells} |")
    if args.probe:
        cell.plain_at(args.steps)
        print("\nD along the forward path, half a timestep apart (mean RMS over t0-6 .. t0+6):")
        print("| t0 | first difference | second difference | second / first |")
        print("|---|---|---|---|")
        for t0, first, second in _probe(cell, (50, 200, 400, 600)):
            print(f"| {t0} | {first:.2e} | {second:.2e} | {second / first:.2f} |")
    cell.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
