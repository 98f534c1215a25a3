"""Lazy, out-of-core opening of images as dask arrays with axes.

:func:`open_image` reads only metadata; pixels are read when the dask array
is computed, chunk by chunk, so 100 GB stacks can be denoised piece by piece.

The dask graphs are shipped to worker processes (multiprocessing and
distributed schedulers, maybe on other machines sharing a filesystem). An open
file handle, memory map or tifffile store cannot travel there, so file-backed
arrays go through :class:`_FileArray`: a small picklable array-like that keeps
the absolute path and opens the file on its first read in each process.

Chunks are made of the file's own units (whole TIFF strips or tiles, whole
zarr chunks or shards, whole rows of .npy/NIfTI data), grown in storage order
(tile rows, pages, then several pages) up to about :data:`CHUNK_BYTES`, so a
100 GB file is thousands of tasks, not millions. Slicing the dask array
before computing reads only the slice: dask passes the slice to the reader.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..axes import guess_axes, reorder_for, validate_axes
from ..errors import AxesError, ConfigError, ImageError, ReadError
from .files import _TIFF_AXES, PIL_SUFFIXES, TIFF_SUFFIXES, _read_pil, check_image

__all__ = ["CHUNK_BYTES", "LAZY_TIFF_SUFFIXES", "NIFTI_SUFFIXES", "LazyImage", "open_image", "parse_roi"]

# Upper bound for one chunk when the file's own unit (strip, tile, zarr chunk) is smaller:
# big enough that a 100 GB stack is a few thousand tasks, small enough for many in memory.
CHUNK_BYTES = 64 * 2**20

LAZY_TIFF_SUFFIXES = (*TIFF_SUFFIXES, ".btf", ".tf8", ".tf2")  # BigTIFF files often use the last three
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
_SUPPORTED = "TIFF (.tif, .tiff, .btf, .tf8), Zarr/OME-Zarr (.zarr folder), NIfTI (.nii, .nii.gz), .npy, .png or .jpg"

# OME-NGFF axis names -> our letters; any other axis becomes S (independent samples).
_NGFF_AXES = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}
# Only spatial sizes are reported as scale: time steps and channels have no pixel size.
_SCALE_LETTERS = "ZYX"

# What each opener returns: lazy data, axes from metadata (or the error they caused), format, scale.
_Opened = tuple[da.Array, "str | AxesError | None", str, dict[str, float]]


@dataclass(frozen=True, eq=False)  # eq=False: comparing dask arrays elementwise would read both images
class LazyImage:
    """A lazily read image: a dask array, our axes letters and where it came from."""

    data: da.Array
    axes: str
    source: str
    format: str
    scale: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", validate_axes(self.axes, self.data.ndim))
        # Keep only sizes of axes this image has, so with_axes/crop never carry stale letters.
        object.__setattr__(self, "scale", {a: float(v) for a, v in self.scale.items() if a in self.axes})

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def crop(self, roi: dict[str, slice | int]) -> LazyImage:
        """Lazily cut out ``roi`` ({axis letter: slice}); nothing is read."""
        index = [slice(None)] * self.ndim
        for letter, sel in roi.items():
            a = str(letter).upper()
            if a not in self.axes:
                raise AxesError(f"crop names axis {a} but the image axes are {self.axes!r}; "
                                f"use only these letters.")
            i = self.axes.index(a)
            index[i] = _check_crop(a, sel, self.shape[i])
        return replace(self, data=self.data[tuple(index)])

    def with_axes(self, axes: str) -> LazyImage:
        """The same data with ``axes`` given explicitly (checked against the number of dimensions)."""
        try:
            axes = validate_axes(axes, self.ndim)
        except AxesError as e:
            raise AxesError(f"{self.source} has shape {self.shape}: {e}") from None
        return replace(self, axes=axes)


def _check_crop(a: str, sel: slice | int, n: int) -> slice:
    """Refuse crops the pipeline cannot honour; return a slice with explicit bounds."""
    if isinstance(sel, (int, np.integer)) and not isinstance(sel, bool):
        sel = slice(int(sel), int(sel) + 1)
    if not isinstance(sel, slice):
        raise ConfigError(f"crop {a}={sel!r} is not a slice; give a range such as slice(10, 20).")
    if sel.step not in (None, 1):
        raise ImageError(f"crop {a} has step {sel.step}; only contiguous crops (step 1) are supported.")
    start = 0 if sel.start is None else sel.start
    stop = n if sel.stop is None else sel.stop
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (start, stop)):
        raise ConfigError(f"crop {a}={sel.start}:{sel.stop} needs whole-number bounds; use e.g. {a}=0:{n}.")
    if not 0 <= start < stop <= n:
        raise ConfigError(f"crop {a}={start}:{stop} is empty or outside the image; {a} has {n} pixels, "
                          f"so give start < stop within 0:{n}.")
    if a == "C" and (start, stop) != (0, n):
        raise AxesError(f"crop {a}={start}:{stop} refused: the model needs all {n} channels; remove C from the crop.")
    return slice(int(start), int(stop))


_ROI_ITEM = re.compile(r"\s*([A-Za-z])\s*=\s*(\d*)\s*(?:(:)\s*(\d*)\s*)?")
_ROI_FORM = "write it as axis=start:stop pairs separated by commas, e.g. 'Z=10:20,Y=0:512'"


def parse_roi(text: str, axes: str) -> dict[str, slice]:
    """``"Z=10:20,Y=0:512,X=100:"`` -> ``{"Z": slice(10, 20), ...}``; ``Z=5`` means ``slice(5, 6)``.

    Only syntax and letters are checked here; :meth:`LazyImage.crop` checks the bounds.
    """
    roi: dict[str, slice] = {}
    if not text.strip():
        return roi
    for item in text.split(","):
        m = _ROI_ITEM.fullmatch(item)
        if m is None:
            raise ConfigError(f"cannot read the region {text!r} at {item.strip()!r}; {_ROI_FORM} "
                              f"(start or stop may be left out, steps and negative numbers are not allowed).")
        letter, start, colon, stop = m.group(1).upper(), m.group(2), m.group(3), m.group(4)
        if letter not in axes.upper():
            raise AxesError(f"the region names axis {letter} but the image axes are {axes!r}; use only these letters.")
        if letter in roi:
            raise ConfigError(f"the region {text!r} names {letter} twice; {_ROI_FORM}.")
        if colon is None:
            if not start:
                raise ConfigError(f"the region {text!r} gives no index for {letter}; {_ROI_FORM}.")
            roi[letter] = slice(int(start), int(start) + 1)
        else:
            roi[letter] = slice(int(start) if start else None, int(stop) if stop else None)
    return roi


def open_image(source: Any, axes: str | None = None, *, series: int = 0, level: int = 0) -> LazyImage:
    """Open a file or array lazily; no pixel is read here.

    ``source``: a path (TIFF, Zarr/OME-Zarr folder, NIfTI, .npy, PNG/JPEG),
    a numpy, dask or zarr array, or a :class:`LazyImage`. Axes come from
    ``axes`` if given, else the file's metadata, else
    :func:`napari_atbsn.axes.guess_axes`. ``series`` picks a TIFF series (or
    OME-Zarr image), ``level`` a pyramid level (0 = full resolution).
    """
    if isinstance(source, LazyImage):
        _single_image(source.source, series, level)
        return source if axes is None else source.with_axes(axes)
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        opened = _open_path(Path(name), series, level)
    else:
        name, opened = _open_object(source, series, level)
    data, file_axes, fmt, scale = opened
    return _make(data, axes, file_axes, name, fmt, scale)


def _make(data: da.Array, axes: str | None, file_axes: str | AxesError | None, name: str, fmt: str,
          scale: dict[str, float]) -> LazyImage:
    """Check dtype and dimensions, then settle the axes: explicit, else metadata, else a guess.

    ``file_axes`` may be the error that unusable axes metadata caused: it only matters
    when no explicit ``axes`` replaces the metadata.
    """
    check_image(data, name)
    if axes is None and isinstance(file_axes, AxesError):
        raise file_axes
    try:
        if axes is None:
            axes = file_axes or guess_axes(data.shape)
        axes = validate_axes(axes, data.ndim)
    except AxesError as e:
        raise AxesError(f"{name} has shape {tuple(data.shape)}: {e}") from None
    order = reorder_for(file_axes if isinstance(file_axes, str) else None, axes)
    if order is not None:
        data = data.transpose(order)
    return LazyImage(data, axes, name, fmt, scale)


def _single_image(name: str, series: int, level: int) -> None:
    """Formats with one image and no pyramid: a non-zero series/level is a mistake, not something to ignore."""
    if series != 0 or level != 0:
        raise ReadError(f"{name} holds a single image without pyramid levels; use series=0 and level=0.")


def _open_object(obj: Any, series: int, level: int) -> tuple[str, _Opened]:
    """In-memory data: the name to show in messages and what the openers return."""
    import zarr

    if isinstance(obj, da.Array):
        _single_image("<dask>", series, level)
        return "<dask>", (obj, None, "dask", {})
    if isinstance(obj, np.ndarray):
        _single_image("<numpy>", series, level)
        chunks = _grow_chunks(obj.shape, (1,) * obj.ndim, obj.dtype.itemsize, _contiguous_dims(obj))
        return "<numpy>", (_from_array(obj, chunks), None, "numpy", {})
    if isinstance(obj, (zarr.Array, zarr.Group)):
        return "<zarr>", _open_zarr_node(obj, "<zarr>", series, level)
    raise ReadError(f"cannot open a {type(obj).__name__}; give a file path or a numpy, dask or zarr array.")


def _open_path(p: Path, series: int, level: int) -> _Opened:
    if not p.exists():
        raise ReadError(f"{p}: no such file or folder; check the path.")
    name = p.name.lower()
    if p.is_dir():
        if name.endswith(".zarr") or any((p / m).exists() for m in _ZARR_MARKERS):
            return _open_zarr_path(p, series, level)
        raise ReadError(f"{p} is a folder but not a Zarr store (no zarr.json, .zarray or .zgroup); "
                        f"give an image file or a .zarr folder.")
    if name.endswith(LAZY_TIFF_SUFFIXES):
        return _open_tiff(p, series, level)
    if name.endswith(NIFTI_SUFFIXES):
        _single_image(str(p), series, level)
        return _open_nifti(p)
    if name.endswith(".npy"):
        _single_image(str(p), series, level)
        return _open_npy(p)
    if name.endswith(PIL_SUFFIXES):
        _single_image(str(p), series, level)
        # PNG/JPEG cannot be read in parts and are small (at most a few hundred MB), so reading
        # them here is cheap and keeps a numpy array in the graph, which pickles fine.
        data = _read_pil(p)
        return _from_array(data, data.shape), None, "png", {}
    raise ReadError(f"{p}: unsupported file type {p.suffix!r}; use {_SUPPORTED}.")


# --------------------------------------------------------------------------- chunks


def _grow_chunks(shape: Sequence[int], base: Sequence[int], itemsize: int, dims: Sequence[int]) -> tuple[int, ...]:
    """Enlarge ``base`` along ``dims`` (fastest-varying first) by whole multiples while under CHUNK_BYTES.

    Whole multiples keep every dask chunk made of whole file chunks, so no file chunk is decoded twice.
    Growth stops at the first dimension not taken whole, so chunks stay contiguous blocks.
    """
    chunks = [max(1, min(int(b), int(s))) for b, s in zip(base, shape)]
    for d in dims:
        others = itemsize * math.prod(c for i, c in enumerate(chunks) if i != d)
        k = max(1, CHUNK_BYTES // max(1, others) // chunks[d])
        chunks[d] = max(1, min(int(shape[d]), k * chunks[d]))
        if chunks[d] < shape[d]:
            break
    return tuple(chunks)


def _contiguous_dims(arr: Any) -> list[int]:
    """Dimensions from the fastest-varying in memory to the slowest."""
    dims = list(range(arr.ndim))
    fortran = getattr(arr, "flags", None) is not None and arr.flags.f_contiguous and not arr.flags.c_contiguous
    return dims if fortran else dims[::-1]


def _from_array(x: Any, chunks: Sequence[int]) -> da.Array:
    # meta stops dask from indexing x to learn the chunk type, which would read pixels at open time.
    return da.from_array(x, chunks=tuple(chunks), meta=np.empty((0,) * len(x.shape), dtype=x.dtype))


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


def _open_tiff(p: Path, series: int, level: int) -> _Opened:
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
            shape, dtype, raw_axes = tuple(lv.shape), np.dtype(lv.dtype), lv.axes
            # dataoffset is set only for contiguous, uncompressed data, which a memory map reads fastest
            # (and in any row band, so the base unit is one row, not one strip).
            offset = lv.dataoffset
            _check_tiff_complete(lv, p, offset, seen.messages)
            file_dtype = np.dtype(tf.byteorder + dtype.char).str
            base = (1,) * len(shape) if offset is not None else _tiff_store_chunks(tf, series, level)
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
    chunks = _grow_chunks(shape, base, dtype.itemsize, range(len(shape) - 1, -1, -1))
    arr = _TiffArray(p, shape, dtype, series=series, level=level, offset=offset, file_dtype=file_dtype)
    return _from_array(arr, chunks), _map_tiff_axes(raw_axes), fmt, scale


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


def _tiff_store_chunks(tf: Any, series: int, level: int) -> tuple[int, ...]:
    """The chunk tifffile's zarr store decodes at once: one strip or tile (metadata only, no pixels)."""
    import zarr

    store = tf.aszarr(series=series, level=level)
    try:
        return tuple(zarr.open(store, mode="r").chunks)
    finally:
        store.close()


def _map_tiff_axes(raw_axes: str) -> str | None:
    mapped = "".join(_TIFF_AXES.get(a, "?") for a in raw_axes)
    # Unknown letters or two letters that map to the same one: let the caller guess.
    if "?" in mapped or len(set(mapped)) != len(mapped):
        return None
    return mapped


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
    for a in _SCALE_LETTERS:
        v = pixels.get(f"PhysicalSize{a}")
        if v is not None and float(v) > 0:
            out[a] = float(v)
    return out


def _imagej_scale(meta: dict[str, Any], page: Any) -> dict[str, float]:
    out = {}
    xres, yres = page.resolution
    # ImageJ stores pixels per unit; (1, 1) without a unit means "not calibrated".
    if xres > 0 and yres > 0 and ("unit" in meta or (xres, yres) != (1, 1)):
        out["X"], out["Y"] = 1.0 / xres, 1.0 / yres
    if float(meta.get("spacing", 0) or 0) > 0:
        out["Z"] = float(meta["spacing"])
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


def _open_nifti(p: Path) -> _Opened:
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
    chunks = _grow_chunks(shape, (1,) * len(shape), dtype.itemsize, range(len(shape)))
    axes = {2: "XY", 3: "XYZ", 4: "XYZT", 5: "XYZTC"}.get(len(shape))
    # Zooms are float32 in the header: go through float32's shortest repr so 0.6 stays 0.6.
    scale = {a: float(str(np.float32(z))) for a, z in zip("XYZ", zooms) if z > 0}
    return _from_array(_NiftiArray(p, shape, dtype), chunks), axes, "nifti", scale


def _open_npy(p: Path) -> _Opened:
    try:
        mm = np.load(p, mmap_mode="r", allow_pickle=False)  # maps the file; reads only the header
    except (ValueError, OSError) as e:
        if "Python objects" in str(e) or "allow_pickle" in str(e):
            # Object arrays are stored pickled: never loaded (it could run code), and not pixels anyway.
            raise ImageError(f"{p} holds Python objects (dtype object), not pixels; save a numeric array "
                             f"(integer or float) instead. Object arrays are never loaded: that would unpickle "
                             f"them.") from None
        raise ReadError(f"{p} is not a .npy array file that can be memory-mapped ({e}).") from None
    shape, dtype, dims = mm.shape, mm.dtype, _contiguous_dims(mm)
    del mm
    chunks = _grow_chunks(shape, (1,) * len(shape), dtype.itemsize, dims)
    return _from_array(_NpyArray(p, shape, dtype), chunks), None, "npy", {}


# --------------------------------------------------------------------------- Zarr / OME-Zarr


def _open_zarr_path(p: Path, series: int, level: int) -> _Opened:
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as e:  # zarr raises several types for missing or broken metadata
        raise ReadError(f"{p} could not be opened as Zarr ({type(e).__name__}: {e}); "
                        f"check that it is a Zarr v2 or v3 array or group.") from None
    return _open_zarr_node(node, str(p), series, level)


def _open_zarr_node(node: Any, name: str, series: int, level: int) -> _Opened:
    import zarr

    if isinstance(node, zarr.Array):
        _single_image(name, series, level)
        return _zarr_dask(node), _plain_zarr_axes(node), "zarr", {}
    attrs = node.attrs.asdict()
    if "bioformats2raw.layout" in attrs:  # one OME-Zarr image per series, in groups "0", "1", ...
        images = sorted(k for k in node.group_keys() if k.isdigit())
        if str(series) not in images:
            raise ReadError(f"{name} has {len(images)} image series; use series 0 to {len(images) - 1}.")
        return _open_zarr_node(node[str(series)], f"{name}/{series}", 0, level)
    multiscales = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if multiscales:
        return _open_ngff(node, multiscales, name, series, level)
    arrays = sorted(node.array_keys())
    if len(arrays) != 1:
        listed = ", ".join(arrays[:10]) or "none"
        raise ReadError(f"{name} is a Zarr group with {len(arrays)} arrays ({listed}) and no OME multiscales; "
                        f"give the path of one array, e.g. {name}/{arrays[0] if arrays else 'NAME'}.")
    return _open_zarr_node(node[arrays[0]], f"{name}/{arrays[0]}", series, level)


def _zarr_dask(z: Any) -> da.Array:
    # Whole shards (zarr v3 sharding) or chunks per task: reading part of one would decode it twice.
    base = getattr(z, "shards", None) or z.chunks
    chunks = _grow_chunks(z.shape, base, z.dtype.itemsize, range(z.ndim - 1, -1, -1))
    return _from_array(z, chunks)


def _plain_zarr_axes(z: Any) -> str | None:
    """Our letters from an ``axes`` attribute, else from zarr v3 dimension names that are our letters."""
    axes = z.attrs.get("axes")
    if isinstance(axes, list) and all(isinstance(a, str) and len(a) == 1 for a in axes):
        axes = "".join(axes)
    if isinstance(axes, str):
        return axes.upper()
    names = getattr(z.metadata, "dimension_names", None)
    if names and all(isinstance(n, str) and len(n) == 1 and n.upper() in "TZSCYX" for n in names):
        return "".join(n.upper() for n in names)
    return None


def _open_ngff(group: Any, multiscales: list[dict[str, Any]], name: str, series: int,
               level: int) -> _Opened:
    """OME-NGFF 0.4 (``multiscales`` attribute) or 0.5 (``ome.multiscales``): one level of one image."""
    if not 0 <= series < len(multiscales):
        raise ReadError(f"{name} has {len(multiscales)} multiscale image(s); use series 0 to "
                        f"{len(multiscales) - 1}.")
    ms = multiscales[series]
    datasets = ms.get("datasets") or []
    if not 0 <= level < len(datasets):
        raise ReadError(f"{name} has {len(datasets)} resolution level(s); use level 0 to {len(datasets) - 1}.")
    import zarr

    path = datasets[level].get("path") if isinstance(datasets[level], dict) else None
    try:
        z = group[path]
    except (KeyError, TypeError, FileNotFoundError):
        z = None
    if not isinstance(z, zarr.Array):
        raise ReadError(f"{name}: the array {path!r} of level {level} is missing; the OME-Zarr is incomplete, "
                        f"copy it again or pick another level.")
    ds = datasets[level]
    axes = _ngff_axes(ms.get("axes"), name) if ms.get("axes") else None
    scale = _ngff_scale(ds, ms, axes) if isinstance(axes, str) and len(axes) == z.ndim else {}
    return _zarr_dask(z), axes, "ome-zarr", scale


def _ngff_axes(axes: list[Any], name: str) -> str | AxesError:
    names = [(a.get("name", "") if isinstance(a, dict) else str(a)).lower() for a in axes]
    out = ""
    for n in names:
        letter = _NGFF_AXES.get(n, "S")
        if letter in out:
            return AxesError(f"{name}: OME-Zarr axes {names} have more than one axis that maps to {letter} "
                             f"(t, c, z, y, x, or one other axis as S); give axes explicitly.")
        out += letter
    return out


def _ngff_scale(ds: dict[str, Any], ms: dict[str, Any], axes: str) -> dict[str, float]:
    """The level's ``scale`` transform, times the image-wide one when present (NGFF applies both)."""
    def scale_of(transforms: Any) -> list[float] | None:
        for t in transforms or []:
            if isinstance(t, dict) and t.get("type") == "scale" and isinstance(t.get("scale"), list):
                return [float(v) for v in t["scale"]]
        return None

    level = scale_of(ds.get("coordinateTransformations"))
    if level is None or len(level) != len(axes):
        return {}
    whole = scale_of(ms.get("coordinateTransformations"))
    if whole is not None and len(whole) == len(axes):
        level = [a * b for a, b in zip(level, whole)]
    return {a: v for a, v in zip(axes, level) if a in _SCALE_LETTERS and v > 0}
