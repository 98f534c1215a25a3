"""GPU throughput and memory: training, distillation and inference, float32 against the fast path.

Measures, side by side in one run and through the same code users run (``iter_train``,
``iter_distill``, ``Denoiser.denoise``):

* teacher training: iterations per second and peak GPU memory at the paper's settings
  (paper preset, batch 8, patch 128, k_a 9);
* distillation: the same for student C from a paper-size teacher, Ks {0, 1, 3, 5, 7, 9, 11};
* inference: megapixels per second for the teacher (k_b 3) and student C at several window sizes, with the
  windows cut, normalised and reassembled on the GPU (the default there) and, side by side, on the host;
* end to end (``--e2e-gb``, 4 by default; 0 skips it): a generated uint16 ZYX BigTIFF of that size denoised
  to OME-Zarr by ``inference.run.denoise`` (what ``atbsn denoise`` runs) with student C and the teacher,
  reading, the network, the pyramid and writing included.

Each is run in float32 (``amp=False``, contiguous), with mixed precision (bf16, or fp16 with loss
scaling where bf16 is unsupported), with mixed precision and channels-last (the default on CUDA), and,
with ``--compile``, with torch.compile on top. The paper's figures on an RTX 3080 are printed beside
them (teacher 8.3 it/s and 5.7 GB; distillation 11.1 it/s and 2.4 GB).

Peak memory is ``torch.cuda.max_memory_allocated`` (tensors) and ``max_memory_reserved`` (the caching
allocator's pool, closer to what nvidia-smi shows minus the CUDA context of ~0.5 GB).

    python benchmarks/gpu.py                    # on a CUDA machine
    python benchmarks/gpu.py --compile          # adds the torch.compile rows
    python benchmarks/gpu.py --device cpu --quick   # smoke test of the script itself (small, CPU)
    python benchmarks/gpu.py --only inference,e2e --e2e-gb 1
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from napari_atbsn.config import DistillConfig, TrainConfig
from napari_atbsn.events import StepEvent
from napari_atbsn.inference.denoiser import Denoiser
from napari_atbsn.inference.runtime import auto_batch_size
from napari_atbsn.modelio import arch_dict
from napari_atbsn.models import ATBSN, Student
from napari_atbsn.training import iter_distill, iter_train, train

PAPER = {"train": (8.3, 5.7), "distill": (11.1, 2.4)}  # it/s, GB on an RTX 3080 (AT-BSN paper)


#: the arithmetic variants by short name (``--variants``): what each row runs
VARIANTS = {"fp32": ("float32", {"amp": False, "channels_last": False}),
            "amp": ("mixed precision", {"amp": True, "channels_last": False}),
            "default": ("mixed precision + channels-last (default)", {"amp": True, "channels_last": None}),
            "compile": ("default + torch.compile", {"amp": True, "channels_last": None, "compile": True})}


def variants(compile_: bool, only: str | None = None) -> list[tuple[str, dict]]:
    """The variants to run: ``only`` (a comma list of VARIANTS' keys), else the three without compile and,
    with ``compile_``, compile on top."""
    keys = only.split(",") if only else ["fp32", "amp", "default"] + (["compile"] if compile_ else [])
    return [VARIANTS[k] for k in keys if k in VARIANTS]


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
    for name, opts in variants(args.compile, args.variants):
        reset(device)
        cfg = TrainConfig(preset=args.preset, k_a=9, iters=args.warmup + args.steps + 1, patch=args.patch,
                          batch=args.batch, device=str(device), checkpoint_every=0, **opts)
        rate = steps_per_second(iter_train(data, "SYXC", cfg), args.warmup)
        rows.append(("teacher training", name, rate, *peak(device)))
    for name, opts in variants(args.compile, args.variants):
        reset(device)
        cfg = DistillConfig(student=args.student, iters=args.warmup + args.steps + 1, batch=args.batch,
                            device=str(device), checkpoint_every=0, **opts)
        rate = steps_per_second(iter_distill(data, teacher_dir, "SYXC", cfg), args.warmup)
        rows.append(("distillation", name, rate, *peak(device)))
    return rows


def untrained(net: torch.nn.Module, window: int, *, offset: float = 0.0, scale: float = 1.0, halo: int | None = None,
              **options) -> Denoiser:
    """``net`` with untrained weights as a model run in windows of ``window`` (a trained one's arithmetic and cost),
    with ``halo`` pixels of halo (None: the kind's default for that window); ``options`` are Denoiser's (device,
    amp, channels_last, compile, windows_on_device)."""
    arch = arch_dict(net.eval())
    c = int(arch["in_channels"])
    cfg = {"kind": "atbsn" if isinstance(net, ATBSN) else "student", "arch": arch, "patch": window, "k_b": 3,
           "normalization": {"mode": "zscore", "offset": [offset] * c, "scale": [scale] * c}}
    if halo is not None:
        cfg["halo"] = halo
    return Denoiser(net, cfg, **options)


def bench_inference(image: np.ndarray, args, device: torch.device) -> list[tuple]:
    """Rows: network and window, halo, arithmetic, batch, seconds of the first call (cuDNN autotuning and
    compilation), MPix/s of ``denoise`` as users call it (a student's includes the calibration of its reported
    gain on the image), MPix/s with that calibration given (what each image of a stack costs), peak memory."""
    from napari_atbsn.config import AUTO_K_B
    from napari_atbsn.events import drain
    from napari_atbsn.inference.inmemory import iter_denoise_outputs
    from napari_atbsn.inference.output_kinds import resolve_ks
    from napari_atbsn.inference.quality import calibrate

    rows = []
    nets = [("teacher (k_b 3)", lambda: ATBSN(3, args.preset)),
            (f"student {args.student}", lambda: Student(args.student, 3))]
    cases = [(name, opts, None) for name, opts in variants(args.compile, args.variants)]
    if args.host_rows:
        # the default arithmetic with the windows handled on the host, as before issue 19: the side-by-side ratio
        cases.append(("default, windows on the host", {"amp": True, "channels_last": None}, False))
    mpix = image.shape[0] * image.shape[1] / 1e6
    for window in args.windows:
        for net_name, make in nets:
            for name, opts, on_device in cases:
                # a fresh network per variant: compile and channels-last change it in place
                den = untrained(make(), window, halo=args.halo, device=device, amp=opts["amp"],
                                channels_last=opts["channels_last"], compile=opts.get("compile", False),
                                windows_on_device=on_device)
                batch = args.infer_batch or auto_batch_size(den)
                # warm-up on the same image: every batch shape (the last one too) is autotuned/compiled before
                t0 = time.perf_counter()
                den.denoise(image, "YXC", batch_size=batch)
                first = time.perf_counter() - t0
                reset(device)
                t0 = time.perf_counter()
                den.denoise(image, "YXC", batch_size=batch)
                secs = time.perf_counter() - t0
                given = float("nan")
                ks = resolve_ks(den, None)
                if AUTO_K_B in ks:
                    cal = calibrate(den, image, "YXC", batch_size=batch)
                    t0 = time.perf_counter()
                    drain(iter_denoise_outputs(den, image, "YXC", ks=ks, batch_size=batch, calibration=cal))
                    given = mpix / (time.perf_counter() - t0)
                rows.append((f"{net_name}, window {window}", den.halo, name, batch, first, mpix / secs, given,
                             *peak(device)))
    return rows


def bench_end_to_end(args, device: torch.device, folder: Path) -> Iterator[tuple]:
    """A uint16 ZYX BigTIFF of ``args.e2e_gb`` GB through ``denoise`` to OME-Zarr, student and teacher (1 channel,
    untrained weights: the arithmetic is the trained networks')."""
    from napari_atbsn.inference.run import denoise

    nets = ((f"student {args.student}", lambda: Student(args.student, 1), args.e2e_gb),
            ("teacher (k_b 3)", lambda: ATBSN(1, args.preset), args.e2e_teacher_gb or args.e2e_gb))
    for name, make, size in nets:
        if name.split()[0] not in args.e2e_nets.split(","):
            continue
        src = make_volume(folder, size, args.e2e_size)
        planes, side = tifffile_shape(src)
        for label, opts in variants(False, args.e2e_variants):
            den = untrained(make(), args.e2e_window, offset=1000.0, scale=100.0, halo=args.halo, device=device,
                            amp=opts["amp"], channels_last=opts["channels_last"], compile=opts.get("compile", False))
            out = folder / "out.ome.zarr"
            t0 = time.perf_counter()  # compilation and autotuning included: a user's job pays for them
            res = denoise(src, den, out, axes="ZYX", overwrite=True)
            secs = time.perf_counter() - t0
            assert res.complete
            shutil.rmtree(out)
            gb = planes * side * side * 2 / 1e9
            # each row as it is measured: a run stopped at its time limit still reports the rows it finished
            yield (f"{name}, {label}", den.halo, f"{planes}x{side}² uint16 ({gb:.2f} GB)", secs,
                   planes * side * side / secs / 1e6)
        src.unlink()


def tifffile_shape(path: Path) -> tuple[int, int]:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        shape = tf.series[0].shape
    return int(shape[0]), int(shape[-1])


def make_volume(folder: Path, gb: float, side: int) -> Path:
    """A uint16 ZYX BigTIFF of about ``gb`` GB, written plane by plane (it never sits whole in memory)."""
    import tifffile

    planes = max(1, round(gb * 1e9 / (2 * side * side)))
    src = folder / "volume.tif"
    vol = tifffile.memmap(src, shape=(planes, side, side), dtype=np.uint16, bigtiff=True, metadata={"axes": "ZYX"})
    base = np.random.default_rng(0).integers(900, 1400, size=(side, side), dtype=np.uint16)
    for z in range(planes):  # plane by plane: the volume never sits whole in memory
        vol[z] = np.roll(base, 7 * z, axis=1)
    vol.flush()
    del vol
    return src


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
    ap.add_argument("--infer-batch", type=int, default=None,
                    help="windows per network call (default: sized from the free GPU memory, as users get it)")
    ap.add_argument("--only", default="train,inference,e2e", help="comma list of train, inference, e2e")
    ap.add_argument("--e2e-gb", type=float, default=4.0, help="size of the end-to-end volume (0: skip)")
    ap.add_argument("--e2e-teacher-gb", type=float, default=None, help="the teacher's volume (default: --e2e-gb)")
    ap.add_argument("--e2e-size", type=int, default=4096, help="its planes' side")
    ap.add_argument("--e2e-window", type=int, default=256, help="the window the end-to-end models run in")
    ap.add_argument("--compile", action="store_true", help="add torch.compile rows")
    ap.add_argument("--variants", default=None,
                    help=f"comma list of {', '.join(VARIANTS)} (default: all but compile, which --compile adds)")
    ap.add_argument("--e2e-variants", default="default", help="the end-to-end rows' variants (same names)")
    ap.add_argument("--e2e-nets", default="student,teacher", help="the end-to-end rows' networks")
    ap.add_argument("--halo", type=int, default=None, help="inference halo in pixels (default: each kind's)")
    ap.add_argument("--no-host-rows", dest="host_rows", action="store_false",
                    help="skip the rows with the windows handled on the host")
    ap.add_argument("--tmp", default=None, help="folder for the end-to-end volume (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the script, not the GPU")
    args = ap.parse_args()
    if args.quick:
        args.preset, args.student, args.patch, args.batch = "tiny", "tiny", 32, 2
        args.steps, args.warmup, args.windows, args.image = 4, 2, [32, 64], 128
        args.e2e_gb, args.e2e_size, args.e2e_window = 0.0005, 128, 64
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or --device cpu --quick to check the script")
    rng = np.random.default_rng(0)
    # quick: a quarter of the pixels, since distillation calibrates its teacher on them (3 variants x 25 s else)
    side, planes = (max(4 * args.patch, 128), 2) if args.quick else (max(4 * args.patch, 256), 8)
    data = rng.integers(0, 256, size=(planes, side, side, 3), dtype=np.uint8)
    image = rng.normal(size=(args.image, args.image, 3)).astype(np.float32)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    from napari_atbsn.device import bf16_native

    amp = ("bf16" if bf16_native(device) else "fp16 + loss scaling") if device.type == "cuda" else "n/a"
    print(f"{gpu}; torch {torch.__version__}; preset {args.preset}, batch {args.batch}, patch {args.patch}; "
          f"mixed precision = {amp}\n")
    parts = set(args.only.split(","))
    if "train" in parts:
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
            print(f"| {stage} | {name} | {rate:.2f} | {alloc:.2f} | {res:.2f} | {paper} |", flush=True)
    if "inference" in parts:
        print(f"\n| network, window | halo | arithmetic | batch | first call (s) | MPix/s ({args.image}² RGB) | "
              f"MPix/s, calibration given | peak allocated (GB) | peak reserved (GB) |\n"
              f"|---|---|---|---|---|---|---|---|---|", flush=True)
        for what, halo, name, batch, first, mpix, given, alloc, res in bench_inference(image, args, device):
            g = "" if given != given else f"{given:.2f}"
            print(f"| {what} | {halo} | {name} | {batch} | {first:.1f} | {mpix:.2f} | {g} | {alloc:.2f} | "
                  f"{res:.2f} |", flush=True)
    if "e2e" in parts and args.e2e_gb > 0:
        print(f"\n| end to end, TIFF -> OME-Zarr (window {args.e2e_window}, float32 output) | halo | volume | "
              f"seconds | MPix/s |\n|---|---|---|---|---|", flush=True)
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            for name, halo, vol, secs, mpix in bench_end_to_end(args, device, Path(tmp)):
                print(f"| {name} | {halo} | {vol} | {secs:.1f} | {mpix:.1f} |", flush=True)


if __name__ == "__main__":
    main()
