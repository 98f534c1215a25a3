"""What a model run can output, and which outputs a model has: one image per blind-spot size k_b for an
AT-BSN teacher, the image for a student, the fused image plus its noise map (and the blind-spot estimate
before fusion) for a D-BSN. The keys are :data:`napari_atbsn.config.OutputKey` values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import AUTO_K_B, NOISE_MAP, OutputKey, check_k
from ..errors import BlindSpotError, ConfigError

if TYPE_CHECKING:
    from .denoiser import Denoiser

#: What a denoise can return: float32, or the input's own type (rounded and clipped to its range).
OUTPUT_DTYPES = ("float32", "input")


def refuse_k_b(model: Denoiser, k_b: object) -> None:
    """k_b is a setting of AT-BSN teachers only: refuse it, naming why, for students and D-BSN models."""
    if k_b is None or (isinstance(k_b, list | tuple) and not k_b) or model.kind == "atbsn":
        return
    if model.kind == "dbsn":
        raise BlindSpotError("k_b applies to AT-BSN teachers; D-BSN's blind spot is always one pixel (its noise "
                             "model restores the pixel's own value). Leave k_b unset.")
    raise BlindSpotError("k_b applies to AT-BSN teachers; a distilled student has no blind spot. Leave k_b unset.")


def resolve_ks(model: Denoiser, k_b: int | str | Sequence[int] | None, noise_map: bool = False) -> list[OutputKey]:
    """The outputs to compute: one per k_b (teachers; ``"auto"``: chosen from the data and blended with the
    input), the image (students, D-BSN), plus D-BSN's noise map."""
    if noise_map and model.kind != "dbsn":
        raise ConfigError(f"a noise map comes from a D-BSN model's noise estimator; {model.name} has none. "
                          f"Train one with 'atbsn train --method dbsn', or leave out --save-noise-map.")
    extra = [NOISE_MAP] if noise_map else []
    if k_b is None:  # the default, with its estimated gain: a teacher's stored k_b or auto (chosen, blended); a
        # D-BSN's guarded fusion; a student's image
        return [model.default_k_b if model.kind == "atbsn" else AUTO_K_B, *extra]
    refuse_k_b(model, k_b)
    if isinstance(k_b, str) or (not isinstance(k_b, int | np.integer) and AUTO_K_B in list(k_b)):
        if k_b != AUTO_K_B and list(k_b) != [AUTO_K_B]:
            raise BlindSpotError(f"k_b={k_b!r}; give 'auto' alone (the blind spot chosen from the data, blended "
                                 f"with the input) or blind-spot sizes such as 3.")
        return [AUTO_K_B]
    ks = [k_b] if isinstance(k_b, int | np.integer) else list(k_b)
    if not ks:
        raise BlindSpotError("k_b is empty; give at least one blind-spot size, e.g. 3.")
    if len(set(ks)) != len(ks):
        raise BlindSpotError(f"k_b={ks} repeats a value; give each blind-spot size once.")
    return [check_k(int(k), name="k_b") for k in ks]


def output_dtype(k: Any, dtype: np.dtype) -> np.dtype:
    """The noise map is a standard deviation: always float32, whatever the image's output type."""
    return np.dtype(np.float32) if k == NOISE_MAP else np.dtype(dtype)
