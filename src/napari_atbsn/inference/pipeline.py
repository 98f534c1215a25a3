"""Chunked, resumable denoising of images of any size: the engine behind ``atbsn denoise``.

The output is cut into chunks (:mod:`napari_atbsn.tiling`), one plane at a
time; a *unit* of work is one chunk of one plane. A unit reads only the
region its windows need, runs them through the network in batches and
writes one storage chunk of each output (:mod:`napari_atbsn.io.outputs`). Units
are independent, so they run in process (``sync``), on dask threads, on dask
worker processes or on a dask.distributed cluster with the same result;
finished units are recorded, so an interrupted job resumes where it stopped.

Memory is bounded by the chunk size, never by the volume: the source is a
lazy array (:func:`napari_atbsn.io.readers.open_image`) and outputs are written
chunk by chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..axes import PLANE_LETTERS
from ..device import is_oom
from ..errors import BlindSpotError, ConfigError, DeviceError, ImageError, WriteError
from ..events import drain
from ..io.outputs import OutputStore, file_axes, outputs_for, store_axes
from ..tiling import Box, PlaneGrid, check_window, chunk_boxes, default_halo, iter_box
from ..version import __version__

if TYPE_CHECKING:
    from ..io.readers import LazyImage
    from .denoiser import Denoiser

OUTPUT_DTYPES = ("float32", "input")
MAX_CHUNK = 2048  # storage chunks beyond 2048^2 float32 (16 MB per channel) only slow readers down
MEMORY_FRACTION = 0.25  # of the available RAM, shared by the workers, for chunk buffers
JOB_FORMAT = 1

Progress = Callable[[int, int], None]


# -- geometry -------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """An image seen as planes: which axes index planes, the plane size, and the output region."""

    axes: str
    shape: tuple[int, ...]
    region: Box  # output rows/columns of each plane (the whole plane, or the ROI)

    @classmethod
    def of(cls, axes: str, shape: Sequence[int], region: Box | None = None) -> Geometry:
        h, w = int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        if min(shape) == 0:
            raise ImageError(f"the image has an empty dimension (shape {tuple(shape)}, axes {axes}).")
        return cls(axes, tuple(int(s) for s in shape), region or Box(0, h, 0, w))

    @property
    def plane_axes(self) -> str:
        return "".join(a for a in self.axes if a in PLANE_LETTERS)

    @property
    def plane_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[self.axes.index(a)] for a in self.plane_axes)

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.plane_shape)) if self.plane_shape else 1

    @property
    def channels(self) -> int:
        return self.shape[self.axes.index("C")] if "C" in self.axes else 1

    @property
    def height(self) -> int:
        return self.shape[self.axes.index("Y")]

    @property
    def width(self) -> int:
        return self.shape[self.axes.index("X")]

    def plane_index(self, n: int) -> dict[str, int]:
        idx = np.unravel_index(n, self.plane_shape) if self.plane_shape else ()
        return {a: int(i) for a, i in zip(self.plane_axes, idx, strict=True)}

    def out_shape(self) -> tuple[int, ...]:
        """Output shape in the input's axes order (Y, X cut to the region)."""
        sizes = {"Y": self.region.y1 - self.region.y0, "X": self.region.x1 - self.region.x0}
        return tuple(sizes.get(a, s) for a, s in zip(self.axes, self.shape, strict=True))

    def source_index(self, n: int, y0: int, y1: int, x0: int, x1: int) -> tuple[Any, ...]:
        """Index into the source for rows/columns of plane n (all channels)."""
        plane = self.plane_index(n)
        spans = {"Y": slice(y0, y1), "X": slice(x0, x1)}
        return tuple(plane[a] if a in plane else spans.get(a, slice(None)) for a in self.axes)

    def to_cyx(self, block: np.ndarray) -> np.ndarray:
        """A block indexed by :meth:`source_index` as (C, h, w)."""
        rest = [a for a in self.axes if a in "CYX"]
        block = np.transpose(block, [rest.index(a) for a in "CYX" if a in rest])
        return block if "C" in rest else block[None]


def read_block(data: Any, index: tuple[Any, ...]) -> np.ndarray:
    """Pixels of a numpy/dask/zarr-like array; dask runs in this thread (no nested pools)."""
    block = data[index]
    if hasattr(block, "compute"):
        block = block.compute(scheduler="synchronous")
    return np.asarray(block)


def to_dtype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 output as ``dtype``: integers are rounded and clipped to their range."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return x.astype(dtype, copy=False)


# -- running the network on one chunk ---------------------------------------------------------
class Runtime:
    """A model ready to compute units, with a batch size that backs off when the device runs out of memory."""

    def __init__(self, model: Denoiser, ks: Sequence[int | None], grid: PlaneGrid, batch_size: int,
                 on_backoff: Callable[[str], None] | None = None) -> None:
        self.model, self.ks, self.grid = model, list(ks), grid
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


def _counted(gen: Generator[int, None, np.ndarray], done: int, total: int,
             ) -> Generator[tuple[int, int], None, np.ndarray]:
    """Re-yield a unit's windows-per-batch as running ``(done, total)`` progress; return its result."""
    try:
        while True:
            done += next(gen)
            yield done, total
    except StopIteration as stop:
        return stop.value


# -- in-memory denoising (napari layers, notebooks) ----------------------------------------------
def iter_denoise_array(model: Denoiser, arr: np.ndarray, axes: str, *, ks: Sequence[int | None],
                       batch_size: int, dtype: str) -> Generator[tuple[int, int], None, list[np.ndarray]]:
    """Denoise an in-memory array plane by plane (each plane one chunk); returns one array per k."""
    geom = Geometry.of(axes, arr.shape)
    grid = PlaneGrid.of(geom.height, geom.width, model.patch, model.halo)
    rt = Runtime(model, ks, grid, batch_size)
    out_dtype = arr.dtype if dtype == "input" else np.dtype(np.float32)
    outs = [np.empty(arr.shape, dtype=output_dtype(k, out_dtype)) for k in ks]
    total = geom.n_planes * grid.count(geom.region)
    done = 0
    for n in range(geom.n_planes):
        box = geom.region
        index = geom.source_index(n, 0, geom.height, 0, geom.width)
        raw = geom.to_cyx(read_block(arr, index))
        result = yield from _counted(rt.iter_unit(raw, (0, 0), box), done, total)
        done += grid.count(box)
        for o, res in zip(outs, result, strict=True):
            o[index] = _from_cyx(to_dtype(res, o.dtype), geom)
    return outs


def _from_cyx(res: np.ndarray, geom: Geometry) -> np.ndarray:
    """(C, h, w) back to the order of the source's C/Y/X axes (inverse of Geometry.to_cyx)."""
    rest = [a for a in geom.axes if a in "CYX"]
    if "C" not in rest:
        return res[0]
    order = [a for a in "CYX" if a in rest]
    return np.transpose(res, [order.index(a) for a in rest])


# -- the job -------------------------------------------------------------------------------------
@dataclass
class DenoiseResult:
    """What a written denoise produced."""

    paths: list[Path]
    k_bs: list[int | None]
    complete: bool
    units_total: int
    units_computed: int
    units_resumed: int
    seconds: float
    chunk: int
    batch_size: int
    messages: list[str] = field(default_factory=list)

    def open(self, i: int = 0) -> LazyImage:
        """The i-th output, opened lazily."""
        from ..io.readers import open_image

        return open_image(self.paths[i])


@dataclass(frozen=True)
class ModelRef:
    """How a worker process gets the model: the folder it came from, checked by fingerprint."""

    path: str
    device: str
    fingerprint: str
    amp: bool = True
    compile: bool = False

    def load(self) -> Denoiser:
        from .denoiser import load_model

        model = load_model(self.path, device=self.device, amp=self.amp, compile=self.compile)
        if model.fingerprint() != self.fingerprint:
            raise ConfigError(f"the model folder {self.path} changed while the job was running; run it again.")
        return model


@dataclass(frozen=True)
class UnitSpec:
    """Everything a worker needs for units of one job (small and picklable; the model travels by path)."""

    token: str
    model: ModelRef
    ks: tuple[int | None, ...]
    geom: Geometry
    window: int
    halo: int
    batch_size: int
    out_dtype: str
    stores: tuple[str, ...]  # the work stores' level-0 arrays, one per k
    store_axes: str
    torch_threads: int


# Per-process runtimes, keyed by job token: threads share the caller's, worker processes build their own.
_RUNTIMES: dict[str, tuple[Runtime, list[Any]]] = {}
_RUNTIMES_LOCK = threading.Lock()


def _runtime(spec: UnitSpec) -> tuple[Runtime, list[Any]]:
    with _RUNTIMES_LOCK:
        if spec.token not in _RUNTIMES:
            import torch
            import zarr

            if spec.torch_threads:
                torch.set_num_threads(spec.torch_threads)
            grid = PlaneGrid.of(spec.geom.height, spec.geom.width, spec.window, spec.halo)
            rt = Runtime(spec.model.load(), spec.ks, grid, spec.batch_size)
            arrays = [zarr.open_array(p, mode="r+") for p in spec.stores]
            _RUNTIMES[spec.token] = (rt, arrays)
        return _RUNTIMES[spec.token]


def unit_key(n: int, box: Box) -> str:
    return f"{n}_{box.y0}_{box.x0}"


def store_index(spec: UnitSpec, n: int, box: Box) -> tuple[Any, ...]:
    """Where a unit goes in a work store (store axes order, Y/X relative to the region)."""
    plane = spec.geom.plane_index(n)
    r = spec.geom.region
    spans = {"Y": slice(box.y0 - r.y0, box.y1 - r.y0), "X": slice(box.x0 - r.x0, box.x1 - r.x0), "C": slice(None)}
    return tuple(plane[a] if a in plane else spans[a] for a in spec.store_axes)


def output_dtype(k: Any, dtype: np.dtype) -> np.dtype:
    """The noise map is a standard deviation: always float32, whatever the image's output type."""
    from ..config import NOISE_MAP

    return np.dtype(np.float32) if k == NOISE_MAP else np.dtype(dtype)


def write_unit(spec: UnitSpec, arrays: list[Any], n: int, box: Box, result: np.ndarray) -> None:
    idx = store_index(spec, n, box)
    key = unit_key(n, box)
    for arr, store, res, k in zip(arrays, spec.stores, result, spec.ks, strict=True):
        data = to_dtype(res, output_dtype(k, np.dtype(spec.out_dtype)))
        try:
            arr[idx] = data if "C" in spec.store_axes else data[0]
            # the marker comes only after the chunk is fully stored: a marker never lies
            (Path(store).parent / ".atbsn-done" / key).touch()
        except OSError as e:
            # A chunk half-written without its marker is simply computed again on resume.
            raise WriteError(f"could not store a chunk in {Path(store).parent}: {e.strerror or e}. Free space "
                             f"(or fix permissions) and run the same command again: the finished chunks are "
                             f"kept and not recomputed.") from None


def run_unit(spec: UnitSpec, n: int, box: Box, origin: tuple[int, int], raw: np.ndarray) -> int:
    """A dask task: compute one unit from its source pixels and store it. Returns windows done."""
    rt, arrays = _runtime(spec)
    result = drain(rt.iter_unit(spec.geom.to_cyx(raw), origin, box))
    write_unit(spec, arrays, n, box, result)
    return rt.grid.count(box)


# -- choosing sizes ---------------------------------------------------------------------------
def available_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency; keep a floor for odd platforms
        return 2 << 30


def auto_chunk(window: int, halo: int, channels: int, n_outputs: int, workers: int, region: Box,
               memory: int | None = None) -> int:
    """Largest chunk (a multiple of the window's kept core) whose buffers fit a share of the free RAM.

    Per unit: the source region (chunk plus up to a window on each side) as
    raw, float32 and normalised copies, and each output in float32 and its
    final type.
    """
    memory = available_memory() if memory is None else memory
    budget = memory * MEMORY_FRACTION / max(1, workers)
    core = window - 2 * halo
    side = max(region.shape)
    limit = min(MAX_CHUNK, -(-side // core) * core)
    best = core
    c = core
    while c <= limit:
        need = 4 * channels * (3 * (c + 2 * window) ** 2 + 2 * n_outputs * c * c)
        if need > budget:
            break
        best = c
        c += core
    return best if side >= core else side


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


# -- scheduling --------------------------------------------------------------------------------------
SCHEDULERS = ("sync", "threads", "processes")


def check_scheduler(scheduler: str) -> str:
    if scheduler in SCHEDULERS or (isinstance(scheduler, str) and scheduler.startswith("tcp://")):
        return scheduler
    raise ConfigError(f"scheduler={scheduler!r}; use sync, threads, processes or tcp://HOST:PORT "
                      f"(a running dask.distributed scheduler).")


@dataclass
class Job:
    """A planned denoise of ``source`` to ``paths`` (validated; nothing computed or written yet)."""

    source: LazyImage
    model: Denoiser
    geom: Geometry
    ks: list[int | None]
    window: int
    halo: int
    chunk: int
    batch_size: int
    out_dtype: np.dtype
    paths: list[Path]
    stores: list[OutputStore]
    record: dict[str, Any]
    chunk_given: bool
    batch_given: bool

    @property
    def grid(self) -> PlaneGrid:
        return PlaneGrid.of(self.geom.height, self.geom.width, self.window, self.halo)

    def units(self) -> list[tuple[int, Box]]:
        boxes = chunk_boxes(self.geom.region, (self.chunk, self.chunk))
        return [(n, b) for n in range(self.geom.n_planes) for b in boxes]


def _roi_box(source: LazyImage, roi: dict[str, slice] | None) -> tuple[LazyImage, Box | None, dict[str, list]]:
    """Crop the plane axes lazily; Y/X stay whole (context for the windows) and become the output region."""
    if not roi:
        return source, None, {}
    roi = {a.upper(): (slice(s, s + 1) if isinstance(s, int | np.integer) else s) for a, s in roi.items()}
    plane_roi = {a: s for a, s in roi.items() if a not in "YX"}
    yx = {a: s for a, s in roi.items() if a in "YX"}
    cropped = source.crop(plane_roi) if plane_roi else source
    h, w = cropped.shape[cropped.axes.index("Y")], cropped.shape[cropped.axes.index("X")]
    if yx:
        cropped.crop(yx)  # only to validate the ranges, with the reader's messages
        ry = yx.get("Y", slice(0, h)).indices(h)
        rx = yx.get("X", slice(0, w)).indices(w)
        box = Box(ry[0], ry[1], rx[0], rx[1])
    else:
        box = None
    record = {a: list(s.indices(source.shape[source.axes.index(a)])[:2]) for a, s in roi.items()}
    return cropped, box, record


def _input_record(source: LazyImage) -> dict[str, Any]:
    rec: dict[str, Any] = {"source": source.source, "format": source.format, "shape": list(source.shape),
                           "dtype": str(source.dtype), "axes": source.axes}
    p = Path(source.source)
    if not source.source.startswith("<") and p.exists():
        rec["source"] = str(p.resolve())
        if p.is_file():  # a changed file must not be resumed into an old partial output
            st = p.stat()
            rec["stat"] = [st.st_size, st.st_mtime_ns]
    elif source.source == "<numpy>":
        # an in-memory array has no file to stat: a strided sample of about a million values tells two
        # same-shaped arrays (two napari layers) apart, so one is never resumed into the other's output
        k = max(2, round((1 << 20) ** (1 / len(source.shape))))
        index = tuple(slice(None, None, max(1, s // k)) for s in source.shape)
        sample = np.ascontiguousarray(np.asarray(source.data[index]))
        rec["sample_sha256"] = hashlib.sha256(sample.tobytes()).hexdigest()
    return rec


IDENTITY_KEYS = ("input", "roi", "model", "k_b", "window", "halo", "dtype")


def plan_job(source: Any, model: Denoiser, out: str | os.PathLike, *, axes: str | None = None,
             k_b: int | Sequence[int] | None = None, roi: dict[str, slice] | str | None = None,
             chunk: int | None = None, window: int | None = None, halo: int | None = None,
             batch_size: int | None = None, dtype: str = "float32", overwrite: bool = False,
             workers: int = 1, noise_map: bool = False) -> Job:
    """Validate everything and decide sizes; raises before anything is written."""
    lazy, cropped, geom, roi_record, ks, window, halo = _resolve(source, model, axes=axes, k_b=k_b, roi=roi,
                                                                 window=window, halo=halo, dtype=dtype,
                                                                 noise_map=noise_map)
    for name, v in (("chunk", chunk), ("batch_size", batch_size)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{name}={v!r} must be a positive integer.")
    if window > 8 * model.patch or window < model.patch // 2:
        raise ConfigError(f"window={window} is far from the model's training patch {model.patch}; the networks "
                          f"are not size-invariant (method.md Decision 8). Use a window near {model.patch}.")
    out_dtype = np.dtype(np.float32) if dtype == "float32" else np.dtype(lazy.dtype)
    paths = outputs_for(out, ks)
    stores = [OutputStore(p) for p in paths]
    st_axes = store_axes(geom.axes, ngff=any(s.kind == "zarr" for s in stores))
    src_path = Path(lazy.source).resolve() if not lazy.source.startswith("<") else None
    for s in stores:
        if src_path is not None and s.final.resolve() == src_path:
            raise WriteError(f"the output {s.final} is the input; choose another output path.")
        s.check(overwrite=overwrite)
    check_free_space(stores, ks, geom, out_dtype)
    record = {"format": JOB_FORMAT, "input": _input_record(lazy), "roi": roi_record,
              "model": {"name": model.name, "path": str(model.path) if model.path else None,
                        "fingerprint": model.fingerprint()},
              "window": window, "halo": halo, "dtype": str(out_dtype), "axes": st_axes,
              "napari_atbsn": __version__}
    job = Job(cropped, model, geom, ks, window, halo, chunk or 0, batch_size or 0, out_dtype, paths, stores, record,
              chunk is not None, batch_size is not None)
    if not chunk:
        job.chunk = auto_chunk(window, halo, geom.channels, len(ks), workers, geom.region)
    if not batch_size:
        job.batch_size = auto_batch_size(model)
    return job


def _bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_free_space(stores: Sequence[OutputStore], ks: Sequence[Any], geom: Geometry, dtype: np.dtype) -> None:
    """Refuse up front what cannot fit, instead of failing hours in with a full disk.

    A TIFF or .npy output needs its work store plus the final file, each about the raw size; a Zarr output
    is its work store renamed, counted at the raw size plus a third for the pyramid (denoised float data
    compresses little). What a resumed job's work store already holds on disk is not asked for again.
    """
    import shutil

    pixels = int(np.prod(geom.out_shape(), dtype=np.int64))
    need: dict[Path, int] = {}
    for store, k in zip(stores, ks, strict=True):
        raw = pixels * output_dtype(k, dtype).itemsize
        total = 2 * raw if store.kind != "zarr" else raw * 4 // 3
        folder = store.final.parent.resolve()
        need[folder] = need.get(folder, 0) + max(0, total - _disk_usage(store.work))
    for folder, n in need.items():
        free = shutil.disk_usage(folder).free
        if n > free:
            raise WriteError(f"the output needs about {_bytes(n)} more in {folder} but only {_bytes(free)} is "
                             f"free; free space, write to another disk, or use an .ome.zarr output (no second "
                             f"copy).")


def _disk_usage(folder: Path) -> int:
    """Bytes a (work store) folder takes on disk; 0 if it does not exist."""
    total = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


def _resolve(source: Any, model: Denoiser, *, axes: str | None, k_b: int | Sequence[int] | None,
             roi: dict[str, slice] | str | None, window: int | None, halo: int | None, dtype: str,
             noise_map: bool) -> tuple[LazyImage, LazyImage, Geometry, dict[str, list], list[Any], int, int]:
    """What a written and a lazy denoise both decide first: the source, its ROI geometry, the outputs and the
    window. Returns (source, source cropped to the ROI's planes, geometry, ROI record, outputs, window, halo)."""
    from ..io.readers import open_image, parse_roi

    lazy = open_image(source, axes)
    if isinstance(roi, str):
        roi = parse_roi(roi, lazy.axes)
    ks = resolve_ks(model, k_b, noise_map)
    if dtype not in OUTPUT_DTYPES:
        raise ConfigError(f"dtype={dtype!r}; choose float32 or input.")
    window = model.patch if window is None else window
    halo = (model.halo if window == model.patch else default_halo(window)) if halo is None else halo
    check_window(window, halo)
    for k in ks:
        # The shift s = (k + 1) // 2 must leave pixels in each window (the network refuses later otherwise,
        # after the output was set up).
        if isinstance(k, int) and (k + 1) // 2 >= window:
            raise BlindSpotError(f"k_b={k} is too large for {window}-pixel windows: its blind spot would cover "
                                 f"the whole window. Use k_b <= {2 * window - 3} (the paper uses 3).")
    cropped, box, roi_record = _roi_box(lazy, roi)
    geom = Geometry.of(cropped.axes, cropped.shape, box)
    if geom.channels != model.in_channels:
        raise ImageError(f"the image has {geom.channels} channel(s) (axes {geom.axes}, shape {geom.shape}) but the "
                         f"model expects {model.in_channels}; check --axes or use a model trained on such data.")
    return lazy, cropped, geom, roi_record, ks, window, halo


def resolve_ks(model: Denoiser, k_b: int | Sequence[int] | None, noise_map: bool = False) -> list[Any]:
    """The outputs to compute: one per k_b (teachers), the image (students, D-BSN), plus D-BSN's noise map."""
    from ..config import NOISE_MAP, check_k

    if noise_map and model.kind != "dbsn":
        raise ConfigError(f"a noise map comes from a D-BSN model's noise estimator; {model.name} has none. "
                          f"Train one with 'atbsn train --method dbsn', or leave out --save-noise-map.")
    extra = [NOISE_MAP] if noise_map else []
    if k_b is None:
        return [model.k_b if model.kind == "atbsn" else None, *extra]
    if model.kind == "dbsn":
        raise BlindSpotError("k_b applies to AT-BSN teachers; D-BSN's blind spot is always one pixel (its noise "
                             "model restores the pixel's own value). Leave k_b unset.")
    if model.kind != "atbsn":
        raise BlindSpotError("k_b applies to AT-BSN teachers; a distilled student has no blind spot. Leave k_b unset.")
    ks = [k_b] if isinstance(k_b, int | np.integer) else list(k_b)
    if not ks:
        raise BlindSpotError("k_b is empty; give at least one blind-spot size, e.g. 3.")
    if len(set(ks)) != len(ks):
        raise BlindSpotError(f"k_b={ks} repeats a value; give each blind-spot size once.")
    return [check_k(int(k), name="k_b") for k in ks]


def _store_record(job: Job, k: int | None) -> dict[str, Any]:
    rec = dict(job.record)
    rec.update(k_b=k, chunk=job.chunk, batch_size=job.batch_size)
    return rec


def _prepare_stores(job: Job, overwrite: bool) -> None:
    """Create each output's work store, or adopt the one an earlier run of the same job left.

    A partial output of a different job is refused, or with ``overwrite`` started over; a partial output of
    the same job is always continued (``overwrite`` is about replacing finished outputs, not progress).
    """
    existing: list[dict[str, Any] | None] = []
    for s, k in zip(job.stores, job.ks, strict=True):
        old = s.job()
        if old is not None:
            mine = _store_record(job, k)
            differs = [key for key in IDENTITY_KEYS if old.get(key) != mine.get(key)]
            sizes = [key for key, given in (("chunk", job.chunk_given), ("batch_size", job.batch_given))
                     if given and old.get(key) != mine[key]]
            if differs and not overwrite:
                raise WriteError(f"{s.work} holds a partial output of a different job (its {', '.join(differs)} "
                                 f"differ); run the original command to finish it, or pass --overwrite to start "
                                 f"over.")
            if sizes and not overwrite:
                key = sizes[0]
                raise WriteError(f"{s.work} is a partial output made with {key}={old.get(key)}; resume with the "
                                 f"same value (or leave it out), or pass --overwrite to start over.")
            if differs or sizes:
                old = None  # started over below
        existing.append(old)
    # a resumed job keeps the sizes it started with, so its chunks match byte for byte
    adopted = next((old for old in existing if old is not None), None)
    if adopted is not None:
        job.chunk, job.batch_size = int(adopted["chunk"]), int(adopted["batch_size"])
    # outputs left by earlier runs with another chunk grid cannot share units with this one: start them over
    existing = [old if old is not None and int(old["chunk"]) == job.chunk else None for old in existing]
    st_axes = job.record["axes"]
    shape = _store_shape(job.geom, st_axes)
    chunks = tuple(job.chunk if a in "YX" else (job.geom.channels if a == "C" else 1) for a in st_axes)
    chunks = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
    for s, old, k in zip(job.stores, existing, job.ks, strict=True):
        if old is None:
            s.create(_store_record(job, k), shape=shape, chunks=chunks, dtype=str(output_dtype(k, job.out_dtype)))


def _store_shape(geom: Geometry, st_axes: str) -> tuple[int, ...]:
    out = dict(zip(geom.axes, geom.out_shape(), strict=True))
    return tuple(out[a] for a in st_axes)


@contextlib.contextmanager
def _output_lock(job: Job) -> Iterator[None]:
    """One writer per output: a second ``atbsn denoise`` to the same output stops with a clear error.

    An advisory lock on ``.NAME.lock`` (released by the OS if the process dies). The file is removed at the
    end; a run that locked a file just removed sees its inode differ from the path's and opens it afresh.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks; users must not start two jobs
        yield
        return
    held = []
    try:
        for s in job.stores:
            path = s.final.with_name(f".{s.final.name}.lock")
            for _attempt in range(5):
                try:
                    f = open(path, "a+")  # noqa: SIM115 - held for the whole job
                except OSError as e:
                    raise WriteError(f"cannot create {path} next to the output: {e.strerror or e}; choose an "
                                     f"output folder you can write to.") from None
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    f.close()
                    raise WriteError(f"another atbsn denoise is writing {s.final}; wait for it or choose another "
                                     f"output.") from None
                try:
                    same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    held.append((path, f))
                    break
                f.close()  # the holder removed it as we opened it: try the new file
            else:
                raise WriteError(f"could not lock {path}; another atbsn denoise keeps recreating it.")
        yield
    finally:
        for path, f in held:
            with contextlib.suppress(OSError):
                path.unlink()  # still holding the lock: nobody else can be inside
            f.close()


def record_precision(job: Job, worker_device: str | None) -> None:
    """Mixed precision changes the values: a resumed output must not mix its chunks with float32 ones, so it
    joins the job's identity. Recorded only where it takes effect (CUDA, or workers that pick their own
    device), so CPU jobs resume as before."""
    compute_on = worker_device or str(job.model.device)
    if job.model.amp and (compute_on.startswith("cuda") or compute_on == "auto"):
        job.record["model"]["mixed_precision"] = True


def iter_run(job: Job, *, overwrite: bool = False, scheduler: str = "sync", workers: int = 1,
             should_stop: Callable[[], bool] | None = None, log: Callable[[str], None] | None = None,
             worker_device: str | None = None) -> Generator[tuple[int, int], None, DenoiseResult]:
    """Run a planned job; yields (windows_done, windows_total); returns the :class:`DenoiseResult`.

    Stopping (``should_stop``) or killing the process leaves a partial output
    that the same call continues. ``worker_device`` is the device worker
    processes load the model on (default: the job model's own), e.g. ``cuda``
    on GPU nodes of a cluster whose client runs on a CPU-only login node.
    """
    check_scheduler(scheduler)
    if scheduler != "sync" and job.model.path is None:
        raise ConfigError(f"scheduler={scheduler!r} sends the model to worker processes by its folder; save the "
                          f"model (save_folder) and load it with load_model, or use scheduler='sync'.")
    t0 = time.perf_counter()
    should_stop = should_stop or (lambda: False)
    messages: list[str] = []

    def say(msg: str) -> None:
        messages.append(msg)
        if log:
            log(msg)

    record_precision(job, worker_device)
    with _output_lock(job):
        _prepare_stores(job, overwrite)
        done_keys = set.intersection(*[s.done() for s in job.stores])
        grid = job.grid
        units = job.units()
        todo = [(n, b) for n, b in units if unit_key(n, b) not in done_keys]
        total = sum(grid.count(b) for _, b in units)
        done = total - sum(grid.count(b) for _, b in todo)
        if len(todo) < len(units):
            say(f"resuming: {len(units) - len(todo)} of {len(units)} chunks already done")
        yield done, total
        model_path = str(Path(job.model.path).resolve()) if job.model.path else ""
        spec = UnitSpec(uuid.uuid4().hex, ModelRef(model_path, worker_device or str(job.model.device),
                                                   job.model.fingerprint() if scheduler != "sync" else "",
                                                   job.model.amp, job.model.compiled),
                        tuple(job.ks), job.geom, job.window, job.halo, job.batch_size, str(job.out_dtype),
                        tuple(str(s.array_path.resolve()) for s in job.stores), job.record["axes"],
                        _torch_threads(scheduler, workers))
        runner = _run_sync if scheduler == "sync" else _run_dask
        try:
            for windows in runner(job, spec, todo, scheduler, workers, should_stop, say):
                done += windows
                yield done, total
        except BaseException:
            # A job that failed before finishing a single chunk leaves no work store: nothing to resume.
            if len(todo) == len(units) and not any(s.done() for s in job.stores):
                for s in job.stores:
                    s.discard()
            raise
        finally:
            _RUNTIMES.pop(spec.token, None)
        now_done = set.intersection(*[s.done() for s in job.stores])
        remaining = sum(unit_key(n, b) not in now_done for n, b in units)
        if remaining == 0:
            # two steps, so one output failing to write (disk full) leaves all of them resumable
            for s in job.stores:
                s.prepare(axes=job.record["axes"], out_axes=file_axes(job.geom.axes), scale=job.source.scale,
                          name=s.final.name)
            for s in job.stores:
                s.commit()
        else:
            say(f"stopped with {remaining} of {len(units)} chunks to go; run the same command to resume")
    return DenoiseResult(job.paths, job.ks, remaining == 0, len(units), len(todo) - remaining,
                         len(units) - len(todo), time.perf_counter() - t0, job.chunk, job.batch_size, messages)


def _torch_threads(scheduler: str, workers: int) -> int:
    if scheduler in ("threads", "processes"):
        return max(1, (os.cpu_count() or 1) // max(1, workers))
    return 0


def _run_sync(job: Job, spec: UnitSpec, todo: list[tuple[int, Box]], scheduler: str, workers: int,
              should_stop: Callable[[], bool], say: Callable[[str], None]) -> Iterator[int]:
    """In process, unit after unit, with progress after every batch of windows."""
    rt = Runtime(job.model, job.ks, job.grid, job.batch_size, on_backoff=say)
    import zarr

    arrays = [zarr.open_array(str(s.array_path), mode="r+") for s in job.stores]
    data = job.source.data
    for n, box in todo:
        if should_stop():
            return
        r = rt.grid.read_box(box)
        raw = job.geom.to_cyx(read_block(data, job.geom.source_index(n, r.y0, r.y1, r.x0, r.x1)))
        result = yield from rt.iter_unit(raw, (r.y0, r.x0), box)
        write_unit(spec, arrays, n, box, result)
        yield 0  # a unit finished (its windows were counted batch by batch)


def _run_dask(job: Job, spec: UnitSpec, todo: list[tuple[int, Box]], scheduler: str, workers: int,
              should_stop: Callable[[], bool], say: Callable[[str], None]) -> Iterator[int]:
    """Units as dask tasks: on a local pool in waves (a stop request is honoured between waves), or all at once
    on a distributed cluster."""
    import torch

    grid = job.grid
    data = job.source.data
    if not hasattr(data, "dask"):  # numpy or zarr: give dask a lazy view so reads are tasks too
        import dask.array as da

        data = da.from_array(data, chunks="auto")
    if scheduler.startswith("tcp://"):
        yield from _distributed_compute([_unit_task(job, spec, grid, data, n, box) for n, box in todo],
                                        scheduler, should_stop)
        return
    wave = max(4, 4 * workers)
    old_threads = torch.get_num_threads()
    pool = None
    if scheduler == "threads":  # threads share this process's runtime and torch's thread pool
        torch.set_num_threads(spec.torch_threads)
        _RUNTIMES[spec.token] = (Runtime(job.model, job.ks, grid, job.batch_size, on_backoff=say),
                                 [_open_store(s) for s in job.stores])
    else:  # one pool for the whole job: each worker loads torch and the model once, not once per wave
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        for i in range(0, len(todo), wave):
            if should_stop():
                return
            tasks = [_unit_task(job, spec, grid, data, n, box) for n, box in todo[i:i + wave]]
            yield from _local_compute(tasks, scheduler, workers, pool)
    finally:
        torch.set_num_threads(old_threads)
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _unit_task(job: Job, spec: UnitSpec, grid: PlaneGrid, data: Any, n: int, box: Box) -> Any:
    """A delayed :func:`run_unit` whose source region is a dask slice, so reads are tasks on the workers too."""
    import dask

    r = grid.read_box(box)
    region = data[job.geom.source_index(n, r.y0, r.y1, r.x0, r.x1)]
    return dask.delayed(run_unit, pure=False)(spec, n, box, (r.y0, r.x0), region,
                                              dask_key_name=f"atbsn-unit-{unit_key(n, box)}")


def _distributed_compute(tasks: list[Any], address: str, should_stop: Callable[[], bool]) -> Iterator[int]:
    """All units at once on a dask.distributed cluster (it schedules them as workers arrive); a stop cancels
    what has not started."""
    from distributed import as_completed

    client = _client(address)
    try:
        futures = client.compute(tasks)
        for fut in as_completed(futures, loop=client.loop):
            yield int(fut.result())
            if should_stop():
                client.cancel(futures)
                return
    finally:
        client.close()


def _open_store(s: OutputStore) -> Any:
    import zarr

    return zarr.open_array(str(s.array_path), mode="r+")


def _local_compute(tasks: list[Any], scheduler: str, workers: int, pool: Any = None) -> Iterator[int]:
    """dask's local threaded or multiprocessing scheduler, reporting each finished unit as it lands."""
    import queue

    import dask
    from dask.callbacks import Callback

    finished: queue.Queue[Any] = queue.Queue()

    class _Report(Callback):
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            name = key[0] if isinstance(key, tuple) else key
            if isinstance(name, str) and name.startswith("atbsn-unit-"):
                finished.put(result)

    error: list[BaseException] = []

    def work() -> None:
        try:
            with _Report():
                extra = {"pool": pool} if pool is not None else {}
                dask.compute(*tasks, scheduler=scheduler, num_workers=workers, **extra)
        except BaseException as e:  # re-raised in the caller's thread
            error.append(e)
        finally:
            finished.put(None)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    while True:
        item = finished.get()
        if item is None:
            break
        yield int(item)
    t.join()
    if error:
        raise error[0]


def _client(address: str) -> Any:
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError('scheduler=tcp://... needs dask.distributed; pip install "napari-atbsn[cluster]".') \
            from None
    try:
        return Client(address, timeout="10s", set_as_default=False)
    except OSError as e:
        raise ConfigError(f"could not reach the dask scheduler at {address} ({e}); check the address and that "
                          f"the scheduler is running.") from None


# -- the public entry point ---------------------------------------------------------------------------
def denoise(source: Any, model: Denoiser | str | os.PathLike, out: str | os.PathLike | None = None, *,
            axes: str | None = None, k_b: int | Sequence[int] | None = None, roi: dict[str, slice] | str | None = None,
            chunk: int | None = None, window: int | None = None, halo: int | None = None,
            batch_size: int | None = None, dtype: str = "float32", overwrite: bool = False, scheduler: str = "sync",
            workers: int | None = None, device: str = "auto", progress: Progress | None = None,
            should_stop: Callable[[], bool] | None = None, log: Callable[[str], None] | None = None,
            noise_map: bool = False, amp: bool = True, compile: bool = False) -> Any:
    """Denoise an image or volume of any size in chunks.

    ``source`` is a path (TIFF, Zarr/OME-Zarr, NIfTI, .npy ...), an array or a
    :class:`~napari_atbsn.io.readers.LazyImage`; ``model`` a model folder or a
    loaded :class:`~napari_atbsn.inference.denoiser.Denoiser`. With ``out`` (``.ome.zarr``,
    ``.zarr``, ``.tif`` or ``.npy``) the result is streamed there (resumably) and
    a :class:`DenoiseResult` is returned; without, a lazy dask array (one per
    k_b when ``k_b`` is a list) that computes chunks on demand. ``noise_map`` (D-BSN models) adds the
    estimated noise standard deviation as a second output (``OUT_noise``; the second array). ``amp``
    (mixed precision on CUDA) and ``compile`` (torch.compile) apply when ``model`` is a folder.
    """
    from .denoiser import load_model

    remote = isinstance(scheduler, str) and scheduler.startswith("tcp://")
    if not hasattr(model, "run_windows"):
        # with a cluster the model only plans here; the workers load it on their own device
        model = load_model(model, device="cpu" if remote else device, amp=amp, compile=compile and not remote)
    workers = workers or (2 if scheduler in ("threads", "processes") else 1)
    if out is None:
        return lazy_denoise(source, model, axes=axes, k_b=k_b, roi=roi, chunk=chunk, window=window, halo=halo,
                            batch_size=batch_size, dtype=dtype, noise_map=noise_map)
    job = plan_job(source, model, out, axes=axes, k_b=k_b, roi=roi, chunk=chunk, window=window, halo=halo,
                   batch_size=batch_size, dtype=dtype, overwrite=overwrite, workers=workers, noise_map=noise_map)
    cb = (lambda ev: progress(*ev)) if progress else None
    return drain(iter_run(job, overwrite=overwrite, scheduler=scheduler, workers=workers, should_stop=should_stop,
                          log=log, worker_device=device if remote else None), cb)


def lazy_denoise(source: Any, model: Denoiser, *, axes: str | None = None, k_b: int | Sequence[int] | None = None,
                 roi: dict[str, slice] | str | None = None, chunk: int | None = None, window: int | None = None,
                 halo: int | None = None, batch_size: int | None = None, dtype: str = "float32",
                 noise_map: bool = False) -> Any:
    """The denoised image as a dask array in the source's axes order; nothing runs until it is computed.

    With several k_b, all outputs share one computation per chunk (one backbone pass for all k).
    """
    import dask.array as da

    lazy, cropped, geom, _, ks, window, halo = _resolve(source, model, axes=axes, k_b=k_b, roi=roi, window=window,
                                                        halo=halo, dtype=dtype, noise_map=noise_map)
    chunk = chunk or auto_chunk(window, halo, geom.channels, len(ks), 1, geom.region)
    rt = Runtime(model, ks, PlaneGrid.of(geom.height, geom.width, window, halo), batch_size or 4)
    image_dtype = np.dtype(np.float32) if dtype == "float32" else np.dtype(lazy.dtype)
    # one dask array holds every output, so they must share a type: float32 when a noise map rides along
    out_dtype = np.result_type(*[output_dtype(k, image_dtype) for k in ks])
    data = cropped.data
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
        rr = rt.grid.read_box(b)
        raw = geom.to_cyx(read_block(data, geom.source_index(n, rr.y0, rr.y1, rr.x0, rr.x1)))
        res = drain(rt.iter_unit(raw, (rr.y0, rr.x0), b))
        outs = [_from_cyx(to_dtype(x, out_dtype), geom) for x in res]
        return np.stack([o.reshape(_full(o, geom)) for o in outs])

    meta = np.empty((0,) * (len(geom.axes) + 1), dtype=out_dtype)
    stacked = da.map_blocks(block, chunks=((len(ks),), *chunks), dtype=out_dtype, meta=meta,
                            name=f"atbsn-denoise-{uuid.uuid4().hex}")
    return [stacked[i] for i in range(len(ks))] if len(ks) > 1 else stacked[0]


def _full(o: np.ndarray, geom: Geometry) -> list[int]:
    """Shape of a (C?, h, w) block with singleton plane axes inserted, in source order."""
    it = iter(o.shape)
    return [1 if a in geom.plane_axes else next(it) for a in geom.axes]
