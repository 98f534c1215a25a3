"""Chunked, out-of-core denoising: invariance, resume, outputs, schedulers, errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_atbsn.errors import ATBSNError, BlindSpotError, ConfigError, DeviceError, WriteError
from napari_atbsn.inference.denoiser import load_model
from napari_atbsn.inference.lazy import lazy_denoise
from napari_atbsn.inference.plan import auto_chunk, plan_job
from napari_atbsn.inference.run import denoise, iter_run
from napari_atbsn.io.readers import open_image
from napari_atbsn.tiling import Box


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-channel tiny teacher (a few steps: the invariances do not need a good model)."""
    from napari_atbsn.config import TrainConfig
    from napari_atbsn.training import train

    out = tmp_path_factory.mktemp("models") / "two_channel"
    data = np.random.default_rng(0).normal(100, 10, size=(2, 2, 40, 40)).astype(np.float32)
    train(data, "ZCYX", TrainConfig(preset="tiny", iters=2, patch=32, batch=2, device="cpu"), out)
    return out


def _read(path: Path) -> np.ndarray:
    return np.asarray(open_image(path).data)


def _same(a: np.ndarray, b: np.ndarray, model) -> bool:
    """Equal up to float32 rounding: <= 1e-5 in the model's normalised units (about 1 ppm of the data range).

    Identical settings give identical bytes; other torch thread counts (workers) may round differently.
    """
    return a.shape == b.shape and float(np.max(np.abs(a.astype(np.float64) - b))) <= 1e-5 * max(
        model.normalization.scale)


def _volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """uint16 noise in the range of the models' training data (the sample: offset 100, a few counts of noise)."""
    rng = np.random.default_rng(seed)
    return (107 + 9 * rng.normal(size=shape)).clip(0, 65535).astype(np.uint16)


CASES = [("YX", (77, 101)), ("ZYX", (3, 45, 70)), ("ZCYX", (2, 2, 50, 41)), ("YXC", (37, 66, 2))]


@pytest.mark.parametrize("axes, shape", CASES)
def test_chunk_size_does_not_change_the_result(tmp_path: Path, tiny_teacher: Path, rgb_model: Path, axes: str,
                                               shape: tuple[int, ...]) -> None:
    model = load_model(rgb_model if "C" in axes else tiny_teacher)
    img = _volume(shape)
    small = denoise(img, model, tmp_path / "c16.ome.zarr", axes=axes, chunk=16)
    big = denoise(img, model, tmp_path / "c1024.ome.zarr", axes=axes, chunk=1024)
    assert small.complete and big.complete and small.units_total > big.units_total
    a, b = _read(small.paths[0]), _read(big.paths[0])
    assert a.shape == b.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # same settings, same bytes: stronger than the 1e-5 required
    # ... and equals the in-memory path (one chunk per plane), in the input's axes order
    direct = model.denoise(img, axes)
    np.testing.assert_allclose(np.asarray(big.open().data).transpose(_to_input(big.open().axes, axes)), direct,
                               atol=1e-5)


def _to_input(out_axes: str, in_axes: str) -> list[int]:
    return [out_axes.index(a) for a in in_axes]


def test_result_equals_direct_evaluation_of_each_window(tmp_path: Path, tiny_teacher: Path) -> None:
    """Each output pixel is its window's kept centre with that window run alone through the network."""
    from napari_atbsn.tiling import plan_windows

    model = load_model(tiny_teacher)
    img = _volume((70, 90), seed=4).astype(np.float32)
    res = denoise(img, model, tmp_path / "o.ome.zarr", axes="YX", chunk=24, k_b=3)
    out = _read(res.paths[0])
    norm = model.normalization
    expected = np.full(img.shape, np.nan, np.float32)
    w = model.patch
    for ys, xs in plan_windows(*img.shape, w, model.halo):
        win = img[None, None, ys.start:ys.start + w, xs.start:xs.start + w]
        y = norm.undo(model.run_windows(norm.apply(win), [None])[0])[0, 0]
        expected[ys.keep_start:ys.keep_stop, xs.keep_start:xs.keep_stop] = \
            y[ys.keep_start - ys.start:ys.keep_stop - ys.start, xs.keep_start - xs.start:xs.keep_stop - xs.start]
    assert np.max(np.abs(out - expected)) <= 1e-5


def test_roi_equals_the_same_pixels_of_a_full_run(tmp_path: Path, tiny_teacher: Path) -> None:
    model = load_model(tiny_teacher)
    img = _volume((4, 60, 80), seed=5)
    full = _read(denoise(img, model, tmp_path / "full.ome.zarr", axes="ZYX", chunk=32).paths[0])
    part = denoise(img, model, tmp_path / "roi.ome.zarr", axes="ZYX", roi="Z=1:3,Y=7:50,X=20:", chunk=32)
    np.testing.assert_allclose(_read(part.paths[0]), full[1:3, 7:50, 20:], atol=1e-5)


def test_schedulers_and_workers_give_the_same_result(tmp_path: Path, tiny_teacher: Path) -> None:
    model = load_model(tiny_teacher)
    img = _volume((3, 50, 64), seed=6)
    tif = tmp_path / "in.tif"
    tifffile.imwrite(tif, img, metadata={"axes": "ZYX"})
    ref = _read(denoise(tif, model, tmp_path / "sync.ome.zarr", chunk=32).paths[0])
    for sched, workers in (("threads", 1), ("threads", 2), ("processes", 2)):
        res = denoise(tif, model, tmp_path / f"{sched}{workers}.ome.zarr", chunk=32, scheduler=sched, workers=workers)
        assert res.complete
        assert _same(_read(res.paths[0]), ref, model), (sched, workers)


def test_distributed_scheduler_gives_the_same_result(tmp_path: Path, tiny_teacher: Path) -> None:
    distributed = pytest.importorskip("distributed")
    model = load_model(tiny_teacher)
    img = _volume((2, 40, 50), seed=7)
    ref = _read(denoise(img, model, tmp_path / "sync.ome.zarr", axes="ZYX", chunk=32).paths[0])
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://",
                                  dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://")
        res = denoise(img, model, tmp_path / "dist.ome.zarr", axes="ZYX", chunk=32, scheduler=cluster.scheduler_address)
    assert _same(_read(res.paths[0]), ref, model)


def test_stopped_job_resumes_to_a_byte_identical_result(tmp_path: Path, tiny_teacher: Path) -> None:
    model = load_model(tiny_teacher)
    img = _volume((3, 64, 64), seed=8)
    ref = denoise(img, model, tmp_path / "ref.tif", axes="ZYX", chunk=32)
    out = tmp_path / "o.tif"
    calls = {"n": 0}

    def stop_after_five() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    first = denoise(img, model, out, axes="ZYX", chunk=32, should_stop=stop_after_five)
    assert not first.complete and not out.exists()
    work = tmp_path / ".o.tif.partial"
    assert work.is_dir() and 0 < len(list((work / ".atbsn-done").iterdir())) < first.units_total
    second = denoise(img, model, out, axes="ZYX")  # same job: resumes with the stored chunk size
    assert second.complete and second.units_resumed > 0
    assert second.units_computed + second.units_resumed == second.units_total
    assert out.read_bytes() == ref.paths[0].read_bytes()
    assert not work.exists()


@pytest.mark.parametrize("name", ["o.ome.zarr", "o.tif"])
def test_sigkill_at_any_moment_then_rerun_gives_identical_bytes(tmp_path: Path, tiny_teacher: Path, name: str,
                                                                 ) -> None:
    """Kill -9 a real `atbsn denoise` mid-way; the same command finishes it, equal to an uninterrupted run, for an
    OME-Zarr (chunks in the work store) and a TIFF (written in place, under a hidden name until complete)."""
    import signal
    import subprocess
    import sys
    import time

    img = _volume((6, 96, 96), seed=9)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, img, metadata={"axes": "ZYX"})
    # a fixed k_b: the calibration of auto (tested elsewhere) would triple the time of each run
    cmd = [sys.executable, "-m", "napari_atbsn", "denoise", str(src), "-m", str(tiny_teacher), "--chunk", "32",
           "--device", "cpu", "--dtype", "input", "--k-b", "3"]
    ref = tmp_path / name.replace("o.", "ref.")
    subprocess.run([*cmd, "-o", str(ref)], check=True, capture_output=True)
    out = tmp_path / name
    done_dir = tmp_path / f".{name}.partial" / ".atbsn-done"
    proc = subprocess.Popen([*cmd, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not done_dir.exists() or len(list(done_dir.iterdir())) < 10):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed run must not leave an output that looks complete"
    n_done = len(list(done_dir.iterdir()))
    assert 10 <= n_done < 6 * 9
    rerun = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr
    if name.endswith(".tif"):
        assert out.read_bytes() == ref.read_bytes()
        assert not list(tmp_path.glob(".o.tif*"))  # no work store, no hidden file left
        return
    ref_arr, out_arr = zarr.open_array(ref / "0"), zarr.open_array(out / "0")
    assert out_arr.dtype == np.uint16
    np.testing.assert_array_equal(out_arr[:], ref_arr[:])
    for chunk in sorted((ref / "0").rglob("*")):  # the stored chunks, byte for byte
        rel = chunk.relative_to(ref)
        if chunk.is_file() and rel.name != ".zattrs":
            assert (out / rel).read_bytes() == chunk.read_bytes(), rel


def test_ome_zarr_output_has_ngff_multiscales(tmp_path: Path, tiny_teacher: Path, monkeypatch) -> None:
    import napari_atbsn.io.outputs as outputs

    monkeypatch.setattr(outputs, "PYRAMID_MAX_SIDE", 40)
    model = load_model(tiny_teacher)
    img = _volume((2, 90, 70), seed=10)
    res = denoise(img, model, tmp_path / "o.ome.zarr", axes="ZYX", chunk=32, dtype="input")
    attrs = json.loads((res.paths[0] / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert all(a["type"] == "space" for a in ms["axes"])
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 2.0]
    g = zarr.open_group(res.paths[0], mode="r")
    assert g["0"].shape == (2, 90, 70) and g["1"].shape == (2, 45, 35) and g["2"].shape == (2, 23, 18)
    assert g["1"].dtype == np.uint16
    lvl0 = g["0"][:].astype(np.float64)
    np.testing.assert_allclose(g["1"][:, :44, :34], np.rint(lvl0[:, :88, :68].reshape(2, 44, 2, 34, 2).mean((2, 4))),
                               atol=0.5)
    assert attrs["napari_atbsn"]["complete"] is True and attrs["napari_atbsn"]["job"]["model"]["name"] == "atbsn_auto"
    assert not (res.paths[0] / ".atbsn-done").exists()
    ome_zarr = pytest.importorskip("ome_zarr.reader")  # the library napari-ome-zarr uses
    from ome_zarr.io import parse_url

    nodes = list(ome_zarr.Reader(parse_url(str(res.paths[0])))())
    assert nodes and len(nodes[0].data) == 3 and nodes[0].data[0].shape == (2, 90, 70)


def test_tiff_output_is_contiguous_bigtiff_with_axes(tmp_path: Path, rgb_model: Path) -> None:
    model = load_model(rgb_model)
    img = _volume((2, 50, 41, 2), seed=11)
    res = denoise(img, model, tmp_path / "o.tif", axes="ZYXC", chunk=32, dtype="input")
    with tifffile.TiffFile(res.paths[0]) as tf:
        # strips, not tiles (ImageJ's own reader opens it), all pixels in one run (it memory-maps)
        assert tf.is_bigtiff and not tf.pages[0].is_tiled and tf.series[0].axes == "ZCYX"
        assert tf.series[0].dataoffset is not None
        data = tf.series[0].asarray()
    zres = denoise(img, model, tmp_path / "o.ome.zarr", axes="ZYXC", chunk=32, dtype="input")
    zarr_img = open_image(zres.paths[0])
    assert zarr_img.axes == "CZYX"
    np.testing.assert_array_equal(data, np.asarray(zarr_img.data).transpose(1, 0, 2, 3))
    assert data.dtype == np.uint16
    npy = denoise(img, model, tmp_path / "o.npy", axes="ZYXC", chunk=32, dtype="input")
    np.testing.assert_array_equal(np.load(npy.paths[0]), data)


def test_several_k_b_give_several_outputs_from_one_pass(tmp_path: Path, tiny_teacher: Path) -> None:
    model = load_model(tiny_teacher)
    img = _volume((50, 60), seed=12)
    res = denoise(img, model, tmp_path / "o.ome.zarr", axes="YX", k_b=[1, 5], chunk=32)
    assert [p.name for p in res.paths] == ["o_kb1.ome.zarr", "o_kb5.ome.zarr"]
    for k, p in zip([1, 5], res.paths, strict=True):
        np.testing.assert_allclose(_read(p), model.denoise(img, "YX", k_b=k), atol=1e-5)
    lazy = lazy_denoise(img, model, axes="YX", k_b=[1, 5], chunk=20)
    np.testing.assert_allclose(lazy[1].compute(), _read(res.paths[1]), atol=1e-5)


def test_lazy_result_reads_only_what_is_asked(tiny_teacher: Path) -> None:
    model = load_model(tiny_teacher)
    img = _volume((5, 64, 64), seed=13)
    lazy = denoise(img, model, axes="ZYX", chunk=32)
    assert lazy.shape == img.shape and lazy.dtype == np.float32
    # the default (auto) decided once on the volume, as the in-memory run of the whole volume decides it
    np.testing.assert_allclose(lazy[2, 32:, :32].compute(), model.denoise(img, "ZYX")[2, 32:, :32], atol=1e-5)


def test_existing_output_is_never_clobbered_and_overwrite_replaces_only_when_done(tmp_path: Path,
                                                                                  tiny_teacher: Path) -> None:
    model = load_model(tiny_teacher)
    img = _volume((40, 40))
    out = tmp_path / "o.tif"
    out.write_bytes(b"precious")
    with pytest.raises(WriteError, match="--overwrite"):
        denoise(img, model, out, axes="YX")
    assert out.read_bytes() == b"precious"
    polls = {"n": 0}

    def stop_after_two() -> bool:
        polls["n"] += 1
        return polls["n"] > 2

    res = denoise(img, model, out, axes="YX", chunk=16, overwrite=True, should_stop=stop_after_two)
    assert not res.complete and out.read_bytes() == b"precious"  # kept until the new one is complete
    res = denoise(img, model, out, axes="YX", overwrite=True)  # the same job: continued, not restarted
    assert res.complete and res.units_resumed == 2 and res.chunk == 16
    assert tifffile.imread(out).shape == (40, 40)


def test_a_different_partial_job_is_refused(tmp_path: Path, tiny_teacher: Path) -> None:
    model = load_model(tiny_teacher)
    img = _volume((40, 40))
    out = tmp_path / "o.ome.zarr"
    denoise(img, model, out, axes="YX", chunk=16, should_stop=lambda: True)
    with pytest.raises(WriteError, match=r"different job.*k_b"):
        denoise(img, model, out, axes="YX", k_b=5)
    with pytest.raises(WriteError, match="chunk=16"):
        denoise(img, model, out, axes="YX", chunk=32)
    assert denoise(img, model, out, axes="YX", k_b=5, overwrite=True).complete


def test_out_of_memory_backs_off_the_batch_size(tmp_path: Path, tiny_teacher: Path, monkeypatch) -> None:
    model = load_model(tiny_teacher)
    img = _volume((60, 60))
    ref = _read(denoise(img, model, tmp_path / "ref.ome.zarr", axes="YX", batch_size=2).paths[0])
    real = model.run_windows

    def limited(x, ks):
        if len(x) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(x, ks)

    monkeypatch.setattr(model, "run_windows", limited)
    logs: list[str] = []
    res = denoise(img, model, tmp_path / "o.ome.zarr", axes="YX", batch_size=8, log=logs.append)
    assert res.complete and any("batch-size 4" in m for m in logs) and any("batch-size 2" in m for m in logs)
    assert np.max(np.abs(_read(res.paths[0]) - ref)) <= 1e-5

    def never(x, ks):
        raise RuntimeError("CUDA out of memory.")

    monkeypatch.setattr(model, "run_windows", never)
    with pytest.raises(DeviceError, match="one 32-pixel window"):
        denoise(img, model, tmp_path / "o2.ome.zarr", axes="YX", batch_size=2)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"k_b": 4}, BlindSpotError, "even"),
    ({"k_b": [3, 3]}, BlindSpotError, "repeats"),
    ({"chunk": 0}, ConfigError, "chunk=0"),
    ({"window": 32, "halo": 16}, ConfigError, "no centre"),
    ({"window": 1024}, ConfigError, "larger than this teacher's training patch"),
    ({"window": 12, "halo": 2}, ConfigError, "not size-invariant"),
    ({"dtype": "int8"}, ConfigError, "float32 or input"),
    ({"roi": "Q=1:2"}, ATBSNError, "Q"),
    ({"axes": "ZCYX"}, ATBSNError, "ZCYX"),
])
def test_bad_settings_fail_before_anything_is_written(tmp_path: Path, tiny_teacher: Path, kwargs, error,
                                                      message) -> None:
    model = load_model(tiny_teacher)
    kwargs = {"axes": "ZYX", **kwargs}
    with pytest.raises(error, match=message):
        plan_job(_volume((2, 40, 40)), model, tmp_path / "o.ome.zarr", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_output_type_and_folder_errors(tmp_path: Path, tiny_teacher: Path) -> None:
    model = load_model(tiny_teacher)
    img = _volume((40, 40))
    with pytest.raises(WriteError, match="unsupported output type"):
        plan_job(img, model, tmp_path / "o.png", axes="YX")
    with pytest.raises(WriteError, match="does not exist"):
        plan_job(img, model, tmp_path / "no" / "o.tif", axes="YX")
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, img)
    with pytest.raises(WriteError, match="is the input"):
        plan_job(src, model, src, overwrite=True)


def test_auto_chunk_follows_free_memory() -> None:
    region = Box(0, 20000, 0, 20000)
    big = auto_chunk(128, 32, 1, 1, 1, region, memory=64 << 30)
    small = auto_chunk(128, 32, 1, 1, 1, region, memory=256 << 20)
    assert big == 2048 and small < big and small % 64 == 0
    assert auto_chunk(128, 32, 1, 1, 1, Box(0, 100, 0, 90), memory=64 << 30) == 128  # no larger than the image
    assert auto_chunk(128, 32, 1, 1, 1, region, memory=1) == 64  # at least one core


def test_progress_counts_every_window_once(tmp_path: Path, tiny_teacher: Path) -> None:
    model = load_model(tiny_teacher)
    job = plan_job(_volume((2, 40, 70)), model, tmp_path / "o.ome.zarr", axes="ZYX", chunk=24)
    events = list(_gen(iter_run(job)))
    done, total = events[-1]
    assert done == total == sum(job.grid.count(b) for _, b in job.units())
    assert all(b[0] >= a[0] for a, b in itertools.pairwise(events))


def _gen(g):
    try:
        while True:
            yield next(g)
    except StopIteration:
        return


def test_samples_and_channels_go_to_tiff_but_not_to_ome_zarr(tmp_path: Path, rgb_model: Path) -> None:
    from napari_atbsn.errors import AxesError

    model = load_model(rgb_model)
    img = _volume((2, 2, 40, 40), seed=14)
    with pytest.raises(AxesError, match=r"write a \.tif"):
        denoise(img, model, tmp_path / "o.ome.zarr", axes="SCYX")
    res = denoise(img, model, tmp_path / "o.tif", axes="SCYX")
    back = open_image(res.paths[0])
    assert back.axes == "SCYX" and back.shape == (2, 2, 40, 40)


def test_a_second_writer_to_the_same_output_is_refused(tmp_path: Path, tiny_teacher: Path) -> None:
    import fcntl

    model = load_model(tiny_teacher)
    out = tmp_path / "o.ome.zarr"
    with open(tmp_path / ".o.ome.zarr.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running job holds it
        with pytest.raises(WriteError, match="another atbsn denoise is writing"):
            denoise(_volume((40, 40)), model, out, axes="YX")
        assert (tmp_path / ".o.ome.zarr.lock").exists()  # the refused run leaves the holder's lock alone
    assert denoise(_volume((40, 40)), model, out, axes="YX").complete
    assert not (tmp_path / ".o.ome.zarr.lock").exists()


def test_a_different_array_of_the_same_shape_is_not_resumed_into(tmp_path, tiny_student) -> None:
    """Two napari layers of one shape: the partial output of one must not be continued with the other."""
    from napari_atbsn.events import drain

    a = np.random.default_rng(0).normal(100, 5, (2, 64, 64)).astype(np.float32)
    b = a.copy()
    b[1, 30, 30] += 1  # one pixel apart
    model = load_model(tiny_student)
    out = tmp_path / "out.ome.zarr"
    calls = itertools.count()
    res = drain(iter_run(plan_job(a, model, out, axes="ZYX", chunk=32), should_stop=lambda: next(calls) >= 3))
    assert not res.complete and res.units_computed >= 1  # stopped: a partial output of a
    with pytest.raises(WriteError, match="input"):
        denoise(b, model, out, axes="ZYX", chunk=32)
    res = denoise(a, model, out, axes="ZYX", chunk=32)  # the same array continues it
    assert res.complete and res.units_resumed >= 1


@pytest.mark.parametrize("chunk, unit_levels", [(32, 1), (64, 2), (24, 0), (1024, 3)])
def test_pyramid_levels_written_by_the_units_equal_the_pyramid_built_at_the_end(
        tmp_path: Path, tiny_teacher: Path, monkeypatch, chunk: int, unit_levels: int) -> None:
    """Units write their share of the levels whose chunks their chunk fills (32 px: level 1 at 16 px; 64: levels
    1-2; 24: none, 24/2 is under the minimum; one unit per plane: all), the rest is built at the end, and
    every level is what the old build-everything-at-the-end gives, bit for bit, odd sizes included."""
    import napari_atbsn.io.outputs as outputs

    monkeypatch.setattr(outputs, "PYRAMID_MAX_SIDE", 20)
    monkeypatch.setattr(outputs, "MIN_UNIT_LEVEL_CHUNK", 16)
    model = load_model(tiny_teacher)
    img = _volume((2, 91, 70), seed=12).astype(np.float32)
    seen: list[int] = []
    real_prepare = outputs.OutputStore.prepare

    def prepare(self, **kw):
        seen.append(self.unit_levels())
        return real_prepare(self, **kw)

    monkeypatch.setattr(outputs.OutputStore, "prepare", prepare)
    res = denoise(img, model, tmp_path / "o.ome.zarr", axes="ZYX", k_b=3, chunk=chunk)
    assert seen == [unit_levels]
    g = zarr.open_group(res.paths[0], mode="r")
    assert [g[str(i)].shape for i in range(4)] == [(2, 91, 70), (2, 46, 35), (2, 23, 18), (2, 12, 9)]
    ref = zarr.open_group(tmp_path / "ref.zarr", mode="w", zarr_format=2)
    ref.create_array("0", data=g["0"][:], chunks=g["0"].chunks)
    assert outputs.build_pyramid(ref, "ZYX") == 4
    for level in range(1, 4):
        np.testing.assert_array_equal(g[str(level)][:], ref[str(level)][:])
    if unit_levels > 0 and chunk < 91:
        assert g["1"].chunks == (1, chunk // 2, chunk // 2)  # one level chunk per unit: no two units share one


def test_halve_is_the_2x2_mean_of_dask_coarsen_bit_for_bit() -> None:
    import dask.array as da

    from napari_atbsn.io.outputs import halve, to_dtype

    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.uint16):
        x = (rng.lognormal(3, 2, size=(2, 3, 41, 30)) * 50).astype(dtype)
        prev = da.pad(da.from_array(x, chunks=(1, 3, 16, 16)), [(0, 0), (0, 0), (0, 1), (0, 0)], mode="edge")
        want = to_dtype(da.coarsen(np.mean, prev.astype(np.float64), {2: 2, 3: 2}), dtype).compute()
        np.testing.assert_array_equal(halve(x, "ZCYX", dtype), want)


def test_a_failed_background_write_stops_the_job_with_its_error_and_leaves_no_false_marker(
        tmp_path: Path, tiny_teacher: Path, monkeypatch) -> None:
    """Units are stored by a writer thread while the next one computes: a write that fails (disk full) stops
    the run with the WriteError, the failed unit has no marker, and the same command then finishes the job
    identically."""
    import napari_atbsn.inference.schedulers as schedulers

    model = load_model(tiny_teacher)
    img = _volume((3, 64, 64), seed=13)
    real = schedulers.write_unit
    calls = []

    def failing(spec, stores, n, box, result):
        calls.append(n)
        if len(calls) == 2:  # as a full disk fails
            raise WriteError("could not store a chunk: No space left on device")
        return real(spec, stores, n, box, result)

    monkeypatch.setattr(schedulers, "write_unit", failing)
    out = tmp_path / "o.ome.zarr"
    with pytest.raises(WriteError, match="No space left"):
        denoise(img, model, out, axes="ZYX", k_b=3, chunk=64)
    work = tmp_path / ".o.ome.zarr.partial" / ".atbsn-done"
    assert sorted(p.name for p in work.iterdir()) == ["0_0_0"] and not out.exists()
    monkeypatch.setattr(schedulers, "write_unit", real)
    res = denoise(img, model, out, axes="ZYX", k_b=3, chunk=64)
    assert res.units_resumed == 1 and res.units_computed == 2
    np.testing.assert_array_equal(_read(out), model.denoise(img, "ZYX", k_b=3))


def test_batches_are_normalised_as_they_are_cut_with_the_same_bits_as_the_whole_image(tiny_teacher: Path) -> None:
    """The windows are cast and normalised batch by batch, and mapped back in place: the same numbers as the
    normalised whole image run window by window, for integer and channel-last float inputs."""
    from napari_atbsn.tiling import PlaneGrid, run_box

    model = load_model(tiny_teacher)
    img = _volume((70, 90), seed=14)
    norm = model.normalization
    grid = PlaneGrid.of(70, 90, model.patch, model.halo)
    whole = norm.apply(img.astype(np.float32)[None])

    def fn(t: np.ndarray) -> np.ndarray:
        return model.run_windows(t, [3])

    want = norm.undo(run_box(fn, lambda y0, y1, x0, x1: whole[:, y0:y1, x0:x1], grid, Box(0, 70, 0, 90),
                             batch_size=3)[0])
    got = model.denoise(img, "YX", k_b=3)
    np.testing.assert_array_equal(got, want[0])
    rgb = load_model(tiny_teacher)  # the one-channel model on a channel-last view of the same plane
    np.testing.assert_array_equal(rgb.denoise(img[..., None].astype(np.float32), "YXC", k_b=3)[..., 0], want[0])


def identity_model(channels: int, patch: int, *, offset: float, scale: float):
    """A teacher-shaped network that returns its input: the pipeline's output is then the input, exactly."""
    import torch

    from napari_atbsn.inference.denoiser import Denoiser

    class Identity(torch.nn.Module):
        def forward(self, x, k=None):
            return x

        def teachers(self, x, ks):
            return x[None].expand(len(ks), *x.shape)

    cfg = {"kind": "atbsn", "arch": {"in_channels": channels, "preset": "identity"}, "patch": patch, "k_b": 3,
           "normalization": {"mode": "zscore", "offset": [offset] * channels, "scale": [scale] * channels}}
    return Denoiser(Identity(), cfg, device="cpu")


def test_tiff_outputs_keep_the_inputs_axes_pixel_sizes_and_colour(tmp_path: Path) -> None:
    """R77 (docs/reliability.md): an ImageJ hyperstack ZCYX with 0.2 µm pixels comes back as OME-TIFF with its
    axes, type and pixel sizes (as tifffile, napari and our reader read them); an RGB image comes back RGB
    (interleaved samples, photometric RGB), not as three grey pages."""
    hyper = np.random.default_rng(0).integers(900, 1100, size=(4, 2, 64, 70)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "hs.tif", hyper, imagej=True, resolution=(5.0, 5.0),
                     metadata={"axes": "ZCYX", "spacing": 1.5, "unit": "um"})
    res = denoise(tmp_path / "hs.tif", identity_model(2, 32, offset=1000.0, scale=50.0), tmp_path / "o.tif",
                  k_b=3, dtype="input")
    with tifffile.TiffFile(res.paths[0]) as tf:
        assert tf.is_ome and tf.series[0].axes == "ZCYX"
        np.testing.assert_array_equal(tf.series[0].asarray(), hyper)
        assert "PhysicalSizeX=\"0.2\"" in tf.ome_metadata and "PhysicalSizeZ=\"1.5\"" in tf.ome_metadata
    back = open_image(res.paths[0])
    assert back.axes == "ZCYX" and back.dtype == np.uint16 and back.scale == {"X": 0.2, "Y": 0.2, "Z": 1.5}

    rgb = np.random.default_rng(1).integers(0, 255, size=(50, 60, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    res = denoise(tmp_path / "rgb.tif", identity_model(3, 32, offset=100.0, scale=50.0), tmp_path / "orgb.tif",
                  k_b=3, dtype="input")
    with tifffile.TiffFile(res.paths[0]) as tf:
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.RGB and tf.series[0].axes == "YXS"
        np.testing.assert_array_equal(tf.series[0].asarray(), rgb)
    assert open_image(res.paths[0]).axes == "YXC"
    napari_builtins = pytest.importorskip("napari_builtins.io")
    layer_data = napari_builtins.imread(str(res.paths[0]))
    assert layer_data.shape == (50, 60, 3) and layer_data.dtype == np.uint8


def test_pixel_sizes_are_read_in_their_unit_and_written_as_micrometres(tmp_path: Path) -> None:
    """R78: a 200 nm pixel is 0.2 µm whether an OME-TIFF, an ImageJ TIFF or an OME-Zarr says it in nanometres
    (it came back as 200 µm), ImageJ's uncalibrated ``pixel`` unit gives no size (it gave 1 µm), and outputs say
    micrometres explicitly."""
    data = np.random.default_rng(2).integers(900, 1100, size=(3, 64, 64)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "nm.ome.tif", data, metadata={
        "axes": "ZYX", "PhysicalSizeX": 200, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 200,
        "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 0.5})
    tifffile.imwrite(tmp_path / "ij_nm.tif", data, imagej=True, resolution=(1 / 200, 1 / 200),
                     metadata={"axes": "ZYX", "spacing": 500, "unit": "nm"})
    tifffile.imwrite(tmp_path / "ij_px.tif", data, imagej=True, resolution=(1.0, 1.0),
                     metadata={"axes": "ZYX", "unit": "pixel"})
    want = {"X": 0.2, "Y": 0.2, "Z": 0.5}
    for name in ("nm.ome.tif", "ij_nm.tif"):
        assert open_image(tmp_path / name).scale == pytest.approx(want), name
    assert open_image(tmp_path / "ij_px.tif").scale == {}
    model = identity_model(1, 32, offset=1000.0, scale=50.0)
    z = denoise(tmp_path / "nm.ome.tif", model, tmp_path / "o.ome.zarr", k_b=3).paths[0]
    axes = json.loads((z / ".zattrs").read_text())["multiscales"][0]["axes"]
    assert [a.get("unit") for a in axes] == ["micrometer"] * 3
    assert open_image(z).scale == pytest.approx(want)
    t = denoise(z, model, tmp_path / "o.tif", k_b=3).paths[0]  # an OME-Zarr in, a TIFF out
    with tifffile.TiffFile(t) as tf:
        assert 'PhysicalSizeXUnit="µm"' in tf.ome_metadata
    assert open_image(t).scale == pytest.approx(want)
    ngff = json.loads((z / ".zattrs").read_text())
    for a in ngff["multiscales"][0]["axes"]:
        a["unit"] = "nanometer"
    for d in ngff["multiscales"][0]["datasets"]:
        d["coordinateTransformations"][0]["scale"] = [500.0, 200.0 * 2 ** int(d["path"]), 200.0 * 2 ** int(d["path"])]
    (z / ".zattrs").write_text(json.dumps(ngff))
    assert open_image(z).scale == pytest.approx(want)


@pytest.mark.parametrize(("kind", "store_ax", "out_ax", "shape"), [
    ("tiff", "CZYX", "ZCYX", (2, 3, 40, 37)),   # a grey hyperstack: one page per plane and channel
    ("tiff", "CZYX", "ZYXC", (3, 2, 40, 37)),   # RGB: interleaved samples, the channels last in the file
    ("npy", "TZYX", "ZTYX", (2, 3, 40, 37)),
])
def test_in_place_outputs_take_units_in_any_order_and_shape(tmp_path: Path, kind: str, store_ax: str, out_ax: str,
                                                           shape: tuple[int, ...]) -> None:
    """TIFF and .npy outputs are written in place, unit by unit, in the store's axis order: whole-width units
    (one write per page) and narrower ones (one per row), in any order, give exactly the array, in the file's
    axis order; the file is refused if it is not the one the job created."""
    from napari_atbsn.io.filewriters import InPlaceFile, create_npy, create_tiff

    rng = np.random.default_rng(3)
    want = rng.normal(size=shape).astype(np.float32)
    out_shape = tuple(shape[store_ax.index(a)] for a in out_ax)
    path = tmp_path / f"o.{kind}"
    if kind == "tiff":
        create_tiff(path, out_shape, np.float32, out_ax, {"X": 0.5, "Y": 0.5})
    else:
        create_npy(path, out_shape, np.float32)
    f = InPlaceFile(path, kind, shape, np.float32, store_ax, out_ax)
    lead = store_ax[:2]
    boxes = [(0, 13, 0, 37), (13, 40, 0, 20), (13, 40, 20, 37)]  # whole rows, then two narrower units
    units = [(i, j, b) for i in range(shape[0]) for j in range(shape[1]) for b in boxes]
    if "C" in lead:  # channels travel together in a unit
        units = [(slice(None), j, b) for j in range(shape[1]) for b in boxes]
    for n in rng.permutation(len(units)):
        i, j, (y0, y1, x0, x1) = units[n]
        idx = (i, j, slice(y0, y1), slice(x0, x1))
        f[idx] = want[idx]
    f.close()
    got = tifffile.imread(path) if kind == "tiff" else np.load(path)
    np.testing.assert_array_equal(got.reshape(out_shape), np.transpose(want, [store_ax.index(a) for a in out_ax]))
    with pytest.raises(WriteError, match="is not the partial output this job created"):
        InPlaceFile(path, kind, (shape[0], shape[1], 40, 36), np.float32, store_ax, out_ax)


def test_a_teacher_refuses_windows_larger_than_its_training_patch(tmp_path: Path, tiny_teacher: Path,
                                                                   tiny_student: Path) -> None:
    """A teacher's output breaks down in windows larger than its patch (docs/benchmarks.md, "How much halo"):
    the job is refused before anything is written, with the fixes; smaller windows and students run."""
    teacher = load_model(tiny_teacher)
    image = np.random.default_rng(0).normal(size=(2 * teacher.patch + 8, 2 * teacher.patch)).astype(np.float32)
    out = tmp_path / "out.tif"
    with pytest.raises(ConfigError, match=rf"window={2 * teacher.patch} is larger than this teacher's training "
                                          rf"patch \({teacher.patch}\).*--patch {2 * teacher.patch}.*student"):
        denoise(image, teacher, out, axes="YX", k_b=3, window=2 * teacher.patch)
    assert not out.exists()
    smaller = np.asarray(denoise(image, teacher, None, axes="YX", k_b=3, window=teacher.patch // 2))
    assert smaller.shape == image.shape and np.isfinite(smaller).all()
    student = load_model(tiny_student)
    wide = np.asarray(denoise(image, student, None, axes="YX", window=2 * student.patch))
    assert wide.shape == image.shape
