"""Windowed inference: the network only ever sees windows of its training size.

Why: the networks are not size-invariant (method.md Decision 8). Every
shifted conv and pool pads zeros at the top of its rotated frame, and the
deep layers learn where those borders sit in a training patch; run on a
larger image, the same weights drift (20.7 dB whole-image vs 35.5 dB tiled in
our calibration). So inference runs on ``window x window`` crops with a
``halo`` of real context, and keeps only each window's centre.

The plan is pure geometry. Along each axis, kept "cores" of ``window - 2*halo``
pixels tile the image; each window is its core plus the halo, clamped inside
the image. Invariant: every output pixel is written exactly once, and each
kept pixel is at least ``halo`` from its window's edge unless that edge is the
image's own border.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class Span:
    """One window along an axis: read [start, start+window), keep [keep_start, keep_stop)."""

    start: int
    keep_start: int
    keep_stop: int


def plan_axis(length: int, window: int, halo: int) -> list[Span]:
    """Windows along one axis of ``length`` pixels (length may be < window: padded later)."""
    if window <= 0 or halo < 0 or window - 2 * halo <= 0:
        raise ConfigError(f"window={window} and halo={halo} leave no centre to keep; use halo < window/2.")
    core = window - 2 * halo
    spans = []
    for c0 in range(0, length, core):
        c1 = min(c0 + core, length)
        start = min(max(c0 - halo, 0), max(length - window, 0))
        spans.append(Span(start, c0, c1))
    return spans


def plan_windows(height: int, width: int, window: int, halo: int) -> list[tuple[Span, Span]]:
    """All (y, x) windows covering a ``height x width`` plane."""
    return list(itertools.product(plan_axis(height, window, halo), plan_axis(width, window, halo)))


def default_halo(window: int) -> int:
    """A quarter of the window: 32 px for the usual 128 px windows."""
    return window // 4


def iter_tiled(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, *, window: int, halo: int,
               batch_size: int, out: np.ndarray) -> Iterator[tuple[int, int]]:
    """Apply ``fn`` (B, C, w, w) -> (B, C', w, w) to a (C, Y, X) image in windows.

    Fills ``out`` (C', Y, X); yields ``(windows_done, windows_total)`` after
    each batch so callers can report progress and stop. Planes smaller than
    the window are zero-padded at the bottom/right (zeros, in the normalised
    space, carry no pixel's own value).
    """
    h, w = image.shape[-2:]
    ph, pw = max(window - h, 0), max(window - w, 0)
    if ph or pw:
        image = np.pad(image, ((0, 0), (0, ph), (0, pw)))
    plan = plan_windows(h, w, window, halo)
    done = 0
    for i in range(0, len(plan), batch_size):
        chunk = plan[i:i + batch_size]
        tiles = np.stack([image[:, ys.start:ys.start + window, xs.start:xs.start + window] for ys, xs in chunk])
        res = fn(tiles)
        for (ys, xs), r in zip(chunk, res, strict=True):
            out[:, ys.keep_start:ys.keep_stop, xs.keep_start:xs.keep_stop] = r[
                :, ys.keep_start - ys.start:ys.keep_stop - ys.start, xs.keep_start - xs.start:xs.keep_stop - xs.start]
        done += len(chunk)
        yield done, len(plan)
