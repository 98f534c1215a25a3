"""An image seen as planes: which axes index planes, the plane size and the output region, and the moves
between the source's axes order and the (C, h, w) blocks the network runs on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..axes import PLANE_LETTERS, check_context_length, context_unused, neighbour_planes
from ..errors import ImageError, damaged_input
from ..tiling import Box


@dataclass(frozen=True)
class Geometry:
    """An image seen as planes: which axes index planes, the plane size, and the output region.

    A unit of work is one plane's block; for a stack-context model (``context`` > 0) it is the plane's block
    followed by the same block of its neighbours along ``context_axis`` (:meth:`read_unit`). ``assembled``
    data already holds each plane's context in its channels (the calibration's sample): the output then has
    the plane's own channels only. Where the image cannot give a ``single_plane`` model its context (no Z/T axis,
    too few planes), a unit is the plane alone (``context`` 0): the network's 2-D mode, and ``context_unused``
    says why.
    """

    axes: str
    shape: tuple[int, ...]
    region: Box  # output rows/columns of each plane (the whole plane, or the ROI)
    context: int = 0  # neighbouring planes on each side a unit reads besides its own
    context_axis: str | None = None  # along which plane axis (None: 2-D, or assembled in the channels)
    context_unused: str | None = None  # why a stack-context model reads each plane alone here (None: it does not)

    @classmethod
    def of(cls, axes: str, shape: Sequence[int], region: Box | None = None, *, context: int = 0,
           assembled: bool = False, single_plane: bool = False) -> Geometry:
        """The geometry of an image for a model taking ``context`` planes on each side. Where the image has no Z/T
        axis or too few planes along it (unless ``assembled``) a ``single_plane`` model reads each plane alone;
        any other is refused."""
        h, w = int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        if min(shape) == 0:
            raise ImageError(f"the image has an empty dimension (shape {tuple(shape)}, axes {axes}).")
        shape, region = tuple(int(s) for s in shape), region or Box(0, h, 0, w)
        unused = None if assembled or not single_plane else context_unused(axes, shape, context)
        if unused is not None:
            return cls(axes, shape, region, 0, None, unused)
        axis = None if assembled else check_context_length(axes, shape, context)
        return cls(axes, shape, region, context, axis)

    @property
    def plane_axes(self) -> str:
        return "".join(a for a in self.axes if a in PLANE_LETTERS)

    @property
    def plane_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[self.axes.index(a)] for a in self.plane_axes)

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.plane_shape)) if self.plane_shape else 1

    @property
    def channels(self) -> int:
        return self.shape[self.axes.index("C")] if "C" in self.axes else 1

    @property
    def out_channels(self) -> int:
        """Channels of the output: the image's, or a plane's own where the data is assembled with its context."""
        if self.context and self.context_axis is None:
            return self.channels // (2 * self.context + 1)
        return self.channels

    @property
    def height(self) -> int:
        return self.shape[self.axes.index("Y")]

    @property
    def width(self) -> int:
        return self.shape[self.axes.index("X")]

    def plane_index(self, n: int) -> dict[str, int]:
        idx = np.unravel_index(n, self.plane_shape) if self.plane_shape else ()
        return {a: int(i) for a, i in zip(self.plane_axes, idx, strict=True)}

    def out_shape(self) -> tuple[int, ...]:
        """Output shape in the input's axes order (Y, X cut to the region)."""
        sizes = {"Y": self.region.y1 - self.region.y0, "X": self.region.x1 - self.region.x0, "C": self.out_channels}
        return tuple(sizes.get(a, s) for a, s in zip(self.axes, self.shape, strict=True))

    def source_index(self, n: int, y0: int, y1: int, x0: int, x1: int) -> tuple[Any, ...]:
        """Index into the source for rows/columns of plane n (all channels)."""
        plane = self.plane_index(n)
        spans = {"Y": slice(y0, y1), "X": slice(x0, x1)}
        return tuple(plane[a] if a in plane else spans.get(a, slice(None)) for a in self.axes)

    def unit_indexes(self, n: int, y0: int, y1: int, x0: int, x1: int) -> list[tuple[Any, ...]]:
        """Indexes into the source of plane n's block and of its context planes' (axes.neighbour_planes order)."""
        planes = neighbour_planes(n, self.plane_axes, self.plane_shape, self.context, self.context_axis)
        return [self.source_index(m, y0, y1, x0, x1) for m in planes]

    def read_unit(self, data: Any, n: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The (C', h, w) pixels the network reads for plane n's block: its own channels, then its context's."""
        return self.assemble([read_block(data, i) for i in self.unit_indexes(n, y0, y1, x0, x1)])

    def assemble(self, blocks: Sequence[Any]) -> np.ndarray:
        """Blocks read at :meth:`unit_indexes` as one (C', h, w) array."""
        parts = [self.to_cyx(np.asarray(b)) for b in blocks]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def to_cyx(self, block: np.ndarray) -> np.ndarray:
        """A block indexed by :meth:`source_index` as (C, h, w)."""
        rest = [a for a in self.axes if a in "CYX"]
        block = np.transpose(block, [rest.index(a) for a in "CYX" if a in rest])
        return block if "C" in rest else block[None]


def read_block(data: Any, index: tuple[Any, ...]) -> np.ndarray:
    """Pixels of a numpy/dask/zarr-like array; dask runs in this thread (no nested pools). A corrupt strip or
    chunk is a ReadError naming the block."""
    with damaged_input(_describe(index)):
        block = data[index]
        if hasattr(block, "compute"):
            block = block.compute(scheduler="synchronous")
        return np.asarray(block)


def _describe(index: tuple[Any, ...]) -> str:
    """``[1, 0:96, 32:64]``: an index as a user reads it."""
    parts = [f"{i.start or 0}:{i.stop}" if isinstance(i, slice) and i.stop is not None else
             (":" if isinstance(i, slice) else str(int(i))) for i in index]
    return "[" + ", ".join(parts) + "]"


def from_cyx(res: np.ndarray, geom: Geometry) -> np.ndarray:
    """(C, h, w) back to the order of the source's C/Y/X axes (inverse of Geometry.to_cyx)."""
    rest = [a for a in geom.axes if a in "CYX"]
    if "C" not in rest:
        return res[0]
    order = [a for a in "CYX" if a in rest]
    return np.transpose(res, [order.index(a) for a in rest])


def full_shape(o: np.ndarray, geom: Geometry) -> list[int]:
    """Shape of a (C?, h, w) block with singleton plane axes inserted, in source order."""
    it = iter(o.shape)
    return [1 if a in geom.plane_axes else next(it) for a in geom.axes]
