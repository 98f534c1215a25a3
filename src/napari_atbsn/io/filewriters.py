"""TIFF and .npy outputs, written in place while the job runs.

The file is created empty when the job starts: an uncompressed BigTIFF (or a .npy) whose pixels lie in one
contiguous run after its header, in the output's axis order. Every unit writes its rows straight to their
offsets with ``os.pwrite`` (thread- and process-safe, no lock: units never share a row span), so finishing
the job is an fsync and a rename, not a second pass over the data. ``pwrite`` rather than a memory map: a
full disk raises an ``OSError`` the caller can report (a map would die of SIGBUS), and written pages do not
count against the process's memory.

The file lives under a hidden name (``.NAME.writing``, see :class:`~napari_atbsn.io.outputs.OutputStore`)
until every unit is done, so a half-written output never looks complete.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WriteError
from .units import OME_UNIT

#: Rows per TIFF strip. The strips are contiguous in the file, so this only sets the granularity a reader
#: fetches at: 64 rows of a 2048-wide float32 plane are 512 KiB.
STRIP_ROWS = 64


def file_axes(axes: str) -> str:
    """Axes of a TIFF/.npy output: the input's order with Y and X moved last (TIFF stores 2-D pages)."""
    return "".join(a for a in axes if a not in "YX") + "YX"


def tiff_axes(axes: str, channels: int) -> str:
    """Axes of a TIFF output: :func:`file_axes`, except an RGB input (three channels last, napari's and the
    cameras' colour layout: YXC, ZYXC ...) stays channel-last, to be written as an RGB TIFF."""
    if axes.endswith("C") and channels == 3:
        return "".join(a for a in axes if a not in "YXC") + "YXC"
    return file_axes(axes)


def create_tiff(path: Path, shape: tuple[int, ...], dtype: Any, out_ax: str, scale: dict[str, float] | None = None,
                *, uid: str | None = None) -> None:
    """An empty (sparse) uncompressed BigTIFF of ``shape`` in axes ``out_ax``, its pixels contiguous.

    OME-TIFF metadata name the axes and the physical pixel sizes (``scale``, also as the resolution tags),
    which Fiji (Bio-Formats, and ImageJ's own reader: strips, not tiles), napari and tifffile read. One page
    per plane and channel, or, where ``out_ax`` ends in C (:func:`tiff_axes`), RGB pages with interleaved
    samples, which viewers show in colour. Independent samples (S) have no OME axis: those files get
    tifffile's shaped description instead.
    """
    import tifffile

    rgb = out_ax.endswith("C")
    ome, metadata, extra = _tiff_metadata(out_ax, scale or {})
    if ome and uid:
        metadata["UUID"] = uid
    tifffile.imwrite(path, None, shape=shape, dtype=np.dtype(dtype), bigtiff=True, ome=ome,
                     photometric="rgb" if rgb else "minisblack", planarconfig="contig" if rgb else None,
                     rowsperstrip=STRIP_ROWS, metadata=metadata, **extra)


def create_npy(path: Path, shape: tuple[int, ...], dtype: Any) -> None:
    """An empty (sparse) .npy of ``shape`` and ``dtype``."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)
    del mm


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


def data_offset(path: Path, kind: str, shape: tuple[int, ...], dtype: Any) -> int:
    """Where the contiguous pixels of an output file created here start; a file that does not hold
    ``shape`` x ``dtype`` contiguously (damaged, or replaced by another program) is refused."""
    dtype = np.dtype(dtype)
    try:
        if kind == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                offset, found = series.dataoffset, (int(np.prod(series.shape)), series.dtype)
        else:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)(f)
                offset, found = f.tell(), (int(np.prod(header[0])), header[2])
        size = os.path.getsize(path)
    except Exception as e:  # any parse failure means the same thing here: not the file this job created
        raise WriteError(f"{path} is not the partial output this job created ({e}); run again with --overwrite "
                         f"to start over.") from None
    if offset is None or found != (int(np.prod(shape)), dtype) or size < offset + int(np.prod(shape)) * dtype.itemsize:
        raise WriteError(f"{path} is not the partial output this job created (its pixels are not "
                         f"{'x'.join(map(str, shape))} {dtype} in one run); run again with --overwrite to start over.")
    return int(offset)


_FADVISE = hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_DONTNEED")


def _pwrite_all(fd: int, buf: np.ndarray, offset: int) -> None:
    view = memoryview(buf).cast("B")
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class InPlaceFile:
    """The pixels of an output file created by :func:`create_tiff` / :func:`create_npy`, written in place.

    Indexed like the work store's array: ``f[idx] = data``, ``idx`` in the store's axis order ``store_ax``
    (an int per plane axis, slices over Y, X and C), ``data`` with one axis per slice. The file holds the
    same pixels in its own order ``out_ax``; each page's rows are written with one ``pwrite`` per run of
    whole rows, or one per row where the unit is narrower than the plane.
    """

    def __init__(self, path: Path, kind: str, shape: tuple[int, ...], dtype: Any, store_ax: str, out_ax: str,
                 ) -> None:
        if sorted(store_ax) != sorted(out_ax) or len(shape) != len(store_ax):
            raise ValueError(f"store axes {store_ax!r} and file axes {out_ax!r} do not match shape {shape}")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.store_ax, self.out_ax = store_ax, out_ax
        self.out_shape = tuple(shape[store_ax.index(a)] for a in out_ax)
        self.offset = data_offset(path, kind, self.out_shape, self.dtype)
        self.tail = 3 if out_ax.endswith("C") else 2  # Y, X (and the interleaved samples of an RGB page)
        self.row_bytes = int(np.prod(self.out_shape[-self.tail + 1:])) * self.dtype.itemsize
        self.page_bytes = self.out_shape[-self.tail] * self.row_bytes
        self.fd = os.open(path, os.O_WRONLY)
        self._close = weakref.finalize(self, os.close, self.fd)

    def close(self) -> None:
        self._close()

    def __setitem__(self, idx: tuple[Any, ...], data: np.ndarray) -> None:
        starts, full = [], np.asarray(data)
        for i, (a, sel) in enumerate(zip(self.store_ax, idx, strict=True)):
            if isinstance(sel, slice):
                start, _stop, step = sel.indices(self.shape[i])
                if step != 1:
                    raise ValueError("in-place outputs take contiguous slices only")
                starts.append(start)
            else:
                starts.append(int(sel))
                full = np.expand_dims(full, i)
            if a in "YX" and starts[-1] + full.shape[i] > self.shape[i]:
                raise ValueError(f"unit of {full.shape} at {starts} leaves the output {self.shape}")
        order = [self.store_ax.index(a) for a in self.out_ax]
        block = np.transpose(full, order)
        start = [starts[i] for i in order]
        lead = len(self.out_ax) - self.tail
        if self.tail == 3 and block.shape[-1] != self.out_shape[-1]:
            raise ValueError("a unit of an RGB output holds all its samples")
        lead_shape = self.out_shape[:lead]
        y0, x0 = start[lead], start[lead + 1]
        h, w = block.shape[lead], block.shape[lead + 1]
        x_bytes = x0 * self.row_bytes // self.out_shape[lead + 1]
        for local in np.ndindex(*block.shape[:lead]):
            page = int(np.ravel_multi_index(tuple(s + j for s, j in zip(start[:lead], local, strict=True)),
                                            lead_shape)) if lead else 0
            base = self.offset + page * self.page_bytes + y0 * self.row_bytes
            rows = np.ascontiguousarray(block[local], dtype=self.dtype)
            if w == self.out_shape[lead + 1]:
                _pwrite_all(self.fd, rows, base)
            else:
                for r in range(h):
                    _pwrite_all(self.fd, rows[r], base + r * self.row_bytes + x_bytes)
            if _FADVISE:
                # start writing these rows to the disk now, without waiting (Linux: DONTNEED begins the
                # writeback of dirty pages): the fsync that finishes the job then has little left to wait for,
                # and a 20 GB output does not crowd the page cache out
                os.posix_fadvise(self.fd, base, h * self.row_bytes, os.POSIX_FADV_DONTNEED)
