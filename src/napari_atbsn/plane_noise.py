"""Noise models of samples whose planes are separate images (the S axis): one model per image.

Kept apart from :mod:`napari_atbsn.risk` (numpy only, like it), whose functions take either model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ImageError
from .filters import flat_pixels
from .risk import NoiseLevel, estimate_noise_level


@dataclass(frozen=True)
class PlaneNoise:
    """The noise of a sample whose planes are separate images (the S axis), each with its own model.

    Separately acquired images rarely share a gain or read noise: on W2S's six images one model pooled over
    them read each image's variance 0.65-2.8x (docs/never-worse-research.md), which biases every risk and
    blend weight and, above 2x, makes a blend unsafe. ``planes[p]`` is the model of plane p of the sample the
    arrays hold (P, C, H, W); ``pooled`` the model of all of them together, what a record keeps (and what
    applies to planes outside the sample). Duck-types :class:`NoiseLevel` for the functions of :mod:`napari_atbsn.risk`.
    """

    planes: tuple[NoiseLevel, ...]
    pooled: NoiseLevel

    @property
    def channels(self) -> int:
        return self.pooled.channels

    @property
    def correlation_length(self) -> int:
        return self.pooled.correlation_length

    def variance(self, signal: np.ndarray) -> np.ndarray:
        """Noise variance at ``signal`` (P, C, H, W), plane p by its own model."""
        signal = np.asarray(signal, dtype=np.float64)
        if signal.ndim != 4 or signal.shape[0] != len(self.planes):
            raise ImageError(f"signal of shape {signal.shape} does not hold the {len(self.planes)} planes whose "
                             f"noise was measured one by one.")
        out = np.empty_like(signal)
        for p, level in enumerate(self.planes):
            out[p] = level.variance(signal[p])
        return out

    def scaled(self, factor: float) -> PlaneNoise:
        return PlaneNoise(tuple(lv.scaled(factor) for lv in self.planes), self.pooled.scaled(factor))

    def to_dict(self) -> dict[str, Any]:
        """The pooled model (what :meth:`NoiseLevel.from_dict` reads back), with each plane's beside it."""
        return {**self.pooled.to_dict(), "per_plane": [lv.to_dict() for lv in self.planes]}


#: Blocks (side, pixels) and the quantile of their residual energy that :func:`residual_floor` reads.
FLOOR_BLOCK = 16
FLOOR_QUANTILE = 0.25
#: The patch estimate is raised only where it reads below 1/1.5 of the residual's floor (SIDD's red and blue: 1/3):
#: nearer, raising it cost the light sample 0.25 dB and turned the sample's estimate 1 dB optimistic.
FLOOR_TRIGGER = 1.5
#: ... and only where, in those blocks, the widest blind spot's residual is within this factor of the best one's:
#: outputs that agree there see little signal to miss, so the residual is the noise's (SIDD: 1.1; PolyU, where
#: each blind spot is 6-10 dB worse than the input, 2: there the residual is the network's error).
FLOOR_AGREEMENT = 1.25
#: ... and only where the blocks' residual energies agree (median / lower quartile below this): noise spreads a
#: block's energy by its chi-square alone (SIDD: 1.1-1.3), a network's error on texture far more (a light-noise
#: 64x64 sample with a tiny teacher: 3.7, where raising σ̂² 2.3x turned a +0.5 dB blend into +0.0).
FLOOR_SPREAD = 1.5


def residual_floor(noise: NoiseLevel | PlaneNoise, f: np.ndarray, y: np.ndarray, groups: Any = None, *,
                   wide: np.ndarray | None = None) -> NoiseLevel | PlaneNoise:
    """``noise`` raised, per channel (and per separate image), to what a blind output f says of the noise where f
    is best (``wide``: the output of a wider blind spot, which must agree with f there).

    For an output f whose blind spot covers the noise correlation, E(f − y)² = E(f − x)² + σ² (Noise2Self): in
    the blocks where f is close to the clean image (flat background, the bulk of heavy-noise data) the residual's
    energy is the noise's. The patch estimate reads heavy, clipped, demosaiced noise low (SIDD: 0.3x in red and
    blue), which makes the blend keep the noisy input; the lower quartile over 16x16 blocks of the residual's
    energy against the model's variance (both at each block's signal) is a factor that the model is raised by
    (:data:`FLOOR_TRIGGER`, :data:`FLOOR_AGREEMENT` say where). It errs low by the spread of a block's energy and
    high by what f misses in its best quarter of blocks (docs/never-worse-research.md, "σ̂² on heavy noise")."""
    if wide is None:
        return noise
    f, y, wide = (np.asarray(a, dtype=np.float64) for a in (f, y, wide))
    b = FLOOR_BLOCK
    h, w = (y.shape[-2] // b) * b, (y.shape[-1] // b) * b
    if h == 0 or w == 0:
        return noise
    var = noise.variance(f)

    def blocks(a: np.ndarray) -> np.ndarray:  # (P, C, H, W) -> (P, C, n) block means
        a = a[..., :h, :w]
        return a.reshape(*a.shape[:2], h // b, b, w // b, b).mean(axis=(3, 5)).reshape(*a.shape[:2], -1)

    d_best, d_wide = blocks((f - y) ** 2), blocks((wide - y) ** 2)
    ratio = d_best / np.maximum(blocks(var), 1e-12)
    flat = blocks(flat_pixels(y).astype(np.float64)) > 0  # blocks touching blank pixels say nothing
    groups = np.zeros(len(y), dtype=int) if groups is None or not isinstance(noise, PlaneNoise) else np.asarray(groups)
    factors: dict[Any, np.ndarray] = {}
    for g in np.unique(groups):
        sel = groups == g
        fac = []
        for c in range(y.shape[1]):
            keep = ~flat[sel, c]
            r = ratio[sel, c][keep]
            if r.size < 8:
                fac.append(1.0)
                continue
            q = float(np.quantile(r, FLOOR_QUANTILE))
            best = r <= q
            agree = d_wide[sel, c][keep][best].mean() / max(d_best[sel, c][keep][best].mean(), 1e-12)
            spread = float(np.quantile(r, 0.5)) / max(q, 1e-12)
            fac.append(q if q > FLOOR_TRIGGER and agree < FLOOR_AGREEMENT and spread < FLOOR_SPREAD else 1.0)
        factors[g] = np.array(fac)
    if isinstance(noise, PlaneNoise):
        return PlaneNoise(tuple(_scaled_channels(lv, factors[g]) for lv, g in zip(noise.planes, groups, strict=True)),
                          _scaled_channels(noise.pooled, np.min(np.stack(list(factors.values())), axis=0)))
    return _scaled_channels(noise, factors[0])


def _scaled_channels(level: NoiseLevel, factors: np.ndarray) -> NoiseLevel:
    """``level`` with channel c's variances times ``factors[c]``."""
    return NoiseLevel(level.levels, tuple(tuple(float(fc) * v for v in vv)
                                          for fc, vv in zip(factors, level.variances, strict=True)),
                      level.correlation_length)


def estimate_noise_levels(planes: np.ndarray, groups: Any, correlation: np.ndarray | None = None, *,
                          differences: bool = False, whiten: np.ndarray | None = None) -> NoiseLevel | PlaneNoise:
    """:func:`estimate_noise_level` for each group of ``planes`` (P, C, H, W) separately: ``groups[p]`` names
    the image plane p belongs to (its index along S). One group: the plain estimate. A group whose planes
    are too few or too saturated to measure takes the pooled estimate; plane differences need two planes
    of a group (else its planes are measured one by one)."""
    groups = np.asarray(groups)
    pooled = estimate_noise_level(planes, correlation, differences=differences, whiten=whiten)
    if groups.shape != (len(planes),) or len(np.unique(groups)) < 2:
        return pooled
    own: dict[Any, NoiseLevel] = {}
    for g in np.unique(groups):
        sel = np.asarray(planes)[groups == g]
        try:
            own[g] = estimate_noise_level(sel, correlation, differences=differences and len(sel) > 1, whiten=whiten)
        except ImageError:
            own[g] = pooled
    return PlaneNoise(tuple(own[g] for g in groups), pooled)


def pooled_level(noise: NoiseLevel | PlaneNoise) -> NoiseLevel:
    """The one model for every plane: a PlaneNoise's pooled model, or the model itself."""
    return noise.pooled if isinstance(noise, PlaneNoise) else noise


def levels_by_image(noise: NoiseLevel | PlaneNoise, images: Any) -> dict[int, NoiseLevel]:
    """Index along S -> that image's own model, for a PlaneNoise whose planes belonged to ``images`` (each
    plane's S index); empty for one model, or when ``images`` (None: no S axis) does not match its planes."""
    if not isinstance(noise, PlaneNoise) or images is None or len(images) != len(noise.planes):
        return {}
    return {int(s): lv for s, lv in zip(images, noise.planes, strict=True)}


def noise_of_images(noise: NoiseLevel | PlaneNoise, noise_images: Any, images: Any) -> NoiseLevel | PlaneNoise:
    """The noise model of other planes of the same separate images (``images``: each plane's index along S;
    None: no S axis), from ``noise`` measured on planes of ``noise_images``: each plane gets its image's own
    level, the pooled one where its image was not measured. The pooled model alone where ``noise`` is one
    model or either side has no S axis."""
    base, own = pooled_level(noise), levels_by_image(noise, noise_images)
    if not own or images is None:
        return base
    return PlaneNoise(tuple(own.get(int(s), base) for s in images), base)


def noise_from_dict(record: dict[str, Any]) -> NoiseLevel | PlaneNoise:
    """A recorded model (:meth:`PlaneNoise.to_dict` or :meth:`NoiseLevel.to_dict`) read back."""
    pooled = NoiseLevel.from_dict(record)
    per = record.get("per_plane")
    return PlaneNoise(tuple(NoiseLevel.from_dict(d) for d in per), pooled) if per else pooled
