"""The blend weight of every block: each square of :data:`BLOCK` pixels of a plane gets its own α per channel.

One weight for a whole image averages over what differs inside it. Planes of one scene at exposures 0.05x to 4x
stacked as Z shared α = 0.13: the two dimmest came back 5.8 and 1.8 dB worse than their input, while the brightest
kept a seventh of a gain it had. A region of fine texture that the network smooths away lost 11 dB while the plane
as a whole gained 0.3 (docs/method-notes.md, item 15). The risk-optimal weight of a block,

    α_b = (σ̂_b² − c_b) / mean_b (f − y)²       (risk.py; c_b the noise f keeps of its pixel),

is never worse than the block's input in expectation while σ̂² ≤ 2σ², so every block is protected by its own
statistics, and where the network does well α_b stays near 1.

A block is anchored at the output region's corner and measured from its own pixels alone (its σ̂² map too), so an
in-memory denoise, a chunked job and a lazy layer compute the same weights whatever their units: a unit that
cuts a block computes the whole block (:func:`expand_to_blocks`). numpy only, like risk.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .risk import BLEND_SAFETY, noise_variance_map, noise_variance_map_of

if TYPE_CHECKING:
    from .risk import NoiseLevel

#: Block side in pixels. mean (f − y)² over 128² pixels is within ~2 % of its expectation even for correlated
#: camera noise (about 16,000 pixels' worth at correlation length 2), so α_b costs under 0.1 dB of the optimum;
#: 64² blocks cost SIDD 0.2-0.3 dB (docs/method-notes.md, item 15).
BLOCK = 128
#: A block with fewer pixels that carry noise than this (the rest flat: a padded fill, a blank part) takes its
#: image's weights: its own means would be noise.
MIN_PIXELS = 256


def block_edges(length: int, side: int = BLOCK) -> list[tuple[int, int]]:
    """The blocks along one axis of ``length`` pixels: ``side`` long from 0, the last one taking the remainder
    when that is under half a block (a sliver's statistics would be noise)."""
    edges = [(a, min(a + side, length)) for a in range(0, length, side)]
    if len(edges) > 1 and edges[-1][1] - edges[-1][0] < side // 2:
        edges[-2:] = [(edges[-2][0], length)]
    return edges


def expand_to_blocks(start: int, stop: int, length: int, side: int = BLOCK) -> tuple[int, int]:
    """[start, stop) (relative to the region's corner) widened to the blocks it touches."""
    cut = [(a, b) for a, b in block_edges(length, side) if a < stop and b > start]
    return cut[0][0], cut[-1][1]


def block_alpha(f: np.ndarray, y: np.ndarray, noise: NoiseLevel, leak_ratio: np.ndarray, fallback: np.ndarray,
                flat: np.ndarray | None = None, at: tuple[int, int] = (0, 0), size: tuple[int, int] | None = None,
                side: int = BLOCK) -> np.ndarray:
    """α (C, h, w) for the output ``f`` (C, h, w) of the input ``y``, constant on each block and channel.

    ``at``: where f's first pixel lies from the region's corner, ``size``: the region's (height, width) (None: f's
    own), so the blocks are the region's. f must cover whole blocks. ``leak_ratio`` (C,): c / σ̂², the share of its
    pixel's noise f keeps (0: a blind spot that covers the correlation). ``flat`` (C, h, w): pixels that carry no
    noise (filters.flat_pixels), left out of the means. ``fallback`` (C,): the weights of a block with too few
    noisy pixels."""
    c, h, w = f.shape
    hh, ww = size or (h, w)
    alpha = np.empty((c, h, w), dtype=np.float32)
    ratio = np.asarray(leak_ratio, dtype=np.float64).reshape(-1, 1, 1)
    for ry0, ry1 in block_edges(hh, side):
        if ry1 <= at[0] or ry0 >= at[0] + h:
            continue
        for rx0, rx1 in block_edges(ww, side):
            if rx1 <= at[1] or rx0 >= at[1] + w:
                continue
            sl = np.s_[:, ry0 - at[0]:ry1 - at[0], rx0 - at[1]:rx1 - at[1]]
            if ry0 < at[0] or rx0 < at[1] or ry1 > at[0] + h or rx1 > at[1] + w:
                raise ValueError(f"the output at {at} of shape {(h, w)} cuts the block rows {ry0}..{ry1}, columns "
                                 f"{rx0}..{rx1}; compute whole blocks (expand_to_blocks).")
            alpha[sl] = weights_of_block(f[sl], y[sl], noise, ratio, fallback, None if flat is None else flat[sl])
    return alpha


def weights_of_block(f: np.ndarray, y: np.ndarray, noise: NoiseLevel, ratio: np.ndarray, fallback: np.ndarray,
                     flat: np.ndarray | None) -> np.ndarray:
    """(C, 1, 1): (BLEND_SAFETY·σ̂² − c) / mean (f − y)² per channel over the block's pixels that carry noise."""
    f64, y64 = f.astype(np.float64), y.astype(np.float64)
    var = noise_variance_map_of(f64[None], y64[None], noise)[0]  # not cached: a block's arrays are used once
    d2 = (f64 - y64) ** 2
    keep = np.ones_like(d2, dtype=bool) if flat is None else ~flat
    n = keep.sum(axis=(1, 2))
    v = np.where(keep, var, 0.0).sum(axis=(1, 2)) / np.maximum(n, 1)
    dd = np.where(keep, d2, 0.0).sum(axis=(1, 2)) / np.maximum(n, 1)
    own = np.clip((BLEND_SAFETY * v - ratio.ravel() * v) / np.maximum(dd, 1e-12), 0.0, 1.0)
    return np.where(n >= MIN_PIXELS, own, np.asarray(fallback, dtype=np.float64)).reshape(-1, 1, 1)


def leak_ratio_of(leak: Any, f: np.ndarray, y: np.ndarray, noise: Any) -> np.ndarray:
    """c / σ̂² per channel (C,) on the sample: the leak measured there (risk.leak, in variance units) as a share of
    the noise, which carries over to blocks whose noise differs."""
    c = np.ravel(np.broadcast_to(leak, (1, f.shape[1], 1, 1))).astype(np.float64)
    if not c.any():
        return np.zeros_like(c)
    return c / np.maximum(noise_variance_map(f, y, noise).mean(axis=(0, 2, 3)), 1e-12)


__all__ = ["BLOCK", "block_alpha", "block_edges", "expand_to_blocks", "leak_ratio_of"]
