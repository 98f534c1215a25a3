"""Windowed inference geometry: the network only ever sees windows of its training size.

Why: the networks are not size-invariant (method.md Decision 8). Every
shifted conv and pool pads zeros at the top of its rotated frame, and the
deep layers learn where those borders sit in a training patch; run on a
larger image, the same weights drift (20.7 dB whole-image vs 35.5 dB tiled in
our calibration). So inference runs on ``window x window`` crops with a
``halo`` of real context, and keeps only each window's centre.

Two grids, both pure geometry (numpy only, no torch):

* the **window grid** is anchored to the whole plane: along each axis, kept
  "cores" of ``window - 2*halo`` pixels tile the plane from 0; each window is
  its core plus the halo, clamped inside the plane. It depends only on the
  plane size, the window and the halo, so every output pixel always comes
  from the same window whatever is being computed around it;
* the **chunk grid** cuts the output (the plane, or a region of interest) into
  blocks of any size. A chunk is computed from exactly the windows whose
  kept core meets it (:meth:`AxisPlan.windows_for`), read from one region
  (:meth:`AxisPlan.read_range`). So results do not depend on the chunk size,
  and chunks can be computed in any order, on any worker, or again after an
  interruption.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class Span:
    """One window along an axis: read [start, start+window), keep [keep_start, keep_stop)."""

    start: int
    keep_start: int
    keep_stop: int


def check_window(window: int, halo: int) -> None:
    for name, v in (("window", window), ("halo", halo)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise ConfigError(f"{name}={v!r} must be an integer number of pixels.")
    if window <= 0 or halo < 0 or window - 2 * halo <= 0:
        raise ConfigError(f"window={window} and halo={halo} leave no centre to keep; use 0 <= halo < window/2.")


def plan_axis(length: int, window: int, halo: int) -> list[Span]:
    """Windows along one axis of ``length`` pixels (length may be < window: padded later)."""
    check_window(window, halo)
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


#: The halo as a share of the window, per model kind (``halo = window // N``). A teacher's shifted half-plane
#: receptive fields reach far and see a window's zero-padded border: at an eighth it lost 0.05 dB (sample) and
#: 0.18 dB (PolyU), at a sixteenth 0.19 and 1.38 dB. A student (a plain UNet) lost nothing measurable even at a
#: sixteenth (0.00 dB on both, largest pixel change 0.7 noise std): an eighth computes 1.78x the pixels it
#: delivers instead of 4x (benchmarks/halo.py; docs/benchmarks.md, "How much halo").
HALO_FRACTION = {"atbsn": 4, "dbsn": 4, "student": 8}


def default_halo(window: int, kind: str = "atbsn") -> int:
    """The halo a model of ``kind`` is run with by default: a quarter of the window (32 px for 128 px windows),
    an eighth for a student (16 px)."""
    return window // HALO_FRACTION.get(kind, 4)


class AxisPlan:
    """The window grid along one axis, as arrays, with chunk -> window lookups."""

    def __init__(self, length: int, window: int, halo: int) -> None:
        spans = plan_axis(length, window, halo)
        self.length, self.window, self.halo = int(length), int(window), int(halo)
        self.starts = np.array([s.start for s in spans], dtype=np.int64)
        self.keep_starts = np.array([s.keep_start for s in spans], dtype=np.int64)
        self.keep_stops = np.array([s.keep_stop for s in spans], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def windows_for(self, a: int, b: int) -> tuple[int, int]:
        """Indices [i0, i1) of the windows whose kept core meets [a, b)."""
        if not 0 <= a < b <= self.length:
            raise ValueError(f"range [{a}, {b}) is outside the axis [0, {self.length}).")
        # cores partition the axis in order, so both ends are a binary search
        i0 = int(np.searchsorted(self.keep_stops, a, side="right"))
        i1 = int(np.searchsorted(self.keep_starts, b, side="left"))
        return i0, i1

    def read_range(self, i0: int, i1: int) -> tuple[int, int]:
        """The pixels windows i0..i1-1 read (clamped to the axis; shorter than a window only if the axis is)."""
        return int(self.starts[i0]), int(min(self.starts[i1 - 1] + self.window, self.length))


@dataclass(frozen=True)
class Box:
    """A chunk of one plane's output: rows [y0, y1), columns [x0, x1)."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def chunk_boxes(region: Box, chunk: tuple[int, int]) -> list[Box]:
    """The chunk grid over ``region`` (the plane or a region of interest), anchored at its corner."""
    cy, cx = chunk
    if cy < 1 or cx < 1:
        raise ConfigError(f"chunk={chunk} must be positive.")
    return [Box(y, min(y + cy, region.y1), x, min(x + cx, region.x1))
            for y in range(region.y0, region.y1, cy) for x in range(region.x0, region.x1, cx)]


@dataclass(frozen=True)
class PlaneGrid:
    """The window grid of a whole ``height x width`` plane."""

    y: AxisPlan
    x: AxisPlan

    @classmethod
    def of(cls, height: int, width: int, window: int, halo: int) -> PlaneGrid:
        return cls(AxisPlan(height, window, halo), AxisPlan(width, window, halo))

    @property
    def window(self) -> int:
        return self.y.window

    def windows(self, box: Box) -> tuple[range, range]:
        """Window indices (along y and x) that ``box`` needs."""
        return range(*self.y.windows_for(box.y0, box.y1)), range(*self.x.windows_for(box.x0, box.x1))

    def read_box(self, box: Box) -> Box:
        """The source pixels the windows of ``box`` read."""
        ys, xs = self.windows(box)
        y0, y1 = self.y.read_range(ys.start, ys.stop)
        x0, x1 = self.x.read_range(xs.start, xs.stop)
        return Box(y0, y1, x0, x1)

    def core_in(self, box: Box, iy: int, ix: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """Where window (iy, ix)'s kept core meets ``box``: its (rows, columns) in the chunk, then in the
        window (what the host and device paths both copy from a window's result into the chunk's)."""
        ky0, ky1 = max(self.y.keep_starts[iy], box.y0), min(self.y.keep_stops[iy], box.y1)
        kx0, kx1 = max(self.x.keep_starts[ix], box.x0), min(self.x.keep_stops[ix], box.x1)
        sy, sx = self.y.starts[iy], self.x.starts[ix]
        return ((slice(ky0 - box.y0, ky1 - box.y0), slice(kx0 - box.x0, kx1 - box.x0)),
                (slice(ky0 - sy, ky1 - sy), slice(kx0 - sx, kx1 - sx)))

    def count(self, box: Box) -> int:
        ys, xs = self.windows(box)
        return len(ys) * len(xs)


# fn maps a batch of normalised windows (B, C, w, w) to (K, B, C', w, w): K outputs per window
# (several blind-spot sizes from one backbone pass, or K = 1).
WindowFn = Callable[[np.ndarray], np.ndarray]
# read(y0, y1, x0, x1) -> (C, y1 - y0, x1 - x0) pixels of the plane: normalised float32, or raw pixels of any
# type when a ``prepare`` normalises each batch
Reader = Callable[[int, int, int, int], np.ndarray]
# prepare(tiles) normalises a float32 batch of windows (B, C, w, w) in place
Prepare = Callable[[np.ndarray], None]


def iter_box(fn: WindowFn, read: Reader, grid: PlaneGrid, box: Box, *, batch_size: int,
             prepare: Prepare | None = None, out: Any = None) -> Generator[int, None, Any]:
    """Compute one chunk: yields the number of windows done after each batch; returns the (K, C', h, w) result
    (``out``: K float32 arrays of (C', h, w) to write it into, views of a larger image included; returned).

    Windows are read from one region and batched in a fixed (row-major) order,
    so the same chunk always gives the same bytes. With ``prepare``, ``read``
    gives raw pixels and each batch is cast to float32 and normalised as it is
    cut (one pass over the pixels, in cache, instead of whole-region copies).
    Planes smaller than the window are zero-padded at the bottom/right (zeros,
    in the normalised space, carry no pixel's own value).
    """
    w = grid.window
    ys, xs = grid.windows(box)
    rb = grid.read_box(box)
    ry0, rx0 = rb.y0, rb.x0
    region = read(rb.y0, rb.y1, rb.x0, rb.x1)
    ph, pw = max(w - region.shape[-2], 0), max(w - region.shape[-1], 0)
    if ph or pw:  # a plane smaller than the window: normalise it whole, then pad with normalised zeros
        region = np.array(region, dtype=np.float32)
        if prepare is not None:
            prepare(region[None])
            prepare = None
        region = np.pad(region, ((0, 0), (0, ph), (0, pw)))
    todo = list(itertools.product(ys, xs))
    y_starts, x_starts = grid.y.starts - ry0, grid.x.starts - rx0
    buffer = np.empty((min(batch_size, len(todo)), region.shape[0], w, w), dtype=np.float32)
    for i in range(0, len(todo), batch_size):
        batch = todo[i:i + batch_size]
        tiles = buffer[:len(batch)]
        for b, (iy, ix) in enumerate(batch):
            sy, sx = y_starts[iy], x_starts[ix]
            np.copyto(tiles[b], region[:, sy:sy + w, sx:sx + w], casting="unsafe")
        if prepare is not None:
            prepare(tiles)
        res = fn(tiles)
        if out is None:
            out = np.empty((res.shape[0], res.shape[2], *box.shape), dtype=np.float32)
        for b, (iy, ix) in enumerate(batch):
            (dy, dx), (sy, sx) = grid.core_in(box, iy, ix)  # the part of its kept core in the chunk
            for k, d in enumerate(out):
                d[:, dy, dx] = res[k, b, :, sy, sx]
        yield len(batch)
    assert out is not None  # a non-empty box always needs at least one window
    return out


def run_box(fn: WindowFn, read: Reader, grid: PlaneGrid, box: Box, *, batch_size: int,
            prepare: Prepare | None = None) -> np.ndarray:
    """:func:`iter_box` without progress."""
    from .events import drain

    return drain(iter_box(fn, read, grid, box, batch_size=batch_size, prepare=prepare))
