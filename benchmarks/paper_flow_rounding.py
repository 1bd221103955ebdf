"""Paper mode's one deliberate deviation, measured: the first flow-matching skip (docs/paper-mode.md).

After a computed step the official flow criterion of the first skipped row is ``-(v^ - 2 v_n + v_{n-1})`` with
``v^ = 2 v_n - v_{n-1}``: zero in exact arithmetic, float32 rounding noise in practice, so whether the next step is
skipped too depends on the sign of that noise. Paper mode sets it to exactly zero (stable). This script runs the
shipped MMDiT with the authors' flux preset both ways (the official behaviour: the product as float32 computes it)
on the same noise and labels, and prints the evaluations per sample, the decisions that differ and the PSNR of the
two outputs against each other and against the converged ODE solution of the benchmark.

    python -m benchmarks.paper_flow_rounding --seeds 16 --steps 50
"""

from __future__ import annotations

import argparse

import torch

__all__ = ["main"]


def _engine_factory(official: bool):
    from sada.torch_backend.engine import SADAEngine

    class OfficialRounding(SADAEngine):
        def _flow_product_of_skipped_rows(self, product, computed):
            return product  # the rounding noise decides, as in the official code

    def factory(config):
        def make(grid, kind):
            cls = OfficialRounding if official else SADAEngine
            return cls(config, grid, kind, history_dtype=torch.float32)

        return make

    return factory


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=16, help="held-out seeds 1000, 1001, ...")
    parser.add_argument("--steps", type=int, default=50, choices=[50, 25, 15])
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")

    import sada.adapters.diffusers as sada_d
    from benchmarks.cells import Cell, seed_list
    from benchmarks.execute import CellRunner
    from benchmarks.metrics import psnr_per_image
    from benchmarks.models import load_model
    from benchmarks.reference import ReferenceSpec, reference_images
    from sada.config import preset

    cell = Cell("diffusers", "mmdit", "flow_euler", "shift1", args.steps)
    model = load_model("mmdit")
    runner = CellRunner(cell, model)
    seeds = seed_list("heldout", args.seeds)
    labels = [s % 10 for s in seeds]
    config = preset("flux", args.steps)
    out = {}
    for official in (False, True):
        pipe = runner.pipe(runner.full_grid.overrides)
        with sada_d.enabled(pipe, config, engine_factory=_engine_factory(official)(config)) as handle:
            images = model.sample(pipe, labels, seeds, args.steps)
            out[official] = (images.float(), handle.trace.decisions.copy(), handle.trace.speedup())
    spec = ReferenceSpec("mmdit", cell.reference_start, model.guidance)
    reference = reference_images(model, spec, seeds, labels)
    (a, da, sa), (b, db, sb) = out[False], out[True]
    differ = int((da != db).any(axis=1).sum()) if da.ndim == 2 else int((da != db).sum())
    print(f"flux preset, {args.steps} steps, seeds {seeds[0]}-{seeds[-1]} (batch-level decisions)")
    print(f"evaluation ratio: deterministic zero {sa:.3f}x, official rounding {sb:.3f}x")
    print(f"steps whose decision differs: {differ} of {da.shape[0]}")
    print(f"PSNR deterministic vs official: {psnr_per_image(a, b).mean():.2f} dB")
    print(
        f"PSNR vs ODE solution: deterministic {psnr_per_image(a, reference).mean():.2f} dB, "
        f"official {psnr_per_image(b, reference).mean():.2f} dB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
