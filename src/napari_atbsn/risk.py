"""Never worse than the input: a self-supervised risk estimate and the risk-optimal blend.

Let y = x + n be the noisy image, σ² = E n² (signal-dependent for
Poisson-Gaussian noise) and f a blind-spot output whose blind spot covers the
noise correlation, so that f_i is independent of n_i. Then (Noise2Self,
Batson & Royer 2019)

    E (f − y)² = E (f − x)² + σ²,

so the risk R = E (f − x)² of f is measurable from y alone once σ² is
estimated. The blend g = (1 − α) y + α f has the risk

    E (g − x)² = E[α² (f − y)² − 2 α σ² + σ²]            (α independent of n_i),

which is smallest at α* = σ² / E (f − y)², where it is σ² R / (σ² + R) ≤ min(σ², R).
That global α (per plane and channel) is the default. Per pixel, α_i = σ_i² /
(local mean of (f − y)²) clipped to [0, 1] is a local Wiener filter around f
(D-BSN's fusion with σ_μ² = local (f − y)² − σ²): it keeps the noisy pixel in
textured areas and takes f in flat ones (``window=LOCAL_WINDOW``).
α̂ = clip(σ̂² / S) is never worse than y in expectation for any σ̂² in
[0, 2σ²]: underestimating σ² is safe, overestimating it by 2x is not
(:data:`BLEND_SAFETY` says why no further factor is applied).

σ̂² comes from the noisy data alone (:func:`estimate_noise_level`): per signal
level, the eigenvalues of whitened patches that hold no texture, or the
variance of plane differences for a repeated scene.

The identity only holds where f_i does not see the noise at i: for spatially
correlated noise the blind spot k_b must cover the correlation length
(:func:`valid_blind_spots`); a smaller k_b leaks noise into f, E (f − y)²
shrinks by 2 E[n (f − x)] and the estimate flatters it.

Arrays are (P, C, H, W): planes, channels, rows, columns, in the data's units.
This module is a leaf of the package: numpy only.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from .errors import ImageError
from .patch_noise import channel_patches, local_mean_without_centre, pca_noise_variance, whitener

if TYPE_CHECKING:
    from .plane_noise import PlaneNoise

    Noise: TypeAlias = "NoiseLevel | PlaneNoise"  # one model for every plane, or one per plane of the sample

#: Factor on σ̂² in the blend weights (not in the reported risk). The blend is safe while factor ·
#: σ̂²/σ² < 2; the largest σ̂²/σ² measured is 1.30 (light noise over fine texture; 0.27-1.01 on PolyU,
#: FMD, W2S, the sample), so 1.0 keeps a 1.5x margin. A factor costs (1 − s)²·σ²/R of the optimal risk
#: where R ≪ σ²: s = 0.8 lost 2.45 dB on W2S and 0.73 dB on FMD (docs/never-worse-research.md).
BLEND_SAFETY = 1.0
#: Default blend: None = one α per plane and channel. The local window (9 px) gains 0.2-0.4 dB more on
#: light, correlated noise but its risk estimate is twice as sensitive to errors in σ̂² (2 dB optimistic
#: on PolyU and the light sample, against 0.04 and 1.0 dB for the global α; docs/never-worse-research.md),
#: and it loses 0.5-1.3 dB on heavy noise, where the noise in its local mean pulls α below 1.
BLEND_WINDOW: int | None = None
LOCAL_WINDOW = 9
#: An autocorrelation below this is "uncorrelated" (as analysis.LENGTH_THRESHOLD).
LENGTH_THRESHOLD = 0.1
PATCH = 6              # patch side of the PCA estimate (36 dimensions)
N_LEVELS = 8           # signal levels (quantile bins) of the variance model
AFFINE_TOLERANCE = 0.25  # "auto" keeps the line a·x + b if it is this close to every level
VAR_FLOOR = 1e-12
MAX_GAIN_DB = 40.0


# --------------------------------------------------------------------------------------- noise model

@dataclass(frozen=True)
class NoiseLevel:
    """Signal-dependent noise variance per channel, in the data's units.

    ``levels[c]`` (increasing signal values) and ``variances[c]`` tabulate the variance of channel
    c; between levels it is interpolated linearly, beyond them held constant (no extrapolation of
    a fit into a dark offset or a saturated range). Poisson-Gaussian noise, var = a·x + b, is the
    table of that line (:meth:`affine`); Gaussian noise a one-entry table. ``correlation_length``
    is the first lag at which the noise autocorrelation falls below :data:`LENGTH_THRESHOLD` (1
    for pixel-independent noise).
    """

    levels: tuple[tuple[float, ...], ...]
    variances: tuple[tuple[float, ...], ...]
    correlation_length: int = 1

    def __post_init__(self) -> None:
        if len(self.levels) != len(self.variances) or not self.levels or any(
                len(lv) != len(vv) or not lv for lv, vv in zip(self.levels, self.variances, strict=True)):
            raise ImageError("a NoiseLevel needs, per channel, as many signal levels as variances (at least one).")

    @classmethod
    def affine(cls, gain: Any, offset: Any, lo: Any = 0.0, hi: Any = 255.0, correlation_length: int = 1,
               ) -> NoiseLevel:
        """var = gain·x + offset per channel on [lo, hi] (scalars or one value per channel)."""
        g, o, lo, hi = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (gain, offset, lo, hi))
        g, o, lo, hi = np.broadcast_arrays(g, o, lo, hi)
        return cls(tuple((float(a), float(b)) for a, b in zip(lo, hi, strict=True)),
                   tuple((float(ga * a + ob), float(ga * b + ob)) for ga, ob, a, b in zip(g, o, lo, hi, strict=True)),
                   correlation_length)

    @classmethod
    def constant(cls, variance: Any, correlation_length: int = 1) -> NoiseLevel:
        """Signal-independent (Gaussian) noise: one variance per channel."""
        v = np.atleast_1d(np.asarray(variance, dtype=np.float64))
        return cls(tuple((0.0,) for _ in v), tuple((float(x),) for x in v), correlation_length)

    @property
    def channels(self) -> int:
        return len(self.levels)

    def variance(self, signal: np.ndarray) -> np.ndarray:
        """Noise variance at ``signal`` (..., C, H, W); never below a tiny positive floor."""
        signal = np.asarray(signal, dtype=np.float64)
        if signal.ndim < 3 or signal.shape[-3] != self.channels:
            raise ImageError(f"signal of shape {signal.shape} does not have {self.channels} channel(s) at axis -3.")
        out = np.empty_like(signal)
        for c, (lv, vv) in enumerate(zip(self.levels, self.variances, strict=True)):
            out[..., c, :, :] = np.interp(signal[..., c, :, :], lv, vv)
        return np.maximum(out, VAR_FLOOR)

    def scaled(self, factor: float) -> NoiseLevel:
        """The same model with every variance multiplied by ``factor``."""
        return NoiseLevel(self.levels, tuple(tuple(factor * v for v in vv) for vv in self.variances),
                          self.correlation_length)

    def to_dict(self) -> dict[str, Any]:
        return {"levels": [list(v) for v in self.levels], "variances": [list(v) for v in self.variances],
                "correlation_length": self.correlation_length}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NoiseLevel:
        return cls(tuple(tuple(float(x) for x in v) for v in d["levels"]),
                   tuple(tuple(float(x) for x in v) for v in d["variances"]), int(d.get("correlation_length", 1)))


def correlation_length(acf: np.ndarray | None) -> int:
    """First lag whose normalised autocorrelation (radial, lags 0..L, or 2-D (2L+1, 2L+1)) is below 0.1."""
    if acf is None:
        return 1
    acf = np.asarray(acf, dtype=np.float64)
    if acf.ndim == 2:
        c = acf.shape[0] // 2
        acf = np.array([(acf[c, c + i] + acf[c + i, c]) / 2 for i in range(c + 1)])
    below = np.nonzero(np.abs(acf[1:]) < LENGTH_THRESHOLD)[0]
    return int(below[0]) + 1 if below.size else len(acf)


def valid_blind_spots(ks: Any, length: int) -> list[int]:
    """The k_b of ``ks`` whose blind spot covers the noise correlation: (k − 1) / 2 ≥ length − 1, k ≥ 1.

    Only for those is f_i independent of n_i, the condition of every estimate here.
    """
    return [int(k) for k in ks if int(k) >= 1 and (int(k) - 1) // 2 >= length - 1]


# ------------------------------------------------------------------------------------ the estimator

def level_statistics(planes: np.ndarray, correlation: np.ndarray | None = None, *, differences: bool = False,
                     levels: int = N_LEVELS, patch: int = PATCH, whiten: np.ndarray | None = None,
                     ) -> list[tuple[np.ndarray, np.ndarray, tuple[float, float]]]:
    """Per channel, (signal levels, noise variances, (lowest, highest) signal) at ``levels`` quantile bins.

    ``differences``: the planes repeat one scene (a time series of a static field), so the
    difference of neighbouring planes is pure noise (variance 2σ², pair means removed for drift
    or bleaching) and its variance at each level is the estimate. Otherwise patches of the
    planes, whitened with ``correlation`` (or with each channel's own, ``whiten`` (C, 2L+1, 2L+1):
    demosaiced colour noise is more correlated in red and blue than in green, and one pooled
    correlation left SIDD's red and blue noise at 0.1-0.3 of its variance), are binned by their
    level (read from a ring around each, patch_noise.channel_patches) and each bin's noise variance
    is found by patch_noise.pca_noise_variance (all patches: keeping only the flatter half read
    5-10 % low on W2S, FMD and the sample). Measured against clean references in
    docs/never-worse-research.md ("σ̂² on heavy noise").
    """
    y = np.asarray(planes, dtype=np.float64)
    if y.ndim != 4:
        raise ImageError(f"expected planes as (P, C, H, W), got shape {y.shape}.")
    if not np.all(np.isfinite(y)):
        raise ImageError("the image contains NaN or Inf pixels; replace them before estimating the noise.")
    if min(y.shape[-2:]) < 4 * patch:
        raise ImageError(f"planes of {y.shape[-2]}x{y.shape[-1]} are too small to estimate the noise.")
    if differences and y.shape[0] < 2:
        raise ImageError("plane differences need at least two planes of the same scene.")
    if whiten is not None and (np.ndim(whiten) != 3 or len(whiten) != y.shape[1]):
        raise ImageError(f"one correlation per channel expected ({y.shape[1]}), got shape {np.shape(whiten)}.")
    out = []
    for c in range(y.shape[1]):
        white = whitener(None if differences else (correlation if whiten is None else whiten[c]), patch)
        stats = _bins(*channel_patches(y[:, c], differences, patch), differences, levels, white)
        if stats is None:
            raise ImageError("too few pixels that carry noise to estimate it: the image is tiny, or mostly blank, "
                             "constant or saturated.")
        guard = None if differences else _bins(*channel_patches(y[:, c], False, patch, guarded=True), False,
                                                 levels, white)
        out.append(stats if guard is None else _lower(stats, guard))
    return out


def _bins(win: np.ndarray, lv: np.ndarray, differences: bool, levels: int, white: np.ndarray,
          ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]] | None:
    """(levels, variances, (lowest, highest)) of noise patches ``win`` at signal levels ``lv``; None if too few."""
    if lv.size < levels * 4 * win.shape[-1]:
        return None
    edges = np.quantile(lv, np.linspace(0, 1, levels + 1))
    which = np.clip(np.searchsorted(edges, lv, side="right") - 1, 0, levels - 1)
    means = np.array([lv[which == b].mean() for b in range(levels)])
    variances = np.array([float(win[which == b].var()) if differences
                          else pca_noise_variance(win[which == b] @ white) for b in range(levels)])
    return means, variances, (float(lv.min()), float(lv.max()))


def _lower(a: tuple[np.ndarray, np.ndarray, tuple[float, float]],
           b: tuple[np.ndarray, np.ndarray, tuple[float, float]]) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Two variance tables against the signal merged into the lower of the two at every level of either: both
    read low where they fail, so the lower errs on the safe side (what a network's residual then raises where
    it has evidence, plane_noise.residual_floor)."""
    levels = np.union1d(a[0], b[0])
    low = np.minimum(np.interp(levels, a[0], a[1]), np.interp(levels, b[0], b[1]))
    return levels, low, (min(a[2][0], b[2][0]), max(a[2][1], b[2][1]))


def _fit_affine(level: np.ndarray, var: np.ndarray) -> tuple[float, float] | None:
    """var ≈ a·level + b, a ≥ 0, weighted by 1 / var² (each level's relative error); None if a < 0."""
    w = 1.0 / np.maximum(var, VAR_FLOOR) ** 2
    if level.size < 2 or np.ptp(level) <= 0:
        return None
    design = np.stack([level, np.ones_like(level)], 1) * np.sqrt(w)[:, None]
    a, b = np.linalg.lstsq(design, var * np.sqrt(w), rcond=None)[0]
    return (float(a), float(b)) if a >= 0 else None


def estimate_noise_level(planes: np.ndarray, correlation: np.ndarray | None = None, *,
                         differences: bool = False, model: str = "auto", whiten: np.ndarray | None = None,
                         ) -> NoiseLevel:
    """Estimate the noise variance model of noisy ``planes`` (P, C, H, W), from the data alone.

    Parameters
    ----------
    planes
        Noisy data, one or more planes of one or more channels, in the data's units.
    correlation
        The noise's normalised 2-D autocorrelation (``NoiseAnalysis.autocorrelation_2d``), or
        None for pixel-independent noise. Patches are whitened with it, and it sets the
        correlation length.
    differences
        The planes repeat one static scene (``NoiseAnalysis.method == "plane differences"``).
    whiten
        Each channel's own correlation (``NoiseAnalysis.channel_autocorrelation_2d``), to whiten
        that channel's patches with instead of ``correlation``.
    model
        ``"affine"``: var = a·x + b (Poisson-Gaussian), fitted to the levels; ``"table"``: the
        measured levels, interpolated (sRGB tone curves, clipping); ``"constant"``: one variance;
        ``"auto"``: affine where it fits every level within :data:`AFFINE_TOLERANCE`, else the table.

    Returns
    -------
    NoiseLevel
        The best estimate (not scaled by :data:`BLEND_SAFETY`).
    """
    if model not in ("auto", "affine", "table", "constant"):
        raise ImageError(f"model={model!r}; choose auto, affine, table or constant.")
    levels, variances = [], []
    stats = level_statistics(planes, correlation, differences=differences, whiten=whiten)
    for lv, vv, (_lo, hi) in stats:
        if model == "constant":
            lv, vv = lv[:1] * 0, np.array([vv.mean()])
        elif model != "table":
            fit = _fit_affine(lv, vv)
            if fit is not None and (model == "affine" or np.all(np.abs((fit[0] * lv + fit[1]) / vv - 1)
                                                               <= AFFINE_TOLERANCE)):
                # the line holds over the whole signal range seen (the brightest bin's mean is not its
                # top: Poisson noise keeps growing); below the lowest level measured it is held
                lv = np.concatenate([lv, [hi]])
                vv = np.maximum(fit[0] * lv + fit[1], vv.min())
        levels.append(tuple(float(v) for v in lv))
        variances.append(tuple(float(v) for v in vv))
    return NoiseLevel(tuple(levels), tuple(variances), correlation_length(correlation))


# ---------------------------------------------------------------------------------- risk and blend

def _check_pair(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f, y = np.asarray(f, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if f.shape != y.shape or f.ndim != 4:
        raise ImageError(f"output {f.shape} and input {y.shape} must both be (P, C, H, W) of one shape.")
    return f, y


_REUSE = threading.local()


@contextlib.contextmanager
def reusing_variance_maps() -> Iterator[None]:
    """Within this block, :func:`noise_variance_map` computes each (f, y, noise level) once: a calibration
    asks for the same map five times per candidate (its weight, risks and gains). Keyed by the objects
    themselves, so only for arrays nobody changes in place meanwhile (the calibration's own)."""
    outer = getattr(_REUSE, "maps", None)
    _REUSE.maps = [] if outer is None else outer
    try:
        yield
    finally:
        _REUSE.maps = outer


def noise_variance_map(f: np.ndarray, y: np.ndarray, noise_level: Noise) -> np.ndarray:
    """σ_i² at every pixel (:func:`noise_variance_map_of`); computed once per (f, y, level) inside
    :func:`reusing_variance_maps`. Callers must not change the returned array."""
    maps = getattr(_REUSE, "maps", None)
    if maps is None:
        return noise_variance_map_of(f, y, noise_level)
    for ff, yy, lv, var in maps:
        if ff is f and yy is y and lv is noise_level:
            return var
    var = noise_variance_map_of(f, y, noise_level)
    maps.append((f, y, noise_level, var))
    del maps[:-MAPS_KEPT]
    return var


MAPS_KEPT = 16  # a calibration's candidates (7 blind spots, their probes) and then some


def noise_variance_map_of(f: np.ndarray, y: np.ndarray, noise_level: Noise) -> np.ndarray:
    """σ_i² at every pixel (never cached), evaluated at f corrected by the local mean of y − f around i.

    Not at y (it holds n_i) and not at f alone: a network trained with an L1 loss estimates the
    median, which for Poisson noise lies below the mean (measured on W2S: σ² at f read 0.84-0.93
    of σ² at the clean image). The ring around i, without the noise correlation's extent, puts
    the mean back without seeing n_i.
    """
    hole = 2 * noise_level.correlation_length - 1
    return noise_level.variance(f + local_mean_without_centre(y - f, hole + 4, hole))


def blend_weights(f: np.ndarray, y: np.ndarray, noise_level: Noise, *, window: int | None = BLEND_WINDOW,
                  safety: float = BLEND_SAFETY) -> np.ndarray:
    """Weights α of f in the blend (1 − α)·y + α·f, in [0, 1].

    ``window`` (odd pixels): per-pixel local Wiener weights α_i = σ̂_i² / mean (f − y)² over the
    window around i without its centre, as wide as the noise correlation (2·length − 1): α_i must
    not see n_i, or it shrinks where n_i² is large and the risk estimate turns optimistic (by 0.9
    dB on the light sample with a full 9x9 window). None: one global α per plane and channel,
    σ̂² / E (f − y)². σ̂² is ``safety`` times the estimate (see :data:`BLEND_SAFETY`).
    """
    f, y = _check_pair(f, y)
    var = safety * noise_variance_map(f, y, noise_level)
    d2 = (f - y) ** 2
    if window is None:
        num, den = var.mean(axis=(-2, -1), keepdims=True), d2.mean(axis=(-2, -1), keepdims=True)
        return np.broadcast_to(np.clip(num / np.maximum(den, VAR_FLOOR), 0.0, 1.0), f.shape)
    hole = 2 * noise_level.correlation_length - 1
    if window < 1 or window % 2 == 0 or window <= hole:
        raise ImageError(f"window={window} must be an odd number of pixels larger than {hole} (the noise "
                         f"correlation's extent).")
    # the local risk of f, R̂ = ring mean of (f − y)² − σ̂², against this pixel's own σ̂²: with
    # signal-dependent noise the ring's noise is not the pixel's
    r_local = local_mean_without_centre(d2 - var, window, hole)
    return np.clip(var / np.maximum(var + r_local, VAR_FLOOR), 0.0, 1.0)


def blend(y: np.ndarray, f: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """(1 − α)·y + α·f."""
    y, f = np.asarray(y, dtype=np.float64), np.asarray(f, dtype=np.float64)
    return y + alpha * (f - y)


def risk(f: np.ndarray, y: np.ndarray, noise_level: Noise, alpha: np.ndarray | float = 1.0,
         leak: np.ndarray | float = 0.0) -> float:
    """Estimated MSE against the clean image of f (α = 1) or of the blend with weights ``alpha``.

    E (g − x)² = E[α² (f − y)² − 2 α (σ² − c) + σ²], c = E[f_i n_i] the noise f keeps from its own pixel
    (``leak``, per channel: 0 for a blind spot that covers the correlation, Noise2Self; otherwise the
    divergence of :func:`leak`, SURE).
    """
    f, y = _check_pair(f, y)
    var = noise_variance_map(f, y, noise_level)
    alpha = np.broadcast_to(alpha, f.shape)
    return float(np.mean(alpha**2 * (f - y) ** 2 - 2 * alpha * (var - leak) + var))


# ------------------------------------------------------------------------- outputs that see their pixel (SURE)
#: The probe's size against the noise: small enough for the finite difference of a piecewise-linear network to
#: be its derivative (the estimate was the same within 0.1 dB from 0.01 to 0.1 on the sample's student).
PROBE_SCALE = 0.03


def correlated_field(shape: tuple[int, ...], correlation: np.ndarray | None, seed: int = 0) -> np.ndarray:
    """Gaussian noise of unit variance with the 2-D autocorrelation ``correlation`` (None: white) in every
    (..., H, W) plane: white noise filtered by the square root of the correlation's spectrum."""
    w = np.random.default_rng(seed).standard_normal(shape)
    if correlation is None:
        return w
    h, wd = shape[-2:]
    lag = correlation.shape[0] // 2
    kernel = np.zeros((h, wd))
    for dy in range(-lag, lag + 1):
        for dx in range(-lag, lag + 1):
            kernel[dy % h, dx % wd] += correlation[dy + lag, dx + lag]
    spectrum = np.sqrt(np.clip(np.real(np.fft.fft2(kernel)), 0.0, None))
    b = np.real(np.fft.ifft2(np.fft.fft2(w) * spectrum))
    return b / max(float(b.std()), VAR_FLOOR)


def noise_probe(f: np.ndarray, y: np.ndarray, noise_level: Noise, correlation: np.ndarray | None,
                seed: int = 0) -> np.ndarray:
    """A probe b with the noise's covariance: σ_i times a unit field of the noise's correlation."""
    f, y = _check_pair(f, y)
    return np.sqrt(noise_variance_map(f, y, noise_level)) * correlated_field(f.shape, correlation, seed)


def leak(f: np.ndarray, f_probed: np.ndarray, probe: np.ndarray, scale: float = PROBE_SCALE) -> np.ndarray:
    """E[f_i n_i] per channel, (1, C, 1, 1): the noise an output keeps from the pixel it denoises.

    Stein's lemma for Gaussian noise of covariance Σ: E[n_i f_i(y)] = Σ_j Σ_ij E[∂f_i/∂y_j], which a probe b of
    the same covariance measures, E_b[b_i (f(y + εb) − f(y))_i] / ε (Monte-Carlo SURE; Ramani et al. 2008,
    with a correlated probe). ``f_probed`` is the output for ``y + scale·probe``.
    """
    f, f_probed, probe = (np.asarray(a, dtype=np.float64) for a in (f, f_probed, probe))
    return (probe * (f_probed - f)).mean(axis=(0, 2, 3), keepdims=True) / scale


def noise_mse(f: np.ndarray, y: np.ndarray, noise_level: Noise) -> float:
    """Estimated MSE of the noisy input itself: the mean σ_i² (see :func:`noise_variance_map`)."""
    f, y = _check_pair(f, y)
    return float(np.mean(noise_variance_map(f, y, noise_level)))


def estimated_gain_db(f: np.ndarray, y: np.ndarray, noise_level: Noise,
                      alpha: np.ndarray | float = 1.0, leak: np.ndarray | float = 0.0) -> float:
    """10·log10(σ̂² / R̂): estimated PSNR gain over the noisy input of f or of its blend."""
    return gain_of_risk(noise_mse(f, y, noise_level), risk(f, y, noise_level, alpha, leak))


def gain_of_risk(noise: float, r: float) -> float:
    """10·log10(σ̂² / R̂) from the mean noise variance and an estimated risk R̂. R̂ is unbiased, not positive: an
    estimate at or below zero says "at least MAX_GAIN_DB"."""
    return float(10 * np.log10(noise / max(r, noise * 10 ** (-MAX_GAIN_DB / 10))))


def choose_k_b(outputs: dict[int, np.ndarray], y: np.ndarray, noise_level: Noise,
               valid_ks: Any = None, *, window: int | None = BLEND_WINDOW) -> tuple[int, dict[int, float]]:
    """The valid k_b whose blend has the lowest estimated risk, and every valid k_b's risk.

    ``valid_ks`` defaults to :func:`valid_blind_spots` of the outputs for the noise level's
    correlation length; outputs whose blind spot leaks noise cannot be ranked by this estimate.
    """
    ks = valid_blind_spots(outputs, noise_level.correlation_length) if valid_ks is None else list(valid_ks)
    ks = [k for k in ks if k in outputs]
    if not ks:
        raise ImageError(f"none of the blind spots {sorted(outputs)} covers the noise correlation length "
                         f"{noise_level.correlation_length}; denoise with a larger k_b.")
    risks = {k: risk(outputs[k], y, noise_level, blend_weights(outputs[k], y, noise_level, window=window))
             for k in ks}
    return min(risks, key=risks.__getitem__), risks


def best_blend(outputs: dict[int, np.ndarray], y: np.ndarray, noise_level: Noise, valid_ks: Any = None, *,
               window: int | None = BLEND_WINDOW) -> tuple[int, np.ndarray, float]:
    """The default output: (auto k_b, its blend with ``y``, the blend's estimated gain in dB)."""
    k, _ = choose_k_b(outputs, y, noise_level, valid_ks, window=window)
    alpha = blend_weights(outputs[k], y, noise_level, window=window)
    return k, blend(y, outputs[k], alpha), estimated_gain_db(outputs[k], y, noise_level, alpha)
