"""The runnable model: :class:`Denoiser` (a loaded network with its normalisation and window) and its outputs.

A teacher's outputs are indexed by blind-spot size k_b (None: the model's
own); a D-BSN adds its noise map (:data:`NOISE_MAP`) and its blind-spot
estimate before fusion (:data:`BLIND_ESTIMATE`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import AUTO_K_B, DEFAULT_GAMMA, FIXED_K_B, NOISE_MAP
from ..modelio import load_network
from ..models.outputs import network_outputs
from ..normalization import Normalization
from ..tiling import default_halo


class Denoiser:
    """A loaded model with its normalisation and window size, ready to run.

    ``denoiser(window)`` takes raw (N, C, P, P) data (numpy or torch, P the
    training patch size; a stack-context model's C * (2n + 1) channels, or C alone in its 2-D mode) and returns
    it denoised (N, C, P, P) in the same value range.
    :meth:`denoise` handles whole images of any size and axes, running the
    network in windows of P with a halo (method.md Decision 8).
    """

    def __init__(self, network: nn.Module, config: dict[str, Any], *, device: str | torch.device = "cpu",
                 path: Path | None = None, amp: bool = True, channels_last: bool | None = None,
                 compile: bool = False, windows_on_device: bool | None = None) -> None:
        from ..device import place_network, resolve_device, use_channels_last

        self.config = config
        self.path = path
        self.kind: str = config["kind"]
        self.patch: int = int(config["patch"])
        self.halo: int = int(config.get("halo", default_halo(self.patch, self.kind)))
        stored = config.get("k_b", FIXED_K_B)
        #: What a teacher outputs when no k_b is asked for: "auto" (chosen from the data and blended with the
        #: input) or the size stored at training. Students and D-BSN models have their one image.
        self.default_k_b: int | str = AUTO_K_B if stored == AUTO_K_B else int(stored)
        #: The blind spot where one must be fixed without data to choose from (an export, the network's own key).
        self.k_b: int = FIXED_K_B if stored == AUTO_K_B else int(stored)
        self.normalization = Normalization.from_dict(config["normalization"])
        self.device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
        # The GPU path (device.py): mixed precision and channels-last on CUDA, cuDNN autotuning for the fixed
        # window shape, optionally torch.compile. On the CPU the arithmetic is plain float32.
        self.amp = bool(amp)
        if channels_last is None and self.kind == "atbsn":
            # channels-last pays for the students' and D-BSN's plain convolutions on CUDA, not for a teacher,
            # whose rotations, row shifts and pads then copy NHWC tensors: on an H200 the paper teacher ran at
            # 6.82 MPix/s without it and 5.67 with it (benchmarks/gpu.py, window 256, side by side)
            channels_last = False
        self.channels_last = use_channels_last(self.device, channels_last)
        self.network = place_network(network.eval(), self.device, channels_last=self.channels_last, compile=compile)
        self.in_channels: int = int(config["arch"]["in_channels"])
        #: neighbouring planes on each side along Z or T the network takes beside the plane it denoises (0: 2-D)
        self.context: int = int(config["arch"].get("context", 0))
        #: channels of the network's input: the plane's own, then its neighbours' (axes.context_offsets order)
        self.input_channels: int = self.in_channels * (2 * self.context + 1)
        #: whether it denoises a plane without its neighbours (2-D mode, given zeros for them): every 2-D model, and
        #: stack-context models trained with context dropout (folders from before it record none)
        self.single_plane: bool = not self.context or float(config["arch"].get("context_dropout", 0.0)) > 0

        #: Whether windows are cut, normalised and reassembled on the device (inference.device_windows):
        #: None (auto) on CUDA, where the host-side loop would starve the GPU; the host path elsewhere.
        self.windows_on_device = self.device.type == "cuda" if windows_on_device is None else bool(windows_on_device)

    @property
    def input_normalization(self) -> Normalization:
        """What the network's input is normalised with: the plane's constants, repeated for each context plane
        (derived, so a normalisation replaced after loading applies to both)."""
        return self.normalization if not self.context else self.normalization.tiled(2 * self.context + 1)

    def normalization_for(self, channels: int) -> Normalization:
        """What an input of ``channels`` channels is normalised with: :attr:`input_normalization`, or the plane's
        own constants for a plane alone (a stack-context model's 2-D mode, whose neighbours the network fills)."""
        return self.normalization if channels == self.in_channels else self.input_normalization

    @property
    def compiled(self) -> bool:
        """Whether the network runs through torch.compile (asked here, or compiled by the training run that
        made it): dask workers that load the folder again compile too."""
        return bool(getattr(self.network, "_atbsn_compiled", False))

    @property
    def name(self) -> str:
        """Short label for outputs: ``atbsn_auto``, ``atbsn_kb3`` or ``student_C``."""
        if self.kind == "dbsn":
            return "dbsn"
        if self.kind == "student":
            return f"student_{self.config['arch']['preset']}"
        return "atbsn_auto" if self.default_k_b == AUTO_K_B else f"atbsn_kb{self.k_b}"

    @property
    def gamma(self) -> float:
        """D-BSN: weight of the noise term in the Bayes fusion (stored with the model; 1 = exact posterior)."""
        return float(self.config.get("gamma", DEFAULT_GAMMA))

    @torch.no_grad()
    def run_normalized(self, x: np.ndarray, k_b: int | None = None) -> np.ndarray:
        """Network on already-normalised (N, C, h, w) float32 data."""
        return self.run_windows(x, [k_b])[0]

    @torch.no_grad()
    def run_windows(self, x: np.ndarray, ks: Sequence[int | None]) -> np.ndarray:
        """Normalised (B, C, w, w) windows -> (K, B, C, w, w), one output per k in ``ks``.

        A teacher computes the rotated UNet features once and applies the head
        for each k (None: the model's own k_b); a student has one output.
        """
        from ..device import to_device

        y = self.forward_windows(to_device(x, self.device), ks)
        return y.float().cpu().numpy()

    @torch.no_grad()
    def forward_windows(self, t: torch.Tensor, ks: Sequence[int | None]) -> torch.Tensor:
        """Normalised (B, C, w, w) windows already on the device -> (K, B, C, w, w) there (the autocast
        dtype on CUDA), without waiting for the result."""
        from ..device import autocast, compile_errors_named

        t = t.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        # PyTorch's CPU kernels take another code path for a batch of one, whose rounding differs; pairing a
        # lone window with a copy keeps every window's result independent of how windows are batched.
        single = t.shape[0] == 1
        if single:
            t = torch.cat([t, t])
        with compile_errors_named(), autocast(self.device, self.amp):
            y = network_outputs(self.network, self.kind, t, ks, k_b=self.k_b, gamma=self.gamma)
        return y[:, :1] if single else y

    def undo_output(self, out: np.ndarray, k: int | str | None, *, in_place: bool = False) -> np.ndarray:
        """A normalised network output back in the data's units (a noise std scales, an image also shifts);
        ``in_place`` reuses ``out`` (float32), with the same arithmetic."""
        if k == NOISE_MAP:
            scale = np.asarray(self.normalization.scale, dtype=np.float32).reshape(-1, 1, 1)
            return np.multiply(out, scale, out=out) if in_place else out * scale
        return self.normalization.undo_(out) if in_place else self.normalization.undo(out)

    def fingerprint(self) -> str:
        """SHA-256 of what determines the output: kind, normalisation, window, k_b, gamma and weights."""
        h = hashlib.sha256(json.dumps({"kind": self.kind, "norm": self.normalization.to_dict(), "patch": self.patch,
                                       "halo": self.halo, "k_b": self.k_b, "gamma": self.gamma,
                                       "arch": self.config["arch"]}, sort_keys=True).encode())
        for key, tensor in sorted(self.network.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def __call__(self, window: Any, k_b: int | None = None) -> Any:
        is_torch = isinstance(window, torch.Tensor)
        x = window.detach().cpu().numpy() if is_torch else np.asarray(window, dtype=np.float32)
        y = self.normalization.undo(self.run_normalized(self.normalization_for(x.shape[1]).apply(x), k_b))
        return torch.from_numpy(y) if is_torch else y

    def iter_denoise(self, image: Any, axes: str | None = None, *, k_b: int | None = None,
                     batch_size: int | None = None, dtype: str = "float32") -> Iterator[tuple[int, int]]:
        """Generator: denoise ``image``; yields (windows_done, total); returns the result.

        ``dtype`` is ``float32`` or ``input`` (the input's dtype, rounded and
        clipped to its range); ``batch_size`` (windows per network call) defaults to what the device's free
        memory allows (4 on a CPU).
        """
        from .inmemory import iter_denoise

        return (yield from iter_denoise(self, image, axes, k_b=k_b, batch_size=batch_size, dtype=dtype))

    def denoise(self, image: Any, axes: str | None = None, *, k_b: int | None = None, batch_size: int | None = None,
                dtype: str = "float32") -> np.ndarray:
        """Denoise a whole image (2-D, stack, channels) and return it in its own layout."""
        from ..events import drain

        return drain(self.iter_denoise(image, axes, k_b=k_b, batch_size=batch_size, dtype=dtype))


def load_model(path: str | os.PathLike, *, device: str = "cpu", amp: bool = True, compile: bool = False,
               ) -> Denoiser:
    """Load a model folder as a :class:`Denoiser` (``amp``: mixed precision on CUDA; ``compile``:
    torch.compile the network)."""
    network, cfg = load_network(path)
    return Denoiser(network, cfg, device=device, path=Path(path), amp=amp, compile=compile)
