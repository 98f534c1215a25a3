"""napari-atbsn: self-supervised denoising with asymmetric blind spots (AT-BSN).

The core (this package outside ``_widgets``) imports no Qt or napari and is
usable from scripts, notebooks and the ``atbsn`` command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .modelio import Denoiser


def load_model(path: Any, *, device: str = "cpu") -> Denoiser:
    """Load a model folder (teacher or student) as a ready-to-run :class:`Denoiser`."""
    from .modelio import load_model as _load

    return _load(path, device=device)


__all__ = ["__version__", "load_model"]
