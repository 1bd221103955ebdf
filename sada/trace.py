"""What SADA did in a run: per step and sample, the decision, the criterion value and notes.

``trace.summary()`` reads e.g. ``computed 28/50 steps (1.79x), AM 10, Lagrange 12``. A recorded
trace's ``decisions`` can be handed back to an engine (``replay=``) to reproduce a run exactly.
"""

from __future__ import annotations

import json

import numpy as np

from sada.policy import Decision
from sada.validation import as_int

__all__ = ["Trace"]


class Trace:
    """Per-step, per-sample record of one sampling run of ``num_steps`` steps and ``batch_size`` samples."""

    def __init__(self, num_steps: int, batch_size: int):
        self.num_steps = as_int("num_steps", num_steps, minimum=1)
        self.batch_size = as_int("batch_size", batch_size, minimum=1)
        self.decisions = np.full((self.num_steps, self.batch_size), Decision.COMPUTE, dtype=np.int8)
        self.criterion = np.full((self.num_steps, self.batch_size), np.nan)
        self.notes: list[tuple[int, str]] = []
        self.extras: dict = {}  # host-specific records, e.g. token pruning statistics
        self.steps_done = 0

    def record_decisions(self, step: int, decisions) -> None:
        self.decisions[step] = np.asarray(decisions, dtype=np.int8)
        self.steps_done = max(self.steps_done, step + 1)

    def record_criterion(self, step: int, values) -> None:
        self.criterion[step] = np.asarray(values, dtype=np.float64)

    def note(self, step: int, message: str) -> None:
        self.notes.append((int(step), str(message)))

    def counts(self) -> dict[str, int]:
        """Totals over all samples and recorded steps: ``computed``, ``am``, ``lagrange``, ``total``."""
        d = self.decisions[: self.steps_done]
        return {
            "computed": int(np.sum(d == Decision.COMPUTE)),
            "am": int(np.sum(d == Decision.SKIP_AM)),
            "lagrange": int(np.sum(d == Decision.SKIP_LAGRANGE)),
            "total": int(d.size),
        }

    def network_evaluations(self, sample: int | None = None) -> int:
        """Steps at which the network ran (for one sample, or summed over the batch)."""
        d = self.decisions[: self.steps_done]
        if sample is not None:
            d = d[:, as_int("sample", sample, minimum=0)]
        return int(np.sum(d == Decision.COMPUTE))

    def speedup(self) -> float:
        """Network-evaluation ratio: steps per computed step (rows summed over the batch)."""
        c = self.counts()
        return c["total"] / max(c["computed"], 1)

    def skip_path(self, sample: int = 0) -> list[int]:
        """Skipped step indices of ``sample``."""
        col = self.decisions[: self.steps_done, as_int("sample", sample, minimum=0)]
        return [int(i) for i in np.flatnonzero(col != Decision.COMPUTE)]

    def summary(self) -> str:
        c = self.counts()
        per = self.batch_size
        computed, total = c["computed"] / per, c["total"] / per

        def fmt(v: float) -> str:
            return f"{v:g}"

        text = (
            f"computed {fmt(computed)}/{fmt(total)} steps ({self.speedup():.2f}x), "
            f"AM {fmt(c['am'] / per)}, Lagrange {fmt(c['lagrange'] / per)}"
        )
        if per > 1:
            text += f" (mean over {per} samples)"
        if self.extras.get("history_bytes"):
            text += f"; history {self.extras['history_bytes'] / 2**20:.2f} MiB"
            copies = self.extras.get("latent_copies_per_sample")
            if copies is not None:
                text += f" ({copies:g} latents per sample)"
        pruning = self.extras.get("pruning")
        if pruning and pruning["token_fraction"]:
            fractions = list(pruning["token_fraction"].values())
            text += (
                f"; pruned blocks computed {100 * float(np.mean(fractions)):.0f}% of their tokens on "
                f"{len(fractions)} steps, caches {pruning['cache_bytes'] / 2**20:.2f} MiB"
            )
        return text

    def to_dict(self) -> dict:
        return {
            "num_steps": self.num_steps,
            "batch_size": self.batch_size,
            "steps_done": self.steps_done,
            "decisions": self.decisions.tolist(),
            "criterion": [[None if np.isnan(v) else float(v) for v in row] for row in self.criterion],
            "notes": self.notes,
            "extras": self.extras,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())
