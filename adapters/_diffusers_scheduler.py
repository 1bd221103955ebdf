"""What SADA needs to know about a diffusers scheduler, found from what it can do rather than its class name.

:func:`describe_scheduler` probes a copy of the scheduler (``set_timesteps`` on a deepcopy) and returns a
:class:`SchedulerInfo`, or raises ``ValueError`` naming the setting SADA cannot follow:

* its noise levels: a discrete VP table (``alphas_cumprod``, optionally with EDM ``sigmas``), or flow-matching
  sigmas (``FlowMatch*`` schedulers, DPM-Solver / UniPC with ``use_flow_sigmas``);
* how its ``sample`` is scaled: ``schedule`` (``alpha x0 + sigma eps``; DPM-Solver, DDIM, UniPC, DEIS, flow) or
  ``edm`` (``x / alpha``; Euler, Heun, LMS -- ``init_noise_sigma > 1``);
* its call pattern: one model evaluation per timestep, or Heun's two (the corrector at the next noise level);
* whether it injects noise (SDE / ancestral variants, ``stochastic_sampling``, a configured ``eta > 0``; per call
  ``eta > 0`` or ``s_churn > 0``): then SADA computes every step exactly and warns once.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass

import numpy as np

from sada.trajectory import DiscreteVPSchedule, RectifiedFlowSchedule, StepGrid
from sada.trajectory import early_end_note as trajectory_early_end_note

__all__ = ["SchedulerInfo", "describe_scheduler", "early_end_note", "step_noise_reason"]

# schedulers whose update adds fresh noise at every step (matched on the class and its bases)
NOISE_INJECTING = {
    "DDPMScheduler",
    "DDPMParallelScheduler",
    "DDPMWuerstchenScheduler",
    "EulerAncestralDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DPMSolverSDEScheduler",
    "LCMScheduler",
    "TCDScheduler",
    "CosineDPMSolverMultistepScheduler",
    "FlowMatchLCMScheduler",
    "SASolverScheduler",
    "ScoreSdeVeScheduler",
    "CMStochasticIterativeScheduler",
    "UnCLIPScheduler",
    "RePaintScheduler",
    "KarrasVeScheduler",
}
PREDICTIONS = {
    "epsilon": "epsilon",
    "v_prediction": "v_prediction",
    "sample": "sample",
    "flow_prediction": "flow_velocity",
}


@dataclass(frozen=True)
class SchedulerInfo:
    """A scheduler's capabilities as SADA uses them."""

    name: str
    family: str  # "vp" or "flow"
    scaling: str  # "schedule" or "edm"
    kind: str  # the model's prediction kind in sada's terms
    two_stage: bool
    noise: str | None  # why every step must be computed exactly (noise injection), or None
    order: int = 2  # the solver's order (schedule-free SADA compares its estimates with the solver's local error)

    def grid_for_run(self, scheduler, pos: int) -> tuple[StepGrid, list]:
        """The noise levels of the run the scheduler starts at call ``pos`` of its timesteps, and the timestep of
        every call from there (two per step for Heun-type schedulers)."""
        calls = [float(t) for t in scheduler.timesteps[pos:]]
        first_stage = calls[::2] if self.two_stage else calls
        sigmas = getattr(scheduler, "sigmas", None)
        sig = None if sigmas is None else np.asarray(sigmas.double().cpu().numpy())[pos:]
        if sig is not None and self.two_stage:  # [s_k, s_{k+1} (corrector), s_{k+1}, ..., end]: first stages + end
            sig = np.append(sig[0::2], sig[-1])
        if self.family == "flow":
            times, end = sig[:-1], float(sig[-1])
            grid = StepGrid.from_times(
                RectifiedFlowSchedule(), times, final_edm_sigma=end / (1.0 - end) if end > 0 else 0.0
            )
            return grid, calls
        vp = DiscreteVPSchedule(scheduler.alphas_cumprod.double().cpu().numpy())
        grid = StepGrid.from_edm_sigmas(vp, sig) if sig is not None else StepGrid.from_times(vp, first_stage)
        # the training beta at the scheduler's own timestep of every step, from its own table (never recovered
        # from float32 sigmas), as the official criterion reads it
        betas = scheduler.betas.double().cpu().numpy()
        return grid.with_training_beta(betas[np.asarray(first_stage[: grid.num_steps]).astype(np.int64)]), calls


def early_end_note(scheduler, grid: StepGrid) -> str | None:
    """:func:`sada.trajectory.early_end_note` for a diffusers scheduler with a discrete noise table (``None`` for
    flow matching). diffusers builds Karras sigmas for Euler / Heun between the ends of the configured
    ``timestep_spacing``: with ``"trailing"`` the last one before the clean sample is 0.134 at 50 steps on a
    Stable-Diffusion table (timestep 19) where the table reaches 0.0292; DPM-Solver++ / UniPC on the trailing spacing
    without Karras sigmas end there too."""
    table = getattr(scheduler, "alphas_cumprod", None)
    if table is None or bool(_config(scheduler, "use_flow_sigmas")):
        return None
    alphas = np.asarray(table.double().cpu().numpy())
    karras, spacing = bool(_config(scheduler, "use_karras_sigmas")), _config(scheduler, "timestep_spacing")
    fix = (
        f"with use_karras_sigmas=True set timestep_spacing='linspace' (now {spacing!r}): the grid then ends at the "
        "table's smallest level"
        if karras and spacing != "linspace"
        else "use a grid that ends nearer the table's smallest level (e.g. use_karras_sigmas=True, with "
        "timestep_spacing='linspace' on Euler / Heun)"
    )
    return trajectory_early_end_note(grid, float(DiscreteVPSchedule(alphas).edm_sigma(0.0)), fix)


def _class_names(scheduler) -> set[str]:
    return {cls.__name__ for cls in type(scheduler).__mro__}


def _config(scheduler, key, default=None):
    return scheduler.config.get(key, default) if hasattr(scheduler, "config") else default


def _probe(scheduler, name: str):
    """A copy of the scheduler with a short schedule set, to read its call pattern."""
    probe = copy.deepcopy(scheduler)
    takes_mu = "mu" in inspect.signature(scheduler.set_timesteps).parameters
    kwargs = {"mu": 1.0} if takes_mu and _config(scheduler, "use_dynamic_shifting") else {}
    try:
        probe.set_timesteps(12, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure means we cannot plan on it
        raise ValueError(
            f"sada: scheduler {name} could not be probed (set_timesteps(12) raised {type(exc).__name__}: {exc})"
        ) from exc
    return probe


def describe_scheduler(scheduler) -> SchedulerInfo:
    """The :class:`SchedulerInfo` of ``scheduler``; ``ValueError`` naming what SADA cannot follow."""
    name = type(scheduler).__name__
    for attr in ("timesteps", "set_timesteps", "step"):
        if not hasattr(scheduler, attr):
            raise ValueError(f"sada: {name} has no {attr!r}: not a diffusers scheduler")
    params = [p for p in inspect.signature(scheduler.step).parameters if p != "self"]
    if params[:3] != ["model_output", "timestep", "sample"]:
        raise ValueError(
            f"sada: {name}.step takes ({', '.join(params[:5])}, ...); SADA supports schedulers whose "
            "step(model_output, timestep, sample, ...) makes one solver update"
        )
    noise = _noise_injection(scheduler, name)
    if noise is not None:  # every step is computed exactly: nothing else about it matters
        return SchedulerInfo(name, "vp", "schedule", "epsilon", hasattr(scheduler, "state_in_first_order"), noise)
    if _config(scheduler, "sigma_data") is not None:
        raise ValueError(
            f"sada: {name} uses EDM preconditioning (sigma_data={_config(scheduler, 'sigma_data')}); "
            "its model output is not one of epsilon / v / sample / flow velocity, which SADA needs"
        )
    for setting in ("clip_sample", "thresholding"):
        if _config(scheduler, setting):
            raise ValueError(
                f"sada: {name} has {setting}=True: the solver clips the predicted clean sample at every "
                f"step, a nonlinearity SADA's estimates do not model (up to 65% error measured); set "
                f"{setting}=False (the Stable Diffusion configurations use False)"
            )
    prediction = _config(scheduler, "prediction_type", "epsilon")
    flow = bool(_config(scheduler, "use_flow_sigmas")) or not hasattr(scheduler, "alphas_cumprod")
    if flow and not hasattr(scheduler, "sigmas"):
        raise ValueError(f"sada: {name} has neither a discrete noise table (alphas_cumprod) nor flow-matching sigmas")
    if flow and not hasattr(scheduler, "alphas_cumprod"):
        prediction = "flow_prediction"  # FlowMatch schedulers: the model predicts the velocity
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"sada: prediction_type={prediction!r} of {name} is not supported; supported: {sorted(PREDICTIONS)}"
        )
    probe = _probe(scheduler, name)
    timesteps = np.asarray(probe.timesteps.double().cpu().numpy())
    two_stage = hasattr(probe, "state_in_first_order")
    if two_stage:
        sig = probe.sigmas.double().cpu().numpy()
        interpolated = getattr(probe, "sigmas_interpol", None) is not None  # KDPM2: the midpoint is elsewhere
        if interpolated or sig.size < 4 or not np.array_equal(sig[1:-1:2], sig[2:-1:2]):
            raise ValueError(
                f"sada: {name} evaluates the model twice per step at interpolated noise levels; SADA "
                "supports one evaluation per step or Heun's pair (the corrector at the next level)"
            )
    elif np.any(np.diff(timesteps) >= 0):
        raise ValueError(
            f"sada: {name} visits repeated or increasing timesteps ({timesteps[:6].tolist()} ...), e.g. "
            "Runge-Kutta warm-up steps; SADA needs one evaluation per timestep along the schedule"
        )
    scaling = "schedule"
    if not flow and float(probe.init_noise_sigma) > 1.0 + 1e-3:
        scaling = "edm"
    return SchedulerInfo(
        name,
        "flow" if flow else "vp",
        scaling,
        PREDICTIONS[prediction],
        two_stage,
        None,
        _solver_order(scheduler, two_stage),
    )


def _solver_order(scheduler, two_stage: bool) -> int:
    """The order of the scheduler's update: its ``solver_order`` setting (DPM-Solver, UniPC, DEIS), the default
    ``order`` of its ``step`` (LMS), 2 for Heun's pair, else 1 (Euler, DDIM, flow Euler)."""
    configured = _config(scheduler, "solver_order")
    if isinstance(configured, int) and not isinstance(configured, bool) and 1 <= configured <= 4:
        return configured
    order = inspect.signature(scheduler.step).parameters.get("order")
    if order is not None and isinstance(order.default, int) and 1 <= order.default <= 4:
        return order.default
    return 2 if two_stage else 1


def _noise_injection(scheduler, name: str) -> str | None:
    """Why the scheduler's update adds fresh noise (config-level), or None."""
    if _class_names(scheduler) & NOISE_INJECTING:
        return f"{name} adds fresh noise at every step"
    if str(_config(scheduler, "algorithm_type", "")).startswith("sde-"):
        return f"{name} with algorithm_type={_config(scheduler, 'algorithm_type')!r} adds noise at every step"
    if _config(scheduler, "stochastic_sampling"):
        return f"{name} with stochastic_sampling=True adds noise at every step"
    eta, s_noise = _config(scheduler, "eta"), _config(scheduler, "s_noise", 1.0)
    if isinstance(eta, (int, float)) and eta > 0 and not (isinstance(s_noise, (int, float)) and s_noise <= 0):
        return f"{name} with eta={float(eta):g} adds noise at every step"
    return None


def step_noise_reason(scheduler, kwargs: dict) -> str | None:
    """Noise requested by the arguments of one ``step`` call (DDIM's ``eta``, Euler's ``s_churn``), or None."""
    eta = kwargs.get("eta")
    if eta is not None and float(eta) > 0:
        return f"{type(scheduler).__name__}.step(eta={float(eta):g}) adds noise at every step"
    churn = kwargs.get("s_churn")
    if churn is not None and float(churn) > 0 and math.isfinite(float(churn)):
        return f"{type(scheduler).__name__}.step(s_churn={float(churn):g}) adds noise"
    return None
