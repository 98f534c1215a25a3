"""Lazy, out-of-core opening of images as dask arrays with axes.

:func:`open_image` reads only metadata; pixels are read when the dask array
is computed, chunk by chunk, so 100 GB stacks can be denoised piece by piece.

This module picks the opener by format and settles the axes; the openers
live in :mod:`.filearrays` (TIFF, .npy, NIfTI: picklable file-backed arrays
that worker processes reopen by path) and :mod:`.zarrs` (Zarr, OME-Zarr), and
their dask chunks are cut from the file's own units by :mod:`.chunking`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..axes import check_image, guess_axes, reorder_for, validate_axes
from ..errors import AxesError, ConfigError, ImageError, ReadError
from .chunking import Opened, check_single_image, contiguous_dims, grow_chunks, lazy_array
from .filearrays import open_nifti, open_npy, open_tiff, tiff_series_count
from .files import PIL_SUFFIXES, TIFF_SUFFIXES, read_pil
from .fs import special_file
from .zarrs import ZARR_MARKERS, missing_chunks, open_zarr_node, open_zarr_path, zarr_arrays_in

__all__ = ["LAZY_TIFF_SUFFIXES", "NIFTI_SUFFIXES", "LazyImage", "check_chunks", "open_image", "parse_roi",
           "series_count"]

LAZY_TIFF_SUFFIXES = (*TIFF_SUFFIXES, ".btf", ".tf8", ".tf2")  # BigTIFF files often use the last three
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_SUPPORTED = "TIFF (.tif, .tiff, .btf, .tf8), Zarr/OME-Zarr (.zarr folder), NIfTI (.nii, .nii.gz), .npy, .png or .jpg"


@dataclass(frozen=True, eq=False)  # eq=False: comparing dask arrays elementwise would read both images
class LazyImage:
    """A lazily read image: a dask array, our axes letters and where it came from."""

    data: da.Array
    axes: str
    source: str
    format: str
    scale: dict[str, float] = field(default_factory=dict)
    #: Zarr chunks missing from the store are accepted (read as the fill value); see :func:`check_chunks`.
    allow_missing_chunks: bool = False

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


def open_image(source: Any, axes: str | None = None, *, series: int = 0, level: int = 0,
               allow_missing_chunks: bool = False) -> LazyImage:
    """Open a file or array lazily; no pixel is read here.

    ``source``: a path (TIFF, Zarr/OME-Zarr folder, NIfTI, .npy, PNG/JPEG),
    a numpy, dask or zarr array, or a :class:`LazyImage`. Axes come from
    ``axes`` if given, else the file's metadata, else
    :func:`napari_atbsn.axes.guess_axes`. ``series`` picks a TIFF series (or
    OME-Zarr image), ``level`` a pyramid level (0 = full resolution).
    ``allow_missing_chunks``: training and denoising refuse a Zarr input whose store lacks chunks (they
    would be read as the fill value) unless the image was opened with this set (:func:`check_chunks`);
    opening itself never refuses them.
    """
    if isinstance(source, LazyImage):
        check_single_image(source.source, series, level)
        if allow_missing_chunks:
            source = replace(source, allow_missing_chunks=True)
        return source if axes is None else source.with_axes(axes)
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        opened = _open_path(Path(name), series, level)
    else:
        name, opened = _open_object(source, series, level)
    data, file_axes, fmt, scale = opened
    image = _make(data, axes, file_axes, name, fmt, scale)
    return replace(image, allow_missing_chunks=True) if allow_missing_chunks else image


def series_count(source: Any) -> int:
    """How many image series the file ``source`` holds (TIFF; 1 for other inputs)."""
    if isinstance(source, (str, os.PathLike)) and os.fspath(source).lower().endswith(LAZY_TIFF_SUFFIXES):
        return max(1, tiff_series_count(Path(source)))
    return 1


def check_chunks(image: Any) -> None:
    """Refuse an image read from a Zarr store that lacks chunks: zarr reads each missing chunk as the fill
    value, so a half-copied store would be denoised or learned from as if those regions were empty.

    ``image`` is a :class:`LazyImage` (skipped if opened with ``allow_missing_chunks=True``) or a zarr array;
    anything else passes.
    """
    import zarr

    if isinstance(image, LazyImage):
        if image.allow_missing_chunks:
            return
        name, arrays = image.source, zarr_arrays_in(image.data)
    elif isinstance(image, zarr.Array):
        name, arrays = "<zarr>", [image]
    else:
        return
    for z in arrays:
        missing, total = missing_chunks(z)
        if missing:
            raise ReadError(f"{missing} of {total} chunks of {name} are missing from its store (zarr would read "
                            f"them as the fill value {z.fill_value}, i.e. no data); if the copy is incomplete, "
                            f"copy it again; if the store leaves empty chunks out on purpose, pass "
                            f"--allow-missing-chunks (allow_missing_chunks=True in open_image).")


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


def _open_object(obj: Any, series: int, level: int) -> tuple[str, Opened]:
    """In-memory data: the name to show in messages and what the openers return."""
    import zarr

    if isinstance(obj, da.Array):
        check_single_image("<dask>", series, level)
        return "<dask>", (obj, None, "dask", {})
    if isinstance(obj, np.ndarray):
        check_single_image("<numpy>", series, level)
        chunks = grow_chunks(obj.shape, (1,) * obj.ndim, obj.dtype.itemsize, contiguous_dims(obj))
        return "<numpy>", (lazy_array(obj, chunks), None, "numpy", {})
    if isinstance(obj, (zarr.Array, zarr.Group)):
        return "<zarr>", open_zarr_node(obj, "<zarr>", series, level)
    raise ReadError(f"cannot open a {type(obj).__name__}; give a file path or a numpy, dask or zarr array.")


def _open_path(p: Path, series: int, level: int) -> Opened:
    if not p.exists():
        raise ReadError(f"{p}: no such file or folder; check the path.")
    special = special_file(p)
    if special:
        raise ReadError(f"{p} is not a regular file ({special}): reading it could block or never end; give an "
                        f"image file or a .zarr folder.")
    name = p.name.lower()
    if p.is_dir():
        if name.endswith(".zarr") or any((p / m).exists() for m in ZARR_MARKERS):
            return open_zarr_path(p, series, level)
        raise ReadError(f"{p} is a folder but not a Zarr store (no zarr.json, .zarray or .zgroup); "
                        f"give an image file or a .zarr folder.")
    if name.endswith(LAZY_TIFF_SUFFIXES):
        return open_tiff(p, series, level)
    if name.endswith(NIFTI_SUFFIXES):
        check_single_image(str(p), series, level)
        return open_nifti(p)
    if name.endswith(".npy"):
        check_single_image(str(p), series, level)
        return open_npy(p)
    if name.endswith(PIL_SUFFIXES):
        check_single_image(str(p), series, level)
        # PNG/JPEG cannot be read in parts and are small (at most a few hundred MB), so reading
        # them here is cheap and keeps a numpy array in the graph, which pickles fine.
        data = read_pil(p)
        return lazy_array(data, data.shape), None, "png", {}
    raise ReadError(f"{p}: unsupported file type {p.suffix!r}; use {_SUPPORTED}.")
