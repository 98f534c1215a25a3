"""Running the network on the windows of one unit of work, with a batch size that backs off when the
device runs out of memory."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..block_blend import expand_to_blocks
from ..config import AUTO_K_B, OutputKey
from ..device import is_oom
from ..errors import ConfigError, DeviceError, ImageError
from ..filters import FLAT_SIDE, flat_pixels
from ..io.outputs import to_dtype
from ..tiling import Box, PlaneGrid, iter_box
from .geometry import Geometry, from_cyx
from .output_kinds import output_dtype

if TYPE_CHECKING:
    from .denoiser import Denoiser
    from .quality import Calibration


class Runtime:
    """A model ready to compute units, with a batch size that backs off when the device runs out of memory."""

    def __init__(self, model: Denoiser, ks: Sequence[OutputKey], geom: Geometry, window: int, halo: int,
                 batch_size: int, on_backoff: Callable[[str], None] | None = None, *,
                 calibration: Calibration | None = None) -> None:
        self.model, self.ks, self.geom = model, list(ks), geom
        if AUTO_K_B in self.ks and calibration is None:
            raise ConfigError("k_b='auto' needs the calibration of the data (inference.quality.calibrate).")
        self.calibration = calibration
        # what the network computes: ``auto`` is the calibrated k_b, blended with the input afterwards
        self.net_ks = [calibration.k_b if k == AUTO_K_B and calibration else k for k in self.ks]
        self.grid = PlaneGrid.of(geom.height, geom.width, window, halo)
        self.batch_size = batch_size
        self.on_backoff = on_backoff
        self._lock = threading.Lock()

    def compute_box(self, box: Box) -> Box:
        """The box a unit computes for ``box`` (:func:`compute_box`)."""
        return compute_box(box, self.geom.region, self.ks, self.calibration)

    def read_box(self, box: Box) -> Box:
        """The source pixels a unit needs for ``box``: its windows' reach around :meth:`compute_box`."""
        return self.grid.read_box(self.compute_box(box))

    def windows(self, tiles: np.ndarray) -> np.ndarray:
        """(B, C, w, w) normalised windows -> (K, B, C, w, w), in sub-batches of the current batch size."""
        parts, i = [], 0
        while i < len(tiles):
            b = self.batch_size
            try:
                parts.append(self.model.run_windows(tiles[i:i + b], self.net_ks))
                i += b
            except (RuntimeError, MemoryError) as e:
                if not is_oom(e):
                    raise
                self._back_off(e, b)
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def _back_off(self, e: BaseException, failed: int) -> None:
        """Halve the batch after a call of ``failed`` windows ran out of memory (threads share the runtime: a
        thread whose failure is already answered by a smaller batch just retries)."""
        import torch

        with self._lock:
            if failed == 1:
                raise DeviceError(f"the device ran out of memory with one {self.grid.window}-pixel window per "
                                  f"call ({e}); free memory, use --device cpu, or a smaller --window.") from None
            if self.batch_size < failed:
                return
            self.batch_size = max(1, failed // 2)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.on_backoff:
            self.on_backoff(f"out of memory: retrying with --batch-size {self.batch_size}")

    def iter_unit(self, raw: np.ndarray, origin: tuple[int, int], box: Box, *, plane: int | None = None,
                  out: Sequence[np.ndarray] | None = None) -> Generator[int, None, Any]:
        """Denoise ``box`` from ``raw``, the (C, h, w) source pixels at ``origin`` that its windows need
        (``plane``: its plane's number, for messages).

        Yields windows done per batch; returns the (K, C, h, w) float32 result in the data's own range, or
        writes it into ``out`` (K float32 (C, h, w) arrays, e.g. views of the caller's image) and returns that.
        """
        # integers cannot be NaN or Inf: only floating-point sources pay for the check
        if raw.dtype.kind in "fc" and not np.all(np.isfinite(raw)):
            index = self.geom.plane_index(plane) if plane is not None else {}
            where = f" in plane {', '.join(f'{a}={i}' for a, i in index.items())}" if index else ""
            if where and self.geom.context:  # a stack-context unit holds its neighbouring planes too
                where += f" or its {2 * self.geom.context} neighbouring plane(s)"
            raise ImageError(f"the image contains NaN or Inf pixels{where} near rows {box.y0}..{box.y1}, columns "
                             f"{box.x0}..{box.x1}; replace them (e.g. with the local median) before denoising.")
        cbox = self.compute_box(box)
        into = out if cbox == box else None
        if self.model.windows_on_device:
            result = yield from self._iter_unit_on_device(raw, origin, cbox, into)
        else:
            result = yield from self._iter_unit_on_host(raw, origin, cbox, into)
        if self.calibration is not None and AUTO_K_B in self.ks:
            self._blend(raw, origin, cbox, plane, result)
        if cbox != box:  # the unit's own pixels of the whole blocks it computed
            cut = np.s_[:, box.y0 - cbox.y0:box.y1 - cbox.y0, box.x0 - cbox.x0:box.x1 - cbox.x0]
            if out is None:
                return [np.ascontiguousarray(r[cut]) for r in result]
            for o, r in zip(out, result, strict=True):
                o[...] = r[cut]
            return out
        return result

    def _blend(self, raw: np.ndarray, origin: tuple[int, int], box: Box, plane: int | None,
               result: Sequence[np.ndarray]) -> None:
        """``auto``'s outputs in ``result`` blended with the input, in place (Calibration.apply)."""
        assert self.calibration is not None
        oy, ox = origin
        # the blend is with the plane itself (a stack-context unit's first channels), not its neighbours
        y = raw[:self.model.in_channels, box.y0 - oy:box.y1 - oy, box.x0 - ox:box.x1 - ox]
        y = y.astype(np.float32, copy=False)
        flat = flat_in_box(raw[:self.model.in_channels], origin, box)
        image = None
        if plane is not None and self.calibration.images:  # its own weights: by S index, or by plane number
            image = plane if self.calibration.unit == "plane" else self.geom.plane_index(plane).get("S")
        r = self.geom.region
        at, size = (box.y0 - r.y0, box.x0 - r.x0), (r.y1 - r.y0, r.x1 - r.x0)
        for i, k in enumerate(self.ks):
            if k == AUTO_K_B:
                result[i][...] = self.calibration.apply(y, result[i], flat, image, at=at, size=size)

    def _iter_unit_on_host(self, raw: np.ndarray, origin: tuple[int, int], box: Box,
                           out: Sequence[np.ndarray] | None) -> Generator[int, None, Any]:
        oy, ox = origin

        def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            return raw[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox]

        # raw pixels are cast and normalised batch by batch as windows are cut (iter_box), and the result is
        # mapped back to the data's units in place: no whole-chunk temporaries
        result = yield from iter_box(self.windows, read, self.grid, box, batch_size=self.batch_size,
                                     prepare=self.model.normalization_for(raw.shape[0]).apply_, out=out)
        for r, k in zip(result, self.net_ks, strict=True):
            self.model.undo_output(r, k, in_place=True)
        return result

    def _iter_unit_on_device(self, raw: np.ndarray, origin: tuple[int, int], box: Box,
                             out: Sequence[np.ndarray] | None) -> Generator[int, None, Any]:
        """The same unit with its windows cut, run and reassembled on the model's device (device_windows)."""
        from .device_windows import iter_box_on_device, staging_for

        staging = staging_for(self.model.device)
        oy, ox = origin
        rb = self.grid.read_box(box)
        region = raw[:, rb.y0 - oy:rb.y1 - oy, rb.x0 - ox:rb.x1 - ox]
        return (yield from iter_box_on_device(self.model, self.net_ks, self.grid, region, (rb.y0, rb.x0), box,
                                              batch_size=lambda: self.batch_size, on_oom=self._back_off,
                                              staging=staging, out=out))


def compute_box(box: Box, region: Box, ks: Sequence[OutputKey], calibration: Calibration | None) -> Box:
    """The box a unit computes for ``box``: where ``auto``'s blend weighs each block of the region on its own
    (block_blend), ``box`` widened to the whole blocks it touches, so that any chunking computes the same weights
    (a chunk that is a multiple of the block, as plans choose by default (plan.block_aligned), is widened only at
    the region's end)."""
    if AUTO_K_B not in ks or calibration is None or not calibration.block_models:
        return box
    y0, y1 = expand_to_blocks(box.y0 - region.y0, box.y1 - region.y0, region.y1 - region.y0)
    x0, x1 = expand_to_blocks(box.x0 - region.x0, box.x1 - region.x0, region.x1 - region.x0)
    return Box(region.y0 + y0, region.y0 + y1, region.x0 + x0, region.x0 + x1)


def counted(gen: Generator[int, None, np.ndarray], done: int, total: int,
             ) -> Generator[tuple[int, int], None, np.ndarray]:
    """Re-yield a unit's windows-per-batch as running ``(done, total)`` progress; return its result."""
    try:
        while True:
            done += next(gen)
            yield done, total
    except StopIteration as stop:
        return stop.value


#: At most this many window pixels per network call on a GPU (32 windows of 256², 128 of 128²). On an H200
#: student C computed 41.6, 47.5 and 48.5 output MPix/s at 8, 32 and 128 windows of 256² (benchmarks/
#: gpu_profile.py): beyond this a larger batch no longer shortens the time per pixel, and it lengthens
#: cuDNN's autotuning of each new shape and the last, partial batch of a plane.
MAX_BATCH_PIXELS = 2 ** 21
MAX_BATCH = 512


def auto_batch_size(model: Denoiser) -> int:
    """Windows per network call: a few on CPU (no gain beyond); on a GPU as many as half its free memory
    allows, up to :data:`MAX_BATCH_PIXELS`."""
    import torch

    if model.device.type != "cuda":
        return 4
    probe = np.zeros((1, model.input_channels, model.patch, model.patch), np.float32)
    # a first call pays cuDNN's autotuning (its trial workspaces) and any compilation: measure the second
    model.run_windows(probe, [None])
    free, _ = torch.cuda.mem_get_info(model.device)
    torch.cuda.reset_peak_memory_stats(model.device)
    base = torch.cuda.memory_allocated(model.device)
    model.run_windows(probe, [None])
    per_window = max(1, torch.cuda.max_memory_allocated(model.device) - base)
    cap = min(MAX_BATCH, max(1, MAX_BATCH_PIXELS // model.patch ** 2))
    return int(max(1, min(cap, free * 0.5 // per_window)))


class Denoised(list):
    """The outputs of an in-memory denoise, one array per requested key, and what ``auto`` decided (its
    :class:`~napari_atbsn.inference.quality.Calibration`, with the estimated gain), or None; ``context_unused``:
    why a stack-context model denoised each plane alone (its 2-D mode), or None."""

    calibration: Calibration | None = None
    context_unused: str | None = None


def iter_array(model: Denoiser, arr: np.ndarray, axes: str, *, ks: Sequence[OutputKey], batch_size: int,
               dtype: str, calibration: Calibration | None = None, assembled: bool = False,
               ) -> Generator[tuple[int, int], None, Denoised]:
    """Denoise an in-memory array plane by plane (each plane one chunk; unvalidated: callers check the
    input); returns one array per k, with the calibration of ``auto``. ``assembled``: a stack-context model's
    planes arrive with their context already in the channels (Geometry)."""
    geom = Geometry.of(axes, arr.shape, context=model.context, assembled=assembled, single_plane=model.single_plane)
    rt = Runtime(model, ks, geom, model.patch, model.halo, batch_size, calibration=calibration)
    grid = rt.grid
    out_dtype = arr.dtype if dtype == "input" else np.dtype(np.float32)
    outs = Denoised(np.empty(geom.out_shape(), dtype=output_dtype(k, out_dtype)) for k in ks)
    outs.calibration, outs.context_unused = calibration, geom.context_unused
    total = geom.n_planes * grid.count(geom.region)
    done = 0
    # float32 outputs whose channels come before the rows (YX, CYX, ZCYX ...) are written by the windows straight
    # into the caller's array; channel-last ones (napari's RGB YXC) are assembled per plane and transposed
    # once, which is faster than scattering each window's core into interleaved channels. On the device
    # path every float32 output is written in place: the device puts the result in the array's own order.
    cyx = [a for a in axes if a in "CYX"]
    direct = all(o.dtype == np.float32 for o in outs) and (cyx[-2:] == ["Y", "X"] or model.windows_on_device)
    # the per-plane (C, h, w) results of the other outputs: one buffer for all planes (a fresh 50 MB array per
    # 2048² RGB plane costs its page faults again each time)
    first = geom.source_index(0, 0, geom.height, 0, geom.width)
    scratch = None if direct else [np.empty(geom.to_cyx(o[first]).shape, np.float32) for o in outs]
    for o in outs:
        if not direct and o.dtype == np.float32:  # fault copy_into's new pages in on one thread (its threads: 5x)
            o.fill(0)
    for n in range(geom.n_planes):
        box = geom.region
        index = geom.source_index(n, 0, geom.height, 0, geom.width)
        raw = geom.read_unit(arr, n, 0, geom.height, 0, geom.width)
        into = [geom.to_cyx(o[index]) for o in outs] if direct else scratch
        result = yield from counted(rt.iter_unit(raw, (0, 0), box, plane=n, out=into), done, total)
        done += grid.count(box)
        if not direct:
            for o, res in zip(outs, result, strict=True):
                if o.dtype == np.float32:
                    copy_into(o[index], from_cyx(res, geom))
                else:
                    o[index] = from_cyx(to_dtype(res, o.dtype), geom)
    return outs


def copy_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` for float32 arrays of one shape in different memory orders (a plane's (C, h, w) result
    into a channel-last image): torch's strided copy runs on all intra-op threads, numpy's on one (a 2048² RGB
    plane: 4.5 against 15 ms on 2 cores). The bytes are the same."""
    import torch

    torch.from_numpy(dst).copy_(torch.from_numpy(src))


def flat_in_box(raw: np.ndarray, origin: tuple[int, int], box: Box) -> np.ndarray:
    """filters.flat_pixels of ``box`` in ``raw`` (C, h, w) at ``origin``, measured with the pixels around the box
    that ``raw`` holds (a unit's halo), so that a chunked job finds the same flat pixels as an in-memory one."""
    m = FLAT_SIDE - 1
    oy, ox = origin
    ry0, rx0 = max(box.y0 - oy - m, 0), max(box.x0 - ox - m, 0)
    ry1, rx1 = min(box.y1 - oy + m, raw.shape[-2]), min(box.x1 - ox + m, raw.shape[-1])
    flat = flat_pixels(raw[:, ry0:ry1, rx0:rx1])
    y0, x0 = box.y0 - oy - ry0, box.x0 - ox - rx0
    return flat[:, y0:y0 + box.y1 - box.y0, x0:x0 + box.x1 - box.x0]
