"""What the host side costs: the real denoising pipeline with the network replaced by an identity.

Everything but the network runs as users get it: reading, normalisation, window extraction with the halo,
batching, reassembly, the ``auto`` blend where asked, dtype conversion and writing. The network is a
module that returns its input, so the MPix/s printed here is the most any network can reach through the
pipeline on this machine; a GPU that computes faster than this waits for the host.

Three parts, each printed as a table:

* **in memory** (what napari layers and notebooks use, ``Denoiser.denoise``): a 2048² RGB float32 image
  at windows 128 and 256 and several batch sizes;
* **files** (``atbsn denoise``, ``inference.run.denoise``): a generated uint16 ZYX BigTIFF written to
  OME-Zarr, BigTIFF and .npy, at the default chunk size, with 4 windows per network call (the CPU
  default) and 32 (what a GPU gets).

* **the training sampler**: batches of 8 normalised 128² patches per second, from memory and from a TIFF,
  against the 52 steps/s an H200 trains the paper preset at.

Rows with k_b 3 time the pipeline; the ``auto`` rows add the default's calibration (the noise level and
correlation measured on a sample, once per image or volume) and the blend with the input.

Run it against another checkout side by side with ``PYTHONPATH=OTHER/src python benchmarks/host_overhead.py``.

    python benchmarks/host_overhead.py                 # 16 x 2048² planes (128 MiB)
    python benchmarks/host_overhead.py --planes 4 --size 1024 --profile --only files
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_atbsn.inference.denoiser import Denoiser
from napari_atbsn.inference.run import denoise


class Identity(nn.Module):
    """A network that computes nothing, shaped as a teacher with a fixed k_b (one output per k asked)."""

    def forward(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        return x

    def teachers(self, x: torch.Tensor, ks: list[int]) -> torch.Tensor:
        return x[None].expand(len(ks), *x.shape)


def identity_model(channels: int, window: int, *, offset: float = 0.0, scale: float = 1.0,
                   device: str = "cpu") -> Denoiser:
    """A fixed k_b, so the pipeline alone is timed; the ``auto`` rows add the calibration (a sample's noise
    level and correlation, measured once per image or volume) and the blend."""
    cfg = {"kind": "atbsn", "arch": {"in_channels": channels, "preset": "identity"}, "patch": window, "k_b": 3,
           "normalization": {"mode": "zscore", "offset": [offset] * channels, "scale": [scale] * channels}}
    return Denoiser(Identity(), cfg, device=device)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def in_memory(size: int, repeats: int, profile: bool, device: str = "cpu") -> None:
    rgb = np.random.default_rng(0).normal(size=(size, size, 3)).astype(np.float32)
    print(f"\n### In memory: {size}² RGB float32, Denoiser.denoise, identity network\n")
    print("| layout | window | batch | output | seconds | MPix/s |")
    print("|---|---|---|---|---|---|")
    for axes, image in (("YXC", rgb), ("CYX", np.ascontiguousarray(rgb.transpose(2, 0, 1)))):
        for window, batch, k_b in ((128, 8, 3), (128, 64, 3), (256, 8, 3), (128, 8, "auto")):
            model = identity_model(3, window, device=device)
            out = model.denoise(image, axes, batch_size=batch, k_b=k_b)
            if k_b != "auto":
                assert np.array_equal(out, image), "the identity pipeline changed the image"
            secs = best_of(lambda m=model, b=batch, a=axes, im=image, k=k_b: m.denoise(im, a, batch_size=b, k_b=k),
                           repeats)
            what = "k_b 3" if k_b != "auto" else "auto (calibration + blend)"
            print(f"| {axes} | {window} | {batch} | {what} | {secs:.3f} | {size * size / secs / 1e6:.1f} |")
    if profile:
        model = identity_model(3, 128, device=device)
        run_profiled(lambda: model.denoise(rgb, "YXC", batch_size=8, k_b=3))


def files(planes: int, size: int, repeats: int, profile: bool, folder: Path, batches: list[int],
          device: str = "cpu") -> None:
    import tifffile

    src = folder / "volume.tif"
    rng = np.random.default_rng(1)
    vol = rng.integers(900, 1400, size=(planes, size, size), dtype=np.uint16)
    tifffile.imwrite(src, vol, bigtiff=True, metadata={"axes": "ZYX"})
    mpix = planes * size * size / 1e6
    print(f"\n### Files: uint16 ZYX BigTIFF {planes}x{size}² ({vol.nbytes / 2**20:.0f} MiB), identity network "
          f"(window 128), default chunk\n")
    print("| output | dtype | batch | output | seconds | MPix/s |")
    print("|---|---|---|---|---|---|")
    model = identity_model(1, 128, offset=1000.0, scale=100.0, device=device)
    cases = [(suffix, dtype, batch, 3) for batch in batches for suffix in (".ome.zarr", ".tif", ".npy")
             for dtype in ("float32", "input")] + [(".ome.zarr", "float32", batches[0], "auto")]
    for suffix, dtype, batch, k_b in cases:
        out = folder / f"out{suffix}"

        def run(out: Path = out, dtype: str = dtype, batch: int = batch, k_b: int | str = k_b) -> None:
            res = denoise(src, model, out, dtype=dtype, overwrite=True, batch_size=batch, k_b=k_b)
            assert res.complete

        run()
        if k_b != "auto":
            check(out, vol)
        secs = best_of(run, repeats)
        what = "k_b 3" if k_b != "auto" else "auto (calibration + blend)"
        print(f"| {suffix} | {dtype} | {batch} | {what} | {secs:.2f} | {mpix / secs:.1f} |")
        if profile and dtype == "float32" and k_b != "auto":
            run_profiled(run)
        remove(out)


SAMPLER_BATCHES = 200


def sampler(folder: Path, planes: int, size: int, repeats: int) -> None:
    """Training batches per second from the patch sampler (what every training step waits for before the
    network runs), against what a GPU asks: 52 steps/s on an H200 at the paper's settings (issue 19)."""
    import tifffile

    from napari_atbsn.io.readers import open_image
    from napari_atbsn.normalization import Normalization
    from napari_atbsn.sampling import in_memory, plane_source, sample_batch

    vol = np.random.default_rng(2).integers(900, 1400, size=(planes, size, size), dtype=np.uint16)
    path = folder / "train.tif"
    tifffile.imwrite(path, vol, bigtiff=True, metadata={"axes": "ZYX"})
    norm = Normalization("zscore", (1000.0,), (100.0,))
    print(f"\n### Training sampler: batches of 8 patches of 128² from {planes}x{size}² uint16, normalised\n")
    print("| source | batches/s | ms per batch | share of a 52 it/s GPU step |")
    print("|---|---|---|---|")
    t0 = time.perf_counter()
    loaded = in_memory(plane_source(open_image(path), "ZYX"), 1 << 62)
    load = time.perf_counter() - t0
    rows = (("in memory (numpy)", plane_source(vol, "ZYX")),
            ("TIFF, patch by patch (training data over a quarter of the free memory)",
             plane_source(open_image(path), "ZYX")),
            (f"TIFF read into memory first (training's default where it fits; the read took {load:.2f} s)", loaded))
    for name, source in rows:
        secs = best_of(lambda src=source: [norm.apply(sample_batch(src, i, seed=0, batch=8, patch=128))
                                           for i in range(SAMPLER_BATCHES)], repeats) / SAMPLER_BATCHES
        print(f"| {name} | {1 / secs:.0f} | {secs * 1e3:.2f} | {secs * 52:.0%} |")
    prefetched(plane_source(open_image(path), "ZYX"), norm)


def prefetched(source, norm) -> None:
    """Steps per second with a simulated 19 ms device step (an H200's paper-teacher step; the host thread waits
    without holding the GIL, as it does on a CUDA sync), the batches read patch by patch from the TIFF: sampled
    in turn before each step, and by training's helper thread two steps ahead (training.loop.BatchPrefetcher)."""
    from napari_atbsn.sampling import sample_batch
    from napari_atbsn.training.loop import PREFETCH_BATCHES, BatchPrefetcher

    steps, step_s = 100, 0.019
    print(f"\n| batches from the TIFF, {step_s * 1e3:.0f} ms device step | steps/s | of the device's own "
          f"{1 / step_s:.0f} |\n|---|---|---|")
    for name, ahead in (("sampled in turn", 0), (f"sampled {PREFETCH_BATCHES} steps ahead (training's default)",
                                                 PREFETCH_BATCHES)):
        p = BatchPrefetcher(lambda i: norm.apply(sample_batch(source, i, seed=0, batch=8, patch=128)), 0, steps,
                            ahead)
        t0 = time.perf_counter()
        for i in range(steps):
            p.get(i)
            time.sleep(step_s)
        rate = steps / (time.perf_counter() - t0)
        p.close()
        print(f"| {name} | {rate:.1f} | {rate * step_s:.0%} |")


def check(out: Path, vol: np.ndarray) -> None:
    from napari_atbsn.io.readers import open_image

    got = np.asarray(open_image(out).data)
    assert np.allclose(got, vol, atol=1e-3), f"{out}: the identity pipeline changed the data"


def remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


def run_profiled(fn) -> None:
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    print()
    pstats.Stats(pr).sort_stats("cumulative").print_stats(25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--planes", type=int, default=16)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one run of each part")
    ap.add_argument("--only", choices=("memory", "files", "sampler"), default=None)
    ap.add_argument("--batch", type=int, nargs="+", default=[4, 32],
                    help="windows per network call for the file rows (4: the CPU default; GPUs more)")
    ap.add_argument("--device", default="cpu", help="where the identity network runs (cuda: windows are cut, "
                    "normalised and reassembled on the GPU)")
    ap.add_argument("--tmp", default=None, help="folder for the generated volume and outputs (default: a temp dir)")
    args = ap.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, numpy {np.__version__}, "
          f"device {args.device}")
    if args.only in (None, "memory"):
        in_memory(args.size, args.repeats, args.profile, args.device)
    if args.only in (None, "files"):
        with tempfile.TemporaryDirectory(dir=args.tmp) as d:
            files(args.planes, args.size, args.repeats, args.profile, Path(d), args.batch, args.device)
    if args.only in (None, "sampler"):
        with tempfile.TemporaryDirectory(dir=args.tmp) as d:
            sampler(Path(d), args.planes, args.size, args.repeats)


if __name__ == "__main__":
    main()
