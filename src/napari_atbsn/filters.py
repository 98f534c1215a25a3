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


#: Side of the square a pixel must share one exact value with to count as flat. Noise never repeats one value
#: over 25 pixels, except where the signal is so low that the noise is negligible (Poisson counts below ~0.2).
FLAT_SIDE = 5


def flat_pixels(x: np.ndarray, side: int = FLAT_SIDE) -> np.ndarray:
    """Pixels of (..., H, W) that lie in a ``side`` x ``side`` square of one exact value: blank planes, the zero or
    constant fill of a padded canvas, saturated plateaus. They carry no noise, so a noise measurement must leave
    them out; a denoiser must return them as they are."""
    x = np.asarray(x)
    if x.shape[-2] < side or x.shape[-1] < side:
        return np.zeros(x.shape, dtype=bool)
    # boolean runs, separable: a denoise runs this on every unit of the default output, where a 5x5
    # sliding-window min/max took 1 s per 3 Mpixel (3 Mpixel/s, below the student's throughput) and this 15 ms
    eq_h = x[..., :, 1:] == x[..., :, :-1]
    run = eq_h[..., :, :eq_h.shape[-1] - side + 2].copy()  # run[j]: x[j .. j + side - 1] of one value
    for d in range(1, side - 1):
        run &= eq_h[..., :, d:d + run.shape[-1]]
    if not run.any():
        return np.zeros(x.shape, dtype=bool)
    h = run.shape[-2] - side + 1
    eq_v = x[..., 1:, :run.shape[-1]] == x[..., :-1, :run.shape[-1]]
    const = run[..., :h, :].copy()  # const[i, j]: the square starting at (i, j) is of one value
    for d in range(1, side):
        const &= run[..., d:d + h, :]
    for d in range(side - 1):
        const &= eq_v[..., d:d + h, :]
    # a pixel is flat if any constant square covers it: dilate the square starts back over the square
    rows = np.zeros((*x.shape[:-1], const.shape[-1]), dtype=bool)
    for d in range(side):
        rows[..., d:d + h, :] |= const
    out = np.zeros(x.shape, dtype=bool)
    for d in range(side):
        out[..., :, d:d + rows.shape[-1]] |= rows
    return out
