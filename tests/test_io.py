"""Axes strings, image files and the plane layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_atbsn.axes import from_planes, guess_axes, to_planes, validate_axes
from napari_atbsn.errors import AxesError, ImageError, ReadError, WriteError
from napari_atbsn.io.files import read_image, write_image


@pytest.mark.parametrize("axes, ndim, word", [
    ("ZZX", 3, "repeats"), ("ZQYX", 4, "unknown"), ("YX", 3, "3 dimensions"), ("ZYC", 3, "Y and X"),
    ("", 2, "string"),
])
def test_bad_axes_are_refused(axes: str, ndim: int, word: str) -> None:
    with pytest.raises(AxesError, match=word):
        validate_axes(axes, ndim)


@pytest.mark.parametrize("shape, expected", [((5, 6), "YX"), ((5, 6, 3), "YXC"), ((7, 5, 6), "ZYX"),
                                             ((2, 3, 5, 6), "ZCYX"), ((2, 2, 3, 5, 6), "TZCYX")])
def test_guess_axes(shape, expected: str) -> None:
    assert guess_axes(shape) == expected


@pytest.mark.parametrize("shape", [(7,), (1, 2, 3, 4, 5, 6)])
def test_guess_axes_refuses_1d_and_6d(shape) -> None:
    with pytest.raises(AxesError, match="-D"):
        guess_axes(shape)


@settings(max_examples=60, deadline=None)
@given(st.permutations("TZCYX"), st.integers(1, 3))
def test_planes_round_trip(order, n: int) -> None:
    axes = "".join(order)
    shape = tuple({"T": n, "Z": 2, "C": 3, "Y": 4, "X": 5}[a] for a in axes)
    data = np.arange(np.prod(shape)).reshape(shape)
    planes = to_planes(data, axes)
    assert planes.shape == (n * 2, 3, 4, 5)
    np.testing.assert_array_equal(from_planes(planes, axes, shape), data)


@pytest.mark.parametrize("axes, shape, dtype", [("YX", (20, 30), np.uint16), ("ZYX", (3, 20, 30), np.float32),
                                                ("YXC", (20, 30, 3), np.uint8), ("TZCYX", (2, 3, 2, 8, 9), np.uint16),
                                                ("SYX", (4, 8, 9), np.float32)])
@pytest.mark.parametrize("suffix", [".tif", ".npy"])
def test_write_read_round_trip(tmp_path, axes: str, shape, dtype, suffix: str) -> None:
    data = (np.random.default_rng(0).random(shape) * 200).astype(dtype)
    path = write_image(tmp_path / f"img{suffix}", data, axes)
    back, back_axes = read_image(path, axes=None if suffix == ".tif" else axes)
    assert back_axes == axes
    assert back.dtype == data.dtype
    np.testing.assert_array_equal(back, data)


def test_png_reads_as_yx(tmp_path) -> None:
    from PIL import Image

    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "a.png")
    data, axes = read_image(tmp_path / "a.png")
    assert axes == "YX" and data.shape == (8, 8) and data[1, 0] == 8


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ReadError, match="no such file"):
        read_image(tmp_path / "nope.tif")


def test_text_file_named_tif(tmp_path) -> None:
    (tmp_path / "fake.tif").write_text("hello, not a TIFF")
    with pytest.raises(ReadError, match="could not be read as a TIFF"):
        read_image(tmp_path / "fake.tif")


def test_truncated_tiff(tmp_path) -> None:
    p = write_image(tmp_path / "t.tif", np.ones((4, 64, 64), np.uint16), "ZYX")
    p.write_bytes(p.read_bytes()[:3000])
    with pytest.raises(ReadError):
        read_image(p)


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_])
def test_unsupported_dtype(tmp_path, dtype) -> None:
    np.save(tmp_path / "a.npy", np.zeros((8, 8), dtype))
    with pytest.raises(ImageError, match="dtype"):
        read_image(tmp_path / "a.npy")


def test_axes_that_do_not_fit_name_the_shape(tmp_path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((3, 8, 8), np.float32))
    with pytest.raises(AxesError, match=r"\(3, 8, 8\)"):
        read_image(tmp_path / "a.npy", axes="YX")


def test_write_never_clobbers_and_leaves_no_partial(tmp_path) -> None:
    p = write_image(tmp_path / "o.tif", np.zeros((4, 4), np.float32), "YX")
    with pytest.raises(WriteError, match="--overwrite"):
        write_image(p, np.ones((4, 4), np.float32), "YX")
    assert read_image(p)[0].max() == 0
    with pytest.raises(WriteError, match="does not exist"):
        write_image(tmp_path / "missing" / "o.tif", np.zeros((4, 4), np.float32), "YX")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["o.tif"]


@pytest.mark.parametrize("axes, shape, pages, page_shape, back_axes", [
    ("YXC", (20, 30, 3), 1, (20, 30, 3), "YXC"),   # RGB samples
    ("YXC", (20, 30, 5), 5, (20, 30), "CYX"),      # not RGB: one page per channel
    ("YXZ", (20, 30, 4), 4, (20, 30), "ZYX"),
])
def test_tiff_pages_are_image_planes(tmp_path, axes: str, shape, pages: int, page_shape, back_axes: str) -> None:
    import tifffile

    data = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    p = write_image(tmp_path / "a.tif", data, axes)
    with tifffile.TiffFile(p) as tf:
        assert len(tf.pages) == pages and tf.pages[0].shape == page_shape
    back, got_axes = read_image(p)
    assert got_axes == back_axes
    np.testing.assert_array_equal(back, np.transpose(data, [axes.index(a) for a in back_axes]))


@pytest.mark.parametrize("kind, axes, shape", [("imagej", "ZCYX", (3, 2, 16, 20)), ("imagej", "TZYX", (2, 3, 16, 20)),
                                               ("ome", "ZYX", (4, 16, 20)), ("ome", "CYX", (2, 16, 20))])
def test_axes_from_imagej_and_ome_metadata(tmp_path, kind: str, axes: str, shape) -> None:
    import tifffile

    data = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    p = tmp_path / ("a.ome.tif" if kind == "ome" else "a.tif")
    tifffile.imwrite(p, data, imagej=kind == "imagej", ome=kind == "ome", metadata={"axes": axes})
    back, got = read_image(p)
    assert got == axes
    np.testing.assert_array_equal(back, data)


def test_explicit_axes_reorder_a_tiff_stored_in_another_order_but_relabel_other_letters(tmp_path) -> None:
    """A 2-channel YXC image is stored CYX (TIFF planes are YX) with that order recorded: asking for YXC
    transposes it back (a relabel would scramble pixels and channels silently); other letters than the
    file's (metadata calling Z "T") still relabel."""
    from napari_atbsn.io.readers import open_image

    data = np.arange(4 * 5 * 2, dtype=np.uint16).reshape(4, 5, 2)
    write_image(tmp_path / "two.tif", data, "YXC")
    assert open_image(tmp_path / "two.tif").axes == "CYX"
    back, axes = read_image(tmp_path / "two.tif", axes="YXC")
    assert axes == "YXC" and np.array_equal(back, data)
    lazy = open_image(tmp_path / "two.tif", "YXC")
    assert lazy.axes == "YXC" and np.array_equal(np.asarray(lazy.data), data)
    stack = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    write_image(tmp_path / "z.tif", stack, "ZYX")
    relabelled = open_image(tmp_path / "z.tif", "TYX")
    assert relabelled.axes == "TYX" and np.array_equal(np.asarray(relabelled.data), stack)
