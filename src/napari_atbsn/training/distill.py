"""Stage 2: blind-spot-based multi-teacher distillation (method.md §1.8).

The trained AT-BSN is the meta-teacher: its rotated UNet features are
computed once per batch (under ``no_grad``) and the outputs for every k in Ks
come from shifting those features by ``(k + 1) // 2`` and applying the 1x1
head. The student learns ``sum_k mean|student(x) - T_k(x)|`` with equal
weights; ``mean_teacher=True`` is the paper's weaker ablation,
``mean|student(x) - mean_k T_k(x)|``.

Never worse (``targets="blended"``, the default): the student learns the blended
targets ``T̃_k = x + α·(T_k − x)``, α the per-channel weight of the teacher's
default output (k_b="auto", calibrated on the data once before the first step).
It does so by construction: its output is ``x + α·(net(x) − x)`` (the blend is
part of its forward and of every export) and its network learns the paper's
targets, because ``|x + α(s − x) − T̃_k| = α·|s − T_k|``. A network asked to learn
the near-identity T̃_k itself does not manage it in a CPU budget (PolyU, α ≈
0.1: 0.4 dB below the input, docs/never-worse-research.md). The bottom rows of
every plane are held out and, at the end, the student is measured against the
blended teacher there (training.report).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..axes import check_context_length
from ..config import DistillConfig, resume_config
from ..device import place_network, resolve_device
from ..errors import AxesError, BlindSpotError, ConfigError, ImageError, ModelFolderError
from ..events import CheckpointEvent, Preview, PreviewEvent, StepEvent, drain
from ..inference.denoiser import Denoiser, load_model
from ..inference.quality import Calibration, calibrate
from ..modelio import arch_dict, load_network
from ..models import ATBSN, Student
from ..normalization import Normalization
from ..sampling import PlaneSource, check_patch_fits, drop_context, plane_source, sample_batch
from .harness import (
    TrainResult,
    check_resumed_data,
    checkpoint_config,
    data_record,
    iter_training_run,
    prepare_output,
    preview_runner,
    removes_empty_output,
)
from .loop import LoopSpec, gpu_options
from .report import distill_report, held_out_rows


def distill_loss(student_out: torch.Tensor, teachers: torch.Tensor, *, mean_teacher: bool) -> torch.Tensor:
    """Sum over teachers of per-teacher L1 means (or L1 to the teachers' mean)."""
    student_out = student_out.float()
    teachers = teachers.float()
    if mean_teacher:
        return F.l1_loss(student_out, teachers.mean(dim=0))
    return sum(F.l1_loss(student_out, t) for t in teachers)  # type: ignore[return-value]


def load_teacher(teacher: str | Path) -> tuple[ATBSN, dict[str, Any]]:
    """The AT-BSN network in folder ``teacher`` and its config; any other kind of model is refused."""
    net, tcfg = load_network(teacher)
    if not isinstance(net, ATBSN):
        raise ModelFolderError(f"{teacher} holds a {tcfg['kind']}, not an AT-BSN teacher; give the folder "
                               f"written by 'atbsn train'.")
    return net, tcfg


def distill_settings(config: DistillConfig | None, saved: dict[str, Any] | None, teacher: str | Path,
                     tcfg: dict[str, Any]) -> DistillConfig:
    """The resolved settings (the checkpoint's when resuming, which must come from the same teacher)."""
    if saved and Path(saved["teacher"]["path"]).resolve() != Path(teacher).resolve():
        raise ConfigError(f"the checkpoint was distilled from {saved['teacher']['path']}, not {teacher}; resume "
                          f"with the same --teacher.")
    base = config or DistillConfig()
    cfg = (resume_config(base, saved["distill"]) if saved else base).resolved(tcfg["arch"]["preset"],
                                                                              int(tcfg["patch"]))
    s_max = (max(cfg.ks) + 1) // 2
    if s_max >= cfg.patch:
        raise BlindSpotError(f"k={max(cfg.ks)} is too large for {cfg.patch}-pixel patches; use smaller Ks.")
    return cfg


def distill_source(data: Any, axes: str | None, net: ATBSN, patch: int) -> PlaneSource:
    """The lazy plane source of ``data``, checked against the teacher's channels and the patch."""
    source = plane_source(data, axes)
    if source.channels != net.in_channels:
        raise ImageError(f"the data has {source.channels} channel(s) but the teacher was trained on "
                         f"{net.in_channels}; check --axes.")
    try:  # the teacher's neighbours must exist
        check_context_length(source.axes, source.data.shape, net.context)
    except AxesError as e:
        raise AxesError(f"{e} (The teacher was trained with --context {net.context}: distil on a stack like its "
                        f"training data.)") from None
    check_patch_fits(source, patch)
    return source


def make_student(cfg: DistillConfig, channels: int, teacher_net: torch.nn.Module, *, resume: bool,
                 blend: tuple[float, ...] | None = None) -> tuple[Student, bool]:
    """The student, seeded; student C of a new run starts from the teacher's UNet weights where it can.
    Returns the student and whether it was initialised from the teacher."""
    torch.manual_seed(cfg.seed)
    # the student reads what its teacher reads: the plane and the same neighbouring planes
    student = Student(cfg.student, channels, blend=blend, context=getattr(teacher_net, "context", 0),
                      context_dropout=getattr(teacher_net, "context_dropout", 0.0))
    initialised = False
    if cfg.init_from_teacher and cfg.student == "C" and not resume:
        try:
            student.init_from_teacher(teacher_net)
            initialised = True
        except ConfigError:
            initialised = False  # a non-paper teacher: student C starts from scratch
    return student, initialised


def distill_config_fn(student: Student, cfg: DistillConfig, norm: Normalization, teacher: str | Path,
                      tcfg: dict[str, Any], record: dict[str, Any], initialised: bool, calibration: Calibration,
                      held_out: int) -> Callable[[int], dict[str, Any]]:
    """steps done -> the student's config.json content."""

    def config_fn(steps: int) -> dict[str, Any]:
        return {"kind": "student", "arch": arch_dict(student), "patch": cfg.patch,
                "normalization": norm.to_dict(), "ks": list(cfg.ks), "mean_teacher": cfg.mean_teacher,
                "targets": cfg.targets, "held_out_rows": held_out,
                "quality": {"teacher": calibration.to_record()},
                "teacher": {"path": str(teacher), "arch": tcfg["arch"], "k_a": tcfg.get("k_a"),
                            "steps": tcfg.get("steps"), "patch": tcfg["patch"]},
                "steps": steps, "distill": {**dataclasses.asdict(cfg), "ks": list(cfg.ks),
                                            "initialised_from_teacher": initialised},
                "data": record}

    return config_fn


@removes_empty_output
def iter_distill(data: Any, teacher: str | Path, axes: str | None = None, config: DistillConfig | None = None,
                 out_dir: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
                 should_stop: Callable[[], bool] | None = None, preview: Preview | None = None,
                 calibration: Calibration | None = None,
                 ) -> Generator[StepEvent | CheckpointEvent | PreviewEvent, None, TrainResult]:
    """Distil the AT-BSN in folder ``teacher`` into a student on noisy ``data``.

    ``calibration``: the teacher's default output for ``data`` when the caller already has it
    (:func:`~napari_atbsn.inference.quality.calibrate`; it is computed otherwise, one teacher pass over a sample).

    Events, stopping, resuming and the result are as in
    :func:`napari_atbsn.training.iter_train`.
    """
    net, tcfg = load_teacher(teacher)
    saved = checkpoint_config(out_dir) if resume else None
    cfg = distill_settings(config, saved, teacher, tcfg)
    source = distill_source(data, axes, net, cfg.patch)
    record = data_record(source)
    check_resumed_data(saved, record, out_dir)
    device = resolve_device(cfg.device)
    out = prepare_output(out_dir, resume=resume, overwrite=overwrite)
    norm = Normalization.from_dict(tcfg["normalization"])
    in_norm = norm.tiled(2 * net.context + 1)  # a stack-context input: the same constants for every plane
    opts = gpu_options(cfg, device)
    teacher_net = place_network(net.eval().requires_grad_(False), device, **opts)
    # the teacher's default output decided once, from the data (deterministic, so a resumed run agrees)
    teacher_model = load_model(teacher, device=str(device), amp=cfg.amp)
    if calibration is None:
        calibration = calibrate(teacher_model, source.data, source.axes)
    blend = calibration.alpha if cfg.targets == "blended" else None
    student, initialised = make_student(cfg, source.channels, teacher_net, resume=resume, blend=blend)
    band = held_out_rows(source.height, cfg.patch)

    def batch_fn(step: int) -> np.ndarray:
        x = in_norm.apply(sample_batch(source, step, seed=cfg.seed, batch=cfg.batch, patch=cfg.patch,
                                       rows=source.height - band, context=net.context))
        # the teacher's 2-D mode taught to the student on the same share of samples (none for a teacher trained
        # before context dropout: its output without neighbours is nothing to learn)
        return drop_context(x, source.channels, student.context_dropout, seed=cfg.seed, step=step)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        # |x + α(s − x) − (x + α(T_k − x))| = α|s − T_k|: the blended student learns the blended targets exactly
        # when its network learns the paper's targets, so the loss is the paper's, on the network before the blend
        with torch.no_grad():
            targets = teacher_net.teachers(x, cfg.ks)
        return distill_loss(student.raw(x), targets, mean_teacher=cfg.mean_teacher)

    def finalize(model: Denoiser) -> dict[str, Any]:
        if calibration.gain_db is None:  # the noise could not be measured: nothing to report against
            return {"quality": {"teacher": calibration.to_record(), "line": calibration.line()}}
        report = distill_report(model, teacher_model, calibration, source, band, calibration.correlation)
        quality = {"teacher": calibration.to_record(), "student": report.to_record(), "line": report.line(),
                   "worse": report.gain_db < 0}
        if report.gain_db < 0:
            quality["advice"] = ("the student is estimated WORSE than the noisy input; keep the input, or train the "
                                 "teacher longer and distil again.")
        return {"quality": quality}

    config_fn = distill_config_fn(student, cfg, norm, teacher, tcfg, record, initialised, calibration, band)
    spec = LoopSpec("distill", student, cfg.iters, cfg.lr, device, cfg.amp, batch_fn, loss_fn,
                    cfg.checkpoint_every, out, config_fn, should_stop,
                    **preview_runner(preview, student, config_fn, device, amp=cfg.amp,
                                     channels_last=cfg.channels_last), **opts)
    return (yield from iter_training_run(spec, out, config_fn, resume=resume, finalize=finalize))


def distill(data: Any, teacher: str | Path, axes: str | None = None, config: DistillConfig | None = None,
            out_dir: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
            callback: Callable[[Any], None] | None = None) -> TrainResult:
    """Blocking :func:`iter_distill`."""
    return drain(iter_distill(data, teacher, axes, config, out_dir, resume=resume, overwrite=overwrite), callback)
