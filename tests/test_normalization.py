"""Normalisation fitted on the data, undone on the output."""

from __future__ import annotations

import numpy as np
import pytest

from napari_atbsn.errors import ImageError
from napari_atbsn.normalization import Normalization, fit_normalization


@pytest.mark.parametrize("mode", ["range255", "zscore"])
def test_apply_undo_round_trip(mode: str) -> None:
    x = np.random.default_rng(0).normal(1000, 50, (2, 3, 16, 16)).astype(np.float32)
    norm = fit_normalization(x, mode)
    np.testing.assert_allclose(norm.undo(norm.apply(x)), x, rtol=1e-5)
    assert Normalization.from_dict(norm.to_dict()) == norm


def test_zscore_is_zero_mean_unit_variance_per_channel() -> None:
    x = np.stack([np.random.default_rng(1).normal(m, s, (1, 32, 32)) for m, s in ((10, 2), (500, 40))], axis=1)
    n = fit_normalization(x, "zscore").apply(x.astype(np.float32))
    np.testing.assert_allclose(n.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(n.std(axis=(0, 2, 3)), 1, atol=1e-4)


def test_range255_maps_percentiles() -> None:
    x = np.linspace(0, 1000, 100_000, dtype=np.float32).reshape(1, 1, 250, 400)
    n = fit_normalization(x, "range255").apply(x)
    assert abs(np.percentile(n, 0.1)) < 0.01 and abs(np.percentile(n, 99.9) - 255) < 0.01


def test_constant_image_is_refused() -> None:
    with pytest.raises(ImageError, match="constant"):
        fit_normalization(np.full((1, 1, 8, 8), 7.0), "zscore")


def test_nan_is_refused() -> None:
    x = np.ones((1, 1, 8, 8))
    x[0, 0, 3, 3] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        fit_normalization(x, "range255")


def test_channel_mismatch_is_explained() -> None:
    norm = fit_normalization(np.random.default_rng(0).random((1, 3, 8, 8)), "zscore")
    with pytest.raises(ImageError, match="3"):
        norm.apply(np.zeros((1, 1, 8, 8), np.float32))
