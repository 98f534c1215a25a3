"""What D-BSN's noise estimator is fitted to in ``sigma_fit="measured"`` mode: the noise level measured on the
data (risk.estimate_noise_level) as a function of the signal, and, where the data holds separate images (the S
axis), each image's own level.

Separately acquired images rarely share a gain: on W2S's six images one level pooled over them read each image's
variance 0.65-2.8x (docs/never-worse-research.md). sigma_n, a function of the signal alone (method.md §5.2),
cannot tell the images apart, so it is fitted to the pooled level; but the likelihood that trains sigma_mu
charges each patch with its own image's noise (:class:`ImageNoise`). Charged the pooled level instead, sigma_mu
absorbed the noise the pooled level misses on the images it under-reads, and the fusion then weighed the noisy
pixel far too much there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..normalization import Normalization
from ..risk import NoiseLevel


def measured_variance(level: NoiseLevel, norm: Normalization) -> Callable[[torch.Tensor], torch.Tensor]:
    """signal (B, C, Y, X), normalised -> the noise variance measured at it (risk.estimate_noise_level: per
    channel, interpolated between signal levels), normalised units.

    Beyond the end levels (the centres of the outer signal bins) the end segments go on as lines, as
    Poisson-Gaussian noise does, down to a quarter of the smallest measured variance: held constant there, the
    noise of the dimmest tenth of a smooth test image read 1.27x its true std."""
    tables = [(torch.tensor(lv, dtype=torch.float32), torch.tensor(vv, dtype=torch.float32))
              for lv, vv in zip(level.levels, level.variances, strict=True)]

    def variance(signal: torch.Tensor) -> torch.Tensor:
        data = norm.undo(signal.float())
        out = []
        for c, (lv, vv) in enumerate(tables):
            x = data[:, c].contiguous()
            lv, vv = lv.to(x.device), vv.to(x.device)
            if len(lv) == 1:
                v = vv[0].expand_as(x)
            else:
                i = torch.searchsorted(lv, x).clamp(1, len(lv) - 1)
                t = (x - lv[i - 1]) / (lv[i] - lv[i - 1]).clamp_min(1e-12)
                v = (vv[i - 1] + t * (vv[i] - vv[i - 1])).clamp_min(0.25 * float(vv.min()))
            out.append(v / norm.scale[c] ** 2)
        return torch.stack(out, dim=1).clamp_min(1e-12)

    return variance


def signal_grid(level: NoiseLevel, norm: Normalization, n: int = 64) -> torch.Tensor:
    """(n, C, 1, 1) signal values, normalised, evenly spread from half the measured levels' span below the
    lowest to half above the highest: sigma_n is fitted on them besides mu's pixels, so that it follows the
    measured curve where the data has few pixels (a fit on the pixels alone read the dimmest ones' noise std
    1.5x too high). Deterministic: no random state, so resuming stays exact."""
    cols = []
    for lv in level.levels:
        lo, hi = min(lv), max(lv)
        span = max(hi - lo, abs(hi) * 0.1, 1e-6)
        cols.append(torch.linspace(lo - span / 2, hi + span / 2, n))
    return norm.apply(torch.stack(cols, dim=1).reshape(n, len(cols), 1, 1))


@dataclass(frozen=True)
class ImageNoise:
    """Each separate image's noise variance relative to the pooled level, at a signal: the factor by which the
    likelihood scales sigma_n for a patch of that image. ``images`` maps an index along S to its image's own
    measured variance function; images not in the map (not sampled) keep the pooled level (factor 1)."""

    images: dict[int, Callable[[torch.Tensor], torch.Tensor]]
    pooled: Callable[[torch.Tensor], torch.Tensor]

    @classmethod
    def of(cls, levels: dict[int, NoiseLevel], pooled: NoiseLevel, norm: Normalization) -> ImageNoise | None:
        """None when there are fewer than two images with a level of their own (nothing to tell apart)."""
        if len(levels) < 2:
            return None
        return cls({s: measured_variance(lv, norm) for s, lv in levels.items()}, measured_variance(pooled, norm))

    def factor(self, signal: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(B, C, Y, X) factors for ``signal`` (normalised) of the patches of images ``images`` (B,)."""
        out = torch.ones_like(signal, dtype=torch.float32)
        for s in torch.unique(images).tolist():
            own = self.images.get(int(s))
            if own is None:
                continue
            sel = images == s
            out[sel] = own(signal[sel]) / self.pooled(signal[sel])
        return out


__all__ = ["ImageNoise", "measured_variance", "signal_grid"]
