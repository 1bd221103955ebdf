"""The authors' presets and the rule that fits a step schedule to a run's step count.

The authors' settings: 50 steps from the official demos, 25/15 steps from the author's answer in sada-icml issue
#3 (``max_fix`` / ``max_interval`` unspecified there: the 50-step values are kept).
"""

from __future__ import annotations

import warnings

from sada.config.core import SADAConfig
from sada.config.fitting import _SHORT, AUTHORS_50, fit_step_schedule
from sada.config.parts import MIN_ACC_START, StepSchedule, int_field
from sada.errors import RunTooShortError, SADAWarning

__all__ = [
    "PRESETS",
    "preset",
    "fit_step_schedule",
    "fit_for_run",
    "early_multistep",
    "step_error_tolerance",
    "error_controlled_preset",
]


def _authors(model: str, steps: int, max_fix: int, max_downsample: int, **schedule) -> SADAConfig:
    return SADAConfig(
        schedule=StepSchedule(num_steps=steps, **schedule),
        mode="paper",
        reduce="batch",
        max_fix=max_fix,
        max_downsample=max_downsample,
        name=f"{model}-{steps}",
    )


PRESETS: dict[tuple[str, int], SADAConfig] = {
    ("sd2", 50): _authors("sd2", 50, 5120, 1, **AUTHORS_50["sd2"]),
    ("sdxl", 50): _authors("sdxl", 50, 10240, 2, **AUTHORS_50["sdxl"]),
    ("flux", 50): _authors("flux", 50, 0, 0, **AUTHORS_50["flux"]),
}
for _model in ("sd2", "sdxl", "flux"):
    for _steps, _fields in _SHORT.items():
        _base = PRESETS[(_model, 50)]
        PRESETS[(_model, _steps)] = _base.replace(
            schedule=_base.schedule.replace(num_steps=_steps, **_fields), name=f"{_model}-{_steps}"
        )


def preset(model: str, num_steps: int = 50, **overrides) -> SADAConfig:
    """The authors' preset for ``model`` in ``{"sd2", "sdxl", "flux"}`` at 50, 25 or 15 steps.

    ``overrides`` replace fields, e.g. ``preset("sdxl", 25, mode="corrected", reduce="sample")``.
    """
    key = (model, num_steps)
    if key not in PRESETS:
        models = sorted({m for m, _ in PRESETS})
        raise ValueError(
            f"no preset for model={model!r} at num_steps={num_steps!r}; models {models}, steps (50, 25, 15)"
        )
    return PRESETS[key].replace(**overrides) if overrides else PRESETS[key]


def fit_for_run(config: SADAConfig, num_steps: int) -> SADAConfig:
    """:meth:`SADAConfig.fit_steps` as every adapter applies it: a step schedule written for another explicit step
    count is rescaled with a :class:`~sada.errors.SADAWarning` that says what was done and how to avoid it; a run too
    short for any skip raises :class:`~sada.errors.RunTooShortError` (the adapters then compute it exactly)."""
    if not isinstance(config, SADAConfig):
        raise TypeError(f"config must be a SADAConfig, got {type(config).__name__}")
    num_steps = int_field("num_steps", num_steps, minimum=2)
    written = getattr(config.schedule, "num_steps", None)
    if num_steps < MIN_ACC_START + 3 and written != num_steps:
        raise RunTooShortError(
            f"a run of num_steps={num_steps} is too short for SADA: skipping starts after step "
            f"{MIN_ACC_START} and the last step always runs; need num_steps >= {MIN_ACC_START + 3}"
        )
    fitted = config.fit_steps(num_steps)
    if written is not None and written != num_steps:
        s = fitted.schedule
        assert isinstance(s, StepSchedule)  # only a step schedule is written for a step count
        warnings.warn(
            f"sada: config {config.name!r} was written for num_steps={written}; this run has "
            f"{num_steps} steps, so its step ranges were rescaled to acc_range={s.acc_range}, "
            f"lagrange_step={s.lagrange_step}, lagrange_term={s.lagrange_term} (pass a config "
            f"for {num_steps} steps, or num_steps=None, to silence this)",
            SADAWarning,
            stacklevel=3,
        )
    return fitted


def early_multistep(config: SADAConfig, num_steps: int) -> SADAConfig:
    """``config`` (a step schedule) with the multistep regime started at about a quarter of a ``num_steps`` run:
    the earliest multiple of ``lagrange_int`` from ``0.24 * num_steps`` on that leaves room for ``lagrange_term``
    nodes; unchanged when that is not earlier than its ``lagrange_step``."""
    schedule = config.schedule
    if not isinstance(schedule, StepSchedule):
        raise TypeError(f"early_multistep needs a config with a StepSchedule, got {type(schedule).__name__}")
    interval = schedule.lagrange_int
    start = max(interval, interval * -(-round(0.24 * int_field("num_steps", num_steps, 1)) // interval))
    while start < schedule.lagrange_step:
        try:
            return config.replace(lagrange_step=start)
        except ValueError:  # too early for lagrange_term nodes: try the next multiple
            start += interval
    return config


def step_error_tolerance(num_steps: int) -> float:
    """The step-schedule error-controlled mode's tolerance for a ``num_steps`` run: ``0.03`` at 50 steps, scaled
    by ``50 / num_steps`` because the embedded estimate grows with the step size."""
    return 0.03 * 50 / int_field("num_steps", num_steps, 1)


def error_controlled_preset(model: str, num_steps: int = 50, **overrides) -> SADAConfig:
    """The previous release's error-controlled mode: the authors' step schedule for ``model`` at ``num_steps`` with
    corrected numerics and per-sample decisions, the multistep regime started at about a quarter of the run
    (:func:`early_multistep`), and every skip vetoed when its embedded-pair local-error estimate exceeds
    :func:`step_error_tolerance`. No token pruning. ``overrides`` replace fields afterwards."""
    base = preset(model, num_steps).replace(
        mode="corrected",
        reduce="sample",
        max_downsample=0,
        prune_blocks=(),
        name=f"{model}-{num_steps}-error-controlled",
    )
    config = early_multistep(base, num_steps).replace(step_error_rms=step_error_tolerance(num_steps))
    return config.replace(**overrides) if overrides else config
