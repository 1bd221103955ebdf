"""The skip-rule protocol shared by both engines, and the registry that picks a rule from a config's schedule part.

An engine (:class:`~sada.torch_backend.engine.SADAEngine`, :class:`~sada.engine.numpy_engine.NumpyEngine`) is a shell:
it keeps the rows, groups, lockstep, replay, the one device->host transfer of a step, non-finite handling and the
trace. Everything that depends on *which* rule decides -- what is recorded from a completed step, which rows may skip
the next one, and the clean-sample estimate a skipped row receives -- lives in one rule object, one module per rule:

====================  =====================================  ================================================
config part           torch rule                             numpy rule (the float64 oracle)
====================  =====================================  ================================================
``StepSchedule``      ``sada.torch_backend.rules.step_schedule``  ``sada.engine.rules.step_schedule``
``StepSchedule`` on   ``sada.torch_backend.rules.paper_flow``     ``sada.engine.rules.paper_flow``
a flow grid, paper
``ErrorControl``      ``sada.torch_backend.rules.error_control``  ``sada.engine.rules.error_control``
====================  =====================================  ================================================

A rule registers itself with :func:`register_rule` for its backend and config part type (optionally only for some
resolved numerics); :func:`rule_class` returns the class an engine builds (docs/architecture.md, "Adding a skip rule").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["SkipRule", "register_rule", "rule_class", "registered_rules"]


@runtime_checkable
class SkipRule(Protocol):
    """What an engine shell asks of its rule (``x``/``h``: the step's sample, in the engine's array type).

    * ``uses_criterion``: whether the rule computes Criterion 3.4 (the product ``M_n`` also feeds token pruning);
    * ``reset(...)``: start a run (the engine passes its policy, trace and history dtype);
    * ``record(step, h, output, computed)``: store what the solver consumed at ``step`` (real and synthesised
      outputs; ``computed`` marks the rows that ran the network);
    * ``product(step, x_next)`` / ``criterion_rows(rows)``: the criterion's product for ``step`` and the rows whose
      inputs are complete (``None`` while the history is short);
    * ``error_test(step, x_next, like)``: a per-row error measure for the skip of ``step + 1`` (or ``None``), moved to
      the host with the criterion in the step's one transfer;
    * ``can_skip(step, rows, test)``: rows whose estimate for ``step + 1`` can be formed and passes the test;
    * ``synthesise(step, x, decisions)``: the model output a skipped row receives at ``step``;
      ``stage_output(step, edm_sigma, x, decisions)``: the same at a two-stage solver's intermediate stage;
    * ``invalidate(rows)``: forget the history of rows whose output was not finite; ``nbytes()``: history held.
    """

    uses_criterion: bool

    def record(self, step: int, h: Any, output: Any, computed: np.ndarray) -> None: ...

    def can_skip(self, step: int, rows: int, test: np.ndarray | None) -> np.ndarray: ...

    def synthesise(self, step: int, x: Any, decisions: np.ndarray) -> Any: ...

    def nbytes(self) -> int: ...


# backend -> [(config part type, predicate on the resolved numerics or None, rule class)], most specific first
_REGISTRY: dict[str, list[tuple[type, Callable | None, type]]] = {}


def register_rule(backend: str, part: type, when: Callable | None = None):
    """Class decorator: the rule that ``backend`` (``"torch"`` or ``"numpy"``) runs for a config whose schedule is a
    ``part`` (a config dataclass type), optionally only when ``when(settings)`` holds for the resolved numerics
    (:class:`~sada.config.ResolvedNumerics`). Rules with a predicate are tried before the part's plain rule."""
    if not isinstance(backend, str) or not backend:
        raise TypeError(f"backend must be a non-empty string, got {backend!r}")
    if not isinstance(part, type):
        raise TypeError(f"part must be a config dataclass type, got {part!r}")
    if when is not None and not callable(when):
        raise TypeError(f"when must be callable or None, got {when!r}")

    def add(cls: type) -> type:
        entries = _REGISTRY.setdefault(backend, [])
        entries[:] = [e for e in entries if e[2].__qualname__ != cls.__qualname__ or e[2].__module__ != cls.__module__]
        entry = (part, when, cls)
        entries.insert(0, entry) if when is not None else entries.append(entry)
        return cls

    return add


def rule_class(backend: str, schedule, settings) -> type:
    """The rule class ``backend`` runs for ``schedule`` (a config's schedule part) under ``settings``."""
    for part, when, cls in _REGISTRY.get(backend, []):
        if isinstance(schedule, part) and (when is None or when(settings)):
            return cls
    known = sorted({p.__name__ for p, _, _ in _REGISTRY.get(backend, [])})
    raise TypeError(
        f"no {backend} skip rule is registered for a {type(schedule).__name__} schedule (registered: {known})"
    )


def registered_rules(backend: str) -> list[tuple[type, type]]:
    """``(config part type, rule class)`` pairs registered for ``backend``, in lookup order."""
    return [(part, cls) for part, _, cls in _REGISTRY.get(backend, [])]
