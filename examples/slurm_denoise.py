"""Denoise a large volume on a SLURM cluster with dask-jobqueue.

Run it on the cluster's login node, in the environment where napari-atbsn is
installed with its cluster extra (``pip install "napari-atbsn[cluster]"``).
It starts a dask scheduler here, asks SLURM for worker jobs, and streams the
result chunk by chunk to OUT. The input, the model folder and OUT must be on
a filesystem every node sees (home, project or scratch space).

    python slurm_denoise.py /scratch/me/stack.tif -m /home/me/models/student \\
        -o /scratch/me/stack_denoised.ome.zarr --jobs 8 --cores 8 --memory 32GB \\
        --walltime 02:00:00 --queue gpu --gpus 1

If the allocation ends (walltime, pre-emption) or you stop it, run the same
command again: finished chunks are kept and only the missing ones are
computed. ``--print-job-script`` shows the sbatch script without submitting
anything; ``--local`` runs the same code on a local process cluster instead
(for trying it out, and for this example's test).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="noisy volume (TIFF, OME-Zarr, ...) on a shared filesystem")
    ap.add_argument("-m", "--model", required=True, help="model folder on a shared filesystem")
    ap.add_argument("-o", "--output", required=True, help="output .ome.zarr (recommended) or .tif")
    ap.add_argument("--jobs", type=int, default=4, help="SLURM jobs, one dask worker each")
    ap.add_argument("--cores", type=int, default=8, help="CPU cores per job")
    ap.add_argument("--memory", default="32GB", help="memory per job")
    ap.add_argument("--walltime", default="02:00:00", help="time limit per job")
    ap.add_argument("--queue", help="SLURM partition")
    ap.add_argument("--account", help="SLURM account")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs per job (adds --gres=gpu:N; workers use cuda)")
    ap.add_argument("--chunk", type=int, help="output chunk side (default: from the workers' free memory)")
    ap.add_argument("--k-b", type=int, nargs="+", help="blind-spot size(s), teachers only")
    ap.add_argument("--dtype", choices=["float32", "input"], default="float32")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--print-job-script", action="store_true", help="print the sbatch script and exit")
    ap.add_argument("--local", action="store_true", help="use a local process cluster instead of SLURM")
    return ap.parse_args(argv)


def make_slurm_cluster(args: argparse.Namespace) -> Any:
    """A dask-jobqueue SLURMCluster: one single-process worker per job, its threads = the job's cores."""
    from dask_jobqueue import SLURMCluster

    extra = [f"--gres=gpu:{args.gpus}"] if args.gpus else []
    return SLURMCluster(
        cores=args.cores, processes=1, memory=args.memory, walltime=args.walltime, queue=args.queue,
        account=args.account, job_extra_directives=extra,
        # one torch call at a time per worker: torch already uses all the job's cores inside it
        worker_extra_args=["--nthreads", "1"],
        job_name="atbsn-denoise", log_directory="atbsn-dask-logs",
    )


def make_local_cluster(args: argparse.Namespace) -> Any:
    from distributed import LocalCluster

    return LocalCluster(n_workers=args.jobs, threads_per_worker=1, processes=True, dashboard_address=None)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_job_script:
        cluster = make_slurm_cluster(args)
        print(cluster.job_script())
        cluster.close()
        return 0

    from napari_atbsn.inference.run import denoise
    from napari_atbsn.progress import ProgressBar

    cluster = make_local_cluster(args) if args.local else make_slurm_cluster(args)
    try:
        if not args.local:
            cluster.scale(jobs=args.jobs)
        bar = ProgressBar("denoise", 1)

        def progress(done: int, total: int) -> None:
            bar.total = max(1, total)
            bar.update(done)

        k_b = args.k_b[0] if args.k_b and len(args.k_b) == 1 else args.k_b
        res = denoise(args.input, args.model, args.output, k_b=k_b, chunk=args.chunk, dtype=args.dtype,
                      overwrite=args.overwrite, scheduler=cluster.scheduler_address,
                      device="cuda" if args.gpus else "cpu", progress=progress,
                      log=lambda m: print(f"atbsn: {m}", file=sys.stderr))
    finally:
        cluster.close()
    for p in res.paths:
        print(f"wrote {p} ({res.units_computed} chunks computed, {res.units_resumed} resumed, {res.seconds:.0f} s)")
    return 0 if res.complete else 130


if __name__ == "__main__":
    sys.exit(main())
