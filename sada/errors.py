"""The exceptions and warnings sada raises, so that callers (and the adapters) match on types, never on message text.

Errors:

* :class:`ConfigError` (a ``ValueError``): a configuration that the run cannot serve (a mode the grid cannot support,
  a bad value). Always raised where the configuration meets the run (``enable``, ``wrap``, an engine's constructor).
* :class:`RunTooShortError` (a ``ValueError``): the run has too few steps for the configuration to skip any. The
  adapters catch exactly this one and run the whole sampling exactly, with a note in the summary.
* :class:`IncompatibleHookError` (a ``RuntimeError``): another cache or wrapper on the same denoiser that SADA cannot
  compose with.

Warnings: every warning sada emits is a :class:`SADAWarning` (a ``UserWarning``), so an application can filter
them with one rule (``warnings.filterwarnings("ignore", category=sada.errors.SADAWarning)``);
:class:`ExactRunWarning` marks a run (or part of one) that computes every step exactly.
"""

from __future__ import annotations

__all__ = [
    "AlreadyEnabledError",
    "ConfigError",
    "ExactRunWarning",
    "IncompatibleHookError",
    "PruningFallbackWarning",
    "RunTooShortError",
    "SADADeprecationWarning",
    "SADAWarning",
]


class ConfigError(ValueError):
    """A configuration this run cannot serve; the message names the value and what to use instead."""


class RunTooShortError(ValueError):
    """The run has too few steps for the configuration to skip any: it is run exactly instead (a note, no error)."""


class IncompatibleHookError(RuntimeError):
    """Another cache hook or forward wrapper on the denoiser that SADA cannot compose with."""


class SADAWarning(UserWarning):
    """Base class of every warning sada emits."""


class ExactRunWarning(SADAWarning):
    """The run, or part of it, computes every step exactly (and says why)."""


class SADADeprecationWarning(SADAWarning, DeprecationWarning):
    """A deprecated name (e.g. a renamed config field) was used; it keeps working for one release."""


class AlreadyEnabledError(ValueError, RuntimeError):
    """SADA is already enabled on this pipeline or module (diffusers' ``CacheMixin`` raises ``ValueError`` for the
    same case; older callers caught ``RuntimeError``): disable it first, or change its config in place."""


class PruningFallbackWarning(SADAWarning, RuntimeWarning):
    """Token pruning cannot run a block as configured (its attention cannot be tapped, or it cannot be pruned at all)
    and falls back (to whole-block pruning without context, or to the unpruned block); the warning names the reason."""
