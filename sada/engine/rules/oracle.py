"""What the numpy engine's rules share: the float64 trajectory history and Criterion 3.4 computed from it.

Deliberately plain (a deque of per-step dicts, per-row loops) unlike the torch rules' ring buffers, so the parity
tests compare two independent implementations of each rule.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from sada.config import SampleScaling, Variant
from sada.engine.numpy_history import RowRing
from sada.policy import Decision
from sada.reference import (
    adams_coefficients as corrected_step_weights_on,
)
from sada.reference import (
    flow_stability_product,
    lagrange_basis_weights,
    paper_step_estimate,
    paper_vp_drift,
    second_difference,
    second_divided_difference,
    stability_product,
)
from sada.trajectory import convert, to_eps

__all__ = ["NumpyRule"]


class NumpyRule:
    """Base of the numpy rules: the per-step history every rule records and the criterion's product."""

    uses_criterion = True

    def __init__(
        self, config, settings, grid, kind: str, batch_size: int, sample_scaling: str, solver_order: int, policy, trace
    ):
        self.config, self.settings, self.grid, self.kind = config, settings, grid, kind
        self.batch_size, self.solver_order = batch_size, solver_order
        self.sample_scaling = SampleScaling(sample_scaling)
        self.policy, self.trace = policy, trace
        self.history: deque = deque(maxlen=3)  # per step, oldest first
        self.eps_nodes = RowRing(3)  # corrected mode: each row's last three computed noise predictions
        self.last_raw: np.ndarray = None
        self.estimate: np.ndarray = None  # clean-sample estimate for the next step, per row

    def uncertified_note(self) -> str | None:
        return None

    # ---------------------------------------------------------------- record
    def record(self, step: int, x: np.ndarray, output: np.ndarray, computed: np.ndarray) -> dict:
        """Store step ``step``'s sample and the output the solver consumed; returns the step's history entry."""
        if self.last_raw is None and not computed.all():
            raise ValueError(f"step {step}: a skip needs a computed step before it")
        rows = computed.reshape((-1,) + (1,) * (x.ndim - 1))
        raw = output.copy() if self.last_raw is None else np.where(rows, output, self.last_raw)
        self.last_raw = raw
        alpha, sigma = self.grid.alpha[step], self.grid.sigma[step]
        return {"x": x.copy(), "used": output.copy(), "raw": raw, "eps": to_eps(self.kind, output, x, alpha, sigma)}

    def record_history(self, step: int, x: np.ndarray, output: np.ndarray, computed: np.ndarray, entry: dict) -> None:
        """The criterion's histories: the official drift, the velocities, the computed noise predictions."""
        alpha, sigma = self.grid.alpha[step], self.grid.sigma[step]
        variants = (self.settings.estimator, self.settings.criterion)
        if Variant.PAPER_VP in variants:
            raw_eps = to_eps(self.kind, entry["raw"], x, alpha, sigma)
            entry["drift"] = paper_vp_drift(x, raw_eps, self.grid.training_beta[step], sigma, self.grid.num_steps)
        if Variant.PAPER_FLOW in variants:
            entry["velocity"] = convert(output, self.kind, "flow_velocity", x, alpha, sigma)
            entry["raw_velocity"] = convert(entry["raw"], self.kind, "flow_velocity", x, alpha, sigma)
        self.history.append(entry)
        edm = self.grid.edm_sigma
        if np.isfinite(edm[step]):
            self.eps_nodes.push(computed, edm[step], entry["eps"])

    # ---------------------------------------------------------------- criterion
    def paper_x_hat(self, step: int) -> np.ndarray:
        """Theorem 3.5 as the official code computes it (VP sample space)."""
        h = list(self.history)
        return paper_step_estimate(h[2]["x"], [h[2]["drift"], h[1]["drift"], h[0]["drift"]], self.grid.num_steps)

    def eps_weights(self, start: float | None, end: float) -> np.ndarray:
        """Per-row weights on the ring of computed noise predictions: integral over [start, end] of the
        Lagrange basis (``start`` given) or its value at ``end`` (``start=None``)."""
        keys = self.eps_nodes.keys
        weights = np.empty((keys.shape[1], 3))
        for b in range(keys.shape[1]):
            nodes = keys[:, b]
            weights[b] = (
                lagrange_basis_weights(nodes, end) if start is None else corrected_step_weights_on(nodes, start, end)
            )
        return weights

    def corrected_x_tilde_hat(self, step: int) -> np.ndarray:
        """The corrected Theorem 3.5 estimate of ``x~_{n+1}``: integrate the interpolated drift of the
        last three network evaluations over the real interval ``[sigma~_n, sigma~_{n+1}]``."""
        edm = self.grid.edm_sigma
        weights = self.eps_weights(edm[step], edm[step + 1])
        return self.history[-1]["x"] / self.grid.alpha[step] + self.eps_nodes.combine(weights)

    def stability_product(self, step: int, x_next: np.ndarray):
        """Criterion 3.4's ``M_n`` (``None`` while the history is too short)."""
        if len(self.history) < 3:
            return None
        h = list(self.history)  # n-2, n-1, n
        criterion = self.settings.criterion
        if criterion == Variant.PAPER_FLOW:
            # On a skipped row v_n = 2 v_{n-1} - v_{n-2} (or v_{n-1} after a duplicate): the product is zero
            # analytically; set it so rather than leave rounding noise to pick the sign (docs/paper-mode.md).
            product = flow_stability_product(h[2]["velocity"], h[1]["raw_velocity"], h[0]["raw_velocity"])
            computed = self.trace.decisions[step] == Decision.COMPUTE
            return np.where(computed.reshape((-1,) + (1,) * (product.ndim - 1)), product, 0.0)
        if criterion == Variant.PAPER_VP:
            curvature = second_difference(h[2]["drift"], h[1]["drift"], h[0]["drift"])
            return stability_product(x_next, self.paper_x_hat(step), curvature)
        if not np.all(self.eps_nodes.full()):
            return None
        ring = self.eps_nodes
        curvature = np.stack(
            [second_divided_difference(ring.values[:, b], ring.keys[:, b]) for b in range(self.batch_size)]
        )
        x_tilde_next = x_next / self.grid.alpha[step + 1]
        return stability_product(x_tilde_next, self.corrected_x_tilde_hat(step), curvature)
