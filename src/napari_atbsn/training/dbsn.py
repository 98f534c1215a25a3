"""D-BSN training (method.md §5.3) and its unpaired distillation into a student (§5.4).

Training runs three phases on the shared loop (events, stop, checkpoints):

1. ``dbsn-mu``: the blind-spot network alone, MSE between mu and the noisy input;
2. ``dbsn-sigma``: the uncertainty head and the noise estimator with mu frozen,
   on the constrained likelihood, at 3x the learning rate (:data:`SIGMA_LR_FACTOR`);
3. ``dbsn-joint``: all three on the likelihood; the backbone (mu) learns from its data term only, Sigma_mu
   reads the backbone's features detached.

Each phase has its own Adam and cosine schedule, like the reference's separate
scripts. The checkpoint records its phase, so a resumed run continues that
phase, then the later ones. A batch whose likelihood blows up (Mahalanobis
term above 1e8, or not finite) is dropped, as in the reference; too many
dropped batches stop the run with a clear error instead of a NaN model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import BLIND_ESTIMATE, DEFAULT_GAMMA, STUDENT_MULTIPLE, DBSNConfig, UnpairedConfig, resume_config
from ..device import resolve_device
from ..errors import ATBSNError, ConfigError, ImageError, ModelFolderError
from ..events import CheckpointEvent, Preview, PreviewEvent, QualityEvent, StepEvent, drain
from ..inference.denoiser import Denoiser
from ..inference.quality import sample_groups
from ..modelio import arch_dict, load_network
from ..models import DBSN, Student
from ..models.dbsn import BLOWUP, bayes_fusion, constrained_nll, marginal_nll
from ..normalization import Normalization
from ..plane_noise import levels_by_image, pooled_level
from ..sampling import PlaneSource, batch_planes, check_patch_fits, plane_source, sample_batch
from .harness import (
    TrainResult,
    checkpoint_config,
    finish,
    iter_training_run,
    prepare_data,
    prepare_output,
    preview_runner,
    removes_empty_output,
)
from .loop import LoopSpec, gpu_options, iter_optimize
from .monitor import QualityMonitor, final_quality, measure_noise, monitor_every
from .noise_targets import ImageNoise, measured_variance, signal_grid

PHASES = ("mu", "sigma", "joint")
#: The sigma phase runs at this multiple of the learning rate. The noise estimator starts flat (a constant
#: level) and learns its signal dependence slowly: on FMD, 400 cosine-annealed steps at the base rate left
#: it flat (the fusion then cost 3 dB against mu alone), at 3x it tracked the true per-intensity noise
#: variance and the fusion beat mu (docs/benchmarks.md). The backbone is frozen in this phase, so the
#: larger rate touches only the two small 1x1 heads.
SIGMA_LR_FACTOR = 3.0
#: The joint fine-tuning runs at this multiple of the learning rate (the reference fine-tunes at a tenth of
#: its pretraining rate or less): at the full rate, a fresh cosine cycle undid part of what mu had learned.
JOINT_LR_FACTOR = 0.1
MAX_DROPPED = 0.2  # of a phase's steps


class LossGuard:
    """Counts dropped batches; refuses to go on when the likelihood keeps blowing up."""

    def __init__(self, steps: int) -> None:
        self.steps, self.dropped = steps, 0

    def check(self, loss: torch.Tensor, maha: torch.Tensor) -> bool:
        loss, maha = loss.detach(), maha.detach()
        ok = bool(torch.isfinite(loss)) and bool(torch.isfinite(maha)) and float(maha) <= BLOWUP
        if not ok:
            self.dropped += 1
            if self.dropped > max(5, MAX_DROPPED * self.steps):
                raise ATBSNError(f"the D-BSN likelihood blew up in {self.dropped} batches; lower the learning rate "
                                 f"(--lr) or check the data for extreme values or saturated regions.")
        return ok


def phase_loss(model: DBSN, phase: str, guard: LossGuard,
               measured: Callable[[torch.Tensor], torch.Tensor] | None = None, grid: torch.Tensor | None = None,
               images: ImageNoise | None = None) -> Callable[[torch.Tensor], torch.Tensor | None]:
    """The loss of one phase. ``measured`` (signal -> the noise variance measured from the data) is the
    ``sigma_fit="measured"`` mode: sigma_n is fitted to it at mu (a log-variance regression), and sigma_mu and
    mu (in the joint phase) follow the plain likelihood given sigma_n. Without it, the sigma and joint phases
    use the paper's constrained likelihood. With ``images`` the batch carries one more channel, each patch's
    index along S (:func:`with_images`), and the likelihood charges each patch its own image's noise."""
    def loss_fn(batch: torch.Tensor) -> torch.Tensor | None:
        x, which = (batch[:, :-1], batch[:, -1, 0, 0].round().long()) if images is not None else (batch, None)
        if phase == "sigma":
            # mu is frozen: no graph through the backbone, so a sigma step costs about a third of a mu step
            with torch.no_grad():
                mu, mid = model.features(x)
        else:
            mu, mid = model.features(x)
        if phase == "mu":
            return F.mse_loss(mu.float(), x.float())
        # Sigma_mu reads the backbone's features detached: the backbone learns from the likelihood's data term
        # only (mu's residual weighted by 1 / (sigma_mu^2 + sigma_n^2)). Let Sigma_mu's log-variance gradient
        # reshape the shared features too (the reference's joint phase) and on PolyU's RGB camera noise mu lost
        # 9 dB in the joint phase (27.6 -> 18.3 dB at 300 small steps); detached it kept 27.0 and FMD's mu was
        # unchanged (39.3 dB; docs/benchmarks.md, issue 17)
        var_mu = model.var_mu(mid.detach())
        var_n = model.var_n(model.noise_input(x, mu.detach()))
        if measured is None:
            loss, maha = constrained_nll(x, mu, var_mu, var_n)
        else:
            # sigma_n follows the measured level at mu as mu changes; the likelihood does not move it (it would
            # take mu's own error for noise), so sigma_mu learns mu's error given the measured noise
            fit = (torch.log(var_n) - torch.log(measured(mu.detach()))).square().mean()
            if grid is not None and model.noise_model == "poisson-gaussian":  # sigma_n reads the signal per pixel
                g = grid.to(x.device)
                fit = fit + (torch.log(model.var_n(g)) - torch.log(measured(g))).square().mean()
            charged = var_n.detach()
            if images is not None:
                charged = charged * images.factor(mu.detach(), which).to(charged.dtype)
            loss, maha = marginal_nll(x, mu, var_mu, charged)
            loss = loss + fit
        return loss if guard.check(loss, maha) else None  # None: the loop skips the update entirely

    return loss_fn


def _run_config(config: DBSNConfig | None, out_dir: str | Path | None,
                resume: bool) -> tuple[dict[str, Any] | None, DBSNConfig]:
    """The checkpoint's config (None unless resuming) and the run's resolved settings."""
    saved = checkpoint_config(out_dir) if resume else None
    if saved is not None and saved.get("kind") != "dbsn":
        raise ModelFolderError(f"the checkpoint in {out_dir} is not a D-BSN run; resume it with its own method.")
    base = config or DBSNConfig()
    cfg = (resume_config(base, saved["train"]) if saved else base).resolved()
    if saved and cfg.iters != saved["train"]["iters"]:
        raise ConfigError(f"--iters {cfg.iters} differs from the checkpoint's {saved['train']['iters']}; a D-BSN run "
                          f"splits its iterations into phases, so a resumed run keeps them. Drop --iters.")
    return saved, cfg


@dataclass
class NoiseSupervision:
    """What the run measures once, before the first step: the monitor of its quality (None: off, or the noise
    cannot be measured); the measured noise variance with the signal grid sigma_n is fitted on (None: the
    paper's likelihood, by choice, for the multivariate model, or when the noise cannot be measured); and each
    separate image's own level (None: one image, or no S axis)."""

    monitor: QualityMonitor | None = None
    measured: Callable[[torch.Tensor], torch.Tensor] | None = None
    grid: torch.Tensor | None = None
    images: ImageNoise | None = None


def noise_supervision(cfg: DBSNConfig, source: PlaneSource, norm: Normalization, model: DBSN) -> NoiseSupervision:
    noise = measure_noise(source) if cfg.monitor or cfg.sigma_fit == "measured" else None
    if noise is None:
        return NoiseSupervision()
    monitor = QualityMonitor.for_source(source, noise) if cfg.monitor else None
    if cfg.sigma_fit != "measured" or model.full:
        return NoiseSupervision(monitor)
    pooled = pooled_level(noise[0])
    images = ImageNoise.of(levels_by_image(noise[0], sample_groups(source.data, source.axes)), pooled, norm)
    return NoiseSupervision(monitor, measured_variance(pooled, norm), signal_grid(pooled, norm), images)


def with_images(batch: np.ndarray, source: PlaneSource, step: int, cfg: DBSNConfig) -> np.ndarray:
    """``batch`` with one more channel holding each patch's index along S (the same draws as sample_batch), which
    the loss splits off: the batch goes through the loop's prefetching and device transfer as one array."""
    planes = batch_planes(source, step, seed=cfg.seed, batch=cfg.batch, patch=cfg.patch)
    images = source.separate_images(planes)
    tag = np.broadcast_to(np.asarray(images, dtype=np.float32)[:, None, None, None], (len(batch), 1, *batch.shape[2:]))
    return np.concatenate([batch, tag], axis=1)


def monitor_fields(monitor: QualityMonitor | None, phase: str, offset: int, iters: int,
                   model_at: Callable[[int], Denoiser]) -> dict[str, Any]:
    """The LoopSpec fields that estimate a phase's quality (empty without a monitor); ``model_at(steps)`` is the
    network in training as a Denoiser, ``offset`` the steps of the phases before."""
    if monitor is None:
        return {}

    def estimate(steps: int) -> QualityEvent:
        return monitor.estimate(model_at(steps), f"dbsn-{phase}", offset + steps)

    return {"monitor": estimate, "monitor_every": monitor_every(iters)}


@removes_empty_output
def iter_train_dbsn(data: Any, axes: str | None = None, config: DBSNConfig | None = None,
                    out_dir: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
                    should_stop: Callable[[], bool] | None = None, preview: Preview | None = None,
                    ) -> Generator[StepEvent | CheckpointEvent | PreviewEvent | QualityEvent, None, TrainResult]:
    """Train a D-BSN on noisy ``data``; events, stopping, resuming and previews as in :func:`iter_train`.

    Previews show the Bayes-fused output, except in the mu phase, where the
    variance heads are untrained and the preview shows mu itself.
    """
    saved, cfg = _run_config(config, out_dir, resume)
    source, device, out, norm, record = prepare_data(data, axes, cfg, out_dir, saved, resume=resume,
                                                     overwrite=overwrite)
    torch.manual_seed(cfg.seed)
    model = DBSN(source.channels, cfg.preset, noise_model=cfg.noise_model)
    opts = {"amp": cfg.amp, "channels_last": cfg.channels_last}  # the returned Denoiser runs as training did
    iters = cfg.phase_iters()
    start_phase = PHASES.index(saved["phase"]) if saved else 0
    offsets = np.cumsum((0, *iters))

    def config_fn_for(phase: int) -> Callable[[int], dict[str, Any]]:
        def config_fn(steps: int) -> dict[str, Any]:
            return {"kind": "dbsn", "method": "dbsn", "arch": arch_dict(model), "patch": cfg.patch,
                    "gamma": cfg.gamma, "normalization": norm.to_dict(), "phase": PHASES[phase],
                    "steps": int(offsets[phase] + steps), "train": dataclasses.asdict(cfg),
                    "data": record}
        return config_fn

    noise = noise_supervision(cfg, source, norm, model)
    monitor = noise.monitor

    losses: list[float] = []
    for phase in range(start_phase, len(PHASES)):
        if iters[phase] == 0:
            continue

        def batch_fn(step: int, _off: int = int(offsets[phase])) -> np.ndarray:
            batch = norm.apply(sample_batch(source, _off + step, seed=cfg.seed, batch=cfg.batch, patch=cfg.patch))
            return batch if noise.images is None else with_images(batch, source, _off + step, cfg)

        lr = cfg.lr * {"mu": 1.0, "sigma": SIGMA_LR_FACTOR, "joint": JOINT_LR_FACTOR}[PHASES[phase]]
        spec = LoopSpec(f"dbsn-{PHASES[phase]}", model, iters[phase], lr, device, cfg.amp, batch_fn,
                        phase_loss(model, PHASES[phase], LossGuard(iters[phase]), noise.measured, noise.grid,
                                   noise.images),
                        cfg.checkpoint_every, out,
                        config_fn_for(phase), should_stop,
                        **preview_runner(preview, model, config_fn_for(phase), device,
                                         BLIND_ESTIMATE if PHASES[phase] == "mu" else None, amp=cfg.amp,
                                         channels_last=cfg.channels_last),
                        **monitor_fields(monitor, PHASES[phase], int(offsets[phase]), iters[phase],
                                         lambda steps, _p=phase: Denoiser(model, config_fn_for(_p)(steps),
                                                                          device=device, **opts)),
                        **gpu_options(cfg, device))
        res = yield from iter_optimize(spec, resume=resume and phase == start_phase)
        losses += res.losses
        if res.stopped:
            path = finish(out, model, config_fn_for(phase)(res.steps), stopped=True)
            return TrainResult(Denoiser(model.eval(), config_fn_for(phase)(res.steps), device=device, **opts), path,
                               int(offsets[phase] + res.steps), True, losses)
    final = config_fn_for(len(PHASES) - 1)(iters[-1])
    final.pop("phase")
    if monitor is not None:  # the default output of the final weights, and whether the run failed
        final |= final_quality(monitor, int(cfg.iters))
    path = finish(out, model, final, stopped=False)
    return TrainResult(Denoiser(model.eval(), final, device=device, path=path, **opts), path, int(cfg.iters), False,
                       losses)


def train_dbsn(data: Any, axes: str | None = None, config: DBSNConfig | None = None,
               out_dir: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
               callback: Callable[[Any], None] | None = None) -> TrainResult:
    """Blocking :func:`iter_train_dbsn`."""
    return drain(iter_train_dbsn(data, axes, config, out_dir, resume=resume, overwrite=overwrite), callback)


# -- unpaired distillation --------------------------------------------------------------------------
def synthesize_noisy(model: DBSN, clean: torch.Tensor, u: float, z: torch.Tensor | None = None) -> torch.Tensor:
    """``clean + N(0, 1) * sigma_n(clean) * u``: noise drawn from the learned model at the clean signal."""
    var_n = model.var_n(clean)
    z = torch.randn_like(clean) if z is None else z
    if var_n.ndim == 4:
        return clean + z * var_n.clamp_min(0).sqrt() * u
    chol = torch.linalg.cholesky(var_n.permute(0, 3, 4, 1, 2) + 1e-8 * torch.eye(clean.shape[1], device=clean.device))
    noise = (chol @ z.permute(0, 2, 3, 1).unsqueeze(-1)).squeeze(-1).permute(0, 3, 1, 2)
    return clean + noise * u


def load_dbsn_teacher(teacher: str | Path) -> tuple[DBSN, dict[str, Any]]:
    """The D-BSN network in folder ``teacher`` and its config; any other kind of model is refused."""
    net, tcfg = load_network(teacher)
    if not isinstance(net, DBSN):
        raise ModelFolderError(f"{teacher} holds a {tcfg['kind']}, not a D-BSN; give the folder written by "
                               f"'atbsn train --method dbsn'.")
    return net, tcfg


def unpaired_sources(data: Any, axes: str | None, clean: Any, clean_axes: str | None, patch: int,
                     channels: int) -> tuple[PlaneSource, PlaneSource | None]:
    """The plane sources of the noisy data and of the clean images (None without them), checked against the
    patch and the D-BSN's ``channels``."""
    source = plane_source(data, axes)
    check_patch_fits(source, patch)
    if source.channels != channels:
        raise ImageError(f"the noisy data has {source.channels} channel(s) but the D-BSN was trained on "
                         f"{channels}; check --axes.")
    if clean is None:
        return source, None
    clean_source = plane_source(clean, clean_axes)
    check_patch_fits(clean_source, patch)
    if clean_source.channels != source.channels:
        raise ImageError(f"the clean images have {clean_source.channels} channel(s), the noisy data "
                         f"{source.channels}; they must match (check --clean-axes).")
    return source, clean_source


def real_per_batch(cfg: UnpairedConfig, with_clean: bool) -> int:
    """How many patches of a batch are real noisy data: one in 8 (at least one) beside clean images, else all."""
    n_real = max(1, cfg.batch // 8) if with_clean else cfg.batch
    if with_clean and n_real >= cfg.batch:
        raise ConfigError(f"batch={cfg.batch} leaves no room for clean patches; use at least 2 (8 in the paper).")
    return n_real


def make_unpaired_student(cfg: UnpairedConfig, channels: int, patch: int) -> Student:
    """The student, seeded; refused when the teacher's patch does not suit it."""
    torch.manual_seed(cfg.seed)
    student = Student(cfg.student, channels)
    if patch % STUDENT_MULTIPLE[cfg.student]:
        raise ConfigError(f"the teacher's patch {patch} is not a multiple of {STUDENT_MULTIPLE[cfg.student]}, "
                          f"which student {cfg.student} needs; choose another student.")
    return student


@dataclass
class UnpairedBatches:
    """Batches of ``n_real`` real noisy patches followed by clean ones (when there is a clean source).

    Remembers the step of the last batch: the loss draws its synthetic noise from (seed, step), so a resumed
    run continues exactly.
    """

    source: PlaneSource
    clean_source: PlaneSource | None
    norm: Normalization
    seed: int
    batch: int
    n_real: int
    patch: int
    step: int = 0

    def __call__(self, step: int) -> np.ndarray:
        self.step = step
        real = sample_batch(self.source, step, seed=self.seed, batch=self.n_real, patch=self.patch)
        parts = [real]
        if self.clean_source is not None:
            parts.append(sample_batch(self.clean_source, step, seed=self.seed + 1, batch=self.batch - self.n_real,
                                      patch=self.patch))
        return self.norm.apply(np.concatenate(parts))


def synthetic_noise_draw(seed: int, step: int, shape: torch.Size) -> tuple[float, torch.Tensor]:
    """The noise scale u ~ U[0.9, 1.1] and the standard normal ``z`` of one step, from (seed, step)."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + step)
    u = 0.9 + 0.2 * float(torch.rand((), generator=gen))
    z = torch.randn(shape, generator=gen)
    return u, z


def unpaired_loss(student: Student, teacher_net: DBSN, gamma: float, real_weight: float,
                  batches: UnpairedBatches) -> Callable[[torch.Tensor], torch.Tensor]:
    """batch on device -> ``real_weight * MSE(real) + MSE(synthetic)`` (plain ``MSE(real)`` without clean
    images), the real target being the D-BSN's Bayes-fused output."""
    n_real, with_clean = batches.n_real, batches.clean_source is not None

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        real, clean_x = x[:n_real], x[n_real:]
        with torch.no_grad():
            mu, var_mu, var_n = teacher_net(real.float())
            target = bayes_fusion(real.float(), mu, var_mu, var_n, gamma)
        if not with_clean:
            return F.mse_loss(student(real).float(), target)
        loss = real_weight * F.mse_loss(student(real).float(), target)
        u, z = synthetic_noise_draw(batches.seed, batches.step, clean_x.shape)
        with torch.no_grad():
            noisy = synthesize_noisy(teacher_net, clean_x.float(), u, z.to(clean_x.device))
        return loss + F.mse_loss(student(noisy).float(), clean_x.float())

    return loss_fn


def unpaired_config_fn(student: Student, cfg: UnpairedConfig, norm: Normalization, teacher: str | Path,
                       tcfg: dict[str, Any], batches: UnpairedBatches) -> Callable[[int], dict[str, Any]]:
    """steps done -> the student's config.json content."""
    patch, source = batches.patch, batches.source

    def config_fn(steps: int) -> dict[str, Any]:
        return {"kind": "student", "method": "dbsn-unpaired", "arch": arch_dict(student), "patch": patch,
                "normalization": norm.to_dict(), "steps": steps,
                "teacher": {"path": str(teacher), "kind": "dbsn", "arch": tcfg["arch"], "steps": tcfg.get("steps"),
                            "patch": patch},
                "unpaired": {**dataclasses.asdict(cfg), "clean": batches.clean_source is not None,
                             "real_per_batch": batches.n_real},
                "data": {"axes": source.axes, "shape": [int(s) for s in source.data.shape]}}

    return config_fn


@removes_empty_output
def iter_distill_dbsn(data: Any, teacher: str | Path, axes: str | None = None, *, clean: Any = None,
                      clean_axes: str | None = None, config: UnpairedConfig | None = None,
                      out_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
                      should_stop: Callable[[], bool] | None = None, preview: Preview | None = None,
                      ) -> Generator[StepEvent | CheckpointEvent | PreviewEvent, None, TrainResult]:
    """Distil a D-BSN into a student (method.md §5.4).

    Each batch has ``batch // 8`` (at least one) real noisy patches whose target is the D-BSN's
    Bayes-fused output, and, when ``clean`` images of similar samples are given, the rest are clean
    patches with noise synthesised by the D-BSN's noise model (scaled by u ~ U[0.9, 1.1] per batch),
    whose target is the clean patch. Loss: ``real_weight * MSE(real) + MSE(synthetic)``. Without clean
    images it is plain self-distillation on the noisy data.
    """
    net, tcfg = load_dbsn_teacher(teacher)
    saved = checkpoint_config(out_dir) if resume else None
    base = config or UnpairedConfig()
    cfg = (resume_config(base, saved["unpaired"]) if saved else base).resolved(tcfg["arch"]["preset"])
    patch = int(tcfg["patch"])
    source, clean_source = unpaired_sources(data, axes, clean, clean_axes, patch, net.in_channels)
    n_real = real_per_batch(cfg, clean_source is not None)
    device = resolve_device(cfg.device)
    out = prepare_output(out_dir, resume=resume, overwrite=overwrite)
    norm = Normalization.from_dict(tcfg["normalization"])
    gamma = float(tcfg.get("gamma", DEFAULT_GAMMA))
    teacher_net = net.to(device).eval().requires_grad_(False)
    student = make_unpaired_student(cfg, source.channels, patch)
    batches = UnpairedBatches(source, clean_source, norm, cfg.seed, cfg.batch, n_real, patch)
    config_fn = unpaired_config_fn(student, cfg, norm, teacher, tcfg, batches)
    spec = LoopSpec("distill", student, cfg.iters, cfg.lr, device, cfg.amp, batches,
                    unpaired_loss(student, teacher_net, gamma, cfg.real_weight, batches),
                    cfg.checkpoint_every, out, config_fn, should_stop,
                    **preview_runner(preview, student, config_fn, device, amp=cfg.amp,
                                     channels_last=cfg.channels_last), **gpu_options(cfg, device),
                    prefetch=0)  # the batches record the step whose synthetic noise the loss draws: in order
    return (yield from iter_training_run(spec, out, config_fn, resume=resume))


def distill_dbsn(data: Any, teacher: str | Path, axes: str | None = None, *, clean: Any = None,
                 clean_axes: str | None = None, config: UnpairedConfig | None = None,
                 out_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
                 callback: Callable[[Any], None] | None = None) -> TrainResult:
    """Blocking :func:`iter_distill_dbsn`."""
    return drain(iter_distill_dbsn(data, teacher, axes, clean=clean, clean_axes=clean_axes, config=config,
                                   out_dir=out_dir, resume=resume, overwrite=overwrite), callback)
