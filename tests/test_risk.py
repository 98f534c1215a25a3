"""The self-supervised risk estimate and the blend with the noisy input (napari_atbsn.risk)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_atbsn import risk as rk
from napari_atbsn.errors import ImageError
from napari_atbsn.filters import gaussian_kernel, separable
from napari_atbsn.plane_noise import PlaneNoise, estimate_noise_levels
from napari_atbsn.sample_data import make_clean

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    """A microscopy-like clean stack (P=2, C=1, 128, 128), 20..200 counts."""
    x = make_clean(planes=2, size=128, seed=4, brightness=1.0).astype(np.float64)
    return 20 + 180 * (x - x.min()) / np.ptp(x)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return separable(x, gaussian_kernel(sigma))


def test_noise_level_model_round_trips_and_holds_its_ends() -> None:
    nl = rk.NoiseLevel.affine([0.5, 0.0], [4.0, 9.0], 0.0, 100.0, correlation_length=3)
    assert rk.NoiseLevel.from_dict(nl.to_dict()) == nl
    assert nl.variance(np.array([[[10.0]], [[10.0]]])).ravel().tolist() == [9.0, 9.0]
    assert nl.scaled(0.5).variance(np.zeros((2, 1, 1))).ravel().tolist() == [2.0, 4.5]
    assert nl.variance(np.full((2, 1, 1), 1e4)).ravel().tolist() == [54.0, 9.0]   # held beyond the range
    assert rk.NoiseLevel.constant(0.0).variance(np.zeros((1, 1, 1))).item() > 0  # never zero
    with pytest.raises(ImageError):
        nl.variance(np.zeros((3, 4, 4)))
    with pytest.raises(ImageError):
        rk.NoiseLevel(((0.0, 1.0),), ((1.0,),))


def test_valid_blind_spots_follow_the_correlation_length() -> None:
    assert rk.valid_blind_spots([0, 1, 3, 5, 7], 1) == [1, 3, 5, 7]   # pixel-independent: k_b >= 1
    assert rk.valid_blind_spots([0, 1, 3, 5, 7], 3) == [5, 7]         # correlated up to 2 px: k_b >= 5
    acf = np.array([1.0, 0.67, 0.21, 0.03])
    assert rk.correlation_length(acf) == 3


@pytest.mark.parametrize("sigma", [5.0, 10.0])
def test_gaussian_noise_level_within_10_percent(clean, sigma) -> None:
    y = clean[:, None] + RNG.normal(0, sigma, (2, 1, *clean.shape[1:]))
    nl = rk.estimate_noise_level(y, model="constant")
    est = nl.variance(clean[:, None]).mean()
    assert 0.9 * sigma**2 < est < 1.1 * sigma**2


def test_light_noise_on_texture_is_not_taken_for_noise(clean) -> None:
    """σ = 2 on a 180-count texture: a residual in the flattest blocks reads 1.6x the truth
    (measured); the eigenvalue test keeps texture out."""
    y = clean[:, None] + RNG.normal(0, 2.0, (2, 1, *clean.shape[1:]))
    est = rk.estimate_noise_level(y).variance(clean[:, None]).mean()
    assert 0.85 * 4.0 < est < 1.15 * 4.0


def test_poisson_gaussian_noise_level_within_10_percent_and_never_above_2x(clean) -> None:
    x = clean[:, None]
    y = RNG.poisson(x).astype(np.float64) + RNG.normal(0, 2.0, x.shape)   # var = x + 4
    nl = rk.estimate_noise_level(y, model="affine")
    true = x + 4.0
    est = nl.variance(x)
    # the lower of two selections (risk.level_statistics): 0.88 measured, so it errs low, never above 1.1
    assert 0.85 < est.mean() / true.mean() < 1.1
    assert np.all(est < 2 * true)                 # the unsafe direction, everywhere
    lv, vv = np.array(nl.levels[0]), np.array(nl.variances[0])
    assert 0.8 < np.polyfit(lv, vv, 1)[0] < 1.2   # the Poisson slope is found


def test_separate_images_get_their_own_noise_level(clean) -> None:
    """Two images of one sample (the S axis) with 16x different noise: each gets its own model, within 10 %,
    where the pooled one is off by 2x and more on each (in the unsafe direction on the lighter one); the
    record keeps the pooled model readable as before, and one image is the plain estimate."""
    x = clean[:, None]
    sigma = np.array([2.0, 8.0]).reshape(2, 1, 1, 1)
    y = x + RNG.normal(0, 1, x.shape) * sigma
    nl = estimate_noise_levels(y, [0, 1])
    assert isinstance(nl, PlaneNoise) and nl.channels == 1 and nl.correlation_length == 1
    est = nl.variance(x).mean(axis=(1, 2, 3))
    ratio = est / sigma.ravel() ** 2
    assert np.all((ratio > 0.85) & (ratio < 1.1)), est  # 0.91 and 0.88 measured: the estimate errs low
    pooled = nl.pooled.variance(x).mean(axis=(1, 2, 3))
    assert pooled[0] > 2 * 4.0 and pooled[1] < 64.0 / 1.5, pooled
    assert rk.NoiseLevel.from_dict(nl.to_dict()) == nl.pooled and len(nl.to_dict()["per_plane"]) == 2
    np.testing.assert_allclose(nl.scaled(0.5).variance(x), 0.5 * nl.variance(x))
    # the lighter image's risk: unbiased with its own model, meaningless with the pooled one
    f = x + RNG.normal(0, 1.0, x.shape)
    assert abs(rk.risk(f[:1], y[:1], nl.planes[0]) - 1.0) < 0.5 and rk.risk(f[:1], y[:1], nl.pooled) < -10
    with pytest.raises(ImageError, match="planes whose noise was measured one by one"):
        nl.variance(x[:1])
    assert isinstance(estimate_noise_levels(y, [0, 0]), rk.NoiseLevel)


def test_a_recorded_per_image_model_is_read_back_for_other_planes_of_the_same_images(clean) -> None:
    """The distillation report scores other planes than the calibration measured: each gets its image's own
    level from the record, the pooled one where its image was not sampled or the record has one model."""
    from napari_atbsn.plane_noise import noise_from_dict

    def noise_of_images(record, record_images, images):
        from napari_atbsn.plane_noise import noise_of_images as of_images

        return of_images(noise_from_dict(record), record_images, images)

    x = clean[:, None]
    y = x + np.random.default_rng(7).normal(0, 1, x.shape) * np.array([2.0, 8.0]).reshape(2, 1, 1, 1)
    rec = estimate_noise_levels(y, [5, 7]).to_dict()
    assert noise_from_dict(rec) == estimate_noise_levels(y, [5, 7])  # read back whole
    got = noise_of_images(rec, [5, 7], [7, 7, 5, 9])
    assert isinstance(got, PlaneNoise) and got.pooled == rk.NoiseLevel.from_dict(rec)
    own = [rk.NoiseLevel.from_dict(d) for d in rec["per_plane"]]
    assert got.planes == (own[1], own[1], own[0], got.pooled)
    assert noise_of_images(rec, None, [5, 7]) == got.pooled and noise_of_images(rec, [5, 7], None) == got.pooled
    assert noise_of_images(rec, [5], [5]) == got.pooled  # the record's planes do not match: pooled
    assert noise_of_images(own[0].to_dict(), [5, 7], [5]) == own[0]


def test_correlated_noise_level_with_the_measured_correlation(clean) -> None:
    """Noise blurred to a 0.67 neighbour correlation: the residual loses part of it, the acf restores it."""
    k = gaussian_kernel(0.8)
    k = k / np.sqrt((k**2).sum())               # keeps the variance
    white = RNG.normal(0, 6.0, (2, 1, *clean.shape[1:]))
    noise = separable(white, k)
    # its autocorrelation, as analysis.py would measure it (exactly: the kernel's autocorrelation)
    kk = np.outer(k, k)
    acf = np.zeros((7, 7))
    for a in range(-3, 4):
        for b in range(-3, 4):
            sh = np.roll(np.roll(np.pad(kk, 3), a, 0), b, 1)
            acf[a + 3, b + 3] = (np.pad(kk, 3) * sh).sum()
    acf /= acf[3, 3]
    nl = rk.estimate_noise_level(clean[:, None] + noise, acf, model="constant")
    assert nl.correlation_length == 3
    assert 0.85 * 36 < nl.variances[0][0] < 1.15 * 36
    naive = rk.estimate_noise_level(clean[:, None] + noise, None, model="constant")
    assert naive.variances[0][0] < 0.6 * 36     # unwhitened, correlated noise hides in few directions


def test_risk_estimate_matches_the_true_mse_of_an_independent_output(clean) -> None:
    x = clean[:, None]
    y = x + RNG.normal(0, 10.0, x.shape)
    f = x + RNG.normal(0, 4.0, x.shape)        # independent of the noise: true risk 16
    nl = rk.NoiseLevel.constant(100.0)
    assert abs(rk.risk(f, y, nl) - 16.0) < 1.5
    for window in (5, 9):                      # local α sees no n_i: its risk estimate stays unbiased
        a = rk.blend_weights(f, y, nl, window=window)
        assert abs(rk.risk(f, y, nl, a) - np.mean((rk.blend(y, f, a) - x) ** 2)) < 1.0
    assert abs(rk.estimated_gain_db(f, y, nl) - 10 * np.log10(100 / 16)) < 0.4
    a = rk.blend_weights(f, y, nl, window=None, safety=1.0)
    g = rk.blend(y, f, a)
    assert abs(rk.risk(f, y, nl, a) - np.mean((g - x) ** 2)) < 1.5
    assert np.mean((g - x) ** 2) < 16.0 * 100 / 116 * 1.1   # σ²R/(σ²+R)


@pytest.mark.parametrize("correlated", [False, True])
def test_sure_measures_the_noise_an_output_keeps_of_its_pixel(clean, correlated) -> None:
    """A 3x3 mean sees its own pixel: it keeps E[f_i n_i] = Σ_j Σ_ij / 9 of the noise (σ²/9 for white noise,
    more when neighbours' noise is correlated), which the probe measures; with it the risk is the true MSE,
    and without it (the blind-spot formula) the risk is underestimated."""
    x = clean[:, None]
    k = gaussian_kernel(0.8)
    k = k / np.sqrt((k**2).sum())
    white = RNG.normal(0, 6.0, x.shape)
    noise = separable(white, k) if correlated else white
    acf = None
    if correlated:
        kk = np.pad(np.outer(k, k), 3)
        acf = np.array([[(kk * np.roll(np.roll(kk, a, 0), b, 1)).sum() for b in range(-3, 4)] for a in range(-3, 4)])
        acf /= acf[3, 3]
    y = x + noise
    nl = rk.NoiseLevel.constant(36.0)
    box = np.ones(3) / 3

    def f_of(img: np.ndarray) -> np.ndarray:
        return separable(img, box)

    f = f_of(y)
    probe = rk.noise_probe(f, y, nl, acf)
    c = rk.leak(f, f_of(y + rk.PROBE_SCALE * probe), probe)
    expected = 36.0 / 9 * (acf[2:5, 2:5].sum() if correlated else 1.0)
    assert abs(float(c.ravel()[0]) - expected) < 0.1 * expected
    true = float(np.mean((f - x) ** 2))
    assert abs(rk.risk(f, y, nl, 1.0, c) - true) < 0.1 * true
    assert rk.risk(f, y, nl) < true - 1.5 * expected  # the blind-spot formula misses 2c
    field = rk.correlated_field((4, 1, 64, 64), acf, seed=1)
    assert abs(field.var() - 1) < 0.05
    if correlated:  # the probe has the noise's correlation
        assert abs(np.mean(field[..., 1:] * field[..., :-1]) - acf[3, 4]) < 0.05


def test_blend_keeps_the_input_when_the_output_is_garbage(clean) -> None:
    x = clean[:, None]
    y = x + RNG.normal(0, 5.0, x.shape)
    nl = rk.NoiseLevel.constant(25.0)
    garbage = {"noisier": y + RNG.normal(0, 50.0, x.shape), "unrelated": RNG.uniform(0, 255, x.shape)}
    for f in garbage.values():
        for window in (None, 9):
            a = rk.blend_weights(f, y, nl, window=window)
            assert a.min() >= 0 and a.max() <= 1
            g = rk.blend(y, f, a)
            assert np.mean((g - x) ** 2) < 1.05 * np.mean((y - x) ** 2)
        assert rk.estimated_gain_db(f, y, nl, rk.blend_weights(f, y, nl)) < 0.3


def test_blend_takes_the_output_when_the_noise_dominates(clean) -> None:
    x = clean[:, None]
    y = x + RNG.normal(0, 30.0, x.shape)
    f = _blur(x, 0.7)                           # nearly clean, independent of the noise
    nl = rk.NoiseLevel.constant(900.0)
    a = rk.blend_weights(f, y, nl, window=None)
    assert a.mean() > 0.99
    assert np.mean((rk.blend(y, f, a) - x) ** 2) < 1.2 * np.mean((f - x) ** 2)
    # locally the noise of a 9x9 mean pulls α below 1 (measured 0.94): still within 2 % of σ² of f
    a = rk.blend_weights(f, y, nl, window=9)
    assert a.mean() > 0.9
    assert np.mean((rk.blend(y, f, a) - x) ** 2) < np.mean((f - x) ** 2) + 0.02 * 900


def test_choose_k_b_ranks_only_valid_blind_spots(clean) -> None:
    x = clean[:, None]
    y = x + RNG.normal(0, 8.0, x.shape)
    nl = rk.NoiseLevel.constant(64.0, correlation_length=2)
    outputs = {0: y.copy(),                     # no blind spot: the identity, risk estimate 0 - never ranked
               1: x + RNG.normal(0, 1.0, x.shape),
               3: x + RNG.normal(0, 3.0, x.shape),
               5: x + RNG.normal(0, 5.0, x.shape)}
    k, risks = rk.choose_k_b(outputs, y, nl)
    assert sorted(risks) == [3, 5] and k == 3
    k, g, gain = rk.best_blend(outputs, y, nl)
    true_gain = 10 * np.log10(np.mean((y - x) ** 2) / np.mean((g - x) ** 2))
    assert k == 3 and abs(gain - true_gain) < 0.6   # sampling spread of E (f − y)² on 2 x 128²: ±0.25 dB
    with pytest.raises(ImageError):
        rk.choose_k_b({0: y, 1: y}, y, nl)


def _light_sample() -> tuple[np.ndarray, ...]:
    """The generated sample's noise scaled down 4x, an oracle-imperfect smooth f, the noise's acf."""
    from napari_atbsn.sample_data import OFFSET, add_correlated_noise

    rng = np.random.default_rng(1)
    x = make_clean(planes=2, size=128, seed=2)[:, None].astype(np.float64) + OFFSET
    noisy = add_correlated_noise(x[:, 0] - OFFSET, seed=5).astype(np.float64)[:, None]
    y = x + (noisy - x) / 4
    f = _blur(x, 1.5) + rng.normal(0, 0.3, x.shape)   # oracle-imperfect: blurs the texture
    acf = np.exp(-0.5 * (np.hypot(*np.mgrid[-3:4, -3:4]) / 1.13) ** 2)  # the sample's correlation
    return x, y, f, acf


def test_light_noise_sample_blend_is_never_worse() -> None:
    """A smooth estimate alone loses to the noisy input; the estimated noise level (1.3x the truth
    here, measured: fine texture as weak as the noise) and both blends beat it."""
    x, y, f, acf = _light_sample()
    nl = rk.estimate_noise_level(y, acf)
    mse = lambda a: float(np.mean((a - x) ** 2))  # noqa: E731
    assert mse(f) > mse(y)                      # the light-noise problem
    assert 0.7 < rk.noise_mse(f, y, nl) / mse(y) < 1.5   # and far from the unsafe 2x
    for window in (None, 9):
        a = rk.blend_weights(f, y, nl, window=window)
        g = rk.blend(y, f, a)
        assert mse(g) < mse(y)
        true_gain = 10 * np.log10(mse(y) / mse(g))
        # 2.0 (global) and 2.9 dB (local) optimistic, measured; the open problem of the xfail below
        assert abs(rk.estimated_gain_db(f, y, nl, a) - true_gain) < (2.5 if window is None else 3.0)


@pytest.mark.xfail(strict=True, reason="open problem: σ̂² reads 1.3x on light noise over fine texture, so the "
                   "global estimate is 1.5 dB optimistic (docs/never-worse-research.md)")
def test_light_noise_estimated_gain_within_1_db() -> None:
    x, y, f, acf = _light_sample()
    nl = rk.estimate_noise_level(y, acf)
    g = rk.blend(y, f, rk.blend_weights(f, y, nl))
    true_gain = 10 * np.log10(np.mean((y - x) ** 2) / np.mean((g - x) ** 2))
    assert abs(rk.estimated_gain_db(f, y, nl, rk.blend_weights(f, y, nl)) - true_gain) < 1.0


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ImageError):
        rk.estimate_noise_level(np.zeros((64, 64)))
    with pytest.raises(ImageError):
        rk.estimate_noise_level(np.full((1, 1, 64, 64), np.nan))
    with pytest.raises(ImageError):
        rk.blend_weights(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 8, 9)), rk.NoiseLevel.constant(1.0))
    with pytest.raises(ImageError):
        rk.blend_weights(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 8, 8)), rk.NoiseLevel.constant(1.0), window=4)


def test_variance_maps_are_reused_only_inside_a_calibration_and_only_for_the_same_arrays() -> None:
    from napari_atbsn.risk import NoiseLevel, noise_variance_map, reusing_variance_maps

    rng = np.random.default_rng(5)
    y = rng.normal(100, 5, size=(2, 1, 40, 40))
    f, g = y + rng.normal(size=y.shape), y - 1.0
    level = NoiseLevel(((0.0, 200.0),), ((4.0, 30.0),), 1)
    plain = noise_variance_map(f, y, level)
    assert noise_variance_map(f, y, level) is not plain  # outside the block nothing is kept
    with reusing_variance_maps():
        first = noise_variance_map(f, y, level)
        assert noise_variance_map(f, y, level) is first
        np.testing.assert_array_equal(first, plain)
        other = noise_variance_map(g, y, level)  # another output: computed, not the first's
        assert other is not first and not np.array_equal(other, first)
        assert noise_variance_map(f.copy(), y, level) is not first  # equal values, another array: computed
    assert noise_variance_map(f, y, level) is not first
