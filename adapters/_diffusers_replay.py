"""Re-integrating a skipped stretch on a diffusers scheduler (:mod:`sada.torch_backend.reintegration`).

At every step where some row computes, :class:`SchedulerReplay` keeps the scheduler's state (its attributes, the
history lists copied, the tensors shared: a diffusers scheduler rebinds its history entries, it does not write into
them) and the sample. When a row computes again after skipped steps, the state of its last computed step ``c`` is
restored and the unchanged ``step`` of the scheduler's class runs again from ``c`` to the new step with the
interpolated clean predictions (as model outputs synthesised at the re-integrated samples); the rows that
re-integrate then take the re-integrated sample and scheduler state, the others keep theirs, and the new step keeps
the network's noise estimate at the moved sample. Arithmetic only: the network does not run again.
"""

from __future__ import annotations

import numpy as np
import torch

from sada.torch_backend.reintegration import StretchNodes
from sada.trajectory import synthesise_output, to_x0

__all__ = ["SchedulerReplay"]


def _copy_state(attributes: dict) -> dict:
    """A scheduler's attributes with its lists copied, so stepping on does not change the copy."""
    return {k: (list(v) if isinstance(v, list) else v) for k, v in attributes.items()}


def _mix(current, replayed, rows: torch.Tensor | None, batch: int):
    """``replayed`` on ``rows`` (a bool mask, ``None``: all), ``current`` elsewhere, for a state attribute."""
    if rows is None or current is replayed:
        return replayed
    if isinstance(current, torch.Tensor) and isinstance(replayed, torch.Tensor):
        if current.shape == replayed.shape and current.ndim >= 1 and current.shape[0] == batch:
            return torch.where(rows.view((-1,) + (1,) * (current.ndim - 1)), replayed, current)
        return replayed
    if isinstance(current, list) and isinstance(replayed, list) and len(current) == len(replayed):
        return [_mix(a, b, rows, batch) for a, b in zip(current, replayed)]
    return replayed


class SchedulerReplay:
    """The solver states and clean predictions of one run on a diffusers scheduler (one evaluation per step)."""

    def __init__(self, session, hold: str = "noise"):
        if hold not in ("noise", "clean"):
            raise ValueError(f"hold must be 'noise' (the default) or 'clean', got {hold!r}")
        self.session, self.grid, self.kind = session, session.grid, session.engine.kind
        self.hold = hold  # what step n keeps of the network's output when its sample is re-integrated
        self.timesteps: dict = {}  # step -> the timestep the pipeline passed (stepped again with the same object)
        self.nodes = StretchNodes(session.grid)
        self.states: dict[int, tuple[dict, torch.Tensor]] = {}  # step -> (scheduler state, sample) before stepping

    def before_step(self, step: int, scheduler, original, timestep, sample, model_output, computed: np.ndarray):
        """The sample and model output that step ``step`` should take: re-integrated for the rows that computed
        after skipped steps, unchanged elsewhere. Keeps the state of a step where some row computes; the trace's
        ``extras["reintegrated_steps"]`` counts, per step, the skipped (row, step) pairs re-integrated there."""
        if step == 0:
            self.nodes.reset()
            self.states.clear()
            self.timesteps.clear()
        self.timesteps[step] = timestep
        computed = np.asarray(computed, bool)
        # a step no row computes leaves nothing to record; a batch the plan does not describe is left alone
        if computed.size != sample.shape[0] or not computed.any():
            return sample, model_output
        alpha, sigma = float(self.grid.alpha[step]), float(self.grid.sigma[step])
        x0 = to_x0(self.kind, model_output, self.session.canonical(sample, step), alpha, sigma)
        starts = self.nodes.push(step, x0, computed)  # a non-finite node gives a non-finite stretch: rejected below
        if starts:
            sample, model_output = self._reintegrate(step, scheduler, original, sample, model_output, x0, starts)
        self.states[step] = (_copy_state(scheduler.__dict__), sample.clone())
        oldest = self.nodes.oldest_start()
        for old in [s for s in self.states if s < oldest]:
            del self.states[old]
        return sample, model_output

    def _output(self, x0: torch.Tensor, x: torch.Tensor, step: int) -> torch.Tensor:
        """The model output from which the solver at sample ``x`` of ``step`` recovers ``x0``."""
        alpha, sigma = float(self.grid.alpha[step]), float(self.grid.sigma[step])
        return synthesise_output(self.kind, x0, self.session.canonical(x, step), alpha, sigma).to(x.dtype)

    def _reintegrate(self, step, scheduler, original, sample, model_output, x0, starts):
        batch = sample.shape[0]
        current = _copy_state(scheduler.__dict__)
        merged, new_sample, moved = current, sample, np.zeros(batch, bool)
        for start, rows in sorted(starts.items()):
            state, x = self.states[start]
            scheduler.__dict__.update(_copy_state(state))
            x = self._step_again(start, step, scheduler, original, x)
            ok = rows & _finite_rows(x)  # a row whose re-integration is not finite keeps its own run
            if not ok.any():
                continue
            mask = None if ok.all() else torch.as_tensor(ok, device=sample.device)
            replayed = _copy_state(scheduler.__dict__)
            merged = {k: _mix(merged.get(k), v, mask, batch) for k, v in replayed.items()}
            new_sample, moved = _mix(new_sample, x, mask, batch), moved | ok
            counts = self.session.trace.extras.setdefault("reintegrated_steps", {})
            counts[step] = counts.get(step, 0) + int(ok.sum()) * (step - start - 1)
        scheduler.__dict__.update(merged)
        if not moved.any():
            return sample, model_output
        held = self._output(self._moved_with_the_sample(x0, sample, new_sample, step), new_sample, step)
        mask = torch.as_tensor(moved, device=sample.device).view((-1,) + (1,) * (sample.ndim - 1))
        return new_sample, torch.where(mask, held.to(model_output.dtype), model_output)

    def _moved_with_the_sample(self, x0, sample, new_sample, step: int) -> torch.Tensor:
        """The clean prediction at the re-integrated sample, to first order: the network's noise estimate at step
        ``step`` is held and its clean prediction moves with the sample, ``x0 + (x' - x) / alpha`` (in the
        schedule's scaling). Holding ``x0`` itself instead (the denoiser's Jacobian taken as 0 rather than ``1 / alpha``)
        was measured worse wherever stretches are long (docs/theory.md)."""
        if self.hold == "clean":
            return x0
        shift = self.session.canonical(new_sample, step) - self.session.canonical(sample, step)
        return x0 + shift.to(x0.dtype) / float(self.grid.alpha[step])

    def _step_again(self, start: int, step: int, scheduler, original, x):
        """Step the restored scheduler from ``start`` (its computed clean prediction) over the skipped levels (the
        interpolated ones) up to ``step``; returns the re-integrated sample at ``step``."""
        for j in range(start, step):
            x0_j = self.nodes.computed_x0() if j == start else self.nodes.interpolate(j)
            x = original(self._output(x0_j, x, j), self.timesteps[j], x, return_dict=False)[0]
        return x


def _finite_rows(x: torch.Tensor) -> np.ndarray:
    return torch.isfinite(x).flatten(1).all(dim=1).cpu().numpy()
