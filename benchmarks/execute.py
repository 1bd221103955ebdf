"""Running one method of a cell on one micro-batch: diffusers pipelines or k-diffusion samplers.

:class:`CellRunner` holds a cell's pipelines (one per scheduler configuration) or its k-diffusion
denoiser, and runs a :class:`~benchmarks.methods.Method` on a list of seeds, counting the rows that enter
the network (network evaluations, whatever the method) with a forward pre-hook on its first layer.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time

import torch

from benchmarks.methods import ADAPTER_DEFAULT, Method

__all__ = ["CellRunner", "RowCounter", "time_methods"]


class RowCounter:
    """Rows entering the denoiser's first layer: network evaluations, whatever the method."""

    def __init__(self, module):
        first = next(m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        self.rows = 0
        self.handle = first.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.rows += args[0].shape[0]

    def remove(self):
        self.handle.remove()


class PeakRSS:
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


class CellRunner:
    """Runs the methods of one cell on micro-batches of seeds."""

    def __init__(self, cell, model):
        from benchmarks.grids import default_family, plain_grid

        self.cell, self.model = cell, model
        self.denoiser = None
        if cell.backend == "k-diffusion":
            from benchmarks.kdiff import DigitsEpsDenoiser

            self.denoiser = DigitsEpsDenoiser(model)
        self.full_grid = plain_grid(cell, default_family(cell), cell.steps, model, self.denoiser)
        self._pipes = {}

    def pipe(self, overrides=()):
        key = tuple(overrides)
        if key not in self._pipes:
            self._pipes[key] = self.model.pipeline(self.cell.sampler, **dict(key))
        return self._pipes[key]

    def run(self, method: Method, seeds, labels):
        """``(images, trace summary or None, SADA state bytes or None)`` of ``method`` on these seeds."""
        if method.skipped:
            raise ValueError(f"{method.name} does not run in this cell: {method.skipped}")
        if self.cell.backend == "k-diffusion":
            return self._run_kdiffusion(method, seeds, labels)
        return self._run_diffusers(method, seeds, labels)

    # ---------------------------------------------------------------- k-diffusion
    def _run_kdiffusion(self, method, seeds, labels):
        from benchmarks.kdiff import run_kdiffusion

        if method.kind == "plain":
            sigmas = torch.tensor(method.grid.sigmas, dtype=torch.float32)
            images, _ = run_kdiffusion(self.denoiser, self.cell.sampler, sigmas, seeds, labels)
            return images, None, None
        if method.kind != "sada":
            raise ValueError(f"k-diffusion cells run plain and SADA methods only, not {method.kind!r}")
        sigmas = torch.tensor(self.full_grid.sigmas, dtype=torch.float32)
        images, wrapper = run_kdiffusion(self.denoiser, self.cell.sampler, sigmas, seeds, labels, sada=method.config)
        trace = wrapper.trace
        state = trace.extras.get("history_bytes") if trace is not None else None
        return images, wrapper.summary(), state

    # ---------------------------------------------------------------- diffusers
    def _run_diffusers(self, method, seeds, labels):
        if method.kind == "plain":
            grid = method.grid
            pipe = self.pipe(grid.overrides)
            custom = grid.timesteps is not None or grid.sigmas is not None
            images = self.model.sample(
                pipe, labels, seeds, None if custom else grid.steps, timesteps=grid.timesteps, sigmas=grid.sigmas
            )
            return images, None, None
        pipe = self.pipe(self.full_grid.overrides)
        with self._apply(method, pipe) as handle:
            images = self.model.sample(pipe, labels, seeds, self.cell.steps)
            summary = state = None
            if handle is not None and handle.trace is not None:
                summary = handle.trace.summary()
                extras = handle.trace.extras
                state = extras.get("history_bytes", 0) + extras.get("pruning", {}).get("cache_bytes", 0)
        return images, summary, state

    @contextlib.contextmanager
    def _apply(self, method: Method, pipe):
        import sada.adapters.diffusers as sada_diffusers

        if method.kind == "sada":
            if method.config == ADAPTER_DEFAULT:
                with sada_diffusers.enabled(pipe) as handle:  # exactly what a user gets without a config
                    yield handle
            else:
                with sada_diffusers.enabled(pipe, method.config) as handle:
                    yield handle
        elif method.kind == "adaptive":
            from sada.torch_backend.peers import AdaptiveDiffusionEngine

            def factory(grid, kind):
                return AdaptiveDiffusionEngine(grid, kind, method.params["threshold"], method.params["max_skip_steps"])

            with sada_diffusers.enabled(pipe, engine_factory=factory) as handle:
                yield handle
        elif method.kind == "diffusers-hook":
            with _diffusers_cache_hook(pipe, self.model, method.params):
                yield None
        else:
            raise ValueError(f"unknown method kind {method.kind!r}")


@contextlib.contextmanager
def _diffusers_cache_hook(pipe, model, params):
    """One of diffusers' cache hooks on the denoiser for the duration of the block (applied with the public
    ``apply_*`` function: the shipped classes do not mix in ``CacheMixin``; the cache context is set around
    the pipeline call)."""
    from diffusers import hooks
    from diffusers.hooks.hooks import CacheContext, HookRegistry, _set_cache_context

    module = getattr(pipe, model.denoiser_role)
    name = params["hook"]
    if name == "taylorseer":
        hooks.apply_taylorseer_cache(
            module,
            hooks.TaylorSeerCacheConfig(
                cache_interval=params["interval"],
                disable_cache_before_step=params["warmup"],
                taylor_factors_dtype=torch.float32,
            ),
        )
    elif name == "first_block_cache":
        hooks.apply_first_block_cache(module, hooks.FirstBlockCacheConfig(threshold=params["threshold"]))
    else:
        raise ValueError(f"unknown diffusers hook {name!r}")
    _set_cache_context(module, CacheContext("cond"))
    try:
        yield
    finally:
        _set_cache_context(module, None)
        for sub in module.modules():
            registry = getattr(sub, "_diffusers_hook", None)
            if registry is not None:
                for hook_name in list(registry._hook_order):
                    registry.remove_hook(hook_name, recurse=False)
        HookRegistry.check_if_exists_or_initialize(module).invalidate_child_registries_cache()


def time_methods(
    runner: CellRunner, methods: list[Method], seeds, labels, repeats: int, progress, warm_up: bool = True
) -> dict:
    """Wall-clock of one micro-batch per method: a warm-up round (``warm_up``; skip it when every method has
    just run on these seeds), then ``repeats`` rounds that run every method once in turn, in alternating
    order (slow drifts of the machine and position effects hit all methods alike); the median per method."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    times = {m.name: [] for m in methods}
    peaks = {m.name: 0 for m in methods}
    first = 0 if warm_up else 1
    for round_ in range(first, repeats + 1):
        for method in methods if round_ % 2 else methods[::-1]:
            with PeakRSS() as mem:
                start = time.perf_counter()
                runner.run(method, seeds, labels)
                elapsed = time.perf_counter() - start
            if round_:  # round 0 is the warm-up
                times[method.name].append(elapsed)
                peaks[method.name] = max(peaks[method.name], mem.peak - mem.base)
            progress()
    return {
        name: {"median_s": statistics.median(t), "times_s": t, "peak_rss_mib": peaks[name] / 2**20}
        for name, t in times.items()
    }
