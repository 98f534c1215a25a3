"""The GPU path: mixed precision, channels-last, cuDNN autotuning, pinned transfers, torch.compile.

Tests marked ``gpu`` need CUDA and are skipped without it. They check that the fast path gives the
float32 result within stated tolerances:

* inference in mixed precision: max |AMP - fp32| <= 1 % of the output's range (bf16 keeps 8 bits of
  mantissa: ~0.4 % per value), and PSNR against the clean image within 0.1 dB;
* training in mixed precision (bf16, and fp16 with loss scaling): the same number of steps ends with a
  loss within 10 % and a denoised PSNR within 0.5 dB of float32 training;
* channels-last and torch.compile in float32: outputs equal within 1e-4 of the range (only the order of
  floating-point sums changes).

The CPU tests check the same plumbing where it can run here: channels-last and torch.compile give the
contiguous eager results, autocast is a no-op off CUDA, and a reduced-precision run never resumes
into a float32 output (the fingerprint).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_atbsn import device as dev
from napari_atbsn.config import DistillConfig, TrainConfig
from napari_atbsn.inference.denoiser import Denoiser, load_model
from napari_atbsn.metrics import psnr
from napari_atbsn.modelio import load_network
from napari_atbsn.training import distill, train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
AMP_RANGE_TOL = 0.01      # inference: max abs difference / output range
AMP_PSNR_TOL = 0.1        # inference: dB
TRAIN_LOSS_TOL = 0.10     # training: relative difference of the mean loss over the last steps
TRAIN_PSNR_TOL = 0.5      # training: dB
LAYOUT_TOL = 1e-4         # channels-last / compile in float32: max abs difference / output range


def _fresh(path, **kw) -> Denoiser:
    net, cfg = load_network(path)
    return Denoiser(net, cfg, **kw)


def _range(a: np.ndarray) -> float:
    return float(a.max() - a.min())


# ------------------------------------------------------------------------------------------ CPU tests

def test_autocast_is_a_noop_off_cuda(tiny_teacher, sample_stack) -> None:
    noisy, _ = sample_stack
    a = _fresh(tiny_teacher, amp=True).denoise(noisy[:1], "ZYX")
    b = _fresh(tiny_teacher, amp=False).denoise(noisy[:1], "ZYX")
    assert np.array_equal(a, b)
    assert isinstance(dev.autocast(torch.device("cpu"), True), type(dev.autocast(torch.device("cpu"), False)))


def test_a_mixed_precision_job_never_resumes_into_float32_chunks(tiny_teacher, sample_stack, tmp_path) -> None:
    """Mixed precision is part of a denoise job's identity where it takes effect (CUDA, or workers on
    'auto'); on the CPU the record is unchanged, so CPU jobs resume as before whatever --no-amp says."""
    from napari_atbsn.inference.plan import plan_job
    from napari_atbsn.inference.run import iter_run

    noisy, _ = sample_stack
    job = plan_job(noisy[:1], load_model(tiny_teacher), tmp_path / "a.npy", axes="ZYX")
    list(iter_run(job))
    assert "mixed_precision" not in job.record["model"]
    for worker_device, amp, recorded in (("cuda", True, True), ("auto", True, True), ("cuda", False, False),
                                         ("cpu", True, False)):
        job = plan_job(noisy[:1], load_model(tiny_teacher, amp=amp), tmp_path / "b.npy", axes="ZYX",
                       worker_device=worker_device)  # workers on a GPU cluster
        assert job.record["model"].get("mixed_precision", False) is recorded, (worker_device, amp)


def test_output_layer_stays_float32_under_autocast(tiny_teacher) -> None:
    """Under bf16 autocast (here the CPU's, the arithmetic is the same) the image is a float32 sum, not a
    value rounded to bf16's 8-bit mantissa."""
    from napari_atbsn.models import ATBSN, Student
    from napari_atbsn.models.blocks import OutputConv

    x = torch.randn(2, 1, 32, 32) * 3
    for net in (ATBSN(1, "tiny").eval(), Student("A", 1).eval(), load_network(tiny_teacher)[0]):
        assert sum(isinstance(m, OutputConv) for m in net.modules()) == 1
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x)
        assert y.dtype == torch.float32
        assert (y.to(torch.bfloat16).float() != y).float().mean() > 0.5  # not on the bf16 grid
        with torch.no_grad():
            ref = net(x)
        assert (y - ref).abs().max() < 0.05 * (ref.max() - ref.min())


def test_channels_last_is_auto_on_cuda_only() -> None:
    assert dev.use_channels_last(torch.device("cpu"), None) is False
    assert dev.use_channels_last(torch.device("cuda"), None) is True
    assert dev.use_channels_last(torch.device("cuda"), False) is False
    assert dev.use_channels_last(torch.device("cpu"), True) is True


def test_to_device_layout() -> None:
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    t = dev.to_device(x, torch.device("cpu"), channels_last=True)
    assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    assert torch.equal(t, torch.from_numpy(x))
    assert dev.to_device(x, torch.device("cpu")).is_contiguous()


def test_channels_last_training_and_inference_match_contiguous(sample_stack, tmp_path) -> None:
    """channels-last only reorders memory: the same steps give the same losses (to float32 rounding; Adam
    then amplifies those last-bit differences in the weights, so the inference check uses one set of
    weights in both layouts)."""
    noisy, _ = sample_stack
    runs = {}
    for cl in (False, True):
        cfg = TrainConfig(preset="tiny", iters=6, patch=32, batch=4, device="cpu", channels_last=cl,
                          checkpoint_every=0, context=0)
        res = train(noisy, "ZYX", cfg, tmp_path / f"cl{cl}")
        runs[cl] = res
        assert load_model(tmp_path / f"cl{cl}").config["train"]["channels_last"] is cl
    assert np.allclose(runs[False].losses, runs[True].losses, rtol=1e-4)
    a = _fresh(tmp_path / "clTrue", channels_last=False).denoise(noisy[:1], "ZYX")
    b = _fresh(tmp_path / "clTrue", channels_last=True).denoise(noisy[:1], "ZYX")
    assert np.abs(a - b).max() <= 1e-4 * _range(a)


def test_distillation_with_channels_last_matches(sample_stack, tiny_teacher, tmp_path) -> None:
    noisy, _ = sample_stack
    losses = []
    for cl in (False, True):
        cfg = DistillConfig(student="tiny", iters=4, batch=4, device="cpu", channels_last=cl, checkpoint_every=0)
        losses.append(distill(noisy, tiny_teacher, "ZYX", cfg).losses)
    assert np.allclose(losses[0], losses[1], rtol=1e-4)


@pytest.mark.slow
def test_compiled_teacher_matches_eager(tiny_teacher, sample_stack, monkeypatch) -> None:
    """torch.compile covers AT-BSN's ``teachers`` pass (not only forward) and keeps the weights' names.

    Traced by dynamo and AOTAutograd as on a GPU, but with the ``aot_eager`` backend: inductor's C++ code
    generation for the CPU took 70 s of the suite, and the CUDA tests compile with inductor."""
    import functools

    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    counters.clear()
    noisy, _ = sample_stack
    eager = _fresh(tiny_teacher)
    compiled = _fresh(tiny_teacher, compile=True)
    assert set(compiled.network.state_dict()) == set(eager.network.state_dict())
    assert compiled.fingerprint() == eager.fingerprint()
    a = eager.denoise(noisy[:1], "ZYX")
    b = compiled.denoise(noisy[:1], "ZYX")
    assert np.abs(a - b).max() <= LAYOUT_TOL * _range(a)
    # k_b goes through the compiled pass too: a different k_b gives a different image
    c = compiled.denoise(noisy[:1], "ZYX", k_b=1)
    assert np.abs(c - b).max() > 10 * LAYOUT_TOL * _range(a)
    assert counters["stats"]["unique_graphs"] >= 1  # the pass really went through the compiler


def test_compile_failure_is_a_clear_message() -> None:
    def broken_backend(graph, inputs):  # what a machine without a working compiler toolchain produces
        raise RuntimeError("no C++ compiler found")

    fn = torch.compile(lambda x: x * 2 + 1, backend=broken_backend)
    with pytest.raises(RuntimeError) as info:
        fn(torch.ones(3))
    err = dev.compile_error(info.value)
    assert err is not None and "torch.compile failed" in str(err) and "without --compile" in str(err)
    assert dev.compile_error(RuntimeError("shape mismatch")) is None
    from napari_atbsn.errors import DeviceError

    fn2 = torch.compile(lambda x: x * 3 - 1, backend=broken_backend)
    with pytest.raises(DeviceError, match="without --compile"), dev.compile_errors_named():
        fn2(torch.ones(3))


def test_cli_exposes_the_gpu_flags() -> None:
    from napari_atbsn.arguments import build_parser

    p = build_parser()
    for cmd in (["train", "x", "-o", "y"], ["distill", "x", "--teacher", "t", "-o", "y"],
                ["denoise", "x", "-m", "m", "-o", "y"]):
        args = p.parse_args([*cmd, "--no-amp", "--compile"])
        assert args.no_amp and args.compile


# ----------------------------------------------------------------------------------------- CUDA tests

@pytest.fixture
def true_float32(monkeypatch):
    """cuDNN and cuBLAS use TF32 for float32 by default on Ampere and later (~1e-3 relative error): the
    float32 baselines here must be real float32."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_amp_inference_matches_fp32(kind, tiny_teacher, tiny_student, sample_stack, true_float32) -> None:
    noisy, clean = sample_stack
    path = tiny_teacher if kind == "teacher" else tiny_student
    fp32 = _fresh(path, device="cuda", amp=False, channels_last=False).denoise(noisy[:2], "ZYX")
    amp = _fresh(path, device="cuda", amp=True).denoise(noisy[:2], "ZYX")
    cpu = _fresh(path, device="cpu").denoise(noisy[:2], "ZYX")
    r = _range(fp32)
    assert np.abs(fp32 - cpu).max() <= LAYOUT_TOL * r  # CUDA float32 is the CPU's result
    assert np.abs(amp - fp32).max() <= AMP_RANGE_TOL * r
    d = float(clean.max() - clean.min())
    assert abs(psnr(amp, clean[:2], d) - psnr(fp32, clean[:2], d)) <= AMP_PSNR_TOL


@pytest.mark.gpu
@needs_cuda
def test_dbsn_amp_inference_matches_fp32(sample_stack, tmp_path) -> None:
    from napari_atbsn.config import DBSNConfig
    from napari_atbsn.training import train_dbsn

    noisy, _ = sample_stack
    train_dbsn(noisy, "ZYX", DBSNConfig(preset="tiny", iters=30, patch=32, batch=4, device="cuda"), tmp_path / "d")
    fp32 = _fresh(tmp_path / "d", device="cuda", amp=False).denoise(noisy[:1], "ZYX")
    amp = _fresh(tmp_path / "d", device="cuda", amp=True).denoise(noisy[:1], "ZYX")
    assert np.isfinite(amp).all()
    assert np.abs(amp - fp32).max() <= AMP_RANGE_TOL * _range(fp32)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_amp_training_matches_fp32(precision, sample_stack, tmp_path, monkeypatch) -> None:
    if precision == "bf16" and not dev.bf16_native(torch.device("cuda")):
        pytest.skip("this GPU has no native bf16")
    if precision == "fp16":  # the path of GPUs without native bf16: fp16 autocast with loss scaling
        monkeypatch.setattr(dev, "bf16_native", lambda device: False)
        assert dev.needs_grad_scaler(torch.device("cuda"), True)
        assert dev.amp_dtype(torch.device("cuda")) == torch.float16
    noisy, clean = sample_stack
    outs, losses = {}, {}
    for amp in (False, True):
        cfg = TrainConfig(preset="tiny", iters=150, patch=32, batch=8, device="cuda", amp=amp, checkpoint_every=0,
                          context=0)
        res = train(noisy, "ZYX", cfg, tmp_path / f"amp{amp}")
        losses[amp] = float(np.mean(res.losses[-30:]))
        outs[amp] = _fresh(tmp_path / f"amp{amp}", device="cuda", amp=False).denoise(noisy[:2], "ZYX")
    assert abs(losses[True] - losses[False]) <= TRAIN_LOSS_TOL * losses[False]
    d = float(clean.max() - clean.min())
    assert abs(psnr(outs[True], clean[:2], d) - psnr(outs[False], clean[:2], d)) <= TRAIN_PSNR_TOL


@pytest.mark.gpu
@needs_cuda
def test_cuda_fast_path_settings(tiny_teacher, tiny_student) -> None:
    teacher = _fresh(tiny_teacher, device="cuda")
    assert teacher.amp and not teacher.channels_last  # NHWC slowed the teacher's rotations and shifts
    assert teacher.windows_on_device
    d = _fresh(tiny_student, device="cuda")
    assert d.channels_last and d.amp
    assert torch.backends.cudnn.benchmark
    w = next(p for p in d.network.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] > 1)
    assert w.is_contiguous(memory_format=torch.channels_last)
    t = dev.to_device(np.zeros((2, 1, 32, 32), np.float32), torch.device("cuda"), channels_last=True)
    assert t.is_cuda and t.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@needs_cuda
def test_channels_last_and_compile_on_cuda_match_fp32(tiny_student, sample_stack, true_float32) -> None:
    noisy, _ = sample_stack
    base = _fresh(tiny_student, device="cuda", amp=False, channels_last=False).denoise(noisy[:1], "ZYX")
    for kw in ({"channels_last": True}, {"channels_last": True, "compile": True}):
        out = _fresh(tiny_student, device="cuda", amp=False, **kw).denoise(noisy[:1], "ZYX")
        assert np.abs(out - base).max() <= LAYOUT_TOL * _range(base), kw


@pytest.mark.gpu
@needs_cuda
def test_compiled_amp_training_runs_and_saves_plain_weights(sample_stack, tmp_path) -> None:
    noisy, _ = sample_stack
    cfg = TrainConfig(preset="tiny", iters=20, patch=32, batch=4, device="cuda", compile=True, checkpoint_every=0,
                      context=0)
    res = train(noisy, "ZYX", cfg, tmp_path / "c")
    assert np.isfinite(res.losses).all()
    net, _ = load_network(tmp_path / "c")  # the saved names are the module's own, loadable without compile
    assert not any("_orig_mod" in k for k in net.state_dict())


@needs_cuda
def test_paper_dbsn_trains_to_beat_the_noisy_input_on_cuda(tmp_path) -> None:
    """The paper-size D-BSN (6.6 M parameters) collapsed to 20 dB on a 32 dB stack at any precision before its
    init and noise fit were fixed; a short bf16 run on pixel-independent Poisson-Gaussian noise must now end
    with a fusion and a default output better than the input, and report so itself."""
    from napari_atbsn.analysis import _gaussian_blur
    from napari_atbsn.config import DBSNConfig
    from napari_atbsn.events import drain
    from napari_atbsn.inference.inmemory import iter_denoise_outputs
    from napari_atbsn.sample_data import add_poisson_gaussian_noise
    from napari_atbsn.training import train_dbsn

    field = _gaussian_blur(np.random.default_rng(0).normal(size=(8, 128, 128)), 6.0)
    clean = (5 + 95 * (field - field.min()) / (field.max() - field.min())).astype(np.float32)
    noisy = add_poisson_gaussian_noise(clean, read_noise=2.0, seed=3)
    res = train_dbsn(noisy, "ZYX", DBSNConfig(preset="paper", iters=600, patch=64, batch=8, device="cuda"),
                     tmp_path / "paper")
    rng = float(clean.max() - clean.min())
    base = psnr(noisy[:2], clean[:2], data_range=rng)
    (fused,) = drain(iter_denoise_outputs(res.model, noisy[:2], "ZYX", ks=[None], batch_size=8, dtype="float32"))
    default = res.model.denoise(noisy[:2], "ZYX")
    assert psnr(fused, clean[:2], data_range=rng) > base + 3, psnr(fused, clean[:2], data_range=rng)
    assert psnr(default, clean[:2], data_range=rng) > base + 3
    quality = res.model.config["quality"]
    assert not quality["failed"] and not quality["worse"] and "advice" not in quality, quality
