"""The benchmark's image metrics against closed forms."""
import numpy as np
import pytest

pytest.importorskip("torchmetrics")
from scipy import linalg  # noqa: E402

from sada.bench.metrics import frechet_distance, psnr  # noqa: E402


def test_frechet_distance_equals_the_sqrtm_closed_form_on_full_rank_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 5)), rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)) + 0.3
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb - 2 * np.real(linalg.sqrtm(ca @ cb)))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_a_set_with_itself_is_zero_even_when_rank_deficient():
    feats = np.random.default_rng(1).normal(size=(8, 32))  # 8 samples, 32 features: covariance of rank 7
    assert abs(frechet_distance(feats, feats)) < 1e-5  # sqrt of round-off on the null space: ~1e-8 each
    shifted = feats + 2.0
    assert frechet_distance(feats, shifted) == pytest.approx(32 * 4.0, rel=1e-6)


def test_psnr_of_a_known_error():
    import torch

    ref = torch.zeros(2, 1, 4, 4)
    img = ref + 0.02  # data range 2: PSNR = 10 log10(4 / 4e-4) = 40 dB
    assert psnr(img, ref) == pytest.approx(40.0, abs=1e-4)
    assert psnr(ref, ref) == 100.0


def test_frechet_distance_rejects_mismatched_widths():
    with pytest.raises(ValueError, match="feature sets"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
