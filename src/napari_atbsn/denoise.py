"""Denoising whole images (2-D, Z/T stacks, samples, channels) in windows."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np

from .axes import from_planes, guess_axes, to_planes, validate_axes
from .errors import BlindSpotError, ConfigError, ImageError
from .imageio import check_image
from .tiling import iter_tiled, plan_windows

if TYPE_CHECKING:
    from .modelio import Denoiser

OUTPUT_DTYPES = ("float32", "input")


def iter_denoise(model: Denoiser, image: Any, axes: str | None = None, *, k_b: int | None = None,
                 batch_size: int = 4, dtype: str = "float32") -> Generator[tuple[int, int], None, np.ndarray]:
    """Denoise plane by plane; yields (windows_done, windows_total); returns the image."""
    if dtype not in OUTPUT_DTYPES:
        raise ConfigError(f"dtype={dtype!r}; choose float32 or input.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer (windows per network call).")
    if k_b is not None and model.kind != "atbsn":
        raise BlindSpotError("k_b applies to AT-BSN teachers; a distilled student has no blind spot. Leave k_b unset.")
    check_image(image)
    arr = np.asarray(image)
    axes = validate_axes(axes or guess_axes(arr.shape), arr.ndim)
    planes = to_planes(arr, axes)
    n, c, h, w = planes.shape
    if c != model.in_channels:
        raise ImageError(f"the image has {c} channel(s) (axes {axes}, shape {arr.shape}) but the model expects "
                         f"{model.in_channels}; check --axes or use a model trained on such data.")
    if not np.all(np.isfinite(planes)):
        raise ImageError("the image contains NaN or Inf pixels; replace them before denoising.")
    out = np.empty((n, c, h, w), dtype=np.float32)
    total = n * len(plan_windows(h, w, model.patch, model.halo))
    done = 0

    def fn(tiles: np.ndarray) -> np.ndarray:
        return model.run_normalized(tiles, k_b)

    for i in range(n):
        normed = model.normalization.apply(planes[i].astype(np.float32))
        result = np.empty_like(normed)
        for d, _ in iter_tiled(fn, normed, window=model.patch, halo=model.halo, batch_size=batch_size, out=result):
            yield done + d, total
        done = (i + 1) * total // n
        out[i] = model.normalization.undo(result)
    result_img = from_planes(out, axes, arr.shape)
    if dtype == "input" and arr.dtype.kind in "ui":
        info = np.iinfo(arr.dtype)
        result_img = np.clip(np.rint(result_img), info.min, info.max).astype(arr.dtype)
    elif dtype == "input":
        result_img = result_img.astype(arr.dtype)
    return np.ascontiguousarray(result_img)
