"""Lazy TIFF, .npy and NIfTI files: picklable file-backed arrays and the openers that read their metadata.

The dask graphs are shipped to worker processes (multiprocessing and
distributed schedulers, maybe on other machines sharing a filesystem). An open
file handle, memory map or tifffile store cannot travel there, so these files
are read through :class:`_FileArray`: a small picklable array-like that keeps
the absolute path and opens the file on its first read in each process.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageError, ReadError
from .chunking import SCALE_LETTERS, Opened, contiguous_dims, grow_chunks, lazy_array
from .files import map_tiff_axes
from .units import to_micrometres

__all__ = ["open_nifti", "open_npy", "open_tiff", "tiff_series_count"]


# --------------------------------------------------------------------------- picklable file arrays


class _FileArray:
    """Picklable array-like over a file, opened on the first read in each process.

    The open object (memory map, tifffile store, nibabel proxy) is cached on the
    instance and left out of pickles; workers reopen the file by absolute path.
    Results are cast to ``dtype`` so every chunk has the declared type (e.g.
    native byte order for big-endian TIFFs).
    """

    def __init__(self, path: Path, shape: Sequence[int], dtype: Any, **params: Any) -> None:
        self.path = os.path.abspath(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.params = params
        self._stamp = _stamp(self.path)
        self._handle: Any = None
        self._lock = threading.Lock()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        handle = self._handle
        if handle is None:
            with self._lock:  # dask threads share this instance: open once
                if self._handle is None:
                    self._handle = self._open_checked()
                handle = self._handle
        out = np.asarray(handle[key], dtype=self.dtype)
        self._check_unchanged()
        # A read-only slice would fail any in-place step downstream: copy it.
        if not out.flags.writeable:
            out = out.copy()
        return out

    def _open_checked(self) -> Any:
        try:
            stamp = _stamp(self.path)
        except OSError:
            raise ReadError(f"{self.path} is gone or unreadable from this process; "
                            f"make it reachable at the same path on every worker.") from None
        if stamp != self._stamp:
            raise ReadError(f"{self.path} changed after it was opened; open it again.")
        return self._open()

    def _check_unchanged(self) -> None:
        """After each read: a file rewritten in place (or replaced) since it was opened would give a mix of
        old and new pixels, so the job stops instead. One stat per read."""
        try:
            same = _stamp(self.path) == self._stamp
        except OSError:
            same = False
        if not same:
            raise ReadError(f"{self.path} changed while it was being read (its size or time differs from when it "
                            f"was opened), so old and new pixels would be mixed; nothing read after the "
                            f"change was kept. Put the original file back and run again to resume, or run again "
                            f"with --overwrite to start over on the new file.")

    def _open(self) -> Any:  # pragma: no cover - subclasses say how
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __dask_tokenize__(self) -> tuple:
        # The file's size and mtime are part of the name, so a rewritten file never reuses cached results.
        return type(self).__name__, self.path, sorted(self.params.items()), self._stamp, self.shape, str(self.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, shape={self.shape}, dtype={self.dtype})"


def _stamp(path: str) -> tuple[int, int]:
    # Size and time, not the inode: workers on other machines see the same file through network file systems
    # that may number inodes per client.
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


class _TransientMap:
    """Reads through a memory map made for each read and dropped after it.

    A long-lived map of a big file would keep every page read so far in the
    process's resident set (RSS), so a 4 GB volume read once would look like a
    4 GB process; mapping per read keeps RSS at the size of the chunks in flight.
    """

    def __init__(self, open_map: Any) -> None:
        self.open_map = open_map

    def __getitem__(self, key: Any) -> np.ndarray:
        mm = self.open_map()
        try:
            return np.array(mm[key])
        finally:
            del mm  # the last reference: numpy unmaps the file here


class _TiffArray(_FileArray):
    """One series/level of a TIFF: a memory map when contiguous and uncompressed, else tifffile's zarr store."""

    def _open(self) -> Any:
        if self.params["offset"] is not None:
            # What tifffile.memmap does, minus parsing every IFD of the file again in each worker.
            return _TransientMap(lambda: np.memmap(self.path, dtype=self.params["file_dtype"], mode="r",
                                                   offset=self.params["offset"], shape=self.shape))
        import tifffile
        import zarr

        store = tifffile.imread(self.path, aszarr=True, series=self.params["series"], level=self.params["level"])
        return zarr.open(store, mode="r")


class _NpyArray(_FileArray):
    def _open(self) -> Any:
        return _TransientMap(lambda: np.load(self.path, mmap_mode="r", allow_pickle=False))


class _NiftiArray(_FileArray):
    def _open(self) -> Any:
        import nibabel

        # keep_file_open: a .nii.gz read in order then continues the gzip stream instead of restarting it.
        return nibabel.load(self.path, keep_file_open=True).dataobj


# --------------------------------------------------------------------------- TIFF


class _Collect(logging.Handler):
    """Keeps what tifffile logs while a file is opened: its warnings are how it reports a damaged file."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def open_tiff(p: Path, series: int, level: int) -> Opened:
    """One series and pyramid level of a TIFF (plain, BigTIFF, OME, ImageJ); a truncated file is refused."""
    import tifffile

    log = logging.getLogger("tifffile")
    seen = _Collect()
    log.addHandler(seen)
    try:
        with tifffile.TiffFile(p) as tf:
            s = _tiff_series(tf, p, series)
            if not 0 <= level < len(s.levels):
                raise ReadError(f"{p} series {series} has {len(s.levels)} level(s); use level 0 to "
                                f"{len(s.levels) - 1}.")
            lv = s.levels[level]
            _check_codec(lv.keyframe, p)
            shape, dtype, raw_axes = tuple(lv.shape), np.dtype(lv.dtype), lv.axes
            # dataoffset is set only for contiguous, uncompressed data, which a memory map reads fastest
            # (and in any row band, so the base unit is one row, not one strip).
            offset = lv.dataoffset
            _check_tiff_complete(lv, p, offset, seen.messages)
            file_dtype = np.dtype(tf.byteorder + dtype.char).str
            base = (1,) * len(shape) if offset is not None else _tiff_store_chunks(tf, series, level)
            if offset is None:
                _check_decode_unit(base, dtype, p)
            fmt = {"ome": "ome-tiff", "imagej": "imagej-tiff"}.get(s.kind, "tiff")
            scale = _tiff_scale(tf, s, lv, series, fmt)
    except ReadError:
        raise
    except Exception as e:  # tifffile raises many types for broken files
        raise ReadError(f"{p} could not be read as a TIFF ({type(e).__name__}: {e}); is the file complete?") from None
    finally:
        log.removeHandler(seen)
    # Whole strips or tiles per chunk, then whole pages, then several small pages: thousands of
    # 64 KB pages as one task each would spend more time scheduling than reading.
    chunks = grow_chunks(shape, base, dtype.itemsize, range(len(shape) - 1, -1, -1))
    arr = _TiffArray(p, shape, dtype, series=series, level=level, offset=offset, file_dtype=file_dtype)
    return lazy_array(arr, chunks), map_tiff_axes(raw_axes), fmt, scale


def _check_codec(page: Any, p: Path) -> None:
    """Refuse, when opened, a TIFF whose compression this installation cannot decode (LZW, JPEG, WebP ... need
    the imagecodecs package), instead of failing deep inside a job."""
    from tifffile import TIFF

    compression = page.compression
    try:
        TIFF.DECOMPRESSORS[compression]
    except KeyError:
        name = getattr(compression, "name", str(compression))
        raise ReadError(f"{p} is compressed with {name}, which needs the imagecodecs package to decode; install it "
                        f"(pip install imagecodecs) or save the file uncompressed or with zlib/deflate.") from None


def tiff_series_count(p: Path) -> int:
    """How many image series a TIFF holds (metadata only); 0 if it cannot be read (opening says why)."""
    import tifffile

    try:
        with tifffile.TiffFile(p) as tf:
            return len(tf.series)
    except Exception:  # tifffile raises many types; open_tiff reports them properly
        return 0


def _check_tiff_complete(lv: Any, p: Path, offset: int | None, warnings: list[str]) -> None:
    """Refuse a TIFF cut short (an interrupted copy or download) before any pixel is read.

    The header and the first IFD sit at the start, so tifffile opens such a file: it drops the IFDs past
    the cut (logging why) and falls back to the pages it found, or keeps the shape and fails (or reads
    zeros) deep inside a job. Both are caught here: tifffile's own complaints, and pixel data that
    should end past the end of its file (each page measured against its own file: multi-file OME-TIFF).
    """
    broken = [w for w in warnings if any(s in w for s in ("invalid page offset", "failed to reshape",
                                                           "truncated", "corrupted"))]
    if broken:
        raise ReadError(f"{p} is truncated or damaged (tifffile: {broken[0]}); the copy or download was probably "
                        f"interrupted; copy it again.")
    checks: list[tuple[int, int, str]] = []
    if offset is not None:
        checks.append((offset + lv.nbytes, os.path.getsize(p), str(p)))
    else:
        n = len(lv)
        for pg in {id(x): x for x in (lv[0], lv[n - 1]) if x is not None}.values() if n else ():
            fh = pg.parent.filehandle
            end = max((int(o) + int(c) for o, c in zip(pg.dataoffsets, pg.databytecounts, strict=False)), default=0)
            checks.append((end, int(fh.size), str(fh.path or p)))
    for end, size, name in checks:
        if end > size:
            raise ReadError(f"{name} is truncated: its pixel data should end at byte {end:,} but the file has only "
                            f"{size:,} bytes. The copy or download was probably interrupted; copy it again.")


def _tiff_series(tf: Any, p: Path, series: int) -> Any:
    n = len(tf.series)
    if n == 0:
        raise ReadError(f"{p} contains no image data; is the file complete?")
    if not 0 <= series < n:
        raise ReadError(f"{p} has {n} image series; use series 0 to {n - 1}.")
    return tf.series[series]


#: The most one compressed strip or tile may decode to. Reading any pixel of it decodes all of it (no codec
#: decodes part of a strip), so a 64x64 region of a 30000² single-strip page would cost gigabytes.
MAX_DECODE_UNIT = 1 << 30


def _check_decode_unit(unit: tuple[int, ...], dtype: np.dtype, p: Path) -> None:
    size = int(np.prod(unit, dtype=np.int64)) * dtype.itemsize
    if size > MAX_DECODE_UNIT:
        dims = "x".join(str(int(n)) for n in unit)
        raise ReadError(f"{p} stores its pixels in compressed blocks of {dims} ({size / 2**30:.1f} GiB each once "
                        f"decoded), and reading any pixel decodes a whole block; save it tiled (e.g. "
                        f"tifffile.imwrite(path, data, tile=(256, 256), compression='zlib')) or uncompressed.")


def _tiff_store_chunks(tf: Any, series: int, level: int) -> tuple[int, ...]:
    """The chunk tifffile's zarr store decodes at once: one strip or tile (metadata only, no pixels)."""
    import zarr

    store = tf.aszarr(series=series, level=level)
    try:
        return tuple(zarr.open(store, mode="r").chunks)
    finally:
        store.close()


def _tiff_scale(tf: Any, s: Any, lv: Any, series: int, fmt: str) -> dict[str, float]:
    """Pixel sizes from OME PhysicalSize* or ImageJ spacing/resolution, scaled to the pyramid level."""
    try:
        if fmt == "ome-tiff":
            scale = _ome_tiff_scale(tf.ome_metadata, series)
        elif fmt == "imagej-tiff":
            scale = _imagej_scale(tf.imagej_metadata or {}, s.keyframe)
        else:
            return {}
    except Exception:  # sizes are a convenience; odd metadata must not stop the image from opening
        return {}
    return _level_scale(scale, s.axes, s.shape, lv.axes, lv.shape)


def _ome_tiff_scale(xml: str | None, series: int) -> dict[str, float]:
    import xml.etree.ElementTree as ET

    if not xml:
        return {}
    root = ET.fromstring(xml)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    images = root.findall(f"{ns}Image")
    if series >= len(images):
        return {}
    pixels = images[series].find(f"{ns}Pixels")
    if pixels is None:
        return {}
    out = {}
    for a in SCALE_LETTERS:
        v = pixels.get(f"PhysicalSize{a}")
        um = to_micrometres(float(v), pixels.get(f"PhysicalSize{a}Unit")) if v is not None else None
        if um is not None and um > 0:
            out[a] = um
    return out


def _imagej_scale(meta: dict[str, Any], page: Any) -> dict[str, float]:
    """ImageJ's pixels per unit and slice spacing, in micrometres. ImageJ calls an uncalibrated image's unit
    ``pixel``: no sizes then; (1, 1) without a unit is uncalibrated too; another unit without one is taken as
    micrometres (what microscopes write)."""
    unit = meta.get("unit")
    out: dict[str, float] = {}
    xres, yres = page.resolution
    if xres > 0 and yres > 0 and (unit is not None or (xres, yres) != (1, 1)):
        x, y = to_micrometres(1.0 / xres, unit), to_micrometres(1.0 / yres, unit)
        if x is not None and y is not None:
            out["X"], out["Y"] = x, y
    if float(meta.get("spacing", 0) or 0) > 0:
        z = to_micrometres(float(meta["spacing"]), unit)
        if z is not None:
            out["Z"] = z
    return out


def _level_scale(scale: dict[str, float], axes0: str, shape0: Sequence[int], axes: str,
                 shape: Sequence[int]) -> dict[str, float]:
    """A downsampled pyramid level has proportionally larger pixels."""
    out = dict(scale)
    for a in scale:
        if a in axes0 and a in axes and shape[axes.index(a)]:
            out[a] = scale[a] * (shape0[axes0.index(a)] / shape[axes.index(a)])
    return out


# --------------------------------------------------------------------------- NIfTI and .npy


def open_nifti(p: Path) -> Opened:
    """A NIfTI volume (.nii, .nii.gz; needs nibabel): axes XY[Z[T[C]]] and voxel sizes from its header."""
    try:
        import nibabel
    except ImportError:
        raise ReadError(f'{p}: reading NIfTI needs nibabel; install it with pip install "napari-atbsn[nifti]".') \
            from None
    try:
        img = nibabel.load(p)  # header only; pixels stay on disk behind img.dataobj
        shape, raw = tuple(img.shape), np.dtype(img.get_data_dtype())
        slope, inter = img.dataobj.slope, img.dataobj.inter
        zooms = img.header.get_zooms()
    except Exception as e:  # nibabel raises several types for broken or foreign files
        raise ReadError(f"{p} could not be read as NIfTI ({type(e).__name__}: {e}); is the file complete?") from None
    # nibabel applies scl_slope/scl_inter on read, turning stored integers into floats.
    dtype = raw if (slope, inter) == (1, 0) or raw.kind not in "uif" else np.result_type(raw, np.float32)
    # NIfTI stores x fastest, so whole z-slices (x, y) are contiguous; several small slices share
    # a chunk, which also spares a .nii.gz most of its restarts from the beginning of the stream.
    chunks = grow_chunks(shape, (1,) * len(shape), dtype.itemsize, range(len(shape)))
    axes = {2: "XY", 3: "XYZ", 4: "XYZT", 5: "XYZTC"}.get(len(shape))
    # Zooms are float32 in the header: go through float32's shortest repr so 0.6 stays 0.6.
    scale = {a: float(str(np.float32(z))) for a, z in zip("XYZ", zooms) if z > 0}
    return lazy_array(_NiftiArray(p, shape, dtype), chunks), axes, "nifti", scale


def open_npy(p: Path) -> Opened:
    """A .npy array, memory-mapped for each read; arrays of Python objects are refused, never unpickled."""
    try:
        mm = np.load(p, mmap_mode="r", allow_pickle=False)  # maps the file; reads only the header
    except (ValueError, OSError) as e:
        if "Python objects" in str(e) or "allow_pickle" in str(e):
            # Object arrays are stored pickled: never loaded (it could run code), and not pixels anyway.
            raise ImageError(f"{p} holds Python objects (dtype object), not pixels; save a numeric array "
                             f"(integer or float) instead. Object arrays are never loaded: that would unpickle "
                             f"them.") from None
        raise ReadError(f"{p} is not a .npy array file that can be memory-mapped ({e}).") from None
    shape, dtype, dims = mm.shape, mm.dtype, contiguous_dims(mm)
    del mm
    chunks = grow_chunks(shape, (1,) * len(shape), dtype.itemsize, dims)
    return lazy_array(_NpyArray(p, shape, dtype), chunks), None, "npy", {}
