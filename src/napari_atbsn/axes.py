"""Axes strings and the canonical plane layout.

Letters: T (time), Z (depth), S (independent samples), C (channels), Y, X.
The networks are 2-D, so every T/Z/S index is a separate plane; C is the
network's channel axis. Internally an image is viewed as planes of shape
(N, C, Y, X) with N the product of the T, Z and S sizes in their given order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import AxesError, ImageError

LETTERS = "TZSCYX"
PLANE_LETTERS = "TZS"


def reorder_for(recorded: str | None, requested: str) -> tuple[int, ...] | None:
    """The transposition from a file's recorded axes to ``requested`` when both list the same axes in a
    different order, else None.

    A TIFF stores its planes last (our writer keeps a 2-channel ``YXC`` image as ``CYX`` and records
    that), so ``--axes YXC`` on such a file asks for that order: the stored array is transposed rather
    than relabelled, which would scramble pixels and channels silently. Other letters than the file's
    (metadata that calls Z "T") still relabel.
    """
    if not isinstance(recorded, str) or recorded == requested or sorted(recorded) != sorted(requested):
        return None
    return tuple(recorded.index(a) for a in requested)


def validate_axes(axes: str, ndim: int) -> str:
    """Check that ``axes`` names each of ``ndim`` dimensions once and includes Y and X."""
    if not isinstance(axes, str) or not axes:
        raise AxesError(f"axes must be a string such as 'YX' or 'ZYX', got {axes!r}.")
    axes = axes.upper()
    bad = sorted(set(axes) - set(LETTERS))
    if bad:
        raise AxesError(f"axes {axes!r} has unknown letter(s) {''.join(bad)}; use letters from {LETTERS} "
                        f"(T time, Z depth, S samples, C channels, Y, X).")
    repeated = sorted({a for a in axes if axes.count(a) > 1})
    if repeated:
        raise AxesError(f"axes {axes!r} repeats {''.join(repeated)}; name each dimension once, e.g. 'ZYX'.")
    if len(axes) != ndim:
        raise AxesError(f"axes {axes!r} has {len(axes)} letters but the data has {ndim} dimensions; "
                        f"give one letter per dimension.")
    if "Y" not in axes or "X" not in axes:
        raise AxesError(f"axes {axes!r} must include Y and X (the image plane).")
    return axes


def guess_axes(shape: Sequence[int]) -> str:
    """Axes for data without metadata: YX, YXC (last side <= 4), ZYX, ZCYX / ZYXC.

    A guess only: callers print it so the user can override it with ``--axes``.
    """
    nd = len(shape)
    if nd == 2:
        return "YX"
    if nd == 3:
        return "YXC" if shape[-1] <= 4 else "ZYX"
    if nd == 4:
        return "ZYXC" if shape[-1] <= 4 else "ZCYX"
    if nd == 5:
        return "TZCYX"
    if nd < 2:
        raise AxesError(f"the data is {nd}-D; an image needs at least 2 dimensions (Y and X).")
    raise AxesError(f"the data is {nd}-D; at most 5 dimensions (T, Z, C, Y, X) are supported. "
                    f"Split it or give --axes.")


def plane_order(axes: str) -> tuple[list[int], str]:
    """Permutation that brings ``axes`` to (plane axes..., C?, Y, X), and the permuted axes string."""
    order = [axes.index(a) for a in axes if a in PLANE_LETTERS]
    if "C" in axes:
        order.append(axes.index("C"))
    order += [axes.index("Y"), axes.index("X")]
    return order, "".join(axes[i] for i in order)


def to_planes(data: Any, axes: str) -> np.ndarray:
    """View ``data`` (numpy-like) as (N, C, Y, X); C = 1 when ``axes`` has no C."""
    axes = validate_axes(axes, np.ndim(data))
    order, _ = plane_order(axes)
    arr = np.transpose(np.asarray(data), order)
    c = arr.shape[-3] if "C" in axes else 1
    return arr.reshape(-1, c, arr.shape[-2], arr.shape[-1])


def from_planes(planes: np.ndarray, axes: str, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`to_planes`: (N, C, Y, X) back to ``shape`` in ``axes`` order."""
    order, _ = plane_order(axes)
    permuted_shape = [shape[i] for i in order]
    arr = planes.reshape(permuted_shape)
    return np.transpose(arr, np.argsort(order))


def check_image(data: Any, name: str = "image") -> None:
    """Refuse data no denoiser can use: wrong dtype, fewer than 2 dims."""
    arr = np.asarray(data) if not hasattr(data, "dtype") else data
    if arr.dtype.kind not in "uif":
        raise ImageError(f"{name} has dtype {arr.dtype}; convert it to an integer or float type "
                         f"(complex, boolean and object images are not supported).")
    if arr.ndim < 2:
        raise ImageError(f"{name} is {arr.ndim}-D; an image needs at least 2 dimensions (Y and X).")
