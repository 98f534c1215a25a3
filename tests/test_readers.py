"""Lazy readers: every format round-trips, axes and scale come from metadata, nothing is read at open."""

from __future__ import annotations

import os
import pickle
import sys
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_atbsn.errors import AxesError, ConfigError, ImageError, ReadError
from napari_atbsn.io import chunking, filearrays
from napari_atbsn.io.readers import LazyImage, open_image, parse_roi

RNG = np.random.default_rng(0)


def _stack(shape: tuple[int, ...], dtype=np.uint16) -> np.ndarray:
    return RNG.integers(0, 1000, shape).astype(dtype)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list:
    """Keys of every read of a file-backed array (TIFF, .npy, NIfTI), in any thread of this process."""
    keys: list = []
    original = filearrays._FileArray.__getitem__

    def counting(self, key):
        keys.append(key)
        return original(self, key)

    monkeypatch.setattr(filearrays._FileArray, "__getitem__", counting)
    return keys


def _imwrite(path: Path, data: np.ndarray, **kwargs) -> None:
    # Explicit grey levels: tifffile would otherwise store 3 or 4 leading planes as RGB(A) and warn.
    kwargs.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, data, **kwargs)


def _ngff_axes(letters: str) -> list[dict[str, str]]:
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    return [{"name": a, "type": kinds.get(a, "other")} for a in letters]


def _write_ngff(path: Path, data: np.ndarray, names: str, zarr_format: int, scale0: list[float]) -> None:
    """A two-level OME-Zarr written by hand: 0.4 (zarr v2, ``multiscales``) or 0.5 (zarr v3, ``ome``)."""
    root = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    half = data[..., ::2, ::2]
    root.create_array("0", data=data, chunks=(1,) * (data.ndim - 2) + (16, 16))
    root.create_array("1", data=half)
    scale1 = [*scale0[:-2], scale0[-2] * 2, scale0[-1] * 2]
    multiscales = [{
        "axes": _ngff_axes(names),
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale0}]},
                     {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": scale1}]}],
    }]
    if zarr_format == 2:
        root.attrs["multiscales"] = [{"version": "0.4", **multiscales[0]}]
    else:
        root.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}


# --------------------------------------------------------------------------- TIFF


def test_plain_tiff_round_trips_with_axes_from_tifffile_metadata(tmp_path: Path) -> None:
    data = _stack((4, 30, 40))
    _imwrite(tmp_path / "a.tif", data, metadata={"axes": "ZYX"})
    img = open_image(tmp_path / "a.tif")
    assert (img.axes, img.format, img.scale, img.source) == ("ZYX", "tiff", {}, str(tmp_path / "a.tif"))
    assert img.shape == data.shape and img.dtype == np.uint16 and img.nbytes == data.nbytes
    np.testing.assert_array_equal(img.data.compute(), data)


def test_big_endian_tiff_reads_as_native_values(tmp_path: Path) -> None:
    data = _stack((30, 40))
    _imwrite(tmp_path / "be.tif", data, byteorder=">")
    img = open_image(tmp_path / "be.tif")
    out = img.data.compute()
    assert img.dtype == out.dtype == np.dtype("uint16")  # native byte order, as declared
    np.testing.assert_array_equal(out, data)


def test_bigtiff_tiled_compressed_chunks_are_whole_tiles(tmp_path: Path, monkeypatch) -> None:
    data = _stack((3, 100, 120))
    path = tmp_path / "t.btf"
    _imwrite(path, data, bigtiff=True, tile=(32, 32), compression="zlib", metadata={"axes": "ZYX"})
    monkeypatch.setattr(chunking, "CHUNK_BYTES", 2 * 32 * 64)  # room for two tiles: a chunk is one tile pair
    img = open_image(path)
    assert img.axes == "ZYX"
    assert img.data.chunksize == (1, 32, 64)
    np.testing.assert_array_equal(img.data.compute(), data)


def test_small_tiff_pages_share_chunks_but_large_pages_do_not(tmp_path: Path, monkeypatch) -> None:
    _imwrite(tmp_path / "s.tif", _stack((50, 16, 16)), metadata={"axes": "ZYX"})
    monkeypatch.setattr(chunking, "CHUNK_BYTES", 10 * 16 * 16 * 2)
    assert open_image(tmp_path / "s.tif").data.chunksize == (10, 16, 16)
    monkeypatch.setattr(chunking, "CHUNK_BYTES", 16 * 16)  # half a page: bands of whole rows
    assert open_image(tmp_path / "s.tif").data.chunksize == (1, 8, 16)


def test_ome_tiff_axes_and_physical_size(tmp_path: Path) -> None:
    data = _stack((2, 3, 2, 20, 24))
    path = tmp_path / "x.ome.tif"
    _imwrite(path, data, metadata={"axes": "TZCYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.2,
                                           "PhysicalSizeZ": 3.0})
    img = open_image(path)
    assert (img.axes, img.format) == ("TZCYX", "ome-tiff")
    assert img.scale == {"Z": 3.0, "Y": 0.2, "X": 0.1}
    np.testing.assert_array_equal(img.data.compute(), data)


def test_imagej_hyperstack_axes_and_calibration(tmp_path: Path) -> None:
    data = _stack((2, 3, 2, 20, 24))
    path = tmp_path / "ij.tif"
    _imwrite(path, data, imagej=True, resolution=(10, 4),
                     metadata={"axes": "TZCYX", "spacing": 2.5, "unit": "um"})
    img = open_image(path)
    assert (img.axes, img.format) == ("TZCYX", "imagej-tiff")
    assert img.scale == pytest.approx({"X": 0.1, "Y": 0.25, "Z": 2.5})
    np.testing.assert_array_equal(img.data.compute(), data)


def test_rgb_tiff_samples_are_channels(tmp_path: Path) -> None:
    data = _stack((20, 24, 3), np.uint8)
    _imwrite(tmp_path / "rgb.tiff", data, photometric="rgb", compression="zlib", rowsperstrip=4)
    img = open_image(tmp_path / "rgb.tiff")
    assert img.axes == "YXC"
    np.testing.assert_array_equal(img.data.compute(), data)


def test_tiff_pyramid_level_and_series_bounds(tmp_path: Path) -> None:
    full = _stack((64, 64), np.uint8)
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(full, subifds=1, tile=(16, 16), metadata={"axes": "YX", "PhysicalSizeX": 0.5,
                                                           "PhysicalSizeY": 0.5})
        tw.write(full[::2, ::2], subfiletype=1, tile=(16, 16))
    img = open_image(path, level=1)
    assert img.shape == (32, 32) and img.scale == {"Y": 1.0, "X": 1.0}
    np.testing.assert_array_equal(img.data.compute(), full[::2, ::2])
    with pytest.raises(ReadError, match="level 0 to 1"):
        open_image(path, level=2)
    with pytest.raises(ReadError, match="1 image series; use series 0 to 0"):
        open_image(path, series=1)


def test_tiff_second_series(tmp_path: Path) -> None:
    second = _stack((2, 10, 12))
    with tifffile.TiffWriter(tmp_path / "two.tif") as tw:
        tw.write(_stack((20, 24)), photometric="minisblack")
        tw.write(second, photometric="minisblack", compression="zlib", metadata={"axes": "TYX"})
    img = open_image(tmp_path / "two.tif", series=1)
    assert img.axes == "TYX"
    np.testing.assert_array_equal(img.data.compute(), second)


def test_tiff_with_ambiguous_axes_falls_back_to_guess(tmp_path: Path) -> None:
    _imwrite(tmp_path / "q.tif", _stack((3, 2, 20, 24)), metadata={"axes": "QQYX"})
    assert open_image(tmp_path / "q.tif").axes == "ZCYX"  # both Q map to S: guessed instead


def test_broken_tiff_is_a_read_error(tmp_path: Path) -> None:
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ReadError, match=r"bad\.tif (could not be read as a TIFF|contains no image data)"):
        open_image(tmp_path / "bad.tif")
    (tmp_path / "bad2.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ReadError, match="could not be read as a TIFF"):
        open_image(tmp_path / "bad2.tif")


# --------------------------------------------------------------------------- Zarr and OME-Zarr


def test_zarr_v2_array_with_axes_attribute(tmp_path: Path) -> None:
    data = _stack((3, 20, 24))
    z = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(1, 10, 24), dtype=data.dtype,
                          zarr_format=2)
    z[:] = data
    z.attrs["axes"] = "SYX"
    img = open_image(str(tmp_path / "a.zarr"))
    assert (img.axes, img.format) == ("SYX", "zarr")
    np.testing.assert_array_equal(img.data.compute(), data)


def test_zarr_v3_sharded_chunks_are_whole_shards(tmp_path: Path, monkeypatch) -> None:
    data = RNG.random((4, 32, 40)).astype(np.float32)
    z = zarr.create_array(tmp_path / "v3", shape=data.shape, chunks=(1, 8, 8), shards=(2, 16, 40),
                          dtype=data.dtype)  # a directory without .zarr suffix: found by zarr.json
    z[:] = data
    monkeypatch.setattr(chunking, "CHUNK_BYTES", 1)
    img = open_image(tmp_path / "v3")
    assert img.axes == "ZYX" and img.data.chunksize == (2, 16, 40)
    np.testing.assert_array_equal(img.data.compute(), data)


def test_zarr_group_with_one_array_opens_it_and_with_two_names_them(tmp_path: Path) -> None:
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    g.create_array("raw", data=_stack((20, 24)))
    assert open_image(tmp_path / "g.zarr").source == str(tmp_path / "g.zarr")
    g.create_array("labels", data=_stack((20, 24)))
    with pytest.raises(ReadError, match=r"2 arrays \(labels, raw\).*path of one array"):
        open_image(tmp_path / "g.zarr")


@pytest.mark.parametrize("zarr_format", [2, 3], ids=["ngff-0.4", "ngff-0.5"])
def test_ome_zarr_levels_axes_and_scale(tmp_path: Path, zarr_format: int) -> None:
    data = _stack((2, 5, 32, 48))
    path = tmp_path / "img.ome.zarr"
    _write_ngff(path, data, "czyx", zarr_format, [1.0, 2.0, 0.1, 0.1])
    img = open_image(path)
    assert (img.axes, img.format) == ("CZYX", "ome-zarr")
    assert img.scale == {"Z": 2.0, "Y": 0.1, "X": 0.1}
    np.testing.assert_array_equal(img.data.compute(), data)
    low = open_image(path, level=1)
    assert low.shape == (2, 5, 16, 24) and low.scale == {"Z": 2.0, "Y": 0.2, "X": 0.2}
    np.testing.assert_array_equal(low.data.compute(), data[..., ::2, ::2])
    with pytest.raises(ReadError, match="2 resolution level"):
        open_image(path, level=2)


def test_ome_zarr_other_axis_is_s_and_two_others_need_explicit_axes(tmp_path: Path) -> None:
    _write_ngff(tmp_path / "a.ome.zarr", _stack((3, 16, 16)), "ayx", 3, [1.0, 1.0, 1.0])
    assert open_image(tmp_path / "a.ome.zarr").axes == "SYX"
    _write_ngff(tmp_path / "b.ome.zarr", _stack((2, 3, 16, 16)), "abyx", 3, [1.0, 1.0, 1.0, 1.0])
    with pytest.raises(AxesError, match=r"more than one axis that maps to S.*give axes"):
        open_image(tmp_path / "b.ome.zarr")
    assert open_image(tmp_path / "b.ome.zarr", "TZYX").axes == "TZYX"


def test_bioformats2raw_layout_picks_the_series(tmp_path: Path) -> None:
    path = tmp_path / "b2r.ome.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    second = _stack((3, 16, 16))
    _write_ngff(path / "0", _stack((16, 16)), "yx", 2, [1.0, 1.0])
    _write_ngff(path / "1", second, "zyx", 2, [4.0, 1.0, 1.0])
    img = open_image(path, series=1)
    assert (img.axes, img.scale["Z"], img.source) == ("ZYX", 4.0, str(path))
    np.testing.assert_array_equal(img.data.compute(), second)
    with pytest.raises(ReadError, match="2 image series; use series 0 to 1"):
        open_image(path, series=2)


def test_ome_zarr_missing_level_array_is_a_read_error(tmp_path: Path) -> None:
    path = tmp_path / "c.ome.zarr"
    _write_ngff(path, _stack((16, 16)), "yx", 2, [1.0, 1.0])
    g = zarr.open_group(path, mode="a")
    del g["1"]
    with pytest.raises(ReadError, match="'1' of level 1 is missing"):
        open_image(path, level=1)


def test_huge_unwritten_zarr_opens_instantly_and_a_corner_computes(tmp_path: Path) -> None:
    zarr.create_array(tmp_path / "huge.zarr", shape=(100_000, 100_000), chunks=(1000, 1000), dtype="u2",
                      fill_value=7)
    t = time.perf_counter()
    img = open_image(tmp_path / "huge.zarr")
    assert time.perf_counter() - t < 2
    assert img.nbytes == 2 * 10**10
    np.testing.assert_array_equal(img.data[5:7, 99_990:].compute(), np.full((2, 10), 7, np.uint16))


# --------------------------------------------------------------------------- NIfTI, .npy, PNG


def test_nifti_axes_scale_and_values(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    data = RNG.random((12, 10, 6)).astype(np.float32)
    for name in ("v.nii", "v.nii.gz"):
        nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.6, 2.0, 1.0])), tmp_path / name)
        img = open_image(tmp_path / name)
        assert (img.axes, img.format) == ("XYZ", "nifti")
        assert img.scale == {"X": 0.5, "Y": 0.6, "Z": 2.0}
        assert img.data.chunksize[:2] == (12, 10)  # whole z-slices
        np.testing.assert_array_equal(img.data.compute(), data)


def test_nifti_4d_with_scaling_reads_floats(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    raw = RNG.integers(0, 100, (8, 9, 3, 2)).astype(np.int16)
    nii = nib.Nifti1Image(raw, np.eye(4))
    nii.header.set_slope_inter(0.5, 10.0)
    nib.save(nii, tmp_path / "s.nii")
    img = open_image(tmp_path / "s.nii")
    assert img.axes == "XYZT" and img.dtype == np.float32
    out = img.data.compute()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, raw * 0.5 + 10.0)


def test_nifti_without_nibabel_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "v.nii").write_bytes(b"\x00" * 400)
    monkeypatch.setitem(sys.modules, "nibabel", None)  # makes "import nibabel" fail
    with pytest.raises(ReadError, match=r'pip install "napari-atbsn\[nifti\]"'):
        open_image(tmp_path / "v.nii")


@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_is_memory_mapped_not_loaded(tmp_path: Path, order: str, reads: list) -> None:
    data = np.asarray(_stack((5, 20, 24)), order=order)
    np.save(tmp_path / "a.npy", data)
    img = open_image(tmp_path / "a.npy")
    assert (img.axes, img.format) == ("ZYX", "npy") and reads == []
    np.testing.assert_array_equal(img.data.compute(), data)
    assert len(reads) == 1  # pixels came through the file-backed array, once


def test_png_is_read_eagerly(tmp_path: Path) -> None:
    from PIL import Image

    data = _stack((20, 24, 3), np.uint8)
    Image.fromarray(data).save(tmp_path / "a.png")
    img = open_image(tmp_path / "a.png")
    assert (img.axes, img.format) == ("YXC", "png")
    np.testing.assert_array_equal(img.data.compute(), data)


# --------------------------------------------------------------------------- in-memory sources


def test_in_memory_sources() -> None:
    data = _stack((3, 20, 24))
    for source, fmt, name in [(data, "numpy", "<numpy>"), (da.from_array(data, chunks=(1, 20, 24)), "dask", "<dask>")]:
        img = open_image(source)
        assert (img.axes, img.format, img.source) == ("ZYX", fmt, name)
        np.testing.assert_array_equal(img.data.compute(), data)
    z = zarr.create_array(zarr.storage.MemoryStore(), shape=data.shape, dtype=data.dtype)
    z[:] = data
    z.attrs["axes"] = "TYX"
    img = open_image(z)
    assert (img.axes, img.format, img.source) == ("TYX", "zarr", "<zarr>")
    np.testing.assert_array_equal(img.data.compute(), data)
    assert open_image(img) is img
    assert open_image(img, "SYX").axes == "SYX"


def test_unsupported_object_dtype_and_ndim() -> None:
    with pytest.raises(ReadError, match="cannot open a list"):
        open_image([[1, 2], [3, 4]])
    with pytest.raises(ImageError, match="dtype bool"):
        open_image(np.zeros((4, 4), bool))
    with pytest.raises(ImageError, match="1-D"):
        open_image(np.zeros(4))


# --------------------------------------------------------------------------- axes


def test_explicit_axes_win_over_metadata(tmp_path: Path) -> None:
    _imwrite(tmp_path / "a.tif", _stack((4, 20, 24)), metadata={"axes": "ZYX"})
    assert open_image(tmp_path / "a.tif", "tyx").axes == "TYX"


def test_axes_mismatch_names_path_and_shape(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", _stack((4, 20, 24)))
    with pytest.raises(AxesError, match=r"a\.npy has shape \(4, 20, 24\): axes 'YX' has 2 letters"):
        open_image(tmp_path / "a.npy", "YX")


def test_bad_axes_attribute_is_reported_but_explicit_axes_replace_it(tmp_path: Path) -> None:
    z = zarr.create_array(tmp_path / "a.zarr", shape=(3, 8, 8), dtype="u1")
    z.attrs["axes"] = "YX"
    with pytest.raises(AxesError, match="has shape"):
        open_image(tmp_path / "a.zarr")
    assert open_image(tmp_path / "a.zarr", "ZYX").axes == "ZYX"


def test_with_axes_keeps_scale_of_remaining_letters() -> None:
    img = LazyImage(da.zeros((3, 8, 8)), "ZYX", "<dask>", "dask", {"Z": 2.0, "Y": 0.5, "X": 0.5})
    assert img.with_axes("SYX").scale == {"Y": 0.5, "X": 0.5}
    with pytest.raises(AxesError, match=r"<dask> has shape \(3, 8, 8\)"):
        img.with_axes("YX")


# --------------------------------------------------------------------------- laziness and pickling


def _file_sources(tmp_path: Path, data: np.ndarray) -> list[Path]:
    """One file per file-backed reader: TIFF memory map, TIFF via tifffile's store, .npy, NIfTI if available."""
    _imwrite(tmp_path / "raw.tif", data)
    _imwrite(tmp_path / "zip.tif", data, compression="zlib", tile=(16, 16))
    np.save(tmp_path / "a.npy", data)
    paths = [tmp_path / "raw.tif", tmp_path / "zip.tif", tmp_path / "a.npy"]
    try:
        import nibabel as nib
    except ImportError:
        return paths
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "v.nii")
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "v.nii.gz")
    return [*paths, tmp_path / "v.nii", tmp_path / "v.nii.gz"]


def test_nothing_is_read_at_open(tmp_path: Path, reads: list) -> None:
    paths = _file_sources(tmp_path, _stack((4, 32, 32)))
    images = [open_image(p) for p in paths]
    assert reads == []
    for img in images:
        img.data[1].compute()
    assert len(reads) == len(paths)  # one read each, of just the plane asked for


def _add_one_in_place(block: np.ndarray) -> np.ndarray:
    block += 1
    return block


def test_chunks_can_be_changed_in_place(tmp_path: Path) -> None:
    data = _stack((4, 32, 32))
    for path in _file_sources(tmp_path, data):  # a read-only memory-map view would fail here
        out = open_image(path).data.map_blocks(_add_one_in_place).compute()
        np.testing.assert_array_equal(out, data + 1, err_msg=str(path))


def test_threads_share_one_open_file(tmp_path: Path, monkeypatch) -> None:
    data = _stack((8, 32, 32))
    opened: list[str] = []
    original = filearrays._FileArray._open_checked

    def counting(self):
        opened.append(self.path)
        return original(self)

    monkeypatch.setattr(filearrays._FileArray, "_open_checked", counting)
    monkeypatch.setattr(chunking, "CHUNK_BYTES", 32 * 32 * 2)  # one chunk per plane (or per tile)
    paths = _file_sources(tmp_path, data)
    for path in paths:
        img = open_image(path)
        assert img.data.npartitions >= 8
        np.testing.assert_array_equal(img.data.compute(scheduler="threads", num_workers=4), data, err_msg=str(path))
    assert sorted(opened) == sorted(os.path.abspath(p) for p in paths)  # each file opened once, by one thread


def test_crop_is_lazy_and_reads_only_the_region(tmp_path: Path, reads: list) -> None:
    data = _stack((6, 40, 50))
    _imwrite(tmp_path / "a.tif", data, metadata={"axes": "ZYX"})
    img = open_image(tmp_path / "a.tif")
    crop = img.crop({"Z": slice(2, 4), "X": slice(10, None), "Y": 5})
    assert reads == [] and crop.shape == (2, 1, 40) and crop.axes == "ZYX"
    np.testing.assert_array_equal(crop.data.compute(), data[2:4, 5:6, 10:])
    assert reads == [(slice(2, 4, None), slice(5, 6, None), slice(10, 50, None))]


@pytest.mark.parametrize("roi, error, text", [
    ({"Z": slice(0, 4, 2)}, ImageError, "step 2"),
    ({"C": slice(0, 1)}, AxesError, "needs all 3 channels"),
    ({"X": slice(5, 60)}, ConfigError, "X has 50 pixels, so give start < stop within 0:50"),
    ({"Y": slice(5, 5)}, ConfigError, "empty"),
    ({"Y": slice(-5, None)}, ConfigError, "within 0:40"),
    ({"T": slice(0, 1)}, AxesError, "axes are 'ZCYX'"),
])
def test_crop_refusals(roi, error, text: str) -> None:
    img = open_image(np.zeros((6, 3, 40, 50), np.float32), "ZCYX")
    with pytest.raises(error, match=text):
        img.crop(roi)


def test_crop_of_all_channels_is_allowed() -> None:
    img = open_image(np.zeros((6, 3, 40, 50), np.float32), "ZCYX")
    assert img.crop({"C": slice(None), "Z": slice(1, 2)}).shape == (1, 3, 40, 50)


def test_pickled_arrays_compute_the_same_values(tmp_path: Path) -> None:
    data = _stack((4, 64, 64))
    zarr.create_array(tmp_path / "a.zarr", data=data)
    for path in [*_file_sources(tmp_path, data), tmp_path / "a.zarr"]:
        img = open_image(path)
        np.testing.assert_array_equal(img.data.compute(), data, err_msg=str(path))  # leaves the file open here
        blob = pickle.dumps(img.data)
        assert len(blob) < data.nbytes // 4, path  # the graph carries a path, not pixels or a memory map
        np.testing.assert_array_equal(pickle.loads(blob).compute(), data, err_msg=str(path))


def test_worker_processes_read_the_file(tmp_path: Path) -> None:
    """What dask's multiprocessing scheduler does, in one spawned worker."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    data = _stack((4, 20, 24))
    _imwrite(tmp_path / "zip.tif", data, compression="zlib")
    img = open_image(tmp_path / "zip.tif")
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        out = pool.submit(np.asarray, img.data[1:3]).result()
    np.testing.assert_array_equal(out, data[1:3])


def test_a_file_changed_after_open_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, _stack((4, 20, 24)))
    img = open_image(path)
    np.save(path, _stack((4, 20, 24)))
    os.utime(path, ns=(1, 1))  # make sure the timestamp differs even on coarse filesystems
    with pytest.raises(ReadError, match="changed after it was opened; open it again"):
        img.data.compute()


# --------------------------------------------------------------------------- paths and options


def test_missing_unsupported_and_folder_paths(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match="no such file"):
        open_image(tmp_path / "nope.tif")
    (tmp_path / "a.bmp").write_bytes(b"BM")
    with pytest.raises(ReadError, match=r"unsupported file type '\.bmp'; use TIFF .*Zarr.*NIfTI.*\.npy"):
        open_image(tmp_path / "a.bmp")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ReadError, match="not a Zarr store"):
        open_image(tmp_path / "folder")


def test_series_or_level_on_a_single_image_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", _stack((20, 24)))
    with pytest.raises(ReadError, match="single image"):
        open_image(tmp_path / "a.npy", level=1)
    with pytest.raises(ReadError, match="single image"):
        open_image(np.zeros((4, 4)), series=1)


# --------------------------------------------------------------------------- parse_roi


@pytest.mark.parametrize("text, expected", [
    ("Z=10:20,Y=0:512,X=100:", {"Z": slice(10, 20), "Y": slice(0, 512), "X": slice(100, None)}),
    ("z = 5", {"Z": slice(5, 6)}),
    ("X=:64, Y=:", {"X": slice(None, 64), "Y": slice(None, None)}),
    ("", {}),
])
def test_parse_roi(text: str, expected: dict) -> None:
    assert parse_roi(text, "ZYX") == expected


@pytest.mark.parametrize("text, error, message", [
    ("Z=1:2:3", ConfigError, "e.g. 'Z=10:20,Y=0:512'"),
    ("Z=-5", ConfigError, "negative"),
    ("Z10:20", ConfigError, "axis=start:stop"),
    ("Z=1:2,", ConfigError, "axis=start:stop"),
    ("Z=", ConfigError, "no index for Z"),
    ("Z=1,Z=2", ConfigError, "twice"),
    ("T=1:2", AxesError, "axes are 'ZYX'"),
])
def test_parse_roi_errors(text: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        parse_roi(text, "ZYX")
