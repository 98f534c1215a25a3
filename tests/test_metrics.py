"""PSNR and SSIM follow the stated convention."""

from __future__ import annotations

import numpy as np
import pytest

from napari_atbsn.metrics import psnr, ssim


def test_psnr_known_value() -> None:
    ref = np.zeros((8, 8))
    assert psnr(ref + 1.0, ref, data_range=255) == pytest.approx(20 * np.log10(255))
    assert psnr(ref, ref, data_range=1) == float("inf")


def test_psnr_default_range_is_reference_span() -> None:
    ref = np.linspace(100, 300, 64).reshape(8, 8)
    assert psnr(ref + 2.0, ref) == pytest.approx(10 * np.log10(200**2 / 4))


def test_ssim_identity_noise_and_channels() -> None:
    rng = np.random.default_rng(0)
    ref = rng.random((32, 40, 3))
    assert ssim(ref, ref, 1.0, axes="YXC") == pytest.approx(1.0)
    noisy = ref + rng.normal(0, 0.2, ref.shape)
    s = ssim(noisy, ref, 1.0, axes="YXC")
    assert 0 < s < 0.9
    per_channel = [ssim(noisy[..., c], ref[..., c], 1.0, axes="YX") for c in range(3)]
    assert s == pytest.approx(np.mean(per_channel))
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(ref, ref[:-1], 1.0, axes="YXC")
