"""The three concerns of a configuration, each a small frozen dataclass that validates itself.

* the skip schedule -- *when* a step may be skipped: :class:`StepSchedule` (the authors' step-index schedule) or
  :class:`ErrorControl` (schedule-free: wherever the estimate's own error is small against the solver's);
* :class:`Numerics` -- *how* a skipped step is estimated and the criterion computed;
* :class:`TokenPruning` -- which tokens of a computed step are recomputed.

Every invalid field raises ``ValueError`` (``TypeError`` for a wrong type) naming the field, the value and the
allowed range.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import warnings
from dataclasses import dataclass

from sada.config.dial import (
    DIAL_BY_ORDER,
    MIN_SKIP_PREDICTIONS,
    RELATIVE_TO,
    grid_note,
    grid_tolerance,
    higher_order_max_interval,
    order_class,
)
from sada.config.enums import Abscissa, AmNoise, LagrangeTarget, Mode, choice
from sada.config.fields import int_field, pair_field, real_field
from sada.errors import SADADeprecationWarning

__all__ = [
    "MIN_ACC_START",
    "RENAMED",
    "StepSchedule",
    "ErrorControl",
    "DIAL_BY_ORDER",
    "MIN_SKIP_PREDICTIONS",
    "higher_order_max_interval",
    "Numerics",
    "TokenPruning",
    "int_field",
    "real_field",
    "renamed_fields",
]

# The official code never skips before step 3: its step estimate needs three drift nodes (docs/paper-mode.md).
MIN_ACC_START = 3


# fields renamed in this release: old name -> new name, per part; the old names are accepted (with a
# SADADeprecationWarning) for one release, in the constructors, ``replace``, flat SADAConfig keywords and JSON
RENAMED: dict[str, dict[str, str]] = {
    "ErrorControl": {"nodes": "history"},
    "Numerics": {"lagrange_nodes": "abscissa", "error_tolerance": "step_error_rms"},
}
_ALL_RENAMED = {old: new for names in RENAMED.values() for old, new in names.items()}


def renamed_fields(fields: dict, owner: str | None = None, stacklevel: int = 3) -> dict:
    """``fields`` with every deprecated name (of ``owner``'s part, or of any part) replaced by its new name, one
    :class:`~sada.errors.SADADeprecationWarning` per old name; both names at once is an error."""
    names = RENAMED.get(owner, {}) if owner else _ALL_RENAMED
    out = dict(fields)
    for old, new in names.items():
        if old in out:
            if new in out:
                raise ValueError(f"{old!r} is the deprecated name of {new!r}: pass only {new!r}")
            warnings.warn(
                f"sada: the config field {old!r} is renamed {new!r}; the old name is accepted until the next release",
                SADADeprecationWarning,
                stacklevel=stacklevel,
            )
            out[new] = out.pop(old)
    return out


def _accepts_old_names(cls):
    """Let ``cls(...)`` take the deprecated names of its fields (:data:`RENAMED`)."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **renamed_fields(kwargs, cls.__name__, stacklevel=3))

    cls.__init__ = __init__
    for old, new in RENAMED.get(cls.__name__, {}).items():  # reading the old attribute works (and warns) too
        setattr(cls, old, _old_attribute(cls.__name__, old, new))
    return cls


def _old_attribute(owner: str, old: str, new: str) -> property:
    def read(self):
        renamed_fields({old: None}, owner, stacklevel=4)  # the warning
        return getattr(self, new)

    return property(read, doc=f"Deprecated name of :attr:`{new}` (until the next release).")


class _Part:
    def replace(self, **changes):
        changes = renamed_fields(changes, type(self).__name__, stacklevel=3)
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown {type(self).__name__} field(s): {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # every concrete part is a dataclass
            value = getattr(self, f.name)
            out[f.name] = (
                list(value) if isinstance(value, tuple) else (str(value) if hasattr(value, "value") else value)
            )
        return out


@dataclass(frozen=True)
class StepSchedule(_Part):
    """The authors' schedule in step indices (docs/paper-mode.md).

    Attributes:
        acc_range: ``(start, end)``: step ``n + 1`` may be skipped only for decisions taken at
            ``max(start, 3) <= n < end``; earlier and later steps always run the network.
        max_interval: most consecutive skipped steps; 0 never skips (also token pruning's cache refresh interval
            unless ``TokenPruning.refresh_interval`` sets its own).
        lagrange_term: nodes of the multistep (Lagrange) estimate; 0 disables the multistep regime.
        lagrange_int: a node is stored at every step ``k`` with ``k % lagrange_int == 1``.
        lagrange_step: from this step on the fixed multistep pattern replaces adaptive skipping.
        num_steps: the step count the ranges are written for (``None``: the paper's 50, rescaled to any run by
            :meth:`sada.config.SADAConfig.fit_steps`).
    """

    acc_range: tuple[int, int] = (10, 47)
    max_interval: int = 4
    lagrange_term: int = 4
    lagrange_int: int = 4
    lagrange_step: int = 24
    num_steps: int | None = None

    kind = "steps"

    def __post_init__(self):
        start, end = pair_field("acc_range", self.acc_range, 0)
        if end <= max(start, MIN_ACC_START):
            raise ValueError(
                f"acc_range end must be > max(start, {MIN_ACC_START}) = {max(start, MIN_ACC_START)}, "
                f"got acc_range={tuple(self.acc_range)!r}"
            )
        object.__setattr__(self, "acc_range", (start, end))
        int_field("max_interval", self.max_interval, minimum=0)
        term = int_field("lagrange_term", self.lagrange_term, minimum=0, maximum=8)
        interval = int_field("lagrange_int", self.lagrange_int, minimum=2)
        step = int_field("lagrange_step", self.lagrange_step, minimum=0)
        if term:
            if step % interval:
                raise ValueError(f"lagrange_step must be a multiple of lagrange_int={interval}, got {step}")
            if not self.acc_start <= step < end:
                raise ValueError(f"lagrange_step must lie in [{self.acc_start}, {end}) (inside acc_range), got {step}")
            newest_needed = 1 + interval * (term - 1)
            if newest_needed > step + 1:
                raise ValueError(
                    f"lagrange_step={step} is too early: {term} nodes every {interval} steps are only "
                    f"stored by step {newest_needed}; need lagrange_step >= {newest_needed - 1}"
                )
        if self.num_steps is not None:
            n = int_field("num_steps", self.num_steps, minimum=2)
            if end > n - 2:
                raise ValueError(
                    f"acc_range end must be <= num_steps - 2 = {n - 2} so the last step runs the "
                    f"network, got acc_range={self.acc_range!r} for num_steps={n}"
                )

    @property
    def acc_start(self) -> int:
        """First decision step that may skip: ``max(acc_range[0], 3)``."""
        return max(self.acc_range[0], MIN_ACC_START)

    @property
    def acc_end(self) -> int:
        return self.acc_range[1]

    @property
    def uses_lagrange(self) -> bool:
        return self.lagrange_term > 0

    @property
    def never_skips(self) -> bool:
        return self.max_interval == 0


@_accepts_old_names
@dataclass(frozen=True)
class ErrorControl(_Part):
    """The accuracy dial: skip a step wherever the estimate it would receive adds at most ``tolerance`` to the
    sample -- no step indices, so one setting serves every step count and spacing (docs/theory.md, "The accuracy
    dial").

    Every computed step stores each sample's clean-sample prediction ``D``. Before a step the engine extrapolates
    the newest ``history`` predictions to its noise level (a Lagrange polynomial, Theorem 3.7), estimates that
    extrapolation's error with one more stored prediction (an embedded pair), and multiplies it by the share
    ``1 - exp(-h)`` of it that a step of log-SNR ``h`` moves into the sample. The step is skipped iff this estimated
    added error, relative to the RMS of the sample ``x / alpha`` entering the step, is at most ``tolerance`` -- for
    Gaussian data exactly the relative error the skip leaves in the final sample, so the dial reads in output terms
    and skips freely at high noise, where the ODE contracts errors. Large steps (few steps, the end of the run) and
    rough stretches of the trajectory compute; smooth stretches skip, several steps in a row on a first-order
    solver. A skip needs three stored predictions (a line and the quadratic that checks it), so while a longer
    history fills the pair is one degree lower. The last two steps always run the network (the last one alone on a
    run whose host re-integrates skipped stretches on a VP / VE grid, from tolerance 0.01: the second-to-last step,
    skipped, is re-integrated; :func:`sada.torch_backend.reintegration.protected_tail`).

    A field left ``None`` takes the host solver's value (:data:`DIAL_BY_ORDER`, :meth:`for_solver`): first order
    (Euler, DDIM, flow Euler) ``tolerance=0.002, history=2, max_interval=6`` (0.005 on a grid coarser than a median
    log-SNR step of 0.16, fewer than about 38 Karras steps); second and third order (DPM-Solver++,
    UniPC, Heun, DEIS) ``tolerance=0.03, history=3`` and ``max_interval`` from the tolerance and the grid
    (:func:`higher_order_max_interval`: 2 at the default, 3 on a grid of about 75 Karras steps or more, 1 below about
    38, up to 4; below about 13 Karras steps the default tolerance is 0.002); fourth order and up (LMS) computes every step
    unless ``max_interval`` is set. Every host measures ``relative_to="sample"`` unless told ``"clean"``.

    Attributes:
        tolerance: the largest estimated error, relative to the sample (RMS over RMS; see ``relative_to``), that one
            skipped step may add: the one accuracy knob. Smaller is more accurate and computes more; 0 never skips.
        history: how many recent network evaluations each extrapolation goes through (polynomial degree
            ``history - 1``; one more is kept for the error estimate; fewer while the history fills, at least two;
            formerly ``nodes``).
        max_interval: most consecutive skipped steps; 0 never skips.
        relative_to: ``"sample"`` (the error over RMS of ``x / alpha`` at the step: what it leaves in the final
            sample) or ``"clean"`` (over RMS of the clean-sample estimate).
    """

    tolerance: float | None = None
    history: int | None = None
    max_interval: int | None = None
    relative_to: str | None = None

    kind = "error_control"

    def __post_init__(self):
        tolerance = self.tolerance
        if tolerance is not None:
            if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real):
                raise TypeError(f"tolerance must be a number, got {tolerance!r}")
            if not 0 <= float(tolerance) < 1:
                raise ValueError(
                    f"tolerance must be a number in [0, 1) (a relative error; 0 never skips), got {tolerance!r}"
                )
            object.__setattr__(self, "tolerance", float(tolerance))
        if self.history is not None:
            int_field("history", self.history, minimum=1, maximum=5)
        if self.max_interval is not None:
            int_field("max_interval", self.max_interval, minimum=0)
        if self.relative_to is not None and self.relative_to not in RELATIVE_TO:
            raise ValueError(f"relative_to must be one of {RELATIVE_TO}, got {self.relative_to!r}")

    @property
    def never_skips(self) -> bool:
        return self.max_interval == 0 or self.tolerance == 0

    @property
    def predictions_to_skip(self) -> int:
        """Stored predictions a skip needs: ``history + 1``, or ``MIN_SKIP_PREDICTIONS`` while a longer history fills
        (a pair of lower degree). Needs ``history`` resolved (:meth:`for_solver`)."""
        if self.history is None:
            raise ValueError("predictions_to_skip needs history set (ErrorControl.for_solver resolves it)")
        return min(self.history + 1, MIN_SKIP_PREDICTIONS)

    @staticmethod
    def order_class(solver_order: int) -> str:
        """``first`` (order 1), ``higher`` (orders 2-3) or ``fourth`` (4 and up) for a host solver's order."""
        return order_class(solver_order)

    def grid_tolerance(self, solver_order: int, median_log_snr_step: float | None) -> float | None:
        """The tolerance the default takes on this run's grid in place of its order's own (:func:`grid_tolerance`:
        looser for a first-order host on a coarse grid, tighter for a second- or third-order host on a very coarse
        one); ``None`` when the grid changes nothing, is not known, or a tolerance or ``max_interval`` is set."""
        if median_log_snr_step is None or self.tolerance is not None or self.max_interval is not None:
            return None
        return grid_tolerance(self.order_class(solver_order), median_log_snr_step)

    def very_coarse_grid(self, solver_order: int, median_log_snr_step: float | None) -> bool:
        """Whether the default tightens its tolerance for this run: a second- or third-order host, no tolerance or
        ``max_interval`` set, and a median log-SNR step above ``DIAL_BY_ORDER["higher"]["very_coarse_log_snr_step"]``
        (fewer than about 13 Karras steps). A grid between that and ``coarse_log_snr_step`` keeps the tolerance and
        skips one step in a row fewer (:func:`higher_order_max_interval`)."""
        return (
            self.order_class(solver_order) == "higher"
            and self.grid_tolerance(solver_order, median_log_snr_step) is not None
        )

    def exact_note(self, solver_order: int, median_log_snr_step: float | None = None) -> str | None:
        """Why the dial computes every step for this host (None when it may skip): a fourth-order host (LMS) under
        the default. (``median_log_snr_step`` is accepted for the engines' one call; no grid makes the dial exact.)"""
        if self.order_class(solver_order) != "fourth" or self.max_interval is not None:
            return None
        return (
            f"the host solver is of order {solver_order} (LMS): the accuracy dial computes every step (no acceleration): "
            "skipping its steps was measured to lose 8-18 dB on the shipped U-Net (docs/theory.md); "
            "ErrorControl(max_interval=1) skips anyway"
        )

    def grid_note(self, solver_order: int, median_log_snr_step: float | None = None) -> str | None:
        """What the grid changed in the dial (None if nothing; :func:`sada.config.dial.grid_note`): the default's
        tolerance (:meth:`grid_tolerance`), or on a second- or third-order host the run cap (an explicit
        ``max_interval`` or an unknown grid: None)."""
        if self.max_interval is not None or median_log_snr_step is None:
            return None
        tolerance = self.for_solver(solver_order).tolerance  # the default's, unless set
        return grid_note(
            solver_order, tolerance, median_log_snr_step, self.grid_tolerance(solver_order, median_log_snr_step)
        )

    def for_solver(self, solver_order: int, median_log_snr_step: float | None = None) -> ErrorControl:
        """This dial with every ``None`` field set to the host solver's value (:data:`DIAL_BY_ORDER`), the tolerance
        taken from the grid where it sets one (:meth:`grid_tolerance`; ``median_log_snr_step`` is the run's, ``None``
        if unknown)."""
        tolerance = self.grid_tolerance(solver_order, median_log_snr_step)
        if tolerance is not None:
            return dataclasses.replace(self, tolerance=tolerance).for_solver(solver_order, median_log_snr_step)
        values = DIAL_BY_ORDER[self.order_class(solver_order)]
        fields = {
            name: values[name] if getattr(self, name) is None else getattr(self, name)
            for name in ("tolerance", "history", "max_interval", "relative_to")
        }
        if fields["max_interval"] is None:  # second and third order: the run cap follows the tolerance and the grid
            fields["max_interval"] = higher_order_max_interval(fields["tolerance"], median_log_snr_step)
        return ErrorControl(**fields)

    @staticmethod
    def abscissa_for(solver_order: int) -> str:
        """The extrapolation's abscissa for the host solver unless ``Numerics.abscissa`` names one."""
        return DIAL_BY_ORDER[ErrorControl.order_class(solver_order)]["abscissa"]


@_accepts_old_names
@dataclass(frozen=True)
class Numerics(_Part):
    """How a skipped step is estimated and the criterion computed.

    Attributes:
        mode: ``paper`` reproduces the official numerics (docs/paper-mode.md); ``corrected`` derives the step
            estimate and the criterion on the run's real noise levels.
        criterion: which Criterion 3.4 decides (``paper`` or ``corrected``); ``None``: ``paper`` where the grid
            defines it (discrete VP with training betas, rectified flow), else ``corrected``.
        am_noise: noise of the step estimate's clean sample: ``reuse`` (paper) or ``extrapolate``; ``None``: the
            mode's.
        abscissa: the coordinate the multistep polynomial is written in: ``index`` (paper), ``t``, ``sigma``,
            ``lambda``; ``None``: the mode's (formerly ``lagrange_nodes``).
        lagrange_target: ``x0`` or ``x0_over_alpha``; ``None``: the official choice in paper mode on an Euler-type
            host (``x0 / alpha``), else ``x0``.
        step_error_rms: with a :class:`StepSchedule`, also veto a skip whose embedded local-error estimate, a
            relative RMS (error RMS over estimate RMS), exceeds this; ``None`` off. Corrected mode only (formerly
            ``error_tolerance``; not :attr:`ErrorControl.tolerance`, which is a ratio of two local errors).
        reintegrate: once the network runs again after skipped steps, re-integrate the skipped stretch with the
            clean predictions interpolated between the computed steps around it (the host's solver stepped again,
            no network; docs/theory.md). ``None``: where the host can step its solver again (diffusers' schedulers;
            k-diffusion's ``sample_euler`` and ``sample_dpmpp_2m``, steered through the denoiser's output) and the
            solver evaluates the model once per step -- always at order >= 2 (DPM-Solver++ 2M/3M, UniPC, DEIS),
            at first order (Euler, flow Euler, DDIM) from the dial's tolerance 0.01 on or on a fine grid (median
            log-SNR step at most 0.08, about 75 Karras steps and more); ``True``: on every such solver; ``False``:
            never. Not in paper mode.
    """

    mode: Mode = Mode.CORRECTED
    criterion: Mode | None = None
    am_noise: AmNoise | None = None
    abscissa: Abscissa | None = None
    lagrange_target: LagrangeTarget | None = None
    step_error_rms: float | None = None
    reintegrate: bool | None = None

    def __post_init__(self):
        object.__setattr__(self, "mode", choice(Mode, "mode", self.mode, optional=False))
        object.__setattr__(self, "criterion", choice(Mode, "criterion", self.criterion))
        object.__setattr__(self, "am_noise", choice(AmNoise, "am_noise", self.am_noise))
        object.__setattr__(self, "abscissa", choice(Abscissa, "abscissa", self.abscissa))
        object.__setattr__(self, "lagrange_target", choice(LagrangeTarget, "lagrange_target", self.lagrange_target))
        if self.step_error_rms is not None:
            object.__setattr__(self, "step_error_rms", real_field("step_error_rms", self.step_error_rms))
            if self.mode != Mode.CORRECTED:
                raise ValueError(
                    "step_error_rms needs mode='corrected' (its error estimate uses the corrected "
                    "estimator's noise history)"
                )
        if self.reintegrate is not None and not isinstance(self.reintegrate, bool):
            raise TypeError(f"reintegrate must be True, False or None, got {self.reintegrate!r}")
        if self.reintegrate and self.mode == Mode.PAPER:
            raise ValueError(
                "reintegrate=True needs mode='corrected': paper mode hands the solver the official outputs"
            )


@dataclass(frozen=True)
class TokenPruning(_Part):
    """Token-wise cache-assisted pruning of the transformer blocks on computed steps (paper section 3.5).

    Attributes:
        max_fix: most tokens recomputed per sample on a pruned step (beyond the anchors).
        max_downsample: U-Nets: prune the transformer blocks whose token grid is at most this many halvings below
            the latent (1 = full resolution only); 0 disables U-Net pruning.
        prune_blocks: DiTs: indices (in module order) of the transformer blocks to prune; empty = none.
        anchor_stride: window of the always-computed anchor grid (one random token per window).
        refresh_interval: a pruned block's token cache is refreshed (fully computed) at least every this many steps;
            ``None``: the schedule's ``max_interval`` (the official cadence, which ties it to the skip cap).
    """

    max_fix: int = 5 * 1024
    max_downsample: int = 0
    prune_blocks: tuple[int, ...] = ()
    anchor_stride: tuple[int, int] = (3, 3)
    refresh_interval: int | None = None

    def __post_init__(self):
        int_field("max_fix", self.max_fix, minimum=0)
        int_field("max_downsample", self.max_downsample, minimum=0, maximum=8)
        if not isinstance(self.prune_blocks, (tuple, list)):
            raise TypeError(f"prune_blocks must be a tuple of block indices, got {self.prune_blocks!r}")
        object.__setattr__(
            self,
            "prune_blocks",
            tuple(int_field(f"prune_blocks[{i}]", b, minimum=0) for i, b in enumerate(self.prune_blocks)),
        )
        object.__setattr__(self, "anchor_stride", pair_field("anchor_stride", self.anchor_stride, 1, 16))
        if self.refresh_interval is not None:
            int_field("refresh_interval", self.refresh_interval, minimum=1)

    @property
    def enabled(self) -> bool:
        """Whether any block is pruned (U-Net resolutions or DiT block indices)."""
        return self.max_downsample > 0 or bool(self.prune_blocks)
