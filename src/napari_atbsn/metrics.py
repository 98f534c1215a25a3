"""PSNR and SSIM with one stated convention.

* Images are compared as float64, without clipping or rounding.
* ``data_range`` defaults to the reference's ``max - min`` (microscopy data
  have arbitrary offsets); pass 255 for 8-bit images.
* SSIM: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5),
  K1 = 0.01, K2 = 0.03, computed per 2-D plane and channel on the valid
  region, then averaged. ``axes`` tells which dimensions are Y, X (and C).
"""

from __future__ import annotations

import numpy as np

from .axes import guess_axes, to_planes, validate_axes


def psnr(image: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB."""
    x, ref = np.asarray(image, np.float64), np.asarray(reference, np.float64)
    if x.shape != ref.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {ref.shape}")
    rng = float(ref.max() - ref.min()) if data_range is None else float(data_range)
    mse = float(np.mean((x - ref) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(rng**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    g = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    return g / g.sum()


def _filter(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of a (N, Y, X) array."""
    k = len(g)
    out = sum(g[i] * img[:, i:img.shape[1] - k + 1 + i, :] for i in range(k))
    return sum(g[i] * out[:, :, i:out.shape[2] - k + 1 + i] for i in range(k))


def ssim(image: np.ndarray, reference: np.ndarray, data_range: float | None = None, axes: str | None = None) -> float:
    """Mean structural similarity over planes and channels."""
    x, ref = np.asarray(image, np.float64), np.asarray(reference, np.float64)
    if x.shape != ref.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {ref.shape}")
    axes = validate_axes(axes or guess_axes(x.shape), x.ndim)
    rng = float(ref.max() - ref.min()) if data_range is None else float(data_range)
    planes_x, planes_ref = to_planes(x, axes), to_planes(ref, axes)  # (N, C, Y, X)
    a = planes_x.reshape(-1, *planes_x.shape[-2:])
    b = planes_ref.reshape(a.shape)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    g = _gaussian_window()
    mu_a, mu_b = _filter(a, g), _filter(b, g)
    saa = _filter(a * a, g) - mu_a**2
    sbb = _filter(b * b, g) - mu_b**2
    sab = _filter(a * b, g) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return float(s.mean())
