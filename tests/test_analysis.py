"""`atbsn analyze`: the noise's spatial correlation and the recommendation scripts read."""

from __future__ import annotations

import numpy as np
import pytest

from napari_atbsn import analysis
from napari_atbsn.analysis import (
    PLANE_NOISE_INDEPENDENT_BELOW,
    REPEATED_SCENE_CONTEXT,
    analyze_noise,
    check_plane_noise,
    plane_noise_correlation,
)
from napari_atbsn.errors import ConfigError, ImageError
from napari_atbsn.sample_data import OFFSET, add_correlated_noise, add_poisson_gaussian_noise, make_clean


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return make_clean(planes=4, size=192, seed=2, brightness=1.0)


def test_correlated_camera_noise_recommends_atbsn_with_a_covering_blind_spot(clean) -> None:
    noisy = add_correlated_noise(clean, correlation_sigma=0.8, seed=4)
    a = analyze_noise(noisy, "ZYX")
    assert a.method == "residuals"  # the planes differ in content
    assert 0.5 < a.neighbour < 0.75  # the generator's correlation is 0.67
    # the 4 planes' noise is independent: one neighbouring plane on each side as context
    assert a.recommended_line() == "recommended: atbsn k_a=7 k_b=3 context=1"
    assert a.recommendation() == {"method": "atbsn", "k_a": 7, "k_b": 3, "context": 1}
    assert a.report().splitlines()[-1] == a.recommended_line()


def test_pixel_independent_noise_recommends_dbsn(clean) -> None:
    a = analyze_noise(add_poisson_gaussian_noise(clean, seed=5), "ZYX")
    assert abs(a.neighbour) < 0.2  # a little signal leaks into single-image residuals of dense content
    # D-BSN takes no neighbouring planes, so nothing is said of context in the line scripts read
    assert a.recommended_line() == "recommended: dbsn"
    assert a.recommendation() == {"method": "dbsn", "context": 0}
    assert a.context is not None and a.context.context == 1
    assert "context             0: D-BSN denoises plane by plane; with --method atbsn:" in a.report()


def test_repeated_frames_use_plane_differences_and_measure_the_noise_exactly(clean) -> None:
    rng = np.random.default_rng(0)
    frames = np.stack([clean[0] + rng.normal(0, 5, clean[0].shape) for _ in range(6)]).astype(np.float32)
    a = analyze_noise(frames, "TYX")
    assert a.method == "plane differences"
    assert a.noise_std == pytest.approx(5, rel=0.05)
    assert abs(a.neighbour) < 0.03
    # one scene repeated with independent noise: every frame is another look at the signal, which stack context
    # uses and D-BSN (plane by plane) cannot
    assert a.recommended_line() == "recommended: atbsn k_a=1 k_b=1 context=2"
    assert "planes repeat one scene" in a.report()


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


# -- the noise of neighbouring planes (stack context) -------------------------------------------------------------
@pytest.fixture(scope="module")
def zstack() -> np.ndarray:
    """A Z-stack whose content changes from plane to plane, with camera-like noise independent between planes."""
    return add_correlated_noise(make_clean(planes=6, size=192, seed=3), seed=1)


@pytest.fixture(scope="module")
def shared_noise() -> np.ndarray:
    """The same clean stack with one fixed noise pattern added to every plane (and a little independent noise)."""
    rng = np.random.default_rng(7)
    clean = make_clean(planes=6, size=192, seed=3)
    pattern = rng.normal(0, 5, clean.shape[1:])
    return (clean + OFFSET + pattern + rng.normal(0, 1, clean.shape)).astype(np.float32)


def test_independent_plane_noise_recommends_as_much_context_as_the_stack_allows(zstack) -> None:
    for planes, context in ((6, 2), (5, 2), (4, 1), (3, 1)):
        measured = plane_noise_correlation(zstack[:planes], "ZYX")
        assert measured.axis == "Z" and measured.planes == planes and measured.pairs == planes - 1
        assert abs(measured.correlation) < 0.05, measured.correlation
        assert measured.context == context
        assert "independent" in measured.reason and f"--context {context}" in measured.reason
    check_plane_noise(zstack, "ZYX", 2)  # independent noise: context allowed


def test_noise_shared_by_the_planes_is_detected_and_refused_as_context(shared_noise) -> None:
    measured = plane_noise_correlation(shared_noise, "ZYX")
    assert measured.correlation > 0.8 and measured.shared
    assert measured.context == 0
    assert "share noise" in measured.reason and "copy" in measured.reason and "--context 0" in measured.reason
    with pytest.raises(ConfigError, match="--context 0") as err:
        check_plane_noise(shared_noise, "ZYX", 2)
    assert f"{measured.correlation:.2f}" in str(err.value) and "Z planes" in str(err.value)
    check_plane_noise(shared_noise, "ZYX", 0)  # a 2-D model does not look at the neighbours


def test_a_static_scene_with_independent_noise_takes_context_along_t(clean) -> None:
    rng = np.random.default_rng(3)
    frames = np.stack([clean[0] + rng.normal(0, 5, clean[0].shape) for _ in range(5)]).astype(np.float32)
    measured = plane_noise_correlation(frames, "TYX")
    assert measured.axis == "T" and abs(measured.correlation) < PLANE_NOISE_INDEPENDENT_BELOW
    assert measured.context == 2
    # a longer repetition of one scene takes more neighbours: each is another look at the same signal
    longer = np.stack([clean[0] + rng.normal(0, 5, clean[0].shape) for _ in range(17)]).astype(np.float32)
    measured = plane_noise_correlation(longer, "TYX")
    assert measured.context == REPEATED_SCENE_CONTEXT and "repeat one scene" in measured.reason
    changing = plane_noise_correlation(add_correlated_noise(make_clean(planes=11, size=128, seed=4), seed=2), "ZYX")
    assert changing.context == 2 and "repeat" not in changing.reason  # a Z-stack whose content changes
    # a Z axis is preferred over T; with only 2 planes along Z there is no context (but the noise is measured)
    tz = np.stack([frames[:2]] * 3)
    measured = plane_noise_correlation(tz, "TZYX")
    assert measured.axis == "Z" and measured.planes == 2 and measured.correlation is not None
    assert measured.context == 0 and "only 2 plane(s) along Z" in measured.reason


def test_a_single_plane_has_no_context(zstack) -> None:
    measured = plane_noise_correlation(zstack[0], "YX")
    assert (measured.axis, measured.planes, measured.correlation, measured.context) == (None, 0, None, 0)
    assert "no neighbouring planes" in measured.reason
    a = analyze_noise(zstack[0], "YX", level=False)
    assert a.context is None and "plane noise corr." not in a.report()
    assert a.recommendation()["context"] == 0


def test_the_report_gives_the_plane_noise_correlation_and_the_context(zstack) -> None:
    a = analyze_noise(zstack, "ZYX", level=False)
    line = next(x for x in a.report().splitlines() if x.startswith("plane noise corr."))
    assert line == f"plane noise corr.   {a.context.correlation:.3f} between neighbouring Z planes (5 pairs)"
    assert "context             2: neighbouring Z planes have independent noise" in a.report()
    assert a.recommended_line().endswith(" context=2") and a.recommendation()["context"] == 2


def test_shared_noise_is_not_measured_by_plane_differences(clean, monkeypatch) -> None:
    # a static scene with a fixed pattern: differences of its planes cancel the scene and the pattern alike, so
    # they would look like the noise of a repeated scene and measure only the independent part
    rng = np.random.default_rng(4)
    pattern = rng.normal(0, 5, clean[0].shape)
    frames = np.stack([clean[0] + pattern + rng.normal(0, 1.5, clean[0].shape) for _ in range(6)]).astype(np.float32)
    a = analyze_noise(frames, "TYX", level=False)
    assert a.context.shared and a.context.correlation > 0.8
    assert a.method == "residuals" and any("share noise" in n for n in a.notes)
    assert a.recommendation()["context"] == 0 and "context=" not in a.recommended_line()
    assert a.noise_std > 4  # the pattern counts as noise: differences would have given about 1.5
    monkeypatch.setattr(analysis, "PLANE_NOISE_INDEPENDENT_BELOW", 2.0)  # without the check
    assert analyze_noise(frames, "TYX", level=False).method == "plane differences"
