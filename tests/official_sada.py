"""Test oracle: SADA's control flow as the official code computes it, written out independently of ``sada``.

A plain transcription of the official implementation's behaviour (github.com/Ting-Justin-Jiang/sada-icml, commit
bbbadce) for diffusers' DPM-Solver++ and Euler schedulers, as documented in docs/paper-mode.md: batch-global
criterion, the training beta read at the scheduler's own integer timestep, the fixed ``(5/8, 3/4, -3/8)`` step
estimate with ``delta = 1/N``, integer-index Lagrange nodes (``x0`` for DPM, ``x0/alpha`` for Euler), the Euler
v-prediction estimate built from the solver's actual ``x_{n+1}``. It shares no code with the library, so the paper-mode
parity tests compare two independent implementations. The solver update itself is diffusers' own ``step``: on a
skipped step DPM's ``convert_model_output`` is replaced by the estimate (as the official patched step does), and
Euler receives the model output whose clean-sample prediction is the estimate.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch


@dataclass
class OfficialRun:
    decisions: list = field(default_factory=list)  # per step: "compute", "am" or "lagrange"
    x0_used: dict = field(default_factory=dict)  # step -> clean-sample estimate consumed on a skipped step
    sample: torch.Tensor | None = None
    betas: list = field(default_factory=list)  # training beta used at every step


def _lagrange(nodes, at: float):
    total = 0.0
    for i, (k_i, value) in enumerate(nodes):
        weight = 1.0
        for j, (k_j, _) in enumerate(nodes):
            if j != i:
                weight *= (at - k_j) / (k_i - k_j)
        total = total + weight * value
    return total


def run_official(
    scheduler,
    denoise,
    latents,
    num_steps: int,
    *,
    solver: str,
    acc_range=(10, 47),
    max_interval=4,
    lagrange_term=4,
    lagrange_int=4,
    lagrange_step=24,
) -> OfficialRun:
    """Sample with ``denoise(model_input, t) -> guided output`` and the official SADA decisions (batch-global)."""
    prediction = scheduler.config.prediction_type
    scheduler.set_timesteps(num_steps)
    x = latents * scheduler.init_noise_sigma
    acc_start = max(acc_range[0], 3)
    acc_end = acc_range[1]
    f_hist: deque = deque(maxlen=2)  # f_{n-2}, f_{n-1}
    nodes: deque = deque(maxlen=max(lagrange_term, 1))
    run = OfficialRun()
    skip, mode, cons_skip, estimate, guided = False, "compute", 0, None, None
    sigmas = scheduler.sigmas.double()
    for n, t in enumerate(scheduler.timesteps):
        run.decisions.append(mode if skip else "compute")
        if not skip:
            guided = denoise(scheduler.scale_model_input(x, t), t)
        sigma = float(sigmas[n])
        alpha = 1.0 / (1.0 + sigma * sigma) ** 0.5
        s = sigma * alpha
        if solver == "dpm":
            if scheduler.step_index is None:
                scheduler._init_step_index(t)
            x0 = estimate if skip else scheduler.convert_model_output(guided, sample=x)
            original = scheduler.convert_model_output
            scheduler.convert_model_output = lambda *a, **k: x0
            try:
                out = scheduler.step(guided, t, x).prev_sample
            finally:
                scheduler.convert_model_output = original
        else:
            if skip:
                x0 = estimate
                if prediction == "epsilon":
                    model_output = (x - x0) / sigma
                else:
                    model_output = (x / (sigma**2 + 1) - x0) / (sigma / (sigma**2 + 1) ** 0.5)
            else:
                model_output = guided
                x0 = (
                    x - sigma * guided
                    if prediction == "epsilon"
                    else guided * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
                )
            out = scheduler.step(model_output, t, x).prev_sample
        if skip:
            run.x0_used[n] = x0.clone()
        if lagrange_term and n % lagrange_int == 1:
            nodes.append((n, x0 if solver == "dpm" else x0 / alpha))
        x_vp = x if solver == "dpm" else alpha * x
        beta = float(scheduler.betas[int(t)])
        run.betas.append(beta)
        if prediction == "epsilon":
            f = num_steps * beta / 2.0 * (-x_vp + guided / s)
        else:
            f = num_steps * beta / 2.0 * (alpha / s) * guided
        skip_next, next_mode = False, "compute"
        if len(f_hist) == 2 and n + 1 < num_steps:
            f1, f2 = f_hist[1], f_hist[0]
            x_hat_vp = x_vp - (5.0 / 8.0 * f + 3.0 / 4.0 * f1 - 3.0 / 8.0 * f2) / num_steps
            sigma1 = float(sigmas[n + 1])
            alpha1 = 1.0 / (1.0 + sigma1 * sigma1) ** 0.5
            x_hat = x_hat_vp if solver == "dpm" else x_hat_vp / alpha1
            stable = bool(((out - x_hat) * (f - 2.0 * f1 + f2)).mean() <= 0)
            if cons_skip >= max_interval:
                cons_skip = 0
            elif not lagrange_term and stable and acc_start <= n < acc_end:
                skip_next, next_mode = True, "am"
            elif lagrange_term and stable and acc_start <= n < lagrange_step:
                skip_next, next_mode = True, "am"
            elif lagrange_term and n % lagrange_int != 0 and lagrange_step <= n < acc_end:
                skip_next, next_mode = True, "lagrange"
            else:
                cons_skip = 0
            if skip_next:
                cons_skip += 1
                s1 = sigma1 * alpha1
                if next_mode == "lagrange":
                    estimate = _lagrange(list(nodes), n + 1.0)
                    estimate = estimate if solver == "dpm" else alpha1 * estimate
                elif solver == "dpm":
                    estimate = (
                        (x_hat_vp - s1 * guided) / alpha1
                        if prediction == "epsilon"
                        else alpha1 * x_hat_vp - s1 * guided
                    )
                else:
                    estimate = (
                        x_hat - sigma1 * guided
                        if prediction == "epsilon"
                        else -sigma1 / (sigma1**2 + 1) ** 0.5 * guided + out / (sigma1**2 + 1)
                    )
        f_hist.append(f)
        skip, mode, x = skip_next, next_mode, out
    run.sample = x
    return run
