"""Re-integrating a skipped stretch under a k-diffusion sampler (:mod:`sada.torch_backend.reintegration`).

A k-diffusion sampler keeps its sample and its previous outputs inside its own loop: the denoiser cannot hand it a
re-integrated sample or rewrite its history. For the samplers whose step is linear in what they hold,

    x_{i+1} = a_i x_i + b_i D_i + c_i D_{i-1}        (Euler: c_i = 0; DPM-Solver++(2M): c_i from the step ratio),

with ``D_i`` the output the denoiser returned at step ``i``, the denoiser can instead return the output ``R_i`` that
makes the sampler's own step land where the re-integrated run's step lands:

    R_i = D*_i + (a_i (x*_i - x_i) + c_i (D*_{i-1} - R_{i-1})) / b_i,

where ``x*`` and ``D*`` are the run that re-integrates (its sample and the outputs its solver consumes) and ``x``,
``R`` what the sampler holds. Where no stretch was re-integrated both corrections are exactly zero and ``R_i = D_i``.
The re-integration itself is the one of diffusers (:mod:`sada.adapters._diffusers_replay`): from the last computed
step ``c``, the sampler's step repeated over the skipped levels with the interpolated clean predictions, and step
``n`` holding the network's noise estimate at the re-integrated sample (``D*_n = D_n + x*_n - x_n`` in k-diffusion's
scaling). Arithmetic only: the network does not run again.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sada.torch_backend.reintegration import StretchNodes

__all__ = ["LINEAR_STEPS", "SamplerReplay", "step_coefficients"]

LINEAR_STEPS = frozenset({"sample_euler", "sample_dpmpp_2m"})  # the samplers whose step the denoiser can steer


def step_coefficients(sampler: str, sigmas: np.ndarray, i: int) -> tuple[float, float, float]:
    """``(a_i, b_i, c_i)`` of the sampler's step ``x_{i+1} = a_i x_i + b_i D_i + c_i D_{i-1}`` on ``sigmas``
    (k-diffusion's ``sample_euler`` without churn; ``sample_dpmpp_2m``: first order at the first step and into
    ``sigma = 0``, else the 2M combination with ``r = h_{i-1} / h_i`` in log-sigma)."""
    if sampler not in LINEAR_STEPS:
        raise ValueError(f"sampler must be one of {sorted(LINEAR_STEPS)}, got {sampler!r}")
    if not 0 <= i < len(sigmas) - 1:
        raise ValueError(f"step {i} is outside the {len(sigmas) - 1} steps of the schedule")
    s, s_next = float(sigmas[i]), float(sigmas[i + 1])
    if s_next == 0.0:
        return 0.0, 1.0, 0.0
    if sampler == "sample_euler":
        return s_next / s, 1.0 - s_next / s, 0.0
    h = math.log(s / s_next)
    first = -math.expm1(-h)  # 1 - sigma_{i+1} / sigma_i
    if i == 0:
        return s_next / s, first, 0.0
    r = math.log(float(sigmas[i - 1]) / s) / h
    return s_next / s, first * (1.0 + 1.0 / (2.0 * r)), -first / (2.0 * r)


class SamplerReplay:
    """The re-integrating run's sample and outputs under one k-diffusion sampler (one evaluation per step)."""

    def __init__(self, session, sampler: str, sigmas: np.ndarray, hold: str = "noise"):
        if hold not in ("noise", "clean"):
            raise ValueError(f"hold must be 'noise' (the default) or 'clean', got {hold!r}")
        step_coefficients(sampler, sigmas, 0)  # validates the sampler
        self.session, self.sampler, self.sigmas, self.hold = session, sampler, np.asarray(sigmas, np.float64), hold
        self.nodes = StretchNodes(session.grid)
        self.states: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}  # step -> (x*, D*_{step-1})
        self.consumed: torch.Tensor | None = None  # D*_{i-1}: what the re-integrating run's solver consumed
        self.returned: torch.Tensor | None = None  # R_{i-1}: what the sampler holds as its previous output
        self.steering = False  # a stretch was re-integrated this run: R differs from D from then on

    def output(self, step: int, x: torch.Tensor, denoised: torch.Tensor, computed: np.ndarray) -> torch.Tensor:
        """The output to return to the sampler at ``step`` (sample ``x``, completed outputs ``denoised``)."""
        if step == 0:
            self.nodes.reset()
            self.states.clear()
            self.consumed = self.returned = None
            self.steering = False
        computed = np.asarray(computed, bool)
        x_run, d_run, previous = x, denoised, self.consumed
        if computed.size == x.shape[0] and computed.any():
            starts = self.nodes.push(step, denoised, computed)
            for start, rows in sorted(starts.items()):
                x_run, d_run, previous = self._reintegrate(step, start, rows, x, denoised, x_run, d_run, previous)
            self.states[step] = (x_run.clone(), None if previous is None else previous.clone())
            oldest = self.nodes.oldest_start()
            for old in [s for s in self.states if s < oldest]:
                del self.states[old]
        self.steering = self.steering or x_run is not x
        if not self.steering:  # both corrections are zero: the sampler gets the outputs unchanged
            self.consumed = self.returned = denoised
            return denoised
        a, b, c = step_coefficients(self.sampler, self.sigmas, step)
        correction = (x_run - x) * a
        if c != 0.0 and previous is not None and self.returned is not None:
            correction = correction + (previous - self.returned) * c
        returned = d_run + correction / b
        self.consumed, self.returned = d_run, returned
        return returned

    def _reintegrate(self, step, start, rows, x, denoised, x_run, d_run, previous):
        """Rows ``rows`` computed at ``start`` and now at ``step``: their re-integrated sample, the output step
        ``step`` consumes there and the previous output it consumes (the interpolated one at ``step - 1``)."""
        x_start, before = self.states[start]
        x_new, last = self._step_again(start, step, x_start, before)
        ok = rows & torch.isfinite(x_new).flatten(1).all(dim=1).cpu().numpy()  # else the row keeps its own run
        if not ok.any():
            return x_run, d_run, previous
        mask = torch.as_tensor(ok, device=x.device).view((-1,) + (1,) * (x.ndim - 1))
        held = denoised + (x_new - x) if self.hold == "noise" else denoised
        counts = self.session.trace.extras.setdefault("reintegrated_steps", {})
        counts[step] = counts.get(step, 0) + int(ok.sum()) * (step - start - 1)
        previous = last if previous is None else torch.where(mask, last, previous)
        return torch.where(mask, x_new, x_run), torch.where(mask, held, d_run), previous

    def _step_again(self, start: int, step: int, x: torch.Tensor, before: torch.Tensor | None):
        """The sampler's step repeated from ``start`` (its computed clean prediction) over the skipped levels (the
        interpolated ones) up to ``step``: the re-integrated sample and the output consumed at ``step - 1``."""
        previous = before
        for j in range(start, step):
            d_j = self.nodes.computed_x0() if j == start else self.nodes.interpolate(j)
            a, b, c = step_coefficients(self.sampler, self.sigmas, j)
            x_next = x * a + d_j * b
            if c != 0.0 and previous is not None:
                x_next = x_next + previous * c
            x, previous = x_next, d_j
        return x, previous
