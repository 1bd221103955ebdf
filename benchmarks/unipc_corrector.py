"""An experiment the dial did not adopt: UniPC's corrector switched off on the steps whose model output SADA
synthesised (``python -m benchmarks.dial_sweep unet unipc ... --unipc-corrector-off-on-skips``; results in
docs/benchmarks.md, "Tried and not adopted").

UniPC (diffusers' ``UniPCMultistepScheduler``) corrects the sample of step ``i`` with the model output at it before
predicting the next one; on a skipped step that output is SADA's extrapolation. diffusers' documented
``disable_corrector`` setting switches the corrector off at chosen steps; here it is set, per call, for the steps on
which no network row ran (every sample of the batch skipped), counted by the cell runner's row counter.
"""

from __future__ import annotations

__all__ = ["switch_corrector_off_on_skips"]


def switch_corrector_off_on_skips(runner) -> dict:
    """Replace ``runner.pipe.scheduler`` (a UniPC scheduler) by a subclass that switches its corrector off on every
    step no network row ran for. Returns the experiment's state; ``state["off"]`` counts the steps switched off."""
    from diffusers import UniPCMultistepScheduler

    scheduler = runner.pipe.scheduler
    if not isinstance(scheduler, UniPCMultistepScheduler):
        raise ValueError(f"the corrector experiment needs a UniPC scheduler, got {type(scheduler).__name__}")
    state = {"rows": None, "off": 0}

    class CorrectorOffOnSkips(type(scheduler)):
        def step(self, model_output, timestep, sample, *args, **kwargs):
            if self.step_index is None:  # a new run
                state["rows"] = None
            rows = runner.counter.rows
            skipped = state["rows"] is not None and rows == state["rows"]
            state["rows"] = rows
            # diffusers skips the corrector at step i when i - 1 is listed
            self.disable_corrector = [self.step_index - 1] if skipped else []
            state["off"] += skipped
            return super().step(model_output, timestep, sample, *args, **kwargs)

    runner.pipe.scheduler = CorrectorOffOnSkips.from_config(scheduler.config)
    return state
