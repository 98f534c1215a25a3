"""How far a distilled student departs from its blended teacher, on rows it never trained on.

On rows that distillation left out, the student s is measured two ways:

* its own estimate: s sees the pixel it denoises, so its risk is E(s − y)² − σ² + 2·E[s_i n_i], the last term
  measured by a probe of the noise's covariance (SURE, napari_atbsn.risk.leak), as ``atbsn denoise`` does;
* against the teacher's default output g (the auto k_b blended with the input, risk R̂_g by Noise2Self): the
  departure D = mean (s − g)² is measured directly and, by the triangle inequality, the student's risk is at
  most (√R̂_g + √D)², a *bound* that rests on the teacher's estimate alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..events import drain
from ..inference.quality import sample_groups
from ..inference.runtime import iter_array
from ..plane_noise import noise_from_dict, noise_of_images
from ..risk import MAX_GAIN_DB, PROBE_SCALE, blend, leak, noise_mse, noise_probe, risk

if TYPE_CHECKING:
    from ..inference.denoiser import Denoiser
    from ..inference.quality import Calibration
    from ..sampling import PlaneSource

HELD_OUT_SHARE = 8      # distillation leaves out the bottom 1/8 of every plane's rows ...
MIN_HELD_OUT = 16       # ... and at least this many
REPORT_PLANES = 8       # planes the report looks at (evenly spaced)
REPORT_WIDTH = 512      # the centre columns of each
CONTEXT = 64            # rows above the held-out band that both networks see, so the band has real surroundings


def held_out_rows(height: int, patch: int) -> int:
    """Rows at the bottom of every plane that distillation does not train on (the report's data); 0 when the
    plane is too short to give them up and keep a training patch."""
    band = max(MIN_HELD_OUT, -(-height // HELD_OUT_SHARE))
    return band if height - band >= patch else 0


@dataclass(frozen=True)
class DistillReport:
    """The student against the blended teacher on the held-out rows (gains in dB over the noisy input)."""

    planes: int
    rows: tuple[int, int]
    width: int
    held_out: bool              # False: the plane was too short to hold rows out; measured on training rows
    teacher_gain_db: float      # the teacher's blend, estimated (napari_atbsn.risk)
    departure_db: float         # 10·log10(σ̂² / D): how far below the noise the student's departure lies
    gain_db: float              # the student's estimated gain (SURE)
    gain_bound_db: float        # the student's gain is at least this, σ̂² / (√R̂_g + √D)²
    psnr_vs_teacher_db: float   # PSNR of the student against the blended teacher, the data's range as peak

    def to_record(self) -> dict[str, Any]:
        return {"planes": self.planes, "rows": list(self.rows), "width": self.width, "held_out": self.held_out,
                "teacher_estimated_gain_db": round(self.teacher_gain_db, 3),
                "departure_below_noise_db": round(self.departure_db, 3),
                "estimated_gain_db": round(self.gain_db, 3), "estimated_gain_bound_db": round(self.gain_bound_db, 3),
                "psnr_vs_teacher_db": round(self.psnr_vs_teacher_db, 3)}

    def line(self) -> str:
        """What ``atbsn distill`` prints."""
        where = "held-out rows" if self.held_out else "training rows (the planes are too short to hold rows out)"
        return (f"student vs blended teacher on {where} {self.rows[0]}-{self.rows[1]} of {self.planes} plane(s): "
                f"estimated gain: {self.gain_db:+.2f} dB over the input (teacher blend {self.teacher_gain_db:+.2f}); "
                f"departure {self.departure_db:.1f} dB below the noise, so at least {self.gain_bound_db:+.2f}")


def report_plane_numbers(n_planes: int) -> np.ndarray:
    """The planes the report looks at: up to :data:`REPORT_PLANES`, evenly spaced."""
    return np.unique(np.linspace(0, n_planes - 1, min(REPORT_PLANES, n_planes)).round().astype(int))


def report_planes(source: PlaneSource, band: int, context: int = 0) -> tuple[np.ndarray, int, tuple[int, int]]:
    """The report's input: up to :data:`REPORT_PLANES` evenly spaced planes, the centre columns, the held-out band
    with :data:`CONTEXT` rows above it, as (P, C, h, w) float32 (each followed by its ``context`` planes'
    channels for a stack-context model); the offset of the band in it; the band's rows."""
    h, w = source.height, min(source.width, REPORT_WIDTH)
    r0 = h - band if band else max(0, h - REPORT_WIDTH)
    top = max(0, r0 - CONTEXT)
    x0 = (source.width - w) // 2
    idx = report_plane_numbers(source.n_planes)
    planes = np.stack([source.read_unit(int(i), top, x0, h - top, w, context) for i in idx])
    return planes, r0 - top, (r0, h)


def distill_report(student: Denoiser, teacher: Denoiser, calibration: Calibration, source: PlaneSource,
                   band: int, correlation: np.ndarray | None, *, batch_size: int = 4) -> DistillReport:
    """Measure ``student`` against ``teacher``'s blend (``calibration``) on the held-out ``band`` rows;
    ``correlation`` is the noise's 2-D autocorrelation (None: white)."""
    units, off, rows = report_planes(source, band, student.context)
    # the estimate is the plane's own; a stack-context model also reads its neighbours (independent noise)
    planes, context = units[:, :student.in_channels], units[:, student.in_channels:]

    def run(model: Denoiser, x: np.ndarray, key: Any) -> np.ndarray:
        x = np.concatenate([x, context], axis=1) if model.context else x
        out = drain(iter_array(model, x.astype(np.float32), "SCYX", ks=[key], batch_size=batch_size,
                               dtype="float32", assembled=bool(model.context)))[0]
        return out.astype(np.float64)

    # separate images (S) each with its own level, as the calibration measured them (plane_noise.PlaneNoise)
    level = noise_of_images(noise_from_dict(calibration.noise_level), sample_groups(source.data, source.axes),
                            source.separate_images(report_plane_numbers(source.n_planes)))
    f, s = run(teacher, planes, calibration.k_b), run(student, planes, None)
    # the probe over the whole crop (its correlation is that of the noise), scored on the band
    probe = noise_probe(s, planes.astype(np.float64), level, correlation)
    s_probed = run(student, planes + PROBE_SCALE * probe, None)
    y, f, s, s_probed, probe = (a[..., off:, :].astype(np.float64) for a in (planes, f, s, s_probed, probe))
    alpha = np.asarray(calibration.alpha, dtype=np.float64).reshape(1, -1, 1, 1)
    g = blend(y, f, alpha)
    var = noise_mse(f, y, level)
    floor = var * 10 ** (-MAX_GAIN_DB / 10)
    r_g = max(risk(f, y, level, np.broadcast_to(alpha, y.shape)), floor)
    r_s = max(risk(s, y, level, 1.0, leak(s, s_probed, probe)), floor)
    d = max(float(np.mean((s - g) ** 2)), floor)
    peak = float(np.ptp(y)) or 1.0

    def db(num: float, den: float) -> float:
        return float(10 * np.log10(num / den))

    return DistillReport(len(planes), rows, int(planes.shape[-1]), bool(band), db(var, r_g), db(var, d),
                         db(var, r_s), db(var, (np.sqrt(r_g) + np.sqrt(d)) ** 2), db(peak**2, d))


__all__ = ["DistillReport", "distill_report", "held_out_rows", "report_plane_numbers", "report_planes"]
