"""Windows cut, normalised and reassembled on the device (inference.device_windows, issue 19).

On the CPU the device path runs the host path's float32 arithmetic in the same order, on the same windows
in the same batches, so both give the same bytes: checked here for every output kind (teacher k_b's, a
student, a D-BSN's image and noise map), source dtypes, planes smaller than the window, batches of one,
``dtype='input'``, the ``auto`` blend and the file pipeline. On CUDA (marked ``gpu``) the two paths run the
same network on the same windows, so they agree to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_atbsn.config import NOISE_MAP
from napari_atbsn.events import drain
from napari_atbsn.inference.denoiser import Denoiser
from napari_atbsn.inference.device_windows import StagingBuffers, upload
from napari_atbsn.inference.inmemory import iter_denoise_outputs
from napari_atbsn.modelio import arch_dict
from napari_atbsn.models import ATBSN, DBSN, Student


def _pair(kind: str, channels: int = 3, device: str = "cpu") -> tuple[Denoiser, Denoiser]:
    """The same random network twice: windows on the host, and on the device."""
    out = []
    for on_device in (False, True):
        torch.manual_seed(1)
        net = {"atbsn": lambda: ATBSN(channels, "tiny"), "student": lambda: Student("tiny", channels),
               "dbsn": lambda: DBSN(channels, "tiny"),
               "atbsn context 1": lambda: ATBSN(channels, "tiny", context=1)}[kind]()
        cfg = {"kind": kind.split()[0], "arch": arch_dict(net), "patch": 32, "k_b": 3,
               "normalization": {"mode": "zscore", "offset": [10.0] * channels, "scale": [3.0] * channels}}
        out.append(Denoiser(net, cfg, device=device, amp=False, windows_on_device=on_device))
    return out[0], out[1]


def _both(pair, image, axes, **kw) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return tuple(drain(iter_denoise_outputs(m, image, axes, **kw)) for m in pair)  # type: ignore[return-value]


RNG = np.random.default_rng(0)
IMAGES = {
    "uint16 YXC": ("YXC", RNG.integers(0, 60000, (70, 90, 3)).astype(np.uint16)),
    "float64 YXC": ("YXC", RNG.normal(10, 3, (70, 90, 3))),
    "float32 ZCYX": ("ZCYX", RNG.normal(10, 3, (2, 3, 50, 41)).astype(np.float32)),
    "smaller than the window": ("YXC", RNG.normal(10, 3, (20, 25, 3)).astype(np.float32)),
}


@pytest.mark.parametrize("name", list(IMAGES))
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_teacher_on_device_equals_host_bit_for_bit(name, batch) -> None:
    axes, image = IMAGES[name]
    pair = _pair("atbsn")
    for dtype in ("float32", "input"):
        host, dev = _both(pair, image, axes, ks=[None, 0, 5], batch_size=batch, dtype=dtype)
        for h, d in zip(host, dev, strict=True):
            assert h.dtype == d.dtype and h.shape == d.shape == image.shape
            assert np.array_equal(h, d), (name, batch, dtype)


def test_student_and_auto_blend_on_device_equal_host() -> None:
    axes, image = IMAGES["uint16 YXC"]
    host, dev = _both(_pair("student"), image, axes, ks=[None], batch_size=4)
    assert np.array_equal(host[0], dev[0])
    host, dev = _both(_pair("atbsn"), image, axes, ks=["auto", 3], batch_size=4)
    assert np.array_equal(host[0], dev[0]) and np.array_equal(host[1], dev[1])


def test_a_compiled_networks_short_last_batch_is_padded_to_one_shape(monkeypatch) -> None:
    """A compiled network sees one batch shape (no recompilation for a unit's last batch): the short batch is
    padded with zero windows whose outputs are dropped, so the image is the same bytes as without padding."""
    axes, image = IMAGES["uint16 YXC"]  # 70x90 at window 32, halo 8: 5x6 = 30 windows, batches of 8 + 6
    host, dev = _pair("atbsn")
    shapes = []
    forward = dev.forward_windows
    monkeypatch.setattr(dev, "forward_windows", lambda t, ks: shapes.append(t.shape[0]) or forward(t, ks))
    dev.network._atbsn_compiled = True  # what compile_module marks; the arithmetic stays eager here
    (padded,) = drain(iter_denoise_outputs(dev, image, axes, ks=[3], batch_size=8))
    (plain,) = drain(iter_denoise_outputs(host, image, axes, ks=[3], batch_size=8))
    assert set(shapes) == {8} and len(shapes) == 4
    assert np.array_equal(padded, plain)


def test_dbsn_image_and_noise_map_on_device_equal_host() -> None:
    image = RNG.normal(10, 3, (3, 40, 52)).astype(np.float32)
    host, dev = _both(_pair("dbsn", channels=1), image, "ZYX", ks=[None, NOISE_MAP], batch_size=4)
    assert np.array_equal(host[0], dev[0])
    assert np.array_equal(host[1], dev[1])
    assert not np.allclose(dev[0], dev[1])  # the noise map scales only: a different output, not a copy


def test_file_pipeline_on_device_writes_the_host_bytes(tmp_path) -> None:
    from napari_atbsn.inference.run import denoise

    vol = RNG.integers(900, 1400, (3, 70, 83)).astype(np.uint16)
    written = []
    for model in _pair("atbsn", channels=1):
        model.normalization = type(model.normalization)("zscore", (1000.0,), (100.0,))
        out = tmp_path / f"out_{model.windows_on_device}.npy"
        res = denoise(vol, model, out, axes="ZYX", chunk=32, batch_size=3)
        assert res.complete
        written.append(np.load(out))
    assert np.array_equal(written[0], written[1])


def test_upload_keeps_integers_and_never_writes_into_the_callers_array() -> None:
    from napari_atbsn.inference.device_windows import channel_constants, normalise_on_device

    region = RNG.normal(size=(1, 8, 9)).astype(np.float32)
    kept = region.copy()
    t = upload(region, torch.device("cpu"), StagingBuffers(torch.device("cpu")))
    normalise_on_device(t, *channel_constants([1.0], [2.0], torch.device("cpu")))
    assert np.array_equal(region, kept)  # normalised in a copy on the CPU
    assert upload(np.zeros((1, 2, 2), np.uint16), torch.device("cpu"), StagingBuffers(torch.device("cpu"))).dtype \
        == torch.uint16  # half the bytes of float32 cross the bus
    big_endian = np.arange(4, dtype=">u2").reshape(1, 2, 2)
    assert upload(big_endian, torch.device("cpu"), StagingBuffers(torch.device("cpu"))).dtype == torch.float32


def test_staging_buffers_are_reused_and_grown() -> None:
    s = StagingBuffers(torch.device("cpu"))
    a = s.get("in", (2, 3), torch.float32)
    b = s.get("in", (3, 2), torch.uint16)
    assert a.data_ptr() == b.data_ptr()  # smaller: the same memory
    c = s.get("in", (10, 10), torch.float32)
    assert c.shape == (10, 10) and c.numel() == 100


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["atbsn", "student", "dbsn", "atbsn context 1"])
def test_device_windows_on_cuda_match_the_host_path(kind) -> None:
    """The same network on the same windows: float32 on CUDA agrees to rounding (1e-4 of the range)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        channels = 1 if kind == "dbsn" else 3
        image = RNG.normal(10, 3, (3, 150, 170, channels)).astype(np.float32)
        host, dev = _both(_pair(kind, channels, device="cuda"), image, "ZYXC", ks=[None], batch_size=8)
        rng = float(host[0].max() - host[0].min())
        diff = float(np.abs(host[0] - dev[0]).max())
        assert diff <= 1e-4 * rng, (kind, diff, rng)
    finally:
        torch.backends.cudnn.allow_tf32 = True
