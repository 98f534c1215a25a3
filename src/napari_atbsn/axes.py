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


# -- neighbouring planes as context (Z-stacks and time-lapses) ---------------------------------------------------
#: Axes along which neighbouring planes may serve as context, in order of preference: Z (depth), else T (time).
#: S (independent samples) never: its planes need not show the same structures.
CONTEXT_LETTERS = "ZT"
#: The most neighbouring planes a model may take on each side.
MAX_CONTEXT = 8


def context_axis(axes: str, shape: Sequence[int] | None = None) -> str | None:
    """The axis whose neighbouring planes give context: Z if ``axes`` has it, else T, else None. With ``shape``,
    an axis of one plane does not count (an OME TZCYX time-lapse of single planes takes its context along T)."""
    present = [a for a in CONTEXT_LETTERS if a in axes]
    if shape is not None:
        present = [a for a in present if int(shape[axes.index(a)]) > 1] or present
    return present[0] if present else None


def context_offsets(context: int) -> list[int]:
    """Plane offsets of the context, in the order the networks take them: -1, +1, -2, +2, ... (the centre plane,
    offset 0, comes first and is not listed)."""
    return [s * d for d in range(1, context + 1) for s in (-1, 1)]


def context_unused(axes: str, shape: Sequence[int], context: int) -> str | None:
    """Why an image with ``axes`` and ``shape`` cannot give a model its ``context`` planes on each side (no Z or T
    axis, or fewer than 2 * context + 1 planes along it: the mirror at the ends needs them), None where it can."""
    if context == 0:
        return None
    axis = context_axis(axes, shape)
    if axis is None:
        return f"the image (axes {axes!r}) has no Z or T axis"
    length = int(shape[axes.index(axis)])
    if length < 2 * context + 1:
        return (f"{length} plane(s) along {axis}, fewer than the {2 * context + 1} that {context} neighbouring "
                f"plane(s) on each side need")
    return None


def context_note(reason: str) -> str:
    """What a denoise tells its user when a stack-context model denoises each plane alone (``reason``:
    :func:`context_unused`)."""
    return f"stack context unused: {reason}; each plane is denoised alone (the model's 2-D mode)"


def check_context_length(axes: str, shape: Sequence[int], context: int, *, training: bool = False) -> str | None:
    """The context axis of an image with ``axes`` and ``shape`` for a model taking ``context`` planes on each side
    (None for a 2-D model); refuses an image that has no such axis or too few planes along it, with the fix for
    a run that denoises (or, ``training``, one that trains)."""
    if context == 0:
        return None
    axis = context_axis(axes, shape)
    who = "--context" if training else "the model"
    if axis is None:
        fix = ("train with --context 0 (plane by plane), or give the whole stack and check --axes" if training else
               "denoise the whole stack, check --axes, or use a model trained with --context 0")
        raise AxesError(f"{who} {'asks for' if training else 'takes'} {context} neighbouring plane(s) on each side "
                        f"along Z or T, but the image (axes {axes!r}) has neither: {fix}.")
    length = int(shape[axes.index(axis)])
    if length < 2 * context + 1:
        most = max(0, (length - 1) // 2)
        fix = f"train with --context {most}" if training else f"use a model trained with --context {most}"
        raise AxesError(f"{who} {'asks for' if training else 'takes'} {context} neighbouring plane(s) on each side "
                        f"along {axis}, so it needs at least {2 * context + 1} planes along {axis}; the image has "
                        f"{length}: {fix}.")
    return axis


def neighbour_planes(plane: int, plane_axes: str, plane_shape: Sequence[int], context: int,
                     axis: str | None) -> list[int]:
    """Plane numbers (in the row-major order of ``plane_axes``) of plane ``plane`` and its context: itself, then its
    neighbours at :func:`context_offsets` along ``axis``. At the stack's ends a missing neighbour is mirrored about
    the centre (offset -d becomes +d), never the centre itself, whose noise must not reach the network unmasked;
    :func:`check_context_length` guarantees the mirror lies inside the stack."""
    if context == 0 or axis is None:
        return [plane]
    index = list(np.unravel_index(plane, tuple(plane_shape)))
    a = plane_axes.index(axis)
    length = int(plane_shape[a])
    if length < 2 * context + 1:
        raise AxesError(f"{length} plane(s) along {axis} cannot give {context} neighbour(s) on each side; "
                        f"at least {2 * context + 1} are needed.")
    out = [plane]
    for d in context_offsets(context):
        j = int(index[a]) + d
        if not 0 <= j < length:
            j = int(index[a]) - d
        index_d = list(index)
        index_d[a] = j
        out.append(int(np.ravel_multi_index(index_d, tuple(plane_shape))))
    return out
