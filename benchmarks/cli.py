"""The ``sada`` command: ``demo`` (the reference SADA sampler on a closed-form mixture ODE, seconds),
``bench`` (SADA against plain samplers on the shipped digit models) and ``bench-report`` (markdown from a
stored ``results.json``, e.g. the generated part of docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main"]

BENCH_TIME = (
    "Expected run time on 2 CPU cores: the default cells about 11 minutes on a first run in one process "
    "(the ODE references are computed once and cached, ~5 minutes of it); `make bench` runs the two "
    "micro-batches in two processes (accelerate launch, --threads 1): 10.5 minutes on a first run. --full "
    "--groups main --methods SADA in two processes: 40 minutes for the 96 cells with the ODE references cached; "
    "every variant and the control take "
    "longer (not measured); add --threads 1 on a machine shared with other jobs."
)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the descriptions' line breaks."""


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _demo(args) -> int:
    from benchmarks.lab.experiments import compare_methods, format_table, make_problem

    start = time.perf_counter()
    problem = make_problem(args.schedule, args.solver, args.steps, batch=args.batch, dim=args.dim, seed=args.seed)
    print(
        f"SADA reference sampler on a {problem.distribution.num_components}-component Gaussian mixture "
        f"in {problem.distribution.dim} dimensions: {problem.label}, batch {args.batch}",
        flush=True,
    )
    done = [0]

    def progress(name):
        done[0] += 1
        print(f"  [{done[0]}] {name} ... done", file=sys.stderr, flush=True)

    rows = compare_methods(problem, progress=progress)
    print(format_table(rows))
    for row in rows:
        if row["method"] in ("SADA default (SADAConfig())", "SADA corrected", "SADA paper"):
            saved = 1 - 1 / row["speedup"]
            print(
                f"{row['method']}: {row['nfe']:.1f} network evaluations per sample instead of "
                f"{rows[0]['nfe']:.0f} ({saved:.0%} saved, {row['speedup']:.2f}x), RMS error vs the plain "
                f"sampler {row['rms']:.1e}"
            )
    print(f"finished in {time.perf_counter() - start:.1f} s")
    return 0


def _bench(args) -> int:
    from benchmarks.cells import select_cells

    try:
        cells = select_cells(args.cells, full=args.full)
    except ValueError as exc:
        raise SystemExit(f"sada bench: {exc}") from None
    if args.list_cells:
        print("\n".join(c.name for c in cells))
        return 0
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from benchmarks.run import run_benchmark

    repeats = args.repeats if args.repeats is not None else (0 if args.full else 1)
    start = time.perf_counter()
    run_benchmark(
        cells=cells,
        seed_set=args.seed_set,
        num_seeds=args.seeds,
        batch=args.batch,
        groups=args.groups,
        dial_peers=args.dial_peers,
        methods_filter=args.methods,
        repeats=repeats,
        out=args.out,
        cache_dir=False if args.no_cache else args.cache,
        reference_steps=args.reference_steps,
    )
    print(f"results in {args.out}/results.md ({time.perf_counter() - start:.0f} s)")
    return 0


def _bench_report(args) -> int:
    from benchmarks.render import render_file, update_docs

    if sum((args.docs, args.matrix, args.dial)) > 1:
        raise SystemExit("sada bench-report: choose one of --docs, --matrix and --dial")
    try:
        if args.dial:
            from benchmarks.dial_report import render_dial, update_dial

            if args.update:
                print(f"updated the dial section of {args.update} from {update_dial(args.results, args.update)}")
            else:
                sys.stdout.write(render_dial(json.loads(Path(args.results).read_text())))
        elif args.update:
            stored = update_docs(args.results, args.update, matrix=args.matrix)
            print(f"updated the generated section of {args.update} from {stored}")
        else:
            sys.stdout.write(render_file(args.results, docs=args.docs and not args.matrix, matrix=args.matrix))
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"sada bench-report: cannot render {args.results}: {exc}") from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    from benchmarks.methods import DEFAULT_GROUPS, GROUPS

    parser = argparse.ArgumentParser(prog="sada", description=__doc__, formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        formatter_class=_Formatter,
        help="SADA vs the plain sampler on a closed-form mixture ODE (seconds)",
        description="SADA's float64 reference sampler against the plain sampler on a closed-form Gaussian-mixture "
        "ODE.\n\nMethods: baseline (no SADA), SADA default (SADAConfig(), what the adapters run when given "
        "no config), SADA paper, SADA corrected, corrected + error control "
        "and ablations (reuse noise, step-index nodes, corrected criterion, no multistep).\n"
        "Expected run time: 2-5 seconds.",
    )
    demo.add_argument("--schedule", choices=["vp", "ve", "flow"], default="vp", help="noise schedule")
    demo.add_argument("--solver", choices=["euler", "dpmpp_2m"], default="dpmpp_2m", help="ODE solver")
    demo.add_argument("--steps", type=int, choices=[50, 25, 15], default=50, help="sampling steps")
    demo.add_argument("--batch", type=_int_at_least(1), default=8, help="samples")
    demo.add_argument("--dim", type=_int_at_least(1), default=64, help="dimensions of the mixture")
    demo.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the mixture and the noise")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser(
        "bench",
        formatter_class=_Formatter,
        help="SADA vs plain samplers on the shipped digit models (the main job)",
        description="SADA against plain samplers on the shipped digit models, every method from the same noise and "
        "labels, scored against a converged solution of the same ODE (and against the full run).\n\n"
        "Methods per cell: baseline (the full run); SADA (the adapter's default configuration); SADA "
        "paper (the authors' preset, 50/25/15 steps); SADA step-indexed (the previous release's "
        "error-vetoed step schedule); plain grids at each variant's evaluation count (U-Net: trailing, karras, same ends; MMDiT: shift 1, shift 3, same "
        "ends (flow Euler only); k-diffusion: karras, exponential, uniform t). Groups: control = SADA with skipping "
        "disabled; tolerance = schedule-free SADA (ErrorControl) with its tolerance swept; peer / "
        "ablation / pareto (diffusers cells) = AdaptiveDiffusion, diffusers cache hooks, token pruning, "
        "ablations and knob sweeps.\n" + BENCH_TIME,
    )
    bench.add_argument(
        "--cells",
        nargs="+",
        metavar="PATTERN",
        help="cells backend/model/sampler/spacing/steps by shell pattern, e.g. '*/unet/*/karras/50'; "
        "none given: the main job's cells (see --list-cells)",
    )
    bench.add_argument(
        "--full",
        action="store_true",
        help="every cell of the matrix (both models, every sampler and spacing, 15/25/50/100 steps; --list-cells "
        "lists them)",
    )
    bench.add_argument("--list-cells", action="store_true", help="print the selected cells and exit")
    bench.add_argument(
        "--seed-set",
        choices=["heldout", "tuning"],
        default="heldout",
        help="heldout: seeds 1000.. (reporting); tuning: seeds 0.. (for tuning runs)",
    )
    bench.add_argument("--seeds", type=_int_at_least(1), default=32, help="number of seeds (labels = seed %% 10)")
    bench.add_argument("--batch", type=_int_at_least(1), default=16, help="seeds per micro-batch")
    bench.add_argument(
        "--groups", nargs="+", default=list(DEFAULT_GROUPS), choices=list(GROUPS), help="method groups to run"
    )
    bench.add_argument("--methods", nargs="+", metavar="NAME", help="run only these methods (the baseline always runs)")
    bench.add_argument(
        "--repeats",
        type=_int_at_least(0),
        default=None,
        help="timed rounds of wall-clock per method on one micro-batch; none given: 1, or 0 with --full",
    )
    bench.add_argument(
        "--threads",
        type=_int_at_least(1),
        default=None,
        help="torch threads per process (results are bit-reproducible for a fixed count; on a shared "
        "machine use 1); none given: torch's default",
    )
    bench.add_argument("--out", default="sada-bench-out", help="output folder")
    bench.add_argument(
        "--cache",
        default=None,
        help="folder of the ODE reference cache; none given: $SADA_BENCH_CACHE or ~/.cache/sada-bench",
    )
    bench.add_argument("--no-cache", action="store_true", help="compute the ODE references without the cache")
    bench.add_argument(
        "--reference-steps",
        type=_int_at_least(8),
        default=None,
        help="solver steps of the ODE reference; none given: 500 for the U-Net, 1000 for the MMDiT",
    )
    bench.add_argument(
        "--dial-peers",
        action="store_true",
        help="also run the plain grids that bracket every point of the tolerance group, so each dial point gets "
        "its difference to the best plain grid (for sada bench-report --dial; more plain runs)",
    )
    bench.set_defaults(func=_bench)
    report = sub.add_parser(
        "bench-report",
        formatter_class=_Formatter,
        help="markdown of a stored bench results.json",
        description="Render the markdown report of a stored results.json (stdout), or with --update regenerate a "
        "docs page from it:\n  sada bench-report sada-bench-out/results.json --update docs/benchmarks.md\n"
        "  sada bench-report bench-full/results.json --matrix --update docs/results/benchmark-matrix.md\n"
        "  sada bench-report dial-out/results.json --dial --update docs/benchmarks.md\n"
        "Expected run time: about a second.",
    )
    report.add_argument("results", help="results.json written by sada bench")
    report.add_argument("--docs", action="store_true", help="the docs page's section (main cells only)")
    report.add_argument(
        "--matrix", action="store_true", help="the full-matrix page's section (every cell's table and Pareto plot)"
    )
    report.add_argument(
        "--dial",
        action="store_true",
        help="the accuracy dial per cell (needs the tolerance group): every tolerance's evaluation ratio and dB "
        "against the best plain grid, and the dial goal per cell (results/bench-dial-results.json with --update)",
    )
    report.add_argument(
        "--update",
        metavar="PAGE",
        help="regenerate PAGE's generated section (docs tables), store the results as "
        "results/bench-results.json beside PAGE and copy the plots into results/img/ (--matrix: "
        "PAGE lives in the results folder: bench-matrix-results.json and img/ beside it)",
    )
    report.set_defaults(func=_bench_report)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
