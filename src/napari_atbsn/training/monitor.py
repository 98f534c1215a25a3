"""A D-BSN run that knows how it is doing: self-supervised quality estimates during training and at its end.

Nobody who trains on noisy data alone has a clean image to check the network against, so the run checks
itself with the estimates ``atbsn denoise`` reports (:mod:`napari_atbsn.inference.quality`): on a fixed
sample of the training data (a few planes, a centre crop) it measures the blind-spot estimate mu and the
Bayes fusion, each as an estimated PSNR gain over the noisy input (Noise2Self for mu's blind spot, SURE with a
probe of the noise's covariance where an output sees its pixel). The noise level and correlation are measured
once, before the first step.

At the end of the run the last estimate (of the final weights) decides the default output, as ``denoise``
will. A run whose fusion is estimated worse than the input is reported as failed, with the likely cause and
the fix; the default output then falls back to the safest one (the blend of mu with the input, weight α ≥ 0,
which is the input itself when mu is useless), never the collapsed fusion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import BLIND_ESTIMATE
from ..errors import ImageError
from ..events import QualityEvent
from ..inference.quality import Calibration, calibrate_seeing, sample_groups, sample_planes
from ..inference.quality import measure_noise as measure_noise_of
from ..plane_noise import noise_of_images

if TYPE_CHECKING:
    from ..inference.denoiser import Denoiser
    from ..risk import Noise
    from ..sampling import PlaneSource

#: The in-training estimate looks at this many tiles, spread over planes and positions: on FMD a 2-plane centre
#: crop read +11.6 dB for a run whose default output gained +6.9 dB on the whole images.
MONITOR_TILES = 4
MONITOR_SIDE = 128    # each this wide: about 2 s an estimate on the small preset on 2 CPU cores (two passes)
MONITOR_TIMES = 2     # estimates per phase: half-way and at its end


def monitor_every(iters: int) -> int:
    """Steps between two estimates in a phase of ``iters`` steps (its last step always has one)."""
    return max(1, -(-iters // MONITOR_TIMES))


@dataclass
class QualityMonitor:
    """The fixed sample and its measured noise; :meth:`estimate` scores a D-BSN in training on it."""

    planes: np.ndarray            # (P, C, h, w) float64, data units
    level: Noise                  # a PlaneNoise where the tiles are separate images (S), each its own
    correlation: np.ndarray | None
    sample: str
    last: Calibration | None = None  # the latest estimate (at the end of a run: the final weights')

    @classmethod
    def for_source(cls, source: PlaneSource, noise: tuple[Noise, np.ndarray | None]) -> QualityMonitor:
        """The monitor for a training run's data and its measured ``noise`` (:func:`measure_noise`): tiles of
        evenly spaced planes at the centres of the plane's four quadrants in turn, smaller than the noise's
        sample so that the estimates cost a small share of the steps. Tiles of separate images (S) are scored
        with their image's own noise level, as ``denoise`` scores them."""
        side = min(source.height, source.width, MONITOR_SIDE)
        idx = np.linspace(0, source.n_planes - 1, MONITOR_TILES).round().astype(int)
        tiles = []
        for t, i in enumerate(idx):
            cy, cx = ((1 + 2 * (t // 2 % 2)) * source.height // 4, (1 + 2 * (t % 2)) * source.width // 4)
            y0 = int(np.clip(cy - side // 2, 0, source.height - side))
            x0 = int(np.clip(cx - side // 2, 0, source.width - side))
            tiles.append(source.read(int(i), y0, x0, side, side))
        level = noise_of_images(noise[0], sample_groups(source.data, source.axes), source.separate_images(idx))
        return cls(np.stack(tiles).astype(np.float64), level, noise[1],
                   f"{MONITOR_TILES} tiles {side}x{side} of the training data")

    def estimate(self, model: Denoiser, stage: str, step: int) -> QualityEvent:
        """mu's and (after the mu phase, when the variance heads have trained) the fusion's estimated gains."""
        cal = self.last = calibrate_seeing(model, self.planes, self.level, self.correlation, self.sample)
        est = {"mu": cal.gain_of(BLIND_ESTIMATE)}
        if stage != "dbsn-mu":
            est["fused"] = cal.gain_of(None)
        estimates = {k: round(float(v), 3) for k, v in est.items() if v is not None}
        text = ", ".join(f"{k} {v:+.2f} dB" for k, v in estimates.items())
        return QualityEvent(stage, step, estimates, f"estimated gain over the input at step {step}: {text}")


def measure_noise(source: PlaneSource) -> tuple[Noise, np.ndarray | None] | None:
    """The training data's noise level (variance against signal, per channel; a PlaneNoise where the data holds
    separate images, S, each with its own) and 2-D correlation (None: uncorrelated), measured as ``denoise``
    measures it (:func:`~napari_atbsn.inference.quality.measure_noise`); None when it cannot be (planes under
    64x64, a constant image): the run then trains unmonitored, with the paper's likelihood for the noise model."""
    try:
        return measure_noise_of(source.data, source.axes, sample_planes(source.data, source.axes)[0],
                                sample_groups(source.data, source.axes))
    except ImageError:
        return None


#: A run whose mu is worse than the input and whose fusion gains less than this has learned nothing useful:
#: its fusion fell back to about the input (it weighs y where mu is poor), which is safe but no denoising.
USEFUL_GAIN_DB = 0.5


def diagnose(cal: Calibration, steps: int) -> tuple[bool, str]:
    """(failed, advice) of a finished D-BSN run from its final calibration. It failed when the fusion is
    estimated worse than the input, or when mu is and the fusion gains under :data:`USEFUL_GAIN_DB`; the advice
    names the likely cause from mu's and the fusion's estimates."""
    fused, mu = cal.gain_of(None), cal.gain_of(BLIND_ESTIMATE)
    if fused is None or (fused >= 0 and not (mu is not None and mu < 0 and fused < USEFUL_GAIN_DB)):
        return False, ""
    if cal.k_b == BLIND_ESTIMATE:
        fallback = "The default output falls back to the blend of mu with the input"
    elif fused >= 0:
        fallback = "The default output, the fusion, is about the input: keep the input"
    else:
        fallback = "The default output is the fusion, estimated worse than the input: keep the input"
    if mu is None or mu < 0:
        cause = (f"the blind-spot network itself did not learn (mu {mu:+.2f} dB) in {steps} steps: train longer "
                 f"(--iters), or with a lower --lr if the loss jumped; if 'atbsn analyze' finds the noise "
                 f"spatially correlated, use AT-BSN instead (D-BSN's one-pixel blind spot needs "
                 f"pixel-independent noise)") if mu is not None else "mu could not be measured"
    else:
        cause = (f"the noise model failed (mu {mu:+.2f} dB but the fusion {fused:+.2f} dB): the noise estimator "
                 f"over- or under-states the noise; train longer, or try --noise-model gaussian")
    return True, f"D-BSN training FAILED (fusion {fused:+.2f} dB over the input); {cause}. {fallback}."


def final_quality(monitor: QualityMonitor, steps: int) -> dict[str, Any]:
    """The config.json ``quality`` entry of a finished D-BSN, from the monitor's estimate of its final weights:
    the default output (the fusion, or the blend of mu when the fusion is estimated worse), its estimated gain,
    and whether the run failed (with the advice). ``denoise`` decides again on a sample of what it denoises."""
    cal = monitor.last
    if cal is None:
        return {}
    failed, advice = diagnose(cal, steps)
    record: dict[str, Any] = {"default": cal.to_record(), "line": f"{cal.line()} [on {cal.sample}]",
                              "failed": failed, "worse": cal.worse}
    if advice:
        record["advice"] = advice
    elif cal.worse:
        record["advice"] = "the default output is estimated worse than the input: keep the input."
    return {"quality": record}


__all__ = ["QualityMonitor", "diagnose", "final_quality", "measure_noise", "monitor_every"]
