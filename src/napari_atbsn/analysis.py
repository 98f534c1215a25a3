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
  long-range structure (autocorrelation at 8 and 12 pixels below 0.05) and
  its neighbouring planes do not share noise (which the differences would
  cancel), so a Z-stack of changing structures falls back to
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

Stack context (issue 18) needs one more measurement: whether the noise of
neighbouring planes along Z (else T) is independent. Their signal is shared,
so the planes' own correlation says nothing; the residuals of both planes are
compared over the 8x8 blocks where both residuals are weakest (background:
least signal leaks into the residual there) and their Pearson correlation is
the noise's. A fixed pattern added to every plane gives about 0.9 on our
synthetic data, independent noise under 0.05 (:func:`plane_noise_correlation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .axes import context_axis
from .errors import ConfigError, ImageError
from .filters import flat_pixels
from .residual_acf import deconvolve_residual_acf
from .risk import NoiseLevel, estimate_noise_level

MAX_LAG = 6
INDEPENDENT_BELOW = 0.25  # neighbour correlation under which a one-pixel blind spot is enough
SHORT_RANGE_BELOW = 0.4   # ... under which k_b = 1 keeps more signal than 3
LENGTH_THRESHOLD = 0.1
SAME_SCENE_LAGS = (8, 12)
SAME_SCENE_BELOW = 0.05
#: |correlation| of the noise of neighbouring planes under which they may serve as context (and their differences
#: isolate the noise); above it a model given them would learn to copy the shared part.
PLANE_NOISE_INDEPENDENT_BELOW = 0.1
#: Neighbouring planes recommended on each side where their noise is independent: the gain of a third and fourth
#: plane is small next to the cost of reading them (and they must exist: 2 * n + 1 planes).
RECOMMENDED_CONTEXT = 2
#: ... and where they repeat one scene (a time-lapse of a still field, repeated acquisitions: their differences
#: carry no structure), whose every further plane is another independent look at the same signal: on FMD's 50
#: frames, 180 s on the CPU, context 2 / 4 / 8 gave +0.83 / +1.37 / +2.04 dB over the 2-D model (docs/benchmarks.md)
REPEATED_SCENE_CONTEXT = 8
PLANE_BLOCK = 8           # small blocks: enough of them lie wholly in the background of dense images
PLANE_FLAT_FRACTION = 0.1


@dataclass
class PlaneContext:
    """The correlation of the noise of neighbouring planes along the context axis, and the context it allows."""

    axis: str | None            # "Z", "T" or None (no axis to take context from)
    planes: int                 # planes along ``axis`` (0 without one)
    correlation: float | None   # None where it could not be measured
    context: int                # recommended neighbouring planes on each side
    reason: str                 # one sentence for users
    pairs: int = 0              # neighbouring pairs measured
    repeated: bool = False      # the planes repeat one scene (a still field over time, repeated acquisitions)

    @property
    def shared(self) -> bool:
        """The neighbouring planes were measured to share noise."""
        return self.correlation is not None and abs(self.correlation) >= PLANE_NOISE_INDEPENDENT_BELOW

    def line(self) -> str:
        """The report line: ``plane noise corr.   0.012 between neighbouring Z planes (16 pairs)``."""
        if self.correlation is None:
            return f"{'plane noise corr.':<20}not measured"
        return (f"{'plane noise corr.':<20}{self.correlation:.3f} between neighbouring {self.axis} planes "
                f"({self.pairs} pair{'s' if self.pairs != 1 else ''})")


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
    context: PlaneContext | None = None    # neighbouring planes' noise (None: no Z or T axis)
    #: each channel's own 2-D autocorrelation (C, 2L+1, 2L+1), None for one channel: colour noise after
    #: demosaicing is more correlated in red and blue than in green (risk.level_statistics whitens by it)
    channel_autocorrelation_2d: np.ndarray | None = None

    @property
    def neighbour(self) -> float:
        return float(self.autocorrelation[1])

    @property
    def correlation_length(self) -> int:
        """First lag at which the correlation falls below 0.1 (one past the last lag measured if it never does)."""
        below = np.nonzero(np.abs(self.autocorrelation[1:]) < LENGTH_THRESHOLD)[0]
        return int(below[0]) + 1 if below.size else len(self.autocorrelation)

    def recommendation(self) -> dict[str, Any]:
        """``{"method": "dbsn", "context": 0}`` or ``{"method": "atbsn", "k_a": .., "k_b": .., "context": ..}``.

        ``context`` is the number of neighbouring planes on each side to train with; D-BSN takes none (its
        training refuses ``--context``), so it is 0 there whatever the stack allows.
        """
        if abs(self.neighbour) < INDEPENDENT_BELOW:
            if self.context is not None and self.context.repeated and self.context.context:
                # a stack repeating one scene: every neighbouring plane is another look at the plane's signal, which
                # D-BSN (plane by plane) cannot use; on FMD's 50 frames at 180 s an AT-BSN with a one-pixel blind
                # spot and 8 planes each side gave 42.50 dB against D-BSN's 40.00 (docs/benchmarks.md)
                return {"method": "atbsn", "k_a": 1, "k_b": 1, "context": self.context.context}
            return {"method": "dbsn", "context": 0}
        # the training blind spot must cover the correlated neighbourhood: (k_a - 1) / 2 >= length
        k_a = int(min(max(2 * self.correlation_length + 1, 3), 2 * MAX_LAG - 1))
        k_b = 1 if self.neighbour < SHORT_RANGE_BELOW else 3
        context = self.context.context if self.context is not None else 0
        return {"method": "atbsn", "k_a": k_a, "k_b": min(k_b, k_a), "context": context}

    def recommended_line(self) -> str:
        rec = self.recommendation()
        if rec["method"] == "dbsn":
            return "recommended: dbsn"
        extra = f" context={rec['context']}" if rec["context"] else ""
        return f"recommended: atbsn k_a={rec['k_a']} k_b={rec['k_b']}{extra}"

    def report(self) -> str:
        lags = "  ".join(f"{i}:{v:+.3f}" for i, v in enumerate(self.autocorrelation))
        rec = self.recommendation()
        why = ("the noise is close to pixel-independent: a one-pixel blind spot with a noise model (D-BSN) "
               "keeps the most information (at a 180-s CPU budget it beat AT-BSN k_a=1 on FMD and W2S, "
               "docs/benchmarks.md); the run estimates its own gain as it trains and reports a failure"
               if rec["method"] == "dbsn" else
               f"the noise is close to pixel-independent and the planes repeat one scene: a one-pixel blind spot "
               f"(k_a={rec['k_a']}) with {rec['context']} neighbouring plane(s) on each side as context uses every "
               f"look at the signal, which D-BSN, plane by plane, cannot (on FMD's 50 frames at 180 s: +2.5 dB "
               f"over D-BSN, docs/benchmarks.md)"
               if abs(self.neighbour) < INDEPENDENT_BELOW else
               f"neighbouring noise values are correlated up to {self.correlation_length - 1} pixel(s) away: "
               f"train with a blind spot that covers them (k_a={rec['k_a']}), denoise with a small one "
               f"(k_b={rec['k_b']})")
        lines = [f"noise isolated by   {self.method} ({self.planes_used} plane(s), {self.channels} channel(s))",
                 f"noise level         {self.noise_std:.4g} (standard deviation, data units)",
                 *self._level_lines(),
                 f"autocorrelation     {lags}",
                 f"neighbour corr.     {self.neighbour:.3f}",
                 f"correlation length  {self.correlation_length} px (first lag below {LENGTH_THRESHOLD})",
                 *self._context_lines(rec),
                 *[f"note                {n}" for n in self.notes],
                 f"why                 {why}",
                 self.recommended_line()]
        return "\n".join(lines)

    def _context_lines(self, rec: dict[str, Any]) -> list[str]:
        """The neighbouring planes' noise correlation and the stack context it allows (none without Z or T)."""
        if self.context is None:
            return []
        why = self.context.reason
        if rec["method"] == "dbsn" and self.context.context:
            why = f"D-BSN denoises plane by plane; with --method atbsn: {why}"
        return [self.context.line(), f"{'context':<20}{rec['context']}: {why}"]

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


def _flat_blocks(res: np.ndarray, smooth: np.ndarray, block: int = RESIDUAL_BLOCK, frac: float = 0.1,
                 blank: np.ndarray | None = None) -> np.ndarray:
    """The residual in the flattest blocks (smallest peak gradient of the smoothed image), as (n, block, block).

    Blocks holding a ``blank`` pixel (filters.flat_pixels: padding, blank planes, saturated plateaus) are
    flattest of all and hold no noise: they are left out."""
    h, w = res.shape[-2:]
    res, smooth = res.reshape(-1, h, w), smooth.reshape(-1, h, w)
    blank = np.zeros(res.shape, dtype=bool) if blank is None else blank.reshape(-1, h, w)
    blocks, scores = [], []
    for p in range(res.shape[0]):
        for y in range(0, h - block + 1, block):
            for x in range(0, w - block + 1, block):
                if blank[p, y:y + block, x:x + block].any():
                    continue
                gy, gx = np.gradient(smooth[p, y:y + block, x:x + block])
                scores.append(float(np.hypot(gy, gx).max()))
                blocks.append(res[p, y:y + block, x:x + block])
    if not blocks:
        raise ImageError("no noise could be measured: every part of the image is blank, constant or saturated.")
    keep = np.argsort(scores)[:max(8, int(len(scores) * frac))]
    return np.stack([blocks[i] for i in keep])


def _residual_acf(planes: np.ndarray) -> tuple[np.ndarray, float]:
    """The noise's normalised 2-D autocorrelation and variance from single planes (P, C, h, w) of any content."""
    smooth = _gaussian_blur(planes, RESIDUAL_SIGMA)
    flat = _flat_blocks(planes - smooth, smooth, blank=flat_pixels(planes))
    return deconvolve_residual_acf(_autocovariance(flat, RESIDUAL_MEASURED), RESIDUAL_SIGMA, RESIDUAL_SUPPORT)


def _channel_acfs(planes: np.ndarray, acf_of: Any) -> np.ndarray | None:
    """Each channel's own autocorrelation (C, 2L+1, 2L+1) by ``acf_of`` (one channel's planes (P, 1, h, w) ->
    acf); None for one channel, or where a channel's cannot be measured (the pooled one serves then)."""
    if planes.shape[1] < 2:
        return None
    try:
        return np.stack([acf_of(planes[:, c:c + 1]) for c in range(planes.shape[1])])
    except ImageError:
        return None


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
    # measured before the differences below, which assume the planes' noise independent: a pattern shared by
    # the planes would cancel in them and the noise be underestimated
    has_axis = context_axis(source.axes, source.data.shape) is not None
    context = _plane_context(source, max_pairs=max_planes, max_side=max_side) if has_axis else None
    if n >= 2 and context is not None and context.shared:
        notes.append(f"neighbouring {context.axis} planes share noise (correlation {context.correlation:.2f}), "
                     f"which their differences would cancel, so residuals of single planes were used")
    # neighbouring plane pairs (for differences) spread over the stack
    elif n >= 2:
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
                                 source.channels, notes, _level(seq, acf, differences=True) if level else None,
                                 context, _channel_acfs(diffs, lambda d: _acf2d(d, MAX_LAG)))
        notes.append(f"neighbouring planes differ in content (long-range correlation {long_range:.2f} of their "
                     f"difference), so residuals of single planes were used")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(n, max_planes), replace=False))
    planes = np.stack([source.read(int(i), y0, x0, h, w) for i in idx]).astype(np.float64)  # (P, C, h, w)
    if not np.all(np.isfinite(planes)):
        raise ImageError("the image contains NaN or Inf pixels; replace them before analysing.")
    acf, var = _residual_acf(planes)
    channel_acfs = _channel_acfs(planes, lambda p: _residual_acf(p)[0])
    return NoiseAnalysis("residuals", _radial(acf, RESIDUAL_SUPPORT), acf, float(np.sqrt(var)), len(idx),
                         source.channels, notes,
                         _level(planes, acf, differences=False, whiten=channel_acfs) if level else None, context,
                         channel_acfs)


def _level(planes: np.ndarray, acf: np.ndarray, *, differences: bool, whiten: np.ndarray | None = None,
           ) -> NoiseLevel | None:
    """The noise variance against signal; None where the planes are too small or saturated to say."""
    corr = acf if abs(_radial(acf, 1)[1]) >= LENGTH_THRESHOLD else None
    try:
        return estimate_noise_level(planes, corr, differences=differences, whiten=None if corr is None else whiten)
    except ImageError:
        return None


# -- the noise of neighbouring planes (stack context) -------------------------------------------------------------
def plane_noise_correlation(data: Any, axes: str | None = None, *, max_pairs: int = 16,
                            max_side: int = 512) -> PlaneContext:
    """The correlation of the noise of neighbouring planes along Z (else T) of ``data`` (any array-like or
    LazyImage), measured on up to ``max_pairs`` pairs spread over the stack (centre crops of ``max_side``), and
    the stack context it allows: up to :data:`RECOMMENDED_CONTEXT` planes on each side where it is independent,
    else 0."""
    from .sampling import plane_source

    return _plane_context(plane_source(data, axes), max_pairs=max_pairs, max_side=max_side)


def check_plane_noise(data: Any, axes: str | None, context: int) -> None:
    """Refuse ``context`` > 0 neighbouring planes whose noise is measured to be shared with the plane's (a network
    given them learns to copy that noise: the blind spot no longer hides it). Planes whose noise cannot be
    measured pass: the user asked for context and nothing says it is harmful."""
    if context == 0:
        return
    measured = plane_noise_correlation(data, axes)
    if measured.shared:
        raise ConfigError(f"--context {context} gives the network the neighbouring {measured.axis} planes, but their "
                          f"noise correlates with the plane's at {measured.correlation:.2f} (independent noise "
                          f"stays under {PLANE_NOISE_INDEPENDENT_BELOW}): a model given them would learn to copy the "
                          f"shared noise instead of removing it. Train with --context 0 (plane by plane), or remove "
                          f"the shared pattern first (e.g. subtract a dark frame).")


def _plane_context(source: Any, *, max_pairs: int, max_side: int) -> PlaneContext:
    """:func:`plane_noise_correlation` on a :class:`~napari_atbsn.sampling.PlaneSource`."""
    axis = context_axis(source.axes, source.data.shape)
    if axis is None:
        return PlaneContext(None, 0, None, 0, "the image has no Z or T axis: there are no neighbouring planes to "
                                              "take context from, so it is denoised plane by plane")
    plane_axes = "".join(source.axes[d] for d in source.plane_dims)
    a = plane_axes.index(axis)
    length = int(source.plane_shape[a])
    few = (f"only {length} plane(s) along {axis}: context needs at least 3 (a neighbour on each side), so the "
           f"stack is denoised plane by plane")
    if length < 2:
        return PlaneContext(axis, length, None, 0, few)
    h, w = min(source.height, max_side), min(source.width, max_side)
    if h < 4 * PLANE_BLOCK or w < 4 * PLANE_BLOCK:
        return PlaneContext(axis, length, None, 0, few if length < 3 else
                            f"the planes ({source.height}x{source.width}) are too small to measure whether "
                            f"neighbouring {axis} planes share noise, so the stack is denoised plane by plane "
                            f"(--context 0)")
    y0, x0 = (source.height - h) // 2, (source.width - w) // 2
    # planes that have a next one along the axis, in plane numbering (row-major over the T, Z, S axes)
    numbers = np.arange(source.n_planes)
    index = np.unravel_index(numbers, source.plane_shape)
    firsts = numbers[index[a] < length - 1]
    chosen = firsts[np.unique(np.linspace(0, len(firsts) - 1, min(max_pairs, len(firsts))).round().astype(int))]
    values, diffs = [], []
    for p in chosen:
        at = [int(i[p]) for i in index]
        at[a] += 1
        q = int(np.ravel_multi_index(at, source.plane_shape))
        first, second = source.read(int(p), y0, x0, h, w), source.read(q, y0, x0, h, w)
        values.append(_pair_noise_correlation(first, second))
        if len(diffs) < 4:
            diffs.append(first - second)
    per_pair = np.array(values)  # (pairs, C), NaN where a channel's noise could not be measured
    measured = ~np.all(np.isnan(per_pair), axis=0)
    if not measured.any():
        return PlaneContext(axis, length, None, 0, f"the noise of neighbouring {axis} planes could not be measured "
                                                   f"(blank or saturated planes?), so the stack is denoised plane "
                                                   f"by plane (--context 0)", len(chosen))
    # per channel over the pairs (the median: a pair across a cut in the stack does not decide), then the channel
    # that shares most: a network given the neighbours copies whatever one channel's neighbours share
    per_channel = np.nanmedian(per_pair[:, measured], axis=0)
    corr = float(per_channel[np.argmax(np.abs(per_channel))])
    pairs = int(np.sum(~np.all(np.isnan(per_pair), axis=1)))
    if abs(corr) >= PLANE_NOISE_INDEPENDENT_BELOW:
        return PlaneContext(axis, length, corr, 0, f"neighbouring {axis} planes share noise (their noise correlates "
                                                   f"at {corr:.2f}): a model given them would learn to copy it, so "
                                                   f"the stack is denoised plane by plane (--context 0)", pairs)
    if length < 3:
        return PlaneContext(axis, length, corr, 0, few, pairs)
    repeated = _repeats_scene(np.stack(diffs))
    n = min(REPEATED_SCENE_CONTEXT if repeated else RECOMMENDED_CONTEXT, (length - 1) // 2)
    what = "repeat one scene with independent noise" if repeated else "have independent noise"
    return PlaneContext(axis, length, corr, n, f"neighbouring {axis} planes {what} (noise correlation {corr:+.3f}), "
                                               f"so {n} neighbouring plane(s) on each side add their signal to each "
                                               f"plane's (--context {n})", pairs, repeated)


def _repeats_scene(diffs: np.ndarray) -> bool:
    """Whether neighbouring planes show the same scene: their differences (P, C, h, w) keep no structure (the
    test analyze_noise uses to isolate noise by differences)."""
    try:
        return max(_axis_correlations(diffs.astype(np.float64), SAME_SCENE_LAGS).values()) < SAME_SCENE_BELOW
    except ImageError:  # identical planes: nothing varies, nothing to gain from more of them
        return False


def _pair_noise_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per channel, the Pearson correlation of the noise of two planes (C, h, w) that show (nearly) the same
    signal; NaN where too few blocks carry noise.

    The residuals (image minus its blur) keep the noise but also the signal's edges, which both planes share, so
    only the blocks where both residuals are weakest count: a block counts by the larger of its two energies, so
    the same blocks are taken from both planes, and the choice does not depend on the sign of either residual
    and cannot create a correlation of its own.
    """
    x = np.stack([a, b]).astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ImageError("the image contains NaN or Inf pixels; replace them before analysing.")
    res = x - _gaussian_blur(x, RESIDUAL_SIGMA)
    bs = PLANE_BLOCK
    ny, nx = res.shape[-2] // bs, res.shape[-1] // bs
    c = res.shape[1]
    blocks = (res[..., :ny * bs, :nx * bs].reshape(2, c, ny, bs, nx, bs).transpose(0, 1, 2, 4, 3, 5)
              .reshape(2, c, ny * nx, bs * bs))
    blocks = blocks - blocks.mean(axis=-1, keepdims=True)
    energy = np.mean(blocks ** 2, axis=-1)  # (2, C, blocks)
    score = energy.max(axis=0)
    # blocks without noise in one plane (clipped to a constant, padding) say nothing about it; the blur of a
    # constant leaves rounding residue far below this
    floor = (1e-9 * (np.abs(x).max(axis=(0, 2, 3)) + 1.0)) ** 2
    keep_n = max(8, int(ny * nx * PLANE_FLAT_FRACTION))
    out = np.full(c, np.nan)
    for ch in range(c):
        valid = np.nonzero(energy[:, ch].min(axis=0) > floor[ch])[0]
        if valid.size < 8:
            continue
        flat = valid[np.argsort(score[ch, valid], kind="stable")[:keep_n]]
        pa, pb = blocks[0, ch, flat], blocks[1, ch, flat]
        out[ch] = float(np.sum(pa * pb) / np.sqrt(np.sum(pa * pa) * np.sum(pb * pb)))
    return out
