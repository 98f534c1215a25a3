"""Exporting a model folder: TorchScript and ONNX graphs (:mod:`.graph`) and BioImage Model Zoo packages
(:mod:`.bioimageio`), one entry point :func:`export`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config import AUTO_K_B
from ..errors import ConfigError, WriteError
from ..inference.denoiser import load_model
from ..inference.output_kinds import refuse_k_b
from . import bioimageio
from .graph import FORMATS, to_onnx, to_torchscript


def export(model_dir: str | os.PathLike, fmt: str, out: str | os.PathLike, *, k_b: int | None = None,
           overwrite: bool = False, sample: np.ndarray | None = None, authors: tuple[str, ...] = (),
           license: str = "CC-BY-4.0", name: str | None = None, validate: bool = True) -> Path:
    """Export the model folder ``model_dir`` as ``fmt`` (torchscript, onnx or bioimageio) to ``out``.

    ``sample``, ``authors``, ``license``, ``name`` and ``validate`` apply to BioImage Model Zoo packages,
    which are checked with bioimageio.core's own test unless ``validate`` is False (a package that fails is
    removed).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format {fmt!r} is not supported; choose one of {', '.join(FORMATS)}.")
    model = load_model(model_dir, device="cpu")
    refuse_k_b(model, k_b)
    if model.kind == "atbsn" and k_b is None and model.default_k_b == AUTO_K_B:
        # a fixed graph cannot choose k_b and the blend from the data it meets; the student learned the blend
        raise ConfigError(f"{model_dir} is a teacher whose default output is chosen from the data and blended with "
                          f"the input (k_b=auto), which a fixed graph cannot do. Export the distilled student (it "
                          f"learned the blend), or give k_b (--k-b K) to export one blind spot, unblended.")
    if Path(out).resolve().parent == Path(model_dir).resolve():
        # a model folder holds safetensors and JSON only: a TorchScript zip there would make it refused
        raise WriteError(f"write the export outside the model folder {model_dir}; model folders hold only "
                         f"safetensors and JSON (a .pt there makes the folder refused as carrying a pickle).")
    if fmt == "torchscript":
        return to_torchscript(model, out, k_b=k_b, overwrite=overwrite)
    if fmt == "onnx":
        return to_onnx(model, out, k_b=k_b, overwrite=overwrite)
    path = bioimageio.to_bioimageio(model, out, k_b=k_b, overwrite=overwrite, sample=sample, authors=authors,
                                    license=license, name=name)
    if validate:
        try:
            bioimageio.validate(path)
        except BaseException:
            path.unlink(missing_ok=True)  # never leave a package that failed its own test
            raise
    return path
