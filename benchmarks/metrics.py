"""Fidelity metrics of the benchmark, honestly named.

* PSNR and SSIM of each method's samples against the baseline's samples from the same noise and labels
  (torchmetrics; images in [-1, 1], data range 2);
* FD-digits: the Frechet distance between classifier features (penultimate layer of the digit classifier
  trained here and shipped in ``benchmarks/assets``) of a method's samples and of real held-out digits. It is
  *not* FID: the feature network is a small digit CNN, not Inception;
* class accuracy: how often the classifier recognises the requested label in a sample.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg

__all__ = ["psnr", "psnr_per_image", "ssim", "frechet_distance", "FeatureMetrics"]


def _check(images: torch.Tensor, reference: torch.Tensor) -> None:
    if images.shape != reference.shape or images.ndim != 4:
        raise ValueError(
            f"need two [N, C, H, W] batches of one shape, got {tuple(images.shape)} and {tuple(reference.shape)}"
        )


def psnr_per_image(images: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """PSNR (dB) of every image in [-1, 1] against its reference (data range 2), capped at 100 dB
    (identical images), as float64."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check(images, reference)
    values = peak_signal_noise_ratio(
        images.float().clamp(-1, 1), reference.float().clamp(-1, 1), data_range=2.0, reduction="none", dim=(1, 2, 3)
    )
    return torch.clamp(values, max=100.0).double().cpu().numpy()


def psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of images in [-1, 1] against the reference (data range 2)."""
    return float(psnr_per_image(images, reference).mean())


def ssim(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean SSIM (Gaussian window) of images in [-1, 1] against the reference."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check(images, reference)
    kernel = min(11, images.shape[-1] - (1 - images.shape[-1] % 2))
    return float(
        structural_similarity_index_measure(
            images.float().clamp(-1, 1), reference.float().clamp(-1, 1), data_range=2.0, kernel_size=kernel
        )
    )


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of two feature sets ``[N, F]``."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"need two feature sets [N >= 2, F] of one width, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr (S_a S_b)^(1/2) = Tr (S_a^(1/2) S_b S_a^(1/2))^(1/2): symmetric PSD, so eigenvalues suffice and a
    # rank-deficient covariance (fewer samples than features) is no numerical problem.
    w, v = linalg.eigh(cov_a)
    half_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = linalg.eigvalsh(half_a @ cov_b @ half_a)
    trace_root = float(np.sum(np.sqrt(np.clip(inner, 0.0, None))))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)


class FeatureMetrics:
    """FD-digits and class accuracy with the shipped digit classifier."""

    def __init__(self, classifier, real_images: torch.Tensor):
        self.classifier = classifier
        self.real_features = self.features(real_images)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        return self.classifier.features(images.float().clamp(-1, 1)).double().cpu().numpy()

    @torch.no_grad()
    def accuracy(self, images: torch.Tensor, labels) -> float:
        predicted = self.classifier(images.float().clamp(-1, 1)).argmax(dim=1).cpu()
        return float((predicted == torch.as_tensor(labels)).float().mean())

    def fd_digits(self, images: torch.Tensor) -> float:
        return frechet_distance(self.features(images), self.real_features)
