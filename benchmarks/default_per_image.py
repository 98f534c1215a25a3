"""The product's default output (k_b=auto, the blend per image) against the best fixed k_b, per image.

For each data set of ``never_worse.py`` the teacher that script trained and cached (``.bench-cache/``; run it
first with the same ``--iters``) denoises the evaluation data with the product's defaults. The clean
references (least-squares rescaled to each noisy plane where never_worse.py does, and for SIDD, whose
references differ from the noisy images by 3-9 grey levels) score the default, each fixed k_b, and every
separate image (S) or plane on its own; beside them the gain the product prints and its worst image. A
default image below its input, or an estimate above the truth by more than 1 dB, is flagged.

    PYTHONPATH=src OMP_NUM_THREADS=2 python benchmarks/default_per_image.py --dataset all --iters 300
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import never_worse as nw


def psnr(a: np.ndarray, ref: np.ndarray, drange: float) -> float:
    return float(10 * np.log10(drange**2 / np.mean((np.asarray(a, np.float64) - ref) ** 2)))


def evaluate(name: str, iters: int) -> dict | None:
    from napari_atbsn.events import drain
    from napari_atbsn.inference.denoiser import load_model
    from napari_atbsn.inference.inmemory import iter_denoise_outputs

    tag = nw.CACHE / f"{name}_ka{nw.K_A[name]}_i{iters}_p{nw.PATCH}_b{nw.BATCH}"
    if not (tag / "outputs.npz").exists():
        print(f"{name}: no cached teacher at {tag}; run never_worse.py --dataset {name} --iters {iters} first")
        return None
    d = nw.load(name)
    fixed = np.load(tag / "outputs.npz")
    t0 = time.perf_counter()
    outs = drain(iter_denoise_outputs(load_model(tag / "teacher"), d["noisy"], d["axes"], ks=["auto"],
                                      batch_size=8, dtype="float32"))
    seconds = time.perf_counter() - t0
    cal = outs.calibration
    y, x = nw.planes(d["noisy"], d["axes"]), nw.planes(d["clean"], d["axes"])
    if name in ("w2s", "fmd", "polyu", "sidd"):  # references normalised apart from the noisy data (never_worse.py)
        x = nw.rescaled_reference(y, x)
    g = nw.planes(outs[0], d["axes"])
    units = [10 * np.log10(np.mean((y[p] - x[p]) ** 2) / np.mean((g[p] - x[p]) ** 2)) for p in range(len(y))]
    h, w = y.shape[-2:]
    cut = [np.s_[p, :, i:i + 128, j:j + 128] for p in range(len(y)) for i in range(0, h - 127, 128)
           for j in range(0, w - 127, 128)]  # the default's 128-px blocks (block_blend), true gain of each
    blocks = [10 * np.log10(np.mean((y[c] - x[c]) ** 2) / np.mean((g[c] - x[c]) ** 2)) for c in cut]
    noisy = psnr(y, x, d["drange"])
    return {"name": name, "noisy": noisy, "default": psnr(g, x, d["drange"]) - noisy, "est": cal.gain_db,
            "k_b": cal.k_b, "fixed": {k: psnr(nw.planes(fixed[f"k{k}"], d["axes"]), x, d["drange"]) - noisy
                                      for k in (1, 3, 5)},
            "units": units, "worst_block": min(blocks) if blocks else None,
            "worst_est": getattr(cal, "worst_image", None), "seconds": seconds}


def table(rows: list[dict]) -> str:
    out = ["| data set | noisy PSNR | k_b 1 / 3 / 5 (true gain) | default (k_b) true gain | printed estimate | "
           "worst unit, true | worst 128-px block, true | worst image, printed | s |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        est = "–" if r["est"] is None else f"{r['est']:+.2f}"
        flag = "" if r["est"] is None or r["est"] - r["default"] <= 1.0 else " (optimistic)"
        worst = int(np.argmin(r["units"]))
        we = "–" if r["worst_est"] is None else f"{r['worst_est'][1]:+.2f} (S={r['worst_est'][0]})"
        out.append(f"| {r['name']} | {r['noisy']:.2f} | " + " / ".join(f"{v:+.2f}" for v in r["fixed"].values())
                   + f" | {r['default']:+.2f} ({r['k_b']}) | {est}{flag} | {r['units'][worst]:+.2f} (unit {worst})"
                   f"{' BELOW INPUT' if r['units'][worst] < -0.1 else ''} | "
                   + ("–" if r["worst_block"] is None else f"{r['worst_block']:+.2f}")
                   + f" | {we} | {r['seconds']:.0f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=[*nw.DATASETS, "all"], default="all")
    ap.add_argument("--iters", type=int, default=nw.ITERS, help="the cached teachers' training steps")
    args = ap.parse_args()
    names = nw.DATASETS if args.dataset == "all" else (args.dataset,)
    rows = [r for r in (evaluate(n, args.iters) for n in names) if r is not None]
    print(f"\nAT-BSN small teachers of never_worse.py ({args.iters} it), product defaults, CPU "
          f"({platform.machine()}); units are planes (Z) or separate images (S)\n")
    print(table(rows))


if __name__ == "__main__":
    main()
