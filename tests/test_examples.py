"""The SLURM example script: its job script, and the same code on a local process cluster."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tifffile

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "slurm_denoise.py"


@pytest.fixture(scope="module")
def example():
    pytest.importorskip("dask_jobqueue")
    pytest.importorskip("distributed")
    spec = importlib.util.spec_from_file_location("slurm_denoise", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_job_script_asks_slurm_for_what_the_user_gave(example, capsys) -> None:
    code = example.main(["in.tif", "-m", "model", "-o", "out.ome.zarr", "--cores", "6", "--memory", "20GB",
                         "--walltime", "01:30:00", "--queue", "gpu", "--account", "lab42", "--gpus", "1",
                         "--print-job-script"])
    script = capsys.readouterr().out
    assert code == 0
    for line in ("#SBATCH -J atbsn-denoise", "#SBATCH -p gpu", "#SBATCH -A lab42", "#SBATCH -n 1",
                 "#SBATCH --cpus-per-task=6", "#SBATCH -t 01:30:00", "#SBATCH --gres=gpu:1"):
        assert line in script, line
    assert "#SBATCH --mem=" in script and "distributed.cli.dask_worker" in script and "--nthreads 1" in script


def test_local_cluster_run_equals_a_single_process_run(example, tmp_path: Path, tiny_teacher: Path) -> None:
    from napari_atbsn.inference.denoiser import load_model
    from napari_atbsn.inference.run import denoise
    from napari_atbsn.io.readers import open_image

    src = tmp_path / "in.tif"
    tifffile.imwrite(src, np.random.default_rng(1).normal(107, 9, (3, 64, 80)).astype(np.float32),
                     metadata={"axes": "ZYX"})
    ref = denoise(src, tiny_teacher, tmp_path / "ref.ome.zarr", chunk=32, device="cpu")
    code = example.main([str(src), "-m", str(tiny_teacher), "-o", str(tmp_path / "out.ome.zarr"), "--local",
                         "--jobs", "2", "--chunk", "32"])
    assert code == 0
    a = np.asarray(open_image(tmp_path / "out.ome.zarr").data)
    b = np.asarray(open_image(ref.paths[0]).data)
    scale = max(load_model(tiny_teacher).normalization.scale)
    assert np.max(np.abs(a - b)) <= 1e-5 * scale  # float32 rounding of other thread counts, in normalised units
