"""The accuracy dial's settings per host solver order, and the rule that sets how many steps in a row a second- or
third-order host may skip (:class:`sada.config.ErrorControl` reads both; docs/theory.md, "The accuracy dial")."""

from __future__ import annotations

import math

from sada.config.fields import real_field

__all__ = [
    "DIAL_BY_ORDER",
    "MIN_SKIP_PREDICTIONS",
    "RELATIVE_TO",
    "grid_note",
    "grid_tolerance",
    "higher_order_max_interval",
    "order_class",
    "spare_skip_note",
]


# The accuracy dial's settings per host solver order (docs/theory.md, "The accuracy dial"; measured on the tuning
# seeds of the benchmark, docs/benchmarks.md). First-order solvers (Euler, DDIM, flow Euler): a linear extrapolation in
# the schedule's time, up to 6 skips in a row, the error measured relative to the sample ``x / alpha`` (what it leaves
# in the final sample: at 50 steps 2.2-2.5x at the full run's fidelity where relative to the clean sample gave
# 1.7-2.3x). On a coarse grid (median log-SNR step above 0.16: fewer than about 38 Karras, 34 flow-matching or 25 trailing steps)
# the first-order tolerance loosens to 0.005: there the solver's own error is larger than what a skip adds at 0.002-0.005,
# and on the tuning seeds at 15-30 steps 0.005 was ahead of 0.002 against the plain grid at equal evaluations on every
# first-order host (flow Euler at both shifts, Euler on Karras / trailing sigmas, k-diffusion's Euler; e.g. flow Euler at
# 25 steps +0.24 -> +5.03 dB at 1.02x -> 1.65x, above its own full run) and within 0.4 dB of its full run but on
# k-diffusion's Euler at 30 steps (-0.8, where 0.002 was -1.1). Second and third order (DPM-Solver++ 2M/3M, UniPC, DEIS, Heun): a quadratic in the EDM noise level
# ``sigma / alpha`` (a line while the history fills: the first skip may come at the fourth step; the clean-sample
# prediction is analytic in it at the clean end; at 3-3.6x past the default log-SNR lost 1-12 dB to the plain grid
# while ``sigma`` kept DPM-Solver++ 2M 3.5-5.3 dB ahead and 3M within 1 dB, UniPC 1-2 dB behind), the error also
# measured relative to the sample (at 50 steps 1.85x where relative to the clean sample, waiting for four
# predictions, gave 1.78x, at equal or better fidelity). The run cap follows the tolerance: each doubling past 0.01
# allows one more skip in a row, up to 4 (:func:`higher_order_max_interval`); the estimate under-estimates what a run
# adds on these hosts, so the cap decides. The default 0.03 allows two in a row (2.5x at 50 steps): on the tuning
# seeds it was ahead of the same solver's plain grid at equal evaluations by more than every-other-step (0.02, 1.85x)
# on DPM-Solver++ 2M / 3M, UniPC and Heun at 50, 60 and 90 Karras steps and on the MMDiT's DPM-Solver++ 2M / UniPC
# with flow sigmas at 50 and 100 steps (e.g. UniPC at 60 steps -3.5 -> +3.0 dB, 2M +0.0 -> +6.8), within 0.2 dB at
# 40-50 UniPC steps. (With the earlier log-SNR abscissa and a small tolerance, runs of skips had lost 9-12 dB on the
# Karras DPM-Solver++ 2M run; in the noise level they do not.)
# On a fine grid (median log-SNR step at most 0.08, half the coarse limit: about 75 Karras steps and more) the cap
# allows one more skip in a row (the default: three): on the tuning seeds at 80-100 steps three in a row were further
# ahead of the same solver's plain grid than two on 11 of 15 cells (e.g. DPM-Solver++ 3M at 100 steps -0.9 -> +4.2,
# k-diffusion 2M on exponential sigmas -1.9 -> +4.3, UniPC at 80 steps -0.2 -> +3.2) and within 1.6 dB on the other 4
# (the MMDiT's flow solvers at shift 1 stayed 11 dB ahead), with 20-28 % fewer evaluations.
# On a coarse grid (median log-SNR step above 0.16: fewer than about 38 Karras steps) the cap allows one skip in a row
# fewer, at least one (the default: every other step at most): on the tuning seeds at 20-36 Karras steps every other
# step was ahead of the same solver's plain grid at equal evaluations on every host tried (+0.9 to +6.5 dB: UniPC,
# DPM-Solver++ 2M / 3M, Heun, k-diffusion's 2M / Heun on Karras and exponential sigmas, the MMDiT's flow solvers at
# both shifts), where two in a row were mixed (-1.5 to +1.3 on UniPC at 26-34 steps); at 12-18 steps every other step
# was ahead too (DPM-Solver++ 2M +2.6 to +6.2, 3M +4.8 to +8.4, k-diffusion 2M / Heun +0.3 to +6.2, the MMDiT's flow
# solvers +1.3 to +4.6 down to 6 steps) and on UniPC a tie (-0.7 to +1.2 at 13-17 steps, +1.2 at 12). On a very
# coarse grid (median log-SNR step above 0.48, three times the coarse limit: fewer than about 13 Karras steps, 11 flow
# steps, 9 trailing steps) the default tolerance tightens to 0.002: at 10 Karras steps (0.65) every other step lost
# 2.0-3.4 dB on UniPC and DPM-Solver++ 2M, where at 0.002 the U-Net's hosts skip at most one step in ten (6-12 Karras
# steps: within 0.03 dB of the plain grid or ahead, up to +2.4 on k-diffusion's exponential sigmas) and the MMDiT's
# flow solvers, whose early steps are smooth, skip one to three (1.20-1.43x at 6-12 steps, +0.5 to +3.5 dB over the
# plain grid at equal evaluations). (Earlier rules computed every step there, and before that below 38 Karras steps:
# measured with the log-SNR abscissa, skipping there had lost 2-11 dB; in the noise level it does not.)
# Fourth order and up (LMS): every step computes -- interleaved skips lost 8-18 dB on the shipped U-Net through
# k-diffusion (11 dB to its own full run at 50 exponential steps); an explicit max_interval still lets it skip.
DIAL_BY_ORDER: dict[str, dict] = {
    "first": {
        "tolerance": 0.002,
        "history": 2,
        "max_interval": 6,
        "abscissa": "t",
        "relative_to": "sample",
        "coarse_log_snr_step": 0.16,  # on a coarser grid the default tolerance is coarse_tolerance
        "coarse_tolerance": 0.005,
    },
    "higher": {
        "tolerance": 0.03,
        "history": 3,
        "max_interval": None,  # by tolerance (higher_order_max_interval)
        "abscissa": "sigma",
        "relative_to": "sample",
        "very_coarse_log_snr_step": 0.48,  # on a coarser grid the default tolerance is very_coarse_tolerance
        "very_coarse_tolerance": 0.002,
        "coarse_log_snr_step": 0.16,  # a coarser grid allows one skip in a row fewer (higher_order_max_interval)
        "fine_log_snr_step": 0.08,  # a grid this fine allows one more skip in a row (higher_order_max_interval)
    },
    "fourth": {"tolerance": 0.02, "history": 3, "max_interval": 0, "abscissa": "sigma", "relative_to": "sample"},
}


RELATIVE_TO = ("sample", "clean")  # what ErrorControl's estimated error is relative to

# The fewest stored predictions a skip needs: a linear extrapolation and the embedded quadratic that estimates its
# error. A longer history (second and third order: 3 + 1) is used once it has filled; until then the pair is one
# degree lower, so a skip may come one step earlier (the fourth step instead of the fifth).
MIN_SKIP_PREDICTIONS = 3


def higher_order_max_interval(tolerance: float, median_log_snr_step: float | None = None) -> int:
    """The most consecutive skips the dial allows on a second- or third-order host at ``tolerance``: 1 up to 0.02
    (every other step at most), one more per doubling of the tolerance (2 up to 0.04, the default 0.03 among them;
    3 up to 0.08), 4 beyond; on a fine grid (``median_log_snr_step`` at most
    ``DIAL_BY_ORDER["higher"]["fine_log_snr_step"]``, about 75 Karras steps and more) one more, up to 4; on a coarse
    one (above ``DIAL_BY_ORDER["higher"]["coarse_log_snr_step"]``, fewer than about 38 Karras steps) one fewer, at
    least 1 (on a grid coarser than ``very_coarse_log_snr_step`` the default tolerance is ``very_coarse_tolerance``:
    :meth:`ErrorControl.very_coarse_grid`). The embedded
    pair under-estimates what a run of skips adds on these hosts, so the cap, not the estimate, limits the runs; it
    loosens as the user accepts more error and as the steps get shorter (measured in docs/benchmarks.md)."""
    tolerance = real_field("tolerance", tolerance, positive=False)
    base = 1 if tolerance <= 0.02 else min(4, math.ceil(math.log2(tolerance / 0.01) - 1e-9))
    if median_log_snr_step is not None:
        step = real_field("median_log_snr_step", median_log_snr_step, positive=False)
        base += step <= DIAL_BY_ORDER["higher"]["fine_log_snr_step"]
        base -= step > DIAL_BY_ORDER["higher"]["coarse_log_snr_step"]
    return max(1, min(4, base))


def grid_tolerance(order_class: str, median_log_snr_step: float) -> float | None:
    """The tolerance the default takes on this grid in place of its order's own (``None``: the order's own): a
    first-order host on a coarse grid (median log-SNR step above ``DIAL_BY_ORDER["first"]["coarse_log_snr_step"]``,
    fewer than about 38 Karras or 25 flow-matching steps) ``coarse_tolerance``, looser: there the solver's own error is
    larger and the looser tolerance was ahead of the tighter one at equal evaluations; a second- or third-order host on
    a very coarse grid (above ``DIAL_BY_ORDER["higher"]["very_coarse_log_snr_step"]``, fewer than about 13 Karras
    steps) ``very_coarse_tolerance``, tighter (docs/theory.md, "Coarse grids")."""
    if order_class not in DIAL_BY_ORDER:
        raise ValueError(f"order_class must be one of {sorted(DIAL_BY_ORDER)}, got {order_class!r}")
    step = real_field("median_log_snr_step", median_log_snr_step, positive=False)
    if order_class == "first" and step > DIAL_BY_ORDER["first"]["coarse_log_snr_step"]:
        return DIAL_BY_ORDER["first"]["coarse_tolerance"]
    if order_class == "higher" and step > DIAL_BY_ORDER["higher"]["very_coarse_log_snr_step"]:
        return DIAL_BY_ORDER["higher"]["very_coarse_tolerance"]
    return None


def order_class(solver_order: int) -> str:
    """``first`` (order 1), ``higher`` (orders 2-3) or ``fourth`` (4 and up) for a host solver's order."""
    if isinstance(solver_order, bool) or not isinstance(solver_order, int) or solver_order < 1:
        raise ValueError(f"solver_order must be an int >= 1, got {solver_order!r}")
    return "first" if solver_order == 1 else "higher" if solver_order <= 3 else "fourth"


def grid_note(solver_order: int, tolerance: float, median_log_snr_step: float, grid: float | None) -> str | None:
    """The trace's note on what the grid changed in the dial (None if nothing): ``grid``, the tolerance the grid set in
    place of ``tolerance`` (:func:`grid_tolerance`; ``None`` if it set none), else on a second- or third-order host the
    run cap the grid lowered or raised (:func:`higher_order_max_interval`)."""
    kind = order_class(solver_order)
    step = real_field("median_log_snr_step", median_log_snr_step, positive=False)
    if grid is not None and kind == "first":
        return (
            f"the grid is coarse for a solver of order 1 (median log-SNR step {step:.3g} > "
            f"{DIAL_BY_ORDER['first']['coarse_log_snr_step']:g}, fewer than about 38 Karras steps): the accuracy dial "
            f"uses tolerance={grid:g} instead of {tolerance:g}: the solver's own error is larger there, and the looser "
            'tolerance was ahead at equal evaluations (docs/theory.md, "Coarse grids")'
        )
    if grid is not None:
        return (
            f"the grid is very coarse for a solver of order {solver_order} (median log-SNR step {step:.3g} > "
            f"{DIAL_BY_ORDER['higher']['very_coarse_log_snr_step']:g}, fewer than about 13 Karras steps): the accuracy "
            f"dial uses tolerance={grid:g} instead of {tolerance:g} and skips at most 1 step in a row, where the grid "
            "lets an extrapolation be accurate (every other step there lost 2-3 dB to the plain solver; docs/theory.md, "
            '"Coarse grids")'
        )
    if kind != "higher":
        return None
    base, cap = higher_order_max_interval(tolerance), higher_order_max_interval(tolerance, step)
    if cap == base:
        return None
    coarse = cap < base
    limit = DIAL_BY_ORDER["higher"]["coarse_log_snr_step" if coarse else "fine_log_snr_step"]
    return (
        f"the grid is {'coarse' if coarse else 'fine'} for a solver of order {solver_order} (median log-SNR step "
        f"{step:.3g} {'>' if coarse else '<='} {limit:g}): the accuracy dial skips at most {cap} "
        f"step{'s' if cap > 1 else ''} in a row, one {'fewer' if coarse else 'more'} than tolerance="
        f'{tolerance:g} allows on a {"finer" if coarse else "coarser"} grid (docs/theory.md, "Coarse grids")'
    )


def spare_skip_note(max_interval: int, num_steps: int, protected_tail: int) -> str | None:
    """The trace's note when an odd step count leaves a skippable step unused (None otherwise): with at most one skip
    in a row the skips can fall on every other step from the first one a skip can take (``MIN_SKIP_PREDICTIONS``,
    the fourth step) to the last before the ``protected_tail``; when that stretch holds an even number of steps, one
    more step costs no more evaluations (15 and 16 steps both run 10 at the most skips; docs/troubleshooting.md)."""
    for name, value in (("max_interval", max_interval), ("num_steps", num_steps), ("protected_tail", protected_tail)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    slots = num_steps - protected_tail - MIN_SKIP_PREDICTIONS
    if max_interval != 1 or slots < 2 or slots % 2:
        return None
    fewest = num_steps - slots // 2
    return (
        f"{num_steps} steps with at most one skip in a row: the skips can fall on every other step from the "
        f"{_ordinal(MIN_SKIP_PREDICTIONS + 1)} to the {_ordinal(num_steps - protected_tail)}, so one step of that stretch stays "
        f"unused; {num_steps} and {num_steps + 1} steps both run {fewest} evaluations at the most skips, and the "
        "extra step makes every step shorter (docs/troubleshooting.md)"
    )


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
