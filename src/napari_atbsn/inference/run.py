"""Running a planned denoise: one writer per output, resumable work stores, the finished outputs; and
:func:`denoise`, the entry point for files, arrays and lazy results.

Stopping or killing the process leaves a partial output that the same call
continues: a unit is recorded as done only after its chunk is stored.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..axes import context_note
from ..errors import ConfigError, ReadError, WriteError
from ..events import drain
from ..io.filewriters import file_axes, tiff_axes
from ..io.readers import open_image
from .denoiser import load_model
from .lazy import lazy_denoise
from .output_kinds import output_dtype
from .plan import Plan, plan_job
from .schedulers import (
    ModelRef,
    UnitSpec,
    check_scheduler,
    forget_runtime,
    run_dask,
    run_sync,
    torch_threads,
    unit_key,
)

if TYPE_CHECKING:
    from ..io.outputs import OutputStore
    from ..io.readers import LazyImage
    from .denoiser import Denoiser
    from .geometry import Geometry
    from .quality import Calibration

Progress = Callable[[int, int], None]


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
    calibration: Calibration | None = None  # k_b='auto': the choice, the blend and the estimated gain

    def open(self, i: int = 0) -> LazyImage:
        """The i-th output, opened lazily."""
        return open_image(self.paths[i])


# -- the run -------------------------------------------------------------------------------------------------
def iter_run(job: Plan, *, scheduler: str = "sync", workers: int = 1, should_stop: Callable[[], bool] | None = None,
             log: Callable[[str], None] | None = None) -> Generator[tuple[int, int], None, DenoiseResult]:
    """Run a planned job; yields (windows_done, windows_total); returns the :class:`DenoiseResult`.

    Stopping (``should_stop``) or killing the process leaves a partial output that the same call continues.
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

    if job.geom.context_unused:
        say(context_note(job.geom.context_unused))
    with output_lock(job):
        start_stores(job)
        units = job.units()
        done_keys = set.intersection(*[s.done() for s in job.stores])
        todo = [(n, b) for n, b in units if unit_key(n, b) not in done_keys]
        if len(todo) < len(units):
            say(f"resuming: {len(units) - len(todo)} of {len(units)} chunks already done")
        remaining = yield from _compute(job, units, todo, scheduler, workers, should_stop, say)
        if remaining == 0:
            finish_stores(job)
        else:
            say(f"stopped with {remaining} of {len(units)} chunks to go; run the same command to resume")
    return DenoiseResult(job.paths, job.ks, remaining == 0, len(units), len(todo) - remaining,
                         len(units) - len(todo), time.perf_counter() - t0, job.chunk, job.batch_size, messages,
                         job.calibration)


def _compute(job: Plan, units: list, todo: list, scheduler: str, workers: int, should_stop: Callable[[], bool],
             say: Callable[[str], None]) -> Generator[tuple[int, int], None, int]:
    """The units still to do, on the scheduler; yields progress; returns how many units remain undone."""
    grid = job.grid
    total = sum(grid.count(b) for _, b in units)
    done = total - sum(grid.count(b) for _, b in todo)
    yield done, total
    spec = unit_spec(job, scheduler, workers)
    runner = run_sync if scheduler == "sync" else run_dask
    try:
        for windows in runner(job, spec, todo, scheduler, workers, should_stop, say):
            done += windows
            yield done, total
    except BaseException as e:
        # A job that failed before finishing a single chunk leaves no work store: nothing to resume.
        if len(todo) == len(units) and not any(s.done() for s in job.stores):
            for s in job.stores:
                s.discard()
        elif isinstance(e, ReadError):  # a damaged input: say what is kept and how to start over once it is fixed
            raise ReadError(f"{e} The chunks finished so far are kept in {job.stores[0].work} (never looking "
                            f"complete); once the input is repaired, run again with --overwrite.") from None
        raise
    finally:
        forget_runtime(spec)
    now_done = set.intersection(*[s.done() for s in job.stores])
    return sum(unit_key(n, b) not in now_done for n, b in units)


def unit_spec(job: Plan, scheduler: str, workers: int) -> UnitSpec:
    """What every worker needs for this job's units (the model travels by folder, checked by fingerprint)."""
    model_path = str(Path(job.model.path).resolve()) if job.model.path else ""
    ref = ModelRef(model_path, job.worker_device or str(job.model.device),
                   job.model.fingerprint() if scheduler != "sync" else "", job.model.amp, job.model.compiled)
    return UnitSpec(uuid.uuid4().hex, ref, tuple(job.ks), job.geom, job.window, job.halo, job.batch_size,
                    str(job.out_dtype), tuple(str(s.final.parent.resolve() / s.final.name) for s in job.stores),
                    job.record["axes"],
                    torch_threads(scheduler, workers), job.calibration)


def start_stores(job: Plan) -> None:
    """Create each output's work store, or adopt the one an earlier run of the same job left (as planned)."""
    for s, seen in zip(job.stores, job.seen, strict=True):
        if s.job() != seen:
            raise WriteError(f"the partial output {s.work} changed after this job was planned (another run?); run "
                             f"the command again.")
    st_axes = job.record["axes"]
    shape = store_shape(job.geom, st_axes)
    chunks = tuple(job.chunk if a in "YX" else (job.geom.channels if a == "C" else 1) for a in st_axes)
    chunks = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
    for s, resumed, k in zip(job.stores, job.resumed, job.ks, strict=True):
        if not resumed:
            s.create(job.store_record(k), shape=shape, chunks=chunks, dtype=str(output_dtype(k, job.out_dtype)),
                     axes=st_axes, out_axes=output_axes(job, s), scale=job.source.scale)


def finish_stores(job: Plan) -> None:
    """Every unit is done: build the final outputs; in two steps, so one output failing to write (disk full)
    leaves all of them resumable."""
    for s in job.stores:
        s.prepare(axes=job.record["axes"], scale=job.source.scale, name=s.final.name)
    for s in job.stores:
        s.commit()


def output_axes(job: Plan, store: OutputStore) -> str | None:
    """The axis order of a TIFF or .npy output's file (None for OME-Zarr, which keeps the store's)."""
    if store.kind == "tiff":
        return tiff_axes(job.geom.axes, job.geom.channels)
    return file_axes(job.geom.axes) if store.kind == "npy" else None


def store_shape(geom: Geometry, st_axes: str) -> tuple[int, ...]:
    out = dict(zip(geom.axes, geom.out_shape(), strict=True))
    return tuple(out[a] for a in st_axes)


@contextlib.contextmanager
def output_lock(job: Plan) -> Iterator[None]:
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


# -- the public entry point ---------------------------------------------------------------------------
def is_remote(scheduler: str) -> bool:
    """A dask.distributed scheduler address: the model only plans here, workers load it themselves."""
    return isinstance(scheduler, str) and scheduler.startswith("tcp://")


def worker_device_for(scheduler: str, device: str) -> str | None:
    """The device worker processes load the model on: ``device`` on a cluster (the planning machine may have
    no GPU), else None (the planned model's own)."""
    return device if is_remote(scheduler) else None


def default_workers(scheduler: str, workers: int | None) -> int:
    """Workers when none are given: two for local thread or process pools, else one."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers={workers!r} must be a positive integer (dask workers for threads or "
                          f"processes), e.g. 2.")
    return workers or (2 if scheduler in ("threads", "processes") else 1)


def load_for_scheduler(path: str | os.PathLike, scheduler: str, *, device: str = "auto", amp: bool = True,
                       compile: bool = False) -> Denoiser:
    """Load a model folder where the job is planned: with a cluster only to plan (on the CPU: a login node may
    have no GPU; the workers load it on ``device``), else on ``device``."""
    remote = is_remote(scheduler)
    return load_model(path, device="cpu" if remote else device, amp=amp, compile=compile and not remote)


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
    if not hasattr(model, "run_windows"):
        model = load_for_scheduler(model, scheduler, device=device, amp=amp, compile=compile)
    workers = default_workers(scheduler, workers)
    if out is None:
        return lazy_denoise(source, model, axes=axes, k_b=k_b, roi=roi, chunk=chunk, window=window, halo=halo,
                            batch_size=batch_size, dtype=dtype, noise_map=noise_map)
    job = plan_job(source, model, out, axes=axes, k_b=k_b, roi=roi, chunk=chunk, window=window, halo=halo,
                   batch_size=batch_size, dtype=dtype, overwrite=overwrite, workers=workers, noise_map=noise_map,
                   worker_device=worker_device_for(scheduler, device))
    cb = (lambda ev: progress(*ev)) if progress else None
    return drain(iter_run(job, scheduler=scheduler, workers=workers, should_stop=should_stop, log=log), cb)
