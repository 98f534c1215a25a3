"""napari-atbsn against the denoisers users already have, side by side, on the same data and budget.

Methods (each runs in its own process, so wall time and peak memory are its own):

* ``bm3d-sigma``: BM3D (the ``bm3d`` package) with a white-noise level estimated blind
  (wavelet MAD, ``skimage.restoration.estimate_sigma``);
* ``bm3d-psd``: BM3D given the correlated-noise power spectrum estimated from the data
  (the autocovariance that ``atbsn analyze`` measures, as a PSD);
* ``n2v`` and ``structn2v``: CAREamics 0.3.5 Noise2Void and structN2V (cross mask, span 5),
  CAREamics' own defaults otherwise (UNet depth 2, Adam, ReduceLROnPlateau);
* ``n2v3d``: CAREamics Noise2Void in 3-D on a Z stack (patches 16x64x64, batch 8): the peer that
  also reads the neighbouring planes (issue 18); on data without Z it is skipped;
* ``atbsn``: one AT-BSN teacher (k_a 9), scored at k_b 0, 1, 3, 5, 7, 9, 11 from one pass,
  and the teacher ensemble: the mean over Ks {0, 1, 3, 5, 7, 9, 11} (method.md Table 2);
* ``atbsn-auto``: what a user gets by default: a teacher with the k_a that ``atbsn analyze``
  recommends (1 where it recommends D-BSN, as the README advises for pixel-independent noise),
  its default output (k_b=auto: chosen from the data, blended with the input) with the gain it
  estimates, and the k_b sweep of the same teacher;
* ``students``: the distilled students A and C (default: blended targets) of a teacher with the
  recommended k_a; to keep the budget equal, each student's budget is split: a teacher trained for
  half of it (shared by A and C), then distillation for half;
* ``dbsn``: D-BSN (Poisson-Gaussian noise model), Bayes-fused output;
* ``atbsn-context``: ``atbsn-auto`` with stack context (issue 18): the same teacher given the
  neighbouring planes along Z (``--context auto``: as many as the stack allows, up to 2 on each side,
  where their noise is measured independent), default output (k_b=auto, blended). The scored planes
  are denoised with their real neighbours (the stack is cut just past the last scored plane); on
  stacks without Z/T (PolyU, W2S) it is ``atbsn-auto`` again.

Equal budget: every trained method gets ``--budget`` seconds of training wall time. CAREamics
stops through Lightning's ``max_time``. napari-atbsn's runs are cosine-annealed over a fixed
number of steps, so a short timed calibration run measures the step rate and the steps are set
to fill what is left of the budget (the calibration counts against it). BM3D has no training:
its time is denoising only.

Metric convention (as ``real_data.py``): float outputs, no clipping or rounding; data range 255
for the 8-bit datasets and clean max - min for the synthetic sample; PSNR over all pixels and
channels at once; SSIM with an 11x11 Gaussian window (sigma 1.5) per plane and channel, averaged.
Training uses the noisy images only; the clean references are used only for scoring.

    bash benchmarks/setup.sh          # .venv-bench with the `bench` extra (CAREamics, bm3d, matplotlib)
    .venv-bench/bin/python benchmarks/compare.py --dataset polyu --budget 180
    .venv-bench/bin/python benchmarks/compare.py --report     # tables + figures from all results

Results go to ``benchmarks/results/compare/<dataset>_b<budget>/`` (one .npz and .json per method);
``--report`` writes the markdown tables, the side-by-side crop figure and the PSNR-against-k_b plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import load  # the datasets and their conventions

RESULTS = Path(__file__).resolve().parent / "results" / "compare"
DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "images"
METHODS = ("bm3d-sigma", "bm3d-psd", "n2v", "structn2v", "n2v3d", "atbsn", "atbsn-auto", "students", "dbsn",
           "atbsn-context")
KB_SWEEP = (0, 1, 3, 5, 7, 9, 11)
TABLE_KBS = (0, 1, 3, 5, 9)
ENSEMBLE_KS = (0, 1, 3, 5, 7, 9, 11)
EVAL_PLANES = 4  # FMD frames scored against the 50-frame average


# ----------------------------------------------------------------------------------------------- data

def dataset(name: str) -> tuple[np.ndarray, str, np.ndarray, np.ndarray, float]:
    """(training data, axes, evaluation noisy, evaluation clean, data range)."""
    noisy, clean, axes, drange = load(name, 4)
    sel = slice(0, EVAL_PLANES) if name == "fmd" else slice(None)
    return noisy, axes, noisy[sel], np.asarray(clean[sel], dtype=np.float32), drange


def planes_of(img: np.ndarray, axes: str) -> list[np.ndarray]:
    """(Y, X) or (Y, X, C) planes of a stack with leading S/Z."""
    return [img[i] for i in range(img.shape[0])] if axes[0] in "SZ" else [img]


# -------------------------------------------------------------------------------------------- methods

class Budget:
    """Training wall time spent against a budget (seconds)."""

    def __init__(self, seconds: float):
        self.seconds, self.t0 = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def spent(self) -> float:
        return time.perf_counter() - self.t0


def steps_for(make_gen: Any, budget: Budget, calib_steps: int = 12) -> tuple[int, float]:
    """Run ``calib_steps`` steps of a training generator (made by ``make_gen(iters)``), time the steps after
    the first two (warm-up), and return how many steps fit in what is left of the budget, and the rate."""
    from napari_atbsn.events import StepEvent

    gen = make_gen(10**7)
    times = []
    for ev in gen:
        if isinstance(ev, StepEvent):
            times.append(time.perf_counter())
            if len(times) >= calib_steps:
                break
    gen.close()
    rate = (len(times) - 3) / (times[-1] - times[2])
    return max(10, int(budget.left() * rate * 0.97)), rate


def recommended_k_a(noisy: np.ndarray, axes: str) -> int:
    """The k_a ``atbsn analyze`` recommends for the data; 1 where it recommends D-BSN (pixel-independent
    noise: the README's advice for AT-BSN there)."""
    from napari_atbsn.analysis import analyze_noise

    rec = analyze_noise(noisy, axes).recommendation()
    return int(rec["k_a"]) if rec["method"] == "atbsn" else 1


def run_atbsn_teacher(noisy: np.ndarray, axes: str, args: Any, seconds: float, out: Path,
                      k_a: int = 9, context: int | str = 0) -> tuple[Any, dict]:
    from napari_atbsn.config import TrainConfig
    from napari_atbsn.events import drain
    from napari_atbsn.training import iter_train

    budget = Budget(seconds)

    def cfg(iters: int) -> TrainConfig:
        return TrainConfig(preset=args.preset, k_a=k_a, iters=iters, patch=args.patch, batch=args.batch,
                           device=args.device, checkpoint_every=0, context=context)

    iters, rate = steps_for(lambda n: iter_train(noisy, axes, cfg(n)), budget)
    # A hard stop at the budget if the machine runs slower than calibrated (the run then ends late in its
    # cosine schedule, at a small learning rate); the steps done are reported.
    res = drain(iter_train(noisy, axes, cfg(iters), out, overwrite=True, should_stop=lambda: budget.left() <= 0))
    return res.model, {"steps": res.steps, "planned_steps": iters, "train_s": budget.spent(), "calibrated_it_s": rate,
                       "k_a": k_a, "context": res.model.context}


def run_atbsn(noisy, axes, ev_noisy, args, work: Path) -> tuple[dict, dict]:
    from napari_atbsn.events import drain
    from napari_atbsn.inference.inmemory import iter_denoise_outputs

    model, info = run_atbsn_teacher(noisy, axes, args, args.budget, work / "teacher")
    t0 = time.perf_counter()
    outs = drain(iter_denoise_outputs(model, ev_noisy, axes, ks=list(KB_SWEEP), batch_size=8, dtype="float32"))
    t_inf = time.perf_counter() - t0
    sweep = dict(zip(KB_SWEEP, outs, strict=True))
    results = {f"AT-BSN k_b={kb}": sweep[kb] for kb in KB_SWEEP}
    results["AT-BSN teacher ensemble (mean over Ks 0-11)"] = np.mean([sweep[k] for k in ENSEMBLE_KS], axis=0)
    info |= {"infer_s": t_inf, "infer_note": f"all {len(KB_SWEEP)} k_b from one backbone pass"}
    return results, {name: info for name in results}


def run_atbsn_auto(noisy, axes, ev_noisy, args, work: Path) -> tuple[dict, dict]:
    from napari_atbsn.events import drain
    from napari_atbsn.inference.inmemory import iter_denoise_outputs

    k_a = recommended_k_a(noisy, axes)
    model, info = run_atbsn_teacher(noisy, axes, args, args.budget, work / "teacher", k_a=k_a)
    t0 = time.perf_counter()
    outs = drain(iter_denoise_outputs(model, ev_noisy, axes, ks=["auto"], batch_size=8, dtype="float32"))
    cal = outs.calibration
    results = {f"AT-BSN default: auto k_b={cal.k_b}, blended (k_a={k_a})": outs[0]}
    infos = {name: {**info, "infer_s": time.perf_counter() - t0, "estimated_gain_db": cal.gain_db,
                    "quality": cal.to_record()} for name in results}
    t0 = time.perf_counter()
    sweep = drain(iter_denoise_outputs(model, ev_noisy, axes, ks=list(KB_SWEEP), batch_size=8, dtype="float32"))
    t_sweep = time.perf_counter() - t0
    for kb, out in zip(KB_SWEEP, sweep, strict=True):
        results[f"AT-BSN k_a={k_a} k_b={kb}"] = out
        infos[f"AT-BSN k_a={k_a} k_b={kb}"] = {**info, "estimated_gain_db": cal.gain_of(kb), "infer_s": t_sweep,
                                               "infer_note": f"all {len(KB_SWEEP)} k_b from one backbone pass"}
    return results, infos


def run_atbsn_context(noisy, axes, ev_noisy, args, work: Path) -> tuple[dict, dict]:
    from napari_atbsn.events import drain
    from napari_atbsn.inference.inmemory import iter_denoise_outputs

    k_a = recommended_k_a(noisy, axes)
    context = args.context if args.context == "auto" else int(args.context)
    model, info = run_atbsn_teacher(noisy, axes, args, args.budget, work / "teacher", k_a=k_a, context=context)
    n = model.context
    # the scored planes lead the stack: denoise them with their real neighbours, which follow them
    stack = noisy[:max(len(ev_noisy) + n, 2 * n + 1)] if n and axes[0] in "ZT" else ev_noisy
    t0 = time.perf_counter()
    outs = drain(iter_denoise_outputs(model, stack, axes, ks=["auto", 3], batch_size=8, dtype="float32"))
    cal = outs.calibration
    name = f"AT-BSN stack context {n}: auto k_b={cal.k_b}, blended (k_a={k_a})"
    results = {name: outs[0][:len(ev_noisy)], f"AT-BSN stack context {n}: k_a={k_a} k_b=3": outs[1][:len(ev_noisy)]}
    infos = {key: {**info, "infer_s": time.perf_counter() - t0, "estimated_gain_db": cal.gain_db if key == name
                   else cal.gain_of(3), "quality": cal.to_record(),
                   "context_choice": model.config.get("context_choice")} for key in results}
    return results, infos


def run_students(noisy, axes, ev_noisy, args, work: Path) -> tuple[dict, dict]:
    from napari_atbsn.config import DistillConfig
    from napari_atbsn.events import drain
    from napari_atbsn.inference.denoiser import load_model
    from napari_atbsn.inference.inmemory import iter_denoise_outputs
    from napari_atbsn.inference.output_kinds import resolve_ks
    from napari_atbsn.inference.quality import calibrate
    from napari_atbsn.training import iter_distill

    half = args.budget / 2
    teacher, tinfo = run_atbsn_teacher(noisy, axes, args, half, work / "half_teacher", k_a=recommended_k_a(noisy, axes))
    teacher_dir = teacher.path  # the model folder, or its checkpoint when the budget stopped it
    # The teacher's default output on the data, which distillation blends with: decided once (teacher passes
    # over a sample, like the calibration of `atbsn denoise`, whose time is denoising time here too) and
    # reported as calibration_s, not charged to the training budget.
    t0 = time.perf_counter()
    cal = calibrate(load_model(teacher_dir, device=args.device), noisy, axes)
    t_cal = time.perf_counter() - t0
    results, infos = {}, {}
    for student in ("A", "C"):
        budget = Budget(half)

        def cfg(iters: int, student: str = student) -> DistillConfig:
            return DistillConfig(student=student, iters=iters, batch=args.batch, device=args.device,
                                 checkpoint_every=0)

        iters, rate = steps_for(lambda n, cfg=cfg: iter_distill(noisy, teacher_dir, axes, cfg(n), calibration=cal),
                                budget)
        res = drain(iter_distill(noisy, teacher_dir, axes, cfg(iters), work / f"student_{student}", overwrite=True,
                                 should_stop=lambda budget=budget: budget.left() <= 0, calibration=cal))
        t_distill = budget.spent()
        t0 = time.perf_counter()
        name = f"student {student} (distilled, blended targets, k_a={tinfo['k_a']})"
        outs = drain(iter_denoise_outputs(res.model, ev_noisy, axes, ks=resolve_ks(res.model, None), batch_size=8))
        results[name] = outs[0]
        est = outs.calibration.gain_db if outs.calibration is not None else None  # what `atbsn denoise` reports
        infos[name] = {"estimated_gain_db": est, "calibration_s": t_cal,
                       "train_s": tinfo["train_s"] + t_distill, "steps": res.steps, "teacher_steps": tinfo["steps"],
                       "teacher_s": tinfo["train_s"], "distill_s": t_distill, "calibrated_it_s": rate,
                       "infer_s": time.perf_counter() - t0}
    return results, infos


def run_dbsn(noisy, axes, ev_noisy, args, work: Path) -> tuple[dict, dict]:
    from napari_atbsn.config import BLIND_ESTIMATE, DBSNConfig
    from napari_atbsn.events import StepEvent, drain
    from napari_atbsn.inference.inmemory import iter_denoise_outputs
    from napari_atbsn.sampling import plane_source
    from napari_atbsn.training import iter_train_dbsn, train_dbsn
    from napari_atbsn.training.monitor import MONITOR_TIMES, QualityMonitor, measure_noise

    budget = Budget(args.budget)

    def cfg(iters: int, monitor: bool = True) -> DBSNConfig:
        return DBSNConfig(preset=args.preset, noise_model="poisson-gaussian", iters=iters, patch=args.patch,
                          batch=args.batch, device=args.device, checkpoint_every=0, monitor=monitor)

    # The three phases run at different rates (the sigma phase has no backbone gradient) and the run cannot
    # stop early (the later phases make the model), so the calibration is a whole short run of all three. The
    # run's own quality estimates (a noise measurement, then two estimates a phase) cost a fixed time, timed
    # on the calibration's model and kept out of the steps' share of the budget.
    n_cal = 30
    stamps: list[float] = []  # the steps' own times: the run's set-up (normalisation, data record) is paid once
    cal_run = drain(iter_train_dbsn(noisy, axes, cfg(n_cal, monitor=False)),
                    lambda e: stamps.append(time.perf_counter()) if isinstance(e, StepEvent) else None)
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    t0 = time.perf_counter()
    source = plane_source(noisy, axes)
    noise = measure_noise(source)
    t_monitor = time.perf_counter() - t0
    if noise is not None:
        t0 = time.perf_counter()
        QualityMonitor.for_source(source, noise).estimate(cal_run.model, "dbsn-joint", n_cal)
        t_monitor += 3 * MONITOR_TIMES * (time.perf_counter() - t0)
    iters = max(30, int((budget.left() - t_monitor) * rate * 0.97))
    res = train_dbsn(noisy, axes, cfg(iters), work / "dbsn", overwrite=True)
    info = {"steps": iters, "train_s": budget.spent(), "calibrated_it_s": rate}
    t0 = time.perf_counter()
    outs = drain(iter_denoise_outputs(res.model, ev_noisy, axes, ks=["auto", None, BLIND_ESTIMATE], batch_size=8,
                                      dtype="float32"))
    info["infer_s"] = time.perf_counter() - t0
    cal = outs.calibration
    quality = res.model.config.get("quality", {})
    names = [f"D-BSN default ({cal.method.split(',')[0].replace('D-BSN ', '')})", "D-BSN Bayes fusion",
             "D-BSN mu alone"]
    ests = [cal.gain_db, cal.gain_of(None), cal.gain_of(BLIND_ESTIMATE)]
    results = dict(zip(names, outs, strict=True))
    infos = {n: {**info, "estimated_gain_db": e, "quality": cal.to_record() if i == 0 else None,
                 "training_report": quality.get("line") if i == 0 else None}
             for i, (n, e) in enumerate(zip(names, ests, strict=True))}
    return results, infos


def careamics_axes(axes: str) -> str:
    return axes.replace("Z", "S")  # N2V here is 2-D: the planes of a stack are samples


def run_careamics(noisy, axes, ev_noisy, args, work: Path, struct: bool, three_d: bool = False
                  ) -> tuple[dict, dict]:
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config

    if three_d and not axes.startswith("Z"):
        return {}, {}
    cax = axes if three_d else careamics_axes(axes)
    channels = noisy.shape[-1] if "C" in axes else None
    h, m = divmod(int(args.budget), 3600)
    trainer = {"max_time": f"00:{h:02d}:{m // 60:02d}:{m % 60:02d}", "accelerator": "auto",
               "enable_progress_bar": False}
    exp = "n2v3d" if three_d else "structn2v" if struct else "n2v"
    cfg = create_advanced_n2v_config(
        experiment_name=exp, data_type="array", axes=cax, patch_size=[16, 64, 64] if three_d else [64, 64],
        batch_size=8 if three_d else 32, num_epochs=100_000, num_steps=50, n_channels=channels,
        struct_n2v_axes="cross" if struct else "none", struct_n2v_span=5,
        augmentations=[] if struct else None, num_workers=0, trainer_params=trainer, seed=1)
    cam = CAREamist(cfg, work_dir=work / exp, enable_progress_bar=False)
    t0 = time.perf_counter()
    cam.train(train_data=noisy.astype(np.float32))
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    if three_d:  # the whole stack, so the scored planes have their neighbours; then the scored planes
        pred, _ = cam.predict(noisy.astype(np.float32), axes=cax, tile_size=(16, 256, 256),
                              tile_overlap=(8, 48, 48), batch_size=1)
        pred = [np.asarray(pred[0])[:len(ev_noisy)]] if len(pred) == 1 else pred
    else:
        pred, _ = cam.predict(ev_noisy.astype(np.float32), axes=cax, tile_size=(256, 256), tile_overlap=(48, 48),
                              batch_size=4)
    # CAREamics 0.3.5 returns one array for an array input, in the input's axis order (checked: S Y X C)
    out = np.asarray(pred[0], dtype=np.float32)
    if len(pred) != 1 or out.shape != ev_noisy.shape:
        raise RuntimeError(f"unexpected CAREamics prediction: {len(pred)} arrays, first {out.shape}; expected one "
                           f"{ev_noisy.shape}")
    name = ("Noise2Void 3-D (CAREamics)" if three_d else "structN2V (CAREamics, cross mask)" if struct
            else "Noise2Void (CAREamics)")
    steps = int(cam.trainer.global_step)
    return {name: out}, {name: {"train_s": t_train, "steps": steps, "infer_s": time.perf_counter() - t0}}


def psd_from_analysis(plane_noisy: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The noise PSD on the image grid, in bm3d's convention (E|FFT2(noise)|^2), from the autocovariance
    napari-atbsn measures (residuals in flat blocks, deconvolved; ``analysis.analyze_noise``)."""
    from napari_atbsn.analysis import analyze_noise

    ax = "YXC" if plane_noisy.ndim == 3 else "YX"
    a = analyze_noise(plane_noisy, ax)
    acov = a.autocorrelation_2d * a.noise_std ** 2
    lag = acov.shape[0] // 2
    grid = np.zeros(shape, dtype=np.float64)
    for dy in range(-lag, lag + 1):
        for dx in range(-lag, lag + 1):
            grid[dy % shape[0], dx % shape[1]] = acov[dy + lag, dx + lag]
    psd = np.real(np.fft.fft2(grid)) * shape[0] * shape[1]
    # a truncated autocovariance can dip below zero at some frequencies; a PSD cannot
    return np.maximum(psd, 1e-3 * psd.max()).astype(np.float32), float(a.noise_std)


def run_bm3d(noisy, axes, ev_noisy, args, work: Path, psd: bool) -> tuple[dict, dict]:
    import bm3d
    from skimage.restoration import estimate_sigma

    t0 = time.perf_counter()
    outs, sigmas = [], []
    rgb = "C" in axes
    for plane in planes_of(ev_noisy, axes):
        z = plane.astype(np.float32)
        if psd:
            p, sigma = psd_from_analysis(z, z.shape[:2])
            arg = np.stack([p] * 3, axis=-1) if rgb else p
        else:
            sigma = float(np.mean(estimate_sigma(z, channel_axis=-1 if rgb else None)))
            arg = sigma
        sigmas.append(sigma)
        outs.append(bm3d.bm3d_rgb(z, arg) if rgb else bm3d.bm3d(z, arg))
    name = "BM3D (correlated-noise PSD from the data)" if psd else "BM3D (blind white-noise sigma)"
    out = np.stack(outs).astype(np.float32).reshape(ev_noisy.shape)
    return {name: out}, {name: {"train_s": 0.0, "infer_s": time.perf_counter() - t0,
                                "sigma_est": float(np.mean(sigmas))}}


def worker(args: Any) -> None:
    """One method in this process: train within the budget, denoise, save outputs and timings."""
    import torch

    noisy, axes, ev_noisy, _, _ = dataset(args.dataset)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    fn = {"bm3d-sigma": lambda: run_bm3d(noisy, axes, ev_noisy, args, work, psd=False),
          "bm3d-psd": lambda: run_bm3d(noisy, axes, ev_noisy, args, work, psd=True),
          "n2v": lambda: run_careamics(noisy, axes, ev_noisy, args, work, struct=False),
          "structn2v": lambda: run_careamics(noisy, axes, ev_noisy, args, work, struct=True),
          "n2v3d": lambda: run_careamics(noisy, axes, ev_noisy, args, work, struct=False, three_d=True),
          "atbsn": lambda: run_atbsn(noisy, axes, ev_noisy, args, work),
          "atbsn-auto": lambda: run_atbsn_auto(noisy, axes, ev_noisy, args, work),
          "students": lambda: run_students(noisy, axes, ev_noisy, args, work),
          "dbsn": lambda: run_dbsn(noisy, axes, ev_noisy, args, work),
          "atbsn-context": lambda: run_atbsn_context(noisy, axes, ev_noisy, args, work)}[args.worker]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    results, infos = fn()
    gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    for info in infos.values():
        info["peak_gpu_gib"] = gpu
    np.savez(work / f"{args.worker}.npz", **{f"m{i}": v for i, v in enumerate(results.values())})
    (work / f"{args.worker}.json").write_text(json.dumps({"names": list(results), "info": infos}, indent=1))


# ------------------------------------------------------------------------------------------- driver

def run_method(method: str, args: Any, work: Path) -> dict[str, Any]:
    """Run one worker process and measure its peak resident memory (the kernel's own account)."""
    cmd = [sys.executable, __file__, "--worker", method, "--dataset", args.dataset, "--budget", str(args.budget),
           "--workdir", str(work), "--device", args.device, "--preset", args.preset, "--patch", str(args.patch),
           "--batch", str(args.batch), "--context", str(args.context)]
    t0 = time.perf_counter()
    log = open(work / f"{method}.log", "w")  # noqa: SIM115 - the child writes to it
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (work / f"{method}.log").read_text()[-3000:]
        raise SystemExit(f"{method} failed (exit {proc.returncode}); its log ends:\n{tail}")
    return {"wall_s": wall, "peak_rss_gib": usage.ru_maxrss / 2**20}


def score(results_dir: Path) -> dict[str, Any]:
    """Rows (method, PSNR, SSIM, times, memory) for one dataset's results folder."""
    from napari_atbsn.metrics import psnr, ssim

    meta = json.loads((results_dir / "run.json").read_text())
    _, axes, ev_noisy, ev_clean, drange = dataset(meta["dataset"])
    rows = [{"method": "noisy input", "psnr": psnr(ev_noisy.astype(np.float32), ev_clean, drange),
             "ssim": ssim(ev_noisy.astype(np.float32), ev_clean, drange, axes=axes)}]
    outputs = {"noisy input": ev_noisy.astype(np.float32)}
    for method in METHODS:
        if not (results_dir / f"{method}.json").exists():
            continue
        js = json.loads((results_dir / f"{method}.json").read_text())
        arrays = np.load(results_dir / f"{method}.npz")
        proc = meta["processes"].get(method, {})
        for i, name in enumerate(js["names"]):
            img = arrays[f"m{i}"]
            outputs[name] = img
            rows.append({"method": name, "group": method, "psnr": psnr(img, ev_clean, drange),
                         "ssim": ssim(img, ev_clean, drange, axes=axes), **js["info"][name], **proc})
    return {"meta": meta, "rows": rows, "outputs": outputs, "clean": ev_clean, "axes": axes, "drange": drange}


def markdown_table(sc: dict[str, Any]) -> str:
    lines = ["| method | PSNR (dB) | SSIM | gain: true / estimated (dB) | training (s) | steps | denoise (s) | "
             "peak RSS (GiB) | peak GPU (GiB) |", "|---|---|---|---|---|---|---|---|---|"]
    noisy = sc["rows"][0]["psnr"]
    for r in sc["rows"]:
        if r["method"].startswith("AT-BSN k_b=") and int(r["method"].split("=")[1]) not in TABLE_KBS:
            continue
        gpu = r.get("peak_gpu_gib")
        est = r.get("estimated_gain_db")
        gains = "" if r["method"] == "noisy input" else \
            f"{r['psnr'] - noisy:+.2f} / " + ("–" if est is None else f"{est:+.2f}")
        lines.append(f"| {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {gains} | "
                     + (f"{r['train_s']:.0f} | {r.get('steps', '')} | {r['infer_s']:.1f} | "
                        f"{r['peak_rss_gib']:.2f} | {'' if gpu is None else f'{gpu:.2f}'} |"
                        if "train_s" in r else "| | | | |"))
    return "\n".join(lines)


def display(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((img - lo) / (hi - lo), 0, 1)


def crop_figure(sc: dict[str, Any], path: Path, names: list[str], size: int = 128) -> None:
    """The same crop of the first evaluation image for every method, noisy and clean first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = planes_of(sc["clean"], sc["axes"])[0]
    # the crop with the most structure (clean std over a grid of candidates), so differences show
    best, pos = -1.0, (0, 0)
    for y in range(0, clean.shape[0] - size + 1, size // 2):
        for x in range(0, clean.shape[1] - size + 1, size // 2):
            s = float(clean[y:y + size, x:x + size].std())
            if s > best:
                best, pos = s, (y, x)
    y, x = pos
    lo, hi = np.percentile(clean, [0.5, 99.5])
    panels = [("clean (reference)", clean)] + [(n, planes_of(sc["outputs"][n], sc["axes"])[0]) for n in names]
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axs = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.9))
    psnrs = {r["method"]: r["psnr"] for r in sc["rows"]}
    for ax in axs.ravel():
        ax.axis("off")
    for ax, (name, img) in zip(axs.ravel(), panels):
        ax.imshow(display(img[y:y + size, x:x + size], lo, hi), cmap="gray", interpolation="nearest")
        label = name if name not in psnrs else f"{name}\n{psnrs[name]:.2f} dB"
        ax.set_title(label, fontsize=7)
    fig.suptitle(f"{sc['meta']['dataset']}: crop {size}x{size} at (y={y}, x={x}) of image 1, "
                 f"budget {sc['meta']['budget']:.0f} s per method", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def kb_plot(scores: list[dict[str, Any]], path: Path) -> None:
    """PSNR against k_b for each dataset's teacher (the shape of the paper's Figure 7)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, len(scores), figsize=(3.4 * len(scores), 3.0), squeeze=False)
    for ax, sc in zip(axs[0], scores):
        rows = {r["method"]: r["psnr"] for r in sc["rows"]}
        kbs = [k for k in KB_SWEEP if f"AT-BSN k_b={k}" in rows]
        ax.plot(kbs, [rows[f"AT-BSN k_b={k}"] for k in kbs], "o-", label="teacher (k_a 9) at k_b")
        ax.axhline(rows["noisy input"], color="grey", ls=":", label="noisy input")
        ens = next((v for k, v in rows.items() if k.startswith("AT-BSN teacher ensemble")), None)
        if ens is not None:
            ax.axhline(ens, color="C2", ls="--", label="teacher ensemble")
        st = rows.get("student A (distilled)")
        if st is not None:
            ax.axhline(st, color="C3", ls="-.", label="student A")
        ax.set_xticks(kbs)
        ax.set_xlabel("k_b (inference blind spot)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(sc["meta"]["dataset"], fontsize=9)
        ax.grid(alpha=0.3)
    axs[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FIGURE_METHODS = ["BM3D (blind white-noise sigma)", "BM3D (correlated-noise PSD from the data)",
                  "Noise2Void (CAREamics)", "structN2V (CAREamics, cross mask)", "AT-BSN k_b=1", "AT-BSN k_b=3",
                  "AT-BSN teacher ensemble (mean over Ks 0-11)", "student A (distilled)", "student C (distilled)",
                  "D-BSN Bayes fusion"]


def report(args: Any) -> None:
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    scores = []
    for d in sorted(RESULTS.glob("*_b*")):
        if not (d / "run.json").exists():
            continue
        sc = score(d)
        scores.append(sc)
        m = sc["meta"]
        print(f"\n### {m['dataset']} (budget {m['budget']:.0f} s per method; {m['machine']})\n")
        print(f"`{m['command']}`\n")
        print(markdown_table(sc))
        names = ["noisy input"] + [n for n in FIGURE_METHODS if n in sc["outputs"]]
        fig = DOCS_IMG / f"compare_{m['dataset']}.png"
        crop_figure(sc, fig, names)
        print(f"\n![{m['dataset']} crops]({fig.relative_to(DOCS_IMG.parent)})")
    if scores:
        kb_plot(scores, DOCS_IMG / "compare_psnr_vs_kb.png")
        print("\n![PSNR against k_b](images/compare_psnr_vs_kb.png)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["polyu", "fmd", "sample", "w2s"])
    ap.add_argument("--budget", type=float, default=180, help="training wall-clock seconds per method")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--device", default="auto", help="for napari-atbsn (CAREamics picks its own accelerator)")
    ap.add_argument("--preset", default="small", help="napari-atbsn network size (paper on a GPU)")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", default="auto", help="atbsn-context: neighbouring planes on each side (default auto; "
                    "another value writes to a results folder of its own, <dataset>_b<budget>_ctx<N>)")
    ap.add_argument("--report", action="store_true", help="score every result folder, write figures")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.report:
        return report(args)
    if not args.dataset:
        ap.error("--dataset is required (or --report)")
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    work = RESULTS / (f"{args.dataset}_b{int(args.budget)}" + ("" if args.context == "auto" else f"_ctx{args.context}"))
    work.mkdir(parents=True, exist_ok=True)
    run_json = work / "run.json"
    meta = json.loads(run_json.read_text()) if run_json.exists() else {"processes": {}}
    import torch

    meta |= {"dataset": args.dataset, "budget": args.budget, "preset": args.preset, "patch": args.patch,
             "batch": args.batch, "command": "python " + " ".join(sys.argv),
             "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                        + (torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")}
    for method in methods:
        print(f"[compare] {args.dataset}: {method} ...", flush=True)
        meta["processes"][method] = run_method(method, args, work)
        run_json.write_text(json.dumps(meta, indent=1))
        print(f"[compare]   {meta['processes'][method]['wall_s']:.0f} s, peak RSS "
              f"{meta['processes'][method]['peak_rss_gib']:.2f} GiB", flush=True)
    sc = score(work)
    print()
    print(markdown_table(sc))


if __name__ == "__main__":
    main()
