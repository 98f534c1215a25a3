"""Streaming, resumable outputs of a chunked denoise: OME-Zarr, BigTIFF and .npy.

Every output has a work store beside it, ``.NAME.partial``: a zarr group
that records the job and, in ``.atbsn-done``, one empty marker file per unit
of work whose pixels are stored. An OME-Zarr output (zarr v2, OME-NGFF 0.4)
keeps its pixels in that group, one storage chunk per unit, so units can be
written by any worker in any order; a TIFF or .npy output keeps them in the
file itself, created empty under the hidden name ``.NAME.writing`` when the
job starts and written in place (:mod:`napari_atbsn.io.filewriters`). A unit
is marked done only after its pixels are stored. A run killed at any moment
leaves at worst a unit stored without its marker, which the next run
recomputes; markers therefore never lie.

When every unit is done, the output is finished: OME-Zarr gets its pyramid
and NGFF metadata and is renamed to NAME; a TIFF or .npy file is flushed to
the disk and renamed to NAME. So NAME exists only when it is complete, and an
older NAME replaced with ``overwrite`` is kept until the new one is.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import NOISE_MAP
from ..errors import AxesError, WriteError
from .filewriters import InPlaceFile, create_npy, create_tiff
from .fs import check_writable, fsync_file
from .units import NGFF_UNIT

ZARR_FORMAT = 2  # OME-NGFF 0.4 sits on zarr v2: what napari-ome-zarr, Fiji (MoBIE/n5-viewer) and QuPath read today
NGFF_VERSION = "0.4"
DONE_DIR = ".atbsn-done"
ATTR = "napari_atbsn"
TIFF_OUT_SUFFIXES = (".tif", ".tiff", ".btf")
PYRAMID_MAX_SIDE = 1024  # add half-resolution levels until the image fits this
# Pyramid levels a unit writes with its own chunk, as long as that level's chunk keeps this many pixels a side;
# coarser levels (a small fraction of the data) are built when the job finishes.
MIN_UNIT_LEVEL_CHUNK = 64

_NGFF_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}


def compressor() -> Any:
    """The codec of work stores and OME-Zarr outputs."""
    from numcodecs import Blosc

    return Blosc(cname="lz4", clevel=1, shuffle=Blosc.BITSHUFFLE)


def output_kind(path: str | os.PathLike) -> str:
    """``zarr`` (also .ome.zarr), ``tiff`` or ``npy``, from the file name."""
    name = Path(path).name.lower()
    if name.endswith(".zarr"):
        return "zarr"
    if name.endswith(TIFF_OUT_SUFFIXES):
        return "tiff"
    if name.endswith(".npy"):
        return "npy"
    raise WriteError(f"{path}: unsupported output type; use .ome.zarr / .zarr (chunked, any size), "
                     f".tif (OME-TIFF, BigTIFF) or .npy.")


def _split_suffix(name: str) -> tuple[str, str]:
    low = name.lower()
    for suf in (".ome.zarr", ".ome.tiff", ".ome.tif", ".zarr", ".tiff", ".tif", ".btf", ".npy"):
        if low.endswith(suf):
            return name[:-len(suf)], name[-len(suf):]
    return name, ""


def outputs_for(path: str | os.PathLike, ks: Sequence[Any]) -> list[Path]:
    """Output paths: ``out.tif`` for one image; ``out_kb1.tif``, ``out_kb3.tif`` for several blind-spot
    sizes; ``out_noise.tif`` for a D-BSN noise map."""
    p = Path(path)
    stem, suffix = _split_suffix(p.name)
    images = [k for k in ks if k != NOISE_MAP]
    return [p.with_name(f"{stem}_noise{suffix}") if k == NOISE_MAP else
            p if len(images) == 1 else p.with_name(f"{stem}_kb{k}{suffix}") for k in ks]


def to_dtype(x: Any, dtype: Any) -> Any:
    """Float results as ``dtype``: integers are rounded (``np.rint``, halves to even) and clipped to their range.

    Other types are a plain ``astype(dtype, copy=False)``. numpy and dask arrays alike: on a dask
    array the NumPy calls dispatch to dask, so a pyramid level stays lazy until it is stored.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return x.astype(dtype, copy=False)


def work_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def store_axes(axes: str, *, ngff: bool = True) -> str:
    """Axis order of the work store: OME-NGFF 0.4's time, channel (or a custom axis), then space.

    Our independent-samples axis S has no NGFF type; it takes the custom slot,
    which NGFF allows only when there is no channel axis. Work stores of TIFF
    and .npy outputs (``ngff=False``) never become OME-Zarr and may hold both.
    """
    if ngff and "S" in axes and "C" in axes:
        raise AxesError(f"axes {axes!r} has both S (samples) and C (channels), which OME-Zarr cannot store "
                        f"together; write a .tif instead, or denoise the samples separately with --roi.")
    return "".join(a for a in "TCSZYX" if a in axes)


def ngff_axes(axes: str, units: dict[str, str] | None = None) -> list[dict[str, str]]:
    out = []
    for a in axes:
        entry = {"name": a.lower()}
        if a in _NGFF_TYPES:
            entry["type"] = _NGFF_TYPES[a]
        if units and a in units:
            entry["unit"] = units[a]
        out.append(entry)
    return out


class OutputStore:
    """One output file or folder and its resumable work store.

    Only paths: building one touches no file, so a worker process cheaply rebuilds it from the
    absolute final path alone (``OutputStore(final)``) and finds the same work store, array and markers.
    """

    def __init__(self, final: str | os.PathLike) -> None:
        self.final = Path(final)
        self.kind = output_kind(self.final)
        self.work = work_path(self.final)
        self.done_dir = self.work / DONE_DIR
        self.array_path = self.work / "0"

    # -- checks before any work ---------------------------------------------------
    def check(self, *, overwrite: bool) -> None:
        if not self.final.parent.is_dir():
            raise WriteError(f"output folder {self.final.parent} does not exist; create it first.")
        if self.final.exists() and not overwrite:
            raise WriteError(f"{self.final} already exists; choose another name or pass --overwrite "
                             f"(the old output is kept until the new one is complete).")
        check_writable(self.final.parent)

    # -- the work store --------------------------------------------------------------
    def _record(self) -> dict[str, Any]:
        """What the work store records under :data:`ATTR` (its job, whether complete, its unit levels); empty
        if there is no store or it is unreadable."""
        try:
            meta = json.loads((self.work / ".zattrs").read_text())[ATTR]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def job(self) -> dict[str, Any] | None:
        """The job recorded in an existing work store; None if there is none or it is unreadable."""
        job = self._record().get("job")
        pixels = self.array_path.is_dir() if self.kind == "zarr" else self.writing.is_file()
        return job if isinstance(job, dict) and pixels else None

    def has_partial(self) -> bool:
        return self.work.exists()

    def create(self, job: dict[str, Any], *, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str,
               axes: str | None = None, out_axes: str | None = None, scale: dict[str, float] | None = None) -> None:
        """A fresh work store; the job is written last, so a readable job means a usable store.

        ``shape``, ``chunks`` and ``axes`` are in the store's axis order (:func:`store_axes`). For a Zarr
        output the pyramid levels whose chunks a unit's chunk fills exactly (:func:`unit_levels`) are created
        too: each unit writes its share of them as it is computed, and only coarser levels are left for the
        end. A TIFF or .npy output gets its empty file instead, in the axis order ``out_axes`` (with the
        physical pixel sizes ``scale`` in a TIFF's metadata).
        """
        import zarr

        self.discard()
        group = zarr.open_group(str(self.work), mode="w", zarr_format=ZARR_FORMAT)
        levels = []
        record: dict[str, Any] = {"job": job, "complete": False}
        if self.kind == "zarr":
            # Blosc LZ4 (level 1) with bit-shuffle: the fastest Blosc setting on noisy float data, a quarter
            # smaller than plain float32 and so faster to write than no compression at all (docs/benchmarks.md)
            group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0, compressors=compressor())
            levels = unit_levels(shape, chunks, axes) if axes else []
            for level, (lshape, lchunks) in enumerate(levels, start=1):
                group.create_array(str(level), shape=lshape, chunks=lchunks, dtype=dtype, fill_value=0,
                                   compressors=compressor())
            record["unit_levels"] = len(levels)
        else:
            if not axes or not out_axes:
                raise ValueError("a TIFF or .npy output needs its store and file axes")
            out_shape = tuple(shape[axes.index(a)] for a in out_axes)
            try:
                if self.kind == "tiff":
                    # the OME UUID comes from the job, so a resumed job writes the same bytes as an uninterrupted one
                    uid = uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(job, sort_keys=True))
                    create_tiff(self.writing, out_shape, dtype, out_axes, scale, uid=f"urn:uuid:{uid}")
                else:
                    create_npy(self.writing, out_shape, dtype)
            except OSError as e:
                self.discard()
                raise WriteError(f"could not create {self.writing}: {e.strerror or e}; check free space and "
                                 f"permissions.") from None
            record.update({"shape": list(shape), "dtype": str(np.dtype(dtype)), "axes": axes,
                           "file_axes": out_axes})
        self.done_dir.mkdir()
        group.attrs[ATTR] = record

    def unit_levels(self) -> int:
        """How many pyramid levels (beyond level 0) the units of this work store write themselves."""
        try:
            return int(self._record().get("unit_levels", 0))
        except (TypeError, ValueError):
            return 0

    def discard(self) -> None:
        """Remove the work store and, for a TIFF or .npy output, its unfinished file."""
        if self.work.exists():
            shutil.rmtree(self.work)
        if self.kind != "zarr":
            self.writing.unlink(missing_ok=True)

    def done(self) -> set[str]:
        try:
            return set(os.listdir(self.done_dir))
        except FileNotFoundError:
            return set()

    def open_array(self) -> Any:
        """Where units store their level-0 pixels: the work store's array (``r+``), or for a TIFF or .npy
        output its file, written in place (indexed in the store's axis order all the same)."""
        if self.kind == "zarr":
            return open_for_writing(self.array_path)
        rec = self._record()
        return InPlaceFile(self.writing, self.kind, tuple(rec["shape"]), rec["dtype"], rec["axes"], rec["file_axes"])

    def open_arrays(self) -> list[Any]:
        """Level 0 and the pyramid levels the units write (:meth:`unit_levels`), opened for writing."""
        return [self.open_array()] + [open_for_writing(self.work / str(level))
                                      for level in range(1, self.unit_levels() + 1)]

    def mark_done(self, key: str) -> None:
        """Record unit ``key`` as done, as :meth:`done` lists it: an empty file in the store's DONE_DIR.

        Call it only once the unit's chunk is fully stored, so a marker never lies. An ``OSError``
        (disk full, permissions) propagates: the caller says how to resume.
        """
        (self.done_dir / key).touch()

    # -- finishing --------------------------------------------------------------
    def prepare(self, *, axes: str, scale: dict[str, float] | None = None, name: str = "denoised") -> None:
        """Build everything the final output needs beside it; nothing final is touched yet.

        Zarr: the pyramid and the NGFF metadata, in the work store. TIFF/npy: the file its units wrote,
        ``.NAME.writing``, flushed to the disk. A failure here leaves every work store intact, so the same
        command retries.
        """
        import zarr

        if self.kind == "zarr":
            group = zarr.open_group(str(self.work), mode="r+", zarr_format=ZARR_FORMAT)
            levels = build_pyramid(group, axes, start=self.unit_levels() + 1)
            meta = dict(group.attrs[ATTR])
            meta["complete"] = True
            group.attrs.update({ATTR: meta, "multiscales": [multiscales(axes, levels, scale or {}, name)]})
            return
        try:
            fsync_file(self.writing)
        except OSError as e:
            raise WriteError(f"could not write {self.final}: {e.strerror or e}; the finished work is kept in "
                             f"{self.writing}, so running the same command again only flushes it.") from None

    @property
    def writing(self) -> Path:
        return self.final.with_name(f".{self.final.name}.writing")

    def commit(self) -> Path:
        """Put the prepared output in place (a rename), then drop the work store and its markers."""
        if self.kind == "zarr":
            _replace_dir(self.work, self.final)
            # markers go only after the rename: a store that still has its job also still has its markers
            shutil.rmtree(self.final / DONE_DIR, ignore_errors=True)
        else:
            if self.final.is_dir():
                shutil.rmtree(self.final)
            os.replace(self.writing, self.final)
            self.discard()
        return self.final


def open_for_writing(path: Path) -> Any:
    """A zarr array opened to store denoised chunks in. Every chunk is written, even one that equals the fill
    value: zarr's test for such chunks costs as much as compressing them, and a denoised chunk is never
    empty."""
    import zarr

    with zarr.config.set({"array.write_empty_chunks": True}):
        return zarr.open_array(str(path), mode="r+")


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an old ``dst`` is only deleted once ``src`` is in place."""
    old = dst.with_name(f".{dst.name}.old")
    if dst.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()


# -- OME-NGFF multiscale pyramid ---------------------------------------------------
def pyramid_shapes(shape: tuple[int, ...], axes: str) -> list[tuple[int, ...]]:
    """Level shapes: halve Y and X (rounding up) until the larger side is <= PYRAMID_MAX_SIDE."""
    yi, xi = axes.index("Y"), axes.index("X")
    shapes = [tuple(shape)]
    while max(shapes[-1][yi], shapes[-1][xi]) > PYRAMID_MAX_SIDE:
        s = list(shapes[-1])
        s[yi], s[xi] = (s[yi] + 1) // 2, (s[xi] + 1) // 2
        shapes.append(tuple(s))
    return shapes


def build_pyramid(group: Any, axes: str, start: int = 1) -> int:
    """Write levels ``start``.. of ``group`` by 2x2 means of the level above; returns the number of levels.

    Computed with dask chunk by chunk, so memory stays at a few chunks; odd
    sizes repeat the last row/column (so edge pixels average with themselves),
    as :func:`halve` does for the levels units write themselves.
    """
    import dask.array as da

    base = group["0"]
    shapes = pyramid_shapes(base.shape, axes)
    yi, xi = axes.index("Y"), axes.index("X")
    for level in range(start, len(shapes)):
        prev = da.from_zarr(group[str(level - 1)])
        pad = [(0, 0)] * prev.ndim
        pad[yi], pad[xi] = (0, prev.shape[yi] % 2), (0, prev.shape[xi] % 2)
        if any(p[1] for p in pad):
            prev = da.pad(prev, pad, mode="edge")
        small = da.coarsen(np.mean, prev.astype(np.float64), {yi: 2, xi: 2})
        small = to_dtype(small, base.dtype)
        target = group.create_array(str(level), shape=shapes[level], chunks=base.chunks, dtype=base.dtype,
                                    fill_value=0, overwrite=True, compressors=compressor(),
                                    config={"write_empty_chunks": True})
        da.store(small.rechunk(base.chunks), target, lock=False, scheduler="threads")
    return len(shapes)


def unit_levels(shape: tuple[int, ...], chunks: tuple[int, ...], axes: str,
                ) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(shape, chunks) of the pyramid levels 1.. that units can write themselves: along Y and X, a unit's
    chunk must split into whole chunks of the level (chunk divisible by 2**level, or one chunk spanning the
    axis) of at least :data:`MIN_UNIT_LEVEL_CHUNK` pixels, so no two units ever write the same chunk."""
    shapes = pyramid_shapes(shape, axes)
    out = []
    for level in range(1, len(shapes)):
        f = 2 ** level
        lchunks = list(chunks)
        for a in "YX":
            i = axes.index(a)
            if chunks[i] >= shape[i]:  # one unit spans the axis: its level is one chunk
                lchunks[i] = shapes[level][i]
            elif chunks[i] % f == 0 and chunks[i] // f >= MIN_UNIT_LEVEL_CHUNK:
                lchunks[i] = chunks[i] // f
            else:
                return out
        out.append((shapes[level], tuple(lchunks)))
    return out


def halve(block: np.ndarray, axes: str, dtype: Any) -> np.ndarray:
    """One pyramid step on an in-memory block: the 2x2 means over Y and X in float64, an odd last row or
    column averaged with itself, as ``dtype`` (the arithmetic of :func:`build_pyramid`)."""
    yi, xi = axes.index("Y"), axes.index("X")
    pad = [(0, 0)] * block.ndim
    pad[yi], pad[xi] = (0, block.shape[yi] % 2), (0, block.shape[xi] % 2)
    x = np.pad(block, pad, mode="edge") if any(p[1] for p in pad) else block

    def part(dy: int, dx: int) -> np.ndarray:
        index = [slice(None)] * x.ndim
        index[yi], index[xi] = slice(dy, None, 2), slice(dx, None, 2)
        return x[tuple(index)]

    # four float32-exact values sum exactly in float64 and /4 is exact: the same bits as np.mean over the
    # 2x2 blocks (dask's coarsen), at a fraction of its strided reduction's cost; summed in place, each
    # quarter converted as it is added
    total = part(0, 0).astype(np.float64)
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        np.add(total, part(dy, dx), out=total)
    total /= 4
    return to_dtype(total, dtype)


def multiscales(axes: str, levels: int, scale: dict[str, float], name: str) -> dict[str, Any]:
    """The NGFF 0.4 ``multiscales`` entry; level l is 2**l coarser in Y and X, centred on the same pixels."""
    datasets = []
    for level in range(levels):
        f = 2 ** level
        s = [float(scale.get(a, 1.0)) * (f if a in "YX" else 1) for a in axes]
        t = [float(scale.get(a, 1.0)) * (f - 1) / 2 if a in "YX" else 0.0 for a in axes]
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": s}]
        if level:
            transforms.append({"type": "translation", "translation": t})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    units = {a: NGFF_UNIT for a in "ZYX" if a in scale}  # our pixel sizes are micrometres (io/units.py)
    return {"version": NGFF_VERSION, "name": name, "axes": ngff_axes(axes, units), "datasets": datasets,
            "type": "mean", "metadata": {"method": "2x2 mean of the level above", "software": "napari-atbsn"}}
