"""``sada bench``: every method side by side on the shipped models, same noise and labels, one process.

Seeds are processed in fixed micro-batches of ``batch`` seeds (chunk ``i`` = seeds ``i*batch ..``); under
``accelerate launch`` the chunks are split across ranks and rank 0 merges them, so a sharded run produces
exactly the images of a single-process run. Wall-clock is timed on chunk 0 for the timed methods, all in
this process: one warm-up each, then ``repeats`` round-robin rounds over the methods, the median per method.
"""
from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch

from sada.bench.methods import GROUPS, Method, methods_for
from sada.bench.models import DEFAULT_SCHEDULER, load_model

__all__ = ["run_benchmark", "EQUAL_NFE_REFERENCES"]

EQUAL_NFE_REFERENCES = ("SADA", "SADA error-controlled")


class _RowCounter:
    """Rows entering the denoiser's first layer: network evaluations, whatever the method."""

    def __init__(self, module):
        first = next(m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        self.rows = 0
        self.handle = first.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.rows += args[0].shape[0]

    def remove(self):
        self.handle.remove()


class _PeakRSS:
    """Peak resident memory while the block runs (sampled every 2 ms from /proc/self/statm)."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _rank_world():
    try:
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())  # gloo on CPU-only machines
        return state.process_index, state.num_processes, state
    except Exception:  # accelerate absent or no launcher: single process
        return 0, 1, None


def _run_method(model, pipe, method: Method, labels, seeds, steps, batch, chunks, progress):
    """Images of every chunk, network evaluations per sample and the run's trace summary."""
    counter = _RowCounter(getattr(pipe, model.denoiser_role))
    images, trace_summary, state_bytes = {}, None, None
    run_steps = method.steps or steps
    try:
        with method.apply(pipe, model) as handle:
            for c in chunks:
                sl = slice(c * batch, (c + 1) * batch)
                images[c] = model.sample(pipe, labels[sl], seeds[sl], run_steps).float().cpu()
                progress()
            rows = counter.rows
            if handle is not None and handle.trace is not None:
                trace_summary = handle.trace.summary()
                extras = handle.trace.extras
                state_bytes = extras.get("history_bytes", 0) + extras.get("pruning", {}).get("cache_bytes", 0)
    finally:
        counter.remove()
    n_samples = sum(len(v) for v in images.values())
    return {"images": images, "rows": rows, "n_samples": n_samples, "trace": trace_summary, "timing": None,
            "state_bytes": state_bytes}


def _time_methods(model, pipe, methods: list[Method], labels, seeds, steps, batch, repeats, progress) -> dict:
    """Wall-clock of chunk 0 per method: one warm-up each, then ``repeats`` rounds that run every method once
    in turn, in alternating order (so slow drifts of the machine and position effects hit all methods
    alike); the median per method."""
    sl = slice(0, batch)
    times = {m.name: [] for m in methods}
    peaks = {m.name: 0 for m in methods}
    for round_ in range(repeats + 1):
        for method in (methods if round_ % 2 else methods[::-1]):  # alternate the order: no position bias
            with method.apply(pipe, model):
                with _PeakRSS() as mem:
                    start = time.perf_counter()
                    model.sample(pipe, labels[sl], seeds[sl], method.steps or steps)
                    elapsed = time.perf_counter() - start
            if round_:  # round 0 is the warm-up
                times[method.name].append(elapsed)
                peaks[method.name] = max(peaks[method.name], mem.peak - mem.base)
            progress()
    return {name: {"median_s": statistics.median(t), "times_s": t, "peak_rss_mib": peaks[name] / 2**20}
            for name, t in times.items()}


def run_benchmark(models=("unet", "mmdit"), schedulers=None, steps: int = 50, batch: int = 16, num_seeds: int = 32,
                  groups=GROUPS, repeats: int = 3, out: str | Path = "sada-bench-out", progress_bar: bool = True,
                  methods_filter=None) -> dict:
    """Run the benchmark; on rank 0 write ``results.json``, ``results.md``, ``grid-*.png``, ``pareto-*.png``."""
    from tqdm.auto import tqdm

    from sada.bench.report import write_report

    rank, world, state = _rank_world()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(num_seeds))
    labels = [s % 10 for s in seeds]
    n_chunks = (num_seeds + batch - 1) // batch
    my_chunks = list(range(n_chunks))[rank::world]
    torch.manual_seed(0)
    results = {"settings": {"steps": steps, "batch": batch, "num_seeds": num_seeds, "repeats": repeats,
                            "world_size": world, "torch_threads": torch.get_num_threads(),
                            "torch": torch.__version__}, "models": {}}
    for name in models:
        model = load_model(name)
        scheduler = (schedulers or {}).get(name, DEFAULT_SCHEDULER[name])
        pipe = model.pipeline(scheduler)
        methods = [m for m in methods_for(model, scheduler, steps, groups)
                   if methods_filter is None or m.name in methods_filter or m.name == "baseline"]
        bar = tqdm(total=len(methods) * len(my_chunks), desc=f"{name}/{scheduler}", disable=not progress_bar or rank)
        raw = {}
        for method in methods:
            try:
                raw[method.name] = _run_method(model, pipe, method, labels, seeds, steps, batch, my_chunks,
                                               lambda: bar.update(1))
            except Exception as exc:  # a peer that does not support this model class is reported, not fatal
                raw[method.name] = {"error": f"{type(exc).__name__}: {exc}"}
                bar.update(len(my_chunks))
        for reference in EQUAL_NFE_REFERENCES:  # the honest peer: as many steps as the method's evaluations
            nfe = _global_nfe(raw.get(reference), world)
            if nfe:
                k = int(round(nfe))
                equal = Method(f"fewer steps ({k}) = {reference}'s NFE", "peer", "fewer", steps=k, timed=True)
                raw[equal.name] = _run_method(model, pipe, equal, labels, seeds, steps, batch, my_chunks,
                                              lambda: None)
                methods.append(equal)
        timed = [m for m in methods if m.timed and "error" not in raw[m.name]]
        if 0 in my_chunks and timed:
            bar.total += len(timed) * (repeats + 1)
            timings = _time_methods(model, pipe, timed, labels, seeds, steps, batch, repeats, lambda: bar.update(1))
            for method_name, timing in timings.items():
                raw[method_name]["timing"] = timing
        bar.close()
        raw = _gather(raw, out / f".shard-{name}", rank, world, state)
        if rank == 0:
            results["models"][name] = {"scheduler": scheduler, "raw": raw, "methods": methods}
    if rank == 0:
        write_report(results, model_labels=labels, out=out)
    return results


def _global_nfe(entry, world: int) -> float | None:
    """Evaluations per sample of a method over all ranks' chunks (every rank gets the same number)."""
    counts = [entry["rows"], entry["n_samples"]] if entry and "rows" in entry else [0, 0]
    if world > 1:
        from accelerate.utils import gather_object

        parts = gather_object([counts])
        counts = [sum(p[0] for p in parts), sum(p[1] for p in parts)]
    return _nfe({"rows": counts[0], "n_samples": counts[1]})


def _nfe(entry) -> float | None:
    if not entry or "rows" not in entry or not entry["n_samples"]:
        return None
    return entry["rows"] / (2 * entry["n_samples"])  # classifier-free guidance: two rows per evaluation


def _gather(raw: dict, folder: Path, rank: int, world: int, state) -> dict:
    """Merge the ranks' chunks on rank 0 (through files in the output folder)."""
    if world == 1:
        return raw
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(raw, folder / f"rank{rank}.pt")
    state.wait_for_everyone()
    if rank != 0:
        return {}
    merged = {}
    for r in range(world):
        part = torch.load(folder / f"rank{r}.pt", weights_only=False)
        for name, entry in part.items():
            if name not in merged:
                merged[name] = entry
                continue
            if "error" in entry:
                continue
            merged[name]["images"].update(entry["images"])
            merged[name]["rows"] += entry["rows"]
            merged[name]["n_samples"] += entry["n_samples"]
            merged[name]["timing"] = merged[name]["timing"] or entry["timing"]
    for r in range(world):
        (folder / f"rank{r}.pt").unlink()
    folder.rmdir()
    return merged
