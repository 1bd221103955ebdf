"""The ``sada`` command: ``sada demo`` runs the reference SADA sampler on a closed-form mixture ODE."""
from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main"]


def _demo(args) -> int:
    from sada.lab.experiments import compare_methods, format_table, make_problem

    start = time.perf_counter()
    problem = make_problem(args.schedule, args.solver, args.steps, batch=args.batch, dim=args.dim, seed=args.seed)
    print(f"SADA reference sampler on a {problem.distribution.num_components}-component Gaussian mixture "
          f"in {problem.distribution.dim} dimensions: {problem.label}, batch {args.batch}", flush=True)
    done = [0]

    def progress(name):
        done[0] += 1
        print(f"  [{done[0]}] {name} ... done", file=sys.stderr, flush=True)

    rows = compare_methods(problem, progress=progress)
    print(format_table(rows))
    for row in rows:
        if row["method"] in ("SADA corrected", "SADA paper"):
            saved = 1 - 1 / row["speedup"]
            print(f"{row['method']}: {row['nfe']:.1f} network evaluations per sample instead of "
                  f"{rows[0]['nfe']:.0f} ({saved:.0%} saved, {row['speedup']:.2f}x), RMS error vs the plain "
                  f"sampler {row['rms']:.1e}")
    print(f"finished in {time.perf_counter() - start:.1f} s")
    return 0


def _bench(args) -> int:
    from sada.bench.run import run_benchmark

    schedulers = {}
    for item in args.scheduler or []:
        model, _, name = item.partition("=")
        schedulers[model] = name
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    run_benchmark(models=args.model, schedulers=schedulers, steps=args.steps, batch=args.batch,
                  num_seeds=args.seeds, groups=args.groups, repeats=args.repeats, out=args.out,
                  methods_filter=args.methods)
    print(f"results in {args.out}/results.md ({time.perf_counter() - start:.0f} s)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sada", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="SADA vs. the plain sampler on a closed-form mixture ODE (numpy, seconds)")
    demo.add_argument("--schedule", choices=["vp", "ve", "flow"], default="vp")
    demo.add_argument("--solver", choices=["euler", "dpmpp_2m"], default="dpmpp_2m")
    demo.add_argument("--steps", type=int, choices=[50, 25, 15], default=50)
    demo.add_argument("--batch", type=int, default=8)
    demo.add_argument("--dim", type=int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    bench = sub.add_parser("bench", help="SADA vs baselines and peers on the shipped digit models (the main job)")
    bench.add_argument("--model", nargs="+", choices=["unet", "mmdit"], default=["unet", "mmdit"])
    bench.add_argument("--scheduler", nargs="*", metavar="MODEL=NAME",
                       help="e.g. unet=euler (unet: dpmpp_2m, euler, ddim, unipc, heun; mmdit: flow_euler)")
    bench.add_argument("--steps", type=int, default=50)
    bench.add_argument("--batch", type=int, default=16)
    bench.add_argument("--seeds", type=int, default=32, help="number of seeds (labels cycle 0..9)")
    bench.add_argument("--groups", nargs="+", default=["main", "peer", "ablation", "pareto"],
                       choices=["main", "peer", "ablation", "pareto"])
    bench.add_argument("--methods", nargs="*", help="run only these method names (plus the baseline)")
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--threads", type=int, default=None,
                       help="torch threads per process (results are bit-reproducible for a fixed count)")
    bench.add_argument("--out", default="sada-bench-out")
    bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
