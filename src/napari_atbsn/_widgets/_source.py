"""Where a widget's input comes from: an image layer, or a file too big to open as a layer."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import FileEdit, LineEdit
from napari.layers import Image

from ..axes import check_context_length, neighbour_planes, validate_axes
from ..errors import AxesError, ConfigError, ReadError
from ..inference.geometry import Geometry
from ..io.readers import open_image
from ._base import JobWidget, layer_axes

PLANE_AXES = "TZ"


@dataclass
class Source:
    """The chosen input: its data (array-like or LazyImage), axes, a display name and the layer if any."""

    data: Any
    axes: str
    name: str
    layer: Image | None = None
    path: Path | None = None

    @property
    def array(self) -> Any:
        """The pixel array itself (a LazyImage's dask array)."""
        return self.data.data if self.layer is None else self.data


class SourcePicker:
    """Three form fields: an image layer, an optional file that replaces it, and the axes (prefilled, editable)."""

    def __init__(self, widget: JobWidget, *, file_ok: bool = True) -> None:
        self.widget = widget
        self.layer = widget.layer_combo("image")
        self.file = FileEdit(label="or file", mode="r", value=None, nullable=True,
                             tooltip="a TIFF, Zarr/OME-Zarr, NIfTI or .npy file, read lazily (for data too big "
                                     "to open as a layer); leave empty to use the layer")
        self.axes = LineEdit(label="axes", tooltip="one letter per dimension: T, Z, C, Y, X (prefilled from the "
                                                   "layer or file; edit if wrong)")
        self.fields = [self.layer, self.file, self.axes] if file_ok else [self.layer, self.axes]
        self.layer.changed.connect(self._refill)
        self.file.changed.connect(self._refill)
        self._refill()

    def _file(self) -> Path | None:
        text = str(self.file.value or "").strip()
        return Path(text).expanduser() if text and text != "." else None

    def _refill(self, *_: Any) -> None:
        path = self._file()
        if path is not None:
            with contextlib.suppress(Exception):  # reported when the job starts, with the reader's message
                self.axes.value = open_image(path).axes
        elif isinstance(self.layer.value, Image):
            self.axes.value = layer_axes(self.layer.value)

    def get(self) -> Source:
        """The input, with its axes checked against its shape."""
        axes = (self.axes.value or "").strip().upper()
        if not axes:
            raise ConfigError("the axes field is empty; give one letter per dimension, e.g. ZYX.")
        path = self._file()
        if path is not None:
            if not path.exists():
                raise ReadError(f"{path} does not exist; choose an existing file or clear the file field to use "
                                f"the layer.")
            # through open_image: axes listing the file's recorded axes in another order transpose the data
            lazy = open_image(path, axes)
            return Source(lazy, lazy.axes, path.name.split(".")[0], None, path)
        layer = self.layer.value
        if not isinstance(layer, Image):
            raise ConfigError("no image layer: open an image (or File > Open Sample > napari-atbsn) or choose a "
                              "file.")
        # a multiscale layer: the full-resolution level (its geometry is the layer's own)
        data = layer.data[0] if layer.multiscale else layer.data
        return Source(data, validate_axes(axes, len(np.shape(data))), layer.name, layer)


def current_plane(source: Source, viewer: Any) -> dict[int, int]:
    """Index of the plane the viewer shows, for each plane axis (T/Z) of the source (0 for a file)."""
    dims = [i for i, a in enumerate(source.axes) if a in PLANE_AXES]
    if source.layer is None:
        return dict.fromkeys(dims, 0)
    point = source.layer.world_to_data(viewer.dims.point)
    shape = np.shape(source.array)
    return {d: int(np.clip(round(float(point[d])), 0, shape[d] - 1)) for d in dims}


def center_crop(source: Source, viewer: Any, side: int, plane: dict[int, int] | None = None,
                ) -> tuple[np.ndarray, str, tuple[int, int]]:
    """A ``side``-pixel crop of the centre of the viewed plane (or of ``plane``, an index per T/Z dimension):
    (crop, its axes, (y0, x0))."""
    arr, axes = source.array, source.axes
    h, w = arr.shape[axes.index("Y")], arr.shape[axes.index("X")]
    side_y, side_x = min(side, h), min(side, w)
    y0, x0 = (h - side_y) // 2, (w - side_x) // 2
    index: list[Any] = [slice(None)] * len(axes)
    for d, i in (current_plane(source, viewer) if plane is None else plane).items():
        index[d] = i
    index[axes.index("Y")] = slice(y0, y0 + side_y)
    index[axes.index("X")] = slice(x0, x0 + side_x)
    crop = np.asarray(arr[tuple(index)])
    return crop, "".join(a for a in axes if a not in PLANE_AXES), (y0, x0)


def context_crops(source: Source, viewer: Any, side: int, context: int) -> np.ndarray | None:
    """The crop of :func:`center_crop` in the viewed plane's ``context`` neighbouring planes on each side along Z
    (else T), as (C * 2 * context, h, w) in axes.context_offsets order; None where the source has too few."""
    arr, axes = source.array, source.axes
    try:
        axis = check_context_length(axes, np.shape(arr), context)
    except AxesError:
        return None
    if axis is None:
        return None
    d = axes.index(axis)
    here = current_plane(source, viewer)
    crops = []
    for j in neighbour_planes(here[d], axis, (int(arr.shape[d]),), context, axis)[1:]:
        crop, crop_axes, _ = center_crop(source, viewer, side, {**here, d: j})
        crops.append(Geometry.of(crop_axes, crop.shape).to_cyx(crop.astype(np.float32)))
    return np.concatenate(crops, axis=0)


def crop_layer_kwargs(source: Source, crop_axes: str, origin: tuple[int, int]) -> dict[str, Any]:
    """Scale and translate that put a crop where it came from, over the source layer."""
    if source.layer is None:
        return {}
    layer = source.layer
    dims = source.axes.replace("C", "") if layer.rgb else source.axes  # the layer's own dimensions
    iy, ix = dims.index("Y"), dims.index("X")
    sy, sx = layer.scale[iy], layer.scale[ix]
    ty, tx = layer.translate[iy], layer.translate[ix]
    lead = len(crop_axes) - 2 - (1 if layer.rgb else 0)  # a non-RGB channel axis stays a dimension of its own
    kw = {"scale": (1.0,) * lead + (sy, sx), "translate": (0.0,) * lead + (ty + origin[0] * sy, tx + origin[1] * sx),
          "rgb": layer.rgb}
    if not layer.rgb:
        kw["colormap"] = layer.colormap
        kw["contrast_limits"] = tuple(float(c) for c in layer.contrast_limits)
    return kw
