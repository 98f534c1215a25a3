"""D-BSN at several budgets and presets: does every run end at least as good as the noisy input?

Trains a D-BSN per (preset, steps) on the noisy data only and scores, against the clean reference, mu (the
one-pixel blind-spot estimate), the Bayes fusion and the default output (``model.denoise``: the fusion, or
the blend of mu with the input when the fusion is estimated worse), next to the run's own estimate of its
default output's gain (config.json "quality", measured during training without the clean image) and
whether it reported itself failed.

    python benchmarks/dbsn_budgets.py --dataset fmd --runs small:200,small:2000,paper:300 --patch 64

The metric convention is ``real_data.py``'s; the first ``--n-eval`` images are scored (trained on all).
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

from napari_atbsn.config import BLIND_ESTIMATE, DBSNConfig
from napari_atbsn.events import drain
from napari_atbsn.inference.inmemory import iter_denoise_outputs
from napari_atbsn.metrics import psnr
from napari_atbsn.training import train_dbsn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import load  # the datasets and their conventions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["polyu", "fmd", "w2s", "sample"], required=True)
    ap.add_argument("--runs", default="small:200,small:2000", help="comma list of preset:steps")
    ap.add_argument("--patch", type=int, default=None, help="training patch (default: the preset's)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--sigma-fit", default="measured", choices=["measured", "likelihood"])
    ap.add_argument("--n-eval", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dbsn_budgets"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    noisy, clean, axes, rng = load(args.dataset, 4)
    ev, ref = noisy[:args.n_eval], np.asarray(clean)[:args.n_eval]
    rows = []
    for run in args.runs.split(","):
        preset, steps = run.split(":")
        cfg = DBSNConfig(preset=preset, iters=int(steps), patch=args.patch, batch=args.batch, device=args.device,
                         sigma_fit=args.sigma_fit, checkpoint_every=0)
        t0 = time.perf_counter()
        res = train_dbsn(noisy, axes, cfg)
        train_s = time.perf_counter() - t0
        fused, mu = drain(iter_denoise_outputs(res.model, ev, axes, ks=[None, BLIND_ESTIMATE], batch_size=8,
                                               dtype="float32"))
        default = res.model.denoise(ev, axes)
        q = res.model.config.get("quality", {})
        score = {k: psnr(v, ref, data_range=rng) for k, v in
                 {"noisy": ev.astype(np.float32), "mu": mu, "fused": fused, "default": default}.items()}
        rows.append({"dataset": args.dataset, "preset": preset, "steps": int(steps), "patch": res.model.patch,
                     "train_s": round(train_s, 1), **{k: round(v, 2) for k, v in score.items()},
                     "true_gain_default": round(score["default"] - score["noisy"], 2),
                     "estimated_gain_default": q.get("default", {}).get("estimated_gain_db"),
                     "reported_failed": bool(q.get("advice")), "output": q.get("default", {}).get("output")})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.dataset}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}\n")
    print("| preset | steps | patch | training (s) | noisy | mu | fused | default | gain: true / estimated | "
          "reported failed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        est = "–" if r["estimated_gain_default"] is None else f"{r['estimated_gain_default']:+.2f}"
        print(f"| {r['preset']} | {r['steps']} | {r['patch']} | {r['train_s']:.0f} | {r['noisy']:.2f} | "
              f"{r['mu']:.2f} | {r['fused']:.2f} | {r['default']:.2f} | {r['true_gain_default']:+.2f} / {est} | "
              f"{'yes' if r['reported_failed'] else 'no'} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.dataset}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
