"""What context dropout costs a stack-context teacher, and what its 2-D mode gives (issue 18).

A stack-context teacher is trained for a fixed number of steps (not a time budget: the machine may be shared,
and the step count of the earlier ``compare.py`` run, 473 on the sample, is what makes the rows comparable), with
the recommended k_a, as ``compare.py``'s ``atbsn-context`` does. It is scored twice on the same planes:

* context mode: the stack, each plane read with its real neighbours (as ``atbsn-context`` scores it);
* 2-D mode: each plane alone (the planes as independent samples, ``SYX``), the neighbours given as zeros.

``--baseline`` adds a model folder trained before context dropout (``compare.py --methods atbsn-context``'s
teacher): its context mode is the reference the dropout's cost is read against, and its 2-D mode (forced: such a
folder refuses it) shows what dropout is for. Outputs: the default (k_b=auto, blended) and k_b=3, scored as
``compare.py`` scores (PSNR and SSIM against the clean reference, float outputs, data range clean max - min).

    python benchmarks/context_dropout.py --dataset sample --steps 473 \
        --baseline benchmarks/results/compare/sample_b180/teacher

Results: ``benchmarks/results/context_dropout/<dataset>_s<steps>.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import dataset, recommended_k_a  # the data and the k_a of compare.py's atbsn-context

RESULTS = Path(__file__).resolve().parent / "results" / "context_dropout"


def score(model: Any, noisy: np.ndarray, clean: np.ndarray, drange: float, axes: str) -> list[dict[str, Any]]:
    """The default output and k_b=3 of ``model`` on ``noisy`` read with ``axes`` (ZYX: with the neighbours; SYX:
    each plane alone), scored against ``clean``."""
    from napari_atbsn.events import drain
    from napari_atbsn.inference.inmemory import iter_denoise_outputs
    from napari_atbsn.metrics import psnr, ssim

    t0 = time.perf_counter()
    outs = drain(iter_denoise_outputs(model, noisy, axes, ks=["auto", 3], batch_size=8, dtype="float32"))
    cal = outs.calibration
    rows = []
    for name, img, est in ((f"default (auto k_b={cal.k_b}, blended)", outs[0], cal.gain_db),
                           ("k_b=3", outs[1], cal.gain_of(3))):
        rows.append({"output": name, "psnr": psnr(img, clean, drange), "ssim": ssim(img, clean, drange, axes="ZYX"),
                     "estimated_gain_db": est, "context_unused": outs.context_unused,
                     "infer_s": time.perf_counter() - t0})
    return rows


def train_context(noisy: np.ndarray, axes: str, args: Any, k_a: int, out: Path) -> Any:
    from napari_atbsn.config import TrainConfig
    from napari_atbsn.training import train

    cfg = TrainConfig(preset=args.preset, k_a=k_a, iters=args.steps, patch=args.patch, batch=args.batch,
                      device=args.device, checkpoint_every=0, context=args.context)
    t0 = time.perf_counter()
    res = train(noisy, axes, cfg, out, overwrite=True)
    print(f"trained {res.steps} steps in {time.perf_counter() - t0:.0f} s: context {res.model.context}, "
          f"context dropout {res.model.config['arch'].get('context_dropout')}", file=sys.stderr)
    return res.model


def main() -> None:
    from napari_atbsn.config import CONTEXT_DROPOUT
    from napari_atbsn.inference.denoiser import load_model
    from napari_atbsn.metrics import psnr

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=["sample", "fmd"], default="sample")
    ap.add_argument("--steps", type=int, default=473, help="training steps (compare.py's atbsn-context at 180 s)")
    ap.add_argument("--context", default="auto", help="neighbouring planes on each side (default auto)")
    ap.add_argument("--baseline", help="a context model folder trained before context dropout, scored alike")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    args.context = args.context if args.context == "auto" else int(args.context)
    noisy, axes, ev_noisy, ev_clean, drange = dataset(args.dataset)
    assert axes == "ZYX" and len(ev_noisy) == len(noisy), "the scored planes are the whole stack (the sample)"
    out = RESULTS / f"{args.dataset}_s{args.steps}"
    k_a = recommended_k_a(noisy, axes)
    models = {"context dropout 0.2 (this version)": train_context(noisy, axes, args, k_a, out / "teacher")}
    if args.baseline:
        old = load_model(args.baseline)
        # forced: a folder from before context dropout refuses its 2-D mode, which is here to show what it gives
        old.single_plane, old.network.context_dropout = True, CONTEXT_DROPOUT
        models["no context dropout (before)"] = old
    rows = [{"model": "noisy input", "mode": "", "output": "", "psnr": psnr(ev_noisy.astype(np.float32), ev_clean,
                                                                            drange)}]
    for name, model in models.items():
        for mode, read in (("context", "ZYX"), ("2-D (each plane alone)", "SYX")):
            for r in score(model, ev_noisy, ev_clean, drange, read):
                rows.append({"model": name, "mode": mode, "steps": model.config["steps"], **r})
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps({"args": vars(args), "k_a": k_a, "rows": rows}, indent=1))
    base = rows[0]["psnr"]
    print(f"| model (k_a {k_a}) | mode | output | PSNR (dB) | SSIM | gain true / estimated (dB) | steps |")
    print("|---|---|---|---|---|---|---|")
    print(f"| noisy input | | | {base:.2f} | | | |")
    for r in rows[1:]:
        est = "–" if r["estimated_gain_db"] is None else f"{r['estimated_gain_db']:+.2f}"
        print(f"| {r['model']} | {r['mode']} | {r['output']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
              f"{r['psnr'] - base:+.2f} / {est} | {r['steps']} |")


if __name__ == "__main__":
    main()
