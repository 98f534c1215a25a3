"""Choosing the compute device and mixed-precision settings."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .errors import DeviceError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda > mps > cpu; explicit names are checked to exist."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but CUDA is not available on this machine "
                              f"(or this PyTorch build has no CUDA); use --device cpu or auto.")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise DeviceError(f"device {name!r} does not exist: this machine has {n} CUDA device(s) "
                              f"(cuda:0..cuda:{n - 1}).")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise DeviceError("device 'mps' requested but Apple MPS is not available; use --device cpu or auto.")
    elif dev.type != "cpu":
        raise DeviceError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps.")
    return dev


def autocast(device: torch.device, enabled: bool) -> Any:
    """bf16 autocast on CUDA where supported, fp16 otherwise; a no-op elsewhere."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def needs_grad_scaler(device: torch.device, enabled: bool) -> bool:
    """fp16 (not bf16) needs loss scaling."""
    return enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported()


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
