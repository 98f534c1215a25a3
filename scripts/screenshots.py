"""Render each napari-atbsn widget docked in a viewer, after a small real job, into docs/images/.

    xvfb-run -a .venv/bin/python scripts/screenshots.py [--out docs/images]

Everything runs on the generated sample (tiny networks, a minute on a CPU),
so the pictures show what a user sees: the loss curve and preview of a
training run, a distilled student, denoised layers named after their
settings, the k_b comparison and the noise analysis.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_atbsn._widgets import CompareWidget, DenoiseWidget, DistillWidget, NoiseWidget, TrainWidget
from napari_atbsn.sample_data import napari_sample


def wait(widget, timeout: float = 600.0) -> None:
    app = QApplication.instance()
    t0 = time.time()
    while (widget.job is None or widget.job.running or not widget.run_button.isEnabled()) \
            and time.time() - t0 < timeout:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)


def settle(seconds: float = 1.0) -> None:
    app = QApplication.instance()
    t0 = time.time()
    while time.time() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)


def shoot(viewer, dock, widget, path: Path) -> None:
    settle(1.5)
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    viewer.window.remove_dock_widget(dock)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/images")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="atbsn-shots-"))

    viewer = napari.Viewer(title="napari-atbsn")
    viewer.window._qt_window.resize(1500, 950)
    for data, kw, _ in napari_sample():
        viewer.add_image(data, **kw)
    noisy = viewer.layers["atbsn_sample_noisy"]
    viewer.layers.selection.active = noisy

    w = TrainWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name="Train", area="right")
    w.preset.value = "tiny"
    w.iters.value, w.patch.value, w.batch.value = 300, 32, 8
    w.device.value = "cpu"
    w.out_dir.value = str(work / "teacher")
    w.preview_every.value = 50
    w.run_button.click()
    wait(w)
    viewer.layers.selection.active = noisy
    shoot(viewer, dock, w, out / "widget_train.png")
    viewer.layers.remove("atbsn_sample_noisy_preview")

    w = DistillWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name="Distill", area="right")
    w.teacher.value = str(work / "teacher")
    w.student.value = "tiny"
    w.iters.value, w.batch.value = 150, 8
    w.device.value = "cpu"
    w.out_dir.value = str(work / "student")
    w.preview_every.value = 50
    w.run_button.click()
    wait(w)
    shoot(viewer, dock, w, out / "widget_distill.png")
    viewer.layers.remove("atbsn_sample_noisy_preview")

    w = DenoiseWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name="Denoise", area="right")
    w.model_dir.value = str(work / "student")
    w.device.value = "cpu"
    w.run_button.click()
    wait(w)
    noisy.visible = False
    shoot(viewer, dock, w, out / "widget_denoise.png")

    for layer in list(viewer.layers):
        if layer.name != "atbsn_sample_noisy":
            viewer.layers.remove(layer)
    noisy.visible = True
    w = CompareWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name="Compare k_b", area="right")
    w.model_dir.value = str(work / "teacher")
    w.k_bs.value = [1, 3, 9]
    w.student_dir.value = str(work / "student")
    w.layout_mode.value = "grid"
    w.device.value = "cpu"
    w.run_button.click()
    settle(3)
    noisy.visible = False
    layer = w.layers[0]
    z = int(viewer.dims.current_step[0])
    vals = w.values_at(layer.data_to_world((z, 128, 128)))
    if vals:
        w.readout.setText("pixel (128, 128): " + "  ".join(f"{k}: {v:.4g}" for k, v in vals.items()))
    shoot(viewer, dock, w, out / "widget_compare.png")
    viewer.grid.enabled = False
    for layer in list(viewer.layers):
        if layer.name != "atbsn_sample_noisy":
            viewer.layers.remove(layer)
    noisy.visible = True

    w = NoiseWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name="Noise analysis", area="right")
    w.run_button.click()
    wait(w)
    shoot(viewer, dock, w, out / "widget_noise.png")
    viewer.close()


if __name__ == "__main__":
    main()
