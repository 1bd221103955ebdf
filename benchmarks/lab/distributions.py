"""Data distributions whose denoiser ``E[x0 | x_t]`` is closed-form (the synthetic ODE lab).

All work in EDM variables: ``x~ = x0 + sigma~ * n`` with ``n ~ N(0, I)``; a schedule's sample is
``x = alpha * x~``. A Gaussian mixture with diagonal covariances ``sum_k pi_k N(mu_k, diag(v_k))`` has

    p(x~ | sigma~) = sum_k pi_k N(x~; mu_k, diag(v_k + sigma~^2)),
    D(x~, sigma~) = sum_k w_k(x~) [mu_k + v_k / (v_k + sigma~^2) * (x~ - mu_k)],

with posterior weights ``w_k`` (softmax of the component log-likelihoods). A single Gaussian is the
``K = 1`` case, for which the probability-flow ODE is solved in closed form by
:meth:`GaussianMixture.gaussian_flow`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sada.validation import as_int, as_real

__all__ = ["GaussianMixture", "isotropic_gaussian", "anisotropic_gaussian", "random_mixture"]


@dataclass(frozen=True)
class GaussianMixture:
    """``means [K, d]``, ``variances [K, d]`` (diagonal, > 0), ``weights [K]`` (normalised on construction)."""

    means: np.ndarray = field(repr=False)
    variances: np.ndarray = field(repr=False)
    weights: np.ndarray = field(repr=False)

    def __post_init__(self):
        mu = np.atleast_2d(np.asarray(self.means, dtype=np.float64))
        var = np.atleast_2d(np.asarray(self.variances, dtype=np.float64))
        w = np.atleast_1d(np.asarray(self.weights, dtype=np.float64))
        if mu.ndim != 2 or var.shape != mu.shape or w.shape != (mu.shape[0],):
            raise ValueError(
                f"need means [K, d], variances [K, d], weights [K]; got {mu.shape}, {var.shape}, {w.shape}"
            )
        if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(var)) and np.all(np.isfinite(w))):
            raise ValueError("means, variances and weights must be finite")
        if np.any(var <= 0):
            raise ValueError("variances must be > 0")
        if np.any(w <= 0):
            raise ValueError("weights must be > 0")
        for name, arr in (("means", mu), ("variances", var), ("weights", w / w.sum())):
            arr = np.array(arr)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    def _check_x(self, x_tilde) -> np.ndarray:
        x = np.asarray(x_tilde, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x_tilde must have shape [batch, {self.dim}], got {x.shape}")
        return x

    def posterior_weights(self, x_tilde, edm_sigma: float) -> np.ndarray:
        """``w_k(x~)``, the responsibility of each component for each sample, shape ``[batch, K]``."""
        x = self._check_x(x_tilde)
        s2 = as_real("edm_sigma", edm_sigma) ** 2
        var = self.variances + s2  # [K, d]
        diff = x[:, None, :] - self.means[None]  # [B, K, d]
        loglik = -0.5 * np.sum(diff**2 / var + np.log(2 * math.pi * var), axis=-1) + np.log(self.weights)
        loglik -= loglik.max(axis=1, keepdims=True)
        w = np.exp(loglik)
        return w / w.sum(axis=1, keepdims=True)

    def denoise(self, x_tilde, edm_sigma: float) -> np.ndarray:
        """The exact denoiser ``D(x~, sigma~) = E[x0 | x~]`` (the ideal network's data prediction)."""
        x = self._check_x(x_tilde)
        s = as_real("edm_sigma", edm_sigma)
        if s < 0:
            raise ValueError(f"edm_sigma must be >= 0, got {s}")
        if s == 0:
            return x.copy()
        w = self.posterior_weights(x, s)
        shrink = self.variances / (self.variances + s * s)  # [K, d]
        comp = self.means[None] + shrink[None] * (x[:, None, :] - self.means[None])
        return np.einsum("bk,bkd->bd", w, comp)

    def eps(self, x_tilde, edm_sigma: float) -> np.ndarray:
        """The ideal noise prediction ``(x~ - D) / sigma~`` = the ODE drift ``dx~/dsigma~``."""
        s = as_real("edm_sigma", edm_sigma)
        if s <= 0:
            raise ValueError(f"edm_sigma must be > 0 for eps, got {s}")
        return (np.asarray(x_tilde, dtype=np.float64) - self.denoise(x_tilde, s)) / s

    def sample(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """``num`` exact draws from the mixture."""
        n = as_int("num", num, minimum=1)
        comp = rng.choice(self.num_components, size=n, p=self.weights)
        return self.means[comp] + np.sqrt(self.variances[comp]) * rng.standard_normal((n, self.dim))

    def gaussian_flow(self, x_tilde_start, sigma_start: float, sigma_end: float) -> np.ndarray:
        """Closed-form probability-flow ODE solution for ``K = 1``.

        ``x~(s) = mu + (x~(s0) - mu) * sqrt((v + s^2) / (v + s0^2))`` per coordinate.
        """
        if self.num_components != 1:
            raise ValueError(
                f"gaussian_flow needs a single Gaussian, this mixture has {self.num_components} components"
            )
        x = self._check_x(x_tilde_start)
        s0, s1 = as_real("sigma_start", sigma_start), as_real("sigma_end", sigma_end)
        if s0 < 0 or s1 < 0:
            raise ValueError(f"sigmas must be >= 0, got {s0}, {s1}")
        mu, v = self.means[0], self.variances[0]
        return mu + (x - mu) * np.sqrt((v + s1 * s1) / (v + s0 * s0))


def isotropic_gaussian(dim: int, mean: float = 0.0, std: float = 0.5) -> GaussianMixture:
    """``N(mean * 1, std^2 I)`` in ``dim`` dimensions."""
    d = as_int("dim", dim, minimum=1)
    return GaussianMixture(np.full((1, d), as_real("mean", mean)), np.full((1, d), as_real("std", std) ** 2), [1.0])


def anisotropic_gaussian(dim: int, seed: int = 0) -> GaussianMixture:
    """A Gaussian with random mean and standard deviations log-spread over [0.05, 1]."""
    rng = np.random.default_rng(as_int("seed", seed, minimum=0))
    d = as_int("dim", dim, minimum=1)
    std = np.exp(rng.uniform(np.log(0.05), 0.0, size=d))
    return GaussianMixture(rng.normal(0, 0.5, size=(1, d)), (std**2)[None], [1.0])


def random_mixture(
    dim: int, num_components: int = 4, seed: int = 0, spread: float = 1.0, std_range: tuple[float, float] = (0.05, 0.3)
) -> GaussianMixture:
    """A reproducible mixture: means ``N(0, spread^2)``, per-coordinate stds log-uniform in ``std_range``."""
    rng = np.random.default_rng(as_int("seed", seed, minimum=0))
    d = as_int("dim", dim, minimum=1)
    k = as_int("num_components", num_components, minimum=1)
    lo, hi = std_range
    if not 0 < lo <= hi:
        raise ValueError(f"std_range must satisfy 0 < low <= high, got {std_range!r}")
    std = np.exp(rng.uniform(np.log(lo), np.log(hi), size=(k, d)))
    return GaussianMixture(rng.normal(0, as_real("spread", spread), size=(k, d)), std**2, rng.uniform(0.5, 1.5, size=k))
