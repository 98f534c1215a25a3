"""Export a model folder to TorchScript, ONNX or a BioImage Model Zoo package.

The exported graphs take what :func:`napari_atbsn.load_model` takes: one raw
window, float32 ``(N, C, P, P)`` with ``P`` the model's training patch size
(method.md Decision 8), and return it denoised in the same value range. The
normalisation is inside the graph, so a consumer needs no napari-atbsn code;
it tiles images the way we do by reading the window and halo stored with the
file (TorchScript ``extra_files``, ONNX ``metadata_props``) or, in a BMZ
package, the input size and the output halo.

A teacher is exported with its ``k_b`` fixed (``k_b`` argument, default the
one stored with the model); a D-BSN gives its Bayes-fused estimate with the
stored ``gamma``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..axes import context_offsets
from ..config import check_k
from ..errors import ConfigError
from ..inference.denoiser import Denoiser
from ..inference.output_kinds import refuse_k_b
from ..io.fs import new_file_target, write_file_atomically
from ..models.outputs import network_output
from ..version import __version__

FORMATS = ("torchscript", "onnx", "bioimageio")
#: Default ONNX opset: supported by onnxruntime >= 1.17 and by the BMZ tools.
ONNX_OPSET = 18
#: The key under which the exported files carry the tiling contract.
META_KEY = "napari_atbsn"


class RawWindowModel(nn.Module):
    """The network between the normalisation and its inverse: raw window in, raw denoised window out."""

    def __init__(self, model: Denoiser, k_b: int | None = None, *, normalize: bool = True) -> None:
        super().__init__()
        refuse_k_b(model, k_b)
        self.kind = model.kind
        # a copy: exporting must not change the caller's model (device, grad flags)
        self.net = copy.deepcopy(model.network).cpu().float().eval().requires_grad_(False)
        # the one output the graph computes: a teacher's fixed k_b, else the model's image (D-BSN: Bayes-fused)
        self.key = check_k(model.k_b if k_b is None else k_b, name="k_b") if model.kind == "atbsn" else None
        self.gamma = model.gamma
        self.normalize = normalize
        self.eval()
        c = model.in_channels
        norm, inp = model.normalization, model.input_normalization
        self.register_buffer("offset", torch.tensor(norm.offset, dtype=torch.float32).reshape(1, c, 1, 1))
        self.register_buffer("scale", torch.tensor(norm.scale, dtype=torch.float32).reshape(1, c, 1, 1))
        # a stack-context input carries its neighbouring planes' channels after the plane's: the same constants
        ci = model.input_channels
        self.register_buffer("in_offset", torch.tensor(inp.offset, dtype=torch.float32).reshape(1, ci, 1, 1))
        self.register_buffer("in_scale", torch.tensor(inp.scale, dtype=torch.float32).reshape(1, ci, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = (x - self.in_offset) / self.in_scale
        y = network_output(self.net, self.kind, x, self.key, gamma=self.gamma, exportable=True)
        return y * self.scale + self.offset if self.normalize else y


def contract(model: Denoiser, k_b: int | None) -> dict[str, Any]:
    """What a consumer needs to tile the way napari-atbsn does; stored inside every exported file."""
    return {"format": "napari-atbsn-export", "package_version": __version__, "kind": model.kind,
            "input": "raw float32 (N, C, P, P) window; normalisation is inside the graph" if not model.context else
                     f"raw float32 (N, C * {2 * model.context + 1}, P, P) window: the plane's C channels, then the "
                     f"same window of its neighbouring planes along Z (else T) at offsets "
                     f"{', '.join(f'{d:+d}' for d in context_offsets(model.context))} (mirrored about the plane at "
                     f"the stack's ends, never the plane itself); normalisation is inside the graph",
            "window": model.patch, "halo": model.halo, "channels": model.in_channels,
            "context": {"planes_each_side": model.context, "axis": "Z, else T",
                        "offsets": context_offsets(model.context), "input_channels": model.input_channels},
            "k_b": (model.k_b if k_b is None else k_b) if model.kind == "atbsn" else None,
            "gamma": model.gamma if model.kind == "dbsn" else None,
            "normalization": model.normalization.to_dict(), "source": model.name}


def example_window(model: Denoiser, n: int = 1, seed: int = 0) -> torch.Tensor:
    """A raw window in the data's range (normalised noise mapped back), for tracing and checks."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.input_channels, model.patch, model.patch, generator=g) * 20 + 120
    norm = model.input_normalization
    return norm.undo(z).float() if norm.mode == "range255" else z.float()


def to_torchscript(model: Denoiser, out: str | os.PathLike, *, k_b: int | None = None,
                   overwrite: bool = False) -> Path:
    """Trace the raw-window model; the tiling contract goes in ``extra_files['napari_atbsn.json']``."""
    p = new_file_target(out, overwrite)
    module = RawWindowModel(model, k_b).cpu()
    example = example_window(model, 2)
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
    extra = {f"{META_KEY}.json": json.dumps(contract(model, k_b))}
    return write_file_atomically(p, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=extra))


def to_onnx(model: Denoiser, out: str | os.PathLike, *, k_b: int | None = None, overwrite: bool = False,
            opset: int = ONNX_OPSET) -> Path:
    """ONNX with a dynamic batch axis; the tiling contract goes in the model's ``metadata_props``."""
    p = new_file_target(out, overwrite)
    require("onnx", "onnxscript")  # torch's ONNX exporter needs onnxscript, else it fails obscurely
    module = RawWindowModel(model, k_b).cpu()
    example = example_window(model, 2)

    def write(tmp: Path) -> None:
        import onnx

        proto = onnx_proto(module, example, opset)
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(contract(model, k_b))
        onnx.save_model(proto, str(tmp))

    return write_file_atomically(p, write)


def onnx_proto(module: nn.Module, example: torch.Tensor, opset: int) -> Any:
    """The ONNX graph of ``module`` with a dynamic batch axis (the exporter's chatter silenced)."""
    import logging
    import warnings

    batch = torch.export.Dim("batch", min=1, max=4096)
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(module.eval(), (example,), dynamo=True, opset_version=opset,
                                     input_names=["raw"], output_names=["denoised"],
                                     dynamic_shapes={"x": {0: batch}}, external_data=False, verbose=False,
                                     report=False)
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
    return prog.model_proto


def require(*modules: str) -> None:
    """Refuse an export whose optional packages (the ``[export]`` extra) are missing, naming them."""
    import importlib.util

    def found(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a dotted name whose parent package is missing
            return False

    missing = [m for m in modules if not found(m)]
    if missing:
        raise ConfigError(f"this export needs {', '.join(missing)}; pip install \"napari-atbsn[export]\".")
