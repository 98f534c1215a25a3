"""Stack context (issue 18): neighbouring planes along Z or T as input beside the blind-spot plane.

The blind-spot guarantee must stay exact (the output at a pixel ignores the plane's own noise inside its k x k
spot, and does use the neighbours there); the neighbours are read alike in memory, lazily and chunk by chunk;
shared noise between planes is refused; students, exports and the CLI carry the context.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_atbsn.axes import check_context_length, context_axis, context_offsets, neighbour_planes
from napari_atbsn.config import CONTEXT_DROPOUT
from napari_atbsn.errors import AxesError, ConfigError
from napari_atbsn.models import ATBSN, Student

# -- the neighbours ----------------------------------------------------------------------------------------------


def test_neighbours_are_mirrored_at_the_ends_and_never_the_plane_itself() -> None:
    assert context_offsets(2) == [-1, 1, -2, 2]
    assert neighbour_planes(0, "Z", (5,), 2, "Z") == [0, 1, 1, 2, 2]
    assert neighbour_planes(2, "Z", (5,), 2, "Z") == [2, 1, 3, 0, 4]
    assert neighbour_planes(4, "Z", (5,), 2, "Z") == [4, 3, 3, 2, 2]
    # planes numbered over T then Z: the context runs along Z inside one time point
    assert neighbour_planes(7, "TZ", (2, 5), 1, "Z") == [7, 6, 8]
    assert neighbour_planes(1, "TZ", (3, 5), 1, "T") == [1, 6, 6]
    for n in range(5):  # every plane of the shortest stack allowed: the centre is never its own neighbour
        assert n not in neighbour_planes(n, "Z", (5,), 2, "Z")[1:]
    assert context_axis("TZYX") == "Z" and context_axis("TCYX") == "T" and context_axis("SYX") is None


def test_images_without_enough_planes_are_refused_with_the_fix() -> None:
    with pytest.raises(AxesError, match=r"neither.*--context 0"):
        check_context_length("YX", (64, 64), 1)
    with pytest.raises(AxesError, match=r"at least 5 planes along Z; the image has 4.*--context 1"):
        check_context_length("ZYX", (4, 64, 64), 2)
    assert check_context_length("ZYX", (5, 64, 64), 2) == "Z"
    assert check_context_length("YX", (64, 64), 0) is None


# -- the blind spot stays exact ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("channels", [1, 2])
def test_the_plane_is_blind_inside_the_spot_and_the_neighbours_are_seen(k: int, channels: int) -> None:
    torch.manual_seed(0)
    model = ATBSN(channels, "tiny", context=1).eval()
    assert model.input_channels == 3 * channels
    x = torch.randn(1, 3 * channels, 32, 40, requires_grad=True)
    i, j = 17, 21
    model(x, k)[0, :, i, j].sum().backward()
    g = x.grad[0].abs()
    r = k // 2
    centre = g[:channels]
    assert torch.all(centre[:, i - r:i + r + 1, j - r:j + r + 1] == 0)  # exactly blind to the plane's own spot
    assert centre.sum() > 0  # ... and it sees the plane around it
    neighbours = g[channels:]
    assert torch.all(neighbours[:, i, j] > 0)  # the neighbours' pixel at the same place is seen
    assert torch.all(neighbours[:, i - r:i + r + 1, j - r:j + r + 1].sum(dim=(1, 2)) > 0)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("channels", [1, 2])
def test_in_2d_mode_the_plane_is_still_blind_inside_the_spot(k: int, channels: int) -> None:
    """A stack-context model given the plane alone (its 2-D mode: zeros for the neighbours, as context dropout
    trained it) keeps the exact blind spot."""
    torch.manual_seed(0)
    model = ATBSN(channels, "tiny", context=1).eval()
    assert model.single_plane and model.context_dropout == CONTEXT_DROPOUT
    x = torch.randn(1, channels, 32, 40, requires_grad=True)
    i, j = 17, 21
    out = model(x, k)
    out[0, :, i, j].sum().backward()
    g = x.grad[0].abs()
    r = k // 2
    assert torch.all(g[:, i - r:i + r + 1, j - r:j + r + 1] == 0)
    assert g.sum() > 0
    # exactly the network on the plane followed by zero neighbours, through one backbone pass for many k too
    full = torch.cat([x.detach(), torch.zeros(1, 2 * channels, 32, 40)], dim=1)
    with torch.no_grad():
        assert torch.equal(model(full, k), out.detach())
        assert torch.equal(model.teachers(x.detach(), [k])[0], out.detach())


def test_a_plane_alone_is_refused_by_a_network_trained_without_context_dropout() -> None:
    old = ATBSN(1, "tiny", context=1, context_dropout=0.0)
    assert not old.single_plane
    with pytest.raises(ConfigError, match="without context dropout"):
        old(torch.randn(1, 1, 32, 32))
    with pytest.raises(ConfigError, match=r"\(B, 3, Y, X\) or \(B, 1, Y, X\) for a plane alone"):
        ATBSN(1, "tiny", context=1)(torch.randn(1, 2, 32, 32))
    student = Student("tiny", 1, context=1)
    assert student(torch.randn(2, 1, 32, 32)).shape == (2, 1, 32, 32)
    with pytest.raises(ConfigError, match="without context dropout"):
        Student("tiny", 1, context=1, context_dropout=0.0)(torch.randn(2, 1, 32, 32))
    with pytest.raises(ConfigError, match="context_dropout"):
        ATBSN(1, "tiny", context=1, context_dropout=1.0)


def test_context_dropout_zeroes_the_neighbours_of_some_samples_by_seed_and_step() -> None:
    from napari_atbsn.sampling import drop_context

    def batch() -> np.ndarray:
        return np.ones((200, 6, 4, 4), np.float32)  # 2 channels, 1 neighbour on each side

    a = drop_context(batch(), 2, 0.2, seed=0, step=7)
    dropped = a[:, 2:].max(axis=(1, 2, 3)) == 0
    assert np.all(a[:, :2] == 1)  # the plane itself is never touched
    assert np.all(a[~dropped, 2:] == 1)  # a sample keeps all its neighbours or none
    assert 20 < dropped.sum() < 60  # about one in five
    np.testing.assert_array_equal(drop_context(batch(), 2, 0.2, seed=0, step=7), a)  # a resumed run drops the same
    assert not np.array_equal(drop_context(batch(), 2, 0.2, seed=0, step=8), a)
    assert np.all(drop_context(batch(), 2, 0.0, seed=0, step=7) == 1)
    assert drop_context(np.ones((4, 2, 4, 4), np.float32), 2, 0.2, seed=0, step=7).min() == 1  # a 2-D batch


def test_a_2d_model_is_unchanged_by_the_context_option() -> None:
    torch.manual_seed(0)
    plain = ATBSN(3, "paper")
    torch.manual_seed(0)
    same = ATBSN(3, "paper", context=0)
    assert sum(p.numel() for p in plain.parameters()) == 1_268_547  # the paper's count
    for (a, p), (b, q) in zip(plain.state_dict().items(), same.state_dict().items(), strict=True):
        assert a == b and torch.equal(p, q)


def test_student_c_starts_from_the_teacher_on_the_centre_plane() -> None:
    teacher = ATBSN(1, "paper", context=1)
    student = Student("C", 1, context=1)
    student.init_from_teacher(teacher)
    w = student.state_dict()["unet.intro.conv.weight"]
    assert torch.equal(w[:, :1], teacher.state_dict()["unet.intro.conv.weight"])
    assert torch.all(w[:, 1:] == 0)
    assert student(torch.randn(2, 3, 64, 64)).shape == (2, 1, 64, 64)
    with pytest.raises(ConfigError, match="context=9"):
        Student("A", 1, context=9)


# -- trained on a stack ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    from napari_atbsn.sample_data import make_sample

    noisy, _ = make_sample(planes=6, size=96, seed=5)
    return noisy


@pytest.fixture(scope="module")
def context_teacher(tmp_path_factory: pytest.TempPathFactory, stack: np.ndarray) -> Path:
    from napari_atbsn.config import TrainConfig
    from napari_atbsn.training import train

    out = tmp_path_factory.mktemp("ctx") / "teacher"
    train(stack, "ZYX", TrainConfig(preset="tiny", context=1, iters=40, patch=32, batch=4, k_a=3, device="cpu"),
          out)
    return out


def test_the_model_folder_records_its_context(context_teacher: Path) -> None:
    from napari_atbsn.inference.denoiser import load_model

    cfg = json.loads((context_teacher / "config.json").read_text())
    assert cfg["arch"]["context"] == 1 and cfg["train"]["context"] == 1
    assert cfg["arch"]["context_dropout"] == CONTEXT_DROPOUT  # trained for the 2-D mode too
    model = load_model(context_teacher)
    assert model.context == 1 and model.input_channels == 3 and model.single_plane


def test_in_memory_lazy_and_chunked_outputs_agree(context_teacher: Path, stack: np.ndarray, tmp_path: Path) -> None:
    import tifffile

    from napari_atbsn.inference import run
    from napari_atbsn.inference.denoiser import load_model
    from napari_atbsn.inference.lazy import lazy_denoise

    model = load_model(context_teacher)
    ref = model.denoise(stack, "ZYX", k_b=3)
    assert ref.shape == stack.shape
    # each plane denoised with its neighbours differs from the same plane denoised with other neighbours
    swapped = stack[[1, 0, 2, 3, 4, 5]]
    assert np.abs(model.denoise(swapped, "ZYX", k_b=3)[2] - ref[2]).max() > 1e-4
    tif = tmp_path / "in.tif"
    tifffile.imwrite(tif, stack)
    lazy = np.asarray(lazy_denoise(str(tif), model, axes="ZYX", k_b=3, chunk=48))
    np.testing.assert_array_equal(lazy, ref)
    for chunk in (32, 96):  # chunk by chunk from a file, in chunks smaller than a plane and whole planes
        out = tmp_path / f"out{chunk}.tif"
        run.denoise(str(tif), model, out, axes="ZYX", k_b=3, chunk=chunk)
        np.testing.assert_array_equal(tifffile.imread(out), ref)


def test_device_windows_read_the_neighbours_as_the_host_does(context_teacher: Path, stack: np.ndarray) -> None:
    from napari_atbsn.inference.denoiser import Denoiser, load_model
    from napari_atbsn.modelio import load_network

    host = load_model(context_teacher)
    net, cfg = load_network(context_teacher)
    device = Denoiser(net, cfg, windows_on_device=True)
    np.testing.assert_array_equal(device.denoise(stack[:4], "ZYX", k_b=3), host.denoise(stack[:4], "ZYX", k_b=3))
    # and the plane alone (2-D mode) with the plane's own constants
    np.testing.assert_array_equal(device.denoise(stack[0], "YX", k_b=3), host.denoise(stack[0], "YX", k_b=3))


def test_context_along_t_and_with_channels(context_teacher: Path, stack: np.ndarray) -> None:
    from napari_atbsn.inference.denoiser import load_model

    model = load_model(context_teacher)
    ref = model.denoise(stack, "ZYX", k_b=3)
    np.testing.assert_array_equal(model.denoise(stack, "TYX", k_b=3), ref)  # T when there is no Z
    tz = np.stack([stack, stack[::-1]])  # (T, Z, Y, X): the context runs along Z in each time point
    out = model.denoise(tz, "TZYX", k_b=3)
    np.testing.assert_array_equal(out[0], ref)
    np.testing.assert_array_equal(out[1], model.denoise(stack[::-1], "ZYX", k_b=3))


def test_a_context_model_denoises_a_single_plane_in_its_2d_mode_and_says_so(
        context_teacher: Path, stack: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 18: a context model denoises whatever a 2-D model does. Without usable neighbours (a single plane, a
    stack shorter than 2N + 1) each plane goes alone, the same in memory, lazily and to a file, and every path
    says why."""
    import logging

    import tifffile

    from napari_atbsn.events import drain
    from napari_atbsn.inference import run
    from napari_atbsn.inference.denoiser import load_model
    from napari_atbsn.inference.inmemory import iter_denoise_outputs
    from napari_atbsn.inference.lazy import lazy_denoise
    from napari_atbsn.inference.quality import calibrate

    model = load_model(context_teacher)
    with caplog.at_level(logging.WARNING, logger="napari_atbsn"):
        plane = model.denoise(stack[0], "YX", k_b=3)
    assert "stack context unused: the image (axes 'YX') has no Z or T axis" in caplog.text
    assert plane.shape == stack[0].shape and np.isfinite(plane).all()
    assert np.abs(plane - model.denoise(stack, "ZYX", k_b=3)[0]).max() > 1e-4  # not the output with the context
    short = stack[:2]  # 2 planes: 1 neighbour on each side needs 3
    outs = drain(iter_denoise_outputs(model, short, "ZYX", ks=[3]))
    assert outs.context_unused is not None and "2 plane(s) along Z, fewer than the 3" in outs.context_unused
    np.testing.assert_array_equal(outs[0][1], model.denoise(stack[1], "YX", k_b=3))  # each plane alone
    np.testing.assert_array_equal(np.asarray(lazy_denoise(short, model, axes="ZYX", k_b=3, chunk=48)), outs[0])
    tif = tmp_path / "short.tif"
    tifffile.imwrite(tif, short)
    res = run.denoise(str(tif), model, tmp_path / "o.tif", axes="ZYX", k_b=3, chunk=48)
    assert res.messages[0].startswith("stack context unused: 2 plane(s) along Z")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o.tif"), outs[0])
    cal = calibrate(model, stack[0], "YX")  # auto k_b: calibrated in the 2-D mode, which its sample records
    assert "stack context unused" in cal.sample and cal.gain_db is not None
    # an ROI still may not cut the context axis of a stack that has it: its ends would change
    whole = tmp_path / "in.tif"
    tifffile.imwrite(whole, stack)
    with pytest.raises(ConfigError, match="ROI cannot cut that axis"):
        run.denoise(str(whole), model, tmp_path / "r.tif", axes="ZYX", roi={"Z": slice(1, 3)})
    assert not (tmp_path / "r.tif").exists()


def test_a_context_folder_from_before_context_dropout_still_refuses_a_single_plane(
        context_teacher: Path, stack: np.ndarray, tmp_path: Path) -> None:
    import shutil

    from napari_atbsn.inference.denoiser import load_model

    old = tmp_path / "old"
    shutil.copytree(context_teacher, old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["arch"]["context_dropout"]  # what such a folder records
    (old / "config.json").write_text(json.dumps(cfg))
    model = load_model(old)
    assert not model.single_plane
    with pytest.raises(AxesError, match="neither"):
        model.denoise(stack[0], "YX")
    with pytest.raises(AxesError, match="at least 3 planes along Z; the image has 2"):
        model.denoise(stack[:2], "ZYX")


def test_auto_k_b_is_calibrated_with_the_neighbours(context_teacher: Path, stack: np.ndarray) -> None:
    from napari_atbsn.block_blend import block_alpha
    from napari_atbsn.inference.denoiser import load_model
    from napari_atbsn.inference.quality import calibrate

    model = load_model(context_teacher)
    cal = calibrate(model, stack, "ZYX")
    assert cal.gain_db is not None and len(cal.alpha) == 1
    out = model.denoise(stack, "ZYX")  # the default: auto, blended with the plane itself
    f = model.denoise(stack, "ZYX", k_b=cal.k_b).astype(np.float32)
    y = stack.astype(np.float32)
    for p in range(len(y)):  # each 128-px block's own weight (block_blend), with the plane, not its neighbours
        a = block_alpha(f[p][None], y[p][None], cal.model_for(None), np.asarray(cal.leak_ratio), np.asarray(cal.alpha))
        np.testing.assert_allclose(out[p], y[p] + a[0] * (f[p] - y[p]), rtol=0, atol=1e-3)


def test_the_default_context_is_chosen_from_the_data(stack: np.ndarray, tmp_path: Path) -> None:
    """Issue 18: the default is ``auto``, which takes neighbours where the stack has independent noise and none for
    a single image; the folder records the choice and why, and loads."""
    from napari_atbsn.config import AUTO_CONTEXT, TrainConfig
    from napari_atbsn.inference.denoiser import load_model
    from napari_atbsn.training import train

    assert TrainConfig().context == AUTO_CONTEXT
    quick = TrainConfig(preset="tiny", iters=2, patch=32, batch=2, k_a=3, device="cpu")
    train(stack, "ZYX", quick, tmp_path / "m")
    model = load_model(tmp_path / "m")
    assert model.context == 2 and "independent noise" in model.config["context_choice"]
    assert model.config["train"]["context"] == 2 and model.single_plane
    assert train(stack[0], "YX", quick).model.context == 0


def test_shared_noise_between_planes_is_refused(tmp_path: Path) -> None:
    from napari_atbsn.config import TrainConfig
    from napari_atbsn.sample_data import add_correlated_noise, make_clean
    from napari_atbsn.training import train

    clean = make_clean(planes=5, size=96, seed=2)
    noise = add_correlated_noise(np.zeros_like(clean[:1]) + 20, seed=3).astype(np.float32) - 120
    shared = clean + noise  # the same noise field in every plane
    with pytest.raises(ConfigError, match="--context 0"):
        train(shared, "ZYX", TrainConfig(preset="tiny", context=1, iters=2, patch=32, device="cpu"),
              tmp_path / "m")
    assert not (tmp_path / "m").exists()  # nothing left behind


def test_student_export_and_cli_carry_the_context(context_teacher: Path, stack: np.ndarray, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime as ort

    from napari_atbsn.cli import main
    from napari_atbsn.config import DistillConfig
    from napari_atbsn.exports import export
    from napari_atbsn.exports.graph import META_KEY, example_window
    from napari_atbsn.inference.denoiser import load_model
    from napari_atbsn.training import distill

    out = tmp_path / "student"
    distill(stack, context_teacher, "ZYX", DistillConfig(student="tiny", iters=10, batch=4, device="cpu"), out)
    student = load_model(out)
    assert student.context == 1 and student.denoise(stack, "ZYX").shape == stack.shape
    path = export(out, "onnx", tmp_path / "s.onnx")
    x = example_window(student, 2).numpy()
    assert x.shape[1] == 3
    got = ort.InferenceSession(str(path)).run(None, {"raw": x})[0]
    assert got.shape == (2, 1, student.patch, student.patch)
    span = float(np.ptp(got)) or 1.0
    np.testing.assert_allclose(got, student(x), rtol=0, atol=1e-4 * span)
    import onnx

    meta = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[META_KEY])
    assert meta["context"]["planes_each_side"] == 1 and meta["context"]["offsets"] == [-1, 1]
    assert main(["info", str(out)]) == 0
    assert "stack context  1 neighbouring plane(s) on each side along Z (else T); single planes alone too" in \
        capsys.readouterr().out
    # the BioImage Model Zoo package validates with the zoo's own test, its input naming the planes
    import zipfile

    import yaml
    from bioimageio.core import test_model

    zipped = export(out, "bioimageio", tmp_path / "s.zip", validate=False)
    summary = test_model(str(zipped))
    assert summary.status == "passed", [(d.name, d.status, [e.msg for e in d.errors]) for d in summary.details]
    with zipfile.ZipFile(zipped) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
    names = next(a for a in rdf["inputs"][0]["axes"] if a.get("type") == "channel")["channel_names"]
    assert names == ["channel0", "channel0_planem1", "channel0_planep1"]
    assert rdf["config"]["napari_atbsn"]["context"]["planes_each_side"] == 1


def test_a_single_z_plane_gives_the_context_to_t() -> None:
    from napari_atbsn.axes import context_axis

    assert context_axis("TZYX", (6, 1, 64, 64)) == "T"  # an OME TZCYX time-lapse of single planes
    assert context_axis("TZYX", (6, 3, 64, 64)) == "Z"
    assert check_context_length("TZYX", (6, 1, 64, 64), 2) == "T"
    with pytest.raises(AxesError, match=r"--context asks for 2 .* the image has 3: train with --context 1"):
        check_context_length("ZYX", (3, 64, 64), 2, training=True)


def _two_channel_model() -> object:
    from napari_atbsn.inference.denoiser import Denoiser
    from napari_atbsn.modelio import arch_dict

    torch.manual_seed(1)
    net = ATBSN(2, "tiny", context=1)
    cfg = {"kind": "atbsn", "arch": arch_dict(net), "patch": 32, "k_a": 3, "k_b": 3,
           "normalization": {"mode": "zscore", "offset": [100.0, 2000.0], "scale": [10.0, 300.0]}}
    return Denoiser(net, cfg)


def test_channels_and_planes_are_assembled_plane_by_plane() -> None:
    """A unit is the plane's C channels, then each neighbour's C channels (not interleaved), each normalised with
    the plane's own per-channel constants; the channel layout of the data does not matter."""
    from napari_atbsn.inference.geometry import Geometry
    from napari_atbsn.normalization import Normalization

    rng = np.random.default_rng(0)
    zcyx = rng.normal(0, 1, (4, 2, 16, 20)).astype(np.float32)
    unit = Geometry.of("ZCYX", zcyx.shape, context=1).read_unit(zcyx, 0, 0, 16, 0, 20)
    np.testing.assert_array_equal(unit, np.concatenate([zcyx[0], zcyx[1], zcyx[1]]))  # mirrored at the start
    zyxc = np.moveaxis(zcyx, 1, -1)
    np.testing.assert_array_equal(Geometry.of("ZYXC", zyxc.shape, context=1).read_unit(zyxc, 2, 0, 16, 0, 20),
                                  np.concatenate([zcyx[2], zcyx[1], zcyx[3]]))
    norm = Normalization("zscore", (1.0, 2.0), (3.0, 4.0)).tiled(3)
    assert norm.offset == (1.0, 2.0) * 3 and norm.scale == (3.0, 4.0) * 3

    model = _two_channel_model()
    stack = (rng.normal(0, 1, (4, 2, 40, 48)) * np.array([10, 300]).reshape(1, 2, 1, 1)
             + np.array([100, 2000]).reshape(1, 2, 1, 1)).astype(np.float32)
    ref = model.denoise(stack, "ZCYX", k_b=3)
    assert ref.shape == stack.shape
    np.testing.assert_array_equal(model.denoise(np.moveaxis(stack, 1, -1), "ZYXC", k_b=3), np.moveaxis(ref, 1, -1))
    # the second channel keeps its own range: the constants were not mixed up between channels or planes
    assert abs(float(ref[:, 1].mean()) - 2000) < 300 and abs(float(ref[:, 0].mean()) - 100) < 10


def test_two_channel_context_export_matches(tmp_path: Path) -> None:
    import onnxruntime as ort

    from napari_atbsn.exports.graph import example_window, to_onnx

    model = _two_channel_model()
    path = to_onnx(model, tmp_path / "m.onnx")
    x = example_window(model, 2).numpy()
    assert x.shape == (2, 6, 32, 32)
    got = ort.InferenceSession(str(path)).run(None, {"raw": x})[0]
    ref = model(x, 3)
    assert got.shape == ref.shape == (2, 2, 32, 32)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * float(np.ptp(ref)))


def test_dask_threads_read_the_neighbours_too(context_teacher: Path, stack: np.ndarray, tmp_path: Path) -> None:
    import tifffile

    from napari_atbsn.inference import run
    from napari_atbsn.inference.denoiser import load_model

    model = load_model(context_teacher)
    ref = model.denoise(stack, "ZYX", k_b=3)
    tif = tmp_path / "in.tif"
    tifffile.imwrite(tif, stack)
    run.denoise(str(tif), model, tmp_path / "o.tif", axes="ZYX", k_b=3, chunk=48, scheduler="threads", workers=2)
    # threads change torch's thread count, hence the last bits of its sums, never which planes a unit reads
    np.testing.assert_allclose(tifffile.imread(tmp_path / "o.tif"), ref, rtol=0, atol=1e-4 * float(np.ptp(ref)))


def test_a_stopped_chunked_run_resumes_to_the_same_planes(context_teacher: Path, stack: np.ndarray,
                                                          tmp_path: Path) -> None:
    import tifffile

    from napari_atbsn.inference import run
    from napari_atbsn.inference.denoiser import load_model

    model = load_model(context_teacher)
    ref = model.denoise(stack, "ZYX", k_b=3)
    tif, out = tmp_path / "in.tif", tmp_path / "o.tif"
    tifffile.imwrite(tif, stack)
    calls = iter(range(10**6))
    first = run.denoise(str(tif), model, out, axes="ZYX", k_b=3, chunk=48, should_stop=lambda: next(calls) >= 5)
    assert not first.complete and not out.exists()
    second = run.denoise(str(tif), model, out, axes="ZYX", k_b=3, chunk=48)
    assert second.complete and second.units_resumed > 0
    np.testing.assert_array_equal(tifffile.imread(out), ref)
