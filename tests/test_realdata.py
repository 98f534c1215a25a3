"""Opt-in checks on the real noisy data in ../shared/data (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_atbsn.config import TrainConfig
from napari_atbsn.io.files import read_image
from napari_atbsn.metrics import psnr
from napari_atbsn.sample_data import neighbour_correlation
from napari_atbsn.training import train

pytestmark = pytest.mark.realdata
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FMD = SHARED_DATA / "fmd_confocal_dev"
POLYU = SHARED_DATA / "polyu_dev"


@pytest.mark.skipif(not POLYU.exists(), reason="../shared/data/polyu_dev is absent")
def test_polyu_reads_as_rgb_with_correlated_noise() -> None:
    noisy_path = sorted(POLYU.glob("*_real.JPG"))[0]
    noisy, axes = read_image(noisy_path)
    clean, _ = read_image(str(noisy_path).replace("_real", "_mean"))
    assert axes == "YXC" and noisy.dtype == np.uint8 and noisy.shape[-1] == 3
    noise = noisy.astype(float) - clean
    assert neighbour_correlation(np.moveaxis(noise, -1, 0)) > 0.4  # why AT-BSN exists


@pytest.mark.skipif(not FMD.exists(), reason="../shared/data/fmd_confocal_dev is absent")
def test_fmd_teacher_beats_the_noisy_frames() -> None:
    frames = sorted((FMD / "raw" / "1").glob("*.png"))[:8]
    stack = np.stack([read_image(f)[0] for f in frames])[:, 128:256, 128:256]
    gt = read_image(FMD / "gt" / "1" / "avg50.png")[0][128:256, 128:256].astype(np.float32)
    # Nearly pixel-independent noise: a 1-pixel blind spot (method.md Decision 9).
    res = train(stack, "ZYX", TrainConfig(preset="tiny", k_a=1, iters=150, patch=32, batch=8, context=0,
                                         device="cpu"))  # 2-D: stack context is measured apart
    den = res.model.denoise(stack[:2], "ZYX", k_b=1)
    ref = np.broadcast_to(gt, den.shape)
    assert psnr(den, ref, 255) > psnr(stack[:2], ref, 255) + 1.0
