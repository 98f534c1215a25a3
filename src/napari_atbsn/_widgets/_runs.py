"""The part of the Train and Distill widgets that is the same: Resume, the live loss plot, the preview layer
refreshed during training, and the closing message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, SpinBox
from qtpy.QtWidgets import QLabel, QPushButton

from ..errors import ConfigError
from ..events import CheckpointEvent, Preview, PreviewEvent, QualityEvent, StepEvent
from ..exports import export as export_model
from ..modelio import read_config
from ._base import JobWidget, folder_or_none
from ._job import info
from ._plot import LinePlot
from ._source import Source, center_crop, context_crops, crop_layer_kwargs


class RunWidget(JobWidget):
    """A widget that runs an optimisation: Stop saves a checkpoint, Resume continues it."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.out_dir = FileEdit(label="output folder", mode="d", value=None, nullable=True,
                                tooltip="the model folder to write (config.json + model.safetensors)")
        self.overwrite = CheckBox(label="replace a model already in the folder", value=False)
        self.preview_every = SpinBox(label="preview every", min=0, max=100_000, value=50,
                                     tooltip="denoise a crop of the viewed plane with the current weights every N "
                                             "steps (0: never)")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("continue the checkpoint in the output folder (saved by Stop)")
        self.buttons.addWidget(self.resume_button)
        self.resume_button.clicked.connect(lambda: self.guarded(lambda: self.start(resume=True)))
        # Export the model in the output folder (after training, or any model folder chosen there)
        self.export_format = ComboBox(label="export as", value="bioimageio",
                                      choices=[("BioImage Model Zoo (.zip)", "bioimageio"),
                                               ("TorchScript (.pt)", "torchscript"), ("ONNX (.onnx)", "onnx")],
                                      tooltip="the model in the output folder, for Fiji/deepImageJ, ilastik or "
                                              "your own code (docs/export.md)")
        self.export_file = FileEdit(label="export file", mode="w", value=None, nullable=True,
                                    filter="*.zip *.pt *.onnx",
                                    tooltip="empty: next to the model folder, named after it")
        self.export_button = QPushButton("Export")
        self.export_button.setToolTip("export the model in the output folder in the chosen format")
        self.buttons.addWidget(self.export_button)
        self.export_button.clicked.connect(lambda: self.guarded(self.export))
        self.loss_plot = LinePlot("loss", log_y=True, smooth=0.9)
        self.extra.addWidget(self.loss_plot)
        # the run's self-supervised estimate of its own quality (a D-BSN's, during training)
        self.quality = QLabel("")
        self.quality.setWordWrap(True)
        self.extra.addWidget(self.quality)
        self.preview_layer = None
        self._preview_kwargs: dict[str, Any] = {}
        self.result = None

    @property
    def export_fields(self) -> list[Any]:
        return [self.export_format, self.export_file]

    def set_running(self, running: bool) -> None:
        super().set_running(running)
        self.resume_button.setEnabled(not running)
        self.export_button.setEnabled(not running)

    def export(self) -> None:
        """Export the model folder in the output folder field (the same as ``atbsn export``)."""
        folder = folder_or_none(self.out_dir.value)
        if folder is None:
            raise ConfigError("choose the output folder that holds the model to export.")
        read_config(folder)  # a clear error now for a folder that holds no model
        fmt = str(self.export_format.value)
        ext = {"bioimageio": ".zip", "torchscript": ".pt", "onnx": ".onnx"}[fmt]
        target = folder_or_none(self.export_file.value) or folder.with_name(folder.name + ext)
        overwrite = bool(self.overwrite.value)

        def make(should_stop: Any) -> Any:
            yield from ()  # one step: an export cannot be stopped half-way (it writes atomically)
            return export_model(folder, fmt, target, overwrite=overwrite)

        def done(path: Any) -> None:
            msg = f"exported {folder.name} to {path}" + (" (validated by bioimageio.core)"
                                                          if fmt == "bioimageio" else "")
            self.status.setText(msg)
            info(msg)

        self.run_job(f"export {folder.name}", make, on_done=done)

    def make_preview(self, src: Source, patch: int) -> Preview | None:
        if not self.preview_every.value:
            return None
        side = max(256, int(patch))
        crop, crop_axes, origin = center_crop(src, self.viewer, side)
        self._preview_kwargs = {"name": f"{src.name}_preview", **crop_layer_kwargs(src, crop_axes, origin)}
        # a stack-context network previews the plane in view with its neighbours, read when the run asks
        viewer = self.viewer
        return Preview(crop, crop_axes, every=int(self.preview_every.value),
                       neighbours=lambda n: context_crops(src, viewer, side, n))

    def launch(self, name: str, make: Any) -> None:
        self.loss_plot.clear()
        self.quality.setText("")
        self.result = None
        self.run_job(name, make, on_event=self._event, on_done=self._done)

    def _event(self, event: Any) -> None:
        if isinstance(event, StepEvent):
            self.loss_plot.add_point(event.step, event.loss)
            self.show_progress(event.step, event.total, event.its_per_sec,
                               extra=f"{event.stage} loss {event.loss:.4g}")
        elif isinstance(event, CheckpointEvent):
            self.status.setText(self.status.text() + f"  checkpoint at step {event.step}")
        elif isinstance(event, PreviewEvent):
            self._show_preview(event.image)
        elif isinstance(event, QualityEvent):
            self.quality.setText(event.line + ("  (WORSE than the input so far)" if event.worse else ""))

    def _show_preview(self, image: np.ndarray) -> None:
        layer = self.preview_layer
        if layer is not None and layer in self.viewer.layers and np.shape(layer.data) == image.shape:
            layer.data = image
            return
        self.preview_layer = self.viewer.add_image(image, **self._preview_kwargs)

    def _done(self, result: Any) -> None:
        self.result = result
        path = Path(result.path) if result.path else None
        if result.stopped:
            msg = f"stopped at step {result.steps}; checkpoint saved in {path}. Resume continues it."
        else:
            msg = f"finished {result.steps} steps; model saved to {path}"
            quality = result.model.config.get("quality", {})
            if quality.get("line"):  # a student's or a D-BSN's estimated gain (its own report)
                msg += f". {quality['line']}"
            if quality.get("advice"):
                msg += f". WARNING: {quality['advice']}"
        self.status.setText(msg)
        info(msg)
