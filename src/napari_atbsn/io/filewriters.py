"""TIFF and .npy outputs, streamed from a finished work store (:mod:`napari_atbsn.io.outputs`) band by band,
so no output is ever whole in memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .fs import fsync_file
from .units import OME_UNIT

TIFF_TILE = 256
BAND_BYTES = 64 << 20  # the most a TIFF or .npy output reads from its work store at once


def file_axes(axes: str) -> str:
    """Axes of a TIFF/.npy output: the input's order with Y and X moved last (TIFF stores 2-D pages)."""
    return "".join(a for a in axes if a not in "YX") + "YX"


def band_rows(arr: Any, yi: int, row_bytes: int, step: int = 1) -> int:
    """Rows a TIFF or .npy output reads from its work store at once: as many whole storage chunk rows as fit
    :data:`BAND_BYTES` (each chunk is decompressed once, not once per band), in multiples of ``step`` (the TIFF
    tile); fewer than one chunk row only where a chunk row of a very wide plane does not fit."""
    chunk_rows = arr.chunks[yi] if hasattr(arr, "chunks") else step
    unit = max(step, -(-chunk_rows // step) * step)
    fit = max(step, BAND_BYTES // max(1, row_bytes) // step * step)
    return fit // unit * unit if unit <= fit else fit


def _pages(arr: Any, store_ax: str, out_ax: str) -> Iterator[tuple[tuple[Any, ...], tuple[int, ...]]]:
    """For each page of the output (index over its non-YX axes), the matching store index."""
    lead = out_ax[:-2]
    sizes = [arr.shape[store_ax.index(a)] for a in lead]
    for page in np.ndindex(*sizes):
        idx: list[Any] = [slice(None)] * len(store_ax)
        for a, i in zip(lead, page, strict=True):
            idx[store_ax.index(a)] = int(i)
        yield tuple(idx), page


def tiff_axes(axes: str, channels: int) -> str:
    """Axes of a TIFF output: :func:`file_axes`, except an RGB input (three channels last, napari's and the
    cameras' colour layout: YXC, ZYXC ...) stays channel-last, to be written as an RGB TIFF."""
    if axes.endswith("C") and channels == 3:
        return "".join(a for a in axes if a not in "YXC") + "YXC"
    return file_axes(axes)


def write_tiff_tiled(path: Path, arr: Any, store_ax: str, out_ax: str, scale: dict[str, float] | None = None,
                     *, uid: str | None = None) -> None:
    """Tiled BigTIFF streamed from ``arr`` one band of tiles at a time, read back as the input was read.

    OME-TIFF metadata name the axes and the physical pixel sizes (``scale``, also as the resolution tags),
    which Fiji (Bio-Formats), napari and tifffile read. One page per plane and channel, or, where ``out_ax``
    ends in C (:func:`tiff_axes`), RGB pages with interleaved samples, which viewers show in colour.
    Independent samples (S) have no OME axis: those files get tifffile's shaped description instead.
    """
    import tifffile

    yi, xi = store_ax.index("Y"), store_ax.index("X")
    h, w = arr.shape[yi], arr.shape[xi]
    tile = min(TIFF_TILE, -(-max(h, w) // 16) * 16)  # TIFF tiles are multiples of 16
    shape = tuple(arr.shape[store_ax.index(a)] for a in out_ax)
    rgb = out_ax.endswith("C")
    ci = store_ax.index("C") if rgb else None
    samples = (arr.shape[ci],) if ci is not None else ()
    page_ax = out_ax[:-1] if rgb else out_ax

    rows = band_rows(arr, yi, w * arr.dtype.itemsize * int(np.prod(samples)), tile)

    def tiles() -> Iterator[np.ndarray]:
        for idx, _ in _pages(arr, store_ax, page_ax):
            for y0 in range(0, h, rows):
                band_idx = list(idx)
                band_idx[yi] = slice(y0, min(y0 + rows, h))
                band = np.asarray(arr[tuple(band_idx)])  # (rows, w), or (C, rows, w) for RGB (store order)
                if rgb:
                    band = np.moveaxis(band, 0, -1)
                for y in range(0, band.shape[0], tile):
                    for x in range(0, w, tile):
                        part = band[y:y + tile, x:x + tile]
                        if part.shape[:2] == (tile, tile):
                            yield np.ascontiguousarray(part)
                            continue
                        t = np.zeros((tile, tile, *samples), dtype=arr.dtype)
                        t[:part.shape[0], :part.shape[1]] = part
                        yield t

    ome, metadata, extra = _tiff_metadata(out_ax, scale or {})
    if ome and uid:
        metadata["UUID"] = uid
    with tifffile.TiffWriter(path, bigtiff=True, ome=ome) as tw:
        tw.write(tiles(), shape=shape, dtype=arr.dtype, tile=(tile, tile), photometric="rgb" if rgb else "minisblack",
                 planarconfig="contig" if rgb else None, metadata=metadata, **extra)
    fsync_file(path, strict=False)


def _tiff_metadata(out_ax: str, scale: dict[str, float]) -> tuple[bool, dict[str, Any], dict[str, Any]]:
    """(OME or not, the metadata, the resolution tags) of a TIFF output with axes ``out_ax``."""
    tif_axes = out_ax.replace("S", "I")  # tifffile's name for a sequence of independent images
    if out_ax.endswith("C"):
        tif_axes = tif_axes[:-1] + "S"  # tifffile's name for the samples of an RGB pixel
    ome = "I" not in tif_axes
    metadata: dict[str, Any] = {"axes": tif_axes}
    if ome:
        for a in "XYZ":  # micrometres, said explicitly (io/units.py)
            if a in scale:
                metadata.update({f"PhysicalSize{a}": float(scale[a]), f"PhysicalSize{a}Unit": OME_UNIT})
    extra: dict[str, Any] = {}
    if scale.get("X", 0) > 0 and scale.get("Y", 0) > 0:  # pixels per cm, the pixel sizes being micrometres
        extra = {"resolution": (1e4 / scale["X"], 1e4 / scale["Y"]), "resolutionunit": "CENTIMETER"}
    return ome, metadata, extra


def write_npy_banded(path: Path, arr: Any, store_ax: str, out_ax: str) -> None:
    """A .npy in the output's axes order, written through a memory map one band at a time."""
    yi = store_ax.index("Y")
    h = arr.shape[yi]
    shape = tuple(arr.shape[store_ax.index(a)] for a in out_ax)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=arr.dtype, shape=shape)
    try:
        rows = band_rows(arr, yi, arr.shape[store_ax.index("X")] * arr.dtype.itemsize)
        for idx, page in _pages(arr, store_ax, out_ax):
            for y in range(0, h, rows):
                band_idx = list(idx)
                band_idx[yi] = slice(y, min(y + rows, h))
                mm[(*page, slice(y, min(y + rows, h)))] = np.asarray(arr[tuple(band_idx)])
        mm.flush()
    finally:
        del mm
    fsync_file(path, strict=False)
