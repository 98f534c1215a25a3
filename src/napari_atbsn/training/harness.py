"""The harness every trainer shares: the checkpoint to resume, the output folder, the data, previews, and
the run of the optimisation loop ending in the model folder and a :class:`TrainResult`.

The trainers (:mod:`.train`, :mod:`.distill`, :mod:`.dbsn`) build a :class:`~.loop.LoopSpec` with these
pieces and differ only in their network, batches and loss.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import shutil
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..device import resolve_device
from ..errors import ConfigError, ImageError, ModelFolderError
from ..events import CheckpointEvent, Preview, StepEvent, drain
from ..inference.denoiser import Denoiser
from ..inference.geometry import Geometry, from_cyx
from ..inference.inmemory import iter_denoise_outputs
from ..inference.plan import available_memory
from ..inference.runtime import iter_array
from ..io.fs import overlap, refuse_overlap
from ..io.readers import check_chunks
from ..modelio import CONFIG, read_config, save_folder
from ..normalization import Normalization, fit_normalization
from ..sampling import PlaneSource, check_patch_fits, in_memory, plane_source
from .loop import CHECKPOINT_DIR, CHECKPOINT_OLD, CHECKPOINT_PARTIAL, LoopSpec, iter_optimize, recover_checkpoint


@dataclass
class TrainResult:
    """What a training or distillation run returns."""

    model: Denoiser
    path: Path | None
    steps: int
    stopped: bool
    losses: list[float]


def checkpoint_config(out_dir: str | Path | None) -> dict[str, Any]:
    """The config of the resumable checkpoint in ``out_dir`` (finishing an interrupted swap first)."""
    if out_dir is None:
        raise ConfigError("resume needs the output folder that holds the checkpoint.")
    p = Path(out_dir)
    if p.is_dir():
        recover_checkpoint(p)
    if not (p / CHECKPOINT_DIR / CONFIG).exists():
        raise ModelFolderError(f"nothing to resume: {p / CHECKPOINT_DIR} holds no checkpoint; start without "
                               f"--resume.")
    return read_config(p / CHECKPOINT_DIR)


#: The arguments of the trainers that are inputs, and what messages call them.
INPUT_ARGUMENTS = {"data": "training data", "teacher": "teacher", "clean": "clean images"}


def input_path(value: Any) -> str | None:
    """Where an input argument lives on disk: a path, or the file or folder a LazyImage was opened from."""
    if isinstance(value, (str, Path)):
        return str(value)
    source = getattr(value, "source", None)
    if isinstance(source, str) and not source.startswith("<") and hasattr(value, "axes"):
        return source
    return None


def check_inputs(arguments: dict[str, Any], out: str | Path | None) -> None:
    """What every trainer checks before it touches anything: an output folder that is the teacher, holds it or
    lies inside it, or that is (or lies inside) the data, would be written into or emptied — refused; and a
    Zarr input whose store lacks chunks is refused unless opened with ``allow_missing_chunks``."""
    for name, what in INPUT_ARGUMENTS.items():
        value = arguments.get(name)
        if value is None:
            continue
        check_chunks(value)
        path = input_path(value)
        # a data file inside the output folder is left alone by a model written beside it; a teacher folder
        # inside it is not (overwrite would empty the output's checkpoint, and the teacher is a model folder)
        if out is not None and path is not None and (name == "teacher" or overlap(out, path) != "contains"):
            refuse_overlap(out, {what: path})


def removes_empty_output(fn: Callable[..., Generator[Any, None, Any]]) -> Callable[..., Generator[Any, None, Any]]:
    """Decorate a training generator: if it fails (or is closed) while the output folder it made is still
    empty, the folder is removed again, so a refused or crashed run leaves nothing behind. A folder that
    existed before, or holds anything (a checkpoint), is kept."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, None, Any]:
        arguments = sig.bind(*args, **kwargs).arguments
        out = arguments.get("out_dir")
        check_inputs(arguments, out)
        made = out is not None and not Path(out).exists()
        try:
            return (yield from fn(*args, **kwargs))
        except BaseException:
            if made:
                with contextlib.suppress(OSError):
                    Path(out).rmdir()  # fails, keeping everything, unless the folder is empty
            raise

    return wrapper


def prepare_output(out_dir: str | Path | None, *, resume: bool, overwrite: bool) -> Path | None:
    """Check the output folder: never clobber a model unless asked.

    With ``resume`` the caller has already read the checkpoint (:func:`checkpoint_config`).
    """
    if out_dir is None:
        return None
    p = Path(out_dir)
    if p.exists() and not p.is_dir():
        raise ModelFolderError(f"{p} is a file; the output must be a folder.")
    # checkpoint.old alone is a checkpoint whose swap a crash interrupted: still a checkpoint to keep
    held = any((p / n).exists() for n in (CONFIG, CHECKPOINT_DIR, CHECKPOINT_OLD))
    if not resume and p.exists() and held and not overwrite:
        raise ModelFolderError(f"{p} already holds a model or checkpoint; use --resume to continue it, "
                               f"--overwrite to replace it, or another folder.")
    if p.exists() and overwrite and not resume:
        (p / CONFIG).unlink(missing_ok=True)
        for name in (CHECKPOINT_DIR, CHECKPOINT_PARTIAL, CHECKPOINT_OLD):
            shutil.rmtree(p / name, ignore_errors=True)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelFolderError(f"cannot create the output folder {p}: {e.strerror or e}.") from None
    return p


def finish(out: Path | None, model: torch.nn.Module, cfg: dict[str, Any], stopped: bool) -> Path | None:
    """Write the final model folder and drop the checkpoint (unless stopped)."""
    if out is None or stopped:
        return out / CHECKPOINT_DIR if out is not None and stopped else None
    save_folder(out, model, cfg)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    return out


def data_record(source: PlaneSource) -> dict[str, Any]:
    """What a model remembers of its training data: axes, shape, type, and a digest of a fixed sample of its
    pixels (4 planes, centre 128x128 at most), so that resuming on other data is refused."""
    sample = source.sample_pixels(np.random.default_rng(0), max_planes=4, max_side=128)
    return {"axes": source.axes, "shape": [int(s) for s in source.data.shape], "dtype": str(source.data.dtype),
            "sample_sha256": hashlib.sha256(np.ascontiguousarray(sample, dtype=np.float32).tobytes()).hexdigest()}


def check_resumed_data(saved: dict[str, Any] | None, record: dict[str, Any], out_dir: str | Path | None) -> None:
    """A resumed run must see the data its checkpoint was trained on (as far as the checkpoint recorded it)."""
    old = (saved or {}).get("data") or {}
    for key in ("axes", "shape", "dtype", "sample_sha256"):
        if key in old and old[key] != record[key]:
            what = "its pixels differ" if key == "sample_sha256" else f"{key} {old[key]} there, {record[key]} here"
            raise ConfigError(f"the checkpoint in {out_dir} was trained on other data ({what}); resume with the same "
                              f"data, or start a new run in another folder.")


def prepare_data(data: Any, axes: str | None, cfg: Any, out_dir: str | Path | None, saved: dict[str, Any] | None, *,
                 resume: bool, overwrite: bool,
                 ) -> tuple[PlaneSource, torch.device, Path | None, Normalization, dict[str, Any]]:
    """What every training run does first: the lazy plane source, every check before the output folder is
    touched, then the folder and the normalisation (the checkpoint's when resuming, else fitted on a sample).
    Returns them with the data's record (:func:`data_record`)."""
    source = plane_source(data, axes)
    check_patch_fits(source, cfg.patch)
    record = data_record(source)
    check_resumed_data(saved, record, out_dir)
    device = resolve_device(cfg.device)
    # The fit reads the data and refuses NaN or constant images: done before the folder exists, so a
    # refused run leaves nothing behind.
    if saved:
        norm = Normalization.from_dict(saved["normalization"])
    else:
        norm = fit_normalization(source.sample_pixels(np.random.default_rng(cfg.seed)), cfg.normalization)
    out = prepare_output(out_dir, resume=resume, overwrite=overwrite)
    # every step samples patches: from memory where the data fits, not one file read per patch
    return in_memory(source, available_memory()), device, out, norm, record


def preview_runner(preview: Preview | None, model: torch.nn.Module, config_fn: Callable[[int], dict[str, Any]],
                   device: torch.device, k: Any = None, *, amp: bool = True, channels_last: bool | None = None,
                   ) -> dict[str, Any]:
    """LoopSpec fields that denoise ``preview.image`` with the network in training (empty without a preview).

    ``k`` is the output shown (None: the model's own; D-BSN's mu phase shows mu).
    """
    if preview is None:
        return {}
    image = np.asarray(preview.image)
    # Checked here although the in-memory entry checks it too: a wrong crop is refused before the first
    # step, in the preview's own words, not when the first preview is due.
    channels = image.shape[preview.axes.index("C")] if "C" in preview.axes else 1
    if channels != model.in_channels:
        raise ImageError(f"the preview crop has {channels} channel(s), the data {model.in_channels}; crop it from "
                         f"the training data.")
    context = getattr(model, "context", 0)
    neighbours = preview.neighbours(context) if context and preview.neighbours is not None else None
    if context and neighbours is None and not getattr(model, "single_plane", True):
        # a crop without its neighbouring planes is previewed in the network's 2-D mode; a student of a teacher
        # trained before context dropout has none: the run trains without previews rather than failing on them
        return {}

    def run(steps: int) -> np.ndarray:
        # the same windowed inference as a saved model, on the weights of this step
        den = Denoiser(model, config_fn(steps), device=device, amp=amp, channels_last=channels_last)
        if neighbours is not None:  # the crop with its neighbouring planes, as the network reads it
            geom = Geometry.of(preview.axes, image.shape)
            unit = np.concatenate([geom.to_cyx(image).astype(np.float32), neighbours], axis=0)[None]
            out = drain(iter_array(den, unit, "SCYX", ks=[k], batch_size=4, dtype="float32", assembled=True))
            return from_cyx(out[0][0], geom)
        outs = drain(iter_denoise_outputs(den, image, preview.axes, ks=[k], batch_size=4, dtype="float32"))
        assert outs is not None  # no should_stop: never stopped
        return outs[0]

    return {"preview": run, "preview_every": preview.every}


def iter_training_run(spec: LoopSpec, out: Path | None, config_fn: Callable[[int], dict[str, Any]], *, resume: bool,
                      finalize: Callable[[Denoiser], dict[str, Any]] | None = None,
                      ) -> Generator[StepEvent | CheckpointEvent, None, TrainResult]:
    """Run the optimisation loop, then write the model folder (unless stopped) and wrap the result.

    ``finalize(model)`` of a completed run returns entries added to the final config.json (a report)."""
    res = yield from iter_optimize(spec, resume=resume)
    cfg_final = config_fn(res.steps)
    if finalize is not None and not res.stopped:
        cfg_final = {**cfg_final, **finalize(Denoiser(spec.model.eval(), cfg_final, device=spec.device,
                                                      amp=spec.amp, channels_last=spec.channels_last))}
    path = finish(out, spec.model, cfg_final, res.stopped)
    model = Denoiser(spec.model.eval(), cfg_final, device=spec.device, path=path, amp=spec.amp,
                     channels_last=spec.channels_last)
    return TrainResult(model, path, res.steps, res.stopped, res.losses)
