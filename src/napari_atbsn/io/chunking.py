"""What the lazy openers share: dask chunks made of the file's own units, and the result they return.

Chunks are made of the file's own units (whole TIFF strips or tiles, whole
zarr chunks or shards, whole rows of .npy/NIfTI data), grown in storage order
(tile rows, pages, then several pages) up to about :data:`CHUNK_BYTES`, so a
100 GB file is thousands of tasks, not millions. Slicing the dask array
before computing reads only the slice: dask passes the slice to the reader.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np

from ..errors import AxesError, ReadError

__all__ = ["CHUNK_BYTES", "SCALE_LETTERS", "Opened", "check_single_image", "contiguous_dims", "grow_chunks",
           "lazy_array"]

# Upper bound for one chunk when the file's own unit (strip, tile, zarr chunk) is smaller:
# big enough that a 100 GB stack is a few thousand tasks, small enough for many in memory.
CHUNK_BYTES = 64 * 2**20

# Only spatial sizes are reported as scale: time steps and channels have no pixel size.
SCALE_LETTERS = "ZYX"

# What each opener returns: lazy data, axes from metadata (or the error they caused), format, scale.
Opened = tuple[da.Array, "str | AxesError | None", str, dict[str, float]]


def check_single_image(name: str, series: int, level: int) -> None:
    """Formats with one image and no pyramid: a non-zero series/level is a mistake, not something to ignore."""
    if series != 0 or level != 0:
        raise ReadError(f"{name} holds a single image without pyramid levels; use series=0 and level=0.")


def grow_chunks(shape: Sequence[int], base: Sequence[int], itemsize: int, dims: Sequence[int]) -> tuple[int, ...]:
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


def contiguous_dims(arr: Any) -> list[int]:
    """Dimensions from the fastest-varying in memory to the slowest."""
    dims = list(range(arr.ndim))
    fortran = getattr(arr, "flags", None) is not None and arr.flags.f_contiguous and not arr.flags.c_contiguous
    return dims if fortran else dims[::-1]


def lazy_array(x: Any, chunks: Sequence[int]) -> da.Array:
    """``x`` as a dask array with ``chunks``; nothing is read."""
    # meta stops dask from indexing x to learn the chunk type, which would read pixels at open time.
    return da.from_array(x, chunks=tuple(chunks), meta=np.empty((0,) * len(x.shape), dtype=x.dtype))
