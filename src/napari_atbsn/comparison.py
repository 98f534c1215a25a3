"""Several denoised versions of one image as a single lazy array, computed plane by plane.

Comparing blind-spot sizes means looking at the same plane denoised with
k_b = 1, 3, 5 ... (and perhaps the student) side by side. A
:class:`ComparisonStack` is an array-like with a leading *version* axis in
front of the image's own axes. Indexing computes only the planes asked for:
each plane once for all versions (one backbone pass per model serves every
k_b of that model) and keeps the last few planes, so moving a slider between
versions, or reading the values under the cursor, costs nothing once the plane
is there. napari displays it like any array; a notebook can index it.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .axes import check_context_length, context_unused, guess_axes, neighbour_planes, validate_axes
from .config import AUTO_K_B
from .errors import ConfigError, ImageError
from .events import drain
from .inference.denoiser import Denoiser
from .inference.inmemory import iter_denoise_outputs
from .inference.output_kinds import resolve_ks
from .inference.quality import Calibration, calibrate
from .inference.runtime import iter_array

PLANE_AXES = "TZ"


@dataclass(frozen=True)
class Version:
    """One entry of the version axis: a model and the k_b it is run with (None: the model's own output;
    ``auto``: the default, blended with the input), with its estimated gain over the input where known."""

    model: Denoiser
    k: Any
    label: str
    calibration: Calibration | None = None
    gain_db: float | None = None


def _gain(g: float | None, note: str = "") -> str:
    if g is not None:
        return f" (est. {g:+.1f} dB)"
    return f" (est. n/a: {note})" if note else " (est. n/a: blind spot shorter than the noise correlation)"


def versions_for(model: Denoiser, k_bs: Sequence[int] | None = None, *, data: Any = None,
                 axes: str | None = None) -> list[Version]:
    """The versions of one model: each k_b of a teacher (one backbone pass for all), or the model's output.

    With ``data`` (the whole image or volume), every version carries its estimated gain over the input, and a
    teacher's versions start with its default output (auto: chosen and blended, never worse), calibrated once on
    ``data`` so that every plane shares it; a D-BSN's output is its guarded fusion, a student's gain the one it
    measured the same way (SURE: it sees its pixel)."""
    cal = calibrate(model, data, axes or guess_axes(np.shape(data))) if data is not None else None
    if model.kind == "atbsn":
        ks = resolve_ks(model, list(k_bs) if k_bs else None)
        if cal is None:
            return [Version(model, k, f"k_b={k}") for k in ks]
        why = cal.sample if cal.gain_db is None else ""  # no estimate at all, and why
        auto = Version(model, AUTO_K_B, f"auto k_b={cal.k_b} blended" + _gain(cal.gain_db, why), cal, cal.gain_db)
        return [auto, *(Version(model, k, f"k_b={k}" + _gain(cal.gain_of(k), why), cal, cal.gain_of(k))
                        for k in ks if k != AUTO_K_B)]
    if k_bs:
        raise ConfigError(f"k_b applies to AT-BSN teachers; {model.name} has one output. Compare it without k_b.")
    if cal is not None:  # the default output: a D-BSN's guarded fusion, a student's image, with the estimate
        return [Version(model, AUTO_K_B, model.name + _gain(cal.gain_db, note=cal.sample), cal, cal.gain_db)]
    return [Version(model, None, model.name)]


class ComparisonStack:
    """``versions`` of ``data`` as one lazy float32 array of shape ``(len(versions), *data.shape)``.

    Parameters
    ----------
    data : array-like
        The noisy image (numpy, dask, zarr ...), read one plane at a time.
    axes : str
        Its axes (guessed when None); T and Z are plane axes, C, Y, X are kept whole.
    versions : list of Version
        What to compute, in order (see :func:`versions_for`).
    cache_planes : int
        How many computed planes (all versions each) to keep.
    """

    def __init__(self, data: Any, axes: str | None, versions: Sequence[Version], *, cache_planes: int = 4,
                 batch_size: int = 4) -> None:
        if not versions:
            raise ConfigError("nothing to compare: give at least one model or k_b.")
        if not hasattr(data, "shape"):
            data = np.asarray(data)
        self.data = data
        self.axes = validate_axes(axes or guess_axes(data.shape), len(data.shape))
        self.versions = list(versions)
        channels = int(data.shape[self.axes.index("C")]) if "C" in self.axes else 1
        for v in self.versions:
            if v.model.in_channels != channels:
                raise ImageError(f"the image has {channels} channel(s) (axes {self.axes}) but {v.model.name} expects "
                                 f"{v.model.in_channels}; check the axes or choose a model trained on such data.")
        self.plane_dims = [i for i, a in enumerate(self.axes) if a in PLANE_AXES]
        self.rest_dims = [i for i, a in enumerate(self.axes) if a not in PLANE_AXES]
        self.plane_axes = "".join(self.axes[i] for i in self.rest_dims)
        self.shape = (len(self.versions), *(int(s) for s in data.shape))
        self.dtype = np.dtype(np.float32)
        self.ndim = len(self.shape)
        self.cache_planes = max(1, int(cache_planes))
        self.batch_size = batch_size
        self.computed = 0  # planes computed so far (each for every version)
        self._cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def labels(self) -> list[str]:
        return [v.label for v in self.versions]

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def plane(self, index: Sequence[int]) -> np.ndarray:
        """All versions of one plane, ``(V, *plane)`` with the plane's C/Y/X axes in the image's order."""
        key = tuple(int(i) for i in index)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        src = [slice(None)] * len(self.axes)
        for d, i in zip(self.plane_dims, key, strict=True):
            src[d] = i
        raw = np.asarray(self.data[tuple(src)])
        out = np.empty((len(self.versions), *raw.shape), np.float32)
        done: dict[int, tuple[list[int], list[Any]]] = {}
        for i, v in enumerate(self.versions):  # group versions by model: one pass serves all its k_b
            done.setdefault(id(v.model), ([], []))
            done[id(v.model)][0].append(i)
            done[id(v.model)][1].append(v.k)
        for rows, ks in done.values():
            model = self.versions[rows[0]].model
            cal = next((self.versions[r].calibration for r in rows if self.versions[r].calibration), None)
            # a plane read with its neighbours; in a stack too short for them, a single-plane model's 2-D mode
            if model.context and not (model.single_plane and context_unused(self.axes, self.data.shape,
                                                                            model.context)):
                res = self._with_context(model, key, ks, cal)
            else:
                res = drain(iter_denoise_outputs(model, raw, self.plane_axes, ks=ks, batch_size=self.batch_size,
                                                 dtype="float32", calibration=cal))
            for r, img in zip(rows, res, strict=True):
                out[r] = img
        with self._lock:
            self._cache[key] = out
            self.computed += 1
            while len(self._cache) > self.cache_planes:
                self._cache.popitem(last=False)
        return out

    def _with_context(self, model: Denoiser, key: tuple[int, ...], ks: list[Any],
                      cal: Calibration | None) -> list[np.ndarray]:
        """One plane's outputs from a stack-context model: the plane read with its neighbouring planes along Z
        (else T), assembled in the channels as the network reads them (axes.neighbour_planes)."""
        axis = check_context_length(self.axes, self.data.shape, model.context)
        assert axis is not None  # a context model always has one, or the check refused the image
        pos = self.plane_dims.index(self.axes.index(axis))
        length = int(self.data.shape[self.axes.index(axis)])
        rest = self.plane_axes
        cpos = rest.index("C") if "C" in rest else rest.index("Y")  # where the channels are (or go)
        blocks = []
        for j in neighbour_planes(key[pos], axis, (length,), model.context, axis):
            src: list[Any] = [slice(None)] * len(self.axes)
            for d, i in zip(self.plane_dims, key, strict=True):
                src[d] = i
            src[self.axes.index(axis)] = j
            block = np.asarray(self.data[tuple(src)], dtype=np.float32)
            blocks.append(block if "C" in rest else np.expand_dims(block, cpos))
        axes = rest if "C" in rest else rest[:cpos] + "C" + rest[cpos:]
        unit = np.concatenate(blocks, axis=cpos)
        if AUTO_K_B in ks and cal is None:
            cal = calibrate(model, self.data, self.axes)
        outs = drain(iter_array(model, unit, axes, ks=ks, batch_size=self.batch_size, dtype="float32",
                                calibration=cal, assembled=True))
        return [o if "C" in rest else np.squeeze(o, cpos) for o in outs]

    def cached(self, index: Sequence[int]) -> np.ndarray | None:
        """The plane's versions if already computed, else None (never computes: for cursor read-outs)."""
        with self._lock:
            return self._cache.get(tuple(int(i) for i in index))

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _expand(key, self.ndim)
        vkey, rest = key[0], key[1:]
        picks = [np.arange(self.shape[1 + d])[rest[d]] for d in self.plane_dims]
        lists = [np.atleast_1d(p) for p in picks]
        rest_shape = [self.shape[1 + d] for d in self.rest_dims]
        block = np.empty((len(self.versions), *[len(p) for p in lists], *rest_shape), np.float32)
        for combo in itertools.product(*[range(len(p)) for p in lists]):
            block[(slice(None), *combo)] = self.plane([lists[j][c] for j, c in enumerate(combo)])
        # block axes: version, plane axes, then the rest: back to the image's own order
        order = self.plane_dims + self.rest_dims
        block = block.transpose([0, *[1 + order.index(d) for d in range(len(self.axes))]])
        final: list[Any] = [vkey]
        for d in range(len(self.axes)):
            if d in self.plane_dims:
                final.append(0 if np.ndim(picks[self.plane_dims.index(d)]) == 0 else slice(None))
            else:
                final.append(rest[d])
        return block[tuple(final)]


def _expand(key: Any, ndim: int) -> tuple[Any, ...]:
    """A numpy index as a full tuple of ``ndim`` entries (Ellipsis expanded; None is not supported)."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is None for k in key):
        raise IndexError("ComparisonStack does not support np.newaxis in indices.")
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...').")
    if any(k is Ellipsis for k in key):
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1:]
    if len(key) > ndim:
        raise IndexError(f"too many indices: the array is {ndim}-D, {len(key)} were given.")
    return key + (slice(None),) * (ndim - len(key))
