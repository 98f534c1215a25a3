"""The never-worse default on the inputs a real lab produces (issue 33): separate images at different noise
levels, blank planes, padded canvases, photon counts, heavy noise clipped at zero, tiny crops. Each builds data
with a known clean image and asserts the default output's true gain per unit, and what the product says."""

from __future__ import annotations

import numpy as np
import pytest

from napari_atbsn.analysis import analyze_noise
from napari_atbsn.events import drain
from napari_atbsn.filters import flat_pixels
from napari_atbsn.inference.denoiser import load_model
from napari_atbsn.inference.inmemory import iter_denoise_outputs
from napari_atbsn.risk import estimate_noise_level


def _gain(out: np.ndarray, noisy: np.ndarray, clean: np.ndarray) -> float:
    return float(10 * np.log10(np.mean((noisy - clean) ** 2) / np.mean((out - clean) ** 2)))


def _default(model, data: np.ndarray, axes: str):
    outs = drain(iter_denoise_outputs(model, data, axes, ks=["auto"], batch_size=8, dtype="float32"))
    return outs[0], outs.calibration


def test_flat_pixels_marks_exactly_the_constant_squares() -> None:
    x = np.random.default_rng(0).normal(size=(1, 20, 20))
    x[0, 3:8, 4:9] = 7.0          # one 5x5 constant square
    x[0, 12:16, :] = 0.0          # four rows of zeros: no 5x5 square fits
    x[0, :, 15:20] = 2.0          # five constant columns at the right border
    f = flat_pixels(x)
    expect = np.zeros_like(f)
    expect[0, 3:8, 4:9] = True
    expect[0, :, 15:20] = True
    assert np.array_equal(f, expect)


def test_heavy_noise_clipped_at_zero_is_not_read_low() -> None:
    """A quarter of the pixels clipped at 0 by heavy noise (SIDD's dark images): the patches that touch 0 are
    not left out, which kept only the patches whose noise happened to be small and read 0.1x the variance."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:256, :256]
    clean = 60 + 40 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    noisy = np.clip(clean + rng.normal(0, 35, clean.shape), 0, 255)
    assert (noisy == 0).mean() > 0.05
    level = estimate_noise_level(noisy[None, None])
    ratio = float(level.variance(clean[None, None]).mean() / np.mean((noisy - clean) ** 2))
    assert 0.7 < ratio < 1.3, ratio


def test_photon_counts_are_measured_not_called_saturated() -> None:
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:192, :192]
    clean = 0.8 + 6 * (1 + np.sin(xx / 17.0) * np.sin(yy / 13.0))
    counts = rng.poisson(clean).astype(np.float64)
    assert (counts == 0).mean() > 0.02
    level = estimate_noise_level(counts[None, None])
    ratio = float(level.variance(clean[None, None]).mean() / np.mean((counts - clean) ** 2))
    assert 0.6 < ratio < 1.3, ratio


def test_padded_canvas_is_measured_around_its_fill(sample_stack) -> None:
    """20 % of the columns zero (a registered or stitched canvas): the analysis measures the noise in the rest."""
    noisy, _ = sample_stack
    padded = noisy.astype(np.float32).copy()
    padded[..., : padded.shape[-1] // 5] = 0
    plain, pad = analyze_noise(noisy, "ZYX"), analyze_noise(padded, "ZYX")
    assert pad.noise_level is not None
    assert abs(pad.noise_std / plain.noise_std - 1) < 0.25


def test_separate_images_at_different_noise_levels_each_get_their_own_blend(tiny_teacher, sample_stack) -> None:
    """σ 5, 20 and 80 as SYX: one weight for all lost 7.7 dB on the quietest image; each image now has its
    own weight, none comes back worse than it went in, and the line names the worst image."""
    _, clean = sample_stack
    rng = np.random.default_rng(3)
    x = clean[:3].astype(np.float64)
    sig = np.array([5.0, 20.0, 80.0]).reshape(-1, 1, 1)
    y = (x + sig * rng.standard_normal(x.shape)).astype(np.float32)
    out, cal = _default(load_model(tiny_teacher), y, "SYX")
    assert [s for s, _, _ in cal.images] == [0, 1, 2]
    assert "worst image" in cal.line()
    for s in range(3):
        assert _gain(out[s], y[s], x[s]) >= -0.1, s
    alphas = [a[0] for _, a, _ in cal.images]
    assert alphas[0] < alphas[2]


def test_a_blank_plane_passes_through_and_does_not_spoil_the_estimate(tiny_teacher, sample_stack) -> None:
    noisy, clean = sample_stack
    y = noisy.astype(np.float32).copy()
    y[1] = 0
    out, cal = _default(load_model(tiny_teacher), y, "ZYX")
    assert cal.gain_db is not None, cal.line()
    assert np.array_equal(out[1], y[1])
    for p in (0, 2, 3):
        assert _gain(out[p], y[p], clean[p]) >= -0.1, p


def test_padded_columns_are_returned_as_they_are(tiny_teacher, sample_stack) -> None:
    noisy, clean = sample_stack
    y = noisy.astype(np.float32).copy()
    w = y.shape[-1] // 5
    y[..., :w] = 0
    out, cal = _default(load_model(tiny_teacher), y, "ZYX")
    assert cal.gain_db is not None, cal.line()
    assert np.array_equal(out[..., :w], y[..., :w])
    assert _gain(out[..., w:], y[..., w:], clean[..., w:]) >= -0.1


def test_a_tiny_crop_returns_the_input_and_says_why(tiny_teacher, sample_stack) -> None:
    noisy, _ = sample_stack
    y = noisy[0, :12, :12].astype(np.float32)
    out, cal = _default(load_model(tiny_teacher), y, "YX")
    assert cal.gain_db is None
    assert np.array_equal(out, y)
    line = cal.line()
    assert line.startswith("estimated gain: unknown (") and "may be worse than the input" in line
    assert "--k-b 3" in line


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2))
def test_random_lab_stacks_are_never_worse_per_unit(tiny_teacher, sample_stack, seed: int) -> None:
    """Random mixes of noise levels, blank planes, flat borders and counts: the default's per-plane MSE never
    exceeds the input's by more than 2 %."""
    rng = np.random.default_rng(100 + seed)
    _, clean = sample_stack
    x = clean.astype(np.float64).copy()
    sig = rng.choice([3.0, 10.0, 30.0, 60.0], size=(len(x), 1, 1))
    y = x + sig * rng.standard_normal(x.shape)
    if rng.random() < 0.5:
        y = np.round(np.clip(y, 0, None))  # counts
    blank = int(rng.integers(len(x)))
    y[blank] = x[blank] = 0
    border = int(rng.integers(0, 20))
    if border:
        y[..., :border] = x[..., :border] = 0
    y = y.astype(np.float32)
    out, _ = _default(load_model(tiny_teacher), y, "SYX")
    for p in range(len(x)):
        mse_in, mse_out = np.mean((y[p] - x[p]) ** 2), np.mean((out[p] - x[p]) ** 2)
        assert mse_out <= 1.02 * mse_in + 1e-9, (p, mse_in, mse_out)
