"""How the accuracy dial's settings were chosen: one diffusers cell, SADA configs swept, each against the plain grid
of the same sampler at the neighbouring step counts (PSNR against the ODE solution, interpolated at SADA's
evaluation count).

    python -m benchmarks.dial_sweep mmdit flow_euler --override shift=1.0 --steps 50 --tolerances 0.002 0.005 0.01
    python -m benchmarks.dial_sweep unet dpmpp_2m --override use_karras_sigmas=true --steps 15 25 50 \\
        --config '{"abscissa": "lambda", "history": 3, "max_interval": 1}'
    python -m benchmarks.dial_sweep unet dpmpp_2m --host k-diffusion --override family=exponential --steps 100

``--host k-diffusion`` runs the U-Net through k-diffusion's sampler of that name (``euler``, ``heun``, ``dpmpp_2m``,
``lms``) on the sigma family given as ``--override family=karras|exponential`` (the matrix's k-diffusion cells).

Tuning seeds (0..) by default: the defaults were chosen on them; report on held-out seeds (``--first-seed 1000``).
One process, one thread (the ODE reference cache is keyed by the thread count of ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class CellRunner:
    """One diffusers cell of a shipped model on fixed seeds: ``sample(steps, sada=None)`` returns the PSNR against
    the ODE solution and the network evaluations per sample (the guided pair counted once); ``plain_at`` caches the
    plain grids. One thread (the ODE reference cache is keyed by the thread count of ``make bench``)."""

    def __init__(self, model_name, sampler, overrides, first_seed, seeds):
        from benchmarks.cells import VP_START_SAMPLERS

        start = "flow" if model_name == "mmdit" else ("vp" if sampler in VP_START_SAMPLERS else "edm")
        self._load(model_name, sampler, start, first_seed, seeds)
        self.pipe = self.model.pipeline(sampler, **overrides)

    def _load(self, model_name, sampler, start, first_seed, seeds):
        """The model, the seeds, the ODE reference of the ``start`` convention and the evaluation counter."""
        import torch

        from benchmarks.execute import RowCounter
        from benchmarks.models import load_model
        from benchmarks.reference import ReferenceSpec, reference_images

        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        torch.set_num_threads(1)
        self.model = load_model(model_name)
        self.sampler = sampler
        self.seeds = list(range(first_seed, first_seed + seeds))
        self.labels = [s % 10 for s in self.seeds]
        spec = ReferenceSpec(model_name, start, self.model.guidance)
        self.reference = reference_images(self.model, spec, self.seeds, self.labels)
        self.counter = RowCounter(self.model.network)
        self.per_step = 2 if sampler == "heun" else 1
        self.plain: dict = {}
        self.plain_images: dict = {}
        self.last_images = None
        self.last_trace = None  # the SADA trace of the latest sample() (None for a plain run)

    def sample(self, steps, sada=None):
        from benchmarks.metrics import psnr
        from sada.adapters import diffusers as sada_d

        self.counter.rows = 0
        self.last_trace = None
        if sada is None:
            images = self.model.sample(self.pipe, self.labels, self.seeds, steps)
        else:
            with warnings.catch_warnings(), sada_d.enabled(self.pipe, sada) as handle:
                warnings.simplefilter("ignore")
                images = self.model.sample(self.pipe, self.labels, self.seeds, steps)
                self.last_trace = handle.trace
        self.last_images = images
        return psnr(images, self.reference), self.counter.rows / (2 * len(self.seeds))

    def plain_at(self, steps):
        if steps not in self.plain:
            self.plain[steps] = self.sample(steps)
            self.plain_images[steps] = self.last_images
        return self.plain[steps]

    def neighbours_at(self, nfe):
        """The plain grid at ``nfe`` evaluations: linear between the two step counts around it."""
        per_step = self.per_step
        low = max(2, math.floor((nfe + per_step - 1) / per_step))
        (p1, e1), (p2, e2) = self.plain_at(low), self.plain_at(low + 1)
        return p1 + (p2 - p1) * (nfe - e1) / (e2 - e1)

    def close(self):
        self.counter.remove()


class KDiffusionCellRunner(CellRunner):
    """One k-diffusion cell of the shipped U-Net (the matrix's ``k-diffusion/unet/<sampler>/<family>``): the same
    interface as :class:`CellRunner`, sampling through :func:`benchmarks.kdiff.run_kdiffusion`."""

    def __init__(self, model_name, sampler, overrides, first_seed, seeds):
        from benchmarks.kdiff import KDIFFUSION_SAMPLERS, SIGMA_FAMILIES, DigitsEpsDenoiser

        if model_name != "unet":
            raise ValueError(f"k-diffusion runs the U-Net only, got model {model_name!r}")
        if sampler not in KDIFFUSION_SAMPLERS:
            raise ValueError(f"the k-diffusion sampler must be one of {KDIFFUSION_SAMPLERS}, got {sampler!r}")
        unknown = set(overrides) - {"family"}
        if unknown:
            raise ValueError(f"k-diffusion takes only --override family=..., got {sorted(unknown)}")
        self.family = overrides.get("family", "karras")
        if self.family not in SIGMA_FAMILIES:
            raise ValueError(f"family must be one of {SIGMA_FAMILIES}, got {self.family!r}")
        self._load(model_name, sampler, "edm", first_seed, seeds)  # x_T = sigma_max * noise
        self.denoiser = DigitsEpsDenoiser(self.model)

    def sample(self, steps, sada=None):
        from benchmarks.kdiff import kdiffusion_sigmas, run_kdiffusion
        from benchmarks.metrics import psnr

        self.counter.rows = 0
        sigmas = kdiffusion_sigmas(self.denoiser, self.family, steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            images, wrapper = run_kdiffusion(self.denoiser, self.sampler, sigmas, self.seeds, self.labels, sada=sada)
        self.last_images = images
        self.last_trace = None if wrapper is None else wrapper.trace
        return psnr(images, self.reference), self.counter.rows / (2 * len(self.seeds))


RUNNERS = {"diffusers": CellRunner, "k-diffusion": KDiffusionCellRunner}


def add_cell_arguments(parser) -> None:
    """The arguments that name a cell (model, sampler, ``--host``, ``--override``, ``--first-seed``), shared by
    :mod:`benchmarks.dial_sweep`, :mod:`benchmarks.plain_curve` and :mod:`benchmarks.skip_sensitivity`."""
    parser.add_argument("model", choices=["unet", "mmdit"])
    parser.add_argument("sampler")
    parser.add_argument("--host", choices=sorted(RUNNERS), default="diffusers")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE", help="scheduler config overrides")
    parser.add_argument("--first-seed", type=int, default=0)


def overrides_of(args) -> dict:
    """``--override KEY=VALUE ...`` as a dict (values parsed as JSON where they are)."""
    return dict((k, _value(v)) for k, v in (item.split("=", 1) for item in args.override))


def cell_of(args):
    """The runner of the cell :func:`add_cell_arguments` named (and ``args.seeds`` seeds)."""
    return RUNNERS[args.host](args.model, args.sampler, overrides_of(args), args.first_seed, args.seeds)


def sweep(
    model_name,
    sampler,
    overrides,
    steps_list,
    tolerances,
    config,
    first_seed,
    seeds,
    host="diffusers",
    unipc_corrector_off_on_skips=False,
    after_skips=None,
):
    from sada.config import SADAConfig

    if unipc_corrector_off_on_skips and host != "diffusers":  # checked before the model and references load
        raise ValueError(f"--unipc-corrector-off-on-skips needs --host diffusers, got {host!r}")
    if after_skips is not None and config.get("reintegrate") is not False:
        raise ValueError(
            "--after-skips refines the scheduler's history on top of the run: pass --config '{\"reintegrate\": false}' "
            "so the library's re-integration (Numerics.reintegrate) does not stack with it"
        )
    cell = RUNNERS[host](model_name, sampler, overrides, first_seed, seeds)
    if unipc_corrector_off_on_skips:
        from benchmarks.unipc_corrector import switch_corrector_off_on_skips

        switch_corrector_off_on_skips(cell)
    if after_skips is not None:
        from benchmarks.history_refinement import refine_history_after_skips

        refined = refine_history_after_skips(cell, after_skips)
    per_step = cell.per_step
    rows = []
    for steps in steps_list:
        full, _ = cell.plain_at(steps)
        for tolerance in tolerances:
            fields = dict(config, **({} if tolerance is None else {"tolerance": tolerance}))
            value, nfe = cell.sample(steps, SADAConfig(**fields))
            peer = cell.neighbours_at(nfe)
            row = dict(
                steps=steps,
                tolerance=tolerance,
                nfe=nfe,
                ratio=steps * per_step / nfe,
                psnr=value,
                full=full,
                plain=peer,
                delta=value - peer,
            )
            rows.append(row)
            print(
                f"{steps:4d} steps  tolerance {'default' if tolerance is None else f'{tolerance:g}':>8}  "
                f"NFE {nfe:6.2f} ({row['ratio']:.2f}x)  PSNR {value:6.2f} (full {full:6.2f})  "
                f"plain at equal NFE {peer:6.2f}  delta {value - peer:+6.2f}",
                flush=True,
            )
    if after_skips is not None:
        print(f"skipped steps re-estimated after the fact ({after_skips}): {refined['refined']}", flush=True)
    cell.close()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dial_sweep", description=__doc__.split("\n\n")[0])
    add_cell_arguments(parser)
    parser.add_argument("--steps", nargs="+", type=int, default=[50])
    parser.add_argument("--tolerances", nargs="*", type=float, default=None, help="none: the default only")
    parser.add_argument("--config", default="{}", help="other SADAConfig fields as JSON")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument(
        "--unipc-corrector-off-on-skips",
        action="store_true",
        help="an experiment (not adopted): UniPC's corrector off on every step SADA skipped",
    )
    parser.add_argument(
        "--after-skips",
        choices=("history", "corrector"),
        default=None,
        help="an experiment (not adopted; UniPC / DPM-Solver++, with --config '{\"reintegrate\": false}'): once the "
        "network runs again, the skipped steps still in the scheduler's history re-estimated by interpolation -- "
        "for the predictor and the corrector, or for UniPC's corrector only",
    )
    args = parser.parse_args(argv)
    overrides = overrides_of(args)
    tolerances = [None] if not args.tolerances else args.tolerances
    sweep(
        args.model,
        args.sampler,
        overrides,
        args.steps,
        tolerances,
        json.loads(args.config),
        args.first_seed,
        args.seeds,
        host=args.host,
        unipc_corrector_off_on_skips=args.unipc_corrector_off_on_skips,
        after_skips=args.after_skips,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
