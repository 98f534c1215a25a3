"""How much halo the windows need: PSNR against the clean reference as the halo shrinks.

Every window keeps its centre and drops a halo on each side (method.md Decision 8): the networks are not
size-invariant, and pixels near a window's border see zero padding where a real neighbourhood should be. The
default halo is a quarter of the window, so the network computes 4x the pixels it delivers; a halo of an
eighth costs (w / (w - w/4))² = 1.78x, a sixteenth 1.31x. This measures what a smaller halo costs in quality,
on the teachers (and students) that ``benchmarks/never_worse.py`` trained and cached in ``.bench-cache/``
(small preset, 400 steps, patch 64: windows of 64), on the same evaluation data:

* the teacher at a fixed k_b (3, or 1 on FMD's pixel-independent noise: no calibration in the way);
* the distilled student A (its plain image), where cached.

Each row also gives the largest difference from the default halo's output, in units of the noise level, which
shows seams before the PSNR does.

    PYTHONPATH=src python benchmarks/halo.py               # the cached sets: sample, polyu, fmd

With ``--train PRESET:STEPS`` it trains a fresh teacher per set instead (patch 128, batch 8, k_a 9; 1 on FMD),
on ``--device``, and runs it in windows of ``--window`` with each halo of ``--halos`` (pixels) against the
whole image in one window (no seams at all): how many *pixels* of halo the paper-size teacher needs, which is
what a larger window keeps while the share of computed pixels falls.

    python benchmarks/halo.py --train paper:1500 --device cuda --sets polyu,fmd --window 256 --halos 64,48,32,16

With ``--windows W1,W2,...`` the cached teacher and student run in each window instead (halo a quarter of the
window for the teacher, an eighth for the student): whether a network trained on 64-pixel patches keeps its
quality in larger windows. (A blind-spot teacher does not, which is why ``atbsn denoise`` refuses a window
larger than a teacher's training patch.)

    PYTHONPATH=src python benchmarks/halo.py --sets sample,polyu --windows 32,48,64,96,128,256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from napari_atbsn.config import TrainConfig
from napari_atbsn.events import drain
from napari_atbsn.inference.denoiser import load_model
from napari_atbsn.inference.inmemory import iter_denoise_outputs
from napari_atbsn.metrics import psnr
from never_worse import CACHE, load

SETS = {"sample": ("sample_ka7_i400_p64_b8", 3), "polyu": ("polyu_ka9_i400_p64_b8", 3),
        "fmd": ("fmd_ka1_i400_p64_b8", 1)}


def fresh(args) -> None:
    """Teachers trained here (``--train``), each at ``--window`` with ``--halos`` against the untiled image."""
    import tempfile
    import time

    from napari_atbsn.training import train

    cached = args.train == "cached"
    preset, steps = ("small", "400") if cached else args.train.split(":")
    print(f"| data | teacher ({preset}, {steps} steps) | window | halo | computed / delivered pixels | PSNR | "
          f"vs untiled (dB) | max abs difference / noise std |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        d = load(name)
        k_b = SETS[name][1]
        noise_std = float(np.std(np.asarray(d["noisy"], np.float64) - d["clean"]))
        with tempfile.TemporaryDirectory() as tmp:
            folder = CACHE / SETS[name][0] / "teacher" if cached else Path(tmp) / "t"
            if not cached:
                t0 = time.perf_counter()
                cfg = TrainConfig(preset=preset, k_a=1 if k_b == 1 else 9, iters=int(steps), patch=128, batch=8,
                                  device=args.device, checkpoint_every=0)
                train(d["train"], d["axes"], cfg, folder)
                print(f"<!-- {name}: trained in {time.perf_counter() - t0:.0f} s -->", flush=True)
            model = load_model(folder, device=args.device, amp=args.device != "cpu")
            side = max(d["noisy"].shape[d["axes"].index("Y")], d["noisy"].shape[d["axes"].index("X")])
            runs = [(side, 0)] + [(args.window, int(h)) for h in args.halos.split(",")]
            ref = None
            for window, halo in runs:
                model.patch, model.halo = window, halo
                (out,) = drain(iter_denoise_outputs(model, d["noisy"], d["axes"], ks=[k_b], batch_size=8))
                p = psnr(out, d["clean"], data_range=d["drange"])
                if ref is None:
                    ref, ref_p = out.astype(np.float64), p
                    print(f"| {name} | k_b {k_b} | {window} (untiled) | - | 1.00 | {p:.2f} | | |", flush=True)
                    continue
                cost = (window / (window - 2 * halo)) ** 2
                diff = float(np.abs(out.astype(np.float64) - ref).max()) / noise_std
                print(f"| {name} | k_b {k_b} | {window} | {halo} | {cost:.2f} | {p:.2f} | {p - ref_p:+.2f} | "
                      f"{diff:.3f} |", flush=True)


def windows(args) -> None:
    """The cached teacher and student in each of ``--windows`` (the first ``--images`` images of each set)."""
    print("| data | network (trained on patch 64) | window | halo | PSNR |")
    print("|---|---|---|---|---|")
    for name in args.sets.split(","):
        tag, k_b = SETS[name]
        d = load(name)
        noisy, clean = d["noisy"][:args.images], d["clean"][:args.images]
        nets = [(f"teacher, k_b {k_b}", CACHE / tag / "teacher", [k_b], 4)]
        if (CACHE / tag / "student_A_300").exists():
            nets.append(("student A", CACHE / tag / "student_A_300", [None], 8))
        for label, path, ks, fraction in nets:
            model = load_model(path)
            for w in (int(v) for v in args.windows.split(",")):
                model.patch, model.halo = w, w // fraction
                (out,) = drain(iter_denoise_outputs(model, noisy, d["axes"], ks=ks, batch_size=4))
                print(f"| {name} | {label} | {w} | {model.halo} | "
                      f"{psnr(out, clean, data_range=d['drange']):.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--fractions", default="4,6,8,16", help="halo = window // N for each N")
    ap.add_argument("--train", default=None, help="PRESET:STEPS: train fresh teachers, each run at --window with "
                    "--halos against the untiled image; 'cached': the same with the cached teachers")
    ap.add_argument("--device", default="cpu", help="with --train")
    ap.add_argument("--window", type=int, default=256, help="with --train: the window")
    ap.add_argument("--halos", default="64,48,32,16", help="with --train: halos in pixels")
    ap.add_argument("--windows", default=None, help="run the cached networks in each of these windows instead")
    ap.add_argument("--images", type=int, default=1, help="with --windows: how many images of each set to score")
    args = ap.parse_args()
    if args.windows:
        windows(args)
        return
    if args.train:
        fresh(args)
        return
    print("| data | network | halo (window 64) | computed / delivered pixels | PSNR | vs default halo (dB) | "
          "max abs difference / noise std |")
    print("|---|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        tag, k_b = SETS[name]
        d = load(name)
        noise_std = float(np.std(np.asarray(d["noisy"], np.float64) - d["clean"]))
        nets = [(f"teacher, k_b {k_b}", CACHE / tag / "teacher", [k_b])]
        if (CACHE / tag / "student_A_300").exists():
            nets.append(("student A", CACHE / tag / "student_A_300", [None]))
        for label, path, ks in nets:
            model = load_model(path)
            w = model.patch
            ref = None
            for n in (int(v) for v in args.fractions.split(",")):
                model.halo = w // n
                (out,) = drain(iter_denoise_outputs(model, d["noisy"], d["axes"], ks=ks, batch_size=8))
                p = psnr(out, d["clean"], data_range=d["drange"])
                if ref is None:
                    ref, ref_p = out, p
                cost = (w / (w - 2 * model.halo)) ** 2
                diff = float(np.abs(out.astype(np.float64) - ref).max()) / noise_std
                print(f"| {name} | {label} | {model.halo} (w/{n}) | {cost:.2f} | {p:.2f} | {p - ref_p:+.2f} | "
                      f"{diff:.3f} |", flush=True)


if __name__ == "__main__":
    main()
