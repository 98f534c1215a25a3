"""Running the network on the windows of one unit of work, with a batch size that backs off when the
device runs out of memory."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..config import OutputKey
from ..device import is_oom
from ..errors import DeviceError, ImageError
from ..tiling import Box, PlaneGrid, iter_box
from .geometry import Geometry

if TYPE_CHECKING:
    from .denoiser import Denoiser


class Runtime:
    """A model ready to compute units, with a batch size that backs off when the device runs out of memory."""

    def __init__(self, model: Denoiser, ks: Sequence[OutputKey], geom: Geometry, window: int, halo: int,
                 batch_size: int, on_backoff: Callable[[str], None] | None = None) -> None:
        self.model, self.ks = model, list(ks)
        self.grid = PlaneGrid.of(geom.height, geom.width, window, halo)
        self.batch_size = batch_size
        self.on_backoff = on_backoff
        self._lock = threading.Lock()

    def windows(self, tiles: np.ndarray) -> np.ndarray:
        """(B, C, w, w) normalised windows -> (K, B, C, w, w), in sub-batches of the current batch size."""
        parts, i = [], 0
        while i < len(tiles):
            b = self.batch_size
            try:
                parts.append(self.model.run_windows(tiles[i:i + b], self.ks))
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

    def iter_unit(self, raw: np.ndarray, origin: tuple[int, int], box: Box) -> Generator[int, None, np.ndarray]:
        """Denoise ``box`` from ``raw``, the (C, h, w) source pixels at ``origin`` that its windows need.

        Yields windows done per batch; returns the (K, C, h, w) float32 result in the data's own range.
        """
        if not np.all(np.isfinite(raw)):
            raise ImageError(f"the image contains NaN or Inf pixels near rows {box.y0}..{box.y1}, columns "
                             f"{box.x0}..{box.x1}; replace them (e.g. with the local median) before denoising.")
        norm = self.model.normalization
        normed = norm.apply(raw.astype(np.float32, copy=False))
        oy, ox = origin

        def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            return normed[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox]

        result = yield from iter_box(self.windows, read, self.grid, box, batch_size=self.batch_size)
        return np.stack([self.model.undo_output(r, k) for r, k in zip(result, self.ks, strict=True)])


def counted(gen: Generator[int, None, np.ndarray], done: int, total: int,
             ) -> Generator[tuple[int, int], None, np.ndarray]:
    """Re-yield a unit's windows-per-batch as running ``(done, total)`` progress; return its result."""
    try:
        while True:
            done += next(gen)
            yield done, total
    except StopIteration as stop:
        return stop.value


def auto_batch_size(model: Denoiser) -> int:
    """Windows per network call: a few on CPU (no gain beyond), as many as half the free GPU memory allows."""
    import torch

    if model.device.type != "cuda":
        return 4
    probe = np.zeros((1, model.in_channels, model.patch, model.patch), np.float32)
    # a first call pays cuDNN's autotuning (its trial workspaces) and any compilation: measure the second
    model.run_windows(probe, [None])
    free, _ = torch.cuda.mem_get_info(model.device)
    torch.cuda.reset_peak_memory_stats(model.device)
    base = torch.cuda.memory_allocated(model.device)
    model.run_windows(probe, [None])
    per_window = max(1, torch.cuda.max_memory_allocated(model.device) - base)
    return int(max(1, min(64, free * 0.5 // per_window)))
