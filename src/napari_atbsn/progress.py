"""A dependency-free terminal progress bar with rate and ETA, and the callback that shows training events
with it (the command line's and the demo's)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


def format_seconds(s: float) -> str:
    s = max(0, int(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


class ProgressBar:
    """Redraws one line on a terminal; prints a line every 10 % otherwise (logs, CI)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, width: int = 24) -> None:
        self.label, self.total, self.width = label, max(1, total), width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.start_done: int | None = None
        self._last_decile = -1

    def update(self, done: int, extra: str = "") -> None:
        if self.start_done is None:  # rate is measured from the first update on
            self.start_done, self.t0 = done, time.perf_counter()
        elapsed = time.perf_counter() - self.t0
        rate = (done - self.start_done) / elapsed if elapsed > 0 and done > self.start_done else 0.0
        eta_text = format_seconds((self.total - done) / rate) if rate > 0 else "?"
        frac = done / self.total
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        line = (f"{self.label} [{bar}] {done}/{self.total} {100 * frac:3.0f}% {rate:.2f} it/s "
                f"ETA {eta_text}{'  ' + extra if extra else ''}")
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            if done >= self.total:
                self.stream.write("\n")
        else:
            decile = int(frac * 10)
            if decile != self._last_decile or done >= self.total:
                self._last_decile = decile
                self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def progress_callback(label: str) -> Callable[[Any], None]:
    """A :func:`~napari_atbsn.events.drain` callback that shows a training run's steps as a progress bar on
    stderr, one bar per stage (D-BSN trains in phases), and its checkpoints when stderr is not a terminal."""
    from .events import CheckpointEvent, QualityEvent, StepEvent

    bar: ProgressBar | None = None
    stage: str | None = None

    def cb(event: Any) -> None:
        nonlocal bar, stage
        if isinstance(event, StepEvent):
            if bar is None or event.stage != stage:  # D-BSN trains in phases: one bar each
                stage = event.stage
                bar = ProgressBar(stage if stage.startswith("dbsn") else label, event.total)
            bar.update(event.step, f"loss {event.loss:.4f} lr {event.lr:.2e}")
        elif isinstance(event, CheckpointEvent) and bar is not None and not bar.tty:
            print(f"  checkpoint at step {event.step}", file=sys.stderr)
        elif isinstance(event, QualityEvent):
            lead = "\n" if bar is not None and bar.tty else ""  # below the bar, which redraws on its own line
            warn = "  (WORSE than the input so far)" if event.worse else ""
            print(f"{lead}  {event.stage}: {event.line}{warn}", file=sys.stderr)

    return cb


def count_callback(label: str) -> Callable[[tuple[int, int]], None]:
    """A :func:`~napari_atbsn.events.drain` callback for ``(done, total)`` events (a chunked denoise): one bar
    on stderr whose total follows the events."""
    bar = ProgressBar(label, 1)

    def cb(event: tuple[int, int]) -> None:
        bar.total = max(1, event[1])
        bar.update(event[0])

    return cb
