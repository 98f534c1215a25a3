"""The default output per unit: the weights of every block and the gain of every separate image or plane on the
calibration's sample, as the denoise will compute them (block_blend), and whether a stack's planes differ enough
in noise to be calibrated one by one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..block_blend import block_alpha, leak_ratio_of
from ..filters import flat_pixels
from ..plane_noise import PlaneNoise, levels_by_image, pooled_level
from ..risk import gain_of_risk, noise_variance_map

if TYPE_CHECKING:
    from ..risk import Noise, NoiseLevel

#: Planes of a stack (no S axis) are calibrated one by one when their measured noise, against the model of them
#: all at their own signal, differs by this factor between the quietest and the loudest: planes of one detector
#: at different exposures share a model (variance against signal) and stay together; planes acquired with another
#: gain, or normalised one by one, do not (σ 5 to 80 in one Z stack read +40 dB with one model).
PLANES_DIFFER = 2.0


@dataclass(frozen=True)
class SampleWeights:
    """An output's blend on the calibration's sample: α (P, C, h, w) per block (0 at flat pixels, which come back
    as they are), the noise it keeps of each pixel c (P, C, h, w), and c / σ̂² per channel."""

    alpha: np.ndarray
    leak: np.ndarray
    ratio: tuple[float, ...]


def sample_flat(y: np.ndarray) -> np.ndarray:
    """filters.flat_pixels of each plane of the sample (P, C, h, w)."""
    return np.stack([flat_pixels(p) for p in y])


def sample_weights(f: np.ndarray, y: np.ndarray, level: Noise, leak_c: Any, fallback: np.ndarray,
                   flat: np.ndarray) -> SampleWeights:
    """The block weights (block_blend) output ``f`` of the sample ``y`` gets, as the denoise will give them."""
    ratio, c = _leak(f, y, level, leak_c)
    planes = level.planes if isinstance(level, PlaneNoise) else [level] * len(y)
    alpha = np.stack([block_alpha(f[p], y[p], planes[p], ratio, fallback, flat[p]) for p in range(len(y))])
    alpha[flat] = 0.0
    return SampleWeights(alpha.astype(np.float64), c, tuple(float(r) for r in ratio))


def plain_weights(f: np.ndarray, y: np.ndarray, level: Noise, leak_c: Any, flat: np.ndarray) -> SampleWeights:
    """An output that is its own default (a student's, a D-BSN's fusion: α = 1 but at flat pixels, which come
    back as they are). Not weighed per block: its exported graphs must give the same image (docs/export.md)."""
    ratio, c = _leak(f, y, level, leak_c)
    return SampleWeights(np.where(flat, 0.0, 1.0), c, tuple(float(r) for r in ratio))


def _leak(f: np.ndarray, y: np.ndarray, level: Noise, leak_c: Any) -> tuple[np.ndarray, np.ndarray]:
    """c / σ̂² per channel (block_blend.leak_ratio_of) and the leak c it gives each pixel (P, C, h, w)."""
    ratio = leak_ratio_of(leak_c, f, y, level)
    return ratio, ratio.reshape(1, -1, 1, 1) * noise_variance_map(f, y, level)


def block_models_of(level: Noise, groups: np.ndarray | None) -> tuple[tuple[int | None, NoiseLevel], ...]:
    """Calibration.block_models: each separate image's model where the sample's images were measured one by one,
    else the one model of all planes."""
    own = levels_by_image(level, groups)
    return tuple(own.items()) if own else ((None, pooled_level(level)),)


def per_image(f: np.ndarray, y: np.ndarray, level: Noise, weights: SampleWeights, groups: np.ndarray | None,
              ) -> tuple[tuple[tuple[int, tuple[float, ...], float | None], ...], float | None]:
    """Each separate image's (S index, mean α per channel, estimated gain) for output f of the sample with its
    block weights, and the whole sample's gain; ((), None) without two images or more.

    Separate images rarely share a noise level or a gain from the network (σ 5, 20 and 80 in one stack: one α
    for all lost 7.7 dB on the quietest). Block weights follow each image's own noise; an image whose estimate is
    still negative gets the input (α = 0, gain 0)."""
    if groups is None or len(np.unique(groups)) < 2:
        return (), None
    var = noise_variance_map(f, y, level)
    a = weights.alpha
    r = a**2 * (f - y) ** 2 - 2 * a * (var - weights.leak) + var
    out = []
    for s in np.unique(groups):
        sel = np.asarray(groups) == s
        gain = gain_of_risk(float(var[sel].mean()), float(r[sel].mean()))
        alpha = a[sel].mean(axis=(0, 2, 3))
        if gain < 0:  # estimated worse than the input: the input
            alpha, gain, r[sel] = np.zeros_like(alpha), 0.0, var[sel]
        out.append((int(s), tuple(float(x) for x in alpha), gain))
    return tuple(out), gain_of_risk(float(var.mean()), float(r.mean()))


def planes_differ(level: Noise, y: np.ndarray) -> bool:
    """Whether the per-plane models of ``level`` (a PlaneNoise over the sample's planes ``y``) differ by
    :data:`PLANES_DIFFER` at each plane's own signal."""
    if not isinstance(level, PlaneNoise):
        return False
    pooled = level.pooled
    r = [float(np.mean(lv.variance(y[p])) / max(float(np.mean(pooled.variance(y[p]))), 1e-12))
         for p, lv in enumerate(level.planes)]
    return max(r) / max(min(r), 1e-12) > PLANES_DIFFER


__all__ = ["PLANES_DIFFER", "SampleWeights", "block_models_of", "per_image", "plain_weights", "planes_differ",
           "sample_flat", "sample_weights"]
