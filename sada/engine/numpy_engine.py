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
"""
from __future__ import annotations

from collections import deque

import numpy as np

from sada import kernels
from sada.config import ErrorControl, SADAConfig, SampleScaling, Variant
from sada.engine.contract import StepSequence
from sada.engine.numpy_history import RowRing
from sada.policy import Decision, make_policy
from sada.reference import (
    adams_coefficients as corrected_step_weights_on,
    embedded_pair_weights,
    flow_stability_product,
    lagrange_basis_weights,
    multistep_estimate,
    paper_step_estimate,
    paper_vp_drift,
    second_difference,
    second_divided_difference,
    stability_product,
)
from sada.validation import as_int
from sada.trace import Trace
from sada.trajectory import StepGrid, convert, synthesise_output, to_eps, to_x0

__all__ = ["NumpyEngine"]


class NumpyEngine(StepSequence):
    """Per-sample SADA on numpy arrays ``[batch, ...]``; see the module docstring for the protocol."""

    def __init__(self, config: SADAConfig, grid: StepGrid, kind: str, batch_size: int, replay=None,
                 sample_scaling: str = "schedule", solver_order: int = 2):
        self._configure(config, grid, kind, sample_scaling)
        self.batch_size = as_int("batch_size", batch_size, minimum=1)
        self.sample_scaling = SampleScaling(sample_scaling)
        self.error_control = isinstance(self.config.schedule, ErrorControl)
        self.solver_order = as_int("solver_order", solver_order, minimum=1)
        self.replay = None if replay is None else np.asarray(replay, dtype=np.int8)
        if self.replay is not None and self.replay.shape != (self.num_steps, self.batch_size):
            raise ValueError(f"replay must have shape ({self.num_steps}, {self.batch_size}), got {self.replay.shape}")
        self.policy = make_policy(self.config, self.num_steps, self.batch_size)
        self.trace = Trace(self.num_steps, self.batch_size)
        self._abscissae = grid.abscissae(self.settings.abscissa)
        self._log_snr = grid.log_snr
        self._edm_sigma = grid.edm_sigma
        self._history: deque = deque(maxlen=3)  # per step, oldest first
        self._nodes = RowRing(max(getattr(self.config.schedule, "lagrange_term", 1), 1))  # (abscissa, x0) per row
        schedule = self.config.schedule
        depth = max(schedule.nodes, schedule.test_order(self.solver_order) + 1) \
            if isinstance(schedule, ErrorControl) else 1
        self._recent = [deque(maxlen=depth) for _ in range(self.batch_size)]  # error control: (log-SNR, x0) per row
        self._certified = not isinstance(schedule, ErrorControl) or schedule.certifies(self.solver_order)
        if not self._certified and not self.config.never_skips:
            self.trace.note(0, schedule.uncertified_note(self.solver_order))
        self._eps_nodes = RowRing(3)  # corrected mode: each row's last three computed noise predictions
        self._last_raw = None
        self._estimate = None  # clean-sample estimate for the next step, per row
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
        x = self._check_x(x)
        alpha, sigma = self.grid.alpha[step], self.grid.sigma[step]
        if self.error_control:
            return np.zeros_like(x) if self._estimate is None else \
                synthesise_output(self.kind, self._estimate, x, alpha, sigma)
        if self._last_raw is None:
            return np.zeros_like(x)
        if self.estimator == Variant.PAPER_FLOW:
            raws = [h["raw_velocity"] for h in self._history][-2:]
            last = convert(self._last_raw, self.kind, "flow_velocity", x, alpha, sigma)
            velocity = kernels.flow_velocity_extrapolation(raws[-1], raws[-2]) if len(raws) == 2 else last
            return convert(velocity, "flow_velocity", self.kind, x, alpha, sigma)
        if self._estimate is None:
            return self._last_raw.copy()
        return synthesise_output(self.kind, self._estimate, x, alpha, sigma)

    def _record(self, step: int, x, output) -> None:
        """Store what the solver consumes at ``step`` (``output`` for all rows, real or synthesised)."""
        x, output = self._check_x(x), self._check_x(output, "output")
        computed = self.trace.decisions[step] == Decision.COMPUTE
        if self._last_raw is None and not computed.all():
            raise ValueError(f"step {step}: a skip needs a computed step before it")
        rows = computed.reshape((-1,) + (1,) * (x.ndim - 1))
        raw = output.copy() if self._last_raw is None else np.where(rows, output, self._last_raw)
        self._last_raw = raw
        alpha, sigma = self.grid.alpha[step], self.grid.sigma[step]
        entry = {"x": x.copy(), "used": output.copy(), "raw": raw,
                 "eps": to_eps(self.kind, output, x, alpha, sigma)}
        if self.error_control:  # the schedule-free history only: (log-SNR, x0) of the rows that ran the network
            if np.isfinite(self._log_snr[step]):
                x0 = to_x0(self.kind, output, x, alpha, sigma)
                for b in np.flatnonzero(computed):
                    self._recent[b].appendleft((self._log_snr[step], x0[b]))  # newest first
            self._step = step + 1
            return
        if Variant.PAPER_VP in (self.estimator, self.criterion):
            raw_eps = to_eps(self.kind, raw, x, alpha, sigma)
            entry["drift"] = paper_vp_drift(x, raw_eps, self.grid.training_beta[step], sigma, self.num_steps)
        if Variant.PAPER_FLOW in (self.estimator, self.criterion):
            entry["velocity"] = convert(output, self.kind, "flow_velocity", x, alpha, sigma)
            entry["raw_velocity"] = convert(raw, self.kind, "flow_velocity", x, alpha, sigma)
        self._history.append(entry)
        if np.isfinite(self._edm_sigma[step]):
            self._eps_nodes.push(computed, self._edm_sigma[step], entry["eps"])
        if self.policy.is_node(step) and self.estimator != Variant.PAPER_FLOW:
            # paper: every row stores the x0 it used; corrected: only rows that ran the network
            rows = computed if self.estimator == Variant.CORRECTED else np.ones_like(computed)
            scale = 1.0 / alpha if self.lagrange_target == "x0_over_alpha" else 1.0
            x0 = to_x0(self.kind, output, x, alpha, sigma)
            if self._estimate is not None:  # paper: a skipped row's node is the estimate it consumed
                x0 = np.where(computed.reshape((-1,) + (1,) * (x.ndim - 1)), x0, self._estimate)
            self._nodes.push(rows, self._abscissae[step], scale * x0)
        self._step = step + 1

    def finish(self, x_final) -> Trace:
        """Close the last step (criterion only, for the trace) and return the trace."""
        if self._step != self.num_steps:
            raise ValueError(f"finish() after step {self._step - 1}; the run has {self.num_steps} steps")
        self._close(self.num_steps - 1, self._check_x(x_final))
        return self.trace

    def _stage_output(self, step: int, edm_sigma: float, x) -> np.ndarray:
        raise NotImplementedError("the numpy engine drives one evaluation per step; two-stage solvers use the "
                                  "torch engine")

    # ---------------------------------------------------------------- internals
    def _check_x(self, x, name: str = "x") -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 2 or x.shape[0] != self.batch_size:
            raise ValueError(f"{name} must have shape [batch={self.batch_size}, ...], got {x.shape}")
        return x

    def _close(self, step: int, x_next: np.ndarray) -> None:
        if self.error_control:
            return self._close_error_control(step)
        product = self._stability_product(step, x_next)
        stable = None
        if product is not None:
            per_sample = kernels.sample_means(product)
            self.trace.record_criterion(step, per_sample)
            stable = kernels.stable_samples(per_sample, self.config.reduce)
        if step >= self.num_steps - 1:
            return
        can_skip = None
        tolerance = self.config.numerics.error_tolerance
        if tolerance is not None:
            errors = self._embedded_errors(step, x_next)
            self.trace.extras.setdefault("error_estimate", {})[step + 1] = errors.tolist()
            can_skip = np.where(np.isfinite(errors), errors <= tolerance, False)
        decisions = self.policy.decide(step, stable, can_skip=can_skip)
        if self.replay is not None:
            decisions = self.replay[step + 1]
        self._estimate = None
        if self.estimator == Variant.PAPER_FLOW or not np.any(decisions != Decision.COMPUTE):
            return
        estimate = np.empty_like(x_next)
        am = decisions == Decision.SKIP_AM
        lag = decisions == Decision.SKIP_LAGRANGE
        if am.any():
            estimate[am] = self._am_estimate(step, x_next)[am]
        if lag.any():
            estimate[lag] = self._multistep_estimate(step + 1)[lag]
        self._estimate = estimate

    def _close_error_control(self, step: int) -> None:
        """Schedule-free decision for step ``step + 1`` (docs/theory.md): per sample, the embedded-pair error of the
        extrapolated clean sample against ``tolerance * h^p`` times the solver's ``p``-th divided difference."""
        self._estimate = None
        if step >= self.num_steps - 1:
            return
        schedule = self.config.schedule
        p = schedule.test_order(self.solver_order)
        at = self._log_snr[step + 1]
        h = self._log_snr[step + 2] - at if step + 2 <= self.num_steps else np.inf
        ratios = np.full(self.batch_size, np.nan)
        for b, recent in enumerate(self._recent):
            if len(recent) == recent.maxlen:
                keys = np.array([k for k, _ in recent])
                values = np.stack([v for _, v in recent])
                high, low = embedded_pair_weights(keys[:schedule.nodes], at)
                divided = kernels.divided_difference_weights(keys[:p + 1])
                ratios[b] = kernels.relative_rms(kernels.combine(high - low, values[:schedule.nodes])[None],
                                                 kernels.combine(divided, values[:p + 1])[None])[0]
        limit = schedule.tolerance * h ** p
        self.trace.extras.setdefault("error_ratio", {})[step + 1] = (ratios / limit).tolist()
        can_skip = np.where(np.isfinite(ratios), ratios <= limit, False) & self._certified
        decisions = self.policy.decide(step, None, can_skip=can_skip)
        if self.replay is not None:
            decisions = self.replay[step + 1]
        skipped = decisions != Decision.COMPUTE
        if skipped.any():
            self._estimate = np.zeros((self.batch_size,) + self._recent[0][0][1].shape)
            for b in np.flatnonzero(skipped):
                keys = np.array([k for k, _ in self._recent[b]])[:schedule.nodes]
                values = [v for _, v in self._recent[b]][:schedule.nodes]
                self._estimate[b] = multistep_estimate(values, keys, at)

    def _embedded_errors(self, step: int, x_next: np.ndarray) -> np.ndarray:
        """Relative local-error estimate of the skip estimate for step ``step + 1`` per sample (embedded pair:
        degree-k minus degree-(k-1) extrapolation, RMS over the RMS of the estimate); NaN if unavailable."""
        errors = np.full(self.batch_size, np.nan)
        if self.policy.skip_kind(step) == Decision.SKIP_LAGRANGE:
            ring, at, scale = self._nodes, self._abscissae[step + 1], 1.0
        else:
            ring, at, scale = self._eps_nodes, self._edm_sigma[step + 1], self._edm_sigma[step + 1]
        if ring.values is None or ring.depth < 2:
            return errors
        alpha = self.grid.alpha[step + 1]
        for b in np.flatnonzero(ring.full()):
            high, low = embedded_pair_weights(ring.keys[:, b], at)
            diff = scale * kernels.combine(high - low, ring.values[:, b])
            estimate = kernels.combine(high, ring.values[:, b])
            if ring is not self._nodes:
                estimate = x_next[b] / alpha - scale * estimate
            errors[b] = kernels.relative_rms(diff[None], estimate[None])[0]
        return errors

    def _paper_x_hat(self, step: int) -> np.ndarray:
        """Theorem 3.5 as the official code computes it (VP sample space)."""
        h = list(self._history)
        return paper_step_estimate(h[2]["x"], [h[2]["drift"], h[1]["drift"], h[0]["drift"]], self.num_steps)

    def _eps_weights(self, start: float | None, end: float) -> np.ndarray:
        """Per-row weights on the ring of computed noise predictions: integral over [start, end] of the
        Lagrange basis (``start`` given) or its value at ``end`` (``start=None``)."""
        keys = self._eps_nodes.keys
        weights = np.empty((keys.shape[1], 3))
        for b in range(keys.shape[1]):
            nodes = keys[:, b]
            weights[b] = lagrange_basis_weights(nodes, end) if start is None else \
                corrected_step_weights_on(nodes, start, end)
        return weights

    def _corrected_x_tilde_hat(self, step: int) -> np.ndarray:
        """The corrected Theorem 3.5 estimate of ``x~_{n+1}``: integrate the interpolated drift of the
        last three network evaluations over the real interval ``[sigma~_n, sigma~_{n+1}]``."""
        weights = self._eps_weights(self._edm_sigma[step], self._edm_sigma[step + 1])
        return self._history[-1]["x"] / self.grid.alpha[step] + self._eps_nodes.combine(weights)

    def _stability_product(self, step: int, x_next: np.ndarray):
        """Criterion 3.4's ``M_n`` (``None`` while the history is too short)."""
        if len(self._history) < 3:
            return None
        h = list(self._history)  # n-2, n-1, n
        if self.criterion == Variant.PAPER_FLOW:
            # On a skipped row v_n = 2 v_{n-1} - v_{n-2} (or v_{n-1} after a duplicate): the product is zero
            # analytically; set it so rather than leave rounding noise to pick the sign (docs/paper-mode.md).
            product = flow_stability_product(h[2]["velocity"], h[1]["raw_velocity"], h[0]["raw_velocity"])
            computed = self.trace.decisions[step] == Decision.COMPUTE
            return np.where(computed.reshape((-1,) + (1,) * (product.ndim - 1)), product, 0.0)
        if self.criterion == Variant.PAPER_VP:
            curvature = second_difference(h[2]["drift"], h[1]["drift"], h[0]["drift"])
            return stability_product(x_next, self._paper_x_hat(step), curvature)
        if not np.all(self._eps_nodes.full()):
            return None
        ring = self._eps_nodes
        curvature = np.stack([second_divided_difference(ring.values[:, b], ring.keys[:, b])
                              for b in range(self.batch_size)])
        x_tilde_next = x_next / self.grid.alpha[step + 1]
        return stability_product(x_tilde_next, self._corrected_x_tilde_hat(step), curvature)

    def _am_estimate(self, step: int, x_next: np.ndarray) -> np.ndarray:
        """Clean-sample estimate for step ``step + 1`` from the step estimate (Theorem 3.5 / 3.6)."""
        if len(self._history) < 3:
            raise ValueError(f"step {step + 1}: an AM skip needs three drift nodes")
        last = self._history[-1]
        a1, s1 = self.grid.alpha[step + 1], self.grid.sigma[step + 1]
        if self.estimator == Variant.PAPER_VP:
            # the official Euler path builds the v-prediction estimate from the solver's actual x_{n+1}
            from_next = self.sample_scaling == SampleScaling.EDM and self.kind == "v_prediction"
            return to_x0(self.kind, last["raw"], x_next if from_next else self._paper_x_hat(step), a1, s1)
        if not np.all(self._eps_nodes.full()):
            raise ValueError(f"step {step + 1}: the corrected estimate needs three computed steps at finite noise")
        edm_next = self._edm_sigma[step + 1]
        if self.settings.am_noise == "reuse":
            return self._corrected_x_tilde_hat(step) - edm_next * self._eps_nodes.values[0]
        eps_next = self._eps_nodes.combine(self._eps_weights(None, edm_next))
        return x_next / a1 - edm_next * eps_next

    def _multistep_estimate(self, step: int) -> np.ndarray:
        ring = self._nodes
        if not np.all(ring.full()):
            raise ValueError(f"step {step}: the multistep estimate needs {self.config.schedule.lagrange_term} stored nodes "
                             f"in every row")
        at = self._abscissae[step]
        weights = np.stack([lagrange_basis_weights(ring.keys[:, b], at) for b in range(self.batch_size)])
        scale = self.grid.alpha[step] if self.lagrange_target == "x0_over_alpha" else 1.0
        return scale * ring.combine(weights)
