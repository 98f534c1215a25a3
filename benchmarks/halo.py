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
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from napari_atbsn.events import drain
from napari_atbsn.inference.denoiser import load_model
from napari_atbsn.inference.inmemory import iter_denoise_outputs
from napari_atbsn.metrics import psnr
from never_worse import CACHE, load

SETS = {"sample": ("sample_ka7_i400_p64_b8", 3), "polyu": ("polyu_ka9_i400_p64_b8", 3),
        "fmd": ("fmd_ka1_i400_p64_b8", 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--fractions", default="4,6,8,16", help="halo = window // N for each N")
    args = ap.parse_args()
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
