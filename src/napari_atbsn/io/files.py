"""Reading and writing images: TIFF (with OME/ImageJ axes), PNG/JPEG and .npy.

Holding the image in memory is fine here; lazy, out-of-core access to
multi-gigabyte volumes belongs to the tiled pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..axes import check_image, guess_axes, reorder_for, validate_axes
from ..errors import AxesError, ReadError, WriteError
from .fs import fsync_file

TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")

# tifffile's letters -> ours. tifffile's S is samples-per-pixel (RGB), i.e. our C;
# its I/Q (image sequence / unknown) are independent planes, our S.
_TIFF_AXES = {"S": "C", "I": "S", "Q": "S", "C": "C", "Z": "Z", "T": "T", "Y": "Y", "X": "X"}


def read_image(path: str | os.PathLike, axes: str | None = None) -> tuple[np.ndarray, str]:
    """Read an image file; return ``(array, axes)``.

    Axes come from ``axes`` if given, else from the file's OME/ImageJ
    metadata (TIFF), else from :func:`napari_atbsn.axes.guess_axes`.
    """
    p = Path(path)
    if not p.exists():
        raise ReadError(f"{p}: no such file; check the path.")
    if p.is_dir():
        raise ReadError(f"{p} is a folder, not an image file; give a .tif, .png, .jpg or .npy file.")
    suffix = p.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        data, file_axes = _read_tiff(p)
    elif suffix in PIL_SUFFIXES:
        data, file_axes = read_pil(p), None
    elif suffix == ".npy":
        try:
            data, file_axes = np.load(p, allow_pickle=False), None
        except (ValueError, OSError) as e:
            raise ReadError(f"{p} is not a valid .npy array file ({e}).") from None
    else:
        raise ReadError(f"{p}: unsupported file type {suffix!r}; use .tif/.tiff, .png, .jpg or .npy.")
    if axes is None:
        axes = file_axes or guess_axes(data.shape)
    try:
        axes = validate_axes(axes, data.ndim)
    except AxesError as e:
        raise AxesError(f"{p} has shape {data.shape}: {e}") from None
    check_image(data, p.name)
    order = reorder_for(file_axes, axes)
    return (np.ascontiguousarray(data.transpose(order)) if order is not None else data), axes


def _read_tiff(p: Path) -> tuple[np.ndarray, str | None]:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tf:
            series = tf.series[0]
            data = series.asarray()
            raw_axes = series.axes
    except Exception as e:  # tifffile raises many types for broken files
        raise ReadError(f"{p} could not be read as a TIFF ({type(e).__name__}: {e}); is the file complete?") from None
    return data, map_tiff_axes(raw_axes)


def map_tiff_axes(raw_axes: str) -> str | None:
    """tifffile's axes letters as ours; None when they cannot be mapped, so the caller guesses instead."""
    mapped = "".join(_TIFF_AXES.get(a, "?") for a in raw_axes)
    # Unknown letters or two letters that map to the same one: no usable axes.
    if "?" in mapped or len(set(mapped)) != len(mapped):
        return None
    return mapped


def read_pil(p: Path) -> np.ndarray:
    """A PNG or JPEG as a numpy array (Y, X) or (Y, X, samples)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            return np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise ReadError(f"{p} could not be read as an image ({e}).") from None


def check_output_path(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Refuse an output we cannot or must not write, before any work is done."""
    p = Path(path)
    if p.suffix.lower() not in (*TIFF_SUFFIXES, ".npy"):
        raise WriteError(f"{p}: unsupported output type {p.suffix!r}; use .tif or .npy.")
    if p.exists() and not overwrite:
        raise WriteError(f"{p} already exists; choose another name or pass --overwrite.")
    if not p.parent.exists():
        raise WriteError(f"output folder {p.parent} does not exist; create it first.")
    return p


def write_image(path: str | os.PathLike, data: np.ndarray, axes: str, *, overwrite: bool = False) -> Path:
    """Write a TIFF (axes in its metadata) or .npy atomically; never clobbers without ``overwrite``."""
    p = check_output_path(path, overwrite=overwrite)
    suffix = p.suffix.lower()
    tmp = p.with_name(f".{p.name}.partial")
    try:
        if suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, data)
                f.flush()
                os.fsync(f.fileno())
        else:
            _write_tiff(tmp, data, axes)
            fsync_file(tmp)
        os.replace(tmp, p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"could not write {p}: {e.strerror or e}.") from None
    return p


def _write_tiff(path: Path, data: np.ndarray, axes: str) -> None:
    """TIFF readers take the last two dimensions (or Y, X, RGB samples) as the image plane.

    RGB(A) data with C last is written as colour samples; otherwise Y and X
    are moved last, keeping the order of the other axes, which the file's
    metadata records (so a YXC image with 5 channels reads back as CYX).
    """
    import tifffile

    if axes.endswith("YXC") and data.shape[-1] in (3, 4):
        tifffile.imwrite(path, data, photometric="rgb", metadata={"axes": axes.replace("S", "I")[:-1] + "S"})
        return
    order = [i for i, a in enumerate(axes) if a not in "YX"] + [axes.index("Y"), axes.index("X")]
    data = np.transpose(data, order)
    tif_axes = "".join(axes[i] for i in order).replace("S", "I")  # tifffile calls independent planes I
    tifffile.imwrite(path, data, metadata={"axes": tif_axes}, photometric="minisblack")
