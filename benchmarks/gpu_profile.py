"""Where inference time goes on a GPU: the network alone, the network with its transfers, and the whole denoise.

For each network (the paper teacher at k_b 3, student C), one window size and several batch sizes, on a
2048² RGB image, this prints side by side, in megapixels of *output* per second:

* ``network``: the forward pass alone on windows already on the device (CUDA events, after warm-up);
* ``+ transfers``: ``Denoiser.run_windows`` on host windows (host -> device copy, forward, copy back);
* ``denoise``: ``Denoiser.denoise`` on the whole image, with the windows cut, normalised, batched and
  reassembled on the device (the default on a GPU) and, side by side, on the host (as before issue 19).

The gaps between the columns say what to fix: a slow first column is the device's arithmetic, a gap to the
second the transfers and synchronisation, a gap to the third the host-side window handling. With
``--trace`` it also runs ``torch.profiler`` over one denoise and prints the operators that take the most
host and device time (and writes a Chrome trace when ``--trace-dir`` is given).

    python benchmarks/gpu_profile.py                         # on a CUDA machine
    python benchmarks/gpu_profile.py --trace --trace-dir out
    python benchmarks/gpu_profile.py --device cpu --quick    # checks the script (small, CPU)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu import untrained
from napari_atbsn.inference.denoiser import Denoiser
from napari_atbsn.models import ATBSN, Student


def make_denoiser(net_name: str, args, device: torch.device) -> Denoiser:
    net = ATBSN(3, args.preset) if net_name == "teacher" else Student(args.student, 3)
    return untrained(net, args.window, device=device, amp=not args.fp32, compile=args.compile)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int) -> float:
    """Seconds per call of ``fn`` (after one untimed call)."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeat


def rows_for(den: Denoiser, image: np.ndarray, args, device: torch.device) -> list[tuple]:
    from napari_atbsn.device import autocast, to_device
    from napari_atbsn.models.outputs import network_outputs

    w, halo = den.patch, den.halo
    core = (w - 2 * halo) ** 2 / 1e6  # output megapixels per window
    rows = []
    from napari_atbsn.inference.runtime import auto_batch_size

    for b in args.batches:
        b = b or auto_batch_size(den)
        host = np.random.default_rng(0).normal(size=(b, 3, w, w)).astype(np.float32)
        dev = to_device(host, device, channels_last=den.channels_last)

        def net_only(dev=dev):
            with torch.no_grad(), autocast(device, den.amp):
                network_outputs(den.network, den.kind, dev, [None], k_b=den.k_b)

        def with_transfers(host=host):
            den.run_windows(host, [None])

        t_net = timed(net_only, device, args.repeat)
        t_io = timed(with_transfers, device, args.repeat)
        mpix = image.shape[0] * image.shape[1] / 1e6
        full = []
        for on_device in (True, False):
            den.windows_on_device = on_device
            full.append(mpix / timed(lambda b=b: den.denoise(image, "YXC", batch_size=b), device, 1))
        den.windows_on_device = device.type == "cuda"
        rows.append((b, b * core / t_net, b * core / t_io, *full, t_net * 1e3, t_io * 1e3))
    return rows


def trace(den: Denoiser, image: np.ndarray, args, device: torch.device, name: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    batch = args.batches[0] or None
    den.denoise(image, "YXC", batch_size=batch)
    with profile(activities=acts) as prof:
        den.denoise(image, "YXC", batch_size=batch)
        sync(device)
    ka = prof.key_averages()
    print(f"\n#### {name}, batch {args.batches[0]}: operators by host time")
    print(ka.table(sort_by="cpu_time_total", row_limit=args.rows, max_name_column_width=50))
    if device.type == "cuda":
        print(f"\n#### {name}: operators by device time")
        print(ka.table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=50))
    if args.trace_dir:
        Path(args.trace_dir).mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(Path(args.trace_dir) / f"trace_{name.replace(' ', '_')}.json"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--student", default="C")
    ap.add_argument("--nets", default="student,teacher")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--batches", type=lambda t: [int(v) for v in t.split(",")], default=[8, 32, 0],
                    help="windows per network call (0: sized from the free device memory, the default)")
    ap.add_argument("--image", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--fp32", action="store_true", help="float32 instead of mixed precision")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--trace", action="store_true", help="torch.profiler over one denoise")
    ap.add_argument("--trace-dir", default=None)
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the script, not the GPU")
    args = ap.parse_args()
    if args.quick:
        args.preset, args.student, args.window, args.batches, args.image, args.repeat = \
            "tiny", "tiny", 64, [2], 128, 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or --device cpu --quick to check the script")
    image = np.random.default_rng(1).normal(size=(args.image, args.image, 3)).astype(np.float32)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{gpu}; torch {torch.__version__}; window {args.window}; {args.image}² RGB; "
          f"{'float32' if args.fp32 else 'mixed precision'}{', compiled' if args.compile else ''}\n")
    print("| network | batch | network (MPix/s) | + transfers (MPix/s) | denoise, windows on the device (MPix/s) "
          "| denoise, windows on the host (MPix/s) | forward (ms) | forward + transfers (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.nets.split(","):
        den = make_denoiser(name, args, device)
        for b, net, io, dev, host, t_net, t_io in rows_for(den, image, args, device):
            print(f"| {name} | {b} | {net:.1f} | {io:.1f} | {dev:.1f} | {host:.1f} | {t_net:.2f} | {t_io:.2f} |",
                  flush=True)
        if args.trace:
            trace(den, image, args, device, name)


if __name__ == "__main__":
    main()
