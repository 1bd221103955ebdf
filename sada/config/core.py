"""``SADAConfig``: a skip schedule, numerics and token pruning composed; JSON round trip; the step-count rule.

Flat keywords are a shorthand routed to the part they belong to::

    SADAConfig(max_interval=0)                   # ErrorControl(max_interval=0): never skips
    SADAConfig(acc_range=(8, 22), lagrange_step=12, lagrange_term=2)   # a StepSchedule
    SADAConfig(history=4)                        # ErrorControl(history=4)
    config.replace(mode="corrected", reduce="sample")

Every default that depends on the run (the numerics variant on a grid, the criterion, the multistep abscissa and
target) is resolved in one place, :meth:`SADAConfig.resolve`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from sada.config.enums import Abscissa, AmNoise, LagrangeTarget, Mode, Reduce, SampleScaling, Variant, choice
from sada.config.fitting import fit_step_schedule
from sada.config.parts import (
    MIN_ACC_START,
    ErrorControl,
    Numerics,
    StepSchedule,
    TokenPruning,
    int_field,
    renamed_fields,
)
from sada.errors import ConfigError

__all__ = ["SADAConfig", "ResolvedNumerics", "DEFAULT_SCHEDULE"]

STEP_FIELDS = {"acc_range", "lagrange_term", "lagrange_int", "lagrange_step", "num_steps"}
ERROR_FIELDS = {"tolerance", "history", "relative_to"}
SCHEDULE_FIELDS = STEP_FIELDS | ERROR_FIELDS | {"max_interval"}
NUMERICS_FIELDS = {f.name for f in dataclasses.fields(Numerics)}
PRUNING_FIELDS = {f.name for f in dataclasses.fields(TokenPruning)}
SCHEDULES = {"steps": StepSchedule, "error_control": ErrorControl}
# the schedule of SADAConfig() and of flat keywords that name no schedule
DEFAULT_SCHEDULE = ErrorControl


@dataclass(frozen=True)
class ResolvedNumerics:
    """What an engine runs for a config on a given grid and host (see :meth:`SADAConfig.resolve`)."""

    estimator: Variant
    criterion: Variant
    am_noise: AmNoise
    abscissa: Abscissa
    lagrange_target: LagrangeTarget


@dataclass(frozen=True, init=False)
class SADAConfig:
    """Settings of a SADA run: ``schedule`` (when to skip), ``numerics`` (how), ``pruning`` (token pruning),
    ``reduce`` (one decision per sample or per batch) and a ``name`` (not compared)."""

    schedule: StepSchedule | ErrorControl
    numerics: Numerics
    pruning: TokenPruning
    reduce: Reduce
    name: str = field(default="custom", compare=False)

    def __init__(
        self,
        schedule: StepSchedule | ErrorControl | None = None,
        numerics: Numerics | None = None,
        pruning: TokenPruning | None = None,
        reduce: Reduce | str = Reduce.SAMPLE,
        name: str = "custom",
        **fields,
    ):
        fields = renamed_fields(fields, stacklevel=3)  # deprecated field names, with a warning
        unknown = set(fields) - SCHEDULE_FIELDS - NUMERICS_FIELDS - PRUNING_FIELDS
        if unknown:
            raise ValueError(f"unknown SADAConfig field(s): {sorted(unknown)}")
        for part, cls in (("numerics", Numerics), ("pruning", TokenPruning)):
            value = locals()[part]
            if value is not None and not isinstance(value, cls):
                raise TypeError(f"{part} must be a {cls.__name__}, got {type(value).__name__}")
        numerics = (numerics or Numerics()).replace(**{k: v for k, v in fields.items() if k in NUMERICS_FIELDS})
        pruning = (pruning or TokenPruning()).replace(**{k: v for k, v in fields.items() if k in PRUNING_FIELDS})
        schedule = _schedule_with(
            schedule, {k: v for k, v in fields.items() if k in SCHEDULE_FIELDS}, numerics, pruning.enabled
        )
        if numerics.mode == Mode.PAPER and not isinstance(schedule, StepSchedule):
            raise ValueError(
                "mode='paper' runs the official algorithm, which is written in step indices: it needs a "
                "StepSchedule, not ErrorControl"
            )
        if numerics.step_error_rms is not None and not isinstance(schedule, StepSchedule):
            raise ValueError(
                f"step_error_rms={numerics.step_error_rms!r} is the step schedule's error veto; "
                "ErrorControl has its own tolerance (ErrorControl(tolerance=...))"
            )
        if not isinstance(name, str):
            raise TypeError(f"name must be a string, got {name!r}")
        for key, value in (
            ("schedule", schedule),
            ("numerics", numerics),
            ("pruning", pruning),
            ("reduce", choice(Reduce, "reduce", reduce, optional=False)),
            ("name", name),
        ):
            object.__setattr__(self, key, value)

    # ------------------------------------------------------------------ derived
    @property
    def prunes_tokens(self) -> bool:
        return self.pruning.enabled

    @property
    def never_skips(self) -> bool:
        """A schedule part says so itself (``never_skips``), else ``max_interval == 0`` means it."""
        return bool(getattr(self.schedule, "never_skips", self.schedule.max_interval == 0))

    def resolve(self, grid, sample_scaling: SampleScaling | str = SampleScaling.SCHEDULE) -> ResolvedNumerics:
        """Every run-dependent default, resolved once for ``grid`` (a :class:`~sada.trajectory.StepGrid`) and a
        host whose solver keeps its sample in ``sample_scaling``.

        * estimator: ``corrected``, or in paper mode the official VP path (discrete VP grid with training betas)
          or flow path (rectified flow) -- ``ValueError`` on grids where the official numerics are undefined;
        * criterion: the explicit one, else the paper's where the grid defines it, else the corrected one;
        * step estimate noise: ``reuse`` in paper mode, ``extrapolate`` otherwise;
        * multistep abscissa: step index in paper mode; under :class:`ErrorControl` ``t`` here, replaced by the
          rule with the host solver's (:meth:`ErrorControl.abscissa_for`: ``t`` on first order, EDM sigma above);
          EDM sigma otherwise;
        * multistep target: ``x0 / alpha`` in paper mode on an Euler-type host (the official Euler path), else ``x0``.
        """
        scaling = choice(SampleScaling, "sample_scaling", sample_scaling)
        num = self.numerics
        paper_numerics = grid.family == "flow" or grid.training_beta is not None
        criterion = num.criterion or (Mode.PAPER if paper_numerics or num.mode == Mode.PAPER else Mode.CORRECTED)
        paper = num.mode == Mode.PAPER
        target = num.lagrange_target or (
            LagrangeTarget.X0_OVER_ALPHA if paper and scaling == SampleScaling.EDM else LagrangeTarget.X0
        )
        return ResolvedNumerics(
            estimator=_variant(grid, num.mode, "mode"),
            criterion=_variant(grid, criterion, "criterion"),
            am_noise=num.am_noise or (AmNoise.REUSE if paper else AmNoise.EXTRAPOLATE),
            abscissa=num.abscissa
            or (Abscissa.INDEX if paper else Abscissa.T if isinstance(self.schedule, ErrorControl) else Abscissa.SIGMA),
            lagrange_target=target,
        )

    # ------------------------------------------------------------------ copies
    def replace(self, **changes) -> SADAConfig:
        """A validated copy with ``changes`` (parts, ``reduce``, ``name``, or flat fields routed to their part)."""
        current = {
            "schedule": self.schedule,
            "numerics": self.numerics,
            "pruning": self.pruning,
            "reduce": self.reduce,
            "name": self.name,
        }
        changes = renamed_fields(changes, stacklevel=3)
        flat = {k: v for k, v in changes.items() if k not in current}
        parts = {**current, **{k: v for k, v in changes.items() if k in current}}
        if "schedule" not in changes:
            parts["schedule"] = _schedule_for_replace(self.schedule, flat)
        return SADAConfig(**parts, **flat)

    def for_solver(self, solver_order: int, median_log_snr_step: float | None = None) -> SADAConfig:
        """This config with the accuracy dial's unset fields taken from the host solver's order and the run's grid
        (:meth:`ErrorControl.for_solver`); a step schedule is returned unchanged."""
        if isinstance(self.schedule, ErrorControl):
            return self.replace(schedule=self.schedule.for_solver(solver_order, median_log_snr_step))
        return self

    def for_steps(self, num_steps: int) -> SADAConfig:
        """This config checked against a run of ``num_steps`` steps (a step schedule's ranges must fit)."""
        n = int_field("num_steps", num_steps, minimum=2)
        if isinstance(self.schedule, StepSchedule):
            return self.replace(num_steps=n)
        return self

    def fit_steps(self, num_steps: int) -> SADAConfig:
        """This config for a run of ``num_steps`` steps (the rule every adapter applies; docs/configuration.md).

        :class:`ErrorControl` needs no fitting. A :class:`StepSchedule`: unchanged when written for this count;
        written for the paper's 50 steps (``num_steps=None``): unchanged at 50, the authors' settings at 25 or 15
        when it is one of their 50-step schedules, else scaled from 50; written for another count: scaled from it.
        Raises ``ValueError`` when the run is too short for any skip.
        """
        n = int_field("num_steps", num_steps, minimum=2)
        if not isinstance(self.schedule, StepSchedule):
            if n < MIN_ACC_START + 3:
                raise ValueError(
                    f"a run of num_steps={n} is too short for SADA (need num_steps >= {MIN_ACC_START + 3})"
                )
            return self
        return self.replace(schedule=fit_step_schedule(self.schedule, n))

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {
            "schedule": {"kind": self.schedule.kind, **self.schedule.to_dict()},
            "numerics": self.numerics.to_dict(),
            "pruning": self.pruning.to_dict(),
            "reduce": str(self.reduce),
            "name": self.name,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data) -> SADAConfig:
        """From :meth:`to_dict`'s nested form (or a flat dict of fields)."""
        if not isinstance(data, dict):
            raise TypeError(f"SADAConfig.from_dict needs a dict, got {type(data).__name__}")
        data = dict(data)
        schedule = data.pop("schedule", None)
        if isinstance(schedule, dict):
            schedule = dict(schedule)
            kind = schedule.pop("kind", "steps")
            if kind not in SCHEDULES:
                raise ValueError(f"schedule kind must be one of {sorted(SCHEDULES)}, got {kind!r}")
            schedule = SCHEDULES[kind](**_tuples(schedule))
        numerics = data.pop("numerics", None)
        pruning = data.pop("pruning", None)
        return cls(
            schedule=schedule,
            numerics=Numerics(**numerics) if isinstance(numerics, dict) else numerics,
            pruning=TokenPruning(**_tuples(pruning)) if isinstance(pruning, dict) else pruning,
            **_tuples(data),
        )

    @classmethod
    def from_json(cls, text: str) -> SADAConfig:
        if not isinstance(text, (str, bytes)):
            raise TypeError(f"SADAConfig.from_json needs a JSON string, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _tuples(data: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


def _schedule_with(schedule, fields: dict, numerics: Numerics, prunes_tokens: bool = False):
    """The schedule named by ``schedule`` and flat schedule ``fields`` (their names pick its kind).

    With no schedule named, token pruning selects the step schedule: its token cache is refreshed on the first
    computed step after a skip, and the default schedule interleaves computed and skipped steps, so every
    computed step would refresh and nothing would be pruned."""
    step_only, error_only = set(fields) & STEP_FIELDS, set(fields) & ERROR_FIELDS
    if step_only and error_only:
        raise ValueError(
            f"fields {sorted(step_only)} belong to a StepSchedule and {sorted(error_only)} to "
            "ErrorControl: a config has one schedule"
        )
    if schedule is None:
        if (
            step_only
            or numerics.mode == Mode.PAPER
            or numerics.step_error_rms is not None
            or (prunes_tokens and not error_only)
        ):
            kind: type[StepSchedule] | type[ErrorControl] = (
                StepSchedule  # the paper's numerics, the error veto and token pruning belong to the step schedule
            )
        elif error_only:
            kind = ErrorControl
        else:
            kind = DEFAULT_SCHEDULE
        return kind(**fields)
    if not isinstance(schedule, tuple(SCHEDULES.values())):
        raise TypeError(
            f"schedule must be one of {[c.__name__ for c in SCHEDULES.values()]} (sada.config.core."
            f"SCHEDULES), got {type(schedule).__name__}"
        )
    wrong = step_only if isinstance(schedule, ErrorControl) else error_only
    if wrong:
        raise ValueError(f"fields {sorted(wrong)} do not belong to this config's {type(schedule).__name__}")
    return schedule.replace(**fields)  # type: ignore[attr-defined]  # a registered part (checked above)


def _schedule_for_replace(schedule, flat: dict):
    """``replace`` keeps the schedule's kind unless the flat fields name only the other kind's fields."""
    names = set(flat) & SCHEDULE_FIELDS
    if isinstance(schedule, ErrorControl) and names & STEP_FIELDS and not names & ERROR_FIELDS:
        return StepSchedule(max_interval=schedule.max_interval)
    if isinstance(schedule, StepSchedule) and names & ERROR_FIELDS and not names & STEP_FIELDS:
        return ErrorControl(max_interval=schedule.max_interval)
    return schedule


def _variant(grid, mode: Mode, field_name: str) -> Variant:
    if mode == Mode.CORRECTED:
        return Variant.CORRECTED
    if grid.family == "flow":
        return Variant.PAPER_FLOW
    if grid.training_beta is not None:
        return Variant.PAPER_VP
    raise ConfigError(
        f"{field_name}='paper' needs a discrete VP grid (training betas) or a rectified-flow grid; "
        f"got a {grid.family!r} grid: use {field_name}='corrected'"
    )
