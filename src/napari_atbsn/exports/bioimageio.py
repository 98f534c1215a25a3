"""BioImage Model Zoo packages (model spec 0.5): what Fiji/deepImageJ, ilastik and bioimageio.core run.

The package holds the network in the normalised space, in TorchScript and
ONNX, with the normalisation stated as the spec's own pre- and
post-processing (``scale_linear`` along the channel axis), so a consumer
applies it without napari-atbsn. The input is one window of the model's
training patch size (the networks are not size-invariant, method.md
Decision 8); the output declares the halo that a tiling consumer discards,
as napari-atbsn does. Test tensors, and a cover, come from the model's own
result on a sample (the package's generated cells unless one is given).

No PyTorch state dict is included: the spec's state-dict weights are a
``torch.save`` pickle plus an architecture that consumers must import from
napari-atbsn, which TorchScript and ONNX make unnecessary.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..axes import context_offsets
from ..errors import ConfigError, WriteError
from ..inference.denoiser import Denoiser
from ..io.fs import new_file_target, write_file_atomically
from ..version import __version__
from .graph import ONNX_OPSET, RawWindowModel, contract, onnx_proto, require

CITATIONS = {
    "atbsn": ("Chen, Zhang, Yu, Huang. Exploring Efficient Asymmetric Blind-Spots for Self-Supervised Denoising "
              "in Real-World Scenarios. CVPR 2024.", "https://arxiv.org/abs/2303.16783"),
    "dbsn": ("Wu, Liu, Cao, Ren, Zuo. Unpaired Learning of Deep Image Denoising. ECCV 2020.",
             "https://arxiv.org/abs/2008.13711"),
}


def sample_plane(model: Denoiser, sample: np.ndarray | None = None) -> np.ndarray:
    """A raw (C, Y, X) sample plane: ``sample`` (Y, X or C, Y, X), or the generated cells mapped into the
    model's data range through its normalisation.

    A stack-context model reads a plane with its neighbours: the result is then the middle plane's unit
    (C * (2n + 1), Y, X), from ``sample`` given as a stack (Z, Y, X or Z, C, Y, X) or from generated planes."""
    p, c, n = model.patch, model.in_channels, model.context
    if sample is None:
        from ..sample_data import make_sample

        noisy, _ = make_sample(planes=2 * n + 1, size=max(256, p), seed=11)
        planes = noisy.astype(np.float32)
        lo, hi = np.percentile(planes[n], [0.5, 99.5])
        unit = (planes - lo) / max(hi - lo, 1e-6)  # ~0..1, then into the range the model was trained on
        norm = model.normalization
        top = 255.0 if norm.mode == "range255" else 1.0
        if norm.mode == "zscore":
            unit, top = (unit - unit[n].mean()) / max(unit[n].std(), 1e-6), 1.0
        sample = np.stack([unit * top * sc + off for off, sc in zip(norm.offset, norm.scale, strict=True)], axis=1)
        sample = sample[0] if n == 0 else sample  # (C, Y, X), or the (Z, C, Y, X) stack
    x = np.asarray(sample, dtype=np.float32)
    if n:
        return _context_unit(x, model)
    if x.ndim == 2:
        x = np.repeat(x[None], c, axis=0)
    if x.ndim != 3 or x.shape[0] != c or min(x.shape[-2:]) < p:
        raise ConfigError(f"the sample must be (Y, X) or ({c}, Y, X) with sides >= {p}; got {x.shape}.")
    return x


def _context_unit(stack: np.ndarray, model: Denoiser) -> np.ndarray:
    """The middle plane of a (Z, Y, X) or (Z, C, Y, X) stack with its context planes, as the network reads it."""
    from ..axes import neighbour_planes

    p, c, n = model.patch, model.in_channels, model.context
    if stack.ndim == 3 and c == 1:  # (Z, Y, X)
        stack = stack[:, None]
    if stack.ndim != 4 or stack.shape[1] != c or stack.shape[0] < 2 * n + 1 or min(stack.shape[-2:]) < p:
        raise ConfigError(f"the model takes {n} neighbouring plane(s) on each side: the sample must be a stack "
                          f"(Z, Y, X) or (Z, {c}, Y, X) of at least {2 * n + 1} planes with sides >= {p}; got "
                          f"{stack.shape}.")
    mid = stack.shape[0] // 2
    return np.concatenate([stack[i] for i in neighbour_planes(mid, "Z", (stack.shape[0],), n, "Z")], axis=0)


def _centre(x: np.ndarray, size: int) -> np.ndarray:
    h, w = min(size, x.shape[-2]), min(size, x.shape[-1])
    y0, x0 = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return np.ascontiguousarray(x[..., y0:y0 + h, x0:x0 + w])


def _cover(noisy: np.ndarray, denoised: np.ndarray, path: Path) -> None:
    """Noisy | denoised (first channel, the noisy image's contrast) as a 2:1 PNG, as the spec asks."""
    from PIL import Image

    a, b = noisy[0], denoised[0]
    lo, hi = np.percentile(a, [1, 99])
    img = np.clip((np.concatenate([a, b], axis=1) - lo) / max(hi - lo, 1e-6), 0, 1)
    scale = max(1, 256 // a.shape[0])
    Image.fromarray((np.kron(img, np.ones((scale, scale))) * 255).astype(np.uint8)).save(path)


def _documentation(model: Denoiser, k_b: int | None, path: Path) -> None:
    cfg = model.config
    kind = {"atbsn": "AT-BSN teacher", "student": "distilled AT-BSN student", "dbsn": "D-BSN"}[model.kind]
    lines = [f"# {kind} exported by napari-atbsn {__version__}", "",
             "Self-supervised denoiser trained on noisy data only, with napari-atbsn.", "",
             "## Use", "",
             f"- Input: one window of {model.patch} x {model.patch} pixels, {model.in_channels} channel(s), "
             f"float32 in the data's own units" + (
                 f", followed by the same window of its {2 * model.context} neighbouring planes along Z (else T) "
                 f"at offsets {list(context_offsets(model.context))}, mirrored about the plane at the stack's ends "
                 f"({model.input_channels} input channels in all)." if model.context else "."),
             "- Pre-processing: `scale_linear` along the channel axis (the normalisation fitted on the training "
             "data); post-processing: its inverse, so the output is in the input's units.",
             f"- Tiling: run overlapping windows of {model.patch} pixels and keep each window's centre; the "
             f"output declares a halo of {model.halo} pixels per side to discard. The networks are not "
             f"size-invariant: use the stated window size.", ""]
    if model.kind == "atbsn":
        lines += [f"- Blind spot at inference k_b = {model.k_b if k_b is None else k_b} (fixed in this export).",
                  ""]
    lines += ["## Training settings", "", "```json",
              json.dumps({k: cfg[k] for k in ("kind", "arch", "patch", "k_a", "k_b", "ks", "mean_teacher",
                                              "steps", "train", "distill", "gamma", "normalization", "data")
                          if k in cfg}, indent=2, default=str),
              "```", "", "## Citation", ""]
    keys = ["dbsn"] if model.kind == "dbsn" else ["atbsn"]
    if model.kind == "student" and cfg.get("unpaired"):
        keys = ["dbsn", "atbsn"]
    lines += [f"- {CITATIONS[k][0]} {CITATIONS[k][1]}" for k in keys]
    path.write_text("\n".join(lines) + "\n")


def to_bioimageio(model: Denoiser, out: str | os.PathLike, *, k_b: int | None = None, overwrite: bool = False,
                  sample: np.ndarray | None = None, name: str | None = None, authors: tuple[str, ...] = (),
                  license: str = "CC-BY-4.0") -> Path:
    """Write a BioImage Model Zoo package (zip) for ``model``; returns its path.

    ``authors`` and ``license`` (an SPDX id) describe the trained weights, which are the user's.
    """
    require("bioimageio.spec", "onnx", "onnxscript")
    from bioimageio.spec import save_bioimageio_package

    target = new_file_target(out, overwrite)
    plane = sample_plane(model, sample)
    x = _centre(plane, model.patch)[None]
    y = np.asarray(model(x, k_b), dtype=np.float32)
    crop = _centre(plane, 256)  # the cover: the model's own result on a larger crop, tiled as usual
    cover = (crop[:model.in_channels], _denoise_unit(model, crop, k_b))
    core = RawWindowModel(model, k_b, normalize=False).cpu()
    with tempfile.TemporaryDirectory(prefix="atbsn-bmz-") as d:
        work = Path(d)
        np.save(work / "test_input.npy", x)
        np.save(work / "test_output.npy", y)
        _cover(*cover, work / "cover.png")
        _documentation(model, k_b, work / "README.md")
        _write_weights(core, torch.from_numpy(model.input_normalization.apply(x).astype(np.float32)), work)
        descr = _model_descr(model, k_b, work, name=name, authors=authors, license=license)
        write_file_atomically(target, lambda tmp: save_bioimageio_package(descr, output_path=tmp))
    return target


def _denoise_unit(model: Denoiser, unit: np.ndarray, k_b: int | None) -> np.ndarray:
    """A (C', Y, X) unit (a plane, with its context for a stack-context model) denoised in windows as usual."""
    from ..events import drain
    from ..inference.runtime import iter_array

    if not model.context:
        return model.denoise(unit, "CYX", k_b=k_b)
    return drain(iter_array(model, unit[None], "SCYX", ks=[k_b], batch_size=4, dtype="float32",
                            assembled=True))[0][0]


def _write_weights(core: torch.nn.Module, example: torch.Tensor, work: Path) -> None:
    """The network in the normalised space, traced to TorchScript and exported to ONNX (a batch of two
    copies of ``example``, the normalised test input)."""
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(core, torch.cat([example, example]), check_trace=False),
                       str(work / "weights.torchscript.pt"))
    _onnx(core, torch.cat([example, example]), work / "weights.onnx", ONNX_OPSET)


def _weights_descr(work: Path) -> Any:
    """The weights in both formats, ONNX converted from TorchScript."""
    from bioimageio.spec.model.v0_5 import OnnxWeightsDescr, TorchscriptWeightsDescr, WeightsDescr

    torch_version = torch.__version__.split("+")[0]
    return WeightsDescr(
        torchscript=TorchscriptWeightsDescr(source=work / "weights.torchscript.pt", pytorch_version=torch_version),
        onnx=OnnxWeightsDescr(source=work / "weights.onnx", opset_version=ONNX_OPSET, parent="torchscript"))


def _channels(model: Denoiser, *, inputs: bool = False) -> Any:
    """The channel axis: the image's channels; a stack-context input's also name their plane offset."""
    from bioimageio.spec.model.v0_5 import ChannelAxis

    from ..axes import context_offsets

    names = [f"channel{i}" for i in range(model.in_channels)]
    if inputs and model.context:
        names += [f"channel{i}_plane{d:+d}".replace("+", "p").replace("-", "m")
                  for d in context_offsets(model.context) for i in range(model.in_channels)]
    return ChannelAxis(channel_names=names)


def _scale_linear(gain: list[float], offset: list[float]) -> Any:
    """The spec's ``scale_linear`` along the channel axis: ``gain * x + offset`` per channel."""
    from bioimageio.spec.model.v0_5 import AxisId, ScaleLinearAlongAxisKwargs, ScaleLinearDescr

    return ScaleLinearDescr(kwargs=ScaleLinearAlongAxisKwargs(axis=AxisId("channel"), gain=gain, offset=offset))


def _norm_arrays(model: Denoiser, *, inputs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    norm = model.input_normalization if inputs else model.normalization
    return np.asarray(norm.offset, np.float64), np.asarray(norm.scale, np.float64)


def _input_descr(model: Denoiser, work: Path) -> Any:
    """One raw window of the training patch size; the normalisation is the pre-processing."""
    from bioimageio.spec.model.v0_5 import AxisId, BatchAxis, FileDescr, InputTensorDescr, SpaceInputAxis, TensorId

    off, sc = _norm_arrays(model, inputs=True)
    # the spec allows 128 characters: the plane offsets are in the channel names and config.napari_atbsn.context
    what = ("noisy window, data units: the plane's channels, then its neighbouring Z (else T) planes' (channel names)"
            if model.context else "noisy image window, in the data's own units")
    return InputTensorDescr(
        id=TensorId("raw"), description=what,
        axes=[BatchAxis(), _channels(model, inputs=True),
              SpaceInputAxis(id=AxisId("y"), size=model.patch), SpaceInputAxis(id=AxisId("x"), size=model.patch)],
        test_tensor=FileDescr(source=work / "test_input.npy"),
        preprocessing=[_scale_linear([float(1 / s) for s in sc],
                                     [float(-o / s) for o, s in zip(off, sc, strict=True)])])


def _output_descr(model: Denoiser, work: Path) -> Any:
    """The denoised window, the input's size, with the halo a tiling consumer discards; the inverse
    normalisation is the post-processing."""
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        BatchAxis,
        FileDescr,
        OutputTensorDescr,
        SizeReference,
        SpaceOutputAxisWithHalo,
        TensorId,
    )

    off, sc = _norm_arrays(model)
    space = [SpaceOutputAxisWithHalo(id=AxisId(a), halo=model.halo,
                                     size=SizeReference(tensor_id=TensorId("raw"), axis_id=AxisId(a)))
             for a in ("y", "x")]
    return OutputTensorDescr(
        id=TensorId("denoised"), description="denoised window, in the input's units",
        axes=[BatchAxis(), _channels(model), *space],
        test_tensor=FileDescr(source=work / "test_output.npy"),
        postprocessing=[_scale_linear([float(s) for s in sc], [float(o) for o in off])])


def _model_descr(model: Denoiser, k_b: int | None, work: Path, *, name: str | None, authors: tuple[str, ...],
                 license: str) -> Any:
    """The package's description (rdf.yaml), from the files written in ``work``."""
    from bioimageio.spec.model.v0_5 import Author, CiteEntry, FileDescr, LicenseId, ModelDescr

    inp, outp = _input_descr(model, work), _output_descr(model, work)
    kind = {"atbsn": "AT-BSN teacher", "student": "AT-BSN distilled student", "dbsn": "D-BSN"}[model.kind]
    cites = ["dbsn"] if model.kind == "dbsn" else ["atbsn"]
    return ModelDescr(
        name=name or f"napari-atbsn {kind} ({model.name})",
        description=f"Self-supervised {kind} denoiser for microscopy, trained on noisy data only with "
                    f"napari-atbsn {__version__}.",
        authors=[Author(name=a) for a in (authors or ("napari-atbsn user",))],
        cite=[CiteEntry(text=CITATIONS[k][0], url=CITATIONS[k][1]) for k in cites],
        license=LicenseId(license),
        documentation=FileDescr(source=work / "README.md"),
        covers=[FileDescr(source=work / "cover.png")],
        tags=["denoising", "self-supervised", "blind-spot", "2d", "pytorch", "napari-atbsn",
              *(["stack-context"] if model.context else [])],
        inputs=[inp], outputs=[outp],
        weights=_weights_descr(work),
        config={"napari_atbsn": contract(model, k_b)},
    )


def _onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    import onnx

    onnx.save_model(onnx_proto(module, example, opset), str(path))


def validate(package: str | os.PathLike) -> Any:
    """Run bioimageio.core's own validation and test (format, weights in every format against the test
    tensors); returns its summary. Raises :class:`WriteError` naming the first failed check."""
    from bioimageio.core import test_model

    summary = test_model(str(package))
    if summary.status != "passed":
        failed = [d for d in summary.details if d.status != "passed"]
        first = failed[0] if failed else None
        errors = "; ".join(str(e.msg) for e in (first.errors if first else [])[:3])
        raise WriteError(f"the BioImage Model Zoo package {package} failed validation: "
                         f"{first.name if first else summary.status}: {errors}")
    return summary


__all__ = ["sample_plane", "to_bioimageio", "validate"]
