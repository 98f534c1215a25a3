"""Progress events yielded by the long-running generators, and helpers to run them.

Generators (``iter_train``, ``iter_distill``, ``iter_denoise``) yield small
frozen events made of plain numbers and ``return`` their result. Widgets run
them in a worker; scripts call the blocking wrappers, which :func:`drain`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class StepEvent:
    """One optimisation step finished."""

    stage: str  # "train" or "distill"
    step: int  # 1-based, counting steps done so far (resumed steps included)
    total: int
    loss: float
    lr: float
    its_per_sec: float


@dataclass(frozen=True)
class CheckpointEvent:
    """A resumable checkpoint was written."""

    step: int
    path: str


def drain(gen: Generator[Any, Any, R], callback: Callable[[Any], None] | None = None) -> R:
    """Run a generator to its end, passing each event to ``callback``; return its result."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)
