"""Model parameterisations and exact conversions among them (the trajectory interface, part 2).

Every schedule writes the noisy sample as ``x = alpha * x0 + sigma * eps``. A network predicts one of

* ``epsilon``       -- the noise ``eps``;
* ``sample``        -- the clean sample ``x0``;
* ``v_prediction``  -- ``v = alpha * eps - sigma * x0`` (Salimans & Ho; diffusers' convention);
* ``flow_velocity`` -- ``u = eps - x0``, the rectified-flow velocity ``dx/dt`` for
  ``x = (1 - t) x0 + t eps`` (diffusers' FlowMatch convention).

Each output determines the pair ``(x0, eps)`` given ``x``; :func:`split` and :func:`combine` are
exact inverses. :func:`synthesise_output` is the heart of SADA's host integration: the output a
solver must be handed so that it recovers a chosen ``x0`` estimate from the *real* current sample.

The functions use only ``+ - * /`` on their array arguments, so they work unchanged on numpy arrays,
torch tensors and Python floats. ``alpha``/``sigma`` may be scalars or arrays broadcastable to ``x``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "PREDICTION_KINDS",
    "check_kind",
    "split",
    "combine",
    "to_x0",
    "to_eps",
    "convert",
    "synthesise_output",
    "drift",
    "edm_drift",
]

PREDICTION_KINDS = ("epsilon", "sample", "v_prediction", "flow_velocity")


def check_kind(kind: str) -> str:
    """Return ``kind`` if it is a known prediction kind, else raise ``ValueError`` naming it."""
    if kind not in PREDICTION_KINDS:
        raise ValueError(f"prediction kind must be one of {PREDICTION_KINDS}, got {kind!r}")
    return kind


def _check_coefficient(name: str, value, *, positive: bool) -> None:
    """Validate scalar / numpy coefficients; other array types (torch) are validated by their backend."""
    if type(value) is float:  # the hot path (the engines' per-step scalars): no numpy round trip
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        if value < 0 or (positive and value == 0):
            raise ValueError(f"{name} must be {'> 0 here' if positive else '>= 0'}, got {value!r}")
        return
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or an array, got {value!r}")
    if isinstance(value, (numbers.Real, np.ndarray)):
        arr = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite, got {value!r}")
        if positive and np.any(arr <= 0):
            raise ValueError(f"{name} must be > 0 here, got {value!r}")
        if not positive and np.any(arr < 0):
            raise ValueError(f"{name} must be >= 0, got {value!r}")


def split(kind: str, output, x, alpha, sigma):
    """``(x0, eps)`` implied by a model ``output`` of ``kind`` at sample ``x`` and noise level (alpha, sigma)."""
    return to_x0(kind, output, x, alpha, sigma), to_eps(kind, output, x, alpha, sigma)


def combine(kind: str, x0, eps, alpha, sigma):
    """The model output of ``kind`` that corresponds to the pair ``(x0, eps)`` (inverse of :func:`split`)."""
    check_kind(kind)
    if kind == "epsilon":
        return eps
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        return alpha * eps - sigma * x0
    return eps - x0


def to_x0(kind: str, output, x, alpha, sigma):
    """The clean-sample estimate (data prediction) of a model output."""
    check_kind(kind)
    _check_coefficient("alpha", alpha, positive=kind == "epsilon")
    _check_coefficient("sigma", sigma, positive=False)
    if kind == "epsilon":
        return (x - sigma * output) / alpha
    if kind == "sample":
        return output
    if kind == "v_prediction":
        return (alpha * x - sigma * output) / (alpha * alpha + sigma * sigma)
    return (x - sigma * output) / (alpha + sigma)


def to_eps(kind: str, output, x, alpha, sigma):
    """The noise estimate of a model output (needs no ``alpha > 0`` except for ``sample``)."""
    check_kind(kind)
    _check_coefficient("alpha", alpha, positive=False)
    _check_coefficient("sigma", sigma, positive=kind == "sample")
    if kind == "epsilon":
        return output
    if kind == "sample":
        return (x - alpha * output) / sigma
    if kind == "v_prediction":
        return (sigma * x + alpha * output) / (alpha * alpha + sigma * sigma)
    return (x + alpha * output) / (alpha + sigma)


def convert(output, from_kind: str, to_kind: str, x, alpha, sigma):
    """Re-express a model output in another parameterisation at the same sample and noise level."""
    x0, eps = split(from_kind, output, x, alpha, sigma)
    return combine(to_kind, x0, eps, alpha, sigma)


def synthesise_output(kind: str, x0_target, x, alpha, sigma):
    """The output of ``kind`` from which a solver at sample ``x`` recovers exactly ``x0_target``.

    SADA replaces a skipped network call by this output: the unchanged solver then consumes the
    paper's estimate of ``x0`` while the sample it updates stays the real one. For ``epsilon`` this is
    ``(x - alpha x0)/sigma``; e.g. with ``x0 = (x_hat - sigma eps_prev)/alpha`` it is
    ``eps_prev + (x - x_hat)/sigma``. Needs ``sigma > 0``.
    """
    check_kind(kind)
    _check_coefficient("sigma", sigma, positive=True)
    _check_coefficient("alpha", alpha, positive=False)
    eps = (x - alpha * x0_target) / sigma
    return combine(kind, x0_target, eps, alpha, sigma)


def drift(kind: str, output, x, alpha, sigma, d_alpha, d_sigma):
    """Probability-flow ODE drift ``dx/dt = alpha'(t) x0 + sigma'(t) eps`` in the schedule's own time.

    ``d_alpha``/``d_sigma`` are the derivatives of the schedule at ``t`` (see the schedules'
    ``derivatives``). For VP this equals ``beta(t)/2 * (-x + eps/sigma)``; for rectified flow
    (``alpha' = -1``, ``sigma' = 1``) it is the flow velocity ``eps - x0``.
    """
    x0, eps = split(kind, output, x, alpha, sigma)
    return d_alpha * x0 + d_sigma * eps


def edm_drift(kind: str, output, x, alpha, sigma):
    """Drift of the same ODE in EDM variables: ``d(x/alpha) / d(sigma/alpha) = eps`` for every schedule."""
    return to_eps(kind, output, x, alpha, sigma)
