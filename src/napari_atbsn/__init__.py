"""napari-atbsn: self-supervised denoising with asymmetric blind spots (AT-BSN).

The core (this package outside ``_widgets``) imports no Qt or napari and is
usable from scripts, notebooks and the ``atbsn`` command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .inference.denoiser import Denoiser
    from .io.readers import LazyImage


def load_model(path: Any, *, device: str = "cpu", amp: bool = True, compile: bool = False) -> Denoiser:
    """Load a model folder (teacher or student) as a ready-to-run :class:`Denoiser`; on CUDA it runs in
    mixed precision unless ``amp=False``, and ``compile=True`` applies torch.compile."""
    from .inference.denoiser import load_model as _load

    return _load(path, device=device, amp=amp, compile=compile)


def open_image(source: Any, axes: str | None = None, **kwargs: Any) -> LazyImage:
    """Open a TIFF/OME-TIFF/ImageJ, Zarr/OME-Zarr, NIfTI, .npy or an array lazily (see :mod:`.io.readers`)."""
    from .io.readers import open_image as _open

    return _open(source, axes, **kwargs)


def denoise(source: Any, model: Any, out: Any = None, **kwargs: Any) -> Any:
    """Denoise an image or volume of any size in chunks (see :func:`napari_atbsn.inference.run.denoise`).

    With ``out`` (.ome.zarr, .zarr, .tif, .npy) the result is streamed there, resumably, and a
    :class:`~napari_atbsn.inference.run.DenoiseResult` is returned; without, a lazy dask array.
    """
    from .inference.run import denoise as _denoise

    return _denoise(source, model, out, **kwargs)


def export(model_dir: Any, fmt: str, out: Any, **kwargs: Any) -> Any:
    """Export a model folder as ``torchscript``, ``onnx`` or ``bioimageio`` (see :func:`napari_atbsn.exports.export`).

    The TorchScript and ONNX graphs take one raw float32 (N, C, P, P) window and return it denoised in the same
    units; a BioImage Model Zoo package is validated with bioimageio.core's own test.
    """
    from .exports import export as _export

    return _export(model_dir, fmt, out, **kwargs)


__all__ = ["__version__", "denoise", "export", "load_model", "open_image"]
