"""k_b="auto": the blind spot chosen from the data, blended with the input, with its estimated gain; the same
output in memory, lazily and chunked to a file, and reported by the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import napari_atbsn
from napari_atbsn.block_blend import block_alpha
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
    # the sample's noise is correlated over two pixels and its autocorrelation decays inside the measured window:
    # the blind spots that cover it (5-11) are ranked by Noise2Self, the narrower ones (0-3) by SURE
    assert cal.reliable and set(cal.valid_ks) == {0, 1, 3, 5, 7, 9, 11} and cal.k_b in cal.valid_ks
    assert cal.gain_db == max(cal.gain_db, *(g for _, g in cal.candidates))  # the blend beats every k_b alone
    assert all(0.0 <= a <= 1.0 for a in cal.alpha)
    raw = drain(iter_denoise_outputs(model, noisy, "ZYX", ks=[cal.k_b]))[0]
    # (1 - alpha) y + alpha f with alpha per 128-px block and channel (one block per 128² plane here), each the
    # block's own (σ̂² - c) / mean (f - y)²
    y = noisy.astype(np.float32)
    for p in range(len(y)):
        a = block_alpha(raw[p][None], y[p][None], cal.model_for(None), np.asarray(cal.leak_ratio),
                        np.asarray(cal.alpha))
        assert a.min() == a.max() and 0.0 <= a.min() <= 1.0
        np.testing.assert_allclose(outs[0][p], y[p] + a[0] * (raw[p] - y[p]), rtol=0, atol=1e-3)


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
    assert line.startswith("estimated gain: +") and "dB over the input (k_b=" in line
    assert "blend=alpha per 128-px block" in line
    assert "estimated gain" in out.err


# -- the default output of a teacher, and the student that inherits it ---------------------------------------------

def test_a_teachers_default_output_is_auto(auto_result, tiny_teacher, sample_stack, tmp_path: Path, capsys) -> None:
    import tifffile

    model, outs = auto_result
    noisy, _ = sample_stack
    assert model.default_k_b == "auto" and model.name == "atbsn_auto"
    np.testing.assert_array_equal(model.denoise(noisy, "ZYX"), outs[0])
    tifffile.imwrite(tmp_path / "in.tif", noisy, metadata={"axes": "ZYX"}, photometric="minisblack")
    assert main(["denoise", str(tmp_path / "in.tif"), "-m", str(tiny_teacher), "-o", str(tmp_path / "o.tif")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("estimated gain: ")
    # a size fixed at training stays the default of that folder
    cfg = json.loads((tiny_teacher / "config.json").read_text())
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    for f in tiny_teacher.iterdir():
        if f.is_file():
            (fixed / f.name).write_bytes(f.read_bytes())
    (fixed / "config.json").write_text(json.dumps({**cfg, "k_b": 5}))
    five = load_model(fixed)
    assert five.default_k_b == 5 and five.k_b == 5
    np.testing.assert_array_equal(five.denoise(noisy, "ZYX"), five.denoise(noisy, "ZYX", k_b=5))


def test_the_student_learns_the_blended_targets_and_reports_on_held_out_rows(tiny_student) -> None:
    cfg = json.loads((tiny_student / "config.json").read_text())
    assert cfg["targets"] == "blended" and cfg["held_out_rows"] == 16  # 128-row planes: 1/8, at least 16
    q = cfg["quality"]
    assert q["teacher"]["k_b"] in q["teacher"]["valid_k_b"]
    s = q["student"]
    assert s["held_out"] and s["rows"] == [112, 128]
    # (sqrt R_g + sqrt D)^2 >= R_g: the bound from the teacher's estimate is below the teacher's gain; the
    # student's own estimate (SURE) is a number
    assert s["estimated_gain_bound_db"] <= s["teacher_estimated_gain_db"]
    assert np.isfinite(s["estimated_gain_db"])
    assert q["line"].startswith("student vs blended teacher on held-out rows 112-128")


def test_the_students_estimate_is_printed_when_it_denoises(tiny_student, sample_stack, tmp_path: Path,
                                                          capsys) -> None:
    import tifffile

    noisy, _ = sample_stack
    tifffile.imwrite(tmp_path / "in.tif", noisy, metadata={"axes": "ZYX"}, photometric="minisblack")
    assert main(["denoise", str(tmp_path / "in.tif"), "-m", str(tiny_student), "-o", str(tmp_path / "o.tif")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("estimated gain: ") and line.endswith("dB over the input (student)")


def test_light_noise_student_is_not_worse_than_the_input(tiny_teacher, tmp_path: Path) -> None:
    """A student distilled (blended targets) on the light-noise sample from a teacher trained on heavy noise."""
    from napari_atbsn.config import DistillConfig
    from napari_atbsn.sample_data import make_sample
    from napari_atbsn.training import distill

    noisy, clean = make_sample(planes=4, size=64, seed=11)
    light = (clean + (noisy.astype(np.float32) - clean) / 4).astype(np.float32)
    res = distill(light, tiny_teacher, "ZYX", DistillConfig(student="tiny", iters=60, batch=8, device="cpu"),
                  tmp_path / "s")
    rng = float(clean.max() - clean.min())
    out = res.model.denoise(light, "ZYX")
    assert psnr(out, clean, data_range=rng) >= psnr(light, clean, data_range=rng)


def test_separate_images_are_calibrated_with_their_own_noise_level(tiny_teacher, sample_stack) -> None:
    """Along S (separate images) each image's noise is measured on its own: an image with 3x the noise gets about
    9x the variance, which the pooled model of a Z stack of the same planes cannot say."""
    noisy, clean = sample_stack
    scale = np.array([1.0, 3.0, 1.0, 3.0]).reshape(-1, 1, 1)
    data = (clean + scale * (noisy.astype(np.float32) - clean)).astype(np.float32)
    model = load_model(tiny_teacher)
    cal = calibrate(model, data, "SYX")
    per = cal.noise_level["per_plane"]
    assert len(per) == 4
    var = [float(np.mean(p["variances"][0])) for p in per]
    assert 5 < var[1] / var[0] < 14 and 5 < var[3] / var[2] < 14, var
    # as planes of one Z stack they differ as much (per_unit.planes_differ), so they are calibrated one by one too
    planes = calibrate(model, data, "ZYX")
    assert planes.unit == "plane" and [p for p, _, _ in planes.images] == [0, 1, 2, 3]
    assert "worst plane:" in planes.line()
    assert "per_plane" not in calibrate(model, noisy, "ZYX").noise_level  # planes with one noise stay together
