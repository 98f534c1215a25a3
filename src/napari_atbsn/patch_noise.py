"""Noise in image patches (numpy only): the patches a noise level is measured on, and the PCA that measures it.

Used by :mod:`napari_atbsn.risk` (the noise level model) and kept apart from it so that each stays small.
"""

from __future__ import annotations

import numpy as np

from .filters import box_mean, flat_pixels, gaussian_kernel, separable

SIGNAL_SIGMA = 2.0     # Gaussian of the signal level a pair of planes' difference is binned by
RING_OUTER, RING_HOLE = 17, 11  # a patch's level: the mean of the 17x17 square around it without its 11x11 core
STRIDE = 2             # patch spacing (overlapping patches: more samples, same cost per eigenproblem)


def local_mean_without_centre(x: np.ndarray, window: int, hole: int) -> np.ndarray:
    """Mean over a window x window square minus its central hole x hole square."""
    if hole <= 0:
        return box_mean(x, window)
    return (box_mean(x, window) * window**2 - box_mean(x, hole) * hole**2) / (window**2 - hole**2)


def whitener(correlation: np.ndarray | None, patch: int) -> np.ndarray:
    """Ρ^(-1/2) for the patch's noise correlation matrix Ρ (from the normalised 2-D autocorrelation).

    Whitened, correlated noise becomes white with the same variance per pixel, which is what the
    eigenvalue test of :func:`pca_noise_variance` assumes.
    """
    if correlation is None:
        return np.eye(patch * patch)
    acf = np.asarray(correlation, dtype=np.float64)
    lag = acf.shape[0] // 2
    iy, ix = np.divmod(np.arange(patch * patch), patch)
    dy, dx = iy[:, None] - iy[None], ix[:, None] - ix[None]
    inside = (np.abs(dy) <= lag) & (np.abs(dx) <= lag)
    m = np.where(inside, acf[np.clip(dy + lag, 0, 2 * lag), np.clip(dx + lag, 0, 2 * lag)], 0.0)
    w, v = np.linalg.eigh((m + m.T) / 2)
    w = np.maximum(w, 1e-3 * w.max())  # a measured acf need not be positive definite
    return (v * w**-0.5) @ v.T


def pca_noise_variance(patches: np.ndarray) -> float:
    """Noise variance of whitened patches (n, d): the mean of the eigenvalues that carry no signal.

    Texture lives in a few principal directions of the patches; the rest hold noise alone, whose
    eigenvalues scatter around σ². Drop the largest eigenvalue until the mean of those left is
    no larger than their median (Chen, Zhu & Heng, ICCV 2015). Unlike a residual in "flat" blocks,
    this does not mistake fine texture for noise when the noise is light.
    """
    x = patches - patches.mean(0)
    lam = np.linalg.eigvalsh(x.T @ x / max(len(x) - 1, 1))[::-1]
    for i in range(len(lam)):
        tail = lam[i:]
        if tail.mean() <= np.median(tail):
            return float(max(tail.mean(), 0.0))
    return float(max(lam[-1], 0.0))


def _patches(a: np.ndarray, patch: int) -> np.ndarray:
    """(..., H, W) -> (n, patch*patch): overlapping patches every STRIDE pixels."""
    w = np.lib.stride_tricks.sliding_window_view(a, (patch, patch), axis=(-2, -1))
    return w[..., ::STRIDE, ::STRIDE, :, :].reshape(-1, patch * patch)


def channel_patches(ch: np.ndarray, differences: bool, patch: int, *, guarded: bool = False,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Noise-carrying patches of one channel's planes (P, H, W) and their signal levels.

    Patches that touch a flat pixel (:func:`~napari_atbsn.filters.flat_pixels`: a blank plane, a padded canvas's
    fill, a saturated plateau) carry no noise and are left out. Patches are never chosen by whether their noisy
    values reach the image's minimum or maximum: that keeps the patches whose noise happened to be small, and read
    heavy noise clipped at 0 (SIDD: a quarter of the pixels) at a tenth of its variance and photon counts as
    "saturated".

    ``guarded``: the other selection, whose estimate :func:`napari_atbsn.risk.level_statistics` takes where it is
    lower: patches binned by their own smoothed mean, and those that reach the image's minimum or maximum left
    out. It reads heavy clipped noise low, but light noise over texture lower than the above, which reads the
    brightest, most textured patches as noise (a light 64x64 sample: 2-5x at the top levels)."""
    flat = flat_pixels(ch)
    if differences:
        d = (ch[1:] - ch[:-1]) / np.sqrt(2.0)
        values = d - d.mean(axis=(-2, -1), keepdims=True)
        signal = separable((ch[1:] + ch[:-1]) / 2, gaussian_kernel(SIGNAL_SIGMA))
        flat = flat[1:] | flat[:-1]
        level = _patches(signal, patch).mean(-1)
    elif guarded:
        values = ch
        level = _patches(separable(ch, gaussian_kernel(SIGNAL_SIGMA)), patch).mean(-1)
        flat = flat | (ch <= ch.min()) | (ch >= ch.max())
    else:
        values = ch
        # the level a patch is binned by is read from a ring around it, not from its own pixels: binning by the
        # patch's own smoothed (noisy) mean keeps, in each bin, the patches whose low-frequency noise happened to
        # fit it, and read heavy noise low (SIDD 0.2-0.7x, W2S 0.5-0.8x)
        ring = local_mean_without_centre(ch, RING_OUTER, RING_HOLE)
        level = _patches(ring, patch)[:, (patch // 2) * patch + patch // 2]
    ok = ~_patches(flat, patch).any(-1)
    return _patches(values, patch)[ok], level[ok]
