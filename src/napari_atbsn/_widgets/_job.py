"""Running a core generator in a napari worker thread, with a Stop that works.

Every long job of the core is a generator that yields progress events and
polls a ``should_stop`` callable (training saves a checkpoint, a file output
stays resumable). :class:`Job` runs one in a napari ``GeneratorWorker`` so
the viewer stays responsive, hands each event to the widget on the GUI
thread, and turns exceptions into notifications with the same messages the
CLI prints. :meth:`Job.stop` asks the generator to stop at its next check and
can wait for it, so closing a widget or the viewer never leaves a half-written
checkpoint behind.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error, show_info

from ..errors import ATBSNError

log = logging.getLogger("napari_atbsn")

#: how long closing a widget or the viewer waits for a running job to stop (a training step, a checkpoint)
CLOSE_WAIT_S = 30.0


def error_message(e: BaseException) -> str:
    """What the user reads: our own errors are written for people; anything else is named and logged."""
    if isinstance(e, ATBSNError):
        return str(e)
    if isinstance(e, MemoryError):
        return "out of memory; use a smaller patch, batch or chunk, or a smaller preset."
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else str(e.strerror)
    return f"unexpected error ({type(e).__name__}: {e}); the details are in the napari-atbsn log."


def notify_error(e: BaseException) -> None:
    if not isinstance(e, ATBSNError):
        log.error("napari-atbsn job failed", exc_info=e)
    show_error(error_message(e))


class JobFailed(Exception):
    """Carries a job's exception out of the worker (see Job.run)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _guard(fn: Callable[[Any], None]) -> Callable[[Any], None]:
    """A GUI callback of a job: a widget deleted meanwhile is ignored, any other error is a notification."""

    def call(value: Any) -> None:
        try:
            fn(value)
        except RuntimeError as e:
            if "deleted" not in str(e):
                notify_error(e)
        except Exception as e:
            notify_error(e)

    return call


class StoppingWorker(GeneratorWorker):
    """A generator worker whose ``quit`` is a graceful stop.

    napari cancels the workers it knows about when its window closes, by
    ``quit()``; a plain generator worker would then drop the generator at its
    next yield, before a training run writes its checkpoint. Here ``quit``
    asks the job to stop through ``should_stop`` and waits (boundedly) until
    the generator has returned.
    """

    job: Job | None = None

    def quit(self) -> None:
        if self.job is not None and not self.job.ended.is_set():
            self.job.stop(CLOSE_WAIT_S)
        else:
            super().quit()


class Job:
    """One generator job in a worker thread.

    ``make`` builds the generator; it receives ``should_stop`` to poll. Callbacks run on the GUI thread:
    ``on_event(event)`` for every yield, ``on_done(result)`` when the generator returns (also after a stop
    the generator honoured), ``on_finish()`` always last, after an error too.
    """

    def __init__(self, name: str, make: Callable[[Callable[[], bool]], Generator[Any, None, Any]], *,
                 on_event: Callable[[Any], None] | None = None, on_done: Callable[[Any], None] | None = None,
                 on_finish: Callable[[], None] | None = None) -> None:
        self.name = name
        self.stop_requested = threading.Event()
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self._started = False

        def run() -> Generator[Any, None, Any]:
            try:
                return (yield from make(self.stop_requested.is_set))
            except Exception as e:
                # superqt swallows a RuntimeError from the generator (it takes it for a deleted worker) and
                # then emits neither errored nor finished: CUDA out-of-memory and DeviceError are
                # RuntimeErrors, so every error travels wrapped and is unwrapped in _errored
                raise JobFailed(e) from e
            finally:
                self.ended.set()

        # errors go to _errored (a notification), not re-raised as tracebacks in the Qt event loop
        self.worker = create_worker(run, _start_thread=False, _ignore_errors=True, _worker_class=StoppingWorker)
        self.worker.job = self
        if on_event is not None:
            self.worker.yielded.connect(_guard(on_event))
        if on_done is not None:
            self.worker.returned.connect(_guard(on_done))
        self.worker.errored.connect(self._errored)
        self.worker.finished.connect(self._finished)
        self._on_finish = on_finish

    @property
    def running(self) -> bool:
        """Started and not yet ended (queued in the thread pool counts: Stop must reach it too)."""
        return self._started and not self.ended.is_set()

    def start(self) -> Job:
        self._started = True
        self.worker.start()
        return self

    def stop(self, wait: float = 0.0) -> bool:
        """Ask the job to stop at its next check; wait up to ``wait`` seconds. True when it has ended."""
        self.stop_requested.set()
        return self.ended.wait(wait) if wait else self.ended.is_set()

    def _errored(self, e: BaseException) -> None:
        e = e.error if isinstance(e, JobFailed) else e
        self.error = e
        notify_error(e)

    def _finished(self) -> None:
        if self._on_finish is not None:
            with contextlib.suppress(RuntimeError):  # the widget was deleted meanwhile (viewer closed)
                self._on_finish()


def info(message: str) -> None:
    show_info(message)
