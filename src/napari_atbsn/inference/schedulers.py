"""Where units of work run: in process (``sync``), on dask threads, on dask worker processes or on a
dask.distributed cluster, with the same result. A unit is one chunk of one plane; it reads only the region
its windows need, runs them and writes one storage chunk of each output's work store."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import OutputKey
from ..errors import ConfigError, ImageError, WriteError
from ..events import drain
from ..io.outputs import OutputStore, halve, to_dtype
from ..tiling import Box, PlaneGrid
from .denoiser import load_model
from .geometry import Geometry
from .output_kinds import output_dtype
from .runtime import Runtime, compute_box

if TYPE_CHECKING:
    from .denoiser import Denoiser
    from .plan import Plan
    from .quality import Calibration


SCHEDULERS = ("sync", "threads", "processes")


def check_scheduler(scheduler: str) -> str:
    if scheduler in SCHEDULERS:
        return scheduler
    if isinstance(scheduler, str) and scheduler.startswith("tcp://"):
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ConfigError('scheduler=tcp://... needs dask.distributed; pip install "napari-atbsn[cluster]" (or '
                              'use --scheduler threads or processes on this machine).') from None
        return scheduler
    raise ConfigError(f"scheduler={scheduler!r}; use sync, threads, processes or tcp://HOST:PORT "
                      f"(a running dask.distributed scheduler).")


@dataclass(frozen=True)
class ModelRef:
    """How a worker process gets the model: the folder it came from, checked by fingerprint."""

    path: str
    device: str
    fingerprint: str
    amp: bool = True
    compile: bool = False

    def load(self) -> Denoiser:

        model = load_model(self.path, device=self.device, amp=self.amp, compile=self.compile)
        if model.fingerprint() != self.fingerprint:
            raise ConfigError(f"the model folder {self.path} changed while the job was running; run it again.")
        return model


@dataclass(frozen=True)
class UnitSpec:
    """Everything a worker needs for units of one job (small and picklable; the model travels by path)."""

    token: str
    model: ModelRef
    ks: tuple[OutputKey, ...]
    geom: Geometry
    window: int
    halo: int
    batch_size: int
    out_dtype: str
    outputs: tuple[str, ...]  # the final output paths, one per k (their work stores hold the chunks)
    store_axes: str
    torch_threads: int
    calibration: Calibration | None = None  # what k_b='auto' decided (the same in every worker)


# Per-process runtimes, keyed by job token: threads share the caller's, worker processes build their own.
_RUNTIMES: dict[str, tuple[Runtime, list[tuple[OutputStore, list[Any]]]]] = {}
_RUNTIMES_LOCK = threading.Lock()


def open_stores(spec: UnitSpec) -> list[tuple[OutputStore, list[Any]]]:
    """Each output's work store with its level-0 array and the pyramid levels units write, opened for
    writing."""
    stores = [OutputStore(p) for p in spec.outputs]
    return [(s, s.open_arrays()) for s in stores]


def runtime_for(spec: UnitSpec) -> tuple[Runtime, list[tuple[OutputStore, list[Any]]]]:
    """This process's runtime and open stores for a job (built on first use: worker processes load the model)."""
    with _RUNTIMES_LOCK:
        if spec.token not in _RUNTIMES:
            import torch

            if spec.torch_threads:
                torch.set_num_threads(spec.torch_threads)
            rt = Runtime(spec.model.load(), spec.ks, spec.geom, spec.window, spec.halo, spec.batch_size,
                         calibration=spec.calibration)
            _RUNTIMES[spec.token] = (rt, open_stores(spec))
        return _RUNTIMES[spec.token]


def share_runtime(spec: UnitSpec, rt: Runtime) -> None:
    """Threads of this process use the caller's runtime (its model and batch size back-off)."""
    with _RUNTIMES_LOCK:
        _RUNTIMES[spec.token] = (rt, open_stores(spec))


def forget_runtime(spec: UnitSpec) -> None:
    with _RUNTIMES_LOCK:
        _RUNTIMES.pop(spec.token, None)


def unit_key(n: int, box: Box) -> str:
    return f"{n}_{box.y0}_{box.x0}"


def store_index(spec: UnitSpec, n: int, box: Box, level: int = 0, shape: tuple[int, int] | None = None,
                ) -> tuple[Any, ...]:
    """Where a unit goes in a work store (store axes order, Y/X relative to the region); at a pyramid
    ``level``, its ``shape`` (rows, columns) there."""
    plane = spec.geom.plane_index(n)
    r = spec.geom.region
    y0, x0 = (box.y0 - r.y0) >> level, (box.x0 - r.x0) >> level
    h, w = shape or box.shape
    spans = {"Y": slice(y0, y0 + h), "X": slice(x0, x0 + w), "C": slice(None)}
    return tuple(plane[a] if a in plane else spans[a] for a in spec.store_axes)


def write_unit(spec: UnitSpec, stores: list[tuple[OutputStore, list[Any]]], n: int, box: Box,
               result: np.ndarray) -> None:
    """Store a unit's result in each output's work store (with its share of the pyramid levels units write),
    then mark it done there."""
    key = unit_key(n, box)
    if not all(np.isfinite(r).all() for r in result):  # before anything of this unit is stored: a marker never lies
        raise ImageError(f"the model produced NaN or Inf values in plane {n}, rows {box.y0}..{box.y1}, columns "
                         f"{box.x0}..{box.x1} (the input there is finite): its weights are damaged or overflow; with "
                         f"mixed precision on a GPU try --no-amp, else re-train or use another model folder.")
    for (store, arrays), res, k in zip(stores, result, spec.ks, strict=True):
        data = to_dtype(res, output_dtype(k, np.dtype(spec.out_dtype)))
        try:
            for level, arr in enumerate(arrays):
                if level:
                    data = halve(data, "CYX", data.dtype)
                idx = store_index(spec, n, box, level, data.shape[-2:])
                arr[idx] = data if "C" in spec.store_axes else data[0]
            # the marker comes only after the chunk is fully stored: a marker never lies
            store.mark_done(key)
        except OSError as e:
            # A chunk half-written without its marker is simply computed again on resume.
            raise WriteError(f"could not store a chunk in {store.work}: {e.strerror or e}. Free space "
                             f"(or fix permissions) and run the same command again: the finished chunks are "
                             f"kept and not recomputed.") from None


def run_unit(spec: UnitSpec, n: int, box: Box, origin: tuple[int, int], blocks: list[np.ndarray]) -> int:
    """A dask task: compute one unit from its source pixels (its plane's block, then its context planes') and
    store it. Returns windows done."""
    rt, stores = runtime_for(spec)
    result = drain(rt.iter_unit(spec.geom.assemble(blocks), origin, box, plane=n))
    write_unit(spec, stores, n, box, result)
    return rt.grid.count(box)


def torch_threads(scheduler: str, workers: int) -> int:
    if scheduler in ("threads", "processes"):
        return max(1, (os.cpu_count() or 1) // max(1, workers))
    return 0


def run_sync(job: Plan, spec: UnitSpec, todo: list[tuple[int, Box]], scheduler: str, workers: int,
              should_stop: Callable[[], bool], say: Callable[[str], None]) -> Iterator[int]:
    """In process, unit after unit, with progress after every batch of windows.

    The next unit's pixels are read and the previous unit's result is stored by two helper threads while
    this one computes (decompression, compression and the disk release the GIL), so the network waits for
    neither. At most one result waits to be stored, so memory stays at a few units; a unit is marked done
    only once stored, and nothing is written after this returns or raises.
    """
    from concurrent.futures import ThreadPoolExecutor

    rt = Runtime(job.model, job.ks, job.geom, job.window, job.halo, job.batch_size, on_backoff=say,
                 calibration=job.calibration)
    stores = open_stores(spec)
    data = job.source.data

    def read(n: int, box: Box) -> tuple[np.ndarray, tuple[int, int]]:
        r = rt.read_box(box)
        return job.geom.read_unit(data, n, r.y0, r.y1, r.x0, r.x1), (r.y0, r.x0)

    if not todo:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="atbsn-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="atbsn-write") as writer:
        reading = reader.submit(read, *todo[0])
        writing = None
        try:
            for i, (n, box) in enumerate(todo):
                if should_stop():
                    break
                raw, origin = reading.result()
                if i + 1 < len(todo):
                    reading = reader.submit(read, *todo[i + 1])
                result = yield from rt.iter_unit(raw, origin, box, plane=n)
                if writing is not None:
                    writing.result()  # the previous unit is stored (or its error raised) before the next waits
                writing = writer.submit(write_unit, spec, stores, n, box, result)
                yield 0  # a unit finished (its windows were counted batch by batch)
            if writing is not None:
                writing.result()
        finally:
            reading.cancel()
            # leaving the pools waits for a read or write still running: nothing is stored after this returns


def run_dask(job: Plan, spec: UnitSpec, todo: list[tuple[int, Box]], scheduler: str, workers: int,
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
        yield from distributed_compute([unit_task(job, spec, grid, data, n, box) for n, box in todo],
                                        scheduler, should_stop)
        return
    wave = max(4, 4 * workers)
    old_threads = torch.get_num_threads()
    pool = None
    if scheduler == "threads":  # threads share this process's runtime and torch's thread pool
        torch.set_num_threads(spec.torch_threads)
        share_runtime(spec, Runtime(job.model, job.ks, job.geom, job.window, job.halo, job.batch_size,
                                    on_backoff=say, calibration=job.calibration))
    else:  # one pool for the whole job: each worker loads torch and the model once, not once per wave
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        for i in range(0, len(todo), wave):
            if should_stop():
                return
            tasks = [unit_task(job, spec, grid, data, n, box) for n, box in todo[i:i + wave]]
            yield from local_compute(tasks, scheduler, workers, pool)
    finally:
        torch.set_num_threads(old_threads)
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def unit_task(job: Plan, spec: UnitSpec, grid: PlaneGrid, data: Any, n: int, box: Box) -> Any:
    """A delayed :func:`run_unit` whose source region is a dask slice, so reads are tasks on the workers too."""
    import dask

    r = grid.read_box(compute_box(box, job.geom.region, job.ks, job.calibration))
    regions = [data[i] for i in job.geom.unit_indexes(n, r.y0, r.y1, r.x0, r.x1)]
    return dask.delayed(run_unit, pure=False)(spec, n, box, (r.y0, r.x0), regions,
                                              dask_key_name=f"atbsn-unit-{unit_key(n, box)}")


def distributed_compute(tasks: list[Any], address: str, should_stop: Callable[[], bool]) -> Iterator[int]:
    """All units at once on a dask.distributed cluster (it schedules them as workers arrive); a stop cancels
    what has not started."""
    from distributed import as_completed

    client = client_for(address)
    try:
        futures = client.compute(tasks)
        for fut in as_completed(futures, loop=client.loop):
            yield int(fut.result())
            if should_stop():
                client.cancel(futures)
                return
    finally:
        client.close()


def local_compute(tasks: list[Any], scheduler: str, workers: int, pool: Any = None) -> Iterator[int]:
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


def client_for(address: str) -> Any:
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
