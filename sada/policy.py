"""The decision state machines, on boolean masks only (docs/paper-mode.md, docs/theory.md; AdaptiveDiffusion).

:class:`SkipPolicy` runs the authors' :class:`~sada.config.StepSchedule`: at step ``n`` (after the solver produced
``x_{n+1}``) it turns the stability of each sample into the decision for step ``n + 1``:

1. ``cons_skip >= max_interval``  -> compute (forced refresh), ``cons_skip = 0``;
2. no multistep, stable, ``acc_start <= n < acc_end``          -> skip with the step estimate (AM);
3. multistep, stable, ``acc_start <= n < lagrange_step``       -> skip with the step estimate (AM);
4. multistep, ``n % lagrange_int != 0``, ``lagrange_step <= n < acc_end`` -> skip with the multistep
   (Lagrange) estimate;
5. otherwise compute, ``cons_skip = 0``.

:class:`ErrorControlPolicy` runs the schedule-free :class:`~sada.config.ErrorControl`: step ``n + 1`` is skipped
with the multistep estimate wherever the engine found its error acceptable, at most ``max_interval`` times in a
row, never one of the last ``protected_tail`` steps (two; one on a run whose host re-integrates skipped stretches on a
VP / VE grid from the dial's tolerance 0.01: :func:`sada.torch_backend.reintegration.protected_tail`). Each sample has
its own counter, so in per-sample mode sample ``i``'s decisions depend only on its own flags. :class:`AdaptiveDiffusionPolicy` is the baseline of Ye et al. (2024).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from sada import kernels
from sada.config import ErrorControl, SADAConfig, StepSchedule
from sada.validation import as_int, as_real

__all__ = ["Decision", "SkipPolicy", "ErrorControlPolicy", "make_policy", "AdaptiveDiffusionPolicy", "simulate"]


class Decision(IntEnum):
    """What happens at a step for one sample."""

    COMPUTE = 0
    SKIP_AM = 1
    SKIP_LAGRANGE = 2


def _mask(name: str, value, batch: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype != np.bool_:
        raise TypeError(f"{name} must be a boolean mask, got dtype {arr.dtype}")
    if arr.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {arr.shape}")
    return arr


class _Policy:
    """Counters and the decision table shared by the two SADA policies."""

    def __init__(self, schedule, num_steps: int, batch_size: int = 1):
        self.schedule = schedule
        self.num_steps = as_int("num_steps", num_steps, minimum=2)
        self.batch_size = as_int("batch_size", batch_size, minimum=1)
        self.reset()

    def reset(self) -> None:
        """Forget the run: counters back to zero, every step computes until decided otherwise."""
        self.cons_skip = np.zeros(self.batch_size, dtype=np.int64)
        self.decisions = np.full((self.num_steps, self.batch_size), Decision.COMPUTE, dtype=np.int8)
        self._next_step = 0

    def _check_step(self, step: int) -> int:
        step = as_int("step", step, minimum=0)
        if step != self._next_step:
            raise ValueError(f"decide() must be called for steps in order: expected step {self._next_step}, got {step}")
        if step >= self.num_steps - 1:
            raise ValueError(f"step must be < num_steps - 1 = {self.num_steps - 1}: there is no step after it")
        return step

    def _commit(self, step: int, out: np.ndarray, can_skip) -> np.ndarray:
        if can_skip is not None:
            out[~_mask("can_skip", can_skip, self.batch_size)] = Decision.COMPUTE
        skipped = out != Decision.COMPUTE
        self.cons_skip = np.where(skipped, self.cons_skip + 1, 0)
        self.decisions[step + 1] = out
        self._next_step = step + 1
        return out


class SkipPolicy(_Policy):
    """SADA's per-sample decision machine for the authors' step schedule, one run of ``num_steps`` steps."""

    def __init__(self, config: SADAConfig | StepSchedule, num_steps: int, batch_size: int = 1):
        schedule = config.schedule if isinstance(config, SADAConfig) else config
        if not isinstance(schedule, StepSchedule):
            raise TypeError(f"SkipPolicy runs a StepSchedule, got {type(schedule).__name__}")
        n = as_int("num_steps", num_steps, minimum=2)
        super().__init__(schedule.replace(num_steps=n), n, batch_size)

    def is_node(self, step: int) -> bool:
        """Whether the multistep estimate stores a node at ``step`` (``step % lagrange_int == 1``)."""
        return self.schedule.uses_lagrange and step % self.schedule.lagrange_int == 1

    def skip_kind(self, step: int) -> Decision:
        """The kind of skip a decision at ``step`` can produce: multistep in the Lagrange regime, else AM."""
        s = self.schedule
        if s.uses_lagrange and s.lagrange_step <= step:
            return Decision.SKIP_LAGRANGE
        return Decision.SKIP_AM

    def decide(self, step: int, stable, can_skip=None) -> np.ndarray:
        """Decide step ``step + 1`` from each sample's stability at ``step`` (``None``: no criterion yet).

        ``can_skip`` (optional mask) vetoes skips for samples whose estimate cannot be formed (e.g. after
        a non-finite model output); a vetoed sample computes and its skip counter restarts. Must be
        called once per step, in order. Returns the int8 :class:`Decision` per sample.
        """
        step = self._check_step(step)
        stable = np.zeros(self.batch_size, bool) if stable is None else _mask("stable", stable, self.batch_size)
        s = self.schedule
        out = np.full(self.batch_size, Decision.COMPUTE, dtype=np.int8)
        forced = self.cons_skip >= s.max_interval
        if s.uses_lagrange:
            am = stable & (s.acc_start <= step < s.lagrange_step)
            lagrange = (step % s.lagrange_int != 0) and (s.lagrange_step <= step < s.acc_end)
            out[~forced & am] = Decision.SKIP_AM
            if lagrange:
                out[~forced & ~am] = Decision.SKIP_LAGRANGE
        else:
            out[~forced & stable & (s.acc_start <= step < s.acc_end)] = Decision.SKIP_AM
        return self._commit(step, out, can_skip)


class ErrorControlPolicy(_Policy):
    """The schedule-free decision machine (:class:`~sada.config.ErrorControl`): skip wherever the engine's error
    test passes, at most ``max_interval`` steps in a row, never one of the last ``protected_tail`` steps (default two:
    skipping the second-to-last step cost up to 11 dB on the shipped flow model at 25 steps, docs/benchmarks.md; a
    host that re-integrates skipped stretches may pass one, :func:`sada.torch_backend.reintegration.protected_tail`)."""

    def __init__(self, config: SADAConfig | ErrorControl, num_steps: int, batch_size: int = 1, protected_tail: int = 2):
        schedule = config.schedule if isinstance(config, SADAConfig) else config
        if isinstance(schedule, StepSchedule) or not isinstance(getattr(schedule, "max_interval", None), int):
            raise TypeError(
                f"ErrorControlPolicy runs an ErrorControl (or another schedule-free part with an int "
                f"max_interval), got {type(schedule).__name__}"
            )
        self.protected_tail = as_int("protected_tail", protected_tail, minimum=1)  # the last steps that always compute
        super().__init__(schedule, num_steps, batch_size)

    def is_node(self, step: int) -> bool:
        return False  # every computed step is a node of the engine's own history

    def skip_kind(self, step: int) -> Decision:
        return Decision.SKIP_LAGRANGE

    def decide(self, step: int, stable=None, can_skip=None) -> np.ndarray:
        """Decide step ``step + 1``: skip where ``can_skip`` (the engine's error test) holds. ``stable`` is ignored
        (accepted so both policies share one call)."""
        step = self._check_step(step)
        out = np.full(self.batch_size, Decision.COMPUTE, dtype=np.int8)
        if can_skip is not None and step + 1 < self.num_steps - self.protected_tail:
            allowed = _mask("can_skip", can_skip, self.batch_size) & (self.cons_skip < self.schedule.max_interval)
            out[allowed] = Decision.SKIP_LAGRANGE
        return self._commit(step, out, None)


def make_policy(
    config: SADAConfig, num_steps: int, batch_size: int = 1, protected_tail: int | None = None
) -> SkipPolicy | ErrorControlPolicy:
    """The decision machine of ``config``'s schedule: :class:`SkipPolicy` for a :class:`StepSchedule`,
    :class:`ErrorControlPolicy` (skip where the rule's test allows) for :class:`ErrorControl` and any other part.
    ``protected_tail``: the last steps an :class:`ErrorControlPolicy` never skips (``None``: its default, two); a
    :class:`StepSchedule` keeps its own ``acc_range``, so passing one with it is an error."""
    if not isinstance(config, SADAConfig):
        raise TypeError(f"config must be a SADAConfig, got {type(config).__name__}")
    if isinstance(config.schedule, StepSchedule):
        if protected_tail is not None:
            raise ValueError(
                f"protected_tail={protected_tail!r} applies to a schedule-free part; a StepSchedule's acc_range sets "
                "its last skippable step"
            )
        return SkipPolicy(config, num_steps, batch_size)
    if protected_tail is None:
        return ErrorControlPolicy(config, num_steps, batch_size)
    return ErrorControlPolicy(config, num_steps, batch_size, protected_tail)


def simulate(config: SADAConfig, num_steps: int, stable_pattern) -> np.ndarray:
    """Run :class:`SkipPolicy` on a fixed stability pattern ``[step, sample]`` and return all decisions."""
    pattern = np.asarray(stable_pattern, dtype=bool)
    if pattern.ndim == 1:
        pattern = pattern[:, None]
    if pattern.shape[0] < num_steps - 1:
        raise ValueError(f"stable_pattern needs {num_steps - 1} rows, got {pattern.shape[0]}")
    policy = make_policy(config, num_steps, pattern.shape[1])
    for n in range(num_steps - 1):
        policy.decide(n, pattern[n] if n >= 2 else None)
    return policy.decisions.copy()


class AdaptiveDiffusionPolicy:
    """AdaptiveDiffusion (Ye et al. 2024): reuse the last output while latents move evenly.

    After each step the sampler reports ``d = mean |x_{n+1} - x_n|`` per sample. Steps 0-3 always
    compute; step ``n + 1`` is skipped when :func:`sada.kernels.adaptive_diffusion_skip` holds, unless
    none of the last ``max_skip_steps`` decisions computed (then it is forced to compute).
    """

    def __init__(self, num_steps: int, batch_size: int = 1, threshold: float = 0.01, max_skip_steps: int = 4):
        self.num_steps = as_int("num_steps", num_steps, minimum=2)
        self.batch_size = as_int("batch_size", batch_size, minimum=1)
        self.threshold = as_real("threshold", threshold)
        if self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.max_skip_steps = as_int("max_skip_steps", max_skip_steps, minimum=1)
        self.reset()

    def reset(self) -> None:
        self.distances: list[np.ndarray] = []
        self.decisions = np.full((self.num_steps, self.batch_size), Decision.COMPUTE, dtype=np.int8)
        self._next_step = 0

    def decide(self, step: int, distance) -> np.ndarray:
        """Decide step ``step + 1`` from this step's per-sample latent change ``distance``."""
        step = as_int("step", step, minimum=0)
        if step != self._next_step or step >= self.num_steps - 1:
            raise ValueError(f"decide() expects step {self._next_step} (< {self.num_steps - 1}), got {step}")
        d = np.asarray(distance, dtype=np.float64).reshape(-1)
        if d.shape != (self.batch_size,) or not np.all(np.isfinite(d)):
            raise ValueError(f"distance must be {self.batch_size} finite values, got {distance!r}")
        self.distances.append(d)
        out = np.full(self.batch_size, Decision.COMPUTE, dtype=np.int8)
        if step >= 3 and len(self.distances) >= 3:
            window = self.decisions[step + 1 - self.max_skip_steps : step + 1]
            forced = (
                np.all(window != Decision.COMPUTE, axis=0)
                if step + 1 >= self.max_skip_steps
                else np.zeros(self.batch_size, bool)
            )
            d_new, d_prev, d_prev2 = (self.distances[-k] for k in (1, 2, 3))
            skip = kernels.adaptive_diffusion_skip(d_new, d_prev, d_prev2, self.threshold)
            out[skip & ~forced] = Decision.SKIP_AM
        self.decisions[step + 1] = out
        self._next_step = step + 1
        return out
