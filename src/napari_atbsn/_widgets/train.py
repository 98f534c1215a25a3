"""Train widget: an AT-BSN (or a D-BSN) on one noisy layer or file, with live loss, preview, Stop and Resume."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox, SpinBox

from ..axes import MAX_CONTEXT
from ..config import (
    ATBSN_PRESETS,
    AUTO_CONTEXT,
    AUTO_K_B,
    DBSN_PRESETS,
    DBSN_TRAIN_DEFAULTS,
    DEFAULT_KS,
    TRAIN_DEFAULTS,
    DBSNConfig,
    TrainConfig,
    config_fields_help,
)
from ..errors import ConfigError
from ..training import checkpoint_config, iter_train, iter_train_dbsn
from ._base import device_choices, folder_or_none
from ._runs import RunWidget
from ._source import SourcePicker

HELP = config_fields_help(TrainConfig)
DBSN_HELP = config_fields_help(DBSNConfig)
K_B_CHOICES = [("auto (from the data, blended, never worse)", AUTO_K_B), *[(str(k), k) for k in DEFAULT_KS]]
CONTEXT_CHOICES = [("auto (from the stack's planes)", AUTO_CONTEXT), ("0 (plane by plane)", 0),
                   *[(f"{n} plane(s) each side", n) for n in range(1, MAX_CONTEXT + 1)]]
METHODS = [("AT-BSN (spatially correlated noise)", "atbsn"), ("D-BSN (pixel-independent noise)", "dbsn")]


class TrainWidget(RunWidget):
    """Self-supervised training on the noisy data alone."""

    run_label = "Train"

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.source = SourcePicker(self)
        defaults = TrainConfig()
        self.method = ComboBox(label="method", choices=METHODS, value="atbsn",
                               tooltip="AT-BSN for correlated noise (most cameras); D-BSN when the noise analysis "
                                       "finds it pixel-independent")
        self.preset = ComboBox(label="preset", choices=list(ATBSN_PRESETS), value=defaults.preset,
                               tooltip=HELP["preset"])
        self.k_a = SpinBox(label="k_a", min=1, max=31, step=2, value=defaults.k_a, tooltip=HELP["k_a"])
        self.k_b = ComboBox(label="k_b", choices=K_B_CHOICES, value=defaults.k_b, tooltip=HELP["k_b"])
        self.context = ComboBox(label="Z/T context", choices=CONTEXT_CHOICES, value=defaults.context,
                                tooltip=HELP["context"])
        self.iters = SpinBox(label="iterations", min=1, max=10_000_000, tooltip=HELP["iters"])
        self.patch = SpinBox(label="patch", min=32, max=1024, step=32, tooltip=HELP["patch"])
        self.batch = SpinBox(label="batch", min=1, max=256, tooltip=HELP["batch"])
        self.device = ComboBox(label="device", choices=device_choices(), value="auto",
                               tooltip="where to train: each CUDA GPU by name and memory, Apple MPS, or the CPU")
        self.form.extend([*self.source.fields, self.method, self.preset, self.k_a, self.k_b, self.context, self.iters,
                          self.patch, self.batch, self.device, self.out_dir, self.overwrite, self.preview_every,
                          *self.export_fields])
        self.method.changed.connect(self._method_changed)
        self.preset.changed.connect(self._fill_defaults)
        self._method_changed()

    def _method_changed(self, *_: Any) -> None:
        dbsn = self.method.value == "dbsn"
        presets = list(DBSN_PRESETS if dbsn else ATBSN_PRESETS)
        self.preset.choices = presets
        self.preset.value = (DBSNConfig() if dbsn else TrainConfig()).preset
        self.k_a.visible = self.k_b.visible = self.context.visible = not dbsn
        self._fill_defaults()

    def _fill_defaults(self, *_: Any) -> None:
        table = DBSN_TRAIN_DEFAULTS if self.method.value == "dbsn" else TRAIN_DEFAULTS
        d = table.get(self.preset.value)
        if d:
            self.iters.value, self.patch.value, self.batch.value = d["iters"], d["patch"], d["batch"]

    def start(self, resume: bool = False) -> None:
        src = self.source.get()
        out = folder_or_none(self.out_dir.value)
        if out is None:
            raise ConfigError("choose an output folder for the model.")
        if resume:
            saved = checkpoint_config(out)  # a clear error when there is nothing to resume
            method = "dbsn" if saved.get("kind") == "dbsn" else "atbsn"
            # a resumed run keeps the checkpoint's settings; only the device is taken from the form
            config: Any = (DBSNConfig if method == "dbsn" else TrainConfig)(device=self.device.value)
        else:
            method = self.method.value
            common = {"preset": self.preset.value, "iters": self.iters.value, "patch": self.patch.value,
                      "batch": self.batch.value, "device": self.device.value}
            config = DBSNConfig(**common) if method == "dbsn" else \
                TrainConfig(k_a=self.k_a.value, k_b=self.k_b.value, context=self.context.value, **common)
            config.resolved()  # settings errors now, before anything runs
        preview = self.make_preview(src, self.patch.value)
        fn = iter_train_dbsn if method == "dbsn" else iter_train
        overwrite = bool(self.overwrite.value)

        def make(should_stop: Any) -> Any:
            return fn(src.data, src.axes, config, out, resume=resume, overwrite=overwrite, should_stop=should_stop,
                      preview=preview)

        self.launch(f"{'resuming' if resume else 'training'} {method} on {src.name}", make)
