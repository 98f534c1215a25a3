"""Out-of-core denoising: memory and time against volume size, chunking overhead, dask workers.

Three tables, each measured side by side in one run:

``sizes``     uint16 TIFF volumes of 0.25, 1 and 4 GB (2048 x 2048 planes) denoised to
              OME-Zarr by ``atbsn denoise`` in a fresh process each, with the smallest
              student; peak RSS (the process's own high-water mark) and throughput.
              Target: peak RSS flat (4 GB <= 1.2 x 0.25 GB), time linear in size.
``overhead``  on one 2048 x 2048 image: the bare network on exactly the windows the
              plan needs (no reading, normalising, assembling or writing) against the
              full chunked pipeline writing OME-Zarr. Target: overhead <= 15 %.
``workers``   the same volume with --scheduler sync, threads x1/x2, processes x2.

    python benchmarks/out_of_core.py sizes --sizes 0.25 1 4
    python benchmarks/out_of_core.py overhead
    python benchmarks/out_of_core.py workers --size-gb 0.25

The model is an untrained student (weights do not change the cost) saved as a
model folder with a 128-pixel training patch, the small preset's default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PLANE = 2048


def make_model(folder: Path, preset: str, window: int) -> Path:
    from napari_atbsn.modelio import arch_dict, save_folder
    from napari_atbsn.models import Student

    net = Student(preset, 1)
    cfg = {"kind": "student", "arch": arch_dict(net), "patch": window, "halo": window // 4,
           "normalization": {"mode": "zscore", "offset": [1000.0], "scale": [100.0]}}
    return save_folder(folder, net, cfg)


def make_volume(path: Path, gigabytes: float, plane: int = PLANE) -> tuple[int, ...]:
    """A contiguous uint16 TIFF written plane by plane (never whole in memory)."""
    import tifffile

    n = max(1, round(gigabytes * 2**30 / (plane * plane * 2)))
    rng = np.random.default_rng(0)
    base = (1000 + 100 * rng.normal(size=(4, plane, plane))).astype(np.uint16)

    def planes():
        for i in range(n):
            yield base[i % 4]

    tifffile.imwrite(path, planes(), shape=(n, plane, plane), dtype=np.uint16, metadata={"axes": "ZYX"},
                     photometric="minisblack", bigtiff=n * plane * plane * 2 > 2**31)
    return (n, plane, plane)


def run_child(args: list[str]) -> dict:
    """``atbsn denoise`` in a fresh process; returns its wall time and its own peak RSS."""
    code = ("import resource, sys, time, json\n"
            "from napari_atbsn.cli import main\n"
            "t = time.perf_counter(); rc = main(sys.argv[1:]); dt = time.perf_counter() - t\n"
            "print(json.dumps({'rc': rc, 'seconds': dt, "
            "'maxrss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n")
    proc = subprocess.run([sys.executable, "-c", code, "denoise", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"denoise failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def cmd_sizes(a: argparse.Namespace, work: Path, model: Path) -> None:
    rows = []
    for gb in a.sizes:
        src = work / f"vol_{gb}.tif"
        shape = make_volume(src, gb)
        out = work / f"out_{gb}.ome.zarr"
        r = run_child([str(src), "-m", str(model), "-o", str(out), "--dtype", "input", "--device", "cpu"])
        mpx = np.prod(shape) / 1e6
        rows.append((gb, shape[0], r["seconds"], mpx / r["seconds"], src.stat().st_size / 2**20 / r["seconds"],
                     r["maxrss_mb"]))
        print(f"  {gb:g} GB: {r['seconds']:.1f} s, peak RSS {r['maxrss_mb']:.0f} MB", file=sys.stderr, flush=True)
        shutil.rmtree(out)
        src.unlink()
    print(f"\n## Volume size vs memory and time ({machine()})\n")
    print("| volume | planes (2048x2048 uint16) | time (s) | Mpx/s | MB/s | peak RSS (MB) | RSS / smallest | "
          "time / smallest per GB |")
    print("|---|---|---|---|---|---|---|---|")
    for gb, n, sec, mpxs, mbs, rss in rows:
        print(f"| {gb:g} GB | {n} | {sec:.1f} | {mpxs:.2f} | {mbs:.1f} | {rss:.0f} | {rss / rows[0][5]:.2f} | "
              f"{(sec / gb) / (rows[0][2] / rows[0][0]):.2f} |")


def cmd_overhead(a: argparse.Namespace, work: Path, model_path: Path) -> None:
    import tifffile

    from napari_atbsn.inference.denoiser import load_model
    from napari_atbsn.inference.geometry import Geometry
    from napari_atbsn.inference.run import denoise
    from napari_atbsn.tiling import PlaneGrid

    model = load_model(model_path, device="cpu")
    img = (1000 + 100 * np.random.default_rng(0).normal(size=(PLANE, PLANE))).astype(np.uint16)
    src = work / "plane.tif"
    tifffile.imwrite(src, img, metadata={"axes": "YX"})
    geom = Geometry.of("YX", img.shape)
    grid = PlaneGrid.of(PLANE, PLANE, model.patch, model.halo)
    n_windows = len(grid.y) * len(grid.x)
    tiles = np.random.default_rng(1).normal(size=(n_windows, 1, model.patch, model.patch)).astype(np.float32)
    batch = 4

    def bare() -> float:
        t = time.perf_counter()
        for i in range(0, n_windows, batch):
            model.run_windows(tiles[i:i + batch], [None])
        return time.perf_counter() - t

    def pipeline(chunk: int | None) -> tuple[float, int]:
        out = work / "o.ome.zarr"
        t = time.perf_counter()
        res = denoise(src, model, out, chunk=chunk, batch_size=batch, dtype="input")
        dt = time.perf_counter() - t
        shutil.rmtree(out)
        return dt, res.chunk

    bare()  # warm-up
    results = {"bare": [], "auto": [], "512": [], "256": []}
    for _ in range(a.repeats):  # interleaved so drifts of the machine hit both alike
        results["bare"].append(bare())
        for key, chunk in (("auto", None), ("512", 512), ("256", 256)):
            results[key].append(pipeline(chunk)[0])
    base = min(results["bare"])
    windows_per_plane = geom.n_planes * n_windows
    print(f"\n## Chunking and halo overhead, {PLANE}x{PLANE} uint16, {model.name}, window {model.patch} "
          f"(halo {model.halo}), {windows_per_plane} windows ({machine()})\n")
    print(f"| run | best of {a.repeats} (s) | vs bare network |")
    print("|---|---|---|")
    print(f"| bare network on the plan's windows (batch {batch}) | {base:.2f} | 1.00 |")
    for key, label in (("auto", "pipeline, auto chunk"), ("512", "pipeline, chunk 512"),
                       ("256", "pipeline, chunk 256")):
        best = min(results[key])
        print(f"| {label} (read, normalise, assemble, write OME-Zarr) | {best:.2f} | {best / base:.2f} |")


def cmd_workers(a: argparse.Namespace, work: Path, model: Path) -> None:
    src = work / "vol.tif"
    shape = make_volume(src, a.size_gb)
    rows = []
    for sched, workers in (("sync", 1), ("threads", 1), ("threads", 2), ("processes", 2)):
        out = work / f"o_{sched}{workers}.ome.zarr"
        r = run_child([str(src), "-m", str(model), "-o", str(out), "--dtype", "input", "--device", "cpu",
                       "--scheduler", sched, "--workers", str(workers)])
        rows.append((sched, workers, r["seconds"], np.prod(shape) / 1e6 / r["seconds"]))
        shutil.rmtree(out)
    print(f"\n## Dask workers, {a.size_gb:g} GB ({shape[0]} planes of 2048x2048 uint16) ({machine()})\n")
    print("| scheduler | workers | time (s) | Mpx/s | vs sync |")
    print("|---|---|---|---|---|")
    for sched, workers, sec, mpxs in rows:
        print(f"| {sched} | {workers} | {sec:.1f} | {mpxs:.2f} | {rows[0][2] / sec:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["sizes", "overhead", "workers"])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1, 4])
    ap.add_argument("--size-gb", type=float, default=0.25)
    ap.add_argument("--student", default="tiny", help="student preset (tiny is the smallest)")
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", help="scratch folder (default: a temporary one, removed afterwards)")
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="atbsn-ooc-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model = make_model(work / "model", a.student, a.window)
        {"sizes": cmd_sizes, "overhead": cmd_overhead, "workers": cmd_workers}[a.what](a, work, model)
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
