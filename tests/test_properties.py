"""Property-based tests (hypothesis): axes parsing, tiling with a receptive field, and file round-trips.

Tile planning's own properties (every output pixel written exactly once, the halo kept clear of window
borders, chunk-size independence) are in test_tiling.py.
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from napari_atbsn.axes import LETTERS, validate_axes
from napari_atbsn.errors import AxesError
from napari_atbsn.io.files import read_image, write_image
from napari_atbsn.io.readers import open_image
from napari_atbsn.tiling import Box, PlaneGrid, chunk_boxes, iter_box

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- axes ----------------------------------------------------------------------------------------------
@FAST
@given(axes=st.text(alphabet=string.ascii_letters + "0 -", max_size=7), ndim=st.integers(0, 7))
def test_axes_are_accepted_exactly_when_valid_and_otherwise_refused_with_axeserror(axes: str, ndim: int) -> None:
    up = axes.upper()
    valid = (bool(up) and set(up) <= set(LETTERS) and len(set(up)) == len(up) == ndim and {"Y", "X"} <= set(up))
    if valid:
        assert validate_axes(axes, ndim) == up
    else:
        with pytest.raises(AxesError) as e:  # never a KeyError, IndexError or a silent acceptance
            validate_axes(axes, ndim)
        assert "axes" in str(e.value)


# -- tiling with a real receptive field ----------------------------------------------------------------
def _blur(x: np.ndarray, r: int) -> np.ndarray:
    """A (2r+1)^2 box sum with zero padding: an operator whose receptive field has radius r."""
    _, h, w = x.shape
    p = np.pad(x, ((0, 0), (r, r), (r, r)))
    out = np.zeros_like(x)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out += p[:, dy:dy + h, dx:dx + w]
    return out


@FAST
@given(h=st.integers(1, 90), w=st.integers(1, 90), window=st.sampled_from([16, 32]), r=st.integers(0, 6),
       extra=st.integers(0, 2), cy=st.integers(8, 100), cx=st.integers(8, 100))
def test_a_halo_covering_the_receptive_field_makes_tiled_equal_untiled(h, w, window, r, extra, cy, cx) -> None:
    """An operator of radius r <= halo gives the same result tiled as on the whole plane, whatever the plane,
    window and chunk sizes: the halo is what makes tiled == untiled."""
    halo = min(r + extra, window // 2 - 1)
    assume(r <= halo)
    img = np.random.default_rng(h * 1000 + w).normal(size=(1, h, w)).astype(np.float32)
    grid = PlaneGrid.of(h, w, window, halo)

    def fn(tiles: np.ndarray) -> np.ndarray:
        return np.stack([_blur(t, r) for t in tiles])[None]

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return img[:, y0:y1, x0:x1]

    out = np.full((1, h, w), np.nan, np.float32)
    for b in chunk_boxes(Box(0, h, 0, w), (cy, cx)):
        gen = iter_box(fn, read, grid, b, batch_size=4)
        try:
            while True:
                next(gen)
        except StopIteration as done:
            out[:, b.y0:b.y1, b.x0:b.x1] = done.value[0]
    # Windows beyond the plane are zero-padded, as the operator pads: equal everywhere, borders included.
    np.testing.assert_allclose(out, _blur(img, r), rtol=1e-5, atol=1e-4)


def test_a_halo_smaller_than_the_receptive_field_is_seen_at_window_seams() -> None:
    """The other side of the property: with r > halo, tiled != untiled (so the test above could fail)."""
    h = w = 70
    img = np.random.default_rng(0).normal(size=(1, h, w)).astype(np.float32)
    r, halo = 4, 2
    grid = PlaneGrid.of(h, w, 16, halo)

    def fn(tiles: np.ndarray) -> np.ndarray:
        return np.stack([_blur(t, r) for t in tiles])[None]

    gen = iter_box(fn, lambda y0, y1, x0, x1: img[:, y0:y1, x0:x1], grid, Box(0, h, 0, w), batch_size=4)
    try:
        while True:
            next(gen)
    except StopIteration as done:
        out = done.value[0]
    assert np.abs(out - _blur(img, r)).max() > 1e-2


# -- file round-trips ----------------------------------------------------------------------------------
_DTYPES = [np.uint8, np.uint16, np.int16, np.float32, np.float64]


@st.composite
def images(draw):
    axes = draw(st.sampled_from(["YX", "ZYX", "YXC", "CYX", "TYX", "ZCYX", "TZYX", "SYX"]))
    shape = tuple(draw(st.integers(1, 3)) if a not in "YX" else draw(st.integers(1, 40)) for a in axes)
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    if dtype.kind == "f":
        data = rng.normal(0, 1e3, size=shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    return data, axes


@FAST
@given(img=images(), suffix=st.sampled_from([".tif", ".npy", ".zarr"]))
# found by this test: a 2-channel YXC TIFF is stored CYX, and --axes YXC used to relabel it (scrambled)
@example(img=(np.array([[[95, 130]]], dtype=np.uint8), "YXC"), suffix=".tif")
@example(img=(np.arange(8, dtype=np.uint16).reshape(2, 2, 2), "YXC"), suffix=".tif")
def test_files_round_trip_bit_exact_through_the_lazy_reader(img, suffix: str) -> None:
    data, axes = img
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"img{suffix}"
        if suffix == ".zarr":
            import zarr

            z = zarr.open_array(str(p), mode="w", shape=data.shape, dtype=data.dtype, chunks=(8,) * data.ndim)
            z[...] = data
        else:
            write_image(p, data, axes)
        lazy = open_image(p, axes)
        assert lazy.shape == data.shape and lazy.dtype == data.dtype and lazy.axes == axes
        np.testing.assert_array_equal(np.asarray(lazy.data), data)
        if suffix != ".zarr":
            back, back_axes = read_image(p, axes=axes)
            np.testing.assert_array_equal(back, data)
            assert back_axes == axes
