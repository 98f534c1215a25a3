"""The benchmark scripts: what can be checked without a GPU or the peers' packages.

``benchmarks/gpu.py --quick`` runs end to end on the CPU (the figures need a GPU; the script must not
rot without one), and the correlated-noise PSD that ``compare.py`` hands to BM3D is checked against
the PSD of noise whose filter is known.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_benchmark_runs_on_cpu_in_quick_mode() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--device", "cpu", "--quick"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    # header + 3 arithmetic variants x (training, distillation); header + (3 + the host-windows row) x 2 networks
    # x 2 windows; the end-to-end rows, student and teacher
    assert sum("teacher training |" in r for r in rows) == 3 and sum("distillation |" in r for r in rows) == 3
    assert sum(r.startswith(("| teacher (k_b 3), window ", "| student tiny, window ")) for r in rows) == 16
    assert sum("| default, windows on the host |" in r for r in rows) == 4
    assert sum(r.startswith(("| student tiny, mixed precision + channels-last (default) | ",
                             "| teacher (k_b 3), mixed precision + channels-last (default) | "))
               and "uint16" in r for r in rows) == 2
    # the student's rows say what denoising costs with its gain calibrated on the image, and with it given
    student = [r.split("|") for r in rows if r.startswith("| student tiny, window ")]
    assert all(float(c[6]) > 0 and float(c[7]) > 0 for c in student), student
    assert "8.3 it/s, 5.7 GB" in out.stdout and "11.1 it/s, 2.4 GB" in out.stdout


def test_gpu_profile_runs_on_cpu_in_quick_mode() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "gpu_profile.py"), "--device", "cpu", "--quick", "--trace"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith(("| student |", "| teacher |"))]
    assert len(rows) == 2 and all(len(r.split("|")) == 10 for r in rows), rows
    assert out.stdout.count("operators by host time") == 2


def test_gpu_benchmark_refuses_a_missing_gpu_clearly() -> None:
    import torch

    if torch.cuda.is_available():
        return
    out = subprocess.run([sys.executable, str(BENCH / "gpu.py")], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "no CUDA device here" in out.stderr


def test_psd_for_bm3d_matches_the_true_noise_psd() -> None:
    """Noise = white noise filtered by a known kernel on a smooth image: the PSD estimated from the data
    (bm3d's convention, E|FFT2(noise)|^2) has the right total power and shape."""
    sys.path.insert(0, str(BENCH))
    from compare import psd_from_analysis

    rng = np.random.default_rng(0)
    n = 256
    k = np.array([[0.05, 0.1, 0.05], [0.1, 1.0, 0.1], [0.05, 0.1, 0.05]])
    white = rng.normal(size=(n, n))
    noise = np.real(np.fft.ifft2(np.fft.fft2(white) * np.fft.fft2(k, (n, n)))) * 4.0
    yy, xx = np.mgrid[:n, :n]
    image = 100 + 20 * np.sin(xx / 40.0) + 15 * np.cos(yy / 55.0) + noise
    psd, sigma = psd_from_analysis(image.astype(np.float32), (n, n))
    true = np.abs(np.fft.fft2(k, (n, n))) ** 2 * 16.0 * n * n
    assert psd.shape == (n, n) and (psd > 0).all()
    assert abs(sigma - noise.std()) < 0.1 * noise.std()
    assert abs(psd.mean() / true.mean() - 1) < 0.15  # total power = variance x pixels
    # the shape: low frequencies carry more power than high ones, as in the truth
    assert np.corrcoef(psd.ravel(), true.ravel())[0, 1] > 0.9


def test_host_overhead_benchmark_runs_and_checks_the_identity_pipeline_is_exact() -> None:
    """The script asserts every identity output equals its input; at small sizes it runs in seconds."""
    out = subprocess.run([sys.executable, str(BENCH / "host_overhead.py"), "--planes", "2", "--size", "256",
                          "--repeats", "1", "--batch", "4"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for table in ("### In memory", "### Files", "### Training sampler"):
        assert table in out.stdout
    assert out.stdout.count("| .ome.zarr |") == 3 and "auto (calibration + blend)" in out.stdout
