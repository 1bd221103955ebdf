"""The SADA engine on torch tensors: per-sample decisions, synthesised outputs, any device and dtype.

It implements the engine contract of :mod:`sada.engine.contract` (its float64 oracle is
:class:`sada.engine.numpy_engine.NumpyEngine`)::

    for n in range(N):
        compute = engine.plan(n, x_n)             # closes step n-1; one small device->host transfer
        out[compute] = model(x_n[compute])
        out = engine.complete(n, x_n, out)        # estimates for the rows that skip; the step is recorded
        x_{n+1} = solver(x_n, out)
    engine.finish(x_N)

``x`` is the schedule's sample ``alpha x0 + sigma eps``; outputs are in the model's parameterisation.
Scalar coefficients come from :mod:`sada.reference` (host, float64) and are applied here.

Host synchronisation: ``plan`` moves one ``[groups, 2]`` float tensor (criterion mean and finiteness per
sample) to the host, because the decision must be known before the network runs. Nothing else blocks.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from sada.config import ErrorControl, SADAConfig, SampleScaling, Variant
from sada.engine.contract import StepSequence
from sada.policy import Decision, make_policy
from sada import kernels
from sada.trace import Trace
from sada.trajectory import StepGrid, synthesise_output, to_eps, to_x0
from sada.torch_backend.error_control import RecentPredictions
from sada.torch_backend.estimates import StepScheduleEstimates
from sada.torch_backend.rings import TensorRing

__all__ = ["SADAEngine"]


class SADAEngine(StepScheduleEstimates, StepSequence):
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
        solver_order: the host solver's order (1 for Euler / DDIM / flow Euler, 2 for DPM-Solver++ 2M / Heun, ...):
            the schedule-free :class:`~sada.config.ErrorControl` compares its estimates with this solver's own
            local error.
        lockstep: batch-level decisions whatever ``config.reduce``: the criterion is reduced over the batch (as with
            ``reduce="batch"``) and a skip needs every sample able to skip, so every row computes or every row skips
            (for compiled networks, which recompile for each new row count: :mod:`sada.torch_backend.compiled`).
    """

    def __init__(self, config: SADAConfig, grid: StepGrid, kind: str, groups: "np.ndarray | list[int] | None" = None,
                 history_dtype: torch.dtype | None = None, replay: "np.ndarray | None" = None,
                 sample_scaling: str = "schedule", solver_order: int = 2, lockstep: bool = False):
        self._configure(config, grid, kind, sample_scaling)
        self.error_control = isinstance(self.config.schedule, ErrorControl)
        self.solver_order = solver_order
        if not isinstance(lockstep, bool):
            raise TypeError(f"lockstep must be a bool, got {lockstep!r}")
        self.lockstep = lockstep
        self.lockstep_note = "lockstep: batch-level decisions (every row computes or every row skips)"
        # the official Euler path, v-prediction: the step estimate's clean sample uses the solver's actual x_{n+1}
        self._estimate_from_next_sample = self.estimator == Variant.PAPER_VP and kind == "v_prediction" \
            and SampleScaling(sample_scaling) == SampleScaling.EDM
        # a never-skipping configuration without token pruning is a pass-through (no history, no criterion, no host
        # transfer), so a disabled configuration costs nothing but the hook calls
        self.observes = not self.config.never_skips or self.config.prunes_tokens
        # the step schedule decides from Criterion 3.4; error control computes it only for the token map of pruning
        self.uses_criterion = not self.error_control or self.config.prunes_tokens
        used = (self.estimator, self.criterion) if self.uses_criterion else (self.estimator,)
        if Variant.PAPER_FLOW in used and kind != "flow_velocity":
            raise ValueError(f"the paper's flow-matching variant needs kind='flow_velocity', got {kind!r}")
        self._groups_arg = None if groups is None else np.asarray(groups, dtype=np.int64)
        self.history_dtype = history_dtype
        self._replay_arg = None if replay is None else np.asarray(replay, dtype=np.int8)
        self._abscissae = grid.abscissae(self.settings.abscissa)
        self._log_snr = grid.log_snr
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
        self.policy = make_policy(self.config, self.num_steps, self.num_samples)
        self.trace = Trace(self.num_steps, self.num_samples)
        if self.lockstep:
            self.trace.note(0, self.lockstep_note)
        self._certified = not self.error_control or self.config.schedule.certifies(self.solver_order)
        if not self._certified and not self.config.never_skips:
            note = self.config.schedule.uncertified_note(self.solver_order)
            self.trace.note(0, note)
            if not getattr(self, "_warned_uncertified", False):
                self._warned_uncertified = True
                warnings.warn(f"sada: {note}", stacklevel=3)
        self._eps = TensorRing(3)  # corrected: last three computed noise predictions per row
        self._drift = TensorRing(2)  # paper-vp: the two previous official drifts
        self._paper_ready = np.zeros(0, bool)  # rows whose paper step estimate exists for this step
        self._velocity = TensorRing(2)  # paper-flow: raw velocity history (duplicates on skips)
        self._nodes = TensorRing(max(getattr(self.config.schedule, "lagrange_term", 1), 1))  # multistep nodes
        self._recent = RecentPredictions(self.config.schedule, self.solver_order) if self.error_control else None
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
        rings = (self._eps, self._drift, self._velocity, self._nodes) + ((self._recent,) if self._recent else ())
        return sum(r.nbytes() for r in rings) + sum(t.numel() * t.element_size() for t in held if t is not None)

    # ------------------------------------------------------------------ protocol
    def _begin(self, step: int, x: torch.Tensor) -> np.ndarray:
        """Close step ``step - 1`` with its result ``x``; return the per-row decisions for ``step``."""
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            raise TypeError(f"x must be a tensor [rows, ...], got {type(x).__name__}")
        if step == 0 or self._signature != (tuple(x.shape), x.dtype, x.device):
            if step != 0:
                raise ValueError(f"step {step}: the sample changed shape/dtype/device mid-run "
                                 f"({self._signature} -> {(tuple(x.shape), x.dtype, x.device)}); start at step 0")
            self.reset(x)
        if step != self._step or not 0 <= step < self.num_steps:
            raise ValueError(f"plan expects step {self._step} (< {self.num_steps}), got {step}")
        if step > 0 and self.observes:
            self._close(step - 1, x)
        decisions = self.policy.decisions[step] if self._replay_arg is None else self._replay_arg[step]
        self.trace.record_decisions(step, decisions)
        held = self.nbytes()
        if held > self.trace.extras.get("history_bytes", 0):
            self.trace.extras["history_bytes"] = held
            # latent-sized tensors held per row (= per sample unless rows are grouped), in the history dtype
            latent = x[0].numel() * (torch.finfo(self.dtype).bits // 8) * x.shape[0]
            self.trace.extras["latent_copies_per_sample"] = held / latent
        self._row_decisions = decisions[self.groups]
        self._synthesised_x0 = None
        return self._row_decisions.copy()

    def _synthesise(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """Model outputs for the rows that skip (other rows hold placeholders to overwrite)."""
        alpha, sigma = float(self.grid.alpha[step]), float(self.grid.sigma[step])
        h = x.to(self.dtype)
        if self.error_control:
            x0 = self._recent.estimate(float(self._log_snr[step]))
            return synthesise_output(self.kind, x0, h, alpha, sigma).to(x.dtype)
        if self.estimator == Variant.PAPER_FLOW:
            v = self._velocity
            if v.values is None:
                return torch.zeros_like(x)
            both = v.full(x.shape[0])
            out = torch.where(self._b(both, h), kernels.flow_velocity_extrapolation(v.values[0], v.values[1]),
                              v.values[0])
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

    def _record(self, step: int, x: torch.Tensor, output: torch.Tensor) -> None:
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
        if self.error_control:
            if np.isfinite(self._log_snr[step]):  # not at pure noise (flow t = 1, zero terminal SNR)
                self._recent.push(computed, self._log_snr[step], to_x0(self.kind, out, h, alpha, sigma))
            if not self.uses_criterion:
                self._step = step + 1
                return
        if Variant.PAPER_VP in (self.estimator, self.criterion):
            self._raw = out.clone() if self._raw is None else torch.where(self._b(computed, h), out, self._raw)
            eps = to_eps(self.kind, self._raw, h, alpha, sigma)
            f_n = kernels.paper_vp_drift(h, eps, float(self.grid.training_beta[step]), sigma, self.num_steps)
            self._paper_ready = self._drift.full(h.shape[0])
            if self._paper_ready.any():
                f1, f2 = self._drift.values[0], self._drift.values[1]
                self._paper_x_hat = kernels.paper_step_estimate(h, f_n, f1, f2, self.num_steps)
                self._curvature = kernels.second_difference(f_n, f1, f2) if self.criterion == Variant.PAPER_VP \
                    else None
            self._drift.push(np.ones_like(computed), step, f_n)
        if Variant.PAPER_FLOW in (self.estimator, self.criterion):
            v = self._velocity
            if v.count.size == h.shape[0] and v.full(h.shape[0]).all():
                product = kernels.flow_stability_product(out, v.values[0], v.values[1])
                self._flow_product = self._flow_product_of_skipped_rows(product, computed)
            else:
                self._flow_product = None
            raw = out if v.values is None else torch.where(self._b(computed, h), out, v.values[0])
            v.push(np.ones_like(computed), step, raw)
        if Variant.CORRECTED in (self.estimator, self.criterion):
            if np.isfinite(self._edm[step]):
                self._eps.push(computed, float(self._edm[step]), to_eps(self.kind, out, h, alpha, sigma))
            needs_x_hat = self.criterion == Variant.CORRECTED or self.settings.am_noise == "reuse"
            if needs_x_hat:
                self._corrected_x_hat = self._corrected_x_tilde_hat(step, h)
        if self.policy.is_node(step) and self.estimator != Variant.PAPER_FLOW:
            rows = computed if self.estimator == Variant.CORRECTED else np.ones_like(computed)
            scale = 1.0 / alpha if self.lagrange_target == "x0_over_alpha" else 1.0
            x0 = to_x0(self.kind, out, h, alpha, sigma)
            if self._synthesised_x0 is not None and not computed.all():  # paper: a skipped row's node is its estimate
                x0 = torch.where(self._b(computed, h), x0, self._synthesised_x0)
            self._nodes.push(rows, float(self._abscissae[step]), scale * x0)
        self._step = step + 1

    def _flow_product_of_skipped_rows(self, product: torch.Tensor, computed: np.ndarray) -> torch.Tensor:
        """Paper mode on flow matching: a skipped row used ``v^ = 2 v_n - v_{n-1}`` (or ``v_n``), so its criterion
        product is zero in exact arithmetic; it is set to exactly zero (the official code leaves the rounding
        noise, whose sign is a coin flip: docs/paper-mode.md measures the difference)."""
        return torch.where(self._b(computed, product), product, torch.zeros_like(product))

    def _stage_output(self, step: int, edm_sigma: float, x: torch.Tensor) -> torch.Tensor:
        """Estimated output at a solver's intermediate stage of ``step`` (Heun's corrector, DPM2's midpoint)
        for the rows that skip ``step``: the step's estimator evaluated at that noise level and sample."""
        alpha, sigma = self.grid.alpha_sigma_at(edm_sigma)
        h = x.to(self.dtype)
        if self.error_control:
            x0 = self._recent.estimate(-math.log(edm_sigma))
            return synthesise_output(self.kind, x0, h, alpha, sigma).to(x.dtype)
        if self.estimator == Variant.PAPER_FLOW:
            return self._synthesise(step, x)
        skip = self._row_decisions
        x0 = torch.zeros_like(h)
        am, lag = skip == Decision.SKIP_AM, skip == Decision.SKIP_LAGRANGE
        if am.any():
            if self._eps.full(h.shape[0]).any():
                weights = self._eps.row_weights(kernels.lagrange_weights, edm_sigma)
                am_x0 = h / alpha - edm_sigma * self._eps.combine(weights)
            else:  # the paper's estimator has no noise history: keep the step's own clean-sample estimate
                am_x0 = self._estimate
            x0 = torch.where(self._b(am, h), am_x0, x0)
        if lag.any():
            at = self.grid.abscissa_at(self.settings.abscissa, edm_sigma)
            weights = self._nodes.row_weights(kernels.lagrange_weights, at)
            scale = alpha if self.lagrange_target == "x0_over_alpha" else 1.0
            x0 = torch.where(self._b(lag, h), scale * self._nodes.combine(weights), x0)
        return synthesise_output(self.kind, x0, h, alpha, sigma).to(x.dtype)

    def finish(self, x_final: torch.Tensor) -> Trace:
        """Close the last step (criterion for the trace only) and return the trace."""
        if self._step != self.num_steps:
            raise ValueError(f"finish() after step {self._step - 1}; the run has {self.num_steps} steps")
        if self.observes:  # a pass-through run (never skips, no pruning) keeps no state to close
            self._close(self.num_steps - 1, x_final)
        return self.trace

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _b(mask: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(mask, device=like.device).reshape((-1,) + (1,) * (like.ndim - 1))

    def _token_scores(self, product: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Section 3.5: channel mean of ``M_n`` per token (``[B, C, H, W] -> [B, H, W]``, video
        ``[B, C, F, H, W] -> [B, F, H, W]``; token layout ``[B, L, D] -> [B, L]``). A token is unstable where the
        score is ``>= 0``."""
        scores = kernels.token_scores(product, 1 if like.ndim >= 4 else -1)
        return torch.nan_to_num(scores, nan=float("inf"))  # rows without a criterion: every token unstable

    def token_map(self) -> torch.Tensor | None:
        """Per-sample boolean map of the tokens to recompute at the current step (``None`` if unknown):
        unstable tokens, at most ``max_fix`` per sample (the largest scores)."""
        if self.token_scores is None:
            return None
        return kernels.token_instability(self.token_scores, self.config.pruning.max_fix)

    def _close(self, step: int, x_next: torch.Tensor) -> None:
        """Criterion of step ``step`` (if used), the error test of a skip at ``step + 1`` (if used) and the decision
        for ``step + 1``. Everything the host needs travels in one device -> host transfer."""
        rows, g = x_next.shape[0], self.num_samples
        product = self._product(step, x_next) if self.uses_criterion else None
        nan_row = torch.full((rows,), float("nan"), dtype=self.dtype, device=x_next.device)
        per_row = nan_row if product is None else \
            torch.where(self._b(self._criterion_rows(rows), nan_row), kernels.sample_means(product), nan_row)
        summed = torch.zeros(g, 2, dtype=self.dtype, device=x_next.device)
        summed.index_add_(0, self._group_index, torch.stack([per_row, (~self._finite).to(self.dtype)], dim=1))
        deciding = step + 1 < self.num_steps
        test = None
        if deciding and self.error_control:
            test = self._recent.error_ratio(float(self._log_snr[step + 1]), per_row)
        elif deciding and self.config.numerics.error_tolerance is not None:
            test = self._embedded_errors(step, x_next)
        payload = summed.flatten() if test is None else torch.cat([summed.flatten(), test])
        host = payload.cpu().numpy()  # the one device -> host transfer of the step
        test = None if test is None else host[2 * g:]
        host = host[: 2 * g].reshape(g, 2)
        means, bad = host[:, 0] / np.bincount(self.groups, minlength=g), host[:, 1] > 0
        bad_rows = bad[self.groups]
        if bad_rows.any():
            for ring in (self._eps, self._drift, self._velocity, self._nodes) + ((self._recent,) if self._recent else ()):
                ring.invalidate(bad_rows)
            self.trace.note(step, f"non-finite model output in samples {np.flatnonzero(bad).tolist()}: "
                                  "not used for extrapolation; they compute until their history refills")
        self.token_scores = None
        if product is not None and self.config.prunes_tokens:
            self.token_scores = self._token_scores(product, x_next)
        stable = None
        if product is not None:
            self.trace.record_criterion(step, means)
            stable = kernels.stable_samples(means, "batch" if self.lockstep else self.config.reduce)
        self._estimate = None
        if self.estimator == Variant.PAPER_VP and self._paper_x_hat is not None and deciding:
            a1, s1 = float(self.grid.alpha[step + 1]), float(self.grid.sigma[step + 1])
            state = x_next.to(self.dtype) if self._estimate_from_next_sample else self._paper_x_hat
            self._estimate = to_x0(self.kind, self._raw, state, a1, s1)
        self._paper_x_hat = self._curvature = None  # only the criterion and the estimate needed them
        if not deciding:
            return
        can = self._can_skip(step, rows, test)
        can_group = np.ones(g, bool)
        np.logical_and.at(can_group, self.groups, can & ~bad_rows)
        if self.lockstep:  # a skip needs every sample able to skip: the network always sees the full batch
            can_group[:] = can_group.all()
        self.policy.decide(step, stable, can_skip=can_group)

    def _can_skip(self, step: int, rows: int, test: np.ndarray | None) -> np.ndarray:
        """Rows whose estimate for step ``step + 1`` can be formed from valid history and passes the error test."""
        finite = np.isfinite(test) if test is not None else None
        if self.error_control:
            h = float(self._log_snr[step + 2] - self._log_snr[step + 1]) if step + 2 <= self.num_steps else np.inf
            limit = self.config.schedule.tolerance * h ** self._recent.order
            self.trace.extras.setdefault("error_ratio", {})[step + 1] = (test / limit).tolist()
            return finite & (np.where(finite, test, np.inf) <= limit) & self._certified
        if self.estimator == Variant.PAPER_FLOW:
            can = np.ones(rows, bool)
        elif self.policy.skip_kind(step) == Decision.SKIP_LAGRANGE:
            can = self._nodes.full(rows)
        elif self.estimator == Variant.PAPER_VP:
            can = self._paper_ready if self._paper_ready.size == rows else np.zeros(rows, bool)
        else:
            can = self._eps.full(rows)
        if test is not None:
            self.trace.extras.setdefault("error_estimate", {})[step + 1] = test.tolist()
            can = can & finite & (np.where(finite, test, np.inf) <= self.config.numerics.error_tolerance)
        return can
