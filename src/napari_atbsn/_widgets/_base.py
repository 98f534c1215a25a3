"""What every napari-atbsn widget shares: a form, Run/Stop, a progress bar with rate and ETA, and the
layer helpers that name results and carry the input's display settings over.

The widgets are thin: each builds a form, turns it into a call of the core
(``iter_train``, ``iter_distill``, ``iter_run`` ...) and shows the events.
Every check the core makes reaches the user as a notification with the core's
own message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container
from napari.layers import Image
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..device import available_devices
from ..errors import ConfigError
from ..version import __version__
from ._job import CLOSE_WAIT_S, Job, notify_error

AXIS_LETTERS = set("TZCYX")


# -- layers ------------------------------------------------------------------------------------------
def layer_axes(layer: Image) -> str:
    """The axes of a layer's data: recorded in its metadata or axis labels when they are axis letters, else
    guessed. napari layers rarely hold a channel axis (channels are separate layers) unless RGB."""
    nd = layer.ndim + (1 if layer.rgb else 0)
    for cand in (layer.metadata.get("axes"), "".join(str(a) for a in getattr(layer, "axis_labels", ()))):
        if isinstance(cand, str) and len(cand) == nd and set(cand.upper()) <= AXIS_LETTERS \
                and len(set(cand.upper())) == nd:
            return cand.upper()
    if layer.rgb:
        return {3: "YXC", 4: "ZYXC", 5: "TZYXC"}.get(nd, "YXC")
    return {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TZCYX"}.get(nd, "YX")


def display_kwargs(layer: Image) -> dict[str, Any]:
    """The input layer's geometry and look, for a result that should overlay it exactly."""
    kw: dict[str, Any] = {"scale": tuple(layer.scale), "translate": tuple(layer.translate),
                          "rotate": np.asarray(layer.rotate), "shear": np.asarray(layer.shear),
                          "affine": np.asarray(layer.affine.affine_matrix), "rgb": layer.rgb}
    units = getattr(layer, "units", None)
    if units is not None:
        kw["units"] = tuple(units)
    if not layer.rgb:
        kw["colormap"] = layer.colormap
        kw["contrast_limits"] = tuple(float(c) for c in layer.contrast_limits)
    axis_labels = getattr(layer, "axis_labels", None)
    if axis_labels is not None:
        kw["axis_labels"] = tuple(axis_labels)
    return kw


def display_limits(data: Any) -> tuple[float, float]:
    """Display range from percentiles of one middle plane (never computes a whole lazy volume)."""
    a = data
    while getattr(a, "ndim", 2) > 2:
        a = a[a.shape[0] // 2]
    sample = np.asarray(a if not hasattr(a, "compute") else a.compute(), dtype=np.float32)
    lo, hi = np.percentile(sample[np.isfinite(sample)], [0.1, 99.9]) if sample.size else (0.0, 1.0)
    return (float(lo), float(hi if hi > lo else lo + 1))


def result_name(source: str, model: Any, k: Any = None, calibration: Any = None) -> str:
    """``cells_atbsn_kb3``, ``cells_atbsn_auto_kb5``, ``cells_student_C``, ``cells_dbsn``, ``cells_dbsn_noise``."""
    if model.kind == "atbsn" and calibration is not None:
        return f"{source}_atbsn_auto_kb{calibration.k_b}"
    if model.kind == "atbsn":
        return f"{source}_atbsn_kb{model.k_b if k is None else k}"
    if k == "noise":
        return f"{source}_{model.name}_noise"
    return f"{source}_{model.name}"


def result_metadata(model: Any, *, k: Any, source: str, window: int | None = None, halo: int | None = None,
                    chunk: int | None = None, output: str | None = None, **extra: Any) -> dict[str, Any]:
    """What made a result layer, under ``metadata['napari_atbsn']``."""
    record = {"model": str(model.path) if model.path else None, "kind": model.kind, "name": model.name,
              "k_b": (model.k_b if k is None else k) if model.kind == "atbsn" else None,
              "output": "noise map" if k == "noise" else "denoised",
              "window": window or model.patch, "halo": model.halo if halo is None else halo, "chunk": chunk,
              "source_layer": source, "file": output, "package_version": __version__,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
    return {"napari_atbsn": record}


def device_choices() -> list[tuple[str, str]]:
    """(label, name) pairs for a ComboBox: auto first, then what this machine has."""
    return [("auto (best available)", "auto")] + [(label, name) for name, label in available_devices()]


def folder_or_none(value: Any) -> Path | None:
    text = str(value or "").strip()
    return Path(text).expanduser() if text and text != "." else None


# -- the widget frame --------------------------------------------------------------------------------
class JobWidget(QWidget):
    """Form on top, then Run / Stop (and extra buttons), a progress bar and a status line."""

    run_label = "Run"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.job: Job | None = None
        self.form = Container(labels=True)
        self.run_button = QPushButton(self.run_label)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("%v / %m")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.buttons = QHBoxLayout()
        self.buttons.addWidget(self.run_button)
        self.buttons.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addLayout(self.buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.extra = QVBoxLayout()
        layout.addLayout(self.extra)
        layout.addStretch(1)
        self.run_button.clicked.connect(lambda: self.guarded(self.start))
        self.stop_button.clicked.connect(self.stop)
        self._t0 = 0.0
        # the job must not outlive its widget: stop it (and let a checkpoint finish) when the widget goes
        job_box: dict[str, Job | None] = {"job": None}
        self._job_box = job_box
        self.destroyed.connect(lambda *_: job_box["job"] and job_box["job"].stop(CLOSE_WAIT_S))

    # subclasses build their form in __init__ and implement start()
    def start(self) -> None:
        raise NotImplementedError

    def guarded(self, fn: Callable[[], Any]) -> None:
        """Run a GUI action; a user error becomes a notification, never a traceback."""
        try:
            fn()
        except Exception as e:
            notify_error(e)

    def reset_choices(self, *_: Any) -> None:
        self.form.reset_choices()

    def image_layers(self, *_: Any) -> list[Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def layer_combo(self, label: str = "image") -> ComboBox:
        combo = ComboBox(label=label, choices=lambda _w: [(layer.name, layer) for layer in self.image_layers()],
                         nullable=False)
        # start on the layer the user is working with: the selected one, else the top image layer
        active = self.viewer.layers.selection.active
        images = self.image_layers()
        preferred = active if isinstance(active, Image) else (images[-1] if images else None)
        if preferred is not None:
            combo.value = preferred
        return combo

    def run_job(self, name: str, make: Callable[[Callable[[], bool]], Generator[Any, None, Any]], *,
                on_event: Callable[[Any], None] | None = None,
                on_done: Callable[[Any], None] | None = None) -> Job:
        if self.job is not None and self.job.running:
            raise ConfigError(f"{self.job.name} is still running; stop it first.")
        self.progress.setRange(0, 0)  # busy until the first event says how much there is
        self.status.setText(f"{name}: starting ...")
        self._t0 = time.perf_counter()
        self.job = Job(name, make, on_event=on_event, on_done=on_done, on_finish=self._finished)
        self._job_box["job"] = self.job
        self.set_running(True)
        return self.job.start()

    def set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.stop_button.setEnabled(running)

    def stop(self) -> None:
        if self.job is not None and self.job.running:
            self.job.stop()
            self.status.setText(f"{self.job.name}: stopping ...")

    def _finished(self) -> None:
        self.set_running(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        if self.job is not None and self.job.error is not None:
            self.status.setText(f"{self.job.name}: failed: {self.job.error}")

    def show_progress(self, done: int, total: int, rate: float | None = None, unit: str = "it",
                      extra: str = "") -> None:
        """Bar and status line: done/total, rate, ETA."""
        total = max(int(total), 1)
        if self.progress.maximum() != total:
            self.progress.setRange(0, total)
        self.progress.setValue(int(done))
        if rate is None:
            elapsed = time.perf_counter() - self._t0
            rate = done / elapsed if elapsed > 0 and done else 0.0
        eta = (total - done) / rate if rate > 0 else float("nan")
        eta_text = _duration(eta) if np.isfinite(eta) else "?"
        self.status.setText(f"{done}/{total}  {rate:.2f} {unit}/s  ETA {eta_text}{'  ' + extra if extra else ''}")

    def closeEvent(self, event: Any) -> None:
        if self.job is not None and self.job.running:
            self.job.stop(CLOSE_WAIT_S)
        super().closeEvent(event)

    def event(self, event: Any) -> bool:
        # napari's remove_dock_widget (the dock's close button) only unparents the widget: no close event
        if event.type() == QEvent.Type.ParentChange and self.parent() is None and self.job is not None \
                and self.job.running:
            self.job.stop()
        return super().event(event)


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
