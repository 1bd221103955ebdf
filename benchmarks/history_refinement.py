"""An experiment, promising and not yet in the library: once the network runs again after skipped steps, use the new
computed clean prediction to re-estimate the skipped ones by interpolation (``python -m benchmarks.dial_sweep unet
unipc ... --after-skips replay``; results in docs/benchmarks.md, "Re-integrating the skipped stretch").

SADA's estimate of a skipped step's output extrapolates a quadratic in the noise level ``sigma`` through the last
three computed clean predictions. When the next step is computed, the quadratic through the last two computed before
the skips and the new one *interpolates* the skipped levels, with a far smaller error. Three ways to use it on a
diffusers multistep scheduler (UniPC, DPM-Solver++), which keeps the recent clean predictions in ``model_outputs``:

* ``history``: replace the skipped steps' entries still in that history (UniPC's corrector at the new step re-does
  the last step with them; the next predictor's differences read them);
* ``corrector``: the same for UniPC's corrector only, the predictor keeping the extrapolations;
* ``replay``: re-integrate the whole stretch from the last computed step -- its sample and scheduler state restored,
  the scheduler stepped again with the interpolated clean predictions (arithmetic only, no network) -- and take the
  new step from the re-integrated sample, with the clean prediction the network gave at the old one.

On diffusers' flow-matching Euler only ``replay`` applies (with velocities); it measured worse there at loose
tolerances, where the runs of skips are long. The scheduler is replaced by a subclass of its own class, as in :mod:`benchmarks.unipc_corrector`; a step counts as
computed when the runner's row counter moved (the dial's decisions are the same for every sample on these cells).
"""

from __future__ import annotations

__all__ = ["MODES", "refine_history_after_skips"]

MODES = ("history", "corrector", "replay")
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


def _copy_state(attributes: dict) -> dict:
    """A scheduler's attributes with its lists (the history) copied, so stepping on does not change the copy."""
    return {k: (list(v) if isinstance(v, list) else v) for k, v in attributes.items()}


def refine_history_after_skips(runner, mode: str = "replay") -> dict:
    """Replace ``runner.pipe.scheduler`` (UniPC or DPM-Solver++ multistep) by a subclass that, on a step the network
    ran for after skipped ones, uses the interpolated clean predictions as ``mode`` says (:data:`MODES`). Returns the
    experiment's state; ``state["refined"]`` counts the skipped steps re-estimated."""
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    scheduler = runner.pipe.scheduler
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        if mode != "replay":
            raise ValueError(f"flow Euler keeps no history: only mode 'replay' applies, got {mode!r}")
        return _replay_flow_euler(runner)
    if not isinstance(scheduler, (UniPCMultistepScheduler, DPMSolverMultistepScheduler)):
        raise ValueError(
            f"the experiment needs a UniPC, DPM-Solver++ or flow Euler scheduler, got {type(scheduler).__name__}"
        )
    state: dict = {"refined": 0}

    def reset():
        state.update(rows=None, real=[], skipped={}, snap=None, force_x0=None, timesteps={}, originals={}, at=None)

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
            if refine and mode == "replay":
                sample = self._replay(i, points)
            elif refine:
                self._refine_history(i, points)
            if computed:
                state["skipped"] = {}
                state["snap"] = (i, sample, _copy_state(self.__dict__))
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

        def _replay(self, i, points):
            """Re-integrate from the last computed step to step ``i``; returns the new sample at ``i``."""
            c, x, saved = state["snap"]
            self.__dict__.update(_copy_state(saved))
            for j in range(c, i):  # the computed step c with its own clean prediction, then the skipped ones
                state["force_x0"] = state["real"][-1][1] if j == c else _quadratic_at(points, state["skipped"][j])
                x = super().step(state["force_x0"], state["timesteps"][j], x, return_dict=False)[0]
                state["refined"] += j != c
            state["force_x0"] = None
            return x

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


def _replay_flow_euler(runner) -> dict:
    """``replay`` on diffusers' flow-matching Euler (``x = (1 - s) x0 + s noise``, velocity ``v = (x - x0) / s``): the
    skipped stretch stepped again with the velocities of the interpolated clean predictions at the re-integrated
    samples."""
    scheduler = runner.pipe.scheduler
    state: dict = {"refined": 0}

    def reset():
        state.update(rows=None, real=[], skipped={}, snap=None, timesteps={})

    reset()

    class Replayed(type(scheduler)):
        def step(self, model_output, timestep, sample, *args, **kwargs):
            i, sigma, computed = _enter_step(self, runner, state, reset, timestep)
            x0 = sample - sigma * model_output  # at the sample the network saw
            if computed and state["skipped"] and len(state["real"]) >= POINTS - 1:
                points = state["real"][-(POINTS - 1) :] + [(sigma, x0)]
                c, x = state["snap"]
                self._step_index = c
                for j in range(c, i):
                    x0_j = state["real"][-1][1] if j == c else _quadratic_at(points, state["skipped"][j])
                    velocity = (x - x0_j) / float(self.sigmas[j])
                    x = super().step(velocity, state["timesteps"][j], x, return_dict=False)[0]
                    state["refined"] += j != c
                sample = x
                model_output = (sample - x0) / sigma  # the clean prediction held at the re-integrated sample
            if computed:
                state["skipped"], state["snap"] = {}, (i, sample)
            else:
                state["skipped"][i] = sigma
            out = super().step(model_output, timestep, sample, *args, **kwargs)
            if computed:
                state["real"] = (state["real"] + [(sigma, x0)])[-POINTS:]
            return out

    runner.pipe.scheduler = Replayed.from_config(scheduler.config)
    return state
