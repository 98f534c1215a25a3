"""Value normalisation learned from the training data and stored with the model.

``x_norm = (x - offset) / scale`` per channel, undone on the output, so uint8,
uint16 and float data come back in their own range (method.md Decision 2).

Modes:

* ``range255`` (paper preset): robust percentiles p0.1 .. p99.9 map to
  0 .. 255, the range the paper's networks were trained in;
* ``zscore`` (small/tiny presets): zero mean, unit variance, the setting of our
  CPU calibration (Decision 8);
* ``range1`` (D-BSN): the same percentiles to 0 .. 1, the range D-BSN's noise
  networks are initialised for (method.md §5.2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .config import NORMALIZATION_MODES
from .errors import ConfigError, ImageError

LOW_PERCENTILE, HIGH_PERCENTILE = 0.1, 99.9


@dataclass(frozen=True)
class Normalization:
    """Per-channel affine normalisation ``(x - offset) / scale``."""

    mode: str
    offset: tuple[float, ...]
    scale: tuple[float, ...]

    def _coeffs(self, x: Any) -> tuple[Any, Any]:
        c = x.shape[-3]
        if c != len(self.offset):
            raise ImageError(f"the data has {c} channel(s) but the model was trained on {len(self.offset)}; "
                             f"check the axes (C) or use a model trained on this kind of data.")
        shape = (c, 1, 1)
        off = np.asarray(self.offset, dtype=np.float32).reshape(shape)
        sc = np.asarray(self.scale, dtype=np.float32).reshape(shape)
        if not isinstance(x, np.ndarray):  # a torch tensor
            import torch

            off, sc = torch.as_tensor(off, device=x.device), torch.as_tensor(sc, device=x.device)
        return off, sc

    def apply(self, x: Any) -> Any:
        """Normalise (..., C, Y, X) data (numpy or torch)."""
        off, sc = self._coeffs(x)
        return (x - off) / sc

    def undo(self, x: Any) -> Any:
        """Map network output (..., C, Y, X) back to the data's range."""
        off, sc = self._coeffs(x)
        return x * sc + off

    def apply_(self, x: np.ndarray) -> np.ndarray:
        """:meth:`apply` in place on a float32 numpy array (the same arithmetic, bit for bit, without the
        temporaries: what the windowed inference does to each batch of windows)."""
        off, sc = self._coeffs(x)
        np.subtract(x, off, out=x)
        np.divide(x, sc, out=x)
        return x

    def undo_(self, x: np.ndarray) -> np.ndarray:
        """:meth:`undo` in place on a float32 numpy array."""
        off, sc = self._coeffs(x)
        np.multiply(x, sc, out=x)
        np.add(x, off, out=x)
        return x

    def tiled(self, planes: int) -> Normalization:
        """The same constants for an input of ``planes`` planes' channels side by side (a plane and its
        context): what a stack-context network's input is normalised with; its output keeps :meth:`apply`'s."""
        return Normalization(self.mode, self.offset * planes, self.scale * planes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        try:
            norm = cls(mode=str(d["mode"]), offset=tuple(float(v) for v in d["offset"]),
                       scale=tuple(float(v) for v in d["scale"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"invalid normalization entry {d!r} ({e}).") from None
        if norm.mode not in NORMALIZATION_MODES or len(norm.offset) != len(norm.scale) or \
                not all(np.isfinite(norm.scale)) or not all(np.isfinite(norm.offset)) or min(norm.scale) <= 0:
            raise ConfigError(f"invalid normalization entry {d!r}.")
        return norm


def fit_normalization(samples: np.ndarray, mode: str) -> Normalization:
    """Fit from a (N, C, Y, X) sample of the data (a random subset of planes/patches)."""
    if mode not in NORMALIZATION_MODES:
        raise ConfigError(f"normalization={mode!r}; choose one of {', '.join(NORMALIZATION_MODES)}.")
    x = np.moveaxis(np.asarray(samples, dtype=np.float64), 1, 0).reshape(samples.shape[1], -1)
    if not np.all(np.isfinite(x)):
        raise ImageError("the image contains NaN or Inf pixels; replace them (e.g. with the local median) "
                         "first.")
    if mode == "zscore":
        offset, scale = x.mean(axis=1), x.std(axis=1)
    else:
        lo, hi = np.percentile(x, [LOW_PERCENTILE, HIGH_PERCENTILE], axis=1)
        offset, scale = lo, (hi - lo) / (255.0 if mode == "range255" else 1.0)
    if np.any(scale <= 0) or not np.all(np.isfinite(scale)):
        raise ImageError("the image is constant (no variation in at least one channel); there is nothing to "
                         "denoise or learn from.")
    return Normalization(mode, tuple(float(v) for v in offset), tuple(float(v) for v in scale))
