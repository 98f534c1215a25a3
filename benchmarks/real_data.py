"""PSNR/SSIM on real noise: AT-BSN at several k_b and the distilled student.

Trains on the noisy images only (self-supervised), then scores against the
clean references that come with the data. Datasets (read from
``../shared/data``, never copied):

* ``polyu``: PolyU real camera noise, 512x512 sRGB JPEG, strongly correlated;
* ``fmd``: FMD confocal (BPAE nuclei), 50 noisy frames of one field of view
  as a (50, 512, 512) stack, clean = the 50-frame average; nearly
  pixel-independent noise;
* ``sample``: the package's generated correlated-noise stack.

Metric convention: float images, no clipping or rounding, data range 255 for
the 8-bit datasets (clean max - min for the sample), SSIM with an 11x11
Gaussian window per plane and channel (``napari_atbsn.metrics``).

Example (the command recorded in docs/benchmarks.md)::

    python benchmarks/real_data.py --dataset polyu --iters 1500 --distill-iters 600
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_atbsn.config import DistillConfig, TrainConfig
from napari_atbsn.metrics import psnr, ssim
from napari_atbsn.training import distill, train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KBS = (0, 1, 3, 5, 9)


def load(dataset: str, n_images: int) -> tuple[np.ndarray, np.ndarray, str, float]:
    """(noisy, clean, axes, data_range)."""
    from PIL import Image

    if dataset == "polyu":
        files = sorted((DATA / "polyu_dev").glob("*_real.JPG"))[:n_images]
        if not files:
            raise SystemExit(f"no PolyU images under {DATA / 'polyu_dev'}")
        noisy = np.stack([np.asarray(Image.open(f)) for f in files])
        clean = np.stack([np.asarray(Image.open(str(f).replace("_real", "_mean"))) for f in files])
        return noisy, clean.astype(np.float32), "SYXC", 255.0
    if dataset == "fmd":
        frames = sorted((DATA / "fmd_confocal_dev" / "raw" / "1").glob("*.png"))
        if not frames:
            raise SystemExit(f"no FMD frames under {DATA / 'fmd_confocal_dev'}")
        noisy = np.stack([np.asarray(Image.open(f)) for f in frames])
        gt = np.asarray(Image.open(DATA / "fmd_confocal_dev" / "gt" / "1" / "avg50.png")).astype(np.float32)
        return noisy, np.broadcast_to(gt, noisy.shape), "ZYX", 255.0
    if dataset == "w2s":
        return load_w2s()
    from napari_atbsn.sample_data import make_sample

    noisy, clean = make_sample(planes=8, size=256)
    return noisy, clean, "ZYX", float(clean.max() - clean.min())


def load_w2s() -> tuple[np.ndarray, np.ndarray, str, float]:
    """W2S widefield, fields 001-002, channels 0-2: six 512x512 single-frame images (SYX), heavy noise. The
    reference (400-frame average) is mapped to each noisy image's scale by least squares (a gain and an
    offset): the 8-bit copies were normalised apart (noisy = 0.55-0.94 x reference + offset), against which no
    denoiser can gain more than 2.4 dB (docs/never-worse-research.md)."""
    import tifffile

    root = DATA / "w2s_dev"
    ids = [(f, c) for f in ("001", "002") for c in range(3)]
    if not (root / "avg1").is_dir():
        raise SystemExit(f"no W2S images under {root}")
    noisy = np.stack([tifffile.imread(root / "avg1" / f"input_avg1_{f}_{c}.tif") for f, c in ids])
    ref = np.stack([tifffile.imread(root / "avg400" / f"target_avg400_{f}_{c}.tif") for f, c in ids])
    clean = np.empty(ref.shape, np.float32)
    for i in range(len(ids)):
        x = ref[i].astype(np.float64).ravel()
        gain, offset = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), noisy[i].astype(np.float64).ravel(),
                                       rcond=None)[0]
        clean[i] = (gain * ref[i] + offset).astype(np.float32)
    return noisy, clean, "SYX", 255.0


def teacher_sweep(model, noisy: np.ndarray, axes: str, kbs=KBS) -> dict[int, np.ndarray]:
    """All k_b outputs from one UNet pass per window (ATBSN.teachers via the in-memory pipeline)."""
    from napari_atbsn.events import drain
    from napari_atbsn.inference.inmemory import iter_denoise_outputs

    outs = drain(iter_denoise_outputs(model, noisy, axes, ks=list(kbs), batch_size=8, dtype="float32"))
    return dict(zip(kbs, outs, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["polyu", "fmd", "sample"], required=True)
    ap.add_argument("--n-images", type=int, default=4, help="PolyU images used (train and test)")
    ap.add_argument("--eval-planes", type=int, default=4, help="FMD frames scored against the average")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--k-a", type=int, default=9)
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--distill-iters", type=int, default=600)
    ap.add_argument("--student", default="A")
    ap.add_argument("--ks", default="0,1,3,5,7,9,11", help="teacher blind spots for distillation")
    ap.add_argument("--teacher", default=None, help="reuse this trained teacher folder (skips training)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    noisy, clean, axes, drange = load(args.dataset, args.n_images)
    ks = tuple(int(k) for k in args.ks.split(","))
    tag = f"{args.dataset}_ka{args.k_a}_{args.preset}_p{args.patch}_i{args.iters}"
    out = Path(args.out) / tag
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.teacher:
        from napari_atbsn import load_model

        teacher_dir = Path(args.teacher)
        tr_model = load_model(teacher_dir)
        args.k_a = tr_model.config["k_a"]
    else:
        teacher_dir = out / "teacher"
        # context=0: the 2-D teacher its recorded figures were measured with (auto would read a stack's planes)
        tr_model = train(noisy, axes, TrainConfig(preset=args.preset, k_a=args.k_a, iters=args.iters,
                                                  patch=args.patch, batch=args.batch, lr=args.lr, device="cpu",
                                                  context=0),
                         teacher_dir, overwrite=True).model
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    st = distill(noisy, teacher_dir, axes, DistillConfig(student=args.student, iters=args.distill_iters, ks=ks,
                                                         batch=args.batch, device="cpu"),
                 out / f"student_{args.student}_ks{''.join(map(str, ks))}", overwrite=True)
    t_distill = time.perf_counter() - t0

    sel = slice(0, args.eval_planes) if args.dataset == "fmd" else slice(None)
    ev_noisy, ev_clean = noisy[sel], np.asarray(clean[sel])
    sweep = teacher_sweep(tr_model, ev_noisy, axes)
    results = {"noisy input": ev_noisy.astype(np.float32)}
    results.update({f"AT-BSN k_a={args.k_a} k_b={kb}": v for kb, v in sweep.items()})
    results["teacher mean over k_b 0,1,3,5,9"] = np.mean([sweep[k] for k in KBS], axis=0)
    results[f"student {args.student} (Ks {args.ks})"] = st.model.denoise(ev_noisy, axes)
    rows = []
    for name, img in results.items():
        rows.append((name, psnr(img, ev_clean, drange), ssim(img, ev_clean, drange, axes=axes)))
    trained = f"teacher from {args.teacher}" if args.teacher else \
        f"training {t_train:.0f} s ({args.iters} it, {args.preset}, patch {args.patch}, batch {args.batch})"
    print(f"\n{args.dataset}: {ev_noisy.shape} {axes}; {trained}, distillation {t_distill:.0f} s "
          f"({args.distill_iters} it, student {args.student}); {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads\n")
    print("| method | PSNR (dB) | SSIM |\n|---|---|---|")
    for name, p, s in rows:
        print(f"| {name} | {p:.2f} | {s:.4f} |")
    (out / "results.json").write_text(json.dumps({
        "args": vars(args), "train_seconds": t_train, "distill_seconds": t_distill,
        "rows": [{"method": n, "psnr": p, "ssim": s} for n, p, s in rows]}, indent=2))


if __name__ == "__main__":
    main()
