"""Experiments of the synthetic lab: SADA vs. the plain sampler on closed-form mixture ODEs.

Used by ``sada demo`` (a seconds-long look; the README's main job is ``make bench``), by the tests and to
regenerate ``docs/results/lab-results.md`` (``python -m benchmarks.lab.experiments > docs/results/lab-results.md``,
``make lab-docs``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from benchmarks.lab.distributions import GaussianMixture, random_mixture
from benchmarks.lab.ode import ExactModel, reference_flow_end, reference_trajectory
from benchmarks.lab.samplers import sample_dpmpp_2m, sample_euler, sample_flow_euler
from sada.config import SADAConfig, StepSchedule, preset, step_error_tolerance
from sada.engine.numpy_engine import NumpyEngine
from sada.reference import paper_step_estimate, paper_vp_drift
from sada.reference.estimators import corrected_step_estimate
from sada.reference.lagrange import lagrange_basis_weights
from sada.trajectory import (
    DiscreteVPSchedule,
    EDMSchedule,
    RectifiedFlowSchedule,
    StepGrid,
    to_eps,
    to_x0,
)

__all__ = ["Problem", "make_problem", "run_sampler", "compare_methods", "exact_solution", "estimator_errors", "main"]

SOLVERS = {"euler": sample_euler, "dpmpp_2m": sample_dpmpp_2m, "flow_euler": sample_flow_euler}


@dataclass
class Problem:
    """A mixture ODE, a schedule's step grid, a solver, a prediction kind and a batch of start noises."""

    distribution: GaussianMixture
    grid: StepGrid
    solver: str
    kind: str
    x_start: np.ndarray  # schedule sample at step 0
    label: str


def make_problem(
    schedule: str = "vp",
    solver: str = "dpmpp_2m",
    num_steps: int = 50,
    batch: int = 8,
    dim: int = 64,
    components: int = 6,
    seed: int = 0,
) -> Problem:
    """``schedule`` in ``vp`` (SD's scaled-linear betas, trailing spacing), ``ve`` (Karras sigmas), ``flow``."""
    dist = random_mixture(dim, components, seed=seed + 1)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((batch, dim))
    if schedule == "vp":
        sched = DiscreteVPSchedule.from_beta_schedule("scaled_linear")
        grid = StepGrid.from_times(sched, sched.timesteps(num_steps, "trailing"))
        kind = "epsilon"
    elif schedule == "ve":
        sched = EDMSchedule(0.002, 80.0)
        grid = StepGrid.from_edm_sigmas(sched, np.append(sched.karras(num_steps), 0.0))
        kind = "epsilon"
    elif schedule == "flow":
        sched = RectifiedFlowSchedule()
        grid = StepGrid.from_times(sched, sched.timesteps(num_steps, shift=3.0))
        kind, solver = "flow_velocity", "flow_euler"
    else:
        raise ValueError(f"schedule must be 'vp', 've' or 'flow', got {schedule!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    x_start = noise * (grid.sigma[0] if grid.family != "ve" else grid.edm_sigma[0])
    return Problem(dist, grid, solver, kind, x_start, f"{schedule}/{solver}/{num_steps} steps")


def run_sampler(problem: Problem, config: SADAConfig | None = None, replay=None, engine_factory=None):
    """Sample the batch; returns ``(x0 [batch, d], network evaluations per sample, engine or None)``.

    ``engine_factory(config, grid, kind, batch, replay)`` builds the engine (default: the float64
    :class:`~sada.engine.numpy_engine.NumpyEngine`); it must follow the engine contract on numpy arrays.
    """
    grid, kind = problem.grid, problem.kind
    model = ExactModel(problem.distribution, kind)
    batch = problem.x_start.shape[0]
    factory = engine_factory or NumpyEngine
    engine = None if config is None else factory(config, grid, kind, batch, replay=replay)

    def output(i, x):
        def network(x_rows, _rows=None):
            return model(x_rows, grid.alpha[i], grid.sigma[i])

        return network(x) if engine is None else engine.step(i, x, network)

    if problem.solver == "flow_euler":
        x_end = sample_flow_euler(output, problem.x_start.copy(), grid.times)  # ends at clean_time() = 0.0
    else:

        def denoise(i, x_tilde):
            x = grid.alpha[i] * x_tilde
            return to_x0(kind, output(i, x), x, grid.alpha[i], grid.sigma[i])

        x_end = SOLVERS[problem.solver](denoise, problem.x_start / grid.alpha[0], np.append(grid.edm_sigma[:-1], 0.0))
    if engine is not None:
        engine.finish(x_end)
    return x_end, model.rows / batch, engine


def _rms(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def _base(num_steps: int, **changes) -> SADAConfig:
    """The authors' step schedule for ``num_steps`` (50/25/15), decided per sample, with ``changes``."""
    return preset("sd2", num_steps).replace(reduce="sample", name="lab", **changes)


# name -> config for a step count. "SADA default" is the library's own default (SADAConfig(): schedule-free, what
# the adapters run when given no config); "paper" is the official code; the rest are the corrected mode and its
# ablations. For flow grids the paper rows use the flux preset's schedule.
METHODS = {
    "SADA default (SADAConfig())": lambda n: SADAConfig(),
    "SADA paper": lambda n: _base(n, mode="paper"),
    "SADA corrected": lambda n: _base(n, mode="corrected"),
    "corrected + error control": lambda n: _base(n, mode="corrected", step_error_rms=step_error_tolerance(n)),
    "corrected, reuse noise": lambda n: _base(n, mode="corrected", am_noise="reuse"),
    "corrected, step-index nodes": lambda n: _base(n, mode="corrected", abscissa="index"),
    "corrected estimate + corrected criterion": lambda n: _base(n, mode="corrected", criterion="corrected"),
    "SADA paper, no multistep": lambda n: _base(n, mode="paper", lagrange_term=0),
    "SADA corrected, no multistep": lambda n: _base(n, mode="corrected", lagrange_term=0),
    "corrected estimate + corrected criterion, no multistep": lambda n: _base(
        n, mode="corrected", criterion="corrected", lagrange_term=0
    ),
}
PEERS = ("SADA default (SADAConfig())", "SADA paper", "SADA corrected", "corrected + error control")


def compare_methods(problem: Problem, methods=None, progress=None) -> list[dict]:
    """Rows of ``method, NFE, speedup, RMS/max error vs the plain sampler, AM/Lagrange skips``.

    The fewer-steps baseline at SADA's evaluation count is added for the default method: the honest
    peer. Errors are on the final samples, against the same solver without SADA from the same noise.
    """
    baseline, nfe0, _ = run_sampler(problem)
    exact = exact_solution(problem)
    rows = [
        {
            "method": "baseline (no SADA)",
            "nfe": nfe0,
            "speedup": 1.0,
            "rms": 0.0,
            "max": 0.0,
            "am": 0,
            "lagrange": 0,
            "rms_exact": _rms(baseline, exact),
        }
    ]
    methods = METHODS if methods is None else methods
    for name, make in methods.items():
        config = make(problem.grid.num_steps)
        uses_paper = "paper" in (config.numerics.mode, config.numerics.criterion)
        if uses_paper and problem.grid.training_beta is None and problem.grid.family != "flow":
            continue  # the paper's numerics are defined for discrete VP and rectified-flow grids only
        if uses_paper and problem.grid.family == "flow" and isinstance(config.schedule, StepSchedule):
            flux = preset("flux", problem.grid.num_steps).schedule
            config = config.replace(
                lagrange_step=flux.lagrange_step,
                lagrange_term=flux.lagrange_term if config.schedule.lagrange_term else 0,
            )
        x_end, nfe, engine = run_sampler(problem, config)
        counts = engine.trace.counts()
        batch = problem.x_start.shape[0]
        rows.append(
            {
                "method": name,
                "nfe": nfe,
                "speedup": nfe0 / nfe,
                "rms": _rms(x_end, baseline),
                "max": float(np.max(np.abs(x_end - baseline))),
                "am": counts["am"] / batch,
                "lagrange": counts["lagrange"] / batch,
                "rms_exact": _rms(x_end, exact),
            }
        )
        if progress:
            progress(name)
    for peer in [r for r in rows if r["method"] in PEERS]:
        steps = int(round(peer["nfe"]))
        x_few, nfe_few, _ = run_sampler(make_problem_like(problem, steps))
        rows.append(
            {
                "method": f"fewer steps ({steps}) = {peer['method']}'s NFE",
                "nfe": nfe_few,
                "speedup": nfe0 / nfe_few,
                "rms": _rms(x_few, baseline),
                "max": float(np.max(np.abs(x_few - baseline))),
                "am": 0,
                "lagrange": 0,
                "rms_exact": _rms(x_few, exact),
            }
        )
    return rows


def exact_solution(problem: Problem) -> np.ndarray:
    """The clean end of the problem's probability-flow ODE from its start noise (scipy DOP853, rtol 1e-11): in EDM
    variables on VP/VE grids, in rectified-flow time on flow grids (which start at pure noise, ``sigma~ = inf``)."""
    grid = problem.grid
    if grid.family == "flow":
        return reference_flow_end(problem.distribution, problem.x_start, float(grid.times[0]))
    return reference_trajectory(
        problem.distribution, problem.x_start / grid.alpha[0], np.append(grid.edm_sigma[:-1], 0.0)
    )[-1]


def make_problem_like(problem: Problem, num_steps: int) -> Problem:
    """The same distribution, noise, solver and schedule family with another step count."""
    schedule = {"vp": "vp", "ve": "ve", "flow": "flow"}[problem.grid.family]
    batch, dim = problem.x_start.shape
    new = make_problem(schedule, problem.solver, num_steps, batch=batch, dim=dim)
    scale_old = problem.grid.sigma[0] if problem.grid.family != "ve" else problem.grid.edm_sigma[0]
    scale_new = new.grid.sigma[0] if new.grid.family != "ve" else new.grid.edm_sigma[0]
    new.distribution = problem.distribution
    new.x_start = problem.x_start / scale_old * scale_new
    return new


def estimator_errors(problem: Problem, steps=range(10, 47)) -> dict[str, np.ndarray]:
    """Per-step error of each AM estimate of ``x0_{n+1}`` against the true model's ``x0_{n+1}``.

    Runs the plain sampler, then at every step ``n`` forms the paper and the corrected estimates from
    the exact history and compares them with the network's clean-sample prediction at ``x_{n+1}``.
    The paper's reconstruction study (its Figure 3), on a trajectory with a known denoiser.
    """
    grid, kind = problem.grid, problem.kind
    if grid.training_beta is None:
        raise ValueError("estimator_errors compares with the paper estimate, which needs a discrete VP grid")
    model = ExactModel(problem.distribution, kind)
    xs, outs = [], []

    def denoise(i, x_tilde):
        x = grid.alpha[i] * x_tilde
        out = model(x, grid.alpha[i], grid.sigma[i])
        xs.append(x)
        outs.append(out)
        return to_x0(kind, out, x, grid.alpha[i], grid.sigma[i])

    SOLVERS[problem.solver](denoise, problem.x_start / grid.alpha[0], np.append(grid.edm_sigma[:-1], 0.0))
    n_steps = grid.num_steps
    a, s, e, beta = grid.alpha, grid.sigma, grid.edm_sigma, grid.training_beta
    eps = [to_eps(kind, outs[i], xs[i], a[i], s[i]) for i in range(n_steps)]
    drift = [paper_vp_drift(xs[i], eps[i], beta[i], s[i], n_steps) for i in range(n_steps)]
    out = {"step": [], "paper": [], "corrected_reuse": [], "corrected_extrapolate": [], "reuse_x0": []}
    for n in steps:
        truth = to_x0(kind, outs[n + 1], xs[n + 1], a[n + 1], s[n + 1])
        x_hat = paper_step_estimate(xs[n], [drift[n], drift[n - 1], drift[n - 2]], n_steps)
        paper = to_x0(kind, outs[n], x_hat, a[n + 1], s[n + 1])
        nodes = e[n - 2 : n + 1][::-1]
        hist = [eps[n], eps[n - 1], eps[n - 2]]
        xt_hat = corrected_step_estimate(xs[n] / a[n], hist, nodes, e[n + 1])
        reuse = xt_hat - e[n + 1] * eps[n]
        eps_next = np.tensordot(lagrange_basis_weights(nodes, e[n + 1]), np.stack(hist), axes=1)
        extrap = xs[n + 1] / a[n + 1] - e[n + 1] * eps_next
        out["step"].append(n + 1)
        for key, est in (
            ("paper", paper),
            ("corrected_reuse", reuse),
            ("corrected_extrapolate", extrap),
            ("reuse_x0", to_x0(kind, outs[n], xs[n], a[n], s[n])),
        ):
            out[key].append(_rms(est, truth))
    return {k: np.asarray(v) for k, v in out.items()}


def format_table(rows: list[dict]) -> str:
    head = "| method | NFE | speedup | RMS vs plain sampler | max vs plain sampler | RMS vs exact ODE | AM skips | Lagrange skips |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['nfe']:.1f} | {r['speedup']:.2f}x | {r['rms']:.2e} | {r['max']:.2e} | "
            f"{r['rms_exact']:.2e} | {r['am']:.2f} | {r['lagrange']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    """Print the lab's result tables as Markdown (the source of ``docs/results/lab-results.md``)."""
    out = sys.stdout
    out.write("<!-- generated by: python -m benchmarks.lab.experiments > docs/results/lab-results.md -->\n")
    out.write("# Synthetic-lab results\n\n")
    out.write(
        "Mixture of 6 Gaussians in 64 dimensions (closed-form denoiser), batch of 8 start noises, "
        "per-sample decisions. Errors compare final samples with the same solver without SADA "
        "from the same noise; data scale ~1.\n\n"
    )
    out.write(
        "## Accuracy of the step estimate of the next clean sample (the paper's Figure 3 study)\n\n"
        "RMS error of each estimate of x0 at step n+1, against the exact model's x0 at the solver's "
        "x_{n+1}, over steps 11..47 of the plain sampler's trajectory (VP, 50 steps).\n\n"
        "| solver | paper (Thm 3.5 as implemented) | corrected, reused noise | corrected, extrapolated noise "
        "(default) | plain reuse of x0_n |\n|---|---|---|---|---|\n"
    )
    for solver in ("euler", "dpmpp_2m"):
        errs = estimator_errors(make_problem("vp", solver, 50))
        cells = " | ".join(
            f"mean {np.mean(errs[k]):.2e}, median {np.median(errs[k]):.2e}"
            for k in ("paper", "corrected_reuse", "corrected_extrapolate", "reuse_x0")
        )
        out.write(f"| {solver} | {cells} |\n")
    out.write("\n")
    for schedule, solver in (
        ("vp", "dpmpp_2m"),
        ("vp", "euler"),
        ("ve", "dpmpp_2m"),
        ("ve", "euler"),
        ("flow", "flow_euler"),
    ):
        for steps in (50, 25):
            problem = make_problem(schedule, solver, steps)
            out.write(f"## {problem.label}\n\n{format_table(compare_methods(problem))}\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
