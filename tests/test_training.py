"""Training and distillation: events, losses, resume, and denoising quality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import napari_atbsn
from napari_atbsn.config import DistillConfig, TrainConfig
from napari_atbsn.errors import ConfigError, ImageError, ModelFolderError
from napari_atbsn.events import CheckpointEvent, StepEvent, drain
from napari_atbsn.metrics import psnr
from napari_atbsn.modelio import read_config
from napari_atbsn.training import distill_loss, iter_distill, iter_train, train

TINY = dict(preset="tiny", patch=32, batch=2, context=0, device="cpu")  # 2-D: stack context is tested apart


def test_events_and_cosine_schedule() -> None:
    data = np.random.default_rng(0).normal(size=(2, 40, 40)).astype(np.float32)
    events: list = []
    res = train(data, "ZYX", TrainConfig(iters=6, lr=1e-3, **TINY), callback=events.append)
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6] and steps[0].total == 6
    assert steps[0].lr == pytest.approx(1e-3) and steps[-1].lr < steps[0].lr
    assert all(e.its_per_sec > 0 and np.isfinite(e.loss) for e in steps)
    assert res.steps == 6 and not res.stopped and res.path is None


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_stop_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(3, 48, 48)).astype(np.float32)
    cfg = TrainConfig(iters=8, checkpoint_every=0, **TINY)
    train(data, "ZYX", cfg, tmp_path / "full")
    calls = {"n": 0}

    def stop_after_3() -> bool:
        calls["n"] += 1
        return calls["n"] == 3

    gen = iter_train(data, "ZYX", cfg, tmp_path / "part", should_stop=stop_after_3)
    events: list = []
    res = drain(gen, events.append)
    assert res.stopped and res.steps == 3 and any(isinstance(e, CheckpointEvent) for e in events)
    assert not (tmp_path / "part" / "config.json").exists(), "a stopped run must not look complete"
    assert read_config(tmp_path / "part" / "checkpoint")["state"]["steps"] == 3
    res2 = train(data, "ZYX", cfg, tmp_path / "part", resume=True)
    assert res2.steps == 8 and not (tmp_path / "part" / "checkpoint").exists()
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_existing_model_is_not_clobbered(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(1, 40, 40)).astype(np.float32)
    train(data, "ZYX", TrainConfig(iters=1, **TINY), tmp_path / "m")
    with pytest.raises(ModelFolderError, match="--overwrite"):
        train(data, "ZYX", TrainConfig(iters=1, **TINY), tmp_path / "m")
    with pytest.raises(ModelFolderError, match="nothing to resume"):
        train(data, "ZYX", TrainConfig(iters=1, **TINY), tmp_path / "other", resume=True)


@pytest.mark.parametrize("field, value, word", [
    ("iters", 0, "iters"), ("batch", -1, "batch"), ("patch", 30, "multiple"),
    ("k_a", 4, "even"), ("k_a", 0, "identity"), ("preset", "huge", "preset")])
def test_bad_training_settings(field: str, value, word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        TrainConfig(**{**TINY, field: value}).resolved()


def test_image_smaller_than_patch() -> None:
    with pytest.raises(ImageError, match="smaller than the training patch"):
        train(np.random.default_rng(0).random((20, 20)), "YX", TrainConfig(iters=1, **TINY))


def test_distill_loss_is_sum_of_per_teacher_l1() -> None:
    s = torch.zeros(2, 1, 4, 4)
    t = torch.stack([torch.full((2, 1, 4, 4), v) for v in (1.0, -3.0, 2.0)])
    assert float(distill_loss(s, t, mean_teacher=False)) == pytest.approx(6.0)
    assert float(distill_loss(s, t, mean_teacher=True)) == pytest.approx(0.0)


@pytest.mark.parametrize("ks, word", [((), "empty"), ((1, 3, 3), "more than once"), ((0, 2), "even")])
def test_bad_ks(tiny_teacher: Path, sample_stack, ks, word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        drain(iter_distill(sample_stack[0], tiny_teacher, "ZYX", DistillConfig(ks=ks, iters=1)))


def test_student_records_its_teachers(tiny_student: Path) -> None:
    cfg = read_config(tiny_student)
    assert cfg["kind"] == "student" and cfg["ks"] == [0, 1, 3, 5, 7, 9, 11] and cfg["patch"] == 32
    assert cfg["mean_teacher"] is False and cfg["teacher"]["k_a"] == 9


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
def test_output_comes_back_in_input_range(tiny_teacher: Path, sample_stack, dtype) -> None:
    noisy, _ = sample_stack
    data = noisy[:1].astype(dtype)
    m = napari_atbsn.load_model(tiny_teacher)
    out = m.denoise(data, "ZYX", dtype="input")
    assert out.dtype == data.dtype and out.shape == data.shape
    assert abs(float(out.mean()) - float(data.mean())) < 0.2 * float(data.std())


def test_integer_output_is_rounded_and_clipped_to_its_type(tiny_teacher: Path, sample_stack) -> None:
    noisy, _ = sample_stack
    data = np.clip(noisy[:1].astype(np.int64) + 150, 0, 255).astype(np.uint8)  # saturates: values above 255
    m = napari_atbsn.load_model(tiny_teacher)
    as_float = m.denoise(data, "ZYX")
    as_input = m.denoise(data, "ZYX", dtype="input")
    assert as_float.dtype == np.float32 and as_input.dtype == np.uint8
    np.testing.assert_array_equal(as_input, np.clip(np.rint(as_float), 0, 255).astype(np.uint8))


def test_teacher_and_student_beat_the_noisy_input(tiny_teacher: Path, tiny_student: Path, sample_stack) -> None:
    noisy, clean = sample_stack
    base = psnr(noisy, clean)
    teacher = napari_atbsn.load_model(tiny_teacher).denoise(noisy, "ZYX", k_b=3)
    student = napari_atbsn.load_model(tiny_student).denoise(noisy, "ZYX")
    assert psnr(teacher, clean) > base + 0.5
    assert psnr(student, clean) > base + 0.5


def test_large_image_denoised_as_well_as_patch_sized_crops(tiny_teacher: Path, sample_stack) -> None:
    """Decision 8: an image 4x the patch is run in windows, so it loses nothing to its crops."""
    noisy, clean = sample_stack  # 128 x 128 planes, patch 32
    m = napari_atbsn.load_model(tiny_teacher)
    whole = m.denoise(noisy[:2], "ZYX")
    crops = np.empty_like(whole)
    for y in range(0, 128, 32):
        for x in range(0, 128, 32):
            crops[:, y:y + 32, x:x + 32] = m.denoise(noisy[:2, y:y + 32, x:x + 32], "ZYX")
    assert psnr(whole, clean[:2]) >= psnr(crops, clean[:2]) - 0.1


def test_resume_keeps_checkpoint_settings_and_refuses_conflicts(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(2, 64, 64)).astype(np.float32)
    stop = iter([False, True])
    res = drain(iter_train(data, "ZYX", TrainConfig(iters=5, **TINY), tmp_path / "m", should_stop=lambda: next(stop)))
    assert res.stopped and res.steps == 2
    with pytest.raises(ConfigError, match="--patch 64 differs from the checkpoint's 32"):
        train(data, "ZYX", TrainConfig(preset="tiny", patch=64, device="cpu"), tmp_path / "m", resume=True)
    # Settings not given come from the checkpoint (batch 2, patch 32, iters 5), not from the preset.
    res = train(data, "ZYX", TrainConfig(preset="tiny", device="cpu"), tmp_path / "m", resume=True)
    cfg = read_config(tmp_path / "m")
    assert res.steps == 5 and cfg["patch"] == 32 and cfg["train"]["batch"] == 2


def test_resume_on_other_data_or_another_preset_is_refused(tmp_path: Path, capsys) -> None:
    """R71-R73: a resumed run must see its checkpoint's data and network; the demo refuses zero steps."""
    import tifffile

    from napari_atbsn.cli import main

    data = np.random.default_rng(0).normal(size=(2, 64, 64)).astype(np.float32)
    drain(iter_train(data, "ZYX", TrainConfig(iters=5, **TINY), tmp_path / "m", should_stop=lambda: True))
    before = (tmp_path / "m" / "checkpoint" / "config.json").read_bytes()
    other = data.copy()
    other[1, 30:40, 30:40] += 5  # same shape, other pixels
    with pytest.raises(ConfigError, match=r"was trained on other data \(its pixels differ\); resume with the same"):
        train(other, "ZYX", TrainConfig(preset="tiny", device="cpu"), tmp_path / "m", resume=True)
    with pytest.raises(ConfigError, match=r"other data \(shape \[2, 64, 64\] there, \[2, 64, 60\] here\)"):
        train(data[..., :60], "ZYX", TrainConfig(preset="tiny", device="cpu"), tmp_path / "m", resume=True)
    assert (tmp_path / "m" / "checkpoint" / "config.json").read_bytes() == before  # nothing rewritten
    tifffile.imwrite(tmp_path / "d.tif", data, metadata={"axes": "ZYX"}, photometric="minisblack")
    rc = main(["train", str(tmp_path / "d.tif"), "-o", str(tmp_path / "m"), "--resume", "--preset", "small"])
    assert rc == 2 and "--preset small differs from the checkpoint's tiny" in capsys.readouterr().err
    rc = main(["demo", "-o", str(tmp_path / "demo"), "--iters", "0"])
    assert rc == 2 and "--iters 0 must be a positive number of steps" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_interrupted_checkpoint_swap_is_recovered(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(2, 48, 48)).astype(np.float32)
    stop = iter([False, False, True])
    drain(iter_train(data, "ZYX", TrainConfig(iters=6, **TINY), tmp_path / "m", should_stop=lambda: next(stop)))
    (tmp_path / "m" / "checkpoint").rename(tmp_path / "m" / "checkpoint.old")  # crash between the two renames
    (tmp_path / "m" / "checkpoint.partial").mkdir()  # and a half-written new one
    res = train(data, "ZYX", TrainConfig(iters=6, **TINY), tmp_path / "m", resume=True)
    assert res.steps == 6 and sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json",
                                                                                      "model.safetensors"]


def test_stop_on_the_last_step_still_writes_the_model(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(1, 40, 40)).astype(np.float32)
    res = drain(iter_train(data, "ZYX", TrainConfig(iters=2, **TINY), tmp_path / "m", should_stop=lambda: True))
    assert res.stopped and res.steps == 1  # stopped after step 1 of 2
    res = drain(iter_train(data, "ZYX", TrainConfig(iters=2, **TINY), tmp_path / "m", resume=True,
                           should_stop=lambda: True))
    assert not res.stopped and (tmp_path / "m" / "config.json").exists()


def test_overwrite_with_bad_input_keeps_the_old_model(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(1, 40, 40)).astype(np.float32)
    train(data, "ZYX", TrainConfig(iters=1, **TINY), tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    with pytest.raises(ImageError, match="smaller than the training patch"):
        train(data[:, :20, :20], "ZYX", TrainConfig(iters=1, **TINY), tmp_path / "m", overwrite=True)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert read_config(tmp_path / "m")["steps"] == 1


def test_denoise_refuses_bad_batch_size_and_kb_for_students(tiny_student: Path, sample_stack) -> None:
    from napari_atbsn.errors import BlindSpotError

    m = napari_atbsn.load_model(tiny_student)
    with pytest.raises(ConfigError, match="batch_size"):
        m.denoise(sample_stack[0][:1], "ZYX", batch_size=-1)
    with pytest.raises(BlindSpotError, match="no blind spot"):
        m.denoise(sample_stack[0][:1], "ZYX", k_b=3)


class _CountingArray:
    """A large on-disk-like array that records every read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads: list[int] = []

    def __getitem__(self, key):
        out = self.data[key]
        self.reads.append(out.size)
        return out


def test_training_reads_patches_not_the_volume(tmp_path: Path) -> None:
    """Memory does not grow with the data: normalisation reads a bounded sample, steps read only their patches
    (array-likes other than files that fit in a quarter of the free memory, which are read once)."""
    rng = np.random.default_rng(0)
    vol = _CountingArray((100 + 10 * rng.normal(size=(40, 96, 96))).astype(np.float32))
    # context=0: auto would read plane pairs to measure their noise, which this count is not about
    train(vol, "ZYX", TrainConfig(preset="tiny", iters=3, patch=32, batch=2, context=0, device="cpu"), tmp_path / "m")
    plane = 96 * 96
    assert max(vol.reads) <= plane  # never more than one plane at a time
    # the normalisation sample (<= 16 planes), the data record's digest sample (<= 4 planes), the patches
    assert sum(vol.reads) <= 16 * plane + 4 * plane + 3 * 2 * 32 * 32
    patch_reads = [r for r in vol.reads if r == 32 * 32]
    assert len(patch_reads) == 3 * 2


def test_training_from_a_lazy_file(tmp_path: Path, sample_stack) -> None:
    from napari_atbsn.io.readers import open_image

    noisy, _ = sample_stack
    zarr = pytest.importorskip("zarr")
    z = zarr.open_array(tmp_path / "noisy.zarr", mode="w", shape=noisy.shape, chunks=(1, 64, 64), dtype=noisy.dtype)
    z[:] = noisy
    img = open_image(tmp_path / "noisy.zarr", "ZYX")
    res = train(img, None, TrainConfig(preset="tiny", iters=2, patch=32, batch=2, context=0, device="cpu"),
                tmp_path / "m")
    assert res.steps == 2 and (tmp_path / "m" / "model.safetensors").exists()


def test_patches_come_only_from_the_rows_not_held_out() -> None:
    from napari_atbsn.sampling import PlaneSource, sample_batch

    img = np.zeros((3, 80, 60), np.float32)
    img[:, 50:] = 1.0  # the held-out rows
    src = PlaneSource(img, "ZYX")
    for step in range(20):
        assert sample_batch(src, step, seed=0, batch=8, patch=32, rows=50).max() == 0.0
    assert max(sample_batch(src, s, seed=0, batch=8, patch=32).max() for s in range(20)) == 1.0
    with pytest.raises(ImageError, match="rows=20: patches of 32"):
        sample_batch(src, 0, seed=0, batch=1, patch=32, rows=20)


def test_batch_planes_names_the_plane_and_image_of_every_patch_sample_batch_draws() -> None:
    from napari_atbsn.sampling import PlaneSource, batch_planes, sample_batch

    img = np.broadcast_to(np.arange(12, dtype=np.float32).reshape(3, 4, 1, 1), (3, 4, 40, 40)).copy()  # TSYX
    src = PlaneSource(img, "TSYX")
    for step in range(5):
        for augment in (True, False):
            kw = dict(seed=3, batch=6, patch=32, augment=augment, rows=36)
            planes = batch_planes(src, step, **kw)
            np.testing.assert_array_equal(sample_batch(src, step, **kw)[:, 0, 0, 0], planes)  # plane p holds p
            np.testing.assert_array_equal(src.separate_images(planes), planes % 4)  # S is the faster axis
    assert PlaneSource(img.reshape(12, 40, 40), "ZYX").separate_images([0, 5]) is None


def test_training_data_from_a_file_is_read_into_memory_once_when_it_fits_with_the_same_batches(tmp_path) -> None:
    """Sampling patch by patch from a file costs a read per patch (13 ms a batch from a TIFF, 0.5 ms from
    memory): data that fits in a quarter of the free memory is read once, and gives the same batches."""
    import tifffile

    from napari_atbsn.io.readers import open_image
    from napari_atbsn.sampling import in_memory, plane_source, sample_batch

    data = np.random.default_rng(0).integers(0, 4000, size=(3, 80, 90)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "t.tif", data, metadata={"axes": "ZYX"})
    lazy = plane_source(open_image(tmp_path / "t.tif"), "ZYX")
    loaded = in_memory(lazy, available=10 * data.nbytes)
    assert isinstance(loaded.data, np.ndarray) and loaded.data.dtype == np.uint16
    for step in range(3):
        np.testing.assert_array_equal(sample_batch(loaded, step, seed=1, batch=4, patch=32),
                                      sample_batch(lazy, step, seed=1, batch=4, patch=32))
    assert in_memory(lazy, available=3 * data.nbytes) is lazy  # over a quarter of the memory: stays lazy
    array = plane_source(data, "ZYX")
    assert in_memory(array, available=10 * data.nbytes) is array  # already in memory: no copy


# ------------------------------------------------------------------ batches sampled ahead (issue 19)


def test_prefetched_batches_train_the_same_weights(monkeypatch, tmp_path: Path) -> None:
    """A helper thread samples the next batches while the device computes: batches depend only on the step, so
    the run ends with the same weights, bit for bit, as one that samples in turn."""
    import threading

    from napari_atbsn import sampling
    from napari_atbsn.training import loop

    data = np.random.default_rng(0).normal(size=(3, 48, 48)).astype(np.float32)
    cfg = TrainConfig(iters=6, checkpoint_every=0, **TINY)
    threads: list[str] = []
    sample = sampling.sample_batch

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return sample(*args, **kwargs)

    import importlib

    monkeypatch.setattr(importlib.import_module("napari_atbsn.training.train"), "sample_batch", recording)
    train(data, "ZYX", cfg, tmp_path / "ahead")
    assert len(threads) == 6 and all(t.startswith("atbsn-batches") for t in threads)
    monkeypatch.setattr(loop, "PREFETCH_BATCHES", 0)
    threads.clear()
    train(data, "ZYX", cfg, tmp_path / "in_turn")
    assert threads == [threading.current_thread().name] * 6
    a, b = _weights(tmp_path / "ahead"), _weights(tmp_path / "in_turn")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_prefetcher_raises_a_bad_batch_at_its_own_step_and_stops_reading_on_close() -> None:
    import threading

    from napari_atbsn.training.loop import BatchPrefetcher

    calls: list[int] = []

    def batch_fn(step: int) -> np.ndarray:
        calls.append(step)
        return np.full((1, 1, 4, 4), np.nan if step == 3 else float(step), np.float32)

    p = BatchPrefetcher(batch_fn, 0, 10, ahead=2)
    assert [float(p.get(s)[0, 0, 0, 0]) for s in range(3)] == [0.0, 1.0, 2.0]
    with pytest.raises(ImageError, match="step 4"):  # sampled early, raised when step 3 (the 4th) is reached
        p.get(3)
    p.close()
    assert max(calls) <= 5 and not any(t.name.startswith("atbsn-batches") for t in threading.enumerate())
    assert BatchPrefetcher(batch_fn, 0, 10, ahead=0).get(7)[0, 0, 0, 0] == 7.0  # in turn: no thread


def test_a_stopped_run_leaves_no_sampling_thread() -> None:
    import threading

    data = np.random.default_rng(0).normal(size=(2, 40, 40)).astype(np.float32)
    res = drain(iter_train(data, "ZYX", TrainConfig(iters=50, **TINY), should_stop=lambda: True))
    assert res.stopped and res.steps == 1
    assert not any(t.name.startswith("atbsn-batches") for t in threading.enumerate())
