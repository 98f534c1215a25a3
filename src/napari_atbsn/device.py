"""Choosing the compute device and mixed-precision settings."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .errors import DeviceError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda > mps > cpu; explicit names are checked to exist."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.") from None
    _check_available(dev, name)
    return dev


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def _check_available(dev: torch.device, name: str) -> None:
    """Refuse a device this machine (or this PyTorch build) does not have."""
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but CUDA is not available on this machine "
                              f"(or this PyTorch build has no CUDA); use --device cpu or auto.")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise DeviceError(f"device {name!r} does not exist: this machine has {n} CUDA device(s) "
                              f"(cuda:0..cuda:{n - 1}).")
    elif dev.type == "mps":
        if not _mps_available():
            raise DeviceError("device 'mps' requested but Apple MPS is not available; use --device cpu or auto.")
    elif dev.type != "cpu":
        raise DeviceError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps.")


def bf16_native(device: torch.device) -> bool:
    """Whether the CUDA ``device`` computes bf16 in hardware (compute capability 8.0, Ampere, and later).

    Not ``torch.cuda.is_bf16_supported()``: it answers True on older GPUs too (T4, V100) because bf16
    can be emulated, where cuDNN has no bf16 convolutions; and it asks about the current device only.
    """
    return torch.cuda.get_device_capability(device)[0] >= 8


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype on a CUDA ``device``: bf16 where native (fp32's range, no loss scaling), else
    fp16 (which needs :func:`needs_grad_scaler`)."""
    return torch.bfloat16 if bf16_native(device) else torch.float16


def autocast(device: torch.device, enabled: bool) -> Any:
    """bf16 autocast on CUDA where supported, fp16 otherwise; a no-op elsewhere.

    Only CUDA: on CPUs without bf16 matrix units autocast is slower than float32, and MPS autocast still
    lacks ops these networks use.
    """
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype(device))


def needs_grad_scaler(device: torch.device, enabled: bool) -> bool:
    """fp16 (not bf16) needs loss scaling."""
    return enabled and device.type == "cuda" and not bf16_native(device)


def use_channels_last(device: torch.device, requested: bool | None) -> bool:
    """``None`` (auto): channels-last on CUDA, where cuDNN's tensor-core convolutions want NHWC; kept
    contiguous elsewhere, where it does not pay. An explicit True/False is obeyed on any device."""
    return device.type == "cuda" if requested is None else bool(requested)


def configure_backend(device: torch.device) -> None:
    """cuDNN autotuning on CUDA: training patches and inference windows have fixed shapes, so the
    per-shape benchmark on the first call is paid once. (CUDA results are not bit-reproducible anyway:
    cuDNN's backward kernels accumulate in a nondeterministic order.)"""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def to_device(x: np.ndarray | torch.Tensor, device: torch.device, *, channels_last: bool = False) -> torch.Tensor:
    """A float32 batch on ``device``: through pinned memory with a non-blocking copy on CUDA (the copy
    overlaps the previous step's kernels), in channels-last layout when asked."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x
    t = t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.ndim == 4 else t


def compile_module(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile`` the module's forward in place (its state-dict keys stay as they are, so saving
    and checkpoints are unchanged). Compilation happens on the first call; see :func:`compile_error`."""
    if enabled and not getattr(model, "_atbsn_compiled", False):
        model.compile()
        if callable(getattr(type(model), "teachers", None)):
            # AT-BSN's inference and distillation pass (all k from one backbone pass) is a method, not forward
            model.teachers = torch.compile(model.teachers)  # type: ignore[method-assign]
        model._atbsn_compiled = True  # type: ignore[attr-defined]
    return model


def place_network(model: torch.nn.Module, device: torch.device, *, channels_last: bool, compile: bool,
                  ) -> torch.nn.Module:
    """Put a network on ``device`` for the GPU path, in place: cuDNN autotuning, channels-last weights when
    asked, torch.compile when asked. What training, distillation's teacher and inference all do."""
    configure_backend(device)
    fmt = torch.channels_last if channels_last else torch.preserve_format
    return compile_module(model.to(device, memory_format=fmt), compile)


@contextlib.contextmanager
def compile_errors_named() -> Iterator[None]:
    """Turn a failed ``torch.compile`` (raised on the first call) into :func:`compile_error`'s message."""
    try:
        yield
    except RuntimeError as e:
        failed = compile_error(e)
        if failed is not None:
            raise failed from None
        raise


def compile_error(e: BaseException) -> DeviceError | None:
    """A readable error for a failed ``torch.compile`` (no C++ compiler, an unsupported platform), else None."""
    try:
        from torch._dynamo.exc import BackendCompilerFailed, TorchRuntimeError, Unsupported
    except ImportError:  # pragma: no cover - torch without dynamo
        return None
    if isinstance(e, (BackendCompilerFailed, Unsupported, TorchRuntimeError)):
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        return DeviceError(f"torch.compile failed on this machine ({first}); run again without --compile "
                           f"(compile=False): the results are the same, only slower.")
    return None


def available_devices() -> list[tuple[str, str]]:
    """``(name, label)`` for every device this machine offers, best first: each CUDA GPU by name and
    memory, Apple MPS, the CPU. ``name`` is what ``device=`` accepts; the label is for people."""
    import os

    found = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            found.append((f"cuda:{i}", f"cuda:{i}  {p.name} ({p.total_memory / 2**30:.0f} GiB)"))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append(("mps", "mps  Apple GPU"))
    found.append(("cpu", f"cpu  {os.cpu_count() or 1} cores"))
    return found


def is_oom(e: BaseException) -> bool:
    """Whether ``e`` is the device (or host) running out of memory."""
    if isinstance(e, MemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
