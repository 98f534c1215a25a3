"""Denoising as a lazy dask array: nothing runs until a chunk is computed (napari's lazy layers)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..axes import context_note
from ..config import AUTO_K_B
from ..events import drain
from ..io.outputs import to_dtype
from ..tiling import Box
from .geometry import from_cyx, full_shape
from .output_kinds import output_dtype
from .plan import auto_chunk, resolve_target
from .quality import calibrate
from .runtime import Runtime

if TYPE_CHECKING:
    from .denoiser import Denoiser
    from .quality import Calibration

log = logging.getLogger("napari_atbsn")


def lazy_denoise(source: Any, model: Denoiser, *, axes: str | None = None, k_b: int | Sequence[int] | None = None,
                 roi: dict[str, slice] | str | None = None, chunk: int | None = None, window: int | None = None,
                 halo: int | None = None, batch_size: int | None = None, dtype: str = "float32",
                 noise_map: bool = False, calibration: Calibration | None = None) -> Any:
    """The denoised image as a dask array in the source's axes order; nothing runs until it is computed.

    With several k_b, all outputs share one computation per chunk (one backbone pass for all k). ``k_b="auto"``
    calibrates on a sample of the source first, unless ``calibration`` (:func:`~.quality.calibrate`) is given.
    """
    import dask.array as da

    t = resolve_target(source, model, axes=axes, k_b=k_b, roi=roi, window=window, halo=halo, dtype=dtype,
                       noise_map=noise_map)
    geom, ks = t.geom, t.ks
    if geom.context_unused:
        log.warning(context_note(geom.context_unused))
    chunk = chunk or auto_chunk(t.window, t.halo, geom.channels, len(ks), 1, geom.region, context=geom.context)
    if AUTO_K_B in ks and calibration is None:
        calibration = calibrate(model, t.cropped, geom.axes, window=t.window)
    rt = Runtime(model, ks, geom, t.window, t.halo, batch_size or 4, calibration=calibration)
    image_dtype = np.dtype(np.float32) if dtype == "float32" else np.dtype(t.source.dtype)
    # one dask array holds every output, so they must share a type: float32 when a noise map rides along
    out_dtype = np.result_type(*[output_dtype(k, image_dtype) for k in ks])
    data = t.cropped.data
    r = geom.region
    chunks = []
    for a, s in zip(geom.axes, geom.out_shape(), strict=True):
        if a in "YX":
            chunks.append(tuple(min(chunk, s - i) for i in range(0, s, chunk)))
        elif a == "C":
            chunks.append((s,))
        else:
            chunks.append((1,) * s)

    def block(block_info: dict | None = None) -> np.ndarray:
        assert block_info is not None
        loc = dict(zip(geom.axes, block_info[None]["array-location"][1:], strict=True))  # [0] is the k_b axis
        plane = {a: loc[a][0] for a in geom.plane_axes}
        n = int(np.ravel_multi_index([plane[a] for a in geom.plane_axes], geom.plane_shape)) if plane else 0
        b = Box(r.y0 + loc["Y"][0], r.y0 + loc["Y"][1], r.x0 + loc["X"][0], r.x0 + loc["X"][1])
        rr = rt.read_box(b)
        raw = geom.read_unit(data, n, rr.y0, rr.y1, rr.x0, rr.x1)
        res = drain(rt.iter_unit(raw, (rr.y0, rr.x0), b, plane=n))
        outs = [from_cyx(to_dtype(x, out_dtype), geom) for x in res]
        return np.stack([o.reshape(full_shape(o, geom)) for o in outs])

    meta = np.empty((0,) * (len(geom.axes) + 1), dtype=out_dtype)
    stacked = da.map_blocks(block, chunks=((len(ks),), *chunks), dtype=out_dtype, meta=meta,
                            name=f"atbsn-denoise-{uuid.uuid4().hex}")
    return [stacked[i] for i in range(len(ks))] if len(ks) > 1 else stacked[0]
