"""GPU throughput and memory: training, distillation and inference, float32 against the fast path.

Measures, side by side in one run and through the same code users run (``iter_train``,
``iter_distill``, ``Denoiser.denoise``):

* teacher training: iterations per second and peak GPU memory at the paper's settings
  (paper preset, batch 8, patch 128, k_a 9);
* distillation: the same for student C from a paper-size teacher, Ks {0, 1, 3, 5, 7, 9, 11};
* inference: megapixels per second for the teacher (k_b 3) and student C at several window sizes.

Each is run in float32 (``amp=False``, contiguous), with mixed precision (bf16, or fp16 with loss
scaling where bf16 is unsupported), with mixed precision and channels-last (the default on CUDA), and,
with ``--compile``, with torch.compile on top. The paper's figures on an RTX 3080 are printed beside
them (teacher 8.3 it/s and 5.7 GB; distillation 11.1 it/s and 2.4 GB).

Peak memory is ``torch.cuda.max_memory_allocated`` (tensors) and ``max_memory_reserved`` (the caching
allocator's pool, closer to what nvidia-smi shows minus the CUDA context of ~0.5 GB).

    python benchmarks/gpu.py                    # on a CUDA machine
    python benchmarks/gpu.py --compile          # adds the torch.compile rows
    python benchmarks/gpu.py --device cpu --quick   # smoke test of the script itself (small, CPU)
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_atbsn.config import DistillConfig, TrainConfig
from napari_atbsn.events import StepEvent
from napari_atbsn.inference.denoiser import Denoiser
from napari_atbsn.modelio import arch_dict
from napari_atbsn.models import ATBSN, Student
from napari_atbsn.training import iter_distill, iter_train, train

PAPER = {"train": (8.3, 5.7), "distill": (11.1, 2.4)}  # it/s, GB on an RTX 3080 (AT-BSN paper)


def variants(compile_: bool) -> list[tuple[str, dict]]:
    v = [("float32", {"amp": False, "channels_last": False}),
         ("mixed precision", {"amp": True, "channels_last": False}),
         ("mixed precision + channels-last (default)", {"amp": True, "channels_last": None})]
    if compile_:
        v.append(("default + torch.compile", {"amp": True, "channels_last": None, "compile": True}))
    return v


def reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> tuple[float, float]:
    if device.type != "cuda":
        return float("nan"), float("nan")
    return torch.cuda.max_memory_allocated(device) / 1e9, torch.cuda.max_memory_reserved(device) / 1e9


def steps_per_second(gen, warmup: int) -> float:
    """Rate of the steps after ``warmup`` (each StepEvent follows a loss read back, so the GPU is synced)."""
    times = [time.perf_counter() for ev in gen if isinstance(ev, StepEvent)]
    return (len(times) - 1 - warmup) / (times[-1] - times[warmup])


def bench_training(data: np.ndarray, args, device: torch.device, teacher_dir: Path) -> list[tuple]:
    rows = []
    for name, opts in variants(args.compile):
        reset(device)
        cfg = TrainConfig(preset=args.preset, k_a=9, iters=args.warmup + args.steps + 1, patch=args.patch,
                          batch=args.batch, device=str(device), checkpoint_every=0, **opts)
        rate = steps_per_second(iter_train(data, "SYXC", cfg), args.warmup)
        rows.append(("teacher training", name, rate, *peak(device)))
    for name, opts in variants(args.compile):
        reset(device)
        cfg = DistillConfig(student=args.student, iters=args.warmup + args.steps + 1, batch=args.batch,
                            device=str(device), checkpoint_every=0, **opts)
        rate = steps_per_second(iter_distill(data, teacher_dir, "SYXC", cfg), args.warmup)
        rows.append(("distillation", name, rate, *peak(device)))
    return rows


def bench_inference(image: np.ndarray, args, device: torch.device) -> list[tuple]:
    rows = []
    nets = [("teacher (k_b 3)", lambda: ATBSN(3, args.preset)),
            (f"student {args.student}", lambda: Student(args.student, 3))]
    for window in args.windows:
        for net_name, make in nets:
            for name, opts in variants(args.compile):
                net = make().eval()  # a fresh network per variant: compile and channels-last change it in place
                cfg = {"kind": "atbsn" if isinstance(net, ATBSN) else "student", "arch": arch_dict(net),
                       "patch": window, "k_b": 3,
                       "normalization": {"mode": "zscore", "offset": [0.0] * 3, "scale": [1.0] * 3}}
                den = Denoiser(net, cfg, device=device, amp=opts["amp"], channels_last=opts["channels_last"],
                               compile=opts.get("compile", False))
                # warm-up on the same image: every batch shape (the last one too) is autotuned/compiled before
                den.denoise(image, "YXC", batch_size=args.infer_batch)
                reset(device)
                t0 = time.perf_counter()
                den.denoise(image, "YXC", batch_size=args.infer_batch)
                secs = time.perf_counter() - t0
                mpix = image.shape[0] * image.shape[1] / secs / 1e6
                rows.append((f"{net_name}, window {window}", name, mpix, *peak(device)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--student", default="C")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=15, help="untimed steps first (cuDNN autotuning, compile)")
    ap.add_argument("--windows", type=lambda t: [int(v) for v in t.split(",")], default=[128, 256, 512])
    ap.add_argument("--image", type=int, default=2048, help="side of the RGB image denoised for inference")
    ap.add_argument("--infer-batch", type=int, default=8)
    ap.add_argument("--compile", action="store_true", help="add torch.compile rows")
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the script, not the GPU")
    args = ap.parse_args()
    if args.quick:
        args.preset, args.student, args.patch, args.batch = "tiny", "tiny", 32, 2
        args.steps, args.warmup, args.windows, args.image = 4, 2, [32, 64], 128
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or --device cpu --quick to check the script")
    rng = np.random.default_rng(0)
    side = max(4 * args.patch, 256)
    data = rng.integers(0, 256, size=(8, side, side, 3), dtype=np.uint8)
    image = rng.normal(size=(args.image, args.image, 3)).astype(np.float32)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    from napari_atbsn.device import bf16_native

    amp = ("bf16" if bf16_native(device) else "fp16 + loss scaling") if device.type == "cuda" else "n/a"
    print(f"{gpu}; torch {torch.__version__}; preset {args.preset}, batch {args.batch}, patch {args.patch}; "
          f"mixed precision = {amp}\n")
    with tempfile.TemporaryDirectory() as tmp:
        teacher_dir = Path(tmp) / "teacher"
        train(data, "SYXC", TrainConfig(preset=args.preset, iters=2, patch=args.patch, batch=args.batch,
                                        device=str(device), checkpoint_every=0), teacher_dir)
        rows = bench_training(data, args, device, teacher_dir)
    print("| stage | arithmetic | it/s | peak allocated (GB) | peak reserved (GB) | paper, RTX 3080 |")
    print("|---|---|---|---|---|---|")
    for stage, name, rate, alloc, res in rows:
        key = "train" if stage.startswith("teacher") else "distill"
        paper = f"{PAPER[key][0]} it/s, {PAPER[key][1]} GB"
        print(f"| {stage} | {name} | {rate:.2f} | {alloc:.2f} | {res:.2f} | {paper} |")
    print(f"\n| network, window | arithmetic | MPix/s ({args.image}² RGB) | peak allocated (GB) | "
          f"peak reserved (GB) |\n|---|---|---|---|---|")
    for what, name, mpix, alloc, res in bench_inference(image, args, device):
        print(f"| {what} | {name} | {mpix:.2f} | {alloc:.2f} | {res:.2f} |")


if __name__ == "__main__":
    main()
