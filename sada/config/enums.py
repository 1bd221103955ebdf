"""The named variants of a configuration (string enums: ``Mode.PAPER == "paper"``, JSON-friendly)."""

from __future__ import annotations

from enum import Enum

__all__ = ["Mode", "Variant", "Reduce", "Abscissa", "AmNoise", "LagrangeTarget", "SampleScaling", "choice"]


class _Choice(str, Enum):
    def __str__(self) -> str:
        return self.value


class Mode(_Choice):
    """Whose numerics: the official code's (``paper``) or derived on the run's noise levels (``corrected``)."""

    PAPER = "paper"
    CORRECTED = "corrected"


class Variant(_Choice):
    """The numerics an engine runs on a given grid: ``paper`` resolves to the official code's VP or flow path."""

    CORRECTED = "corrected"
    PAPER_VP = "paper-vp"
    PAPER_FLOW = "paper-flow"


class Reduce(_Choice):
    """One decision per sample, or one for the whole batch (the official code)."""

    SAMPLE = "sample"
    BATCH = "batch"


class Abscissa(_Choice):
    """Node coordinate of the multistep polynomial: step index (official), time, EDM sigma or log-SNR."""

    INDEX = "index"
    T = "t"
    SIGMA = "sigma"
    LAMBDA = "lambda"
    NOISE_FRACTION = "noise_fraction"


class AmNoise(_Choice):
    """Noise of the step estimate's clean sample: the last one reused (official) or extrapolated."""

    REUSE = "reuse"
    EXTRAPOLATE = "extrapolate"


class LagrangeTarget(_Choice):
    """What the multistep polynomial extrapolates: ``x0``, or ``x0 / alpha`` (the official Euler path)."""

    X0 = "x0"
    X0_OVER_ALPHA = "x0_over_alpha"


class SampleScaling(_Choice):
    """How a host's solver keeps its sample: ``alpha x0 + sigma eps`` (DPM-type) or ``x / alpha`` (Euler-type)."""

    SCHEDULE = "schedule"
    EDM = "edm"


def choice(enum: type[_Choice], name: str, value, optional: bool = True):
    """``value`` as a member of ``enum`` (``None`` stays ``None`` when ``optional``); ``ValueError`` naming the field
    otherwise."""
    if isinstance(value, enum) or (value is None and optional):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {[m.value for m in enum]}, got {value!r}")
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"{name} must be one of {tuple(m.value for m in enum)}, got {value!r}") from None
