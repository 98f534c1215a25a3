"""Denoising in-memory images (2-D, Z/T stacks, samples, channels) in windows.

For files and arrays larger than memory use :func:`napari_atbsn.inference.pipeline.denoise`,
which computes the same windows chunk by chunk and streams the result.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..axes import guess_axes, validate_axes
from ..errors import ConfigError, ImageError
from ..io.files import check_image
from .pipeline import OUTPUT_DTYPES, iter_denoise_array, resolve_ks

if TYPE_CHECKING:
    from .denoiser import Denoiser


def iter_denoise(model: Denoiser, image: Any, axes: str | None = None, *, k_b: int | None = None,
                 batch_size: int = 4, dtype: str = "float32") -> Generator[tuple[int, int], None, np.ndarray]:
    """Denoise plane by plane; yields (windows_done, windows_total); returns the image."""
    if dtype not in OUTPUT_DTYPES:
        raise ConfigError(f"dtype={dtype!r}; choose float32 or input.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer (windows per network call).")
    ks = resolve_ks(model, k_b)
    check_image(image)
    arr = np.asarray(image)
    axes = validate_axes(axes or guess_axes(arr.shape), arr.ndim)
    channels = arr.shape[axes.index("C")] if "C" in axes else 1
    if channels != model.in_channels:
        raise ImageError(f"the image has {channels} channel(s) (axes {axes}, shape {arr.shape}) but the model "
                         f"expects {model.in_channels}; check --axes or use a model trained on such data.")
    outs = yield from iter_denoise_array(model, arr, axes, ks=ks, batch_size=batch_size, dtype=dtype)
    return outs[0]
