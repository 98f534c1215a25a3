"""Never worse than the input: self-supervised risk estimates and the blend with the noisy image.

For each dataset a small AT-BSN teacher is trained on the noisy data alone, all k_b outputs
come from one backbone pass, and :mod:`napari_atbsn.risk` estimates, without the clean
image, the noise level, each output's MSE, the risk-optimal blend with the noisy input and
the k_b to use ("auto"). The clean references score all of it: noisy PSNR, each f_k, the
best k_b, the auto k_b, the blends (global and local alpha) and the estimated gain against
the true gain.

Datasets (read from ``../shared/data``, never copied; conventions as ``real_data.py``:
float, no clipping, data range 255 for the 8-bit sets, clean max - min for the sample):

* ``sample``: the generated correlated-noise stack (8 x 256 x 256), and ``sample-light``:
  the same clean volume with its noise scaled down 4x (the light-noise case of the issue);
* ``polyu``: 4 PolyU sRGB images (SYXC), correlated camera noise, light;
* ``fmd``: FMD confocal field 1, the 50 frames as a ZYX stack (training), 4 frames scored;
* ``sidd``: the two 256x256 SIDD sample images (SYXC), heavy correlated sRGB noise, k_a 5;
* ``w2s``: W2S widefield, fields 001-002, channels 0-2: 6 single 512x512 images (SYX),
  heavy independent noise; each image gets its own noise estimate.

Trained teachers and their outputs are cached under ``.bench-cache/`` (git-ignored); the
risk analysis reruns in seconds from the cache.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/never_worse.py --dataset all
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CACHE = ROOT / ".bench-cache"
KS = (0, 1, 3, 5, 7, 9, 11)
DATASETS = ("sample", "sample-light", "polyu", "fmd", "w2s", "sidd")


# ------------------------------------------------------------------------------------------------ data

def load(name: str) -> dict:
    """Training data, axes, the evaluation noisy/clean pair, data range, how to pool the noise estimate."""
    from PIL import Image

    if name in ("sample", "sample-light"):
        from napari_atbsn.sample_data import make_sample

        noisy, clean = make_sample(planes=8, size=256)
        if name == "sample-light":  # same clean volume, noise / 4 (float: no rounding to the 16-bit grid)
            noisy = (clean + (noisy.astype(np.float32) - clean) / 4).astype(np.float32)
        return dict(train=noisy, axes="ZYX", noisy=noisy, clean=clean, drange=float(clean.max() - clean.min()),
                    pool=True)
    if name == "polyu":
        files = sorted((DATA / "polyu_dev").glob("*_real.JPG"))[:4]
        noisy = np.stack([np.asarray(Image.open(f)) for f in files])
        clean = np.stack([np.asarray(Image.open(str(f).replace("_real", "_mean"))) for f in files])
        return dict(train=noisy, axes="SYXC", noisy=noisy, clean=clean.astype(np.float32), drange=255.0, pool=False)
    if name == "fmd":
        frames = sorted((DATA / "fmd_confocal_dev" / "raw" / "1").glob("*.png"))
        noisy = np.stack([np.asarray(Image.open(f)) for f in frames])
        gt = np.asarray(Image.open(DATA / "fmd_confocal_dev" / "gt" / "1" / "avg50.png")).astype(np.float32)
        return dict(train=noisy, axes="ZYX", noisy=noisy[:4], clean=np.broadcast_to(gt, noisy[:4].shape).copy(),
                    drange=255.0, pool=True)
    if name == "w2s":
        import tifffile

        ids = [(f, c) for f in ("001", "002") for c in range(3)]
        noisy = np.stack([tifffile.imread(DATA / "w2s_dev" / "avg1" / f"input_avg1_{f}_{c}.tif") for f, c in ids])
        clean = np.stack([tifffile.imread(DATA / "w2s_dev" / "avg400" / f"target_avg400_{f}_{c}.tif")
                          for f, c in ids])
        return dict(train=noisy, axes="SYX", noisy=noisy, clean=clean.astype(np.float32), drange=255.0, pool=False)
    if name == "sidd":  # the two 256x256 SIDD sample images: heavy sRGB noise, clipped at 0 in dark areas
        noisy = np.stack([np.asarray(Image.open(DATA / "sidd_dev" / f"NOISY_{i}.png")) for i in (6, 9)])
        clean = np.stack([np.asarray(Image.open(DATA / "sidd_dev" / f"GT_{i}.png")) for i in (6, 9)])
        return dict(train=noisy, axes="SYXC", noisy=noisy, clean=clean.astype(np.float32), drange=255.0, pool=False)
    raise SystemExit(f"unknown dataset {name}")


def planes(a: np.ndarray, axes: str) -> np.ndarray:
    """(P, C, H, W) float64 view of an SYX/ZYX/SYXC array."""
    a = np.asarray(a, dtype=np.float64)
    a = np.moveaxis(a, -1, -3) if axes.endswith("C") else a[..., None, :, :]
    return a.reshape(-1, *a.shape[-3:])


# --------------------------------------------------------------------------------------------- teacher

def teacher_outputs(name: str, d: dict, k_a: int, iters: int, patch: int, batch: int) -> dict[int, np.ndarray]:
    """Train (or reuse) the teacher and return its k_b outputs on the evaluation data (cached)."""
    import torch

    from napari_atbsn.config import TrainConfig
    from napari_atbsn.events import drain
    from napari_atbsn.inference.denoiser import load_model
    from napari_atbsn.inference.inmemory import iter_denoise_outputs
    from napari_atbsn.training import train

    torch.set_num_threads(THREADS)
    tag = CACHE / f"{name}_ka{k_a}_i{iters}_p{patch}_b{batch}"
    out_file = tag / "outputs.npz"
    if out_file.exists():
        z = np.load(out_file)
        return {k: z[f"k{k}"] for k in KS}
    teacher = tag / "teacher"
    t0 = time.perf_counter()
    if (teacher / "config.json").exists() or (teacher / "model.safetensors").exists():
        model = load_model(teacher)
    else:
        # context=0: the 2-D teacher its recorded figures were measured with (auto would read a stack's planes)
        model = train(d["train"], d["axes"], TrainConfig(preset="small", k_a=k_a, iters=iters, patch=patch,
                                                         batch=batch, device="cpu", checkpoint_every=0, context=0),
                      teacher, overwrite=True).model
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = drain(iter_denoise_outputs(model, d["noisy"], d["axes"], ks=list(KS), batch_size=8, dtype="float32"))
    t_inf = time.perf_counter() - t0
    np.savez(out_file, **{f"k{k}": o for k, o in zip(KS, outs, strict=True)})
    (tag / "timing.json").write_text(json.dumps({"train_s": t_train, "infer_s": t_inf}))
    return dict(zip(KS, outs, strict=True))


def product_defaults(name: str, d: dict, k_a: int, iters: int, patch: int, batch: int,
                     student_iters: int = 300) -> dict:
    """What the product returns by default on the evaluation data: the teacher's ``auto`` output (calibrated
    by napari_atbsn.inference.quality on the data itself) and student A distilled with blended targets, each
    with the estimated gain the product reports (cached)."""
    import torch

    from napari_atbsn.config import DistillConfig
    from napari_atbsn.events import drain
    from napari_atbsn.inference.denoiser import load_model
    from napari_atbsn.inference.inmemory import iter_denoise_outputs
    from napari_atbsn.training import distill

    torch.set_num_threads(THREADS)
    tag = CACHE / f"{name}_ka{k_a}_i{iters}_p{patch}_b{batch}"
    cache = tag / f"defaults_s{student_iters}.npz"
    folder = tag / f"student_A_{student_iters}"
    if cache.exists():
        z = np.load(cache)
        meta = json.loads(str(z["meta"]))
        if "student_denoise_est" not in meta:  # a cache from before this column: the same student, calibrated
            meta["student_denoise_est"] = student_denoise_estimate(folder, d)
            np.savez(cache, teacher=z["teacher"], student=z["student"], meta=json.dumps(meta))
        return {"teacher": z["teacher"], "student": z["student"], **meta}
    t0 = time.perf_counter()
    outs = drain(iter_denoise_outputs(load_model(tag / "teacher"), d["noisy"], d["axes"], ks=["auto"], batch_size=8))
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    cfg = DistillConfig(student="A", iters=student_iters, batch=batch, device="cpu", checkpoint_every=0)
    student = distill(d["train"], tag / "teacher", d["axes"], cfg, folder, overwrite=True).model
    t_dist = time.perf_counter() - t0
    q = student.config["quality"]
    meta = {"teacher_est": outs.calibration.gain_db, "teacher_k_b": outs.calibration.k_b,
            "student_est": q["student"]["estimated_gain_db"], "student_bound": q["student"]["estimated_gain_bound_db"],
            "student_alpha": q["teacher"]["alpha"], "seconds": {"teacher_default": t_cal, "distill": t_dist},
            "student_denoise_est": student_denoise_estimate(folder, d)}
    s_out = student.denoise(d["noisy"], d["axes"])
    np.savez(cache, teacher=outs[0], student=s_out, meta=json.dumps(meta))
    return {"teacher": outs[0], "student": s_out, **meta}


def student_denoise_estimate(folder: Path, d: dict) -> float | None:
    """The gain ``atbsn denoise`` prints for the student on the evaluation data (its calibration on a sample of
    it, SURE), beside the distillation report's estimate on the held-out rows."""
    from napari_atbsn.events import drain
    from napari_atbsn.inference.denoiser import load_model
    from napari_atbsn.inference.inmemory import iter_denoise_outputs

    outs = drain(iter_denoise_outputs(load_model(folder), d["noisy"], d["axes"], ks=["auto"], batch_size=8))
    return outs.calibration.gain_db


K_A = {"sample": 7, "sample-light": 7, "polyu": 9, "fmd": 1, "w2s": 1, "sidd": 5}  # analysis.recommendation (dbsn -> 1)
ITERS, PATCH, BATCH = 400, 64, 8
STUDENTS = False  # --defaults
THREADS = 1  # --threads


# -------------------------------------------------------------------------------------------- analysis

def psnr(a: np.ndarray, ref: np.ndarray, drange: float) -> float:
    """float, no clipping, over all pixels and channels (real_data.py's convention)."""
    return float(10 * np.log10(drange**2 / np.mean((np.asarray(a, np.float64) - ref) ** 2)))


def rescaled_reference(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The reference mapped to each noisy plane's scale by least squares, so that the "true" noise is
    noise: W2S's 8-bit copies were normalised apart (noisy ≈ 0.55-0.94 x reference + offset); FMD's
    average of 50 frames is not the first frames' expectation (bleaching); PolyU's mean image differs
    by up to 2 % in gain and 4 levels in offset."""
    out = x.copy()
    for p in range(y.shape[0]):
        for c in range(y.shape[1]):
            design = np.stack([x[p, c].ravel(), np.ones(x[p, c].size)], 1)
            s, o = np.linalg.lstsq(design, y[p, c].ravel(), rcond=None)[0]
            out[p, c] = s * x[p, c] + o
    return out


def groups_of(d: dict, n_planes: int) -> list[slice]:
    """Planes that share one noise estimate: the whole stack, or each image on its own."""
    return [slice(None)] if d["pool"] else [slice(i, i + 1) for i in range(n_planes)]


def noise_levels(d: dict, groups: list[slice]) -> list:
    """One NoiseLevel per group, from the noisy data alone (analysis for the correlation)."""
    from napari_atbsn.analysis import analyze_noise
    from napari_atbsn.risk import estimate_noise_level

    out = []
    for g in groups:
        data = d["train"] if d["pool"] else d["noisy"][g]
        a = analyze_noise(data, d["axes"])
        diff = a.method == "plane differences"
        acf = None if diff else a.autocorrelation_2d
        out.append(estimate_noise_level(planes(data, d["axes"]), acf, differences=diff))
    return out


def evaluate(name: str, window: int) -> dict:
    from napari_atbsn import risk as rk

    d = load(name)
    outs = teacher_outputs(name, d, K_A[name], ITERS, PATCH, BATCH)
    y, x = planes(d["noisy"], d["axes"]), planes(d["clean"], d["axes"])
    fk = {k: planes(v, d["axes"]) for k, v in outs.items()}
    groups = groups_of(d, y.shape[0])
    nls = noise_levels(d, groups)
    refs = {"reference": x}
    if name in ("w2s", "fmd", "polyu"):
        refs["rescaled reference"] = rescaled_reference(y, x)
    valid = rk.valid_blind_spots(KS, max(nl.correlation_length for nl in nls))
    # estimated risks summed over groups (each group's pixels weigh by their count)
    est = {k: {"f": 0.0, "global": 0.0, "local": 0.0} for k in valid}
    noise_sum, blends = 0.0, {k: {"global": np.empty_like(y), "local": np.empty_like(y)} for k in valid}
    for g, nl in zip(groups, nls, strict=True):
        yy = y[g]
        w = yy.size / y.size
        noise_sum += w * rk.noise_mse(fk[valid[0]][g], yy, nl)
        for k in valid:
            f = fk[k][g]
            est[k]["f"] += w * rk.risk(f, yy, nl)
            for mode, win in (("global", None), ("local", window)):
                a = rk.blend_weights(f, yy, nl, window=win, safety=rk.BLEND_SAFETY)
                est[k][mode] += w * rk.risk(f, yy, nl, a)
                blends[k][mode][g] = rk.blend(yy, f, a)
    auto = min(valid, key=lambda k: est[k]["global"])  # the default blend's estimated risk
    prod = product_defaults(name, d, K_A[name], ITERS, PATCH, BATCH) if STUDENTS else None
    res = {"name": name, "valid": valid, "auto": auto, "est": est, "noise_est": noise_sum, "product": prod,
           "k_a": K_A[name], "shape": list(d["noisy"].shape), "axes": d["axes"], "scores": {}}
    if name == "fmd":
        res["held_out"] = held_out_reference_gains(d, y, {f"auto blend (k_b {auto})": blends[auto]["global"],
                                                          f"k_b {auto} alone": fk[auto]},
                                                   {f"auto blend (k_b {auto})": est[auto]["global"],
                                                    f"k_b {auto} alone": est[auto]["f"]}, noise_sum)
    for rname, ref in refs.items():
        true_noise = float(np.mean((y - ref) ** 2))
        s = {"noisy": psnr(y, ref, d["drange"]), "noise_true": true_noise,
             "f": {k: psnr(fk[k], ref, d["drange"]) for k in KS},
             "global": {k: psnr(blends[k]["global"], ref, d["drange"]) for k in valid},
             "local": {k: psnr(blends[k]["local"], ref, d["drange"]) for k in valid}}
        if prod is not None:
            s["teacher_default"] = psnr(planes(prod["teacher"], d["axes"]), ref, d["drange"])
            s["student_default"] = psnr(planes(prod["student"], d["axes"]), ref, d["drange"])
        res["scores"][rname] = s
    return res


def held_out_reference_gains(d: dict, y: np.ndarray, outputs: dict[str, np.ndarray], risks: dict[str, float],
                             noise: float) -> list[tuple[str, float, float, float]]:
    """FMD's gains against a reference that shares no noise with the scored frame, corrected for its own noise.

    The shared average of all 50 frames holds 1/50 of each scored frame's noise and the noise of the other 49.
    The mean of the *other* 49 frames, x', is independent of frame i's noise, so for any output f of frame i,
    E (f - x')^2 = E (f - x)^2 + v, with v the variance of x''s own noise, sigma^2 / 49 (measured as
    E (y - x')^2 / 50, since E (y - x')^2 = sigma^2 (1 + 1/49)). Subtracting v from both sides of the PSNR
    ratio gives the gain against the frames' expectation. Rows: (output, estimated, against x', corrected)."""
    frames = planes(d["train"], d["axes"])
    n = len(frames)
    total = frames.sum(axis=0)
    ref = np.stack([(total - frames[i]) / (n - 1) for i in range(len(y))])
    d_y = float(np.mean((y - ref) ** 2))
    v = d_y / n
    rows = []
    for label, out in outputs.items():
        d_f = float(np.mean((out - ref) ** 2))
        rows.append((label, float(10 * np.log10(noise / risks[label])), float(10 * np.log10(d_y / d_f)),
                     float(10 * np.log10((d_y - v) / (d_f - v)))))
    return rows


def held_out_table(results: list[dict]) -> str:
    lines = ["| data set | output | estimated gain | true gain vs the other 49 frames | corrected for their noise |",
             "|---|---|---|---|---|"]
    for r in results:
        for label, est, raw, corrected in r.get("held_out", []):
            lines.append(f"| {r['name']} | {label} | {est:+.2f} | {raw:+.2f} | {corrected:+.2f} |")
    return "\n".join(lines)


def defaults_table(results: list[dict]) -> str:
    """The product's default outputs: the teacher's (auto) and student A's (blended targets), with the gain each
    reports against the true one."""
    lines = ["| data set | ref. | noisy | teacher default (k_b) | est. / true gain | student A | est. (bound) / true "
             "gain | student est. by denoise |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r["product"]
        for rname, s in r["scores"].items():
            lines.append(f"| {r['name']} | {rname} | {s['noisy']:.2f} | {s['teacher_default']:.2f} "
                         f"({p['teacher_k_b']}) | {p['teacher_est']:+.2f} / {s['teacher_default'] - s['noisy']:+.2f} | "
                         f"{s['student_default']:.2f} | {p['student_est']:+.2f} ({p['student_bound']:+.2f}) / "
                         f"{s['student_default'] - s['noisy']:+.2f} | {fmt(p.get('student_denoise_est'))} |")
    return "\n".join(lines)


def fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:+.2f}"


def table(results: list[dict]) -> str:
    lines = []
    head = "| data set | ref. | noisy | " + " | ".join(f"f k_b={k}" for k in KS) + \
        " | best f (k_b) | auto k_b | blend global | best global (k_b) | blend local | est. gain global | true gain" \
        " global | est. gain local | true gain local | σ̂²/σ² |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        for rname, s in r["scores"].items():
            a = r["auto"]
            bf = max(s["f"], key=s["f"].get)
            bg = max(s["global"], key=s["global"].get)
            fcells = [f"{s['f'][k]:.2f}" + ("" if k in r["valid"] else "*") for k in KS]
            est_g = 10 * np.log10(r["noise_est"] / r["est"][a]["global"])
            est_l = 10 * np.log10(r["noise_est"] / r["est"][a]["local"])
            lines.append(f"| {r['name']} (k_a {r['k_a']}) | {rname} | {s['noisy']:.2f} | " + " | ".join(fcells) +
                         f" | {s['f'][bf]:.2f} ({bf}) | {a} | {s['global'][a]:.2f} | {s['global'][bg]:.2f} ({bg}) | "
                         f"{s['local'][a]:.2f} | {est_g:+.2f} | {s['global'][a] - s['noisy']:+.2f} | "
                         f"{est_l:+.2f} | {s['local'][a] - s['noisy']:+.2f} | "
                         f"{r['noise_est'] / s['noise_true']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    global STUDENTS, ITERS, PATCH, THREADS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=[*DATASETS, "all"], default="all")
    ap.add_argument("--window", type=int, default=None, help="local blend window (default: risk.LOCAL_WINDOW)")
    ap.add_argument("--safety", type=float, default=None, help="override risk.BLEND_SAFETY")
    ap.add_argument("--defaults", action="store_true", help="also the product's default outputs: the teacher's "
                    "auto output and student A (300 steps) distilled with blended targets, with their estimates")
    ap.add_argument("--iters", type=int, default=ITERS, help="teacher training steps (a new cache entry)")
    ap.add_argument("--patch", type=int, default=PATCH, help="teacher training patch (a new cache entry)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = ap.parse_args()
    STUDENTS, ITERS, PATCH, THREADS = args.defaults, args.iters, args.patch, args.threads
    from napari_atbsn import risk as rk

    names = DATASETS if args.dataset == "all" else (args.dataset,)
    if args.safety is not None:
        rk.BLEND_SAFETY = args.safety
    t0 = time.perf_counter()
    results = [evaluate(n, args.window or rk.LOCAL_WINDOW) for n in names]
    print(f"\nAT-BSN small, {ITERS} it, patch {PATCH}, batch {BATCH}, CPU ({platform.machine()}); "
          f"blend safety {rk.BLEND_SAFETY}, window {args.window or rk.LOCAL_WINDOW}; analysis "
          f"{time.perf_counter() - t0:.0f} s. * = blind spot shorter than the noise correlation (not ranked)\n")
    print(table(results))
    if any("held_out" in r for r in results):
        print("\nFMD scored against the mean of the other 49 frames (no noise shared with the scored frame), then "
              "corrected for that mean's own noise (sigma^2 / 49):\n")
        print(held_out_table(results))
    if STUDENTS:
        print("\nThe product's defaults (teacher: k_b=auto calibrated on the data; student A, 300 steps, blended "
              "targets; estimates as the product reports them):\n")
        print(defaults_table(results))


if __name__ == "__main__":
    main()
