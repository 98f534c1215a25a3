"""Compare widget: several k_b (and optionally a student) side by side, computed only for the plane in view.

The versions form one :class:`~napari_atbsn.comparison.ComparisonStack`: either
one layer with an extra leading axis under a slider, or one linked layer per
version in napari's grid. Each plane is computed once for all k_b (a single
backbone pass) when first shown; moving the cursor shows the values of every
version at that pixel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, Select
from qtpy.QtWidgets import QLabel

from ..comparison import ComparisonStack, versions_for
from ..config import DEFAULT_KS
from ..errors import ConfigError
from ..inference.denoiser import load_model
from ._base import JobWidget, device_choices, display_kwargs, display_limits, folder_or_none, result_metadata
from ._job import info
from ._source import SourcePicker

LAYOUTS = [("one layer, k_b under a slider", "stack"), ("grid of linked layers", "grid")]


class VersionView:
    """One version of a ComparisonStack as an array (the grid layout's layers share the stack's cache)."""

    def __init__(self, stack: ComparisonStack, index: int) -> None:
        self.stack, self.index = stack, index
        self.shape, self.dtype, self.ndim = stack.shape[1:], stack.dtype, stack.ndim - 1

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        return self.stack[(self.index, *key)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.stack[self.index]
        return out if dtype is None else out.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]


class CompareWidget(JobWidget):
    run_label = "Compare"

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.source = SourcePicker(self)
        self.model_dir = FileEdit(label="teacher folder", mode="d", value=None, nullable=True,
                                  tooltip="an AT-BSN teacher folder: every k_b comes from one backbone pass")
        self.k_bs = Select(label="k_b values", choices=list(DEFAULT_KS), value=[1, 3, 5, 9],
                           tooltip="the inference blind spots to compare")
        self.student_dir = FileEdit(label="student folder", mode="d", value=None, nullable=True,
                                    tooltip="optional: a distilled student (or any other model) to add as a version")
        self.layout_mode = ComboBox(label="show as", choices=LAYOUTS, value="stack")
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        self.form.extend([*self.source.fields, self.model_dir, self.k_bs, self.student_dir, self.layout_mode,
                          self.device])
        self.stop_button.hide()  # nothing runs in the background: planes are computed as they are shown
        self.progress.hide()
        self.readout = QLabel("")
        self.readout.setWordWrap(True)
        self.extra.addWidget(self.readout)
        self.stack: ComparisonStack | None = None
        self.layers: list[Any] = []
        self.viewer.mouse_move_callbacks.append(self._on_mouse_move)

    def start(self) -> None:
        src = self.source.get()
        versions = self._versions(src)
        self.stack = stack = ComparisonStack(src.array, src.axes, versions)
        kw = display_kwargs(src.layer) if src.layer is not None else {}
        if "contrast_limits" not in kw and not kw.get("rgb"):
            kw["contrast_limits"] = display_limits(src.array)
        kw.pop("axis_labels", None)
        record = result_metadata(versions[0].model, k=versions[0].k, source=src.name, versions=stack.labels,
                                 models={v.label: str(v.model.path) for v in versions}, lazy=True)
        self.layers = []
        if self.layout_mode.value == "stack":
            msg = self._show_stack(src.name, stack, record, kw)
        else:
            msg = self._show_grid(src.name, stack, record, kw)
        self.status.setText(msg + ". Planes are denoised when shown; hover to read every version's value.")
        info(msg)

    def _versions(self, src: Any) -> list[Any]:
        """The teacher's versions (its default, blended, then each k_b) and the student's, as chosen in the form,
        each with its estimated gain over the input."""
        versions = []
        teacher = folder_or_none(self.model_dir.value)
        if teacher is not None:
            model = load_model(teacher, device=self.device.value)
            if model.kind != "atbsn":
                raise ConfigError(f"{teacher} holds a {model.name}, not an AT-BSN teacher; k_b values need a "
                                  f"teacher. Put other models in the student field.")
            ks = sorted(int(k) for k in self.k_bs.value)
            if not ks:
                raise ConfigError("select at least one k_b value.")
            versions += versions_for(model, ks, data=src.array, axes=src.axes)
        student = folder_or_none(self.student_dir.value)
        if student is not None:
            versions += versions_for(load_model(student, device=self.device.value), data=src.array, axes=src.axes)
        if not versions:
            raise ConfigError("choose a teacher folder (and k_b values), a student folder, or both.")
        return versions

    def _show_stack(self, name: str, stack: ComparisonStack, record: dict[str, Any], kw: dict[str, Any]) -> str:
        """One layer whose first axis is the version."""
        for key in ("rotate", "shear", "affine", "units"):  # the version axis has no place in these
            kw.pop(key, None)
        scale = kw.pop("scale", None)
        translate = kw.pop("translate", None)
        if scale is not None:
            kw["scale"], kw["translate"] = (1.0, *scale), (0.0, *translate)
        self.layers.append(self.viewer.add_image(stack, name=f"{name}_compare", metadata=record, **kw))
        labels = list(self.viewer.dims.axis_labels)
        if len(labels) == stack.ndim:
            labels[0] = "version"
            self.viewer.dims.axis_labels = labels
        return "versions on the first slider: " + ", ".join(f"{i}: {lab}" for i, lab in enumerate(stack.labels))

    def _show_grid(self, name: str, stack: ComparisonStack, record: dict[str, Any], kw: dict[str, Any]) -> str:
        """One linked layer per version, in a grid."""
        from napari.experimental import link_layers

        for i, v in enumerate(stack.versions):
            layer_name = f"{name}_{layer_suffix(v)}"
            meta = {"napari_atbsn": {**record["napari_atbsn"], "version": v.label}}
            self.layers.append(self.viewer.add_image(VersionView(stack, i), name=layer_name, metadata=meta, **kw))
        link_layers(self.layers, ("contrast_limits", "gamma", "colormap", "interpolation2d"))
        self.viewer.grid.enabled = True
        return f"{len(stack.versions)} linked layers in a grid"

    def values_at(self, world: Any) -> dict[str, float] | None:
        """Each version's value at a world position, from planes already computed (None if not shown yet)."""
        if self.stack is None or not self.layers:
            return None
        layer = self.layers[0]
        coords = np.asarray(layer.world_to_data(world))
        if len(self.layers) == 1:
            coords = coords[1:]  # the version axis
        coords = [round(float(c)) for c in coords[-len(self.stack.axes) if not layer.rgb else None:]]
        axes = self.stack.axes.replace("C", "") if layer.rgb else self.stack.axes
        shape = [s for a, s in zip(self.stack.axes, self.stack.shape[1:], strict=True) if a in axes]
        if len(coords) != len(axes) or any(not 0 <= c < s for c, s in zip(coords, shape, strict=True)):
            return None
        pos = dict(zip(axes, coords, strict=True))
        plane = self.stack.cached([pos[a] for a in self.stack.axes if a in "TZ"])
        if plane is None:
            return None
        index = tuple(slice(None) if a == "C" else pos[a] for a in self.stack.axes if a not in "TZ")
        vals = plane[(slice(None), *index)]
        return {lab: np.asarray(v, dtype=np.float64).tolist() for lab, v in zip(self.stack.labels, vals, strict=True)}

    def _on_mouse_move(self, viewer: Any, event: Any) -> None:
        try:
            vals = self.values_at(viewer.cursor.position)
        except Exception:  # the cursor over another layer's geometry: no read-out, never an error
            vals = None
        if vals:
            self.readout.setText("  ".join(f"{k}: {_fmt(v)}" for k, v in vals.items()))

    def closeEvent(self, event: Any) -> None:
        if self._on_mouse_move in self.viewer.mouse_move_callbacks:
            self.viewer.mouse_move_callbacks.remove(self._on_mouse_move)
        super().closeEvent(event)


def layer_suffix(v: Any) -> str:
    """A grid layer's name after the source's: ``atbsn_auto_kb5``, ``atbsn_kb3``, ``student_A``, ``dbsn``."""
    if v.model.kind == "atbsn":
        return f"atbsn_auto_kb{v.calibration.k_b}" if v.k == "auto" else f"atbsn_kb{v.k}"
    return v.model.name


def _fmt(v: Any) -> str:
    return f"{v:.5g}" if isinstance(v, float) else "(" + ", ".join(f"{x:.4g}" for x in v) + ")"
