"""The main job end to end on the built-in generated sample.

Generate a noisy stack with spatially correlated noise and its clean
reference, train an AT-BSN teacher (k_a = 9), distil a student from the
teachers k in {0, 1, 3, 5, 7, 9, 11} (blended with the input), denoise with
both (the teacher's default: k_b chosen from the data and blended), and report
PSNR/SSIM against the clean reference, with each output's estimated gain next
to its true one. The CPU settings (``small`` network, 64-pixel
patches, a few hundred steps) are sized to finish in a few minutes on two
cores; they are a demonstration, not the paper's 400k-step GPU schedule.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from .config import DistillConfig, TrainConfig
from .errors import ConfigError, WriteError
from .io.files import write_image
from .io.fs import check_writable
from .metrics import psnr, ssim
from .progress import progress_callback
from .sample_data import make_sample

#: CPU-sized settings of the demo per preset: (train iters, patch, batch, distill iters, student).
DEMO_SETTINGS: dict[str, tuple[int, int, int, int, str]] = {
    "small": (400, 64, 8, 300, "A"),
    "tiny": (60, 32, 4, 40, "tiny"),
    "paper": (2000, 128, 8, 1000, "C"),
}


def run_demo(output: str | Path = "atbsn-demo", *, preset: str = "small", iters: int | None = None,
             distill_iters: int | None = None, device: str = "auto", planes: int = 8, size: int = 256,
             stream: Any = None, overwrite: bool = False) -> dict[str, Any]:
    """Run the demo, write its outputs to ``output`` and return the metrics table.

    ``output`` must be a new or empty folder; ``overwrite=True`` lets the demo replace its files in a folder
    that holds something (an earlier demo).
    """
    from .events import drain
    from .inference.inmemory import iter_denoise_outputs
    from .inference.output_kinds import resolve_ks
    from .training import iter_distill, iter_train

    out = Path(output)
    stream = stream or sys.stdout
    t_iters, patch, batch, d_iters, student = DEMO_SETTINGS[preset]
    for flag, value in (("--iters", iters), ("--distill-iters", distill_iters)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{flag} {value} must be a positive number of steps (leave it out for the preset's "
                              f"{t_iters if flag == '--iters' else d_iters}).")
    for flag, value, least in (("--planes", planes, 2), ("--size", size, 64)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{flag} {value} must be a whole number of at least {least} (the defaults are 8 planes "
                              f"of 256x256).")
    prepare_demo_folder(out, overwrite)
    noisy, clean = make_sample(planes=planes, size=size)
    write_image(out / "noisy.tif", noisy, "ZYX", overwrite=True)
    write_image(out / "clean.tif", clean, "ZYX", overwrite=True)
    print(f"sample: {planes} planes of {size}x{size}, uint16, spatially correlated noise -> {out}", file=stream)

    t0 = time.perf_counter()
    tcfg = TrainConfig(preset=preset, iters=iters or t_iters, patch=patch, batch=batch, device=device)
    teacher = drain(iter_train(noisy, "ZYX", tcfg, out / "teacher", overwrite=True), progress_callback("train  "))
    t_train = time.perf_counter() - t0
    dcfg = DistillConfig(student=student, iters=distill_iters or d_iters, batch=batch, device=device)
    t0 = time.perf_counter()
    stud = drain(iter_distill(noisy, out / "teacher", "ZYX", dcfg, out / "student", overwrite=True),
                 progress_callback("distill"))
    t_distill = time.perf_counter() - t0

    rows = [("noisy input", noisy, 0.0, None)]
    for label, model in ((f"AT-BSN teacher, default (k_a=9, {preset})", teacher.model),
                         (f"student {student} (distilled)", stud.model)):
        t0 = time.perf_counter()
        outs = drain(iter_denoise_outputs(model, noisy, "ZYX", ks=resolve_ks(model, None), batch_size=4))
        den = outs[0]
        rows.append((label, den, time.perf_counter() - t0, _estimated_gain(outs.calibration)))
        write_image(out / f"denoised_{model.name}.tif", den, "ZYX", overwrite=True)

    drange = float(clean.max() - clean.min())
    table = []
    noisy_psnr = psnr(noisy, clean, drange)
    print(f"\n{'':38s} {'PSNR dB':>8s} {'SSIM':>7s} {'time s':>7s}  {'gain dB: estimated / true'}", file=stream)
    for label, img, secs, est in rows:
        p, s = psnr(img, clean, drange), ssim(img, clean, drange, axes="ZYX")
        table.append({"method": label, "psnr": round(p, 3), "ssim": round(s, 4), "seconds": round(secs, 2),
                      "estimated_gain_db": None if est is None else round(est, 3)})
        gains = "" if est is None else f"  {est:+.2f} / {p - noisy_psnr:+.2f}"
        print(f"{label:38s} {p:8.2f} {s:7.4f} {secs:7.2f}{gains}", file=stream)
    result = {"table": table, "train_seconds": round(t_train, 1), "distill_seconds": round(t_distill, 1),
              "data_range": drange, "convention": "float, no clipping, data range = clean max - min, "
              "SSIM 11x11 Gaussian per plane"}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"\ntraining {t_train:.0f} s, distillation {t_distill:.0f} s; outputs in {out.resolve()}", file=stream)
    print(f"gain over noisy: teacher {table[1]['psnr'] - table[0]['psnr']:+.2f} dB, "
          f"student {table[2]['psnr'] - table[0]['psnr']:+.2f} dB", file=stream)
    return result


def _estimated_gain(calibration: Any) -> float | None:
    """What the product tells a user without a clean image: the default output's estimated gain."""
    return None if calibration is None or calibration.gain_db is None else float(calibration.gain_db)


def prepare_demo_folder(out: Path, overwrite: bool) -> None:
    """The demo's folder: made if new; an existing one must be empty (or ``overwrite``) and writable. Checked
    before anything is written, so a refused demo changes nothing."""
    if out.exists() and not out.is_dir():
        raise WriteError(f"{out} is a file, not a folder; give a folder for the demo's outputs (-o).")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise WriteError(f"the demo folder {out} is not empty; pass --overwrite to replace the demo's files in it, "
                         f"or choose another folder with -o.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create the demo folder {out}: {e.strerror or e}; choose another output path.") \
            from None
    check_writable(out)


def main() -> None:  # pragma: no cover - thin wrapper for `python -m napari_atbsn.demo`
    run_demo()


if __name__ == "__main__":  # pragma: no cover
    main()
