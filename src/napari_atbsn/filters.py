"""Small numpy image filters on the last two axes, shared by the noise estimators (numpy only)."""

from __future__ import annotations

import numpy as np


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian of at least three taps (radius 3σ)."""
    r = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return k / k.sum()


def separable(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """'Same' filtering of the last two axes with reflect padding."""
    r = len(k) // 2
    pad = [(0, 0)] * (x.ndim - 2)
    p = np.pad(x, [*pad, (r, r), (0, 0)], mode="reflect")
    x = sum(k[i] * p[..., i:i + x.shape[-2], :] for i in range(len(k)))
    p = np.pad(x, [*pad, (0, 0), (r, r)], mode="reflect")
    return sum(k[i] * p[..., :, i:i + x.shape[-1]] for i in range(len(k)))


def box_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Local mean over a window x window square (reflect padding), via cumulative sums."""
    r = window // 2
    pad = [(0, 0)] * (x.ndim - 2)
    p = np.pad(x, [*pad, (r + 1, r), (r + 1, r)], mode="reflect")
    c = p.cumsum(-2).cumsum(-1)
    h, w = x.shape[-2:]
    s = c[..., window:window + h, window:window + w] - c[..., :h, window:window + w] \
        - c[..., window:window + h, :w] + c[..., :h, :w]
    return s / window**2
