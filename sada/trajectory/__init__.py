"""The trajectory interface: noise schedules, model parameterisations and the step grid of a run.

Everything SADA does is stated in these terms, so a host only has to declare its schedule and the
kind of output its network predicts.
"""

from sada.trajectory.grid import EARLY_END_RATIO, StepGrid, early_end_note
from sada.trajectory.parameterization import (
    PREDICTION_KINDS,
    check_kind,
    combine,
    convert,
    drift,
    edm_drift,
    split,
    synthesise_output,
    to_eps,
    to_x0,
)
from sada.trajectory.schedules import (
    BETA_SCHEDULES,
    DiscreteVPSchedule,
    EDMSchedule,
    NoiseSchedule,
    RectifiedFlowSchedule,
    karras_sigmas,
)

__all__ = [
    "BETA_SCHEDULES",
    "EARLY_END_RATIO",
    "PREDICTION_KINDS",
    "DiscreteVPSchedule",
    "EDMSchedule",
    "NoiseSchedule",
    "RectifiedFlowSchedule",
    "StepGrid",
    "check_kind",
    "combine",
    "convert",
    "drift",
    "early_end_note",
    "edm_drift",
    "karras_sigmas",
    "split",
    "synthesise_output",
    "to_eps",
    "to_x0",
]
