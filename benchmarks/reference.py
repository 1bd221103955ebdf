"""The benchmark's ground truth: a converged solution of the probability-flow ODE from the same noise.

Which ODE. Every sampler of a cell integrates the same probability-flow ODE of the same guided network
(same weights, labels, guidance scale) from the same start state; the grids differ only in where they
place their evaluations, *including where they stop*: each ends with a jump from its last nonzero noise
level straight to the clean sample (the model's own clean-sample prediction there). That last noise level
moves with the grid (trailing spacing: timestep 19 at 50 steps, 42 at 23 steps; Karras: the smallest
training sigma), and the jump is part of each sampler's discretisation error, not part of the ODE. So the
reference must not copy any grid's end. It integrates the ODE over the model's *whole trained noise range*
with a converged solver and then takes the clean-sample prediction at the smallest noise level the model
was trained on -- the same final operation every sampler performs, at the smallest sigma where it is
defined (VP U-Net: training timestep 0, EDM sigma 0.029; below it the network has never been trained.
Flow MMDiT: t = 0.001, the end of the flow scheduler's training table):

* VP (U-Net): DPM-Solver++ (data prediction, multistep) on a grid uniform in log sigma from sigma(t=999)
  to sigma(t=0), the network evaluated at the continuous timestep ``t(sigma)`` (linear interpolation of
  the training table in log sigma, diffusers' and k-diffusion's convention), default 500 steps, order 2.
  Grids on integer timesteps evaluate the same function at its training points.
* Flow (MMDiT): DPM-Solver++ in ``alpha = 1 - t, sigma = t`` on a grid uniform in t from 1 to 0.001
  (the scheduler's unshifted grid), default 1000 steps, order 2.

Start states (``start``): ``vp`` -- the VP sampler's ``x_T = noise`` (DPM-Solver++, DDIM, UniPC);
``edm`` -- the EDM-scaled samplers' ``x_T / alpha_T = sigma_max * noise`` (diffusers Euler/Heun with
trailing or Karras spacing, k-diffusion), ``sigma_max`` the float32 sigma of timestep 999 as they use it;
``flow`` -- ``x_1 = noise``. The two VP starts differ by 0.2 % in scale, so each has its own reference.

References are cached per micro-batch under ``cache_dir`` keyed by everything that determines their bits
(model weights hash, seeds, labels, guidance, start, solver, grid, steps, torch version, thread count);
a stored file is used only when its key matches exactly, so a cache hit returns what a recomputation would.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ReferenceSpec",
    "probability_flow_solve",
    "reference_grid",
    "reference_images",
    "default_cache_dir",
    "START_CONVENTIONS",
]

START_CONVENTIONS = {"unet": ("vp", "edm"), "mmdit": ("flow",)}
DEFAULT_STEPS = {"unet": 500, "mmdit": 1000}
FLOW_T_MIN = 1e-3


def default_cache_dir() -> Path:
    """``$SADA_BENCH_CACHE`` or ``$XDG_CACHE_HOME/sada-bench`` (``~/.cache/sada-bench``)."""
    if os.environ.get("SADA_BENCH_CACHE"):
        return Path(os.environ["SADA_BENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sada-bench"


@dataclass(frozen=True)
class ReferenceSpec:
    """What the reference solves: ``model`` (``unet``/``mmdit``), ``start`` convention, solver ``order``
    (2 or 3: DPM-Solver++ 2M / 3M) and ``steps`` (network evaluations, the final jump included)."""

    model: str
    start: str
    guidance: float
    order: int = 2
    steps: int | None = None

    def __post_init__(self):
        if self.model not in START_CONVENTIONS:
            raise ValueError(f"model must be one of {sorted(START_CONVENTIONS)}, got {self.model!r}")
        if self.start not in START_CONVENTIONS[self.model]:
            raise ValueError(
                f"start for {self.model} must be one of {START_CONVENTIONS[self.model]}, got {self.start!r}"
            )
        if self.order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {self.order!r}")
        if self.steps is None:
            object.__setattr__(self, "steps", DEFAULT_STEPS[self.model])
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 4:
            raise ValueError(f"steps must be an int >= 4, got {self.steps!r}")
        if not np.isfinite(self.guidance) or self.guidance < 0:
            raise ValueError(f"guidance must be finite and >= 0, got {self.guidance!r}")

    def describe(self) -> str:
        grid = "uniform in log sigma" if self.model == "unet" else "uniform in t, 1 -> 0.001"
        return f"DPM-Solver++({self.order}M) {self.steps} steps ({grid}) then the clean-sample jump"


def reference_grid(model, spec: ReferenceSpec):
    """``(model_times, alphas, sigmas)`` of the reference grid in VP coordinates (``x = alpha x0 + sigma n``)."""
    if not isinstance(spec, ReferenceSpec) or spec.model != getattr(model, "name", None):
        raise ValueError(f"spec must be a ReferenceSpec for model {getattr(model, 'name', model)!r}, got {spec!r}")
    if model.family == "vp":
        log_table = np.log(model.training_sigmas())
        log_sigma = np.linspace(log_table[-1], log_table[0], spec.steps)
        times = np.interp(log_sigma, log_table, np.arange(log_table.size, dtype=np.float64))
        edm = np.exp(log_sigma)
        alphas = 1.0 / np.sqrt(1.0 + edm**2)
        return times, alphas, edm * alphas
    t = np.linspace(1.0, FLOW_T_MIN, spec.steps)
    return t * 1000.0, 1.0 - t, t


def _start_state(model, spec: ReferenceSpec, noise: torch.Tensor) -> torch.Tensor:
    """The start state in VP coordinates at the grid's first point."""
    noise = noise.double()
    if spec.start in ("vp", "flow"):
        return noise
    sigma_max = float(np.float32(model.training_sigmas()[-1]))  # what the float32 samplers multiply by
    return noise * sigma_max / np.sqrt(1.0 + model.training_sigmas()[-1] ** 2)


def probability_flow_solve(denoise, x: torch.Tensor, alphas, sigmas, order: int = 2) -> torch.Tensor:
    """DPM-Solver++ (multistep, data prediction) on the grid ``alphas, sigmas`` (VP coordinates, decreasing
    noise; ``alphas[0]`` may be 0: a flow start) ending with the jump to the clean sample.

    ``denoise(x, i)`` returns the clean-sample prediction at grid point ``i``. Returns the prediction at the
    last grid point after integrating to it (float64). The order drops to what the history supports (first
    step; after a start at alpha = 0, where the log-SNR step is infinite).
    """
    alphas, sigmas = np.asarray(alphas, np.float64), np.asarray(sigmas, np.float64)
    if alphas.shape != sigmas.shape or alphas.ndim != 1 or alphas.size < 2:
        raise ValueError(f"alphas and sigmas must be 1-D arrays of one length >= 2, got {alphas.shape}, {sigmas.shape}")
    if np.any(sigmas <= 0) or np.any(alphas < 0) or np.any(np.diff(sigmas / np.maximum(alphas, 1e-300)) >= 0):
        raise ValueError("the grid must have sigmas > 0, alphas >= 0 and strictly decreasing sigma/alpha")
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    x = x.double()
    history = []  # (clean-sample prediction, log-SNR step that led away from it)
    for i in range(alphas.size):
        d = denoise(x, i).double()
        if i == alphas.size - 1:
            return d
        a0, s0, a1, s1 = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        ratio = (a0 * s1) / (s0 * a1)  # exp(-h), h = lambda_{i+1} - lambda_i; 0 for a start at alpha = 0
        h = -np.log(ratio) if ratio > 0 else np.inf
        history.append((d, h))
        usable = 1
        while usable < min(order, len(history)) and np.isfinite(history[-usable - 1][1]):
            usable += 1
        x = (s1 / s0) * x + a1 * (1.0 - ratio) * d
        if usable == 2:
            d_prev, h_prev = history[-2]
            x = x + 0.5 * a1 * (1.0 - ratio) * (d - d_prev) * (h / h_prev)
        elif usable == 3:
            (d_prev, h_prev), (d_prev2, h_prev2) = history[-2], history[-3]
            r0, r1 = h_prev / h, h_prev2 / h
            diff0, diff1 = (d - d_prev) / r0, (d_prev - d_prev2) / r1
            first = diff0 + r0 / (r0 + r1) * (diff0 - diff1)
            second = (diff0 - diff1) / (r0 + r1)
            x = x + a1 * ((ratio - 1.0) / h + 1.0) * first - a1 * ((ratio - 1.0 + h) / h**2 - 0.5) * second
    raise AssertionError("unreachable")


def _solve_chunk(model, spec: ReferenceSpec, seeds, labels, progress) -> torch.Tensor:
    times, alphas, sigmas = reference_grid(model, spec)
    x = _start_state(model, spec, model.noise(seeds))

    def denoise(x_vp, i):
        out = model.guided_output(x_vp, times[i], labels, spec.guidance).double()
        if progress is not None:
            progress(1)
        if model.family == "vp":  # epsilon
            return (x_vp - sigmas[i] * out) / alphas[i]
        return x_vp - sigmas[i] * out  # flow velocity: x0 = x_t - t v

    with torch.no_grad():
        return probability_flow_solve(denoise, x, alphas, sigmas, spec.order).float()


def _key_fields(model, spec: ReferenceSpec, seeds, labels) -> dict:
    return {
        "spec": asdict(spec),
        "model_sha256": model.fingerprint(),
        "seeds": [int(s) for s in seeds],
        "labels": [int(v) for v in labels],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "version": 1,
    }


def reference_images(
    model, spec: ReferenceSpec, seeds, labels, cache_dir: str | Path | None = None, on_compute=None, progress=None
) -> torch.Tensor:
    """Reference images ``[B, C, H, W]`` (float32) for ``seeds``/``labels``, computed as one batch or read
    from the cache (``cache_dir``; ``None``: :func:`default_cache_dir`; ``False``: no cache).

    ``on_compute()`` is called before a computation (not on a cache hit); ``progress(n)`` after every
    ``n`` solver steps (all ``spec.steps`` at once on a cache hit).
    """
    seeds, labels = list(seeds), list(labels)
    if not seeds or len(seeds) != len(labels):
        raise ValueError(
            f"need a non-empty list of seeds and one label per seed, got {len(seeds)} seeds, {len(labels)} labels"
        )
    fields = _key_fields(model, spec, seeds, labels)
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    path = None
    if cache_dir is not False:
        folder = Path(cache_dir or default_cache_dir()) / "references"
        path = folder / f"{spec.model}-{spec.start}-{spec.order}m{spec.steps}-{key[:24]}.pt"
        if path.is_file():
            stored = torch.load(path, weights_only=True)
            if stored.get("key") == json.dumps(fields, sort_keys=True):
                if progress is not None:
                    progress(spec.steps)
                return stored["images"]
    if on_compute is not None:
        on_compute()
    images = _solve_chunk(model, spec, seeds, labels, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"key": json.dumps(fields, sort_keys=True), "images": images}, tmp)
        os.replace(tmp, path)
    return images
