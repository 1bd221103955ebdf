"""An experiment, not adopted: once the network runs again after skipped steps, re-estimate the skipped steps' entries
that a diffusers multistep scheduler (UniPC, DPM-Solver++) still keeps in its history ``model_outputs``
(``python -m benchmarks.dial_sweep unet unipc ... --after-skips history``; results in docs/benchmarks.md,
"Re-integrating the skipped stretch").

SADA's estimate of a skipped step's output extrapolates a quadratic in the noise level ``sigma`` through the last
three computed clean predictions. When the next step is computed, the quadratic through the last two computed before
the skips and the new one *interpolates* the skipped levels, with a far smaller error. Two ways to use it here:

* ``history``: replace the skipped steps' entries still in that history (UniPC's corrector at the new step re-does
  the last step with them; the next predictor's differences read them);
* ``corrector``: the same for UniPC's corrector only, the predictor keeping the extrapolations.

Both lose to re-integrating the whole stretch, which the library does (``Numerics.reintegrate``,
:mod:`sada.torch_backend.reintegration`); run them with ``--config '{"reintegrate": false}'`` so the two do not
stack. The scheduler is replaced by a subclass of its own class, as in :mod:`benchmarks.unipc_corrector`; a step
counts as computed when the runner's row counter moved (the dial's decisions are the same for every sample on these
cells).
"""

from __future__ import annotations

__all__ = ["MODES", "refine_history_after_skips"]

MODES = ("history", "corrector")
POINTS = 3  # interpolation nodes, the new computed one included (4, a cubic, measured worse on UniPC at 50 steps)


def _quadratic_at(points, sigma):
    """The Lagrange polynomial through ``(sigma_k, x0_k)`` evaluated at ``sigma``."""
    out = 0
    for a, (s_a, x_a) in enumerate(points):
        weight = 1.0
        for b, (s_b, _) in enumerate(points):
            if a != b:
                weight *= (sigma - s_b) / (s_a - s_b)
        out = out + weight * x_a
    return out


def _enter_step(scheduler, runner, state, reset, timestep):
    """At the start of a scheduler step: a new run resets ``state``; returns the step's index, its ``sigma`` and
    whether the network ran for it (the runner's row counter moved since the last step)."""
    if scheduler.step_index is None:  # a new run
        reset()
        scheduler._init_step_index(timestep)
    rows = runner.counter.rows
    computed = state["rows"] is None or rows != state["rows"]
    state["rows"] = rows
    i = scheduler.step_index
    state["timesteps"][i] = timestep
    return i, float(scheduler.sigmas[i]), computed


def refine_history_after_skips(runner, mode: str = "history") -> dict:
    """Replace ``runner.pipe.scheduler`` (UniPC or DPM-Solver++ multistep) by a subclass that, on a step the network
    ran for after skipped ones, uses the interpolated clean predictions as ``mode`` says (:data:`MODES`). Returns the
    experiment's state; ``state["refined"]`` counts the skipped steps re-estimated."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    scheduler = runner.pipe.scheduler
    if not isinstance(scheduler, (UniPCMultistepScheduler, DPMSolverMultistepScheduler)):
        raise ValueError(
            f"the experiment needs a UniPC or DPM-Solver++ multistep scheduler, got {type(scheduler).__name__}"
        )
    state: dict = {"refined": 0}

    def reset():
        state.update(rows=None, real=[], skipped={}, force_x0=None, timesteps={}, originals={}, at=None)

    reset()

    class AfterSkips(type(scheduler)):
        def convert_model_output(self, *args, **kwargs):
            forced = state["force_x0"]
            return forced if forced is not None else super().convert_model_output(*args, **kwargs)

        def step(self, model_output, timestep, sample, *args, **kwargs):
            i, sigma, computed = _enter_step(self, runner, state, reset, timestep)
            refine = computed and state["skipped"] and len(state["real"]) >= POINTS - 1
            x0 = self.convert_model_output(model_output, sample=sample)  # at the sample the network saw
            points = state["real"][-(POINTS - 1) :] + [(sigma, x0)] if refine else None
            if refine:
                self._refine_history(i, points)
            if computed:
                state["skipped"] = {}
            else:
                state["skipped"][i] = sigma
            state["force_x0"], state["at"] = x0, i
            try:
                out = super().step(model_output, timestep, sample, *args, **kwargs)
            finally:
                state["force_x0"], state["originals"] = None, {}
            if computed:
                state["real"] = (state["real"] + [(sigma, x0)])[-POINTS:]
            return out

        def _refine_history(self, i, points):
            order = len(self.model_outputs)
            for k in range(order):  # entry k holds step i - order + k
                j = i - order + k
                if j in state["skipped"]:
                    state["originals"][j] = self.model_outputs[k]
                    self.model_outputs[k] = _quadratic_at(points, state["skipped"][j])
                    state["refined"] += 1

        def multistep_uni_p_bh_update(self, *args, **kwargs):
            if mode != "corrector" or not state["originals"]:
                return super().multistep_uni_p_bh_update(*args, **kwargs)
            saved = list(self.model_outputs)
            order = len(self.model_outputs)  # after the shift, entry k holds step at - order + 1 + k
            for k in range(order):
                j = state["at"] - order + 1 + k
                if j in state["originals"]:
                    self.model_outputs[k] = state["originals"][j]
            try:
                return super().multistep_uni_p_bh_update(*args, **kwargs)
            finally:
                self.model_outputs[:] = saved

    runner.pipe.scheduler = AfterSkips.from_config(scheduler.config)
    return state
