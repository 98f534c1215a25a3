"""D-BSN forced onto light, spatially correlated camera noise (issue 33, item 9): PolyU dev (4 images, SYXC),
small preset, 300 steps, then the product's default output against its fusion and mu, per image, true gains
against the references rescaled to each noisy image (never_worse.py's convention). `atbsn analyze` recommends
AT-BSN here; the guarantee must hold when a user picks D-BSN anyway.

    PYTHONPATH=src OMP_NUM_THREADS=2 python benchmarks/dbsn_light_camera.py
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import never_worse as nw
from napari_atbsn.config import DBSNConfig
from napari_atbsn.events import drain
from napari_atbsn.inference.denoiser import load_model
from napari_atbsn.inference.inmemory import iter_denoise_outputs
from napari_atbsn.training.dbsn import train_dbsn


def main() -> None:
    d = nw.load("polyu")
    out = Path(".bench-cache") / "dbsn_polyu_small_i300"
    if not (out / "config.json").exists():
        t = time.time()
        train_dbsn(d["noisy"], d["axes"], DBSNConfig(preset="small", iters=300, device="cpu"), out, overwrite=True)
        print("trained", round(time.time() - t), "s")
    m = load_model(out)
    outs = drain(iter_denoise_outputs(m, d["noisy"], d["axes"], ks=["auto", None, "mu"], batch_size=8, dtype="float32"))
    y, x = nw.planes(d["noisy"], d["axes"]), nw.planes(d["clean"], d["axes"])
    x = nw.rescaled_reference(y, x)
    print(outs.calibration.line())
    for name, o in zip(["default", "fusion", "mu"], outs):
        g = nw.planes(o, d["axes"])
        units = [10 * np.log10(np.mean((y[p] - x[p]) ** 2) / np.mean((g[p] - x[p]) ** 2)) for p in range(len(y))]
        tot = 10 * np.log10(np.mean((y - x) ** 2) / np.mean((g - x) ** 2))
        print(f"{name}: total {tot:+.2f} per image " + " ".join(f"{u:+.2f}" for u in units))


if __name__ == "__main__":
    main()
