"""k_b="auto": the blind spot chosen from the data, blended with the input, with its estimated gain; the same
output in memory, lazily and chunked to a file, and reported by the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import napari_atbsn
from napari_atbsn.cli import main
from napari_atbsn.errors import BlindSpotError
from napari_atbsn.events import drain
from napari_atbsn.inference.denoiser import load_model
from napari_atbsn.inference.inmemory import iter_denoise_outputs
from napari_atbsn.inference.quality import calibrate
from napari_atbsn.metrics import psnr


@pytest.fixture(scope="module")
def auto_result(tiny_teacher, sample_stack):
    noisy, _ = sample_stack
    model = load_model(tiny_teacher)
    return model, drain(iter_denoise_outputs(model, noisy, "ZYX", ks=["auto"]))


def test_auto_picks_a_valid_blind_spot_and_blends_towards_the_input(auto_result, sample_stack) -> None:
    model, outs = auto_result
    noisy, _ = sample_stack
    cal = outs.calibration
    # the sample's noise is correlated up to two pixels: only blind spots that cover it can be ranked
    assert cal.reliable and min(cal.valid_ks) >= 5 and cal.k_b in cal.valid_ks
    assert all(0.0 <= a <= 1.0 for a in cal.alpha)
    raw = drain(iter_denoise_outputs(model, noisy, "ZYX", ks=[cal.k_b]))[0]
    expected = noisy + np.float32(cal.alpha[0]) * (raw - noisy)  # (1 - alpha) y + alpha f, per channel
    np.testing.assert_allclose(outs[0], expected, rtol=0, atol=1e-3)


def test_auto_is_chunk_invariant_and_the_same_lazily(auto_result, tiny_teacher, sample_stack, tmp_path: Path) -> None:
    _, outs = auto_result
    noisy, _ = sample_stack
    res = napari_atbsn.denoise(noisy, tiny_teacher, tmp_path / "o.ome.zarr", axes="ZYX", k_b="auto", chunk=48)
    np.testing.assert_array_equal(np.asarray(res.open().data), outs[0])
    assert res.calibration == outs.calibration  # decided from the same sample, whatever the path
    job = json.loads((tmp_path / "o.ome.zarr" / ".zattrs").read_text())["napari_atbsn"]["job"]
    assert job["quality"]["k_b"] == outs.calibration.k_b and "estimated_gain_db" in job["quality"]
    lazy = napari_atbsn.denoise(noisy, load_model(tiny_teacher), None, axes="ZYX", k_b="auto", chunk=40)
    np.testing.assert_array_equal(np.asarray(lazy), outs[0])


def test_estimated_gain_is_close_to_the_true_gain(auto_result, sample_stack) -> None:
    _, outs = auto_result
    noisy, clean = sample_stack
    rng = float(clean.max() - clean.min())
    true_gain = psnr(outs[0], clean, data_range=rng) - psnr(noisy, clean, data_range=rng)
    assert true_gain > 0
    assert abs(outs.calibration.gain_db - true_gain) < 1.5, (outs.calibration.gain_db, true_gain)


def test_light_noise_auto_output_is_not_worse_than_the_input(tiny_teacher) -> None:
    """The sample with its noise scaled down 4x: a teacher trained on heavy noise over-smooths it, and
    the blend keeps the input where the network would lose texture."""
    from napari_atbsn.sample_data import make_sample

    noisy, clean = make_sample(planes=2, size=128, seed=11)
    light = (clean + (noisy.astype(np.float32) - clean) / 4).astype(np.float32)
    model = load_model(tiny_teacher)
    outs = drain(iter_denoise_outputs(model, light, "ZYX", ks=["auto"]))
    rng = float(clean.max() - clean.min())
    assert psnr(outs[0], clean, data_range=rng) >= psnr(light, clean, data_range=rng)


def test_calibration_is_deterministic(tiny_teacher, sample_stack) -> None:
    noisy, _ = sample_stack
    model = load_model(tiny_teacher)
    assert calibrate(model, noisy, "ZYX") == calibrate(model, noisy.copy(), "ZYX")


@pytest.mark.parametrize("k_b, match", [(["auto", 3], "give 'auto' alone"), ("best", "give 'auto' alone")])
def test_auto_mixed_with_sizes_is_refused(tiny_teacher, sample_stack, k_b, match) -> None:
    noisy, _ = sample_stack
    with pytest.raises(BlindSpotError, match=match):
        load_model(tiny_teacher).denoise(noisy, "ZYX", k_b=k_b)


def test_auto_is_refused_for_a_student(tiny_student, sample_stack) -> None:
    noisy, _ = sample_stack
    with pytest.raises(BlindSpotError, match="a distilled student has no blind spot"):
        load_model(tiny_student).denoise(noisy, "ZYX", k_b="auto")


def test_cli_denoise_auto_reports_the_estimated_gain(tiny_teacher, sample_stack, tmp_path: Path, capsys) -> None:
    import tifffile

    noisy, _ = sample_stack
    tifffile.imwrite(tmp_path / "in.tif", noisy, metadata={"axes": "ZYX"}, photometric="minisblack")
    rc = main(["denoise", str(tmp_path / "in.tif"), "-m", str(tiny_teacher), "-o", str(tmp_path / "o.tif"),
               "--k-b", "auto"])
    out = capsys.readouterr()
    assert rc == 0
    line = out.out.strip().splitlines()[-1]
    assert line.startswith("estimated gain: +") and "dB over the input (k_b=" in line and "blend=global" in line
    assert "estimated gain" in out.err
