"""Noise models of samples whose planes are separate images (the S axis): one model per image.

Kept apart from :mod:`napari_atbsn.risk` (numpy only, like it), whose functions take either model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ImageError
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


def estimate_noise_levels(planes: np.ndarray, groups: Any, correlation: np.ndarray | None = None, *,
                          differences: bool = False) -> NoiseLevel | PlaneNoise:
    """:func:`estimate_noise_level` for each group of ``planes`` (P, C, H, W) separately: ``groups[p]`` names
    the image plane p belongs to (its index along S). One group: the plain estimate. A group whose planes
    are too few or too saturated to measure takes the pooled estimate; plane differences need two planes
    of a group (else its planes are measured one by one)."""
    groups = np.asarray(groups)
    pooled = estimate_noise_level(planes, correlation, differences=differences)
    if groups.shape != (len(planes),) or len(np.unique(groups)) < 2:
        return pooled
    own: dict[Any, NoiseLevel] = {}
    for g in np.unique(groups):
        sel = np.asarray(planes)[groups == g]
        try:
            own[g] = estimate_noise_level(sel, correlation, differences=differences and len(sel) > 1)
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
