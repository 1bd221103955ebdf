"""The validated settings of a SADA run: a skip schedule, numerics and token pruning (:class:`SADAConfig`),
the authors' presets, and the rule that fits a configuration to a run's step count."""

from sada.config.core import DEFAULT_SCHEDULE, ResolvedNumerics, SADAConfig
from sada.config.dial import grid_tolerance
from sada.config.enums import Abscissa, AmNoise, LagrangeTarget, Mode, Reduce, SampleScaling, Variant
from sada.config.parts import (
    DIAL_BY_ORDER,
    MIN_ACC_START,
    MIN_SKIP_PREDICTIONS,
    ErrorControl,
    Numerics,
    StepSchedule,
    TokenPruning,
    higher_order_max_interval,
)
from sada.config.presets import (
    PRESETS,
    early_multistep,
    error_controlled_preset,
    fit_for_run,
    fit_step_schedule,
    preset,
    step_error_tolerance,
)

__all__ = [
    "Abscissa",
    "AmNoise",
    "DEFAULT_SCHEDULE",
    "ErrorControl",
    "DIAL_BY_ORDER",
    "LagrangeTarget",
    "MIN_ACC_START",
    "MIN_SKIP_PREDICTIONS",
    "Mode",
    "Numerics",
    "PRESETS",
    "Reduce",
    "ResolvedNumerics",
    "SADAConfig",
    "SampleScaling",
    "StepSchedule",
    "TokenPruning",
    "Variant",
    "early_multistep",
    "error_controlled_preset",
    "fit_for_run",
    "fit_step_schedule",
    "grid_tolerance",
    "higher_order_max_interval",
    "preset",
    "step_error_tolerance",
]
