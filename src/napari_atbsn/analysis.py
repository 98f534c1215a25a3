"""How spatially correlated is the noise? The measurement behind the choice of method and blind spots.

Pixel-wise blind spots (D-BSN, Noise2Void) assume noise that is independent
from pixel to pixel; camera and detector noise often is not, and then a
blind spot must be at least as wide as the correlation (AT-BSN's k_a). The
right k_a follows the noise, not the paper's default (method.md Decision 9).

The noise is isolated in one of two ways:

* **plane differences**, for stacks that repeat the same scene (time series,
  repeated acquisitions): the difference of neighbouring planes cancels the
  signal and keeps the noise (twice its variance, the same correlation). The
  stack is taken for a repeated scene only if the differences carry no
  long-range structure (autocorrelation at 8 and 12 pixels below 0.05), so a
  Z-stack of changing structures falls back to
* **residuals**: the image minus a Gaussian-smoothed copy (sigma 2), in the
  flattest tenth of 16x16 blocks (least signal structure). The residual is a
  known linear filter of the noise, so its autocorrelation is that filter's
  autocorrelation convolved with the noise's: we solve that small linear
  system for the noise's own autocorrelation (assumed zero beyond 3 pixels),
  which undoes the smoothing's bias. On our synthetic data this recovers a
  0.67 neighbour correlation as 0.67 and 0.21 at two pixels as 0.21.

The normalised autocorrelation is averaged over both directions of each
lag. From it: the neighbour correlation (lag 1), the correlation length (the
first lag where it falls below 0.1), and the recommendation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ImageError
from .risk import NoiseLevel, estimate_noise_level

MAX_LAG = 6
INDEPENDENT_BELOW = 0.25  # neighbour correlation under which a one-pixel blind spot is enough
SHORT_RANGE_BELOW = 0.4   # ... under which k_b = 1 keeps more signal than 3
LENGTH_THRESHOLD = 0.1
SAME_SCENE_LAGS = (8, 12)
SAME_SCENE_BELOW = 0.05


@dataclass
class NoiseAnalysis:
    """The measured noise correlation and what it implies."""

    method: str                     # "plane differences" or "residuals"
    autocorrelation: np.ndarray     # correlation at lags 0..MAX_LAG (average of rows and columns)
    autocorrelation_2d: np.ndarray  # (2L+1, 2L+1) around lag (0, 0)
    noise_std: float                # standard deviation, in the data's units
    planes_used: int
    channels: int
    notes: list[str] = field(default_factory=list)
    noise_level: NoiseLevel | None = None  # variance against signal per channel (risk.estimate_noise_level)

    @property
    def neighbour(self) -> float:
        return float(self.autocorrelation[1])

    @property
    def correlation_length(self) -> int:
        """First lag at which the correlation falls below 0.1 (one past the last lag measured if it never does)."""
        below = np.nonzero(np.abs(self.autocorrelation[1:]) < LENGTH_THRESHOLD)[0]
        return int(below[0]) + 1 if below.size else len(self.autocorrelation)

    def recommendation(self) -> dict[str, Any]:
        """``{"method": "dbsn"}`` or ``{"method": "atbsn", "k_a": .., "k_b": ..}``."""
        if abs(self.neighbour) < INDEPENDENT_BELOW:
            return {"method": "dbsn"}
        # the training blind spot must cover the correlated neighbourhood: (k_a - 1) / 2 >= length
        k_a = int(min(max(2 * self.correlation_length + 1, 3), 2 * MAX_LAG - 1))
        k_b = 1 if self.neighbour < SHORT_RANGE_BELOW else 3
        return {"method": "atbsn", "k_a": k_a, "k_b": min(k_b, k_a)}

    def recommended_line(self) -> str:
        rec = self.recommendation()
        if rec["method"] == "dbsn":
            return "recommended: dbsn"
        return f"recommended: atbsn k_a={rec['k_a']} k_b={rec['k_b']}"

    def report(self) -> str:
        lags = "  ".join(f"{i}:{v:+.3f}" for i, v in enumerate(self.autocorrelation))
        rec = self.recommendation()
        why = ("the noise is close to pixel-independent: a one-pixel blind spot with a noise model (D-BSN) "
               "keeps the most information (at a 180-s CPU budget it beat AT-BSN k_a=1 on FMD and W2S, "
               "docs/benchmarks.md); the run estimates its own gain as it trains and reports a failure"
               if rec["method"] == "dbsn" else
               f"neighbouring noise values are correlated up to {self.correlation_length - 1} pixel(s) away: "
               f"train with a blind spot that covers them (k_a={rec['k_a']}), denoise with a small one "
               f"(k_b={rec['k_b']})")
        lines = [f"noise isolated by   {self.method} ({self.planes_used} plane(s), {self.channels} channel(s))",
                 f"noise level         {self.noise_std:.4g} (standard deviation, data units)",
                 *self._level_lines(),
                 f"autocorrelation     {lags}",
                 f"neighbour corr.     {self.neighbour:.3f}",
                 f"correlation length  {self.correlation_length} px (first lag below {LENGTH_THRESHOLD})",
                 *[f"note                {n}" for n in self.notes],
                 f"why                 {why}",
                 self.recommended_line()]
        return "\n".join(lines)


    def _level_lines(self) -> list[str]:
        """The noise variance against the signal, per channel: a line (Poisson-Gaussian) or a table's range."""
        if self.noise_level is None:
            return []
        lines = []
        for c, (lv, vv) in enumerate(zip(self.noise_level.levels, self.noise_level.variances, strict=True)):
            name = f"channel {c}" if self.noise_level.channels > 1 else "noise variance"
            if len(lv) == 1:
                text = f"{vv[0]:.4g} at every signal level (Gaussian)"
            else:
                text = (f"{vv[0]:.4g} at signal {lv[0]:.4g} to {vv[-1]:.4g} at {lv[-1]:.4g} "
                        f"({len(lv)} levels, interpolated)")
            lines.append(f"{name:<20}{text}")
        return lines


def _acf2d(x: np.ndarray, lag: int) -> np.ndarray:
    """Normalised autocorrelation of fields x (..., Y, X) at lags -lag..lag."""
    cov = _autocovariance(x, lag)
    if cov[lag, lag] <= 0:
        raise ImageError("the noise estimate is constant (a blank or saturated image?); nothing to analyse.")
    return cov / cov[lag, lag]


def _radial(acf: np.ndarray, lag: int) -> np.ndarray:
    """Average of the row and column directions: lag i -> (rho(0, i) + rho(i, 0)) / 2."""
    c = acf.shape[0] // 2
    return np.array([(acf[c, c + i] + acf[c + i, c]) / 2 for i in range(lag + 1)])


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (..., Y, X) with reflect padding (numpy only)."""
    r = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = [(0, 0)] * (x.ndim - 2) + [(r, r), (r, r)]
    p = np.pad(x, pad, mode="reflect")
    p = sum(k[i] * p[..., i:i + p.shape[-2] - 2 * r, :] for i in range(2 * r + 1))
    return sum(k[i] * p[..., :, i:i + p.shape[-1] - 2 * r] for i in range(2 * r + 1))


RESIDUAL_SIGMA = 2.0
RESIDUAL_BLOCK = 16
RESIDUAL_SUPPORT = 3   # noise correlation assumed zero beyond this lag (single-image estimate)
RESIDUAL_MEASURED = 6  # lags of the residual's autocorrelation used to solve for it


def _gaussian_kernel(sigma: float) -> np.ndarray:
    r = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return k / k.sum()


def _flat_blocks(res: np.ndarray, smooth: np.ndarray, block: int = RESIDUAL_BLOCK, frac: float = 0.1) -> np.ndarray:
    """The residual in the flattest blocks (smallest peak gradient of the smoothed image), as (n, block, block)."""
    h, w = res.shape[-2:]
    res, smooth = res.reshape(-1, h, w), smooth.reshape(-1, h, w)
    blocks, scores = [], []
    for p in range(res.shape[0]):
        for y in range(0, h - block + 1, block):
            for x in range(0, w - block + 1, block):
                gy, gx = np.gradient(smooth[p, y:y + block, x:x + block])
                scores.append(float(np.hypot(gy, gx).max()))
                blocks.append(res[p, y:y + block, x:x + block])
    keep = np.argsort(scores)[:max(8, int(len(scores) * frac))]
    return np.stack([blocks[i] for i in keep])


def _deconvolve_residual_acf(acf_r: np.ndarray, sigma: float, support: int) -> tuple[np.ndarray, float]:
    """Noise autocovariance (lags <= support) whose residual (delta - G) filtering gives ``acf_r``.

    ``acf_r`` is the residual's autocovariance at lags -L..L. Returns the noise's normalised
    autocorrelation on -support..support and its variance.
    """
    k = _gaussian_kernel(sigma)
    f = -np.outer(k, k)
    r = len(k) // 2
    f[r, r] += 1.0
    lr = acf_r.shape[0] // 2
    n = 2 * (2 * r + lr + support) + 1
    pad = np.zeros((n, n))
    pad[:f.shape[0], :f.shape[1]] = f
    h = np.fft.fftshift(np.real(np.fft.ifft2(np.abs(np.fft.fft2(pad)) ** 2)))  # the filter's autocorrelation
    c = n // 2
    ms = [(a, b) for a in range(-support, support + 1) for b in range(-support, support + 1)]
    ls = [(a, b) for a in range(-lr, lr + 1) for b in range(-lr, lr + 1)]
    design = np.array([[h[c + la - ma, c + lb - mb] for ma, mb in ms] for la, lb in ls])
    target = np.array([acf_r[lr + la, lr + lb] for la, lb in ls])
    sol, *_ = np.linalg.lstsq(design, target, rcond=None)
    out = np.zeros((2 * support + 1, 2 * support + 1))
    for v, (a, b) in zip(sol, ms, strict=True):
        out[support + a, support + b] = v
    var = float(out[support, support])
    if var <= 0:
        raise ImageError("no noise could be measured (a blank or synthetic-looking image?); nothing to analyse.")
    return out / var, var


def _autocovariance(x: np.ndarray, lag: int) -> np.ndarray:
    """Autocovariance of zero-mean blocks (n, h, w) at lags -lag..lag."""
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    out = np.zeros((2 * lag + 1, 2 * lag + 1))
    for dy in range(-lag, lag + 1):
        for dx in range(-lag, lag + 1):
            if (dy, dx) < (0, 0):
                continue  # the mirror lag below: the same products in the same order, so the same bits
            out[dy + lag, dx + lag] = out[lag - dy, lag - dx] = _lag_product(x, dy, dx)
    return out


def _lag_product(x: np.ndarray, dy: int, dx: int) -> float:
    """Mean of x · (x shifted by (dy, dx)) over the overlap of zero-mean blocks (n, h, w)."""
    h, w = x.shape[-2:]
    a = x[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
    b = x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return float(np.mean(a * b))


def _axis_correlations(x: np.ndarray, lags: Sequence[int]) -> dict[int, float]:
    """The normalised autocorrelation at (0, lag) and (lag, 0), averaged in magnitude, for each lag: the
    entries of :func:`_acf2d` a same-scene test reads, without the whole (2L+1)² table."""
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    var = _lag_product(x, 0, 0)
    if var <= 0:
        raise ImageError("the noise estimate is constant (a blank or saturated image?); nothing to analyse.")
    return {lag: (abs(_lag_product(x, 0, lag) / var) + abs(_lag_product(x, lag, 0) / var)) / 2 for lag in lags}


def analyze_noise(data: Any, axes: str | None = None, *, max_planes: int = 16, max_side: int = 512,
                  seed: int = 0, level: bool = True) -> NoiseAnalysis:
    """Measure the noise's spatial autocorrelation of an image or stack (any array-like or LazyImage), and
    with ``level`` its variance against signal (``noise_level``; callers that measure it on a sample of
    their own leave it out: it is the larger part of the cost)."""
    from .sampling import plane_source

    source = plane_source(data, axes)
    if source.height < 64 or source.width < 64:
        raise ImageError(f"the planes ({source.height}x{source.width}) are too small to analyse; give at least "
                         f"64x64 pixels.")
    h, w = min(source.height, max_side), min(source.width, max_side)
    y0, x0 = (source.height - h) // 2, (source.width - w) // 2
    n = source.n_planes
    notes: list[str] = []
    # neighbouring plane pairs (for differences) spread over the stack
    if n >= 2:
        starts = np.unique(np.linspace(0, n - 2, min(max_planes, n - 1)).round().astype(int))
        pairs = [(source.read(int(i), y0, x0, h, w), source.read(int(i) + 1, y0, x0, h, w)) for i in starts]
        diffs = np.stack([(a - b) / np.sqrt(2.0) for a, b in pairs])  # (P, C, h, w), the noise's own variance
        if not np.all(np.isfinite(diffs)):
            raise ImageError("the image contains NaN or Inf pixels; replace them before analysing.")
        long_range = max(_axis_correlations(diffs, SAME_SCENE_LAGS).values())
        if long_range < SAME_SCENE_BELOW:
            acf = _acf2d(diffs, MAX_LAG)
            std = float(np.sqrt(_autocovariance(diffs, 0)[0, 0]))  # each pair's mean removed (bleaching, drift)
            seq = np.stack([p for pair in pairs for p in pair]).astype(np.float64)  # (2P, C, h, w), one scene
            return NoiseAnalysis("plane differences", _radial(acf, MAX_LAG), acf, std, 2 * len(pairs),
                                 source.channels, notes, _level(seq, acf, differences=True) if level else None)
        notes.append(f"neighbouring planes differ in content (long-range correlation {long_range:.2f} of their "
                     f"difference), so residuals of single planes were used")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(n, max_planes), replace=False))
    planes = np.stack([source.read(int(i), y0, x0, h, w) for i in idx]).astype(np.float64)  # (P, C, h, w)
    if not np.all(np.isfinite(planes)):
        raise ImageError("the image contains NaN or Inf pixels; replace them before analysing.")
    smooth = _gaussian_blur(planes, RESIDUAL_SIGMA)
    flat = _flat_blocks(planes - smooth, smooth)
    acf, var = _deconvolve_residual_acf(_autocovariance(flat, RESIDUAL_MEASURED), RESIDUAL_SIGMA, RESIDUAL_SUPPORT)
    return NoiseAnalysis("residuals", _radial(acf, RESIDUAL_SUPPORT), acf, float(np.sqrt(var)), len(idx),
                         source.channels, notes, _level(planes, acf, differences=False) if level else None)


def _level(planes: np.ndarray, acf: np.ndarray, *, differences: bool) -> NoiseLevel | None:
    """The noise variance against signal; None where the planes are too small or saturated to say."""
    corr = acf if abs(_radial(acf, 1)[1]) >= LENGTH_THRESHOLD else None
    try:
        return estimate_noise_level(planes, corr, differences=differences)
    except ImageError:
        return None
