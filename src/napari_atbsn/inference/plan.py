"""Planning a written denoise: everything validated and every size decided before anything is written.

:func:`plan_job` opens the source, resolves the outputs, the window and the
region, checks the output paths and the free space, picks the chunk and
batch sizes (or adopts those of a partial output it will resume) and returns
a frozen :class:`Plan`. What the CLI prints from the plan is what runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..axes import context_axis, context_note, context_unused
from ..block_blend import BLOCK
from ..config import AUTO_K_B, OutputKey
from ..errors import BlindSpotError, ConfigError, ImageError, WriteError
from ..io.fs import refuse_overlap
from ..io.outputs import OutputStore, outputs_for, store_axes
from ..io.readers import check_chunks, open_image, parse_roi
from ..tiling import Box, PlaneGrid, check_window, chunk_boxes, default_halo
from ..version import __version__
from .geometry import Geometry
from .output_kinds import OUTPUT_DTYPES, output_dtype, resolve_ks
from .quality import Calibration, calibrate
from .runtime import auto_batch_size

if TYPE_CHECKING:
    from ..io.readers import LazyImage
    from .denoiser import Denoiser

MAX_CHUNK = 2048  # storage chunks beyond 2048^2 float32 (16 MB per channel) only slow readers down
MEMORY_FRACTION = 0.25  # of the available RAM, shared by the workers, for chunk buffers
JOB_FORMAT = 1
#: What makes two runs the same job: a partial output is continued only by a run that agrees on all of them.
IDENTITY_KEYS = ("input", "roi", "model", "k_b", "window", "halo", "dtype", "quality")


# -- what a written and a lazy denoise both decide first ------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """The source, its ROI geometry, the outputs and the window of a denoise."""

    source: LazyImage  # as opened
    cropped: LazyImage  # cropped to the ROI's planes (Y/X stay whole: context for the windows)
    geom: Geometry
    roi_record: dict[str, list]
    ks: list[OutputKey]
    window: int
    halo: int


def resolve_target(source: Any, model: Denoiser, *, axes: str | None, k_b: int | Sequence[int] | None,
                   roi: dict[str, slice] | str | None, window: int | None, halo: int | None, dtype: str,
                   noise_map: bool) -> Target:
    """Open the source and check it against the model and the settings."""
    lazy = open_image(source, axes)
    check_chunks(lazy)  # Zarr chunks missing from the store would be denoised as the fill value
    if isinstance(roi, str):
        roi = parse_roi(roi, lazy.axes)
    ks = resolve_ks(model, k_b, noise_map)
    if dtype not in OUTPUT_DTYPES:
        raise ConfigError(f"dtype={dtype!r}; choose float32 or input.")
    window = model.patch if window is None else window
    if model.kind == "atbsn" and window > model.patch:
        # a teacher's shifted half-plane receptive fields read how far each pixel is from the window's zero-padded
        # border; trained on patches, it has never seen a distance beyond the patch, and its output breaks down
        # there (a small PolyU teacher of patch 64: 37.9 dB in 64-pixel windows, 12.7 in 128, 8.9 in 256; windows
        # up to the patch lose nothing). A student is a plain UNet and runs in any window.
        raise ConfigError(f"window={window} is larger than this teacher's training patch ({model.patch}): a "
                          f"blind-spot teacher's output breaks down beyond the patch it was trained on. Use a window "
                          f"of {model.patch} or less, train with --patch {window}, or denoise with its distilled "
                          f"student, which runs in any window.")
    halo = (model.halo if window == model.patch else default_halo(window, model.kind)) if halo is None else halo
    check_window(window, halo)
    for k in ks:
        # The shift s = (k + 1) // 2 must leave pixels in each window (the network refuses later otherwise,
        # after the output was set up).
        if isinstance(k, int) and (k + 1) // 2 >= window:
            raise BlindSpotError(f"k_b={k} is too large for {window}-pixel windows: its blind spot would cover "
                                 f"the whole window. Use k_b <= {2 * window - 3} (the paper uses 3).")
    cropped, box, roi_record = roi_box(lazy, roi)
    # the stack's own context axis, where the model reads its neighbours along it (not in 2-D mode)
    reads = model.context and not (model.single_plane and context_unused(lazy.axes, lazy.shape, model.context))
    axis = context_axis(lazy.axes, lazy.shape) if reads else None
    if axis is not None and roi and axis in {a.upper() for a in roi}:
        # the crop would make the ROI's first and last planes the stack's ends, their neighbours mirrored
        # rather than read: a different result from the same planes of the whole stack
        raise ConfigError(f"the model takes {model.context} neighbouring plane(s) along {axis} as context, so an ROI "
                          f"cannot cut that axis; give Y/X (or other axes) in the ROI, or denoise the whole {axis} "
                          f"range and keep the planes you need.")
    geom = Geometry.of(cropped.axes, cropped.shape, box, context=model.context, single_plane=model.single_plane)
    if geom.channels != model.in_channels:
        raise ImageError(f"the image has {geom.channels} channel(s) (axes {geom.axes}, shape {geom.shape}) but the "
                         f"model expects {model.in_channels}; check --axes or use a model trained on such data.")
    return Target(lazy, cropped, geom, roi_record, ks, window, halo)


def roi_box(source: LazyImage, roi: dict[str, slice] | None) -> tuple[LazyImage, Box | None, dict[str, list]]:
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


def input_record(source: LazyImage) -> dict[str, Any]:
    rec: dict[str, Any] = {"source": source.source, "format": source.format, "shape": list(source.shape),
                           "dtype": str(source.dtype), "axes": source.axes}
    p = Path(source.source)
    if not source.source.startswith("<") and p.exists():
        rec["source"] = str(p.resolve())
        if p.is_file():  # a changed file must not be resumed into an old partial output
            st = p.stat()
            rec["stat"] = [st.st_size, st.st_mtime_ns]
        elif p.is_dir():  # nor a changed Zarr store: any chunk rewritten, added or removed changes this
            rec["files_sha256"] = folder_fingerprint(p)
    elif source.source == "<numpy>":
        # an in-memory array has no file to stat: a strided sample of about a million values tells two
        # same-shaped arrays (two napari layers) apart, so one is never resumed into the other's output
        k = max(2, round((1 << 20) ** (1 / len(source.shape))))
        index = tuple(slice(None, None, max(1, s // k)) for s in source.shape)
        sample = np.ascontiguousarray(np.asarray(source.data[index]))
        rec["sample_sha256"] = hashlib.sha256(sample.tobytes()).hexdigest()
    return rec


def folder_fingerprint(folder: Path) -> str:
    """A hash of every file's relative path, size and modification time under ``folder`` (one walk, no file
    is read): it changes when a chunk of a Zarr store is rewritten, added or removed."""
    h = hashlib.sha256()
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                st = os.stat(path)
                h.update(f"{os.path.relpath(path, folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# -- the plan ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """A planned denoise of ``source`` to ``paths``: validated, sizes decided, nothing computed or written.

    ``resumed[i]`` says whether output i continues the partial output an earlier run of the same job left
    (its chunk and batch sizes are then the earlier run's); ``record`` is the job's identity, stored with
    each work store.
    """

    source: LazyImage
    model: Denoiser
    geom: Geometry
    ks: list[OutputKey]
    window: int
    halo: int
    chunk: int
    batch_size: int
    out_dtype: np.dtype
    paths: list[Path]
    stores: list[OutputStore]
    record: dict[str, Any]
    overwrite: bool
    worker_device: str | None = None
    resumed: tuple[bool, ...] = field(default=())
    seen: tuple[dict[str, Any] | None, ...] = field(default=())  # the work stores' records when planned
    calibration: Calibration | None = None  # what k_b='auto' decided, with the estimated gain

    @property
    def grid(self) -> PlaneGrid:
        return PlaneGrid.of(self.geom.height, self.geom.width, self.window, self.halo)

    def units(self) -> list[tuple[int, Box]]:
        boxes = chunk_boxes(self.geom.region, (self.chunk, self.chunk))
        return [(n, b) for n in range(self.geom.n_planes) for b in boxes]

    def store_record(self, k: OutputKey) -> dict[str, Any]:
        """What the work store of output ``k`` records: the job's identity and its sizes."""
        return store_record(self.record, k, self.chunk, self.batch_size)


def store_record(record: dict[str, Any], k: OutputKey, chunk: int, batch_size: int) -> dict[str, Any]:
    rec = dict(record)
    rec.update(k_b=k, chunk=chunk, batch_size=batch_size)
    return rec


def plan_job(source: Any, model: Denoiser, out: str | os.PathLike, *, axes: str | None = None,
             k_b: int | Sequence[int] | None = None, roi: dict[str, slice] | str | None = None,
             chunk: int | None = None, window: int | None = None, halo: int | None = None,
             batch_size: int | None = None, dtype: str = "float32", overwrite: bool = False,
             workers: int = 1, noise_map: bool = False, worker_device: str | None = None) -> Plan:
    """Validate everything and decide sizes; raises before anything is written.

    ``worker_device`` is the device worker processes load the model on (default: the model's own), e.g.
    ``cuda`` on GPU nodes of a cluster whose client runs on a CPU-only login node.
    """
    t = resolve_target(source, model, axes=axes, k_b=k_b, roi=roi, window=window, halo=halo, dtype=dtype,
                       noise_map=noise_map)
    for name, v in (("chunk", chunk), ("batch_size", batch_size)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{name}={v!r} must be a positive integer.")
    if t.window > 8 * model.patch or t.window < model.patch // 2:
        raise ConfigError(f"window={t.window} is far from the model's training patch {model.patch}; the networks "
                          f"are not size-invariant (method.md Decision 8). Use a window near {model.patch}.")
    out_dtype = np.dtype(np.float32) if dtype == "float32" else np.dtype(t.source.dtype)
    paths = outputs_for(out, t.ks)
    stores = [OutputStore(p) for p in paths]
    st_axes = store_axes(t.geom.axes, ngff=any(s.kind == "zarr" for s in stores))
    src_path = Path(t.source.source).resolve() if not t.source.source.startswith("<") else None
    for s in stores:
        if src_path is not None and s.final.resolve() == src_path:
            raise WriteError(f"the output {s.final} is the input; choose another output path.")
        if src_path is not None:  # an output holding the input (or inside it) would replace or pollute it
            refuse_overlap(s.final, {"input": t.source.source})
            refuse_overlap(s.work, {"input": t.source.source})
        s.check(overwrite=overwrite)
    check_free_space(stores, t.ks, t.geom, out_dtype)
    record = {"format": JOB_FORMAT, "input": input_record(t.source), "roi": t.roi_record,
              "model": {"name": model.name, "path": str(model.path) if model.path else None,
                        "fingerprint": model.fingerprint()},
              "window": t.window, "halo": t.halo, "dtype": str(out_dtype), "axes": st_axes,
              "napari_atbsn": __version__}
    if mixed_precision(model, worker_device):
        record["model"]["mixed_precision"] = True
    if t.geom.context_unused:  # a stack-context model in its 2-D mode: the record says so, and why
        record["stack_context"] = context_note(t.geom.context_unused)
    calibration = None
    if AUTO_K_B in t.ks:  # decided once, from a sample of the data, and part of the job's identity
        calibration = calibrate(model, t.cropped, t.geom.axes, window=t.window)
        record["quality"] = calibration.to_record()
    chunk_now = chunk or planned_chunk(t, workers, calibration)
    batch_now = batch_size or auto_batch_size(model)
    seen = tuple(s.job() for s in stores)
    chunk_now, batch_now, resumed = adopt_partials(stores, t.ks, record, chunk_now, batch_now,
                                                   chunk_given=chunk is not None, batch_given=batch_size is not None,
                                                   overwrite=overwrite)
    return Plan(t.cropped, model, t.geom, t.ks, t.window, t.halo, chunk_now, batch_now, out_dtype, paths, stores,
                record, overwrite, worker_device, resumed, seen, calibration)


def mixed_precision(model: Denoiser, worker_device: str | None) -> bool:
    """Mixed precision changes the values: a resumed output must not mix its chunks with float32 ones, so it
    joins the job's identity. Recorded only where it takes effect (CUDA, or workers that pick their own
    device), so CPU jobs resume as before."""
    compute_on = worker_device or str(model.device)
    return model.amp and (compute_on.startswith("cuda") or compute_on == "auto")


def adopt_partials(stores: Sequence[OutputStore], ks: Sequence[OutputKey], record: dict[str, Any], chunk: int,
                   batch_size: int, *, chunk_given: bool, batch_given: bool, overwrite: bool,
                   ) -> tuple[int, int, tuple[bool, ...]]:
    """Which outputs continue a partial output of the same job, and with which sizes.

    A partial output of a different job is refused, or with ``overwrite`` started over; a partial output of
    the same job is always continued (``overwrite`` is about replacing finished outputs, not progress), with
    the chunk and batch sizes it started with, so its chunks match byte for byte. Returns (chunk,
    batch_size, resumed per output).
    """
    existing: list[dict[str, Any] | None] = []
    for s, k in zip(stores, ks, strict=True):
        old = s.job()
        if old is not None:
            mine = store_record(record, k, chunk, batch_size)
            differs = [key for key in IDENTITY_KEYS if old.get(key) != mine.get(key)]
            sizes = [key for key, given in (("chunk", chunk_given), ("batch_size", batch_given))
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
                old = None  # started over
        existing.append(old)
    adopted = next((old for old in existing if old is not None), None)
    if adopted is not None:
        chunk, batch_size = int(adopted["chunk"]), int(adopted["batch_size"])
    # outputs left by earlier runs with another chunk grid cannot share units with this one: start them over
    return chunk, batch_size, tuple(old is not None and int(old["chunk"]) == chunk for old in existing)


# -- sizes and space -------------------------------------------------------------------------------------------
def available_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency; keep a floor for odd platforms
        return 2 << 30


def auto_chunk(window: int, halo: int, channels: int, n_outputs: int, workers: int, region: Box,
               memory: int | None = None, *, context: int = 0) -> int:
    """Largest chunk (a multiple of the window's kept core) whose buffers fit a share of the free RAM.

    Per unit: the source region (chunk plus up to a window on each side) as
    raw, float32 and normalised copies, and each output in float32 and its
    final type. A stack-context unit reads that region in its 2 * ``context`` neighbouring planes too.
    """
    memory = available_memory() if memory is None else memory
    budget = memory * MEMORY_FRACTION / max(1, workers)
    core = window - 2 * halo
    side = max(region.shape)
    limit = min(MAX_CHUNK, -(-side // core) * core)
    best = core
    c = core
    while c <= limit:
        need = 4 * channels * (3 * (2 * context + 1) * (c + 2 * window) ** 2 + 2 * n_outputs * c * c)
        if need > budget:
            break
        best = c
        c += core
    return best if side >= core else side


def planned_chunk(t: Target, workers: int, calibration: Calibration | None) -> int:
    """The chunk side when none is given: :func:`auto_chunk`, aligned to the blend's blocks where it has them."""
    chunk = auto_chunk(t.window, t.halo, t.geom.channels, len(t.ks), workers, t.geom.region, context=t.geom.context)
    blocks = calibration is not None and bool(calibration.block_models)
    return block_aligned(chunk, t.window - 2 * t.halo) if blocks else chunk


def block_aligned(chunk: int, core: int) -> int:
    """``chunk`` rounded down to a multiple of both the window's kept core and the blend's block (block_blend):
    a unit that cuts a block computes the whole block, so unaligned chunks would compute the blocks on their
    edges twice. Chunks under one such multiple stay as they are."""
    step = math.lcm(core, BLOCK)
    return chunk // step * step if chunk >= step else chunk


def human_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_free_space(stores: Sequence[OutputStore], ks: Sequence[Any], geom: Geometry, dtype: np.dtype) -> None:
    """Refuse up front what cannot fit, instead of failing hours in with a full disk.

    A TIFF or .npy output is its raw size, written in place; a Zarr output is its work store renamed,
    counted at the raw size plus a third for the pyramid (denoised float data compresses little). What a
    resumed job already holds on disk (its work store, a TIFF's or .npy's partly written file) is not asked
    for again.
    """
    import shutil

    pixels = int(np.prod(geom.out_shape(), dtype=np.int64))
    need: dict[Path, int] = {}
    for store, k in zip(stores, ks, strict=True):
        raw = pixels * output_dtype(k, dtype).itemsize
        total = raw if store.kind != "zarr" else raw * 4 // 3
        folder = store.final.parent.resolve()
        held = disk_usage(store.work) + disk_usage(store.writing)
        need[folder] = need.get(folder, 0) + max(0, total - held)
    for folder, n in need.items():
        free = shutil.disk_usage(folder).free
        if n > free:
            raise WriteError(f"the output needs about {human_bytes(n)} more in {folder} but only "
                             f"{human_bytes(free)} is free; free space or write to another disk.")


def disk_usage(path: Path) -> int:
    """Bytes a work store folder, or a partly written (sparse) output file, takes on disk; 0 if it does not
    exist."""
    if path.is_file():
        return os.stat(path).st_blocks * 512
    total = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total
