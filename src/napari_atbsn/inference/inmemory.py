"""Denoising in-memory images (2-D, Z/T stacks, samples, channels) in windows: the one validated entry for
arrays that fit in memory (napari layers, notebooks, the comparison stack, training previews).

For files and arrays larger than memory use :func:`napari_atbsn.inference.run.denoise`,
which computes the same windows chunk by chunk and streams the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..axes import check_image, context_note, guess_axes, validate_axes
from ..config import AUTO_K_B, OutputKey
from ..errors import ConfigError, ImageError
from .output_kinds import OUTPUT_DTYPES, resolve_ks
from .quality import Calibration, calibrate
from .runtime import auto_batch_size, iter_array

if TYPE_CHECKING:
    from .denoiser import Denoiser

log = logging.getLogger("napari_atbsn")


def iter_denoise(model: Denoiser, image: Any, axes: str | None = None, *, k_b: int | None = None,
                 batch_size: int | None = None, dtype: str = "float32") -> Generator[tuple[int, int], None, np.ndarray]:
    """Denoise plane by plane; yields (windows_done, windows_total); returns the image. A stack-context model
    given an image without its context (a single plane, too few planes) denoises each plane alone and logs why."""
    outs = yield from iter_denoise_outputs(model, image, axes, ks=resolve_ks(model, k_b), batch_size=batch_size,
                                           dtype=dtype)
    assert outs is not None  # no should_stop: never stopped
    if outs.context_unused:
        log.warning(context_note(outs.context_unused))
    return outs[0]


def iter_denoise_outputs(model: Denoiser, image: Any, axes: str | None = None, *, ks: Sequence[OutputKey],
                         batch_size: int | None = None, dtype: str = "float32",
                         should_stop: Callable[[], bool] | None = None, calibration: Calibration | None = None,
                         ) -> Generator[tuple[int, int], None, list[np.ndarray] | None]:
    """Several outputs of one pass (k_b values of a teacher, a D-BSN's image and noise map ...), validated:
    yields (windows_done, windows_total); returns one array per entry of ``ks`` in the image's layout, or
    None when ``should_stop`` said so (checked after every batch of windows). ``auto`` is calibrated on
    ``image`` unless ``calibration`` (decided on a larger whole, e.g. the volume a plane comes from) is given."""
    if dtype not in OUTPUT_DTYPES:
        raise ConfigError(f"dtype={dtype!r}; choose float32 or input.")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer (windows per network call), "
                          f"or None to size it from the device's free memory.")
    check_image(image)
    arr = np.asarray(image)
    axes = validate_axes(axes or guess_axes(arr.shape), arr.ndim)
    channels = arr.shape[axes.index("C")] if "C" in axes else 1
    if channels != model.in_channels:
        raise ImageError(f"the image has {channels} channel(s) (axes {axes}, shape {arr.shape}) but the model "
                         f"expects {model.in_channels}; check --axes or use a model trained on such data.")
    if batch_size is None:
        batch_size = auto_batch_size(model)
    if AUTO_K_B in ks and calibration is None:
        calibration = calibrate(model, arr, axes, batch_size=batch_size)
    gen = iter_array(model, arr, axes, ks=list(ks), batch_size=batch_size, dtype=dtype, calibration=calibration)
    while True:
        try:
            event = next(gen)
        except StopIteration as done:
            return done.value
        yield event
        if should_stop is not None and should_stop():
            return None
