"""Windowed inference geometry: every pixel once, halos cover context, tiled == untiled."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_atbsn.errors import ConfigError
from napari_atbsn.tiling import iter_tiled, plan_axis


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


@pytest.mark.parametrize("shape", [(1, 100, 75), (3, 64, 64), (2, 31, 130), (1, 20, 20)])
@pytest.mark.parametrize("window, halo", [(32, 4), (32, 8), (64, 16)])
def test_tiled_equals_untiled_for_local_operator(shape, window: int, halo: int) -> None:
    img = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = np.empty_like(img)
    events = list(iter_tiled(_box3, img, window=window, halo=halo, batch_size=3, out=out))
    assert events[-1][0] == events[-1][1]
    expected = _box3(img[None])[0]
    if min(shape[1:]) < window:  # windows are padded with zeros, like the operator's own padding
        pass
    np.testing.assert_allclose(out, expected, atol=1e-6)
