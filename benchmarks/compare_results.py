"""Compare two benchmark runs value by value: does a single run of the current code reproduce a stored (possibly
merged) results file?

    python -m benchmarks.compare_results docs/results/bench-matrix-results.json bench-full/results.json

Every run of the benchmark is deterministic (same seeds, noise, labels and scoring), so a stored file that was merged
from several partial runs (:mod:`benchmarks.merge_results`) should equal one run over all its cells, to the last
digit, if every merge was made with the code the file claims. This counts the cells only one run has, lists the methods one
cell has in only one run, and every number that differs (evaluations, PSNR / SSIM against the ODE solution and the
full run) beyond a relative ``--rtol``; it exits 1 when a value or a method differs (a run over some of the cells
is compared on those: the cells only one run has are counted, not listed). Expected run time: about a second.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import NamedTuple

__all__ = ["COMPARED", "Difference", "compared_values", "differences", "main"]

COMPARED = ("NFE", "PSNR vs ODE", "SSIM vs ODE", "PSNR vs full run", "SSIM vs full run")


class Difference(NamedTuple):
    """One way the two runs differ: ``what`` is ``"cell"``, ``"method"`` or a compared column."""

    cell: str
    method: str | None
    what: str
    stored: object
    new: object


def _cells(data: dict, name: str) -> dict:
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise ValueError(
            f"{name} must be a results.json of sada bench (with a 'cells' list), got {type(data).__name__}"
        )
    return {cell["name"]: cell for cell in data["cells"]}


def _equal(x, y, rtol: float) -> bool:
    if x is None or y is None:
        return x is y
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return abs(x - y) <= rtol * max(1.0, abs(x), abs(y))


def compared_values(stored: dict, new: dict):
    """``(cell, method, column, stored value, new value)`` for every :data:`COMPARED` column that either run holds, of
    every method row of every cell both runs hold."""
    a, b = _cells(stored, "stored"), _cells(new, "new")
    for name in [n for n in a if n in b]:
        rows_a = {row["method"]: row for row in a[name]["rows"]}
        rows_b = {row["method"]: row for row in b[name]["rows"]}
        for method in [m for m in rows_a if m in rows_b]:
            for column in COMPARED:
                x, y = rows_a[method].get(column), rows_b[method].get(column)
                if x is not None or y is not None:
                    yield name, method, column, x, y


def differences(stored: dict, new: dict, rtol: float = 1e-9) -> list[Difference]:
    """Every difference between two results files: cells and methods only one of them has, then every value of
    :func:`compared_values` that differs by more than the relative tolerance ``rtol``."""
    if not (isinstance(rtol, (int, float)) and not isinstance(rtol, bool) and rtol >= 0 and math.isfinite(rtol)):
        raise ValueError(f"rtol must be a finite number >= 0, got {rtol!r}")
    a, b = _cells(stored, "stored"), _cells(new, "new")
    out = [Difference(name, None, "cell", name in a, name in b) for name in sorted(set(a) ^ set(b))]
    for name in [n for n in a if n in b]:
        methods_a = {row["method"] for row in a[name]["rows"]}
        methods_b = {row["method"] for row in b[name]["rows"]}
        out += [Difference(name, m, "method", m in methods_a, m in methods_b) for m in sorted(methods_a ^ methods_b)]
    for name, method, column, x, y in compared_values(stored, new):
        if not _equal(x, y, rtol):
            out.append(Difference(name, method, column, x, y))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_results", description=__doc__.split("\n\n")[0])
    parser.add_argument("stored", help="the stored results.json (e.g. docs/results/bench-matrix-results.json)")
    parser.add_argument("new", help="results.json of a new run")
    parser.add_argument("--rtol", type=float, default=1e-9, help="relative tolerance per value (default 1e-9)")
    args = parser.parse_args(argv)
    stored, new = (json.loads(Path(p).read_text()) for p in (args.stored, args.new))
    found = differences(stored, new, args.rtol)
    only = {flag: [d.cell for d in found if d.what == "cell" and d.stored is flag] for flag in (True, False)}
    found = [d for d in found if d.what != "cell"]
    values = sum(1 for _ in compared_values(stored, new))
    for d in found:
        print(f"{d.cell}  {d.method or ''}  {d.what}: stored {d.stored!r}, new {d.new!r}")
    shared = len(set(_cells(stored, "stored")) & set(_cells(new, "new")))
    print(
        f"{shared} cells in both, {values} values compared, {len(found)} difference{'' if len(found) == 1 else 's'}; "
        f"{len(only[True])} cells only in the stored run, {len(only[False])} only in the new one"
    )
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
