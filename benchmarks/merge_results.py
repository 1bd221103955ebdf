"""Replace some cells of a stored benchmark run by the same cells of a newer run, so that a change which affects only
some cells (e.g. the first-order hosts' default) is re-measured on those cells alone:

    python -m benchmarks.merge_results docs/results/bench-matrix-results.json new-run/results.json \\
        --out new-run/merged.json
    sada bench-report new-run/merged.json --matrix --update docs/results/benchmark-matrix.md

The two runs must share the seeds, the scoring and the methods (checked: seed set, seeds, batch, torch and diffusers
versions); every cell of the newer run replaces the stored cell of the same name (a cell the stored run lacks is an
error unless ``--add``: then it is added, and the cells are put in the matrix's order), the goals are recomputed over
the merged cells, and ``settings["merged"]`` records which cells came from which run, so the page says so. Expected
run time: about a second.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.cells import FULL_MATRIX
from benchmarks.methods import SADA_VARIANTS
from benchmarks.stats import goal_rows

MUST_MATCH = ("seed_set", "seeds", "num_seeds", "batch", "torch", "diffusers", "torch_threads")


def merge_cells(base: dict, update: dict, add: bool = False) -> dict:
    """``base`` with every cell of ``update`` in place of its cell of the same name (``add``: a cell ``base`` lacks
    is added, and the cells are sorted in :data:`benchmarks.cells.FULL_MATRIX` order, cells outside it last);
    goals recomputed.

    Raises ``ValueError`` naming the setting where the two runs' settings differ, or the cell ``base`` lacks."""
    for name, data in (("base", base), ("update", update)):
        if not isinstance(data, dict) or not isinstance(data.get("cells"), list) or "settings" not in data:
            raise ValueError(
                f"{name} must be a results.json of sada bench (settings, cells), got {type(data).__name__}"
            )
    for key in MUST_MATCH:
        if base["settings"].get(key) != update["settings"].get(key):
            raise ValueError(
                f"the runs differ in {key}: {base['settings'].get(key)!r} (base) vs {update['settings'].get(key)!r}"
            )
    index = {cell["name"]: i for i, cell in enumerate(base["cells"])}
    merged = json.loads(json.dumps(base))
    replaced, added = [], []
    for cell in update["cells"]:
        if cell["name"] in index:
            merged["cells"][index[cell["name"]]] = cell
            replaced.append(cell["name"])
        elif add:
            merged["cells"].append(cell)
            added.append(cell["name"])
        else:
            raise ValueError(
                f"cell {cell['name']!r} is not in the base run (its cells: {sorted(index)}); --add adds it"
            )
    if added:
        order = {cell.name: i for i, cell in enumerate(FULL_MATRIX)}
        merged["cells"].sort(key=lambda c: order.get(c["name"], len(order)))  # stable: unknown cells keep their order
        if isinstance(merged["settings"].get("cells"), list):
            merged["settings"]["cells"] = [c["name"] for c in merged["cells"]]
    merged["goals"] = goal_rows(merged["cells"], SADA_VARIANTS)
    previous = base["settings"].get("merged", [])
    kept = [c for c in index if c not in replaced]
    entry = {"replaced": replaced, "kept": kept, "update_settings": update["settings"]}
    if added:
        entry["added"] = added
    merged["settings"]["merged"] = [*previous, entry]
    return merged


def merged_note(settings: dict) -> str:
    """One sentence for a rendered page: which cells a later run re-measured ("" for a run that was not merged)."""
    notes = []
    for entry in settings.get("merged", []):
        later = entry["update_settings"]
        parts = []
        if entry["replaced"]:
            parts.append(f"{len(entry['replaced'])} cells ({', '.join(entry['replaced'])}) re-measured")
        if entry.get("added"):
            parts.append(f"{len(entry['added'])} cells ({', '.join(entry['added'])}) added")
        notes.append(
            f"{' and '.join(parts)} by a later run ({later.get('wall_s', 0) / 60:.1f} min; same seeds and scoring) "
            "and merged with python -m benchmarks.merge_results"
        )
    return ("; ".join(notes) + ".") if notes else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.merge_results", description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the stored results.json (e.g. docs/results/bench-matrix-results.json)")
    parser.add_argument("update", help="results.json of a run over some of its cells")
    parser.add_argument("--out", required=True, help="where to write the merged results.json")
    parser.add_argument("--add", action="store_true", help="add the newer run's cells the stored run lacks")
    args = parser.parse_args(argv)
    base, update = (json.loads(Path(p).read_text()) for p in (args.base, args.update))
    merged = merge_cells(base, update, add=args.add)
    Path(args.out).write_text(json.dumps(merged, indent=1, default=float) + "\n")
    added = merged["settings"]["merged"][-1].get("added", [])
    print(
        f"{len(update['cells']) - len(added)} of {len(merged['cells'])} cells replaced, {len(added)} added -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
