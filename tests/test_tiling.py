"""Windowed inference geometry: every pixel once, halos cover context, tiled == untiled."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_atbsn.errors import ConfigError
from napari_atbsn.tiling import AxisPlan, Box, PlaneGrid, chunk_boxes, plan_axis, plan_windows, run_box


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 600), window=st.sampled_from([8, 16, 32, 64, 128]), frac=st.integers(0, 3))
def test_plan_writes_every_pixel_once_with_halo(length: int, window: int, frac: int) -> None:
    halo = window * frac // 8
    spans = plan_axis(length, window, halo)
    count = np.zeros(length, int)
    for sp in spans:
        count[sp.keep_start:sp.keep_stop] += 1
        assert sp.start <= sp.keep_start < sp.keep_stop <= sp.start + window
        # a kept pixel is halo away from the window edge, unless that edge is the image border
        assert sp.keep_start - sp.start >= halo or sp.start == 0
        assert sp.start + window - sp.keep_stop >= halo or sp.start + window >= length
        assert sp.start >= 0 and (sp.start + window <= length or sp.start == 0)
    assert np.all(count == 1)


def test_bad_halo_is_refused() -> None:
    with pytest.raises(ConfigError, match="halo"):
        plan_axis(100, 32, 16)


def _box3(tiles: np.ndarray) -> np.ndarray:
    """A 3x3 mean with zero padding: a local operator with a 1-pixel reach."""
    p = np.pad(tiles, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, w = tiles.shape[-2:]
    return sum(p[..., i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def _window_fn(tiles: np.ndarray) -> np.ndarray:
    """A WindowFn with two outputs (K = 2) whose second depends on the window's position in its frame."""
    ramp = np.arange(tiles.shape[-1], dtype=np.float32)
    return np.stack([_box3(tiles), _box3(tiles) + ramp])


def _whole_plane(fn, img: np.ndarray, window: int, halo: int, chunk: tuple[int, int]) -> np.ndarray:
    grid = PlaneGrid.of(img.shape[1], img.shape[2], window, halo)
    out = np.full((2, *img.shape), np.nan, np.float32)
    reads = []

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        reads.append((y0, y1, x0, x1))
        return img[:, y0:y1, x0:x1]

    for b in chunk_boxes(Box(0, img.shape[1], 0, img.shape[2]), chunk):
        out[:, :, b.y0:b.y1, b.x0:b.x1] = run_box(fn, read, grid, b, batch_size=3)
    return out


@pytest.mark.parametrize("shape", [(1, 100, 75), (3, 64, 64), (2, 31, 130), (1, 20, 20)])
@pytest.mark.parametrize("window, halo", [(32, 4), (32, 8), (64, 16)])
def test_tiled_equals_untiled_for_local_operator(shape, window: int, halo: int) -> None:
    img = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = _whole_plane(_window_fn, img, window, halo, (10**6, 10**6))
    np.testing.assert_allclose(out[0], _box3(img[None])[0], atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 150), w=st.integers(1, 150), window=st.sampled_from([16, 32]), halo_q=st.integers(0, 3),
       cy=st.integers(1, 90), cx=st.integers(1, 90))
def test_result_does_not_depend_on_the_chunk_size(h: int, w: int, window: int, halo_q: int, cy: int,
                                                  cx: int) -> None:
    img = np.random.default_rng(h * 1000 + w).normal(size=(2, h, w)).astype(np.float32)
    halo = window * halo_q // 8
    whole = _whole_plane(_window_fn, img, window, halo, (10**6, 10**6))
    chunked = _whole_plane(_window_fn, img, window, halo, (cy, cx))
    assert not np.isnan(chunked).any()
    np.testing.assert_array_equal(chunked, whole)


def test_chunks_equal_direct_evaluation_of_each_window() -> None:
    """Every output pixel is the kept core of its own window, evaluated alone."""
    img = np.random.default_rng(1).normal(size=(1, 77, 101)).astype(np.float32)
    window, halo = 32, 8
    chunked = _whole_plane(_window_fn, img, window, halo, (20, 33))
    direct = np.full_like(chunked, np.nan)
    for ys, xs in plan_windows(77, 101, window, halo):
        res = _window_fn(img[None, :, ys.start:ys.start + window, xs.start:xs.start + window])[:, 0]
        ky, kx = slice(ys.keep_start, ys.keep_stop), slice(xs.keep_start, xs.keep_stop)
        direct[:, :, ky, kx] = res[:, :, ky.start - ys.start:ky.stop - ys.start, kx.start - xs.start:kx.stop - xs.start]
    np.testing.assert_array_equal(chunked, direct)


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 500), window=st.sampled_from([16, 32, 128]), halo_q=st.integers(0, 3),
       a=st.integers(0, 499), n=st.integers(1, 300))
def test_windows_for_a_chunk_are_exactly_those_whose_core_meets_it(length: int, window: int, halo_q: int, a: int,
                                                                   n: int) -> None:
    a = a % length
    b = min(length, a + n)
    plan = AxisPlan(length, window, window * halo_q // 8)
    i0, i1 = plan.windows_for(a, b)
    meets = [i for i in range(len(plan)) if plan.keep_starts[i] < b and plan.keep_stops[i] > a]
    assert list(range(i0, i1)) == meets
    r0, r1 = plan.read_range(i0, i1)
    assert r0 <= a and b <= r1 <= length and r1 - r0 <= (i1 - i0 - 1) * (window - 2 * plan.halo) + window


def test_chunk_boxes_tile_a_region_anchored_at_its_corner() -> None:
    boxes = chunk_boxes(Box(10, 75, 3, 40), (32, 16))
    assert boxes[0] == Box(10, 42, 3, 19) and boxes[-1] == Box(74, 75, 35, 40)
    cover = np.zeros((80, 50), int)
    for b in boxes:
        cover[b.y0:b.y1, b.x0:b.x1] += 1
    assert cover[10:75, 3:40].min() == 1 and cover.sum() == 65 * 37


def test_default_halo_is_a_quarter_for_teachers_and_an_eighth_for_students(tiny_teacher, tiny_student) -> None:
    """A student loses nothing measurable at an eighth (benchmarks/halo.py), and computes 1.78x its output
    instead of 4x; a teacher keeps its quarter. A halo stored in the model folder wins over both."""
    from napari_atbsn.inference.denoiser import Denoiser, load_model
    from napari_atbsn.modelio import load_network
    from napari_atbsn.tiling import default_halo

    assert default_halo(128) == default_halo(128, "atbsn") == default_halo(128, "dbsn") == 32
    assert default_halo(128, "student") == 16
    teacher, student = load_model(tiny_teacher), load_model(tiny_student)
    assert (teacher.patch, teacher.halo) == (32, 8) and (student.patch, student.halo) == (32, 4)
    net, cfg = load_network(tiny_student)
    assert Denoiser(net, {**cfg, "halo": 8}).halo == 8
