"""`atbsn analyze`: the noise's spatial correlation and the recommendation scripts read."""

from __future__ import annotations

import numpy as np
import pytest

from napari_atbsn.analysis import analyze_noise
from napari_atbsn.errors import ImageError
from napari_atbsn.sample_data import add_correlated_noise, add_poisson_gaussian_noise, make_clean


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return make_clean(planes=4, size=192, seed=2, brightness=1.0)


def test_correlated_camera_noise_recommends_atbsn_with_a_covering_blind_spot(clean) -> None:
    noisy = add_correlated_noise(clean, correlation_sigma=0.8, seed=4)
    a = analyze_noise(noisy, "ZYX")
    assert a.method == "residuals"  # the planes differ in content
    assert 0.5 < a.neighbour < 0.75  # the generator's correlation is 0.67
    assert a.recommended_line() == "recommended: atbsn k_a=7 k_b=3"
    assert a.report().splitlines()[-1] == a.recommended_line()


def test_pixel_independent_noise_recommends_dbsn(clean) -> None:
    a = analyze_noise(add_poisson_gaussian_noise(clean, seed=5), "ZYX")
    assert abs(a.neighbour) < 0.2  # a little signal leaks into single-image residuals of dense content
    assert a.recommended_line() == "recommended: dbsn"


def test_repeated_frames_use_plane_differences_and_measure_the_noise_exactly(clean) -> None:
    rng = np.random.default_rng(0)
    frames = np.stack([clean[0] + rng.normal(0, 5, clean[0].shape) for _ in range(6)]).astype(np.float32)
    a = analyze_noise(frames, "TYX")
    assert a.method == "plane differences"
    assert a.noise_std == pytest.approx(5, rel=0.05)
    assert abs(a.neighbour) < 0.03 and a.recommended_line() == "recommended: dbsn"


def test_weakly_correlated_noise_gets_a_small_inference_blind_spot(clean) -> None:
    noisy = add_correlated_noise(clean, correlation_sigma=0.5, seed=6)
    a = analyze_noise(noisy, "ZYX")
    rec = a.recommendation()
    assert rec["method"] == "atbsn" and rec["k_b"] <= rec["k_a"] and rec["k_a"] >= 3


def test_too_small_or_broken_images_are_refused() -> None:
    with pytest.raises(ImageError, match="too small"):
        analyze_noise(np.zeros((30, 30), np.float32), "YX")
    img = np.random.default_rng(0).normal(size=(80, 80)).astype(np.float32)
    img[5, 5] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        analyze_noise(img, "YX")
