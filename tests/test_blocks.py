"""The default's blend weight per block, and per plane where a stack's planes differ in noise (block_blend,
inference/per_unit.py): never worse than the input in any region or plane, the network's gain kept where it has
one, and the same output whatever the chunking. Each case has a known clean image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import napari_atbsn
from napari_atbsn.block_blend import BLOCK, block_alpha, block_edges, expand_to_blocks
from napari_atbsn.events import drain
from napari_atbsn.inference.denoiser import load_model
from napari_atbsn.inference.inmemory import iter_denoise_outputs
from napari_atbsn.risk import NoiseLevel


def _gain(out: np.ndarray, noisy: np.ndarray, clean: np.ndarray) -> float:
    return float(10 * np.log10(np.mean((noisy - clean) ** 2) / np.mean((out - clean) ** 2)))


def _default(model, data: np.ndarray, axes: str):
    outs = drain(iter_denoise_outputs(model, data, axes, ks=["auto"], batch_size=8, dtype="float32"))
    return outs[0], outs.calibration


def _textured(clean: np.ndarray, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The sample tiled to 256², its right half replaced by a fine checker that a blind spot smooths away, with
    noise of one σ everywhere (clean, noisy)."""
    x = np.tile(clean.astype(np.float64), (1, 2, 2))
    yy, xx = np.mgrid[:256, :256]
    x[:, :, 128:] = x.mean() + 60 * np.sign(np.sin(xx[:, 128:] * 1.3) * np.sin(yy[:, 128:] * 1.1))
    return x, (x + sigma * np.random.default_rng(seed).standard_normal(x.shape)).astype(np.float32)


def test_block_edges_merge_a_sliver_into_the_last_block() -> None:
    assert block_edges(300, 128) == [(0, 128), (128, 300)]          # 44 px left: under half a block
    assert block_edges(260, 128) == [(0, 128), (128, 260)]
    assert block_edges(200, 128) == [(0, 128), (128, 200)]          # 72 px: a block of its own
    assert block_edges(40, 128) == [(0, 40)]
    assert expand_to_blocks(96, 192, 300, 128) == (0, 300)
    assert expand_to_blocks(0, 96, 300, 128) == (0, 128)
    assert expand_to_blocks(256, 300, 300, 128) == (128, 300)


def test_block_weights_are_each_blocks_own_risk_optimum() -> None:
    """Two blocks: f equals the clean image in one (α = σ² / E(f - y)² ≈ 1) and is off by 3σ in the other
    (α ≈ 1/10); flat pixels are left out of the means, and a block of them alone takes the fallback."""
    rng = np.random.default_rng(0)
    x = np.full((1, 64, 128), 50.0)
    y = x + 2.0 * rng.standard_normal(x.shape)
    f = x.copy()
    f[:, :, 64:] += 6.0
    level = NoiseLevel.constant(4.0)
    a = block_alpha(f, y, level, np.zeros(1), np.array([0.5]), side=64)
    assert 0.9 < a[0, 0, 0] <= 1.0 and 0.07 < a[0, 0, 100] < 0.13
    flat = np.zeros_like(y, dtype=bool)
    flat[:, :, 64:] = True
    b = block_alpha(f, y, level, np.zeros(1), np.array([0.5]), flat, side=64)
    assert b[0, 0, 100] == np.float32(0.5)
    with pytest.raises(ValueError, match="cuts the block"):
        block_alpha(f[:, :, 32:], y[:, :, 32:], level, np.zeros(1), np.array([0.5]), at=(0, 32), size=(64, 128),
                    side=64)


def test_a_region_the_network_smooths_away_keeps_its_input_and_the_rest_its_gain(tiny_teacher, sample_stack) -> None:
    """The teacher's plain output loses 9 dB on the checker; one weight per image kept the checker at +0.2 dB but
    the rest at +1.9 of the +9.7 it had. Per block: the checker stays above its input, the rest keeps its gain."""
    _, clean = sample_stack
    x, y = _textured(clean, 20.0, 1)
    model = load_model(tiny_teacher)
    out, cal = _default(model, y, "ZYX")
    plain = drain(iter_denoise_outputs(model, y, "ZYX", ks=[cal.k_b], batch_size=8, dtype="float32"))[0]
    assert _gain(plain[..., 128:], y[..., 128:], x[..., 128:]) < -3  # the case is what it claims to be
    assert _gain(out[..., 128:], y[..., 128:], x[..., 128:]) >= -0.1
    assert _gain(out[..., :128], y[..., :128], x[..., :128]) > 5.0
    assert abs(cal.gain_db - _gain(out, y, x)) < 1.0, cal.line()


def test_planes_at_different_exposures_are_each_above_their_input(tiny_teacher, sample_stack) -> None:
    """One scene at 0.05x to 4x the exposure, Poisson-Gaussian, stacked as Z with no S axis: one weight per
    channel left the two dimmest planes 5.8 and 1.8 dB below their input."""
    _, clean = sample_stack
    rng = np.random.default_rng(5)
    x = clean.astype(np.float64) * np.array([0.05, 0.2, 1.0, 4.0]).reshape(-1, 1, 1)
    y = (rng.poisson(np.maximum(x, 0)) + rng.normal(0, 2, x.shape)).astype(np.float32)
    out, cal = _default(load_model(tiny_teacher), y, "ZYX")
    assert cal.gain_db is not None
    for p in range(len(y)):
        assert _gain(out[p], y[p], x[p]) >= -0.1, p


def test_z_planes_with_different_noise_are_calibrated_one_by_one(tiny_teacher, sample_stack) -> None:
    """σ 5, 20, 80 and 20 as Z planes: one model of them all read +40 dB; each plane now has its own, the line names
    the worst plane, and every estimate errs low."""
    _, clean = sample_stack
    x = clean.astype(np.float64)
    y = (x + np.array([5.0, 20.0, 80.0, 20.0]).reshape(-1, 1, 1)
         * np.random.default_rng(6).standard_normal(x.shape)).astype(np.float32)
    out, cal = _default(load_model(tiny_teacher), y, "ZYX")
    assert cal.unit == "plane" and "worst plane:" in cal.line()
    true = [_gain(out[p], y[p], x[p]) for p in range(len(y))]
    assert min(true) >= -0.1, true
    for p, _, g in cal.images:
        assert g <= true[p] + 1.0, (p, g, true[p])


def test_block_weights_do_not_depend_on_the_chunking(tiny_teacher, sample_stack, tmp_path: Path) -> None:
    """A 300x260 region (its last blocks take the slivers) in chunks of 96 and 100, which cut blocks: every path
    computes each block whole, so the outputs are the in-memory one."""
    _, clean = sample_stack
    _, y = _textured(clean, 20.0, 2)
    y = np.pad(y[:2], ((0, 0), (0, 44), (0, 4)), mode="reflect")
    model = load_model(tiny_teacher)
    out, cal = _default(model, y, "ZYX")
    raw = drain(iter_denoise_outputs(model, y, "ZYX", ks=[cal.k_b], batch_size=8, dtype="float32"))[0]
    w = (out - y) / np.where(raw == y, 1, raw - y)
    assert abs(float(np.median(w[0, :128, :128])) - float(np.median(w[0, :128, 128:]))) > 0.1  # blocks differ
    res = napari_atbsn.denoise(y, tiny_teacher, tmp_path / "o.tif", axes="ZYX", chunk=96)
    np.testing.assert_array_equal(np.asarray(res.open().data), out)
    lazy = napari_atbsn.denoise(y, model, None, axes="ZYX", chunk=100)
    np.testing.assert_array_equal(np.asarray(lazy), out)
    assert BLOCK == 128


def test_planned_chunks_are_multiples_of_the_block_and_the_core() -> None:
    from napari_atbsn.inference.plan import block_aligned

    assert block_aligned(1184, 32) == 1152          # 37 cores: down to 9 blocks, no block computed twice
    assert block_aligned(2048, 32) == 2048
    assert block_aligned(1000, 96) == 768           # lcm(96, 128) = 384
    assert block_aligned(96, 32) == 96              # under one block: as it was
