"""``sada bench``: every method of every selected cell on the same noise and labels, scored against a
converged solution of the same ODE (see :mod:`benchmarks.reference`) and against the cell's full run.

Per cell: the full run (baseline), the SADA variants, then the plain grids that bracket each variant's
evaluation count in every grid family (:mod:`benchmarks.grids`), then optional wall-clock timing. Seeds
are processed in fixed micro-batches of ``batch`` seeds (chunk ``i`` = seeds ``i*batch ..``); under
``accelerate launch`` the chunks are split across ranks and rank 0 merges them, so a sharded run produces
exactly the images of a single-process run with the same per-process thread count.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.cells import seed_list, select_cells
from benchmarks.execute import CellRunner, RowCounter, time_methods
from benchmarks.grids import grid_families, plain_grid, resolve_grid, same_grid, steps_around
from benchmarks.methods import DEFAULT_GROUPS, SADA_VARIANTS, Method, methods_for
from benchmarks.models import load_model
from benchmarks.reference import ReferenceSpec, reference_images
from sada.errors import ExactRunWarning

__all__ = ["run_benchmark"]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _import_hosts(cells) -> None:
    """Import the adapters (and k-diffusion's samplers) the cells need before the first cell runs, so that one
    run uses one version of the code even if files change while it runs."""
    import sada.adapters.diffusers  # noqa: F401
    import sada.torch_backend.peers  # noqa: F401

    if any(c.backend == "k-diffusion" for c in cells):
        from sada.adapters.k_diffusion import load_sampling

        if load_sampling() is None:
            raise RuntimeError("k-diffusion cells need k-diffusion (pip install --no-deps k-diffusion)")


def _rank_world():
    try:
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())  # gloo on CPU-only machines
        return state.process_index, state.num_processes, state
    except Exception:  # accelerate absent or no launcher: single process
        return 0, 1, None


def _run_method(runner, method: Method, chunks: dict, progress) -> dict:
    """Images of this rank's chunks, evaluation rows and the last trace summary; errors are recorded."""
    counter = RowCounter(runner.model.network)
    images, trace, state = {}, None, None
    try:
        for c, (seeds, labels) in chunks.items():
            with warnings.catch_warnings():  # an exact run (e.g. a coarse grid) is a result; its trace notes why
                warnings.simplefilter("ignore", ExactRunWarning)
                images[c], trace, state = runner.run(method, seeds, labels)
            images[c] = images[c].float().cpu()
            progress()
    except Exception as exc:  # a method this cell's sampler does not support is reported, not fatal
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        counter.remove()
    return {
        "images": images,
        "rows": counter.rows,
        "n_samples": sum(len(s) for s, _ in chunks.values()),
        "trace": trace,
        "state_bytes": state,
        "timing": None,
    }


def _global_nfe(entry, world: int) -> float | None:
    """Evaluations per sample of a method over all ranks' chunks (CFG: two rows per evaluation)."""
    counts = [entry["rows"], entry["n_samples"]] if entry and "rows" in entry else [0, 0]
    if world > 1:
        from accelerate.utils import gather_object

        parts = gather_object([counts])
        counts = [sum(p[0] for p in parts), sum(p[1] for p in parts)]
    return counts[0] / (2 * counts[1]) if counts[1] else None


def _plain_peers(runner, nfes: dict, baseline: Method) -> tuple[list[Method], dict]:
    """Plain-grid methods bracketing every variant's NFE in every family, identical grids run once.

    Returns the methods to run and ``{(family, steps): method name}`` for every grid point (the baseline's
    grid included)."""
    cell, model = runner.cell, runner.model
    resolved = [(baseline.name, resolve_grid(cell, baseline.grid, model))]
    points = {(baseline.grid.family, baseline.grid.steps): baseline.name}
    steps = sorted({k for nfe in nfes.values() if nfe for k in steps_around(cell, nfe)})
    methods = []
    for family in grid_families(cell):
        for k in steps:
            try:
                grid = plain_grid(cell, family, k, model, runner.denoiser)
                grid_arrays = resolve_grid(cell, grid, model)
            except ValueError:  # e.g. more integer timesteps than fit between the ends
                continue
            same = next((name for name, arrays in resolved if same_grid(arrays, grid_arrays)), None)
            if same is None:
                name = f"plain: {grid.name}"
                methods.append(Method(name, "plain-grid", "plain", grid=grid, curve=f"plain: {family}"))
                resolved.append((name, grid_arrays))
                same = name
            points[(family, k)] = same
    return methods, points


def _reference_check(model, spec: ReferenceSpec, chunk, reference: torch.Tensor, cache_dir, progress) -> dict:
    """Agreement of the reference with the same solver at half the steps, on one micro-batch."""
    from benchmarks.metrics import psnr_per_image

    half = ReferenceSpec(spec.model, spec.start, spec.guidance, spec.order, spec.steps // 2)
    values = psnr_per_image(reference_images(model, half, *chunk, cache_dir, progress=progress), reference)
    return {
        "reference": spec.describe(),
        "check": half.describe(),
        "seeds": [int(s) for s in chunk[0]],
        "psnr_min": float(values.min()),
        "psnr_mean": float(values.mean()),
    }


def run_benchmark(
    cells=None,
    seed_set: str = "heldout",
    num_seeds: int = 32,
    batch: int = 16,
    groups=DEFAULT_GROUPS,
    methods_filter=None,
    repeats: int = 1,
    out: str | Path = "sada-bench-out",
    cache_dir=None,
    reference_steps: int | None = None,
    progress_bar: bool = True,
    dial_peers: bool = False,
) -> dict:
    """Run the benchmark on ``cells`` (default: the main job's subset); on rank 0 write ``results.json``,
    ``results.md`` and per-cell sample grids and Pareto plots under ``out``. ``dial_peers``: bracket the tolerance
    group's points with plain grids too (their difference to the best plain grid; more plain runs). Returns the
    results dict."""
    from tqdm.auto import tqdm

    from benchmarks.report import CellReport, write_report

    cells = select_cells() if cells is None else list(cells)
    _import_hosts(cells)
    for name, value, low in (("batch", batch, 1), ("repeats", repeats, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    rank, world, state = _rank_world()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = seed_list(seed_set, num_seeds)
    labels = [s % 10 for s in seeds]
    all_chunks = {c: (seeds[i : i + batch], labels[i : i + batch]) for c, i in enumerate(range(0, len(seeds), batch))}
    my_chunks = {c: v for c, v in all_chunks.items() if c % world == rank}
    started = time.perf_counter()
    settings = {
        "seed_set": seed_set,
        "seeds": [seeds[0], seeds[-1]],
        "num_seeds": num_seeds,
        "batch": batch,
        "groups": list(groups),
        "dial_peers": dial_peers,
        "repeats": repeats,
        "world_size": world,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "cells": [c.name for c in cells],
    }
    results = {"settings": settings, "references": {}, "cells": []}
    models, references, reports = {}, {}, []
    quiet = not progress_bar or rank != 0
    for cell in cells:
        model = models.get(cell.model) or models.setdefault(cell.model, load_model(cell.model))
        spec = ReferenceSpec(cell.model, cell.reference_start, model.guidance, steps=reference_steps or None)
        ref_key = f"{cell.model}/{cell.reference_start}"
        if ref_key not in references:
            bar = tqdm(
                total=len(my_chunks) * spec.steps + (spec.steps // 2 if 0 in my_chunks else 0),
                desc=f"ODE reference {ref_key}",
                unit="step",
                disable=quiet,
            )
            references[ref_key] = {
                c: reference_images(model, spec, *chunk, cache_dir, progress=bar.update)
                for c, chunk in my_chunks.items()
            }
            if 0 in my_chunks:
                check = _reference_check(model, spec, all_chunks[0], references[ref_key][0], cache_dir, bar.update)
                results["references"][ref_key] = check
                if rank == 0:
                    tqdm.write(
                        f"reference {ref_key}: {check['reference']}; vs {check['check']} on seeds "
                        f"{check['seeds'][0]}-{check['seeds'][-1]}: PSNR min {check['psnr_min']:.1f} dB, "
                        f"mean {check['psnr_mean']:.1f} dB"
                    )
            bar.close()
        runner = CellRunner(cell, model)
        methods = methods_for(cell, runner.full_grid, groups, methods_filter)
        runnable = [m for m in methods if not m.skipped]
        bar = tqdm(total=len(runnable) * len(my_chunks), desc=cell.name, disable=quiet)
        raw = {
            m.name: ({"skipped": m.skipped} if m.skipped else _run_method(runner, m, my_chunks, lambda: bar.update(1)))
            for m in methods
        }
        peered = [*SADA_VARIANTS, *(m.name for m in methods if dial_peers and m.group == "tolerance")]
        nfes = {v: _global_nfe(raw.get(v), world) for v in peered if v in raw and "rows" in raw[v]}
        peers, points = _plain_peers(runner, nfes, methods[0])
        bar.total += len(peers) * len(my_chunks)
        for method in peers:
            raw[method.name] = _run_method(runner, method, my_chunks, lambda: bar.update(1))
        methods += peers
        timed = [m for m in methods if m.timed and "images" in raw[m.name]]
        if repeats and timed and 0 in my_chunks:  # every timed method has just run on chunk 0: warm already
            bar.total += len(timed) * repeats
            for name, timing in time_methods(
                runner, timed, *all_chunks[0], repeats, lambda: bar.update(1), warm_up=False
            ).items():
                raw[name]["timing"] = timing
        bar.close()
        raw = _gather(raw, out / f".shard-{cell.slug}", rank, world, state)
        if rank == 0:
            ref_images = _gather(
                {"ref": {"images": references[ref_key]}},
                out / f".ref-{cell.slug}",
                rank,
                world,
                state,
                images_only=True,
            )["ref"]["images"]
            reports.append(
                CellReport(cell, methods, raw, points, torch.cat([ref_images[c] for c in sorted(ref_images)]))
            )
        elif world > 1:
            _gather(
                {"ref": {"images": references[ref_key]}},
                out / f".ref-{cell.slug}",
                rank,
                world,
                state,
                images_only=True,
            )
    if rank == 0:
        write_report(results, reports, labels, out, started)
    return results


def _plain(value, where: str = "results"):
    """``value`` with numpy scalars turned into Python numbers (exactly); anything but tensors and plain values is
    refused, naming where it sits, since :func:`_gather` reads the files back without unpickling objects."""
    if isinstance(value, torch.Tensor) or value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"{where} is a {type(value).__name__}: only tensors and plain values cross processes")


def _gather(raw: dict, folder: Path, rank: int, world: int, state, images_only: bool = False) -> dict:
    """Merge the ranks' chunks on rank 0 (through files in the output folder).

    The files hold only tensors and plain values (dict, list, str, int, float, bool, None) and are read back with
    ``torch.load(weights_only=True)``, which unpickles no code: a file planted in the output folder cannot run
    anything (torch's format stores tensors and floats bit-exactly, so the merged numbers are the ranks' own)."""
    if world == 1:
        return raw
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(_plain(raw), folder / f"rank{rank}.pt")
    state.wait_for_everyone()
    if rank != 0:
        state.wait_for_everyone()
        return {}
    merged = {}
    for r in range(world):
        part = torch.load(folder / f"rank{r}.pt", weights_only=True)
        for name, entry in part.items():
            if name not in merged:
                merged[name] = entry
                continue
            if "images" not in entry:
                continue
            merged[name]["images"].update(entry["images"])
            if not images_only:
                merged[name]["rows"] += entry["rows"]
                merged[name]["n_samples"] += entry["n_samples"]
                merged[name]["timing"] = merged[name]["timing"] or entry["timing"]
    for r in range(world):
        (folder / f"rank{r}.pt").unlink()
    folder.rmdir()
    state.wait_for_everyone()
    return merged
