"""Progress events yielded by the long-running generators, and helpers to run them.

Generators (``iter_train``, ``iter_distill``, ``iter_denoise``) yield small
frozen events made of plain numbers and ``return`` their result. Widgets run
them in a worker; scripts call the blocking wrappers, which :func:`drain`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

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


@dataclass(frozen=True)
class Preview:
    """Ask a training run to denoise ``image`` with the network being trained every ``every`` steps.

    ``image`` is a noisy crop of one plane in the data's units, with ``axes``
    (YX, YXC or CYX): small enough to run in a fraction of a step.
    """

    image: np.ndarray
    axes: str
    every: int = 50
    #: For a stack-context network: ``neighbours(n)`` gives the same crop of the viewed plane's n neighbouring
    #: planes on each side, (C * 2n, h, w) in axes.context_offsets order, or None where the stack has too few.
    neighbours: Callable[[int], np.ndarray | None] | None = None

    def __post_init__(self) -> None:
        from .errors import ConfigError

        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ConfigError(f"preview every={self.every!r} must be a positive number of steps.")
        if set(self.axes) - set("CYX") or not {"Y", "X"} <= set(self.axes) or len(self.axes) != np.ndim(self.image):
            raise ConfigError(f"preview axes {self.axes!r} must name the {np.ndim(self.image)} axes of one plane "
                              f"(YX, YXC or CYX).")


@dataclass(frozen=True)
class PreviewEvent:
    """The preview crop denoised by the network as it is at ``step`` (same shape and axes as the crop)."""

    stage: str
    step: int
    image: np.ndarray


@dataclass(frozen=True)
class QualityEvent:
    """A self-supervised estimate of the network in training, on a fixed sample of the training data.

    ``estimates`` maps each output (``"mu"``: D-BSN's blind-spot estimate; ``"fused"``: its Bayes fusion) to its
    estimated PSNR gain over the noisy input in dB; ``line`` is what a progress display prints.
    """

    stage: str
    step: int
    estimates: dict[str, float]
    line: str

    @property
    def worse(self) -> bool:
        """Whether every output measured is estimated worse than the input."""
        return bool(self.estimates) and max(self.estimates.values()) < 0


def drain(gen: Generator[Any, Any, R], callback: Callable[[Any], None] | None = None) -> R:
    """Run a generator to its end, passing each event to ``callback``; return its result."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)
