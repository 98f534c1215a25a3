"""Never worse than the input: k_b chosen from the data, the risk-optimal blend with the noisy image, and the
estimated gain that every such output reports (the estimators are in :mod:`napari_atbsn.risk`).

A teacher asked for ``k_b="auto"`` is first *calibrated* on a sample of the data (evenly spaced planes,
centre crops): the noise's correlation and level are measured, every blind spot wide enough to cover the
correlation is run (one backbone pass for all), and the one whose blend has the lowest estimated risk is
kept with its weight α per channel. The calibration is deterministic, so the in-memory, lazy and chunked
paths (and a resumed job) compute the same output; it is part of a written job's identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..analysis import analyze_noise
from ..config import DEFAULT_KS
from ..events import drain
from ..risk import (
    BLEND_SAFETY,
    LENGTH_THRESHOLD,
    NoiseLevel,
    choose_k_b,
    estimate_noise_level,
    estimated_gain_db,
    noise_variance_map,
    valid_blind_spots,
)
from ..sampling import plane_source
from .runtime import iter_array

if TYPE_CHECKING:
    from .denoiser import Denoiser

SAMPLE_PLANES = 8    # planes of a stack the calibration looks at (evenly spaced)
SAMPLE_SIDE = 512    # the centre crop of each (the noise analysis' own maximum)


@dataclass(frozen=True)
class Calibration:
    """What ``k_b="auto"`` decided for one image or volume, and its estimated quality.

    ``alpha[c]`` is the weight of the network's output in channel c's blend (1 − α)·y + α·f;
    ``gain_db`` the blend's estimated PSNR gain over the input (negative: worse, which the blend
    only reaches when its estimate is off); ``raw_gain_db`` that of the unblended k_b output.
    """

    k_b: int
    alpha: tuple[float, ...]
    gain_db: float
    raw_gain_db: float
    noise_level: dict[str, Any]
    valid_ks: tuple[int, ...]
    reliable: bool  # False: no blind spot covered the noise correlation, so the estimate flatters the output
    sample: str     # which data the estimate comes from

    def to_record(self) -> dict[str, Any]:
        return {"k_b": self.k_b, "blend": "global", "alpha": [round(a, 6) for a in self.alpha],
                "estimated_gain_db": round(self.gain_db, 3), "estimated_gain_db_unblended": round(self.raw_gain_db, 3),
                "noise_level": self.noise_level, "valid_k_b": list(self.valid_ks), "reliable": self.reliable,
                "sample": self.sample}

    def line(self) -> str:
        """``estimated gain: +X.XX dB over the input (k_b=K, blend=...)``, what the CLI prints."""
        alphas = "/".join(f"{a:.2f}" for a in self.alpha)
        text = f"estimated gain: {self.gain_db:+.2f} dB over the input (k_b={self.k_b}, blend=global alpha={alphas})"
        if not self.reliable:
            text += "; unreliable: no blind spot covers the noise correlation"
        return text

    def apply(self, raw: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The blend of ``out`` (C, h, w), the k_b output, with ``raw`` (C, h, w), the input, in data units."""
        a = np.asarray(self.alpha, dtype=np.float32).reshape(-1, 1, 1)
        return (raw + a * (out - raw)).astype(np.float32, copy=False)


def sample_planes(data: Any, axes: str) -> tuple[np.ndarray, str]:
    """Up to :data:`SAMPLE_PLANES` evenly spaced planes, centre-cropped to :data:`SAMPLE_SIDE`, as (P, C, h, w)
    float32, and a description of the sample."""
    source = plane_source(data, axes)
    h, w = min(source.height, SAMPLE_SIDE), min(source.width, SAMPLE_SIDE)
    y0, x0 = (source.height - h) // 2, (source.width - w) // 2
    idx = np.unique(np.linspace(0, source.n_planes - 1, min(SAMPLE_PLANES, source.n_planes)).round().astype(int))
    planes = np.stack([source.read(int(i), y0, x0, h, w) for i in idx])
    whole = len(idx) == source.n_planes and (h, w) == (source.height, source.width)
    return planes, "the whole image" if whole else f"{len(idx)} plane(s), centre {h}x{w}"


def candidate_ks(model: Denoiser, window: int) -> list[int]:
    """The blind spots ``auto`` may choose from: the multi-teacher set and the model's own, as far as the window
    leaves pixels around them."""
    return sorted(k for k in {*DEFAULT_KS, model.k_b} if (k + 1) // 2 < window)


def calibrate(model: Denoiser, data: Any, axes: str, *, window: int | None = None,
              batch_size: int = 4) -> Calibration:
    """Choose k_b and the blend for ``data`` (an array or LazyImage with ``axes``) from a sample of it."""
    planes, sample = sample_planes(data, axes)
    noise = analyze_noise(data, axes)
    corr = noise.autocorrelation_2d if noise.neighbour >= LENGTH_THRESHOLD else None  # as risk.correlation_length
    level = estimate_noise_level(planes.astype(np.float64), corr, differences=noise.method == "plane differences")
    ks = candidate_ks(model, window or model.patch)
    valid = valid_blind_spots(ks, level.correlation_length)
    reliable = bool(valid)
    if not valid:  # the correlation outruns every blind spot: take the widest, and say the estimate flatters it
        valid = [max(ks)]
    outs = drain(iter_array(model, planes, "SCYX", ks=valid, batch_size=batch_size, dtype="float32"))
    outputs = {k: o.astype(np.float64) for k, o in zip(valid, outs, strict=True)}
    y = planes.astype(np.float64)
    k, _risks = choose_k_b(outputs, y, level, valid)
    alpha = channel_alpha(outputs[k], y, level)
    full = np.broadcast_to(np.asarray(alpha).reshape(1, -1, 1, 1), y.shape)
    return Calibration(k, tuple(float(a) for a in alpha), estimated_gain_db(outputs[k], y, level, full),
                       estimated_gain_db(outputs[k], y, level), level.to_dict(), tuple(valid), reliable, sample)


def channel_alpha(f: np.ndarray, y: np.ndarray, level: NoiseLevel) -> np.ndarray:
    """One weight per channel for all planes: σ̂² / E (f − y)² pooled over the sample, clipped to [0, 1] (the
    global weight of :func:`napari_atbsn.risk.blend_weights`, with its safety factor)."""
    var = BLEND_SAFETY * noise_variance_map(f, y, level)
    d2 = (f - y) ** 2
    return np.clip(var.mean(axis=(0, 2, 3)) / np.maximum(d2.mean(axis=(0, 2, 3)), 1e-12), 0.0, 1.0)


__all__ = ["Calibration", "calibrate", "candidate_ks", "channel_alpha", "sample_planes"]
