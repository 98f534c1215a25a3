"""Training previews (the crop denoised by the weights of the moment) and the lazy comparison stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_atbsn import load_model
from napari_atbsn.comparison import ComparisonStack, versions_for
from napari_atbsn.config import BLIND_ESTIMATE, DBSNConfig, DistillConfig, TrainConfig
from napari_atbsn.device import available_devices
from napari_atbsn.errors import BlindSpotError, ConfigError, ImageError
from napari_atbsn.events import Preview, PreviewEvent, StepEvent, drain
from napari_atbsn.inference.inmemory import iter_denoise_outputs
from napari_atbsn.training import iter_distill, iter_train, iter_train_dbsn

TINY = dict(preset="tiny", iters=6, patch=32, batch=2, context=0, device="cpu")  # 2-D: stack context is tested apart


def collect(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def test_preview_events_show_the_current_weights_and_change_nothing(tmp_path: Path, sample_stack) -> None:
    noisy, _ = sample_stack
    crop = noisy[1, 10:80, 5:100]
    events, res = collect(iter_train(noisy, "ZYX", TrainConfig(**TINY), tmp_path / "a",
                                     preview=Preview(crop, "YX", every=4)))
    previews = [e for e in events if isinstance(e, PreviewEvent)]
    assert [e.step for e in previews] == [4, 6]  # every 4 steps, and the last
    order = [(type(e).__name__, e.step) for e in events]
    assert order.index(("PreviewEvent", 4)) == order.index(("StepEvent", 4)) + 1
    # the last preview is exactly the saved model applied to the crop
    model = load_model(tmp_path / "a")
    # (the preview shows the network's fixed k_b: calibrating every preview's crop would cost more than the step)
    np.testing.assert_array_equal(previews[-1].image, model.denoise(crop, "YX", k_b=model.k_b))
    assert previews[0].image.shape == crop.shape and not np.array_equal(previews[0].image, previews[1].image)
    # previews do not touch the training: same weights as a run without them
    _, plain = collect(iter_train(noisy, "ZYX", TrainConfig(**TINY), tmp_path / "b"))
    for (k, a), b in zip(res.model.network.state_dict().items(), plain.model.network.state_dict().values(),
                         strict=True):
        assert np.array_equal(a.numpy(), b.numpy()), k


def test_preview_on_stop_and_in_distillation(tmp_path: Path, sample_stack, tiny_teacher: Path) -> None:
    noisy, _ = sample_stack
    stop = {"now": False}
    gen = iter_train(noisy, "ZYX", TrainConfig(**{**TINY, "iters": 50}), tmp_path / "t",
                     should_stop=lambda: stop["now"], preview=Preview(noisy[0, :40, :40], "YX", every=100))
    events = []
    for ev in gen:
        events.append(ev)
        if isinstance(ev, StepEvent) and ev.step == 3:
            stop["now"] = True
    assert [e.step for e in events if isinstance(e, PreviewEvent)] == [3]  # the state the checkpoint holds
    events, res = collect(iter_distill(noisy, tiny_teacher, "ZYX",
                                       DistillConfig(student="tiny", iters=4, batch=2, device="cpu"),
                                       preview=Preview(noisy[0, :40, :40], "YX", every=2)))
    previews = [e for e in events if isinstance(e, PreviewEvent)]
    assert [(e.stage, e.step) for e in previews] == [("distill", 2), ("distill", 4)]
    np.testing.assert_array_equal(previews[-1].image, res.model.denoise(noisy[0, :40, :40], "YX"))


def test_dbsn_preview_shows_mu_then_the_fused_output(sample_stack) -> None:
    noisy, _ = sample_stack
    crop = noisy[0, :48, :48]
    events, res = collect(iter_train_dbsn(noisy, "ZYX", DBSNConfig(preset="tiny", iters=10, patch=32, batch=2,
                                                                   device="cpu", phases=(0.4, 0.4, 0.2)),
                                          preview=Preview(crop, "YX", every=4)))
    previews = [e for e in events if isinstance(e, PreviewEvent)]
    # phases of 4, 4 and 2 steps: a preview at the end of each
    assert [(e.stage, e.step) for e in previews] == [("dbsn-mu", 4), ("dbsn-sigma", 4), ("dbsn-joint", 2)]
    final = drain(iter_denoise_outputs(res.model, crop, "YX", ks=[None], batch_size=4, dtype="float32"))[0]
    np.testing.assert_array_equal(previews[-1].image, final)
    mu = drain(iter_denoise_outputs(res.model, crop, "YX", ks=[BLIND_ESTIMATE], batch_size=4, dtype="float32"))[0]
    assert not np.array_equal(final, mu)


@pytest.mark.parametrize("kwargs, word", [
    (dict(image=np.zeros((8, 8)), axes="YX", every=0), "positive"),
    (dict(image=np.zeros((8, 8)), axes="ZYX"), "axes"),
    (dict(image=np.zeros((2, 8, 8)), axes="ZYX"), "axes"),
])
def test_bad_previews(kwargs, word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        Preview(**kwargs)


def test_preview_with_the_wrong_channels_is_refused_before_training(tmp_path: Path, sample_stack) -> None:
    noisy, _ = sample_stack
    with pytest.raises(ImageError, match="preview crop has 3 channel"):
        drain(iter_train(noisy, "ZYX", TrainConfig(**TINY), tmp_path / "t",
                         preview=Preview(np.zeros((40, 40, 3)), "YXC")))
    assert not (tmp_path / "t" / "checkpoint").exists()


# -- comparison stack -------------------------------------------------------------------------------
def test_comparison_stack_equals_the_denoised_planes(tiny_teacher: Path, tiny_student: Path, sample_stack) -> None:
    noisy, _ = sample_stack
    teacher, student = load_model(tiny_teacher), load_model(tiny_student)
    stack = ComparisonStack(noisy, "ZYX", versions_for(teacher, [1, 3, 9]) + versions_for(student), cache_planes=2)
    assert stack.shape == (4, *noisy.shape) and stack.dtype == np.float32 and stack.ndim == 4
    assert stack.labels == ["k_b=1", "k_b=3", "k_b=9", "student_tiny"]
    assert stack.computed == 0  # nothing runs until indexed
    ref = np.stack(drain(iter_denoise_outputs(teacher, noisy, "ZYX", ks=[1, 3, 9], batch_size=4, dtype="float32")))
    ref_s = student.denoise(noisy, "ZYX")
    np.testing.assert_array_equal(stack[1, 2], ref[1, 2])
    assert stack.computed == 1
    np.testing.assert_array_equal(stack[:, 2, 5:9, 7], np.concatenate([ref, ref_s[None]])[:, 2, 5:9, 7])
    assert stack.computed == 1  # the same plane, all versions: from the cache
    np.testing.assert_array_equal(stack[3, ::2, 10, -3:], ref_s[::2, 10, -3:])
    np.testing.assert_array_equal(stack[..., 4, 4], np.concatenate([ref, ref_s[None]])[..., 4, 4])
    np.testing.assert_array_equal(np.asarray(stack)[:3], ref)
    assert stack.cached([3]) is not None and stack.cached([0]) is None  # two planes kept: the last two asked


def test_comparison_with_data_has_the_blended_default_first_and_every_gain(tiny_teacher: Path,
                                                                           sample_stack) -> None:
    noisy, _ = sample_stack
    teacher = load_model(tiny_teacher)
    versions = versions_for(teacher, [3, 5], data=noisy, axes="ZYX")
    cal = versions[0].calibration
    assert versions[0].k == "auto" and versions[0].gain_db == cal.gain_db
    # every k_b has its estimate: 5 by Noise2Self, 3 (narrower than the correlation) by SURE
    assert versions[1].gain_db == cal.gain_of(3) is not None and versions[2].gain_db == cal.gain_of(5) is not None
    assert versions[1].label == f"k_b=3 (est. {cal.gain_of(3):+.1f} dB)"
    stack = ComparisonStack(noisy, "ZYX", versions)
    whole = drain(iter_denoise_outputs(teacher, noisy, "ZYX", ks=["auto"], batch_size=4, dtype="float32"))[0]
    # the plane is blended with the volume's calibration, not one of its own: the same as the whole volume
    np.testing.assert_array_equal(stack[0, 1], whole[1])


def test_comparison_stack_axes_and_errors(tiny_teacher: Path, sample_stack) -> None:
    noisy, _ = sample_stack
    teacher = load_model(tiny_teacher)
    tzyx = noisy.reshape(2, 2, *noisy.shape[1:])
    stack = ComparisonStack(tzyx, "TZYX", versions_for(teacher, [1, 3]))
    ref = np.stack(drain(iter_denoise_outputs(teacher, tzyx, "TZYX", ks=[1, 3], batch_size=4, dtype="float32")))
    np.testing.assert_array_equal(stack[:, 1, :, 3], ref[:, 1, :, 3])
    with pytest.raises(IndexError, match="too many"):
        stack[0, 0, 0, 0, 0, 0]
    with pytest.raises(ImageError, match=r"3 channel.*expects 1"):
        ComparisonStack(np.zeros((40, 40, 3), np.float32), "YXC", versions_for(teacher, [1]))
    with pytest.raises(BlindSpotError):
        versions_for(teacher, [2])
    with pytest.raises(ConfigError, match="nothing to compare"):
        ComparisonStack(noisy, "ZYX", [])


def test_available_devices_lists_the_cpu_last() -> None:
    devices = available_devices()
    assert devices[-1][0] == "cpu" and "cores" in devices[-1][1]
    assert all(name.startswith(("cuda:", "mps", "cpu")) for name, _ in devices)
