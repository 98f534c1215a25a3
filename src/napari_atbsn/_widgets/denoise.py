"""Denoise widget: a model (teacher, student or D-BSN) applied to a layer or a file.

Three ways out, none of which replaces an earlier result:

* a new layer computed now, in a worker, with progress;
* a new lazy layer: nothing runs until napari shows a plane, then only that
  plane's chunks are computed (for stacks too big to denoise up front);
* a file (OME-Zarr, Zarr, TIFF, .npy) written chunk by chunk and resumably,
  then opened lazily as a layer.

Result layers are named after the input and the settings (``cells_atbsn_kb3``)
and record what made them in ``metadata['napari_atbsn']``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, SpinBox

from ..axes import context_note, context_unused
from ..config import AUTO_K_B, NOISE_MAP
from ..errors import ConfigError, ImageError
from ..inference.denoiser import load_model
from ..inference.inmemory import iter_denoise_outputs
from ..inference.lazy import lazy_denoise
from ..inference.output_kinds import resolve_ks
from ..inference.plan import available_memory, plan_job
from ..inference.quality import calibrate
from ..inference.run import iter_run
from ..io.readers import open_image
from ._base import (
    JobWidget,
    device_choices,
    display_kwargs,
    display_limits,
    folder_or_none,
    result_metadata,
    result_name,
)
from ._job import info
from ._source import Source, SourcePicker

K_CHOICES = [("the model's default (auto unless fixed at training)", None),
             ("auto: from the data, blended, never worse", AUTO_K_B), *[(str(k), k) for k in (0, 1, 3, 5, 7, 9, 11)]]
MODES = [("new layer, computed now", "now"), ("new layer, lazy (planes computed as you view them)", "lazy"),
         ("file (OME-Zarr, Zarr, TIFF, .npy)", "file")]


class DenoiseWidget(JobWidget):
    run_label = "Denoise"

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.source = SourcePicker(self)
        self.model_dir = FileEdit(label="model folder", mode="d", value=None, nullable=True,
                                  tooltip="a teacher, student or D-BSN folder written by napari-atbsn")
        self.k_b = ComboBox(label="k_b", choices=K_CHOICES, value=None,
                            tooltip="AT-BSN teachers: the inference blind spot (small: 1 or 3; the asymmetric "
                                    "trick). Students and D-BSN have no k_b.")
        self.noise_map = CheckBox(label="also the noise map (D-BSN)", value=False)
        self.mode = ComboBox(label="output", choices=MODES, value="now")
        self.out_file = FileEdit(label="output file", mode="w", value=None, nullable=True,
                                 filter="*.ome.zarr *.zarr *.tif *.tiff *.npy")
        self.chunk = SpinBox(label="chunk", min=0, max=65536, value=0,
                             tooltip="chunk side in pixels for lazy and file outputs (0: chosen from free memory)")
        self.dtype = ComboBox(label="dtype", choices=[("float32", "float32"), ("as input", "input")],
                              value="float32")
        self.device = ComboBox(label="device", choices=device_choices(), value="auto")
        self.form.extend([*self.source.fields, self.model_dir, self.k_b, self.noise_map, self.mode, self.out_file,
                          self.chunk, self.dtype, self.device])
        self.mode.changed.connect(self._mode_changed)
        self._mode_changed()
        self.layers: list[Any] = []  # the layers the last run added

    def _mode_changed(self, *_: Any) -> None:
        self.out_file.visible = self.mode.value == "file"
        self.chunk.visible = self.mode.value != "now"

    def _model(self) -> Any:
        folder = folder_or_none(self.model_dir.value)
        if folder is None:
            raise ConfigError("choose a model folder (a teacher, student or D-BSN written by napari-atbsn).")
        return load_model(folder, device=self.device.value)

    def start(self) -> None:
        src = self.source.get()
        model = self._model()
        ks = resolve_ks(model, self.k_b.value, bool(self.noise_map.value))  # k_b / noise-map errors now
        chunk = int(self.chunk.value) or None
        self.layers = []
        if self.mode.value == "lazy":
            self._add_lazy(src, model, chunk)
        elif self.mode.value == "file":
            self._run_file(src, model, chunk)
        else:
            self._run_now(src, model, ks)

    # -- computed now ------------------------------------------------------------------------------
    def _run_now(self, src: Source, model: Any, ks: list[Any]) -> None:
        arr = src.array
        need = int(np.prod(arr.shape)) * 4 * (len(ks) + 1)
        if need > available_memory() // 2:
            raise ImageError(f"denoising this {'x'.join(map(str, arr.shape))} image in memory needs about "
                             f"{need / 2**30:.1f} GiB; choose the lazy layer or a file output instead.")
        dtype = self.dtype.value

        def make(should_stop: Any) -> Any:
            return iter_denoise_outputs(model, np.asarray(arr), src.axes, ks=ks, batch_size=4, dtype=dtype,
                                        should_stop=should_stop)

        def done(outs: list[np.ndarray] | None) -> None:
            if outs is None:
                self.status.setText("stopped; nothing was added.")
                return
            for k, out in zip(ks, outs, strict=True):
                self._add(src, model, out, k, calibration=outs.calibration)
            self._say(f"added {', '.join(layer.name for layer in self.layers)}", outs.calibration,
                      outs.context_unused)

        self.run_job(f"denoising {src.name}", make, on_event=lambda ev: self.show_progress(*ev, unit="windows"),
                     on_done=done)

    # -- lazy ----------------------------------------------------------------------------------------
    def _add_lazy(self, src: Source, model: Any, chunk: int | None) -> None:
        k = self.k_b.value
        ks_arg = [k] if k is not None else None
        noise_map, dtype = bool(self.noise_map.value), self.dtype.value
        auto = AUTO_K_B in resolve_ks(model, k)

        def make(should_stop: Any) -> Any:
            # auto (the default) decides from a sample of the data first, in the worker (it runs the network on
            # a few planes), so the lazy layer's planes all share one choice
            yield from ()
            return calibrate(model, src.data, src.axes) if auto else None

        def done(cal: Any) -> None:
            outs = lazy_denoise(src.data, model, axes=src.axes, k_b=ks_arg, chunk=chunk, dtype=dtype,
                                noise_map=noise_map, calibration=cal)
            outs = outs if isinstance(outs, list) else [outs]
            for kk, out in zip(resolve_ks(model, k, noise_map), outs, strict=True):
                self._add(src, model, out, kk, chunk=chunk, lazy=True, calibration=cal)
            self._say(f"added {', '.join(layer.name for layer in self.layers)} (lazy: each plane is denoised when "
                      f"shown)", cal, context_unused(src.axes, np.shape(src.array), model.context))

        self.run_job(f"estimating the noise of {src.name}" if auto else f"preparing {src.name}", make, on_done=done)

    # -- file ----------------------------------------------------------------------------------------
    def _run_file(self, src: Source, model: Any, chunk: int | None) -> None:
        out = folder_or_none(self.out_file.value)
        if out is None:
            raise ConfigError("choose an output file (.ome.zarr, .zarr, .tif or .npy).")
        k = self.k_b.value
        job = plan_job(src.data, model, out, axes=src.axes, k_b=k, chunk=chunk, dtype=self.dtype.value,
                       noise_map=bool(self.noise_map.value))

        def make(should_stop: Any) -> Any:
            return iter_run(job, should_stop=should_stop)

        def done(result: Any) -> None:
            if not result.complete:
                self.status.setText(f"stopped after {result.units_computed} new chunk(s); Denoise again with the "
                                    f"same settings resumes it.")
                return
            for kk, path in zip(result.k_bs, result.paths, strict=True):
                self._add(src, model, _in_source_order(open_image(path), src.axes), kk, chunk=result.chunk,
                          output=str(path), calibration=result.calibration)
            self._say(f"wrote {', '.join(str(p) for p in result.paths)} in {result.seconds:.0f} s",
                      result.calibration, job.geom.context_unused)

        self.run_job(f"denoising {src.name} to {out.name}", make,
                     on_event=lambda ev: self.show_progress(*ev, unit="windows"), on_done=done)

    # -- layers --------------------------------------------------------------------------------------
    def _say(self, msg: str, calibration: Any, context_unused: str | None = None) -> None:
        """The status line and a notification; with k_b=auto, the estimated gain too (a loss is a warning); why a
        stack-context model denoised each plane alone (``context_unused``), if it did."""
        if context_unused:
            msg += f"; {context_note(context_unused)}"
        if calibration is not None:
            msg += f"; {calibration.line()}"
            if calibration.worse:
                msg += " (WORSE than the input: keep the input or train longer)"
        self.status.setText(msg)
        info(msg)

    def _add(self, src: Source, model: Any, data: Any, k: Any, **record: Any) -> None:
        noise = k == NOISE_MAP
        kw = display_kwargs(src.layer) if src.layer is not None else {}
        if kw and noise:
            kw.pop("contrast_limits", None)
            kw["colormap"] = "magma"
        if "contrast_limits" not in kw and not kw.get("rgb"):
            # a lazy result's range comes from the input (same units) so adding it computes nothing
            kw["contrast_limits"] = display_limits(src.array if record.get("lazy") and not noise else data)
        cal = record.get("calibration")
        meta = result_metadata(model, k=cal.k_b if cal is not None else k, source=src.name, chunk=record.get("chunk"),
                               output=record.get("output"), lazy=bool(record.get("lazy")))
        if cal is not None:
            meta["napari_atbsn"]["quality"] = cal.to_record()
        if src.path is not None:
            meta["napari_atbsn"]["input_file"] = str(src.path)
        layer = self.viewer.add_image(data, name=result_name(src.name, model, "noise" if noise else k, cal),
                                      metadata=meta, **kw)
        self.layers.append(layer)


def _in_source_order(lazy: Any, axes: str) -> Any:
    """A written output (stored T, C, Z, Y, X for OME-Zarr; Y, X last for TIFF) back in the input's axis order."""
    if sorted(lazy.axes) != sorted(axes):
        return lazy.data
    return lazy.data.transpose([lazy.axes.index(a) for a in axes])
