"""Regenerate the fidelity-versus-compute fronts (docs/results/front.md, the MMDiT, and docs/results/front-unet.md,
the U-Net, with their figures) with one command:

    python -m benchmarks.regenerate_front --update docs/results/front.md
    python -m benchmarks.regenerate_front --dry-run          # print the commands only

Runs every group of :mod:`benchmarks.front` on both shifts, each ``run`` in its own process (cache-dit patches the
transformer and cannot be removed, so its groups get a process of their own), then renders the page from all the
result files (kept in ``docs/results/front-data/`` by default, beside the page); then the U-Net's front
(:mod:`benchmarks.front_unet`: one process, every group) and its page, ``front-unet.md`` beside ``--update``. Each sampling run takes 7-9 s on
2 CPU cores (the wall column of the page) plus the ODE references; the chain was not timed end to end. A failed run
stops the chain with its exit status; every step prints its elapsed minutes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

SHIFTS = (1.0, 3.0)
MODELS = ("mmdit", "unet")
SEPARATE_GROUPS = {  # groups that need a process of their own, per shift
    1.0: ("cache_dit", "sada_cache_dit"),
    3.0: ("cache_dit",),
}


def _label(shift: float) -> str:
    return f"shift{shift:g}"


def commands(out: Path, update: str | None, shifts=SHIFTS) -> list[list[str]]:
    """The ``run`` commands (one process each) and the final ``render`` command, in order."""
    if not shifts:
        raise ValueError("shifts must name at least one shift, got none")
    runner = [sys.executable, "-m", "benchmarks.front"]
    runs, results = [], []
    for shift in shifts:
        if shift not in SEPARATE_GROUPS:
            raise ValueError(f"shift must be one of {SHIFTS}, got {shift!r}")
        path = out / f"{_label(shift)}.json"
        runs.append(runner + ["run", "--shift", f"{shift:g}", "--out", str(path)])
        results.append(str(path))
        for group in SEPARATE_GROUPS[shift]:
            path = out / f"{_label(shift)}-{group.replace('_', '-')}.json"
            runs.append(runner + ["run", "--shift", f"{shift:g}", "--groups", group, "--out", str(path)])
            results.append(str(path))
    render = runner + ["render", *results] + (["--update", update] if update else [])
    return runs + [render]


def unet_commands(out: Path, update: str | None) -> list[list[str]]:
    """The U-Net front's ``run`` (every group, one process) and ``render`` commands; its page is ``front-unet.md``
    beside ``update``."""
    runner = [sys.executable, "-m", "benchmarks.front_unet"]
    path = str(out / "unet-karras.json")
    page = ["--update", str(Path(update).with_name("front-unet.md"))] if update else []
    return [runner + ["run", "--out", path], runner + ["render", path] + page]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.regenerate_front", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default="docs/results/front-data", help="folder for the per-run result files (the page's raw data)"
    )
    parser.add_argument("--update", default=None, help="write the page here (e.g. docs/results/front.md)")
    parser.add_argument("--shifts", nargs="+", type=float, default=list(SHIFTS))
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), choices=MODELS, help="whose front to regenerate (default: both)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv)
    todo = commands(Path(args.out), args.update, tuple(args.shifts)) if "mmdit" in args.models else []
    todo += unet_commands(Path(args.out), args.update) if "unet" in args.models else []
    if args.dry_run:
        print("\n".join(" ".join(cmd) for cmd in todo))
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for i, cmd in enumerate(todo, 1):
        start = time.perf_counter()
        print(f"[{i}/{len(todo)}] {' '.join(cmd[1:])}", flush=True)
        code = subprocess.call(cmd)
        print(f"[{i}/{len(todo)}] exit {code} after {(time.perf_counter() - start) / 60:.1f} min", flush=True)
        if code:
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
