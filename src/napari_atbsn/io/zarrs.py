"""Lazy Zarr arrays and groups, and OME-Zarr (OME-NGFF 0.4 and 0.5) images with their pyramid levels.

A zarr array opened from a folder pickles as the folder's path and its
metadata, not its pixels, so unlike TIFF or .npy files (:mod:`.filearrays`)
it goes into the dask graph as it is. Its dask chunks are whole zarr chunks or
shards (:mod:`.chunking`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da

from ..errors import AxesError, ReadError
from .chunking import SCALE_LETTERS, Opened, check_single_image, grow_chunks, lazy_array
from .units import to_micrometres

__all__ = ["ZARR_MARKERS", "missing_chunks", "open_zarr_node", "open_zarr_path", "zarr_arrays_in"]

# Files that make a folder a Zarr store (v3, then v2 array and group), whatever its name.
ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")

# OME-NGFF axis names -> our letters; any other axis becomes S (independent samples).
_NGFF_AXES = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}


def open_zarr_path(p: Path, series: int, level: int) -> Opened:
    """A Zarr folder: an array, a group holding one array, or an OME-Zarr image (``series``, ``level``)."""
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as e:  # zarr raises several types for missing or broken metadata
        raise ReadError(f"{p} could not be opened as Zarr ({type(e).__name__}: {e}); "
                        f"check that it is a Zarr v2 or v3 array or group.") from None
    return open_zarr_node(node, str(p), series, level)


def open_zarr_node(node: Any, name: str, series: int, level: int) -> Opened:
    """An open zarr array or group, as :func:`open_zarr_path` takes it; ``name`` is what messages call it."""
    import zarr

    if isinstance(node, zarr.Array):
        check_single_image(name, series, level)
        return _zarr_dask(node), _plain_zarr_axes(node), "zarr", {}
    attrs = node.attrs.asdict()
    if "bioformats2raw.layout" in attrs:  # one OME-Zarr image per series, in groups "0", "1", ...
        images = sorted(k for k in node.group_keys() if k.isdigit())
        if str(series) not in images:
            raise ReadError(f"{name} has {len(images)} image series; use series 0 to {len(images) - 1}.")
        return open_zarr_node(node[str(series)], f"{name}/{series}", 0, level)
    multiscales = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if multiscales:
        return _open_ngff(node, multiscales, name, series, level)
    arrays = sorted(node.array_keys())
    if len(arrays) != 1:
        listed = ", ".join(arrays[:10]) or "none"
        raise ReadError(f"{name} is a Zarr group with {len(arrays)} arrays ({listed}) and no OME multiscales; "
                        f"give the path of one array, e.g. {name}/{arrays[0] if arrays else 'NAME'}.")
    return open_zarr_node(node[arrays[0]], f"{name}/{arrays[0]}", series, level)


def _zarr_dask(z: Any) -> da.Array:
    # Whole shards (zarr v3 sharding) or chunks per task: reading part of one would decode it twice.
    base = getattr(z, "shards", None) or z.chunks
    chunks = grow_chunks(z.shape, base, z.dtype.itemsize, range(z.ndim - 1, -1, -1))
    return lazy_array(z, chunks)


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
               level: int) -> Opened:
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
    units = [a.get("unit") if isinstance(a, dict) else None for a in ms.get("axes") or []]
    units += [None] * (len(axes) - len(units))
    out = {}
    for a, v, unit in zip(axes, level, units):
        um = to_micrometres(v, unit) if a in SCALE_LETTERS else None  # NGFF's unit names; none: micrometres
        if um is not None and um > 0:
            out[a] = um
    return out


# -- chunks that are not there -------------------------------------------------------------------------------
def zarr_arrays_in(data: da.Array) -> list[Any]:
    """The zarr arrays a lazy array reads from (``da.from_array`` keeps each in a one-key graph layer)."""
    import zarr

    found = []
    for name, layer in data.dask.layers.items():
        if str(name).startswith("original-") and len(layer) == 1:
            value = next(iter(layer.values()))
            if isinstance(value, zarr.Array):
                found.append(value)
    return found


def missing_chunks(z: Any) -> tuple[int, int]:
    """(missing, total) chunks of a zarr array: chunks never written read as the fill value, without a word.

    One listing of the store; inside a zarr v3 shard that exists, absent inner chunks are not seen.
    """
    total = int(z.nchunks)
    try:
        stored = int(z.nchunks_initialized)
    except Exception:  # a store that cannot be listed (some remote stores): nothing to say
        return 0, total
    return max(0, total - stored), total
