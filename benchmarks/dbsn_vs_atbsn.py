"""D-BSN against AT-BSN (k_a 1, 3, 9) and the noisy input, on real noise, side by side.

Trains (or reuses) one AT-BSN per k_a and one D-BSN on the noisy data only,
then scores them on the same images against the clean references, with the
metric convention of ``real_data.py``. Also prints what ``atbsn analyze``
recommends for the data, so the table shows whether the recommendation
picks the better method.

    R=benchmarks/results
    python benchmarks/dbsn_vs_atbsn.py --dataset fmd --iters 2000 \\
        --atbsn 1=$R/fmd_ka1_small_p64_i2000/teacher,9=$R/fmd_ka9_small_p64_i2000/teacher

AT-BSN rows report k_b = 1 and 3 (and k_b = k_a, the symmetric case). The
D-BSN rows report the Bayes-fused output (gamma 1 and 0.9) and, to show what
the fusion adds, mu alone (the one-pixel blind-spot estimate).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_atbsn import load_model
from napari_atbsn.analysis import analyze_noise
from napari_atbsn.config import DBSNConfig, TrainConfig
from napari_atbsn.events import drain
from napari_atbsn.inference.inmemory import iter_denoise_outputs
from napari_atbsn.metrics import psnr, ssim
from napari_atbsn.training import train, train_dbsn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import load  # the datasets and their conventions


def dbsn_outputs(model, noisy: np.ndarray, axes: str) -> dict[str, np.ndarray]:
    """Fused (gamma 1 and 0.9) and mu alone, from the same windows."""
    from napari_atbsn.config import BLIND_ESTIMATE

    out = {}
    for gamma in (1.0, 0.9):
        model.config["gamma"] = gamma
        out[f"D-BSN fused (gamma {gamma:g})"] = drain(iter_denoise_outputs(model, noisy, axes, ks=[None], batch_size=8,
                                                                         dtype="float32"))[0]
    model.config["gamma"] = 1.0
    out["D-BSN mu alone (no fusion)"] = drain(iter_denoise_outputs(model, noisy, axes, ks=[BLIND_ESTIMATE],
                                                                 batch_size=8, dtype="float32"))[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["polyu", "fmd", "sample"], required=True)
    ap.add_argument("--n-images", type=int, default=4)
    ap.add_argument("--eval-planes", type=int, default=4)
    ap.add_argument("--iters", type=int, default=2000, help="steps for every model trained here")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--k-a", default="1,3,9", help="AT-BSN training blind spots")
    ap.add_argument("--atbsn", default="", help="reuse trained teachers: K_A=FOLDER,... (others are trained)")
    ap.add_argument("--dbsn", default=None, help="reuse a trained D-BSN folder")
    ap.add_argument("--dbsn-preset", default="small")
    ap.add_argument("--dbsn-iters", type=int, default=None, help="D-BSN steps (default --iters)")
    ap.add_argument("--noise-model", default="poisson-gaussian")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    noisy, clean, axes, drange = load(args.dataset, args.n_images)
    out = Path(args.out) / f"{args.dataset}_dbsn_vs_atbsn_i{args.iters}"
    out.mkdir(parents=True, exist_ok=True)
    analysis = analyze_noise(noisy, axes)
    reuse = dict(item.split("=", 1) for item in args.atbsn.split(",") if item)
    timings: dict[str, float] = {}
    teachers = {}
    for ka in (int(k) for k in args.k_a.split(",")):
        if str(ka) in reuse:
            teachers[ka] = load_model(reuse[str(ka)])
            continue
        t0 = time.perf_counter()
        # context=0: the 2-D teacher its recorded figures were measured with (auto would read a stack's planes)
        teachers[ka] = train(noisy, axes, TrainConfig(preset="small", k_a=ka, iters=args.iters, patch=args.patch,
                                                      batch=args.batch, device="cpu", context=0),
                             out / f"atbsn_ka{ka}", overwrite=True).model
        timings[f"AT-BSN k_a={ka}"] = time.perf_counter() - t0
    if args.dbsn:
        dbsn = load_model(args.dbsn)
    else:
        t0 = time.perf_counter()
        dbsn = train_dbsn(noisy, axes, DBSNConfig(preset=args.dbsn_preset, noise_model=args.noise_model,
                                                  iters=args.dbsn_iters or args.iters, patch=args.patch,
                                                  batch=args.batch,
                                                  device="cpu"), out / "dbsn", overwrite=True).model
        timings["D-BSN"] = time.perf_counter() - t0

    sel = slice(0, args.eval_planes) if args.dataset == "fmd" else slice(None)
    ev_noisy, ev_clean = noisy[sel], np.asarray(clean[sel])
    results = {"noisy input": ev_noisy.astype(np.float32)}
    for ka, model in teachers.items():
        kbs = sorted({1, 3, ka})
        outs = drain(iter_denoise_outputs(model, ev_noisy, axes, ks=kbs, batch_size=8, dtype="float32"))
        for kb, img in zip(kbs, outs, strict=True):
            results[f"AT-BSN k_a={ka} k_b={kb}"] = img
    results.update(dbsn_outputs(dbsn, ev_noisy, axes))
    rows = [(name, psnr(img, ev_clean, drange), ssim(img, ev_clean, drange, axes=axes))
            for name, img in results.items()]
    print(f"\n{args.dataset}: {ev_noisy.shape} {axes}; {args.iters} steps each (patch {args.patch}, batch "
          f"{args.batch}); D-BSN {args.dbsn_preset} {args.noise_model} {args.dbsn_iters or args.iters} steps; "
          f"trained here: "
          + (", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) or "none")
          + f"; {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads\n")
    print(f"analysis: neighbour correlation {analysis.neighbour:.3f} ({analysis.method}); "
          f"{analysis.recommended_line()}\n")
    print("| method | PSNR (dB) | SSIM |\n|---|---|---|")
    for name, p, s in rows:
        print(f"| {name} | {p:.2f} | {s:.4f} |")
    (out / "results.json").write_text(json.dumps({
        "args": vars(args), "timings": timings, "recommended": analysis.recommended_line(),
        "neighbour": analysis.neighbour, "rows": [{"method": n, "psnr": p, "ssim": s} for n, p, s in rows]},
        indent=2))


if __name__ == "__main__":
    main()
