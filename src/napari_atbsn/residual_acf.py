"""The noise's autocorrelation from a single image's residual (numpy only): the residual y − G*y of a Gaussian
smoothing G filters the noise by (δ − G), whose effect is undone here by least squares (used by
:func:`napari_atbsn.analysis.analyze_noise`)."""

from __future__ import annotations

import numpy as np

from .errors import ImageError
from .filters import gaussian_kernel


def deconvolve_residual_acf(acf_r: np.ndarray, sigma: float, support: int) -> tuple[np.ndarray, float]:
    """Noise autocovariance (lags <= support) whose residual (delta - G) filtering gives ``acf_r``.

    ``acf_r`` is the residual's autocovariance at lags -L..L. Returns the noise's normalised
    autocorrelation on -support..support and its variance.
    """
    k = gaussian_kernel(sigma)
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
