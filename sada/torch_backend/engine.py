"""The SADA engine on torch tensors: per-sample decisions, synthesised outputs, any device and dtype.

Protocol (identical to :class:`sada.lab.engine.ReferenceEngine`, which is its float64 oracle)::

    for n in range(N):
        decisions = engine.begin_step(n, x_n)     # closes step n-1; one small device->host transfer
        out = engine.synthesise(n, x_n)           # estimates for the rows that skip
        out[compute_rows] = model(x_n[compute_rows])
        engine.record(n, x_n, out)
        x_{n+1} = solver(x_n, out)
    engine.finish(x_N)

``x`` is the schedule's sample ``alpha x0 + sigma eps``; outputs are in the model's parameterisation.
Scalar coefficients come from :mod:`sada.reference` (host, float64) and are applied here.

Host synchronisation: ``begin_step`` moves one ``[groups, 2]`` float tensor (criterion mean and
finiteness per sample) to the host, because the decision must be known before the network runs.
Nothing else blocks.
"""
from __future__ import annotations

import numpy as np
import torch

from sada.config import SADAConfig
from sada.policy import Decision, SkipPolicy
from sada.reference import adams_coefficients, embedded_pair_weights, lagrange_basis_weights, paper_step_weights
from sada.trace import Trace
from sada.trajectory import StepGrid, check_kind, synthesise_output, to_eps, to_x0
from sada.torch_backend.rings import TensorRing

__all__ = ["SADAEngine"]


def _divided_difference_weights(nodes) -> np.ndarray:
    """``f[t0, t1, t2] = sum_i f_i / prod_{j != i} (t_i - t_j)`` as weights on the values."""
    t = np.asarray(nodes, dtype=np.float64)
    return np.array([1.0 / np.prod([t[i] - t[j] for j in range(3) if j != i]) for i in range(3)])


class SADAEngine:
    """Per-sample SADA on tensors ``[rows, ...]``.

    Args:
        config: the run's :class:`SADAConfig`.
        grid: the run's :class:`StepGrid` (noise levels of every step).
        kind: the model's prediction kind (``epsilon``, ``sample``, ``v_prediction``, ``flow_velocity``).
        groups: optional row -> sample map (length ``rows``); rows of one group are decided together
            (e.g. two rows of one sample). Default: every row is its own sample.
        history_dtype: dtype of the stored history (default: float32 for half inputs, else the input's).
        replay: a recorded ``[steps, samples]`` decision array to reproduce a run exactly.
        sample_scaling: how the host's solver keeps its sample: ``"schedule"`` (``alpha x0 + sigma eps``, DPM-type)
            or ``"edm"`` (``x / alpha``, Euler-type); the engine always receives the ``schedule`` scaling, this only
            selects the official code's Euler path in paper mode (``x0 / alpha`` multistep target, v-prediction
            estimate from the solver's actual next sample).
    """

    def __init__(self, config: SADAConfig, grid: StepGrid, kind: str, groups: "np.ndarray | list[int] | None" = None,
                 history_dtype: torch.dtype | None = None, replay: "np.ndarray | None" = None,
                 sample_scaling: str = "schedule"):
        if not isinstance(config, SADAConfig):
            raise TypeError(f"config must be a SADAConfig, got {type(config).__name__}")
        if not isinstance(grid, StepGrid):
            raise TypeError(f"grid must be a StepGrid, got {type(grid).__name__}")
        self.kind = check_kind(kind)
        self.grid = grid
        self.num_steps = grid.num_steps
        self.config = config.for_steps(self.num_steps)
        self.estimator = grid.numerics_variant(self.config.mode, "mode")
        self.sample_scaling = sample_scaling
        self.lagrange_target = self.config.resolve_lagrange_target(sample_scaling)
        # official Euler path, v-prediction: the step estimate's clean sample uses the solver's actual x_{n+1}
        self._estimate_from_next_sample = self.estimator == "paper-vp" and sample_scaling == "edm" \
            and kind == "v_prediction"
        # max_interval=0 never skips: without token pruning the engine is a pass-through (no history, no
        # criterion, no host transfer), so a disabled configuration costs nothing but the hook calls.
        self.observes = self.config.max_interval > 0 or self.config.prunes_tokens
        self.criterion = grid.numerics_variant(self.config.resolve_criterion(grid.has_paper_numerics), "criterion")
        if "paper-flow" in (self.estimator, self.criterion) and kind != "flow_velocity":
            raise ValueError(f"the paper's flow-matching variant needs kind='flow_velocity', got {kind!r}")
        self._groups_arg = None if groups is None else np.asarray(groups, dtype=np.int64)
        self.history_dtype = history_dtype
        self._replay_arg = None if replay is None else np.asarray(replay, dtype=np.int8)
        self._abscissae = grid.abscissae(self.config.abscissae)
        self._edm = grid.edm_sigma
        self._signature = None
        self.trace: Trace | None = None

    # ------------------------------------------------------------------ state
    def reset(self, x: torch.Tensor) -> None:
        """Start a new run shaped like ``x`` (called automatically at step 0 and on any change)."""
        rows = x.shape[0]
        groups = np.arange(rows) if self._groups_arg is None else self._groups_arg
        if groups.shape != (rows,) or groups.min() < 0 or set(np.unique(groups)) != set(range(groups.max() + 1)):
            raise ValueError(f"groups must map each of the {rows} rows to samples 0..G-1, got {groups.tolist()}")
        self.groups = groups
        self.num_samples = int(groups.max()) + 1
        self._group_index = torch.as_tensor(groups, device=x.device)
        if self._replay_arg is not None and self._replay_arg.shape != (self.num_steps, self.num_samples):
            raise ValueError(f"replay must have shape ({self.num_steps}, {self.num_samples}), "
                             f"got {self._replay_arg.shape}")
        dtype = self.history_dtype or (torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype)
        self.dtype = dtype
        self._signature = (tuple(x.shape), x.dtype, x.device)
        self.policy = SkipPolicy(self.config, self.num_steps, self.num_samples)
        self.trace = Trace(self.num_steps, self.num_samples)
        self._eps = TensorRing(3)  # corrected: last three computed noise predictions per row
        self._drift = TensorRing(2)  # paper-vp: the two previous official drifts
        self._paper_ready = np.zeros(0, bool)  # rows whose paper step estimate exists for this step
        self._velocity = TensorRing(2)  # paper-flow: raw velocity history (duplicates on skips)
        self._nodes = TensorRing(max(self.config.lagrange_term, 1))  # multistep clean-sample nodes
        self._raw = None  # paper: the last computed raw output
        self._paper_x_hat = None  # paper-vp: the official step estimate of x_{n+1}
        self._corrected_x_hat = None  # corrected: step estimate of x~_{n+1}
        self._curvature = None  # paper-vp curvature of the criterion
        self._estimate = None  # paper-vp: clean-sample estimate for the next step
        self._flow_product = None  # paper-flow: per-row criterion product (needs no x_{n+1})
        self._finite = None
        self._synthesised_x0 = None  # clean-sample estimates handed to the solver at the current step
        self.token_scores = None
        self._row_decisions = np.zeros(rows, np.int8)
        self._step = 0

    def nbytes(self) -> int:
        """Bytes of tensor history the engine currently holds."""
        held = [self._raw, self._paper_x_hat, self._corrected_x_hat, self._curvature, self._estimate]
        rings = (self._eps, self._drift, self._velocity, self._nodes)
        return sum(r.nbytes() for r in rings) + sum(t.numel() * t.element_size() for t in held if t is not None)

    # ------------------------------------------------------------------ protocol
    def begin_step(self, step: int, x: torch.Tensor) -> np.ndarray:
        """Close step ``step - 1`` with its result ``x``; return the per-row decisions for ``step``."""
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            raise TypeError(f"x must be a tensor [rows, ...], got {type(x).__name__}")
        if step == 0 or self._signature != (tuple(x.shape), x.dtype, x.device):
            if step != 0:
                raise ValueError(f"step {step}: the sample changed shape/dtype/device mid-run "
                                 f"({self._signature} -> {(tuple(x.shape), x.dtype, x.device)}); start at step 0")
            self.reset(x)
        if step != self._step or not 0 <= step < self.num_steps:
            raise ValueError(f"begin_step expects step {self._step} (< {self.num_steps}), got {step}")
        if step > 0 and self.observes:
            self._close(step - 1, x)
        decisions = self.policy.decisions[step] if self._replay_arg is None else self._replay_arg[step]
        self.trace.record_decisions(step, decisions)
        self.trace.extras["history_bytes"] = max(self.trace.extras.get("history_bytes", 0), self.nbytes())
        self._row_decisions = decisions[self.groups]
        self._synthesised_x0 = None
        return self._row_decisions.copy()

    def compute_rows(self) -> np.ndarray:
        """Indices of the rows that run the network at the current step."""
        return np.flatnonzero(self._row_decisions == Decision.COMPUTE)

    def synthesise(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """Model outputs for the rows that skip (other rows hold placeholders to overwrite)."""
        alpha, sigma = float(self.grid.alpha[step]), float(self.grid.sigma[step])
        h = x.to(self.dtype)
        if self.estimator == "paper-flow":
            v = self._velocity
            if v.values is None:
                return torch.zeros_like(x)
            both = v.full(x.shape[0])
            out = torch.where(self._b(both, h), 2 * v.values[0] - v.values[1], v.values[0])
            return out.to(x.dtype)
        skip = self._row_decisions
        x0 = torch.zeros_like(h)
        am, lag = skip == Decision.SKIP_AM, skip == Decision.SKIP_LAGRANGE
        if am.any():
            x0 = torch.where(self._b(am, h), self._am_estimate(step, h), x0)
        if lag.any():
            x0 = torch.where(self._b(lag, h), self._multistep_estimate(step, lag), x0)
        self._synthesised_x0 = x0  # paper mode stores it as the node of a skipped row (no output round trip)
        return synthesise_output(self.kind, x0, h, alpha, sigma).to(x.dtype)

    def record(self, step: int, x: torch.Tensor, output: torch.Tensor) -> None:
        """Store what the solver consumes at ``step`` (real outputs and synthesised ones)."""
        if output.shape != x.shape:
            raise ValueError(f"output shape {tuple(output.shape)} must equal the sample shape {tuple(x.shape)}")
        if not self.observes:
            self._step = step + 1
            return
        h, out = x.to(self.dtype), output.to(self.dtype)
        computed = self._row_decisions == Decision.COMPUTE
        alpha, sigma = float(self.grid.alpha[step]), float(self.grid.sigma[step])
        self._finite = torch.isfinite(out).flatten(1).all(dim=1)
        if self.estimator == "paper-vp" or self.criterion == "paper-vp":
            self._raw = out.clone() if self._raw is None else torch.where(self._b(computed, h), out, self._raw)
            eps = to_eps(self.kind, self._raw, h, alpha, sigma)
            f_n = self.num_steps * float(self.grid.training_beta[step]) / 2.0 * (-h + eps / sigma)
            self._paper_ready = self._drift.full(h.shape[0])
            if self._paper_ready.any():
                f1, f2 = self._drift.values[0], self._drift.values[1]
                w = paper_step_weights()
                self._paper_x_hat = h - (w[0] * f_n + w[1] * f1 + w[2] * f2) / self.num_steps
                self._curvature = f_n - 2.0 * f1 + f2 if self.criterion == "paper-vp" else None
            self._drift.push(np.ones_like(computed), step, f_n)
        if "paper-flow" in (self.estimator, self.criterion):
            v = self._velocity
            if v.count.size == h.shape[0] and v.full(h.shape[0]).all():
                product = -(out - 2.0 * v.values[0] + v.values[1])  # -(v_n - 2 v_{n-1} + v_{n-2})
                self._flow_product = torch.where(self._b(computed, h), product, torch.zeros_like(product))
            else:
                self._flow_product = None
            raw = out if v.values is None else torch.where(self._b(computed, h), out, v.values[0])
            v.push(np.ones_like(computed), step, raw)
        if self.estimator == "corrected" or self.criterion == "corrected":
            if np.isfinite(self._edm[step]):
                self._eps.push(computed, float(self._edm[step]), to_eps(self.kind, out, h, alpha, sigma))
            needs_x_hat = self.criterion == "corrected" or self.config.am_noise_resolved == "reuse"
            if needs_x_hat:
                self._corrected_x_hat = self._corrected_x_tilde_hat(step, h)
        if self.policy.is_node(step) and self.estimator != "paper-flow":
            rows = computed if self.estimator == "corrected" else np.ones_like(computed)
            scale = 1.0 / alpha if self.lagrange_target == "x0_over_alpha" else 1.0
            x0 = to_x0(self.kind, out, h, alpha, sigma)
            if self._synthesised_x0 is not None and not computed.all():  # paper: a skipped row's node is its estimate
                x0 = torch.where(self._b(computed, h), x0, self._synthesised_x0)
            self._nodes.push(rows, float(self._abscissae[step]), scale * x0)
        self._step = step + 1

    def intermediate_output(self, step: int, edm_sigma: float, x: torch.Tensor) -> torch.Tensor:
        """Estimated output at a solver's intermediate stage of ``step`` (Heun's corrector, DPM2's midpoint)
        for the rows that skip ``step``: the step's estimator evaluated at that noise level and sample."""
        alpha, sigma = self.grid.alpha_sigma_at(edm_sigma)
        h = x.to(self.dtype)
        if self.estimator == "paper-flow":
            return self.synthesise(step, x)
        skip = self._row_decisions
        x0 = torch.zeros_like(h)
        am, lag = skip == Decision.SKIP_AM, skip == Decision.SKIP_LAGRANGE
        if am.any():
            if self._eps.full(h.shape[0]).any():
                weights = self._row_weights(self._eps, lambda keys: lagrange_basis_weights(keys, edm_sigma))
                am_x0 = h / alpha - edm_sigma * self._eps.combine(weights)
            else:  # the paper's estimator has no noise history: keep the step's own clean-sample estimate
                am_x0 = self._estimate
            x0 = torch.where(self._b(am, h), am_x0, x0)
        if lag.any():
            at = self.grid.abscissa_at(self.config.abscissae, edm_sigma)
            weights = self._row_weights(self._nodes, lambda keys: lagrange_basis_weights(keys, at))
            scale = alpha if self.lagrange_target == "x0_over_alpha" else 1.0
            x0 = torch.where(self._b(lag, h), scale * self._nodes.combine(weights), x0)
        return synthesise_output(self.kind, x0, h, alpha, sigma).to(x.dtype)

    def finish(self, x_final: torch.Tensor) -> Trace:
        """Close the last step (criterion for the trace only) and return the trace."""
        if self._step != self.num_steps:
            raise ValueError(f"finish() after step {self._step - 1}; the run has {self.num_steps} steps")
        self._close(self.num_steps - 1, x_final)
        return self.trace

    def step(self, step: int, x: torch.Tensor, network) -> torch.Tensor:
        """One step: ``network(x_rows, row_index)`` runs only for the rows that compute."""
        self.begin_step(step, x)
        out = self.synthesise(step, x)
        rows = self.compute_rows()
        if rows.size == x.shape[0]:
            out = network(x, torch.arange(x.shape[0], device=x.device))
        elif rows.size:
            idx = torch.as_tensor(rows, device=x.device)
            out = out.index_copy(0, idx, network(x.index_select(0, idx), idx).to(out.dtype))
        self.record(step, x, out)
        return out

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _b(mask: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(mask, device=like.device).reshape((-1,) + (1,) * (like.ndim - 1))

    def _row_weights(self, ring: TensorRing, make) -> np.ndarray:
        """``make(keys)`` for every full row; rows sharing their abscissae (the usual case) share one call."""
        rows = ring.keys.shape[1]
        weights = np.zeros((rows, ring.depth))
        full = np.flatnonzero(ring.full(rows))
        if full.size:
            distinct, inverse = np.unique(ring.keys[:, full].T, axis=0, return_inverse=True)
            made = np.stack([make(keys) for keys in distinct])
            weights[full] = made[inverse.reshape(-1)]
        return weights

    def _corrected_x_tilde_hat(self, step: int, h: torch.Tensor):
        if self._eps.values is None:
            return None
        s_n, s_next = float(self._edm[step]), float(self._edm[step + 1])
        weights = self._row_weights(self._eps, lambda keys: adams_coefficients(keys, s_n, s_next))
        return h / float(self.grid.alpha[step]) + self._eps.combine(weights)

    def _am_estimate(self, step: int, h: torch.Tensor) -> torch.Tensor:
        if self.estimator == "paper-vp":
            return self._estimate
        s = float(self._edm[step])
        if self.config.am_noise_resolved == "reuse":
            return self._corrected_x_hat - s * self._eps.values[0]
        eps_next = self._eps.combine(self._row_weights(self._eps, lambda keys: lagrange_basis_weights(keys, s)))
        return h / float(self.grid.alpha[step]) - s * eps_next

    def _multistep_estimate(self, step: int, rows: np.ndarray) -> torch.Tensor:
        at = float(self._abscissae[step])
        scale = float(self.grid.alpha[step]) if self.lagrange_target == "x0_over_alpha" else 1.0
        return scale * self._nodes.combine(self._row_weights(self._nodes, lambda keys: lagrange_basis_weights(keys, at)))

    def _product(self, step: int, x_next: torch.Tensor):
        if self.criterion == "paper-flow":
            return self._flow_product
        if self.criterion == "paper-vp":
            if self._curvature is None:
                return None
            return (x_next.to(self.dtype) - self._paper_x_hat) * self._curvature
        if not self._eps.full(x_next.shape[0]).any() or self._corrected_x_hat is None:
            return None
        curvature = self._eps.combine(self._row_weights(self._eps, _divided_difference_weights))
        x_tilde_next = x_next.to(self.dtype) / float(self.grid.alpha[step + 1])
        return (x_tilde_next - self._corrected_x_hat) * curvature

    def _criterion_rows(self, rows: int) -> np.ndarray:
        """Rows whose criterion inputs are complete (others report NaN, never 'stable')."""
        if self.criterion == "paper-vp":
            return self._paper_ready if self._paper_ready.size == rows else np.zeros(rows, bool)
        if self.criterion == "paper-flow":
            return self._velocity.full(rows)
        return self._eps.full(rows)

    def _token_scores(self, product: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Section 3.5 / SADA_SPEC 5.1: channel mean of ``M_n`` per token (``[B, C, H, W] -> [B, H, W]``;
        token layout ``[B, L, D] -> [B, L]``). A token is unstable where the score is ``>= 0``."""
        scores = product.mean(dim=1) if like.ndim == 4 else product.mean(dim=-1)
        return torch.nan_to_num(scores, nan=float("inf"))  # rows without a criterion: every token unstable

    def token_map(self) -> torch.Tensor | None:
        """Per-sample boolean map of the tokens to recompute at the current step (``None`` if unknown):
        unstable tokens, at most ``max_fix`` per sample (the largest scores)."""
        if self.token_scores is None:
            return None
        scores = self.token_scores.flatten(1)
        unstable = scores >= 0
        cap = self.config.max_fix
        if cap and cap < scores.shape[1]:
            top = torch.topk(scores, cap, dim=1).indices
            capped = torch.zeros_like(unstable).scatter_(1, top, True)
            unstable = unstable & capped
        return unstable.reshape(self.token_scores.shape)

    def _embedded_errors(self, step: int, x_next: torch.Tensor) -> torch.Tensor:
        """Per-row relative local-error estimate of the skip estimate for step ``step + 1`` (embedded pair,
        see :func:`sada.reference.embedded_pair_weights`); NaN where the history is incomplete."""
        rows = x_next.shape[0]
        if self.policy.skip_kind(step) == Decision.SKIP_LAGRANGE:
            ring, at, scale = self._nodes, float(self._abscissae[step + 1]), 1.0
        else:
            ring, at, scale = self._eps, float(self._edm[step + 1]), float(self._edm[step + 1])
        nan = torch.full((rows,), float("nan"), dtype=self.dtype, device=x_next.device)
        if ring.values is None or ring.depth < 2 or not ring.full(rows).any():
            return nan
        high = self._row_weights(ring, lambda keys: embedded_pair_weights(keys, at)[0])
        low = self._row_weights(ring, lambda keys: embedded_pair_weights(keys, at)[1])
        diff = scale * ring.combine(high - low)
        estimate = scale * ring.combine(high)
        if ring is self._eps:
            estimate = x_next.to(self.dtype) / float(self.grid.alpha[step + 1]) - estimate
        rms = lambda t: t.flatten(1).pow(2).mean(dim=1).sqrt()  # noqa: E731
        errors = rms(diff) / rms(estimate).clamp_min(1e-12)
        return torch.where(self._b(ring.full(rows), errors), errors, nan)

    def _can_skip(self, step: int, rows: int) -> np.ndarray:
        """Rows whose estimate for step ``step + 1`` can be formed from valid history."""
        if self.estimator == "paper-flow":
            return np.ones(rows, bool)
        if self.policy.skip_kind(step) == Decision.SKIP_LAGRANGE:
            return self._nodes.full(rows)
        if self.estimator == "paper-vp":
            return self._paper_ready if self._paper_ready.size == rows else np.zeros(rows, bool)
        return self._eps.full(rows)

    def _close(self, step: int, x_next: torch.Tensor) -> None:
        rows, g = x_next.shape[0], self.num_samples
        product = self._product(step, x_next)
        nan_row = torch.full((rows,), float("nan"), dtype=self.dtype, device=x_next.device)
        per_row = nan_row if product is None else \
            torch.where(self._b(self._criterion_rows(rows), nan_row), product.flatten(1).mean(dim=1), nan_row)
        summed = torch.zeros(g, 2, dtype=self.dtype, device=x_next.device)
        stats = torch.stack([per_row, (~self._finite).to(self.dtype)], dim=1)
        summed.index_add_(0, self._group_index, stats)
        counts = np.bincount(self.groups, minlength=g)
        check_error = self.config.error_tolerance is not None and step + 1 < self.num_steps
        payload = torch.cat([summed.flatten(), self._embedded_errors(step, x_next)]) if check_error else summed
        host = payload.cpu().numpy()  # the one device -> host transfer of the step
        errors = host[2 * g:] if check_error else None
        host = host[: 2 * g].reshape(g, 2)
        means, bad = host[:, 0] / counts, host[:, 1] > 0
        bad_rows = bad[self.groups]
        if bad_rows.any():
            for ring in (self._eps, self._drift, self._velocity, self._nodes):
                ring.invalidate(bad_rows)
            self.trace.note(step, f"non-finite model output in samples {np.flatnonzero(bad).tolist()}: "
                                  "not used for extrapolation; they compute until their history refills")
        self.token_scores = None
        if product is not None and self.config.prunes_tokens:
            self.token_scores = self._token_scores(product, x_next)
        stable = None
        if product is not None:
            self.trace.record_criterion(step, means)
            if self.config.reduce == "batch":
                valid = means[np.isfinite(means)]
                stable = np.full(g, bool(valid.size and valid.mean() <= 0.0))
            else:
                stable = np.where(np.isfinite(means), means <= 0.0, False)
        self._estimate = None
        if self.estimator == "paper-vp" and self._paper_x_hat is not None and step + 1 < self.num_steps:
            a1, s1 = float(self.grid.alpha[step + 1]), float(self.grid.sigma[step + 1])
            state = x_next.to(self.dtype) if self._estimate_from_next_sample else self._paper_x_hat
            self._estimate = to_x0(self.kind, self._raw, state, a1, s1)
        self._paper_x_hat = self._curvature = None  # only the criterion and the estimate needed them
        if step >= self.num_steps - 1:
            return
        can = self._can_skip(step, rows)
        if errors is not None:
            self.trace.extras.setdefault("error_estimate", {})[step + 1] = errors.tolist()
            can = can & np.where(np.isfinite(errors), errors <= self.config.error_tolerance, False)
        can_group = np.ones(g, bool)
        np.logical_and.at(can_group, self.groups, can & ~bad_rows)
        self.policy.decide(step, stable, can_skip=can_group)
