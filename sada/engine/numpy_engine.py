"""The SADA engine in float64 numpy: the oracle every other engine (the torch engine) is tested against.

It implements the engine contract of :mod:`sada.engine.contract`; a run of ``N`` steps::

    for n in range(N):
        compute = engine.plan(n, x_n)              # closes step n-1 with x_n: criterion, decide step n
        output[compute] = network(x_n[compute])
        output = engine.complete(n, x_n, output)   # rows whose decision is a skip get the estimate
        x_{n+1} = solver(x_n, output)
    engine.finish(x_N)

or ``output = engine.step(n, x_n, network)``. ``x`` is the schedule's sample ``alpha x0 + sigma eps``
(canonical scaling); outputs are in the model's own parameterisation. Skipped rows receive
:func:`sada.trajectory.synthesise_output` of the estimated clean sample, so the unchanged solver consumes the
paper's ``x0`` estimate. Its plumbing is deliberately plain (a deque of per-step dicts, per-row loops), unlike
the torch engine's ring buffers, so the parity tests compare two independent implementations.

Modes (see :mod:`sada.reference.estimators`):

* ``paper`` on a discrete VP grid (docs/paper-mode.md) -- drift ``f`` from the *reused* raw network
  output, AM weights ``(5/8, 3/4, -3/8)`` with ``delta = 1/N``, multistep on step indices;
* ``paper`` on a rectified-flow grid (docs/paper-mode.md) -- criterion ``-Delta^2 v``, skips by velocity
  extrapolation, no stored nodes;
* ``corrected`` on any grid: EDM variables, Adams weights on the real noise levels, criterion with a
  divided-difference curvature, multistep on the configured abscissae. Every estimate is built from
  each sample's last *network evaluations* only (per-row ring buffers), never from earlier
  estimates: consecutive skips extrapolate further from real data instead of compounding.

``config.criterion`` can pair either criterion with either estimator (an ablation: the criterion
measures its residual against *its own* step estimate).

The engine is a shell (rows, replay, the trace); the rule of the config's schedule part records, decides and
estimates (:mod:`sada.engine.rules`: ``step_schedule``, ``paper_flow``, ``error_control``).
"""

from __future__ import annotations

import numpy as np

from sada.config import SADAConfig, SampleScaling
from sada.engine import rules as _rules  # noqa: F401  (registers the numpy rules)
from sada.engine.contract import StepSequence
from sada.engine.rules.base import rule_class
from sada.policy import Decision, make_policy
from sada.trace import Trace
from sada.trajectory import StepGrid
from sada.validation import as_int

__all__ = ["NumpyEngine"]


class NumpyEngine(StepSequence):
    """Per-sample SADA on numpy arrays ``[batch, ...]``; see the module docstring for the protocol."""

    def __init__(
        self,
        config: SADAConfig,
        grid: StepGrid,
        kind: str,
        batch_size: int,
        replay=None,
        sample_scaling: str = "schedule",
        solver_order: int = 2,
    ):
        self._configure(config, grid, kind, sample_scaling)
        self.batch_size = as_int("batch_size", batch_size, minimum=1)
        self.solver_order = as_int("solver_order", solver_order, minimum=1)
        self.replay = None if replay is None else np.asarray(replay, dtype=np.int8)
        if self.replay is not None and self.replay.shape != (self.num_steps, self.batch_size):
            raise ValueError(f"replay must have shape ({self.num_steps}, {self.batch_size}), got {self.replay.shape}")
        requested = self.config
        self.config = self.config.for_solver(self.solver_order, grid.median_log_snr_step)  # the dial's unset fields
        self.policy = make_policy(self.config, self.num_steps, self.batch_size)
        self.trace = Trace(self.num_steps, self.batch_size)
        cls = rule_class("numpy", self.config.schedule, self.settings)
        self.rule = cls(
            self.config,
            self.settings,
            grid,
            self.kind,
            self.batch_size,
            SampleScaling(sample_scaling),
            self.solver_order,
            self.policy,
            self.trace,
        )
        exact_note = getattr(requested.schedule, "exact_note", None)
        note = (
            exact_note(self.solver_order, grid.median_log_snr_step)
            if exact_note is not None
            else self.rule.uncertified_note()
        )
        if note is not None and not requested.never_skips:
            self.trace.note(0, note)
        self._step = 0

    # ---------------------------------------------------------------- contract internals
    def _begin(self, step: int, x) -> np.ndarray:
        """Close the previous step with its result ``x`` and return the decisions for ``step``."""
        step = as_int("step", step, minimum=0)
        if step != self._step or step >= self.num_steps:
            raise ValueError(f"plan expects step {self._step} (< {self.num_steps}), got {step}")
        x = self._check_x(x)
        if step > 0:
            self._close(step - 1, x)
        decisions = self.policy.decisions[step] if self.replay is None else self.replay[step]
        self.trace.record_decisions(step, decisions)
        return decisions.copy()

    def _synthesise(self, step: int, x) -> np.ndarray:
        """The model output for every row as if it were skipped (rows that compute are overwritten)."""
        return self.rule.synthesise(step, self._check_x(x))

    def _record(self, step: int, x, output) -> None:
        """Store what the solver consumes at ``step`` (``output`` for all rows, real or synthesised)."""
        x, output = self._check_x(x), self._check_x(output, "output")
        self.rule.record(step, x, output, self.trace.decisions[step] == Decision.COMPUTE)
        self._step = step + 1

    def finish(self, x_final) -> Trace:
        """Close the last step (criterion only, for the trace) and return the trace."""
        if self._step != self.num_steps:
            raise ValueError(f"finish() after step {self._step - 1}; the run has {self.num_steps} steps")
        self._close(self.num_steps - 1, self._check_x(x_final))
        return self.trace

    def _stage_output(self, step: int, edm_sigma: float, x) -> np.ndarray:
        raise NotImplementedError(
            "the numpy engine drives one evaluation per step; two-stage solvers use the torch engine"
        )

    # ---------------------------------------------------------------- internals
    def _check_x(self, x, name: str = "x") -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 2 or x.shape[0] != self.batch_size:
            raise ValueError(f"{name} must have shape [batch={self.batch_size}, ...], got {x.shape}")
        return x

    def _close(self, step: int, x_next: np.ndarray) -> None:
        """The rule's criterion or error test of ``step`` and its decisions for ``step + 1`` (or the replayed ones),
        then the estimates of the rows that skip."""
        decisions = self.rule.decide(step, x_next)
        if decisions is None:
            return
        if self.replay is not None:
            decisions = self.replay[step + 1]
        self.rule.prepare(step, x_next, decisions)
