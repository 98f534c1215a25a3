"""The napari widgets, in a real viewer under Xvfb: each builds, runs a tiny job to completion and adds the
expected layers with their metadata; Stop stops within a second; bad input becomes a notification."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils.notifications import notification_manager  # noqa: E402

from napari_atbsn import load_model  # noqa: E402
from napari_atbsn.config import TRAIN_DEFAULTS  # noqa: E402
from napari_atbsn.events import drain  # noqa: E402
from napari_atbsn.inference.inmemory import iter_denoise_outputs  # noqa: E402
from napari_atbsn.sample_data import add_poisson_gaussian_noise, make_clean  # noqa: E402

pytestmark = pytest.mark.gui
WAIT_MS = 120_000


@pytest.fixture
def viewer(make_napari_viewer, sample_stack):
    v = make_napari_viewer()
    noisy, _ = sample_stack
    v.add_image(noisy, name="cells", scale=(2.0, 0.5, 0.5), translate=(0.0, 10.0, 20.0), colormap="magma",
                contrast_limits=(100, 200))
    return v


@pytest.fixture
def errors():
    """Error notifications shown while the test runs."""
    seen: list[str] = []

    def grab(event) -> None:
        n = event if hasattr(event, "severity") else getattr(event, "value", event)
        if str(getattr(n, "severity", "")).lower().endswith("error"):
            seen.append(str(n.message))

    notification_manager.notification_ready.connect(grab)
    yield seen
    notification_manager.notification_ready.disconnect(grab)


def wait_done(qtbot, widget, timeout: int = WAIT_MS) -> None:
    qtbot.waitUntil(lambda: widget.job is not None and not widget.job.running and widget.run_button.isEnabled(),
                    timeout=timeout)


def dock(viewer, widget):
    viewer.window.add_dock_widget(widget)
    return widget


# -- helpers -----------------------------------------------------------------------------------------
def test_layer_axes_from_metadata_labels_and_shape() -> None:
    from napari.layers import Image

    from napari_atbsn._widgets._base import layer_axes

    assert layer_axes(Image(np.zeros((3, 8, 9)))) == "ZYX"
    assert layer_axes(Image(np.zeros((2, 3, 8, 9)))) == "TZYX"
    assert layer_axes(Image(np.zeros((8, 9, 3)), rgb=True)) == "YXC"
    assert layer_axes(Image(np.zeros((4, 8, 9)), metadata={"axes": "TYX"})) == "TYX"
    assert layer_axes(Image(np.zeros((4, 8, 9)), axis_labels=("t", "y", "x"))) == "TYX"


def test_manifest_lists_every_widget() -> None:
    npe2 = pytest.importorskip("npe2")
    import importlib

    from napari_atbsn import _widgets

    mf = npe2.PluginManifest.from_file(Path(_widgets.__file__).parents[1] / "napari.yaml")
    commands = {c.id: c.python_name for c in mf.contributions.commands}
    names = set()
    for w in mf.contributions.widgets:
        module, attr = commands[w.command].split(":")
        names.add(getattr(importlib.import_module(module), attr).__name__)
    assert names == {"TrainWidget", "DistillWidget", "DenoiseWidget", "CompareWidget", "NoiseWidget"}


# -- train -------------------------------------------------------------------------------------------
def configure_train(w, out: Path, iters: int, preview_every: int = 0) -> None:
    w.preset.value = "tiny"
    w.context.value = 0  # a 2-D model: the stack-context test sets its own
    w.iters.value, w.patch.value, w.batch.value = iters, 32, 2
    w.device.value = "cpu"
    w.out_dir.value = str(out)
    w.preview_every.value = preview_every


def test_train_widget_trains_previews_and_saves(viewer, qtbot, tmp_path, errors) -> None:
    from napari_atbsn._widgets import TrainWidget

    w = dock(viewer, TrainWidget(viewer))
    assert w.source.axes.value == "ZYX" and w.source.layer.value.name == "cells"
    assert (w.iters.value, w.batch.value) == (TRAIN_DEFAULTS["small"]["iters"], TRAIN_DEFAULTS["small"]["batch"])
    assert w.context.value == "auto"  # the default: from the stack
    configure_train(w, tmp_path / "teacher", iters=12, preview_every=5)
    w.k_a.value = 5
    w.run_button.click()
    wait_done(qtbot, w)
    assert errors == []
    assert w.result is not None and not w.result.stopped and w.result.steps == 12
    model = load_model(tmp_path / "teacher")
    assert model.kind == "atbsn" and model.config["k_a"] == 5 and model.config["data"]["axes"] == "ZYX"
    assert len(w.loss_plot.ys) == 12 and w.progress.value() == 12
    preview = viewer.layers["cells_preview"]
    assert preview.data.shape == (128, 128) and preview.scale[-1] == 0.5 and preview.colormap.name == "magma"
    # the last preview is the final model applied to the plane in view
    z = int(viewer.dims.current_step[0])
    np.testing.assert_array_equal(preview.data, model.denoise(np.asarray(viewer.layers["cells"].data[z]), "YX",
                                                              k_b=model.k_b))


def test_train_widget_stops_within_a_second_and_resumes(viewer, qtbot, tmp_path) -> None:
    from napari_atbsn._widgets import TrainWidget

    w = dock(viewer, TrainWidget(viewer))
    configure_train(w, tmp_path / "t", iters=100_000)
    w.run_button.click()
    qtbot.waitUntil(lambda: w.progress.value() >= 3, timeout=WAIT_MS)
    # the viewer stays responsive while training: a GUI timer keeps firing on time
    ticks: list[float] = []
    from qtpy.QtCore import QTimer

    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    qtbot.wait(600)
    timer.stop()
    assert len(ticks) >= 10 and max(np.diff(ticks)) < 0.25, np.diff(ticks)
    t0 = time.perf_counter()
    w.stop_button.click()
    wait_done(qtbot, w, timeout=5000)
    assert time.perf_counter() - t0 < 1.0
    assert w.result.stopped and (tmp_path / "t" / "checkpoint" / "config.json").exists()
    stopped_at = w.result.steps
    w.iters.value = 5  # ignored on resume: the checkpoint's settings are kept (only the device may change)
    w.resume_button.click()
    qtbot.waitUntil(lambda: w.progress.value() > stopped_at, timeout=WAIT_MS)
    assert w.loss_plot.xs[0] == stopped_at + 1  # continued, not restarted
    w.stop_button.click()
    wait_done(qtbot, w, timeout=5000)
    assert w.result.stopped and w.result.steps > stopped_at


def test_closing_the_viewer_stops_training_with_a_checkpoint(make_napari_viewer, sample_stack, qtbot,
                                                            tmp_path) -> None:
    from napari_atbsn._widgets import TrainWidget

    v = make_napari_viewer()
    v.add_image(sample_stack[0], name="cells")
    w = dock(v, TrainWidget(v))
    configure_train(w, tmp_path / "t", iters=100_000)
    w.run_button.click()
    qtbot.waitUntil(lambda: w.progress.value() >= 2, timeout=WAIT_MS)
    job = w.job
    v.close()
    assert job.ended.wait(10)
    assert (tmp_path / "t" / "checkpoint" / "config.json").exists()


def test_train_errors_are_notifications(viewer, qtbot, tmp_path, errors) -> None:
    from napari_atbsn._widgets import TrainWidget

    w = dock(viewer, TrainWidget(viewer))
    configure_train(w, tmp_path / "t", iters=5)
    w.out_dir.value = None
    w.run_button.click()  # checked before anything runs
    assert errors == ["choose an output folder for the model."]
    viewer.add_image(np.zeros((20, 20), np.float32), name="small")
    w.source.layer.value = viewer.layers["small"]
    assert w.source.axes.value == "YX"
    w.out_dir.value = str(tmp_path / "t")
    w.run_button.click()  # raised in the worker by the core: same message as the CLI
    wait_done(qtbot, w)
    assert len(errors) == 2 and "smaller than the training patch" in errors[1]
    assert "Traceback" not in errors[1] and w.run_button.isEnabled()
    w.source.layer.value = viewer.layers["cells"]
    w.source.axes.value = "YX"
    w.run_button.click()
    assert "axes" in errors[2] and "YX" in errors[2]


# -- distill -----------------------------------------------------------------------------------------
def test_distill_widget_writes_a_student(viewer, qtbot, tmp_path, tiny_teacher, errors) -> None:
    from napari_atbsn._widgets import DistillWidget

    w = dock(viewer, DistillWidget(viewer))
    w.teacher.value = str(tiny_teacher)
    w.ks.value = [1, 3, 9]
    w.student.value = "tiny"
    w.iters.value, w.batch.value = 6, 2
    w.device.value = "cpu"
    w.out_dir.value = str(tmp_path / "student")
    w.preview_every.value = 3
    w.run_button.click()
    wait_done(qtbot, w)
    assert errors == []
    student = load_model(tmp_path / "student")
    assert student.kind == "student" and student.config["ks"] == [1, 3, 9] and student.config["steps"] == 6
    assert "student vs blended teacher on held-out rows" in w.status.text()
    assert "cells_preview" in viewer.layers
    w.out_dir.value = str(tiny_teacher)
    w.run_button.click()
    assert errors == ["the output folder is the teacher's; choose another folder for the student."]


# -- denoise -----------------------------------------------------------------------------------------
def test_denoise_widget_adds_named_layers_with_metadata(viewer, qtbot, tiny_teacher, errors) -> None:
    from napari_atbsn._widgets import DenoiseWidget

    w = dock(viewer, DenoiseWidget(viewer))
    w.model_dir.value = str(tiny_teacher)
    w.k_b.value = 1
    w.device.value = "cpu"
    w.run_button.click()
    wait_done(qtbot, w)
    assert errors == []
    layer = viewer.layers["cells_atbsn_kb1"]
    model = load_model(tiny_teacher)
    ref = drain(iter_denoise_outputs(model, np.asarray(viewer.layers["cells"].data), "ZYX", ks=[1], batch_size=4,
                                   dtype="float32"))[0]
    np.testing.assert_array_equal(layer.data, ref)
    meta = layer.metadata["napari_atbsn"]
    assert meta["k_b"] == 1 and meta["model"] == str(tiny_teacher) and meta["window"] == model.patch
    assert meta["source_layer"] == "cells" and meta["package_version"]
    assert tuple(layer.scale) == (2.0, 0.5, 0.5) and tuple(layer.translate) == (0.0, 10.0, 20.0)
    assert layer.colormap.name == "magma" and tuple(layer.contrast_limits) == (100, 200)
    w.run_button.click()  # the same again: a second layer, the first one untouched
    wait_done(qtbot, w)
    names = [la.name for la in viewer.layers]
    assert names.count("cells_atbsn_kb1") == 1 and len([n for n in names if n.startswith("cells_atbsn_kb1")]) == 2
    np.testing.assert_array_equal(viewer.layers["cells_atbsn_kb1"].data, ref)


def test_denoise_widget_auto_reports_the_estimated_gain(viewer, qtbot, tiny_teacher, errors) -> None:
    from napari_atbsn._widgets import DenoiseWidget

    w = dock(viewer, DenoiseWidget(viewer))
    w.model_dir.value = str(tiny_teacher)
    w.k_b.value = "auto"
    w.device.value = "cpu"
    w.run_button.click()
    wait_done(qtbot, w)
    assert errors == []
    (layer,) = w.layers
    quality = layer.metadata["napari_atbsn"]["quality"]
    assert layer.name == f"cells_atbsn_auto_kb{quality['k_b']}"
    assert layer.metadata["napari_atbsn"]["k_b"] == quality["k_b"]
    assert "estimated gain:" in w.status.text() and f"{quality['estimated_gain_db']:+.2f} dB" in w.status.text()
    model = load_model(tiny_teacher)
    ref = drain(iter_denoise_outputs(model, np.asarray(viewer.layers["cells"].data), "ZYX", ks=["auto"]))[0]
    np.testing.assert_array_equal(layer.data, ref)


def test_denoise_widget_lazy_layer_computes_only_what_is_viewed(viewer, qtbot, tiny_teacher) -> None:
    import dask.array as da

    from napari_atbsn._widgets import DenoiseWidget

    w = dock(viewer, DenoiseWidget(viewer))
    w.model_dir.value = str(tiny_teacher)
    w.mode.value = "lazy"
    w.device.value = "cpu"
    w.chunk.value = 64
    w.run_button.click()
    wait_done(qtbot, w)  # the default (auto) calibrates on the volume in a worker, then adds the lazy layer
    (layer,) = w.layers
    quality = layer.metadata["napari_atbsn"]["quality"]
    assert layer.name == f"cells_atbsn_auto_kb{quality['k_b']}"
    assert isinstance(layer.data, da.Array) and layer.metadata["napari_atbsn"]["lazy"]
    model = load_model(tiny_teacher)
    whole = drain(iter_denoise_outputs(model, np.asarray(viewer.layers["cells"].data), "ZYX", ks=["auto"]))[0]
    np.testing.assert_array_equal(np.asarray(layer.data[2]), whole[2])
    w.k_b.value = 3
    w.run_button.click()
    wait_done(qtbot, w)
    plane = np.asarray(viewer.layers["cells"].data[2])
    np.testing.assert_array_equal(np.asarray(viewer.layers["cells_atbsn_kb3"].data[2]),
                                  model.denoise(plane, "YX", k_b=3))


def test_denoise_widget_writes_a_file_and_opens_it(viewer, qtbot, tmp_path, tiny_student, errors) -> None:
    from napari_atbsn._widgets import DenoiseWidget

    w = dock(viewer, DenoiseWidget(viewer))
    w.model_dir.value = str(tiny_student)
    w.mode.value = "file"
    w.out_file.value = str(tmp_path / "out.ome.zarr")
    w.device.value = "cpu"
    w.run_button.click()
    wait_done(qtbot, w)
    assert errors == []
    layer = viewer.layers["cells_student_tiny"]
    assert layer.metadata["napari_atbsn"]["file"] == str(tmp_path / "out.ome.zarr")
    model = load_model(tiny_student)
    np.testing.assert_allclose(np.asarray(layer.data), model.denoise(np.asarray(viewer.layers["cells"].data), "ZYX"),
                               rtol=1e-6, atol=1e-4)
    w.k_b.value = 3
    w.run_button.click()
    assert "k_b applies to AT-BSN teachers" in errors[0]


# -- compare -----------------------------------------------------------------------------------------
def test_compare_widget_stack_is_lazy_and_reads_all_versions(viewer, qtbot, tiny_teacher, tiny_student) -> None:
    from napari_atbsn._widgets import CompareWidget

    w = dock(viewer, CompareWidget(viewer))
    w.model_dir.value = str(tiny_teacher)
    w.k_bs.value = [1, 3, 9]
    w.student_dir.value = str(tiny_student)
    w.device.value = "cpu"
    w.run_button.click()
    layer = viewer.layers["cells_compare"]
    stack = w.stack
    assert layer.data.shape == (5, *viewer.layers["cells"].data.shape)
    # every version with its estimated gain; the teacher's default (auto, blended) first
    labels = stack.labels
    assert labels[0].startswith("auto k_b=") and " blended (est. +" in labels[0]
    assert labels[1].startswith("k_b=1 (est. ") and "n/a" not in labels[1]  # narrower than the correlation: SURE
    assert labels[3].startswith("k_b=9 (est. ") and "n/a" not in labels[3]
    assert labels[4].startswith("student_tiny (est. ") and "n/a" not in labels[4]  # SURE: it sees its pixel
    # only planes napari showed (the one in view; napari may slice once more while it sets up the new
    # dims), never the volume
    assert stack.computed <= 2 < stack.shape[1]
    viewer.dims.set_current_step(1, 2)  # Z = 2
    qtbot.waitUntil(lambda: stack.cached([2]) is not None, timeout=WAIT_MS)
    teacher, student = load_model(tiny_teacher), load_model(tiny_student)
    plane = np.asarray(viewer.layers["cells"].data[2])
    cal = stack.versions[0].calibration  # decided once on the whole volume, shared by every plane
    expected = drain(iter_denoise_outputs(teacher, plane, "YX", ks=["auto", 1, 3, 9], batch_size=4,
                                          dtype="float32", calibration=cal))
    np.testing.assert_array_equal(stack.cached([2])[:4], np.stack(expected))
    np.testing.assert_array_equal(stack.cached([2])[4], student.denoise(plane, "YX"))
    world = layer.data_to_world((0, 2, 40, 50))
    vals = w.values_at(world)
    assert list(vals) == stack.labels
    assert [vals[k] for k in stack.labels[:4]] == [float(e[40, 50]) for e in expected]


def test_compare_widget_grid_links_layers(viewer, qtbot, tiny_teacher, errors) -> None:
    from napari_atbsn._widgets import CompareWidget

    w = dock(viewer, CompareWidget(viewer))
    w.run_button.click()
    assert errors == ["choose a teacher folder (and k_b values), a student folder, or both."]
    w.model_dir.value = str(tiny_teacher)
    w.k_bs.value = [1, 5]
    w.layout_mode.value = "grid"
    w.device.value = "cpu"
    w.run_button.click()
    k = w.stack.versions[0].calibration.k_b
    assert [la.name for la in w.layers] == [f"cells_atbsn_auto_kb{k}", "cells_atbsn_kb1", "cells_atbsn_kb5"]
    assert viewer.grid.enabled
    w.layers[0].contrast_limits = (90, 150)
    assert tuple(w.layers[1].contrast_limits) == (90, 150)
    np.testing.assert_array_equal(np.asarray(w.layers[1].data[0]), w.stack.plane([0])[1])


# -- noise analysis ----------------------------------------------------------------------------------
def test_noise_widget_tells_correlated_from_independent(viewer, qtbot, errors) -> None:
    from napari_atbsn._widgets import NoiseWidget

    w = dock(viewer, NoiseWidget(viewer))
    w.run_button.click()
    wait_done(qtbot, w)
    assert w.recommendation.text().startswith("recommended: atbsn")
    assert len(w.plot.ys) == len(w.analysis.autocorrelation) and "autocorrelation" in w.report.toPlainText()
    clean = make_clean(planes=4, size=128, seed=5)
    viewer.add_image(add_poisson_gaussian_noise(clean * 5, read_noise=3.0), name="independent")
    w.source.layer.value = viewer.layers["independent"]
    w.run_button.click()
    wait_done(qtbot, w)
    assert w.recommendation.text() == "recommended: dbsn"
    assert errors == []


def test_widgets_open_from_the_plugins_menu(make_napari_viewer) -> None:
    """Through npe2, as a user opens them: napari passes the viewer in."""
    v = make_napari_viewer()
    v.add_image(np.zeros((3, 40, 50), np.float32), name="cells")
    for name, cls in [("Train", "TrainWidget"), ("Distill", "DistillWidget"), ("Denoise", "DenoiseWidget"),
                      ("Compare k_b", "CompareWidget"), ("Noise analysis", "NoiseWidget")]:
        _, widget = v.window.add_plugin_dock_widget("napari-atbsn", name)
        assert type(widget).__name__ == cls
        assert widget.source.layer.value.name == "cells" and widget.source.axes.value == "ZYX"
    v.add_image(np.zeros((40, 50, 3), np.uint8), name="rgb", rgb=True)  # choices follow the layer list
    assert [c for c in widget.source.layer.choices if c.name == "rgb"]


def test_a_runtime_error_in_a_job_is_a_notification_not_a_stuck_widget(viewer, qtbot, errors) -> None:
    """superqt drops RuntimeErrors raised by a generator (CUDA out-of-memory, DeviceError are ones)."""
    from napari_atbsn._widgets import NoiseWidget

    w = dock(viewer, NoiseWidget(viewer))

    def failing(should_stop):
        yield (0, 1)
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    w.run_job("failing job", failing)
    wait_done(qtbot, w, timeout=10_000)
    assert len(errors) == 1 and "CUDA out of memory" in errors[0]
    assert w.run_button.isEnabled() and "failed" in w.status.text()


def test_removing_the_dock_stops_its_job(viewer, qtbot, tmp_path) -> None:
    from napari_atbsn._widgets import TrainWidget

    w = TrainWidget(viewer)
    dock_widget = viewer.window.add_dock_widget(w)
    configure_train(w, tmp_path / "t", iters=100_000)
    w.run_button.click()
    qtbot.waitUntil(lambda: w.progress.value() >= 2, timeout=WAIT_MS)
    viewer.window.remove_dock_widget(dock_widget)
    assert w.job.ended.wait(10)
    assert (tmp_path / "t" / "checkpoint" / "config.json").exists()


# -- bad input in the widgets (docs/reliability.md, rows W01-W08) --------------------------------------
class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        import builtins

        return builtins.open, (self.marker, "w")


def _payload(marker: Path) -> _Payload:
    return _Payload(marker)


def _pickle_model(src: Path, dst: Path, marker: Path) -> Path:
    import pickle

    dst.mkdir()
    (dst / "config.json").write_bytes((src / "config.json").read_bytes())
    (dst / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    return dst


def _bad_input_case(case: str, viewer, tmp_path: Path, tiny_teacher: Path, before_layers: list[str]):
    """The widget and form of one W case; returns (widget, expected message, files it must leave)."""
    from napari_atbsn._widgets import DenoiseWidget, DistillWidget, TrainWidget

    expect, leaves = "", set()
    if case in ("W01", "W02", "W03"):
        w = dock(viewer, TrainWidget(viewer))
        configure_train(w, tmp_path / "t", iters=3)
        if case == "W01":
            w.out_dir.value = None
            expect = "choose an output folder for the model."
        elif case == "W02":
            viewer.add_image(np.zeros((20, 20), np.float32) + np.arange(20), name="small")
            before_layers.append("small")
            w.source.layer.value = viewer.layers["small"]
            expect = "smaller than the training patch"
        else:
            w.source.axes.value = "YX"
            expect = "axes 'YX' has 2 letters but the data has 3 dimensions"
    elif case == "W08":
        import torch

        w = dock(viewer, DistillWidget(viewer))
        evil = _pickle_model(tiny_teacher, tmp_path / "evil", tmp_path / "ran.txt")
        (evil / "model.safetensors").write_bytes((tiny_teacher / "model.safetensors").read_bytes())
        torch.save({"optimizer": _payload(tmp_path / "ran.txt")}, evil / "model.pt")  # a pickle beside it
        w.teacher.value = str(evil)
        w.out_dir.value = str(tmp_path / "student")
        leaves = {"evil"}
        expect = "holds model.pt: pickle files, which can run code"
    else:
        w = dock(viewer, DenoiseWidget(viewer))
        w.device.value = "cpu"
        w.model_dir.value = str(tiny_teacher)
        if case == "W04":
            w.model_dir.value = str(tmp_path / "nomodel")
            expect = "nomodel does not exist; check the path"
        elif case == "W05":
            w.model_dir.value = str(_pickle_model(tiny_teacher, tmp_path / "evil", tmp_path / "ran.txt"))
            leaves = {"evil"}
            expect = "pickle files, which can run code"
        elif case == "W06":
            bad = np.asarray(viewer.layers["cells"].data, np.float32).copy()
            bad[1, 7, 7] = np.nan
            viewer.add_image(bad, name="holes")
            before_layers.append("holes")
            w.source.layer.value = viewer.layers["holes"]
            expect = "NaN or Inf pixels"
        else:
            (tmp_path / "out.tif").write_bytes(b"precious")
            leaves = {"out.tif"}
            w.mode.value = "file"
            w.out_file.value = str(tmp_path / "out.tif")
            expect = "out.tif already exists; choose another name or pass --overwrite"
    return w, expect, leaves


@pytest.mark.parametrize("case", ["W01", "W02", "W03", "W04", "W05", "W06", "W07", "W08"])
def test_bad_input_becomes_one_notification_and_leaves_nothing(case, viewer, qtbot, tmp_path, tiny_teacher,
                                                               errors) -> None:
    before_layers = [la.name for la in viewer.layers]
    w, expect, leaves = _bad_input_case(case, viewer, tmp_path, tiny_teacher, before_layers)
    w.run_button.click()
    qtbot.waitUntil(lambda: len(errors) >= 1, timeout=WAIT_MS)
    if w.job is not None:
        wait_done(qtbot, w)
    assert len(errors) == 1 and expect in errors[0], errors
    assert "Traceback" not in errors[0] and w.run_button.isEnabled()
    assert [la.name for la in viewer.layers] == before_layers  # no result layer, finished or not
    assert {p.name for p in tmp_path.iterdir()} == leaves
    if case == "W07":
        assert (tmp_path / "out.tif").read_bytes() == b"precious"
    assert not (tmp_path / "ran.txt").exists(), "a pickle was loaded: its code ran"


def test_export_button_writes_the_model_file(viewer, qtbot, tmp_path, tiny_student, errors) -> None:
    from napari_atbsn._widgets import DistillWidget

    w = dock(viewer, DistillWidget(viewer))
    w.out_dir.value = str(tiny_student)
    w.export_format.value = "onnx"
    w.export_file.value = str(tmp_path / "student.onnx")
    w.export_button.click()
    wait_done(qtbot, w)
    assert errors == [] and (tmp_path / "student.onnx").stat().st_size > 1000
    assert "exported student to" in w.status.text()
    w.export_button.click()  # the same again: refused, the file kept
    wait_done(qtbot, w)
    assert len(errors) == 1 and "already exists" in errors[0]
    w.out_dir.value = str(tmp_path)  # not a model folder
    w.export_button.click()
    assert "has no config.json" in errors[-1]


def test_train_widget_trains_a_stack_context_model_and_denoise_uses_it(viewer, qtbot, tmp_path, errors) -> None:
    """Issue 18: the Z/T context is a setting of the Train widget; the model it writes reads the neighbouring
    planes, and the Denoise widget runs it on the stack like any model."""
    from napari_atbsn._widgets import TrainWidget

    w = dock(viewer, TrainWidget(viewer))
    configure_train(w, tmp_path / "teacher", iters=6, preview_every=3)
    w.context.value = 1
    w.run_button.click()
    wait_done(qtbot, w)
    assert errors == []
    model = load_model(tmp_path / "teacher")
    assert model.context == 1 and model.config["train"]["context"] == 1
    stack = np.asarray(viewer.layers["cells"].data)
    # the preview is the plane in view denoised with its neighbouring planes, as the saved model does it
    z = int(viewer.dims.current_step[0])
    np.testing.assert_array_equal(viewer.layers["cells_preview"].data, model.denoise(stack, "ZYX", k_b=model.k_b)[z])
    w.method.value = "dbsn"
    assert not w.context.visible  # D-BSN takes no context
    # the Denoise widget runs it on a single plane too (its 2-D mode), and says so
    from napari_atbsn._widgets import DenoiseWidget

    viewer.add_image(stack[z], name="plane")
    d = dock(viewer, DenoiseWidget(viewer))
    d.source.layer.value = viewer.layers["plane"]
    d.model_dir.value = str(tmp_path / "teacher")
    d.k_b.value, d.device.value = 3, "cpu"
    d.run_button.click()
    wait_done(qtbot, d)
    assert errors == []
    assert "stack context unused: the image (axes 'YX') has no Z or T axis" in d.status.text()
    np.testing.assert_array_equal(viewer.layers["plane_atbsn_kb3"].data, model.denoise(stack[z], "YX", k_b=3))
