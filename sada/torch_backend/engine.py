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

The engine is a shell: it keeps the rows and their groups, lockstep, replay, the step's one device->host transfer,
non-finite outputs and the trace. What the config's skip rule records, which rows may skip and the estimates they
receive live in one rule object (:mod:`sada.torch_backend.rules`, picked from the config's schedule part by
:func:`sada.engine.rules.base.rule_class`).

Host synchronisation: ``plan`` moves one ``[groups, 2]`` float tensor (criterion mean and finiteness per
sample, plus the rule's per-row error test if it has one) to the host, because the decision must be known before the
network runs. Nothing else blocks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from sada import kernels
from sada.config import SADAConfig, StepSchedule, Variant
from sada.engine.contract import StepSequence
from sada.engine.rules.base import rule_class
from sada.errors import ExactRunWarning
from sada.policy import Decision, ErrorControlPolicy, SkipPolicy, make_policy
from sada.torch_backend import rules as _rules  # noqa: F401  (registers the torch rules)
from sada.torch_backend.reintegration import protected_tail
from sada.torch_backend.rules.history import row_mask
from sada.trace import Trace
from sada.trajectory import StepGrid

__all__ = ["SADAEngine"]

LOCKSTEP_NOTE = "lockstep: batch-level decisions (every row computes or every row skips)"


@dataclass
class _Run:
    """The state of the current run: its rows, their groups and the step the engine expects next."""

    signature: tuple
    groups: np.ndarray
    group_index: torch.Tensor
    dtype: torch.dtype
    decisions: np.ndarray
    step: int = 0
    token_scores: torch.Tensor | None = None
    finite: torch.Tensor | None = None  # per row: the last recorded output is finite
    noted_bad: set = field(default_factory=set)  # samples whose non-finite output is already noted

    @property
    def num_samples(self) -> int:
        return int(self.groups.max()) + 1


class SADAEngine(StepSequence):
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
            local error. Read at the start of every run (:meth:`set_solver_order` changes it between runs).
        lockstep: batch-level decisions whatever ``config.reduce``: the criterion is reduced over the batch (as with
            ``reduce="batch"``) and a skip needs every sample able to skip, so every row computes or every row skips
            (for compiled networks, which recompile for each new row count: :mod:`sada.torch_backend.compiled`).
        lockstep_note: the trace note of a lockstep run (default: a generic one; an adapter passes why lockstep is
            on, e.g. :data:`sada.torch_backend.compiled.LOCKSTEP_NOTE`).
        reintegrates: the host re-integrates skipped stretches (:mod:`sada.torch_backend.reintegration`): then a
            schedule-free part may skip the second-to-last step where
            :func:`~sada.torch_backend.reintegration.protected_tail` allows it (read at the start of every run).
    """

    def __init__(
        self,
        config: SADAConfig,
        grid: StepGrid,
        kind: str,
        groups: np.ndarray | list[int] | None = None,
        history_dtype: torch.dtype | None = None,
        replay: np.ndarray | None = None,
        sample_scaling: str = "schedule",
        solver_order: int = 2,
        lockstep: bool = False,
        lockstep_note: str | None = None,
        reintegrates: bool = False,
    ):
        self._configure(config, grid, kind, sample_scaling)
        if not isinstance(reintegrates, bool):
            raise TypeError(f"reintegrates must be a bool, got {reintegrates!r}")
        self.reintegrates = reintegrates
        if not isinstance(lockstep, bool):
            raise TypeError(f"lockstep must be a bool, got {lockstep!r}")
        if lockstep_note is not None and not isinstance(lockstep_note, str):
            raise TypeError(f"lockstep_note must be a string or None, got {lockstep_note!r}")
        self.set_solver_order(solver_order)
        self.lockstep = lockstep
        self.lockstep_note = lockstep_note or LOCKSTEP_NOTE
        self.host_notes: tuple[str, ...] = ()  # what the host adapter found about the run's grid, noted at step 0
        self.rule = rule_class("torch", self.config.schedule, self.settings)(
            self.config, self.settings, grid, self.kind, sample_scaling
        )
        used = (self.estimator, self.criterion) if self.rule.uses_criterion else (self.estimator,)
        if Variant.PAPER_FLOW in used and kind != "flow_velocity":
            raise ValueError(f"the paper's flow-matching variant needs kind='flow_velocity', got {kind!r}")
        # a never-skipping configuration without token pruning is a pass-through (no history, no criterion, no host
        # transfer), so a disabled configuration costs nothing but the hook calls
        observes = not self.config.never_skips or self.config.prunes_tokens
        self._options = (
            None if groups is None else np.asarray(groups, dtype=np.int64),
            history_dtype,
            None if replay is None else np.asarray(replay, dtype=np.int8),
            observes,
        )
        self._run: _Run | None = None
        self._warned_uncertified = False
        self.policy: SkipPolicy | ErrorControlPolicy = None
        self.trace: Trace | None = None

    def set_solver_order(self, solver_order: int) -> None:
        """The host solver's order for the following runs (an adapter that learns its sampler late sets it here)."""
        if isinstance(solver_order, bool) or not isinstance(solver_order, int) or solver_order < 1:
            raise ValueError(f"solver_order must be an int >= 1, got {solver_order!r}")
        self.solver_order = solver_order

    # ------------------------------------------------------------------ state
    @property
    def observes(self) -> bool:
        """Whether the engine keeps any history (a never-skipping config without pruning is a pass-through)."""
        return self._options[3]

    @property
    def history_dtype(self) -> torch.dtype | None:
        return self._options[1]

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype of the current run's history."""
        return None if self._run is None else self._run.dtype

    @property
    def groups(self) -> np.ndarray | None:
        return None if self._run is None else self._run.groups

    @property
    def num_samples(self) -> int | None:
        return None if self._run is None else self._run.num_samples

    @property
    def token_scores(self) -> torch.Tensor | None:
        return None if self._run is None else self._run.token_scores

    def reset(self, x: torch.Tensor) -> None:
        """Start a new run shaped like ``x`` (called automatically at step 0 and on any change)."""
        groups_arg, history_dtype, replay, _ = self._options
        rows = x.shape[0]
        groups = np.arange(rows) if groups_arg is None else groups_arg
        if groups.shape != (rows,) or groups.min() < 0 or set(np.unique(groups)) != set(range(groups.max() + 1)):
            raise ValueError(f"groups must map each of the {rows} rows to samples 0..G-1, got {groups.tolist()}")
        dtype = history_dtype or (torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype)
        run = _Run(
            (tuple(x.shape), x.dtype, x.device),
            groups,
            torch.as_tensor(groups, device=x.device),
            dtype,
            np.zeros(rows, np.int8),
        )
        if replay is not None and replay.shape != (self.num_steps, run.num_samples):
            raise ValueError(f"replay must have shape ({self.num_steps}, {run.num_samples}), got {replay.shape}")
        self._run = run
        config = self.config.for_solver(self.solver_order, self.grid.median_log_snr_step)
        tail = None  # the policy's default: the last two steps
        if self.reintegrates and not isinstance(config.schedule, StepSchedule):
            tail = protected_tail(self.grid, getattr(config.schedule, "tolerance", None))
        self.policy = make_policy(config, self.num_steps, run.num_samples, tail)
        self.trace = Trace(self.num_steps, run.num_samples)
        if self.lockstep:
            self.trace.note(0, self.lockstep_note)
        for host_note in self.host_notes:
            self.trace.note(0, host_note)
        self.rule.reset(self.policy, self.trace, dtype, self.solver_order)
        note = self.rule.uncertified_note(self.solver_order)
        if note is not None and not self.config.never_skips:
            self.trace.note(0, note)
            if not self._warned_uncertified:
                self._warned_uncertified = True
                warnings.warn(f"sada: {note}", ExactRunWarning, stacklevel=3)

    def nbytes(self) -> int:
        """Bytes of tensor history the engine currently holds."""
        return self.rule.nbytes() if self._run is not None else 0

    # ------------------------------------------------------------------ protocol
    def _begin(self, step: int, x: torch.Tensor) -> np.ndarray:
        """Close step ``step - 1`` with its result ``x``; return the per-row decisions for ``step``."""
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            raise TypeError(f"x must be a tensor [rows, ...], got {type(x).__name__}")
        signature = (tuple(x.shape), x.dtype, x.device)
        if step == 0 or self._run is None or self._run.signature != signature:
            if step != 0:
                previous = None if self._run is None else self._run.signature
                raise ValueError(
                    f"step {step}: the sample changed shape/dtype/device mid-run "
                    f"({previous} -> {signature}); start at step 0"
                )
            self.reset(x)
        run = self._run
        if step != run.step or not 0 <= step < self.num_steps:
            raise ValueError(f"plan expects step {run.step} (< {self.num_steps}), got {step}")
        if step > 0 and self.observes:
            self._close(step - 1, x)
        replay = self._options[2]
        decisions = self.policy.decisions[step] if replay is None else replay[step]
        self.trace.record_decisions(step, decisions)
        held = self.nbytes()
        if held > self.trace.extras.get("history_bytes", 0):
            self.trace.extras["history_bytes"] = held
            # latent-sized tensors held per row (= per sample unless rows are grouped), in the history dtype
            latent = x[0].numel() * (torch.finfo(run.dtype).bits // 8) * x.shape[0]
            self.trace.extras["latent_copies_per_sample"] = held / latent
        run.decisions = decisions[run.groups]
        return run.decisions.copy()

    def _synthesise(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """Model outputs for the rows that skip (other rows hold placeholders to overwrite)."""
        return self.rule.synthesise(step, x, self._run.decisions)

    def _record(self, step: int, x: torch.Tensor, output: torch.Tensor) -> None:
        """Store what the solver consumes at ``step`` (real outputs and synthesised ones)."""
        if output.shape != x.shape:
            raise ValueError(f"output shape {tuple(output.shape)} must equal the sample shape {tuple(x.shape)}")
        run = self._run
        if self.observes:
            h, out = x.to(run.dtype), output.to(run.dtype)
            run.finite = torch.isfinite(out).flatten(1).all(dim=1)
            self.rule.record(step, h, out, run.decisions == Decision.COMPUTE)
        run.step = step + 1

    def _stage_output(self, step: int, edm_sigma: float, x: torch.Tensor) -> torch.Tensor:
        """Estimated output at a solver's intermediate stage of ``step`` (Heun's corrector, DPM2's midpoint)
        for the rows that skip ``step``: the rule's estimate at that noise level and sample."""
        return self.rule.stage_output(step, edm_sigma, x, self._run.decisions)

    def finish(self, x_final: torch.Tensor) -> Trace:
        """Close the last step (criterion for the trace only) and return the trace."""
        step = 0 if self._run is None else self._run.step
        if step != self.num_steps:
            raise ValueError(f"finish() after step {step - 1}; the run has {self.num_steps} steps")
        if self.observes:  # a pass-through run (never skips, no pruning) keeps no state to close
            self._close(self.num_steps - 1, x_final)
        return self.trace

    # ------------------------------------------------------------------ token pruning
    def token_map(self) -> torch.Tensor | None:
        """Per-sample boolean map of the tokens to recompute at the current step (``None`` if unknown):
        unstable tokens, at most ``max_fix`` per sample (the largest scores)."""
        if self.token_scores is None:
            return None
        return kernels.token_instability(self.token_scores, self.config.pruning.max_fix)

    @staticmethod
    def _token_scores(product: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Section 3.5: channel mean of ``M_n`` per token (``[B, C, H, W] -> [B, H, W]``, video
        ``[B, C, F, H, W] -> [B, F, H, W]``; token layout ``[B, L, D] -> [B, L]``). A token is unstable where the
        score is ``>= 0``."""
        scores = kernels.token_scores(product, 1 if like.ndim >= 4 else -1)
        return torch.nan_to_num(scores, nan=float("inf"))  # rows without a criterion: every token unstable

    # ------------------------------------------------------------------ closing a step
    def _close(self, step: int, x_next: torch.Tensor) -> None:
        """Criterion of step ``step`` (if used), the rule's error test of a skip at ``step + 1`` (if any) and the
        decision for ``step + 1``. Everything the host needs travels in one device -> host transfer."""
        run, rule = self._run, self.rule
        rows, g = x_next.shape[0], run.num_samples
        product = rule.product(step, x_next) if rule.uses_criterion else None
        nan_row = torch.full((rows,), float("nan"), dtype=run.dtype, device=x_next.device)
        per_row = (
            nan_row
            if product is None
            else torch.where(row_mask(rule.criterion_rows(rows), nan_row), kernels.sample_means(product), nan_row)
        )
        summed = torch.zeros(g, 2, dtype=run.dtype, device=x_next.device)
        summed.index_add_(0, run.group_index, torch.stack([per_row, (~run.finite).to(run.dtype)], dim=1))
        deciding = step + 1 < self.num_steps
        test = rule.error_test(step, x_next, per_row) if deciding else None
        payload = summed.flatten() if test is None else torch.cat([summed.flatten(), test])
        host = payload.cpu().numpy()  # the one device -> host transfer of the step
        test = None if test is None else host[2 * g :]
        host = host[: 2 * g].reshape(g, 2)
        means, bad = host[:, 0] / np.bincount(run.groups, minlength=g), host[:, 1] > 0
        bad_rows = bad[run.groups]
        if bad_rows.any():
            rule.invalidate(bad_rows)
            self._note_non_finite(step, bad)
        run.token_scores = None
        if product is not None and self.config.prunes_tokens:
            run.token_scores = self._token_scores(product, x_next)
        stable = None
        if product is not None:
            self.trace.record_criterion(step, means)
            stable = kernels.stable_samples(means, "batch" if self.lockstep else self.config.reduce)
        rule.prepare(step, x_next, deciding)
        if not deciding:
            return
        can = rule.can_skip(step, rows, test)
        can_group = np.ones(g, bool)
        np.logical_and.at(can_group, run.groups, can & ~bad_rows)
        if self.lockstep:  # a skip needs every sample able to skip: the network always sees the full batch
            can_group[:] = can_group.all()
        self.policy.decide(step, stable, can_skip=can_group)

    def _note_non_finite(self, step: int, bad: np.ndarray) -> None:
        """One trace note per sample, at the first step its output is not finite (not one per step)."""
        new = [int(s) for s in np.flatnonzero(bad) if int(s) not in self._run.noted_bad]
        if new:
            self._run.noted_bad.update(new)
            self.trace.note(
                step,
                f"non-finite model output in samples {new}: not used for extrapolation; they "
                "compute until their history refills (noted once per sample)",
            )
