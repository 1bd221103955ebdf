"""The rule that fits a step schedule to a run's step count, and the authors' step schedules it recognises.

Imported by :mod:`sada.config.core` (``SADAConfig.fit_steps``) and :mod:`sada.config.presets`; it depends on the
config parts only, so the config package has no import cycle.
"""

from __future__ import annotations

from typing import Any

from sada.config.parts import MIN_ACC_START, StepSchedule
from sada.errors import RunTooShortError

__all__ = ["AUTHORS_50", "fit_step_schedule"]

# the authors' 50-step schedules (the official demos) and their 25/15-step settings (sada-icml issue #3)
AUTHORS_50: dict[str, dict[str, Any]] = {
    "sd2": dict(acc_range=(10, 47), lagrange_int=4, lagrange_step=24, lagrange_term=4),
    "sdxl": dict(acc_range=(10, 47), lagrange_int=4, lagrange_step=24, lagrange_term=4),
    "flux": dict(acc_range=(10, 47), lagrange_int=4, lagrange_step=20, lagrange_term=3),
}
_SHORT = {
    25: dict(acc_range=(8, 22), lagrange_int=4, lagrange_step=12, lagrange_term=2),
    15: dict(acc_range=(7, 12), lagrange_int=3, lagrange_step=9, lagrange_term=2),
}


def _schedule_fields(schedule: StepSchedule) -> tuple:
    return schedule.acc_range, schedule.lagrange_int, schedule.lagrange_step, schedule.lagrange_term


def fit_step_schedule(schedule: StepSchedule, n: int) -> StepSchedule:
    """The rule of :meth:`SADAConfig.fit_steps` for a :class:`StepSchedule` and a run of ``n`` steps.

    Scaling: ``acc_range`` proportionally (end capped at ``n - 2``), ``lagrange_step`` to a multiple of
    ``lagrange_int``, fewer multistep nodes when they cannot be stored in time, no multistep regime when none fit.
    """
    if schedule.num_steps == n or (schedule.num_steps is None and n == 50):
        return schedule.replace(num_steps=n)
    if schedule.num_steps is None and n in _SHORT:
        for authors in AUTHORS_50.values():
            if _schedule_fields(StepSchedule(**authors)) == _schedule_fields(schedule):
                return schedule.replace(num_steps=n, **_SHORT[n])
    ref = schedule.num_steps or 50
    start = int(round(schedule.acc_range[0] * n / ref))
    end = min(int(round(schedule.acc_range[1] * n / ref)), n - 2)
    if end <= max(start, MIN_ACC_START):
        if n - 2 <= MIN_ACC_START:
            raise RunTooShortError(
                f"a run of num_steps={n} is too short for SADA: skipping starts after step "
                f"{MIN_ACC_START} and the last step always runs; need num_steps >= {MIN_ACC_START + 3}"
            )
        start, end = 0, n - 2
    changes = {"num_steps": n, "acc_range": (start, end)}
    term, interval = schedule.lagrange_term, schedule.lagrange_int
    if term:
        step = int(round(schedule.lagrange_step * n / ref)) // interval * interval
        step = min(max(step, (max(start, MIN_ACC_START) + interval - 1) // interval * interval), end - 1)
        step = step // interval * interval
        term = min(term, step // interval + 1) if step >= max(start, MIN_ACC_START) else 0
        term = term if term >= 2 else 0
        changes.update(lagrange_step=step if term else schedule.lagrange_step, lagrange_term=term)
    return schedule.replace(**changes)
