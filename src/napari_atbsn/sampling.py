"""Random training patches drawn from any array-like image data.

A :class:`PlaneSource` reads (C, h, w) crops of single planes by indexing the
original array (numpy, memmap, dask, zarr ...), so only the pixels of the
patches in the batch are ever read. Patch positions depend only on
``(seed, step)``, which makes a resumed run draw the same batches as an
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .axes import PLANE_LETTERS, check_context_length, check_image, neighbour_planes, validate_axes
from .errors import ImageError, damaged_input


class PlaneSource:
    """The planes of an image array viewed as (N, C, Y, X) without copying it.

    Parameters
    ----------
    data : array-like
        Any object with ``shape``, ``ndim``, ``dtype`` and numpy-style
        slicing.
    axes : str
        Letters of ``data``'s dimensions (see :mod:`napari_atbsn.axes`).
    """

    def __init__(self, data: Any, axes: str) -> None:
        if not hasattr(data, "shape"):
            data = np.asarray(data)
        check_image(data)
        self.data = data
        self.axes = validate_axes(axes, data.ndim)
        self.plane_dims = [i for i, a in enumerate(self.axes) if a in PLANE_LETTERS]
        self.plane_shape = tuple(int(data.shape[i]) for i in self.plane_dims)
        self.n_planes = int(np.prod(self.plane_shape)) if self.plane_shape else 1
        self.channels = int(data.shape[self.axes.index("C")]) if "C" in self.axes else 1
        self.height = int(data.shape[self.axes.index("Y")])
        self.width = int(data.shape[self.axes.index("X")])
        if self.n_planes == 0 or self.height == 0 or self.width == 0:
            raise ImageError(f"the image has an empty dimension (shape {tuple(data.shape)}).")

    def separate_images(self, planes: Any) -> np.ndarray | None:
        """The index along S (separate images) of each of ``planes`` (plane numbers); None without an S axis."""
        plane_axes = "".join(self.axes[d] for d in self.plane_dims)
        if "S" not in plane_axes:
            return None
        return np.unravel_index(np.asarray(planes, dtype=np.int64), self.plane_shape)[plane_axes.index("S")]

    def read(self, plane: int, y0: int = 0, x0: int = 0, h: int | None = None, w: int | None = None) -> np.ndarray:
        """Crop of one plane as float32 (C, h, w)."""
        h = self.height if h is None else h
        w = self.width if w is None else w
        idx: list[Any] = [slice(None)] * len(self.axes)
        for dim, i in zip(self.plane_dims, np.unravel_index(plane, self.plane_shape) if self.plane_shape else (),
                          strict=True):
            idx[dim] = int(i)
        idx[self.axes.index("Y")] = slice(y0, y0 + h)
        idx[self.axes.index("X")] = slice(x0, x0 + w)
        with damaged_input(f"plane {plane}, rows {y0}:{y0 + h}, columns {x0}:{x0 + w}"):
            crop = np.asarray(self.data[tuple(idx)], dtype=np.float32)
        kept = [a for a in self.axes if a not in PLANE_LETTERS]  # order of remaining dims
        if "C" not in kept:
            crop, kept = crop[None], ["C", *kept]
        return np.transpose(crop, [kept.index(a) for a in "CYX"])

    def read_unit(self, plane: int, y0: int = 0, x0: int = 0, h: int | None = None, w: int | None = None,
                  context: int = 0) -> np.ndarray:
        """Crop of a plane followed by the same crop of its ``context`` neighbouring planes on each side along Z
        (else T), as float32 (C * (2 * context + 1), h, w): what a stack-context network reads
        (axes.neighbour_planes: mirrored at the stack's ends)."""
        if context == 0:
            return self.read(plane, y0, x0, h, w)
        axis = check_context_length(self.axes, self.data.shape, context)
        plane_axes = "".join(self.axes[d] for d in self.plane_dims)
        planes = neighbour_planes(plane, plane_axes, self.plane_shape, context, axis)
        return np.concatenate([self.read(p, y0, x0, h, w) for p in planes], axis=0)

    def sample_pixels(self, rng: np.random.Generator, max_planes: int = 16, max_side: int = 512) -> np.ndarray:
        """A (n, C, h, w) sample of whole planes (or centred crops) for fitting normalisation."""
        n = min(self.n_planes, max_planes)
        planes = np.sort(rng.choice(self.n_planes, size=n, replace=False))
        h, w = min(self.height, max_side), min(self.width, max_side)
        y0, x0 = (self.height - h) // 2, (self.width - w) // 2
        return np.stack([self.read(int(p), y0, x0, h, w) for p in planes])


#: Lazily read training data at most this share of the free memory is read into memory once: from a file, each
#: patch is a read of its own (13 ms per batch of 8 from a TIFF, 0.5 ms from memory; docs/benchmarks.md).
IN_MEMORY_FRACTION = 0.25


def in_memory(source: PlaneSource, available: int) -> PlaneSource:
    """``source`` read whole into memory when it is a lazily read file (a LazyImage's dask array) and takes at
    most :data:`IN_MEMORY_FRACTION` of ``available`` bytes; else ``source`` itself (larger data keeps being read
    patch by patch, so memory stays bounded). The pixels and their type are the file's, so the batches are
    the same."""
    data = source.data
    if not hasattr(data, "dask") or int(np.prod(data.shape)) * np.dtype(data.dtype).itemsize > \
            IN_MEMORY_FRACTION * available:
        return source
    with damaged_input("the training data (read whole into memory)"):
        loaded = data.compute(scheduler="threads")
    return PlaneSource(np.asarray(loaded), source.axes)


def plane_source(data: Any, axes: str | None = None) -> PlaneSource:
    """A :class:`PlaneSource` over an array or a lazily opened :class:`~napari_atbsn.io.readers.LazyImage`."""
    from .axes import guess_axes

    if hasattr(data, "axes") and hasattr(data, "data") and hasattr(data.data, "dask"):  # a LazyImage
        return PlaneSource(data.data, axes or data.axes)
    return PlaneSource(data, axes or guess_axes(np.shape(data)))


def dihedral(x: np.ndarray, op: int) -> np.ndarray:
    """One of the 8 rotations/flips of the square (..., Y, X) array (op in 0..7)."""
    if op >= 4:
        x = x[..., ::-1]
    return np.rot90(x, op % 4, axes=(-2, -1))


def check_patch_fits(source: PlaneSource, patch: int) -> None:
    """Training patches must fit inside a plane."""
    if source.height < patch or source.width < patch:
        raise ImageError(f"the image planes ({source.height}x{source.width}) are smaller than the training "
                         f"patch ({patch}x{patch}); use a smaller --patch (a multiple of 32) or a larger image.")


def sample_batch(source: PlaneSource, step: int, *, seed: int, batch: int, patch: int,
                 augment: bool = True, rows: int | None = None, context: int = 0) -> np.ndarray:
    """Random (batch, C, patch, patch) float32 patches for training step ``step``, from the first ``rows`` rows
    of each plane (default: all; the rest is held out). With ``context`` each patch is followed by the same
    crop of its neighbouring planes (C * (2 * context + 1) channels), all turned alike; the draws are those of
    a 2-D run, so the centre patches are the same."""
    check_patch_fits(source, patch)
    rows = source.height if rows is None else rows
    if not patch <= rows <= source.height:
        raise ImageError(f"rows={rows}: patches of {patch} must come from 1 to {source.height} rows.")
    out = np.empty((batch, source.channels * (2 * context + 1), patch, patch), dtype=np.float32)
    for b, (plane, y0, x0, turn) in enumerate(_draws(source, step, seed, batch, patch, rows, augment)):
        crop = source.read_unit(plane, y0, x0, patch, patch, context)
        out[b] = dihedral(crop, turn) if augment else crop
    return out


def _draws(source: PlaneSource, step: int, seed: int, batch: int, patch: int, rows: int,
           augment: bool) -> Iterator[tuple[int, int, int, int]]:
    """(plane, y0, x0, dihedral op) of each patch of step ``step``: a function of (seed, step) alone."""
    rng = np.random.default_rng([seed, step])
    for _ in range(batch):
        plane = int(rng.integers(source.n_planes))
        y0 = int(rng.integers(rows - patch + 1))
        x0 = int(rng.integers(source.width - patch + 1))
        yield plane, y0, x0, int(rng.integers(8)) if augment else 0


def batch_planes(source: PlaneSource, step: int, *, seed: int, batch: int, patch: int,
                 augment: bool = True, rows: int | None = None) -> np.ndarray:
    """The plane each patch of :func:`sample_batch` (same arguments) comes from, without reading any: what a
    loss needs that treats separate images apart (D-BSN's per-image noise level)."""
    rows = source.height if rows is None else rows
    return np.array([d[0] for d in _draws(source, step, seed, batch, patch, rows, augment)], dtype=np.int64)


#: The stream of (seed, step) random numbers that context dropout draws from: apart from the patches' (whose draws
#: stay those of a 2-D run), and a function of the step alone, so a resumed run drops the same samples.
DROPOUT_STREAM = 1


def drop_context(batch: np.ndarray, channels: int, share: float, *, seed: int, step: int) -> np.ndarray:
    """Context dropout: the neighbouring planes' channels (after the plane's ``channels``) of each sample of a
    normalised training ``batch`` set to zeros with probability ``share``, in place; the draws depend only on
    (seed, step). Those samples teach a stack-context network to denoise a plane alone (its 2-D mode)."""
    if share <= 0 or batch.shape[1] == channels:
        return batch
    dropped = np.random.default_rng([seed, step, DROPOUT_STREAM]).random(batch.shape[0]) < share
    batch[dropped, channels:] = 0
    return batch
