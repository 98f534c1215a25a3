"""Windows cut, normalised, batched and reassembled on the model's device (the GPU path of one unit of work).

Why: on a GPU the host-side window loop (:func:`~napari_atbsn.tiling.iter_box`) costs more than the
network. Each batch of windows was cut and normalised on the host, copied to the device through a freshly
pinned buffer, and each result copied back with a synchronisation before the next batch could be queued, so
the device idled between short bursts. Here a unit's source pixels go to the device once, in their own dtype
(a uint16 chunk moves half the bytes of its float32 copy), through a reused pinned buffer; casting,
normalisation, window extraction (one gather per batch), the network, the reassembly of the kept cores and
the mapping back to the data's units all run there, queued without waiting; and the finished unit comes
back in one copy. The host only waits once per unit.

The arithmetic is the host path's: the same float32 operations in the same order (cast, subtract the
offset, divide by the scale; multiply, add), the same windows in the same batches, so on the CPU the two
paths give the same bytes (tested), and on CUDA they differ only by the network's own kernels.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import NOISE_MAP, OutputKey
from ..device import is_oom
from ..tiling import Box, PlaneGrid

if TYPE_CHECKING:
    from .denoiser import Denoiser

# numpy dtypes torch can hold as they are; anything else (big-endian data, bool) is cast to float32 on the host
_TORCH_DTYPES = {np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.int64,
                                       np.float16, np.float32, np.float64)}


class StagingBuffers:
    """Reused page-locked host buffers for one thread's copies to and from the device.

    Pinning memory costs more than the copy it speeds up, and so does touching freshly allocated host memory
    on some machines (the first write to each page faults): a buffer is allocated once per thread and
    device, grown when a larger unit needs it, and kept for the process (:func:`staging_for`), never made
    per batch or per call. Each buffer is reused only after the unit that used it has been waited for
    (:func:`iter_box_on_device` ends with a synchronisation), so no copy in flight is overwritten.
    """

    def __init__(self, device: torch.device) -> None:
        self.pinned = device.type == "cuda"
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        n = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n:
            buf = torch.empty(max(n, 1), dtype=torch.uint8, pin_memory=self.pinned)
            self._buffers[name] = buf
        return buf[:n].view(dtype).view(tuple(shape))


_STAGING = threading.local()


def staging_for(device: torch.device) -> StagingBuffers:
    """This thread's staging buffers for ``device`` (made on first use, kept for the process)."""
    table = getattr(_STAGING, "table", None)
    if table is None:
        table = _STAGING.table = {}
    if device not in table:
        table[device] = StagingBuffers(device)
    return table[device]


def memory_order(a: np.ndarray) -> tuple[int, ...]:
    """The axes of ``a`` from the largest stride to the smallest: ``a.transpose(order)`` walks its memory in
    order (a channel-last plane seen as (C, Y, X) gives (1, 2, 0))."""
    return tuple(int(i) for i in sorted(range(a.ndim), key=lambda i: (-abs(a.strides[i]), i)))


def inverse(order: Sequence[int]) -> tuple[int, ...]:
    inv = [0] * len(order)
    for i, o in enumerate(order):
        inv[o] = i
    return tuple(inv)


def upload(region: np.ndarray, device: torch.device, staging: StagingBuffers) -> torch.Tensor:
    """A (C, h, w) host region on ``device`` in its own dtype (asynchronous on CUDA).

    The pixels cross in their memory order (a channel-last image as (h, w, C)) and are put back in (C, h, w)
    order on the device, as a view: no transposed copy is made on the host.
    """
    arr = np.asarray(region)
    if arr.dtype not in _TORCH_DTYPES or not arr.dtype.isnative:
        arr = arr.astype(np.float32)
    order = memory_order(arr)
    src = arr.transpose(order)
    if device.type != "cuda":
        return torch.from_numpy(np.ascontiguousarray(src)).to(device).permute(inverse(order))
    host = staging.get("in", src.shape, torch.from_numpy(src[:0]).dtype)
    np.copyto(host.numpy(), src)
    return host.to(device, non_blocking=True).permute(inverse(order))


def channel_constants(offset: Sequence[float], scale: Sequence[float], device: torch.device,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation's per-channel offset and scale as float32 (C, 1, 1) tensors on ``device``."""
    return tuple(torch.tensor(v, dtype=torch.float32, device=device).view(-1, 1, 1)  # type: ignore[return-value]
                 for v in (offset, scale))


def normalise_on_device(x: torch.Tensor, off: torch.Tensor, sc: torch.Tensor) -> torch.Tensor:
    """float32 ``(x - off) / sc`` per channel of a (C, h, w) tensor (:func:`channel_constants`): the host
    path's arithmetic."""
    # a copy on the CPU, where the tensor may share the caller's memory; on CUDA it is the upload's own
    return x.to(torch.float32, copy=x.device.type == "cpu").sub_(off).div_(sc)


def iter_box_on_device(model: Denoiser, ks: Sequence[OutputKey], grid: PlaneGrid, region: np.ndarray,
                       read_origin: tuple[int, int], box: Box, *, batch_size: Callable[[], int],
                       on_oom: Callable[[BaseException, int], None], staging: StagingBuffers,
                       out: Sequence[np.ndarray] | None = None) -> Generator[int, None, Any]:
    """Compute one chunk on the model's device: yields the windows done; returns K float32 (C', h, w) arrays
    in the data's units (written into ``out`` when given).

    ``region`` holds the raw source pixels the chunk's windows read (``grid.read_box(box)``, placed at
    ``read_origin``); ``batch_size()`` is the current windows per network call and ``on_oom(error, tried)``
    shrinks it after the device ran out of memory (the batch is then retried).

    All of the unit's batches are queued before the host waits (once, for the result), and progress is
    reported once per unit: a yield between batches would leave the unit's autocast region open while the
    caller runs, and a unit on a GPU takes a fraction of a second.
    """
    from ..device import autocast

    device = model.device
    norm = model.normalization
    ys, xs = grid.windows(box)
    todo = list(itertools.product(ys, xs))
    # made before the unit's work is queued: a small copy from pageable memory waits for the device's queue
    off, sc = channel_constants(norm.offset, norm.scale, device)
    # a stack-context input carries its neighbours' channels too: the same constants, repeated for each plane (a
    # plane alone, the 2-D mode, has its own only)
    in_norm = model.normalization_for(region.shape[0])
    off_in, sc_in = (off, sc) if in_norm is norm else channel_constants(in_norm.offset, in_norm.scale, device)
    # one autocast region for the whole unit: autocast keeps its low-precision copies of the weights until
    # the outermost region ends, so they are cast once per unit instead of once per batch
    with torch.no_grad(), autocast(device, model.amp):
        x = normalise_on_device(upload(region, device, staging), off_in, sc_in)
        result = _run_unit(model, ks, grid, x, read_origin, box, todo, batch_size, on_oom)
        for r, k in zip(result, ks, strict=True):
            r.mul_(sc)
            if k != NOISE_MAP:  # a noise standard deviation scales; an image also shifts
                r.add_(off)
    values = download(result, staging, out)
    yield len(todo)
    return values


def _run_unit(model: Denoiser, ks: Sequence[OutputKey], grid: PlaneGrid, x: torch.Tensor,
              read_origin: tuple[int, int], box: Box, todo: list[tuple[int, int]], batch_size: Callable[[], int],
              on_oom: Callable[[BaseException, int], None]) -> torch.Tensor:
    """Queue the unit's windows, cut from its normalised source region ``x`` (C, h, w) on the device, through
    the network; the (K, C', h, w) float32 result, still normalised."""
    device = model.device
    w = grid.window
    ph, pw = max(w - x.shape[-2], 0), max(w - x.shape[-1], 0)
    if ph or pw:  # a plane smaller than the window: padded with normalised zeros, as on the host
        x = torch.nn.functional.pad(x, (0, pw, 0, ph))
    ry0, rx0 = read_origin
    # every window's first row and column in the region, sent once (a small copy from pageable memory waits
    # for the device, so none is made per batch)
    starts = np.array([(grid.y.starts[iy] - ry0, grid.x.starts[ix] - rx0) for iy, ix in todo], dtype=np.int64)
    starts_d = torch.from_numpy(starts).to(device)
    span = torch.arange(w, device=device)
    result: torch.Tensor | None = None
    i = 0
    while i < len(todo):
        b = batch_size()
        batch = todo[i:i + b]
        sel = starts_d[i:i + len(batch)]
        rows = (sel[:, 0, None] + span)[:, :, None]   # (B, w, 1)
        cols = (sel[:, 1, None] + span)[:, None, :]   # (B, 1, w)
        tiles = x[:, rows, cols].transpose(0, 1)      # (B, C, w, w): one gather for the whole batch
        if model.compiled and len(batch) < b:
            # a compiled network keeps one graph for one batch shape: a unit's short last batch, padded with
            # zero windows whose outputs are dropped, costs a little arithmetic instead of a recompilation
            tiles = torch.cat([tiles, tiles.new_zeros((b - len(batch), *tiles.shape[1:]))])
        try:
            res = model.forward_windows(tiles, ks)
        except (RuntimeError, MemoryError) as e:
            if not is_oom(e):
                raise
            on_oom(e, len(tiles))  # the windows the call had, padding included
            continue
        if result is None:
            result = torch.empty((res.shape[0], res.shape[2], *box.shape), dtype=torch.float32, device=device)
        for n, (wy, wx) in enumerate(batch):
            (dy, dx), (sy, sx) = grid.core_in(box, wy, wx)  # the part of its kept core in the chunk
            result[:, :, dy, dx] = res[:, n, :, sy, sx]
        i += len(batch)
    assert result is not None  # a non-empty box always needs at least one window
    return result


def download(result: torch.Tensor, staging: StagingBuffers, out: Sequence[np.ndarray] | None) -> Any:
    """The (K, C, h, w) device result on the host, in one copy: into ``out`` when given, else new arrays.

    ``out`` arrays are written in their own memory order (the result is permuted to it on the device), so a
    channel-last image receives a sequential copy rather than a transposition on the host.
    """
    order = memory_order(out[0]) if out is not None else (0, 1, 2)
    if out is not None and any(memory_order(o) != order for o in out):
        order = (0, 1, 2)
    staged = result.permute(0, *(1 + o for o in order))
    if result.device.type == "cuda":
        host = staging.get("out", staged.shape, torch.float32)
        host.copy_(staged, non_blocking=True)
        torch.cuda.current_stream(result.device).synchronize()
        values = host.numpy()
        if out is None:
            return list(values.copy())  # the staging buffer is reused by the next unit
    else:
        values = staged.contiguous().numpy() if out is not None else result.numpy()
        if out is None:
            return list(values)
    for o, v in zip(out, values, strict=True):
        np.copyto(o.transpose(order), v)
    return out
