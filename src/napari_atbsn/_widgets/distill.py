"""Distill widget: a trained teacher becomes a light student (the model users export).

An AT-BSN teacher gives one output per blind-spot size K from a single backbone
pass, and the student learns from all of them (multi-teacher distillation). A
D-BSN teacher is distilled unpaired: its Bayes-fused output on the noisy data,
plus, when clean images of similar samples are given, synthetic noisy copies of
those drawn from its learned noise model.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox, FileEdit, Select, SpinBox
from napari.layers import Image

from ..config import DEFAULT_KS, STUDENT_PRESETS, DistillConfig, UnpairedConfig, config_fields_help
from ..errors import ConfigError
from ..modelio import read_config
from ..training import checkpoint_config, iter_distill, iter_distill_dbsn
from ._base import device_choices, folder_or_none, layer_axes
from ._runs import RunWidget
from ._source import SourcePicker

HELP = config_fields_help(DistillConfig)
TEACHER_DEFAULT = ("the teacher's default", None)


class DistillWidget(RunWidget):
    run_label = "Distill"

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.source = SourcePicker(self)
        self.teacher = FileEdit(label="teacher folder", mode="d", value=None, nullable=True,
                                tooltip="a model folder written by Train (AT-BSN or D-BSN)")
        self.ks = Select(label="K (teachers)", choices=list(DEFAULT_KS), value=list(DEFAULT_KS),
                         tooltip=HELP["ks"])
        self.student = ComboBox(label="student", choices=[TEACHER_DEFAULT, *[(p, p) for p in STUDENT_PRESETS]],
                                value=None, tooltip=HELP["student"])
        self.iters = SpinBox(label="iterations", min=0, max=10_000_000, value=0,
                             tooltip="distillation steps (0: the teacher preset's default)")
        self.batch = SpinBox(label="batch", min=0, max=256, value=0, tooltip="patches per step (0: default)")
        self.clean = ComboBox(label="clean images", nullable=True, value=None,
                              choices=lambda _w: [(layer.name, layer) for layer in self.image_layers()],
                              tooltip="D-BSN teacher only: clean images of similar samples (unpaired); empty for "
                                      "self-distillation")
        self.targets = ComboBox(label="targets", value="blended", tooltip=HELP["targets"],
                                choices=[("blended with the input (never worse)", "blended"),
                                         ("the paper's (no blend)", "paper")])
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        self.form.extend([*self.source.fields, self.teacher, self.ks, self.student, self.targets, self.iters,
                          self.batch, self.clean, self.device, self.out_dir, self.overwrite, self.preview_every,
                          *self.export_fields])

    def start(self, resume: bool = False) -> None:
        src = self.source.get()
        teacher = folder_or_none(self.teacher.value)
        if teacher is None:
            raise ConfigError("choose the teacher folder (a model written by Train).")
        tcfg = read_config(teacher)  # a clear error for a folder that holds no model
        out = folder_or_none(self.out_dir.value)
        if out is None:
            raise ConfigError("choose an output folder for the student.")
        if out.resolve() == teacher.resolve():
            raise ConfigError("the output folder is the teacher's; choose another folder for the student.")
        opt = {k: v for k, v in (("iters", self.iters.value or None), ("batch", self.batch.value or None)) if v}
        if resume:
            checkpoint_config(out)  # a clear error when there is nothing to resume
            opt = {}  # a resumed run keeps the checkpoint's settings; only the device is taken from the form
        dbsn = tcfg["kind"] == "dbsn"
        if tcfg["kind"] not in ("atbsn", "dbsn"):
            raise ConfigError(f"{teacher} holds a {tcfg['kind']}; distil from a teacher written by Train.")
        student = None if resume else self.student.value
        preview = self.make_preview(src, int(tcfg["patch"]))
        overwrite = bool(self.overwrite.value)
        if dbsn:
            config: Any = UnpairedConfig(device=self.device.value, **({"student": student} if student else {}), **opt)
            clean_layer = self.clean.value if isinstance(self.clean.value, Image) else None
            clean, clean_axes = (clean_layer.data, layer_axes(clean_layer)) if clean_layer is not None else (None, None)

            def make(should_stop: Any) -> Any:
                return iter_distill_dbsn(src.data, teacher, src.axes, clean=clean, clean_axes=clean_axes,
                                         config=config, out_dir=out, resume=resume, overwrite=overwrite,
                                         should_stop=should_stop, preview=preview)
        else:
            ks = tuple(sorted(int(k) for k in self.ks.value))
            if not ks:
                raise ConfigError("select at least one K (teacher blind-spot size).")
            config = DistillConfig(device=self.device.value, student=student,
                                   **({} if resume else {"ks": ks, "targets": self.targets.value}), **opt)

            def make(should_stop: Any) -> Any:
                return iter_distill(src.data, teacher, src.axes, config, out, resume=resume, overwrite=overwrite,
                                    should_stop=should_stop, preview=preview)

        self.launch(f"{'resuming' if resume else 'distilling'} {teacher.name} on {src.name}", make)
