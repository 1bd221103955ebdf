"""Where skips cost: one cell, SADA allowed to skip only inside one window of steps at a time, each run scored
against the ODE solution and against the full run, beside what the accuracy dial's estimate predicted for the same
skips.

    python -m benchmarks.skip_sensitivity unet dpmpp_2m --host k-diffusion --override family=exponential --steps 100
    python -m benchmarks.skip_sensitivity unet unipc --override use_karras_sigmas=true --steps 50 --windows 5

For every window (equal shares of the steps; the last row lets SADA skip everywhere) it prints the skipped steps per
sample, the PSNR against the ODE solution and against the full run, the error the skips *left* in the final sample
(RMS of SADA minus the full run, over the full run's RMS: ``measured``), the sum of the estimates the dial compared
with its tolerance for those skips (``predicted``: :func:`sada.reference.skip_error`, what each skip should add to
the final sample) and their ratio per sample (median). A ratio near 1 means the estimate reads in output terms
there; well above 1, the skips in that window cost more than the dial believes. Tuning seeds (0..) by default.

The window is imposed by vetoing the engine's skips outside it (an experiment-only patch of
:meth:`sada.policy.ErrorControlPolicy.decide`); inside it the default rule decides as usual, so it runs only for
schedule-free configurations (:class:`~sada.config.ErrorControl`, the default).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from unittest import mock

import numpy as np

__all__ = ["skips_only_within", "window_bounds", "sensitivity"]


def window_bounds(num_steps: int, windows: int) -> list[tuple[int, int]]:
    """``windows`` consecutive ``[start, end)`` ranges of step indices covering ``0..num_steps`` in equal shares."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
    if isinstance(windows, bool) or not isinstance(windows, int) or not 1 <= windows <= num_steps:
        raise ValueError(f"windows must be an int in [1, num_steps={num_steps}], got {windows!r}")
    edges = np.linspace(0, num_steps, windows + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


@contextlib.contextmanager
def skips_only_within(start: int, end: int):
    """Inside the block the schedule-free policy skips no step outside ``[start, end)`` (its other rules unchanged)."""
    from sada.policy import ErrorControlPolicy

    if not 0 <= start < end:
        raise ValueError(f"need 0 <= start < end, got start={start!r}, end={end!r}")
    original = ErrorControlPolicy.decide

    def decide(self, step, stable=None, can_skip=None):
        if can_skip is not None and not start <= step + 1 < end:
            can_skip = np.zeros_like(np.asarray(can_skip, dtype=bool))
        return original(self, step, stable, can_skip)

    with mock.patch.object(ErrorControlPolicy, "decide", decide):
        yield


def _predicted(trace) -> np.ndarray:
    """Per sample, the sum of the dial's estimates over the steps it skipped."""
    from sada.policy import Decision

    estimates = trace.extras.get("skip_error", {})
    total = np.zeros(trace.batch_size)
    for step, values in estimates.items():
        skipped = trace.decisions[step] != Decision.COMPUTE
        values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
        total += np.where(skipped, values, 0.0)
    return total


def sensitivity(cell, steps: int, config, windows: int) -> list[dict]:
    """Rows of the table above for one runner of :mod:`benchmarks.dial_sweep` (``cell``)."""
    from benchmarks.metrics import psnr

    full_psnr, full_nfe = cell.plain_at(steps)
    full = cell.plain_images[steps].double()
    bounds = window_bounds(steps, windows) + [(0, steps)]
    rows = []
    for start, end in bounds:
        with skips_only_within(start, end):
            value, nfe = cell.sample(steps, config)
        trace, images = cell.last_trace, cell.last_images.double()
        if trace is None:
            raise RuntimeError("the runner kept no SADA trace: cannot read the dial's estimates")
        flat = (images - full).flatten(1)
        measured = (flat.pow(2).mean(1).sqrt() / full.flatten(1).pow(2).mean(1).sqrt()).numpy()
        predicted = _predicted(trace)
        samples = measured.shape[0]
        if predicted.shape[0] != samples:  # a guided batch traced as [cond; uncond] rows: one sample each
            predicted = predicted.reshape(-1, samples).max(0)
        ratio = np.where(predicted > 0, measured / np.maximum(predicted, 1e-300), np.nan)
        skipped = float(np.mean(np.sum(trace.decisions[:steps] != 0, axis=0)))
        row = dict(
            start=start,
            end=end,
            skipped=skipped,
            nfe=nfe,
            psnr=value,
            psnr_vs_full=psnr(images.float(), full.float()),
            full=full_psnr,
            measured=float(np.mean(measured)),
            predicted=float(np.mean(predicted)),
            ratio=float(np.nanmedian(ratio)) if np.isfinite(ratio).any() else float("nan"),
        )
        rows.append(row)
        label = "everywhere" if (start, end) == (0, steps) else f"steps {start:3d}-{end - 1:3d}"
        print(
            f"{label:>14}  skipped {skipped:5.1f}  NFE {nfe:6.2f}  PSNR vs ODE {value:6.2f} (full {full_psnr:6.2f})  "
            f"vs full {row['psnr_vs_full']:6.2f}  measured {row['measured']:.2e}  predicted {row['predicted']:.2e}  "
            f"ratio {row['ratio']:6.2f}",
            flush=True,
        )
    return rows


def main(argv=None) -> int:
    from benchmarks.dial_sweep import add_cell_arguments, cell_of
    from sada.config import SADAConfig

    parser = argparse.ArgumentParser(prog="python -m benchmarks.skip_sensitivity", description=__doc__.split("\n\n")[0])
    add_cell_arguments(parser)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--config", default="{}", help="SADAConfig fields as JSON (default: the default)")
    parser.add_argument("--seeds", type=int, default=16)
    args = parser.parse_args(argv)
    config = SADAConfig(**json.loads(args.config))
    if config.schedule.kind != "error_control":
        parser.error(f"the windows veto the schedule-free rule's skips: {config.schedule.kind!r} is not it")
    cell = cell_of(args)
    try:
        sensitivity(cell, args.steps, config, args.windows)
    finally:
        cell.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
