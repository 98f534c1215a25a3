"""The ``atbsn`` command line's arguments: one parser, one builder per sub-command. Help texts come from the
typed configs (:func:`napari_atbsn.config.config_fields_help`), so the CLI, the widgets and the docs say the same.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .config import AUTO_CONTEXT, AUTO_K_B, DBSNConfig, DistillConfig, TrainConfig, UnpairedConfig, config_fields_help
from .version import __version__

TRAIN_HELP = config_fields_help(TrainConfig)
DISTILL_HELP = config_fields_help(DistillConfig)
DBSN_HELP = config_fields_help(DBSNConfig)
UNPAIRED_HELP = config_fields_help(UnpairedConfig)


def _phases(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--phases {text!r}: give three fractions, e.g. 0.4,0.4,0.2") from None


def _ks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip() != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ks {text!r}: give comma-separated integers, e.g. 0,1,3,5,7,9,11") from None


def _k_b(text: str) -> int | str:
    """A blind-spot size, or 'auto' (chosen from the data)."""
    if text.strip().lower() == AUTO_K_B:
        return AUTO_K_B
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid k_b {text!r}: give an odd size such as 3, 0, or 'auto'") from None


def _context(text: str) -> int | str:
    """A number of neighbouring planes on each side, or 'auto' (from the measured independence of the planes'
    noise)."""
    if text.strip().lower() == AUTO_CONTEXT:
        return AUTO_CONTEXT
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid context {text!r}: give a number of planes on each side such as "
                                         f"0, 1, 2, or 'auto'") from None


def _typed(p: argparse.ArgumentParser, helps: dict[str, str], specs: Sequence[tuple[str, type]]) -> None:
    """Options whose help text comes from the config field of the same name."""
    for name, typ in specs:
        p.add_argument(f"--{name}", type=typ, help=helps[name.replace("-", "_")])


def _gpu_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA (run in float32)")
    p.add_argument("--compile", action="store_true", help=TRAIN_HELP["compile"])


def gpu_settings(args: argparse.Namespace) -> dict[str, bool]:
    """The GPU-path settings of the parsed flags, as config fields."""
    return {"amp": not args.no_amp, "compile": args.compile}


def _run_control(p: argparse.ArgumentParser) -> None:
    _gpu_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in the output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model in the output folder")


def _debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _axes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--axes", help="axes of NOISY, letters from TZSCYX (default: from metadata, else guessed)")
    p.add_argument("--series", type=int, default=0, help="which image series of a multi-series TIFF (or OME-Zarr "
                   "image) to use (default 0; the series used is printed when there are several)")
    p.add_argument("--allow-missing-chunks", action="store_true", help="accept a Zarr input whose store lacks "
                   "chunks (read as the fill value); by default it is refused as an incomplete copy")


def _common(p: argparse.ArgumentParser) -> None:
    _axes(p)
    p.add_argument("--device", default="auto", help=TRAIN_HELP["device"])
    _debug(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atbsn", description="Self-supervised denoising with asymmetric "
                                     "blind spots (AT-BSN) and multi-teacher distillation.")
    parser.add_argument("--version", action="version", version=f"napari-atbsn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_distill, _add_denoise, _add_analyze, _add_info, _add_export, _add_demo):
        add(sub)
    return parser


def _add_train(sub: Any) -> None:
    t = sub.add_parser("train", help="train an AT-BSN teacher (or a D-BSN) on noisy data",
                       description="Train on noisy data only. --method atbsn (default) suits spatially "
                       "correlated noise; --method dbsn suits pixel-independent noise. 'atbsn analyze' tells "
                       "which.")
    t.add_argument("noisy", help="noisy image or volume: TIFF/OME-TIFF, .zarr/.ome.zarr, .nii(.gz), .npy, PNG/JPEG "
                   "(read lazily, patch by patch)")
    t.add_argument("-o", "--output", required=True, help="model folder to write")
    t.add_argument("--method", default="atbsn", choices=["atbsn", "dbsn"],
                   help="atbsn: asymmetric blind spots, for correlated noise; dbsn: one-pixel blind spot with a "
                   "noise model and Bayes fusion, for pixel-independent noise")
    t.add_argument("--preset", choices=["paper", "small", "tiny"], help=TRAIN_HELP["preset"] + " (default small)")
    t.add_argument("--noise-model", choices=["gaussian", "poisson-gaussian", "multivariate-gaussian"],
                   help="dbsn only: " + DBSN_HELP["noise_model"] + " (default poisson-gaussian)")
    t.add_argument("--gamma", type=float, help="dbsn only: " + DBSN_HELP["gamma"])
    t.add_argument("--phases", type=_phases, help="dbsn only: " + DBSN_HELP["phases"])
    t.add_argument("--sigma-fit", choices=["measured", "likelihood"],
                   help="dbsn only: " + DBSN_HELP["sigma_fit"] + " (default measured)")
    _typed(t, TRAIN_HELP, [("k-a", int), ("k-b", _k_b), ("context", _context), ("iters", int), ("patch", int),
                           ("batch", int), ("lr", float), ("seed", int), ("checkpoint-every", int)])
    t.add_argument("--normalization", choices=["range255", "zscore", "range1"],
                   help=TRAIN_HELP["normalization"] + "; dbsn default range1")
    _run_control(t)
    _common(t)


def _add_distill(sub: Any) -> None:
    d = sub.add_parser("distill", help="distil a trained teacher into a fast non-blind student",
                       description="An AT-BSN teacher: multi-teacher distillation over blind-spot sizes --ks. "
                       "A D-BSN teacher: unpaired distillation, with --clean images of similar samples if you have "
                       "them (noise synthesised by the D-BSN's noise model), else self-distillation.")
    d.add_argument("noisy")
    d.add_argument("--teacher", required=True, help="teacher model folder (from 'atbsn train')")
    d.add_argument("--clean", help="D-BSN teacher only: clean images of similar samples (not of the same scene)")
    d.add_argument("--clean-axes", help="axes of --clean (default: from metadata, else guessed)")
    d.add_argument("--real-weight", type=float, help="D-BSN teacher only: " + UNPAIRED_HELP["real_weight"])
    d.add_argument("-o", "--output", required=True, help="student model folder to write")
    d.add_argument("--ks", type=_ks, help=DISTILL_HELP["ks"] + " (default 0,1,3,5,7,9,11)")
    d.add_argument("--student", choices=["A", "B", "C", "tiny"], help=DISTILL_HELP["student"])
    _typed(d, DISTILL_HELP, [("iters", int), ("patch", int), ("batch", int), ("lr", float), ("seed", int),
                             ("checkpoint-every", int)])
    d.add_argument("--mean-teacher", action="store_true", help=DISTILL_HELP["mean_teacher"])
    d.add_argument("--targets", choices=["blended", "paper"], help=DISTILL_HELP["targets"] + " (default blended)")
    d.add_argument("--no-init-from-teacher", action="store_true", help="student C: start from random weights")
    _run_control(d)
    _common(d)


def _add_denoise(sub: Any) -> None:
    n = sub.add_parser("denoise", help="denoise an image or volume of any size, chunk by chunk (resumable)",
                       description="Denoise IN with a teacher or student model. The network runs on windows of "
                       "the model's training patch size; the output is written chunk by chunk, so memory does "
                       "not grow with the volume. A killed or stopped run resumes when the same command is run "
                       "again.")
    n.add_argument("noisy", metavar="IN", help="TIFF/BigTIFF/OME-TIFF/ImageJ, .zarr/.ome.zarr, .nii(.gz), .npy, "
                   "PNG/JPEG")
    n.add_argument("-m", "--model", required=True, help="model folder")
    n.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output .ome.zarr/.zarr (OME-NGFF, with a pyramid), .tif (OME-TIFF, BigTIFF) or .npy")
    n.add_argument("--k-b", type=_k_b, nargs="+", metavar="K",
                   help="inference blind-spot size(s) (teachers only; default: the model's). Several values give "
                   "several outputs, OUT_kbK, from one network pass per window. 'auto' chooses k_b from the data "
                   "and blends the output with the input so that it is never worse, and reports the estimated gain")
    n.add_argument("--chunk", type=int, help="output chunk side in pixels (default: from free memory)")
    n.add_argument("--window", type=int, help="expert: network window side (default: the training patch; "
                   "a teacher refuses windows larger than it, a student runs in any)")
    n.add_argument("--halo", type=int, help="expert: context kept around each window's centre (default window/4)")
    n.add_argument("--roi", help="sub-volume to denoise, e.g. Z=10:20,Y=0:512,X=100:600 (context outside it "
                   "is still read, so the result equals the same pixels of a full run)")
    n.add_argument("--dtype", choices=["float32", "input"], default="float32",
                   help="output type: float32, or the input's type (rounded and clipped)")
    n.add_argument("--batch-size", type=int, help="windows per network call (default: 4 on CPU, from free "
                   "memory on GPU; halved automatically when the device runs out of memory)")
    n.add_argument("--scheduler", default="sync", help="sync (default), threads, processes, or tcp://HOST:PORT "
                   "of a running dask.distributed scheduler")
    n.add_argument("--workers", type=int, help="dask workers for threads/processes (default 2)")
    n.add_argument("--save-noise-map", action="store_true", help="D-BSN models: also write the estimated noise "
                   "standard deviation per pixel, OUT_noise")
    n.add_argument("--overwrite", action="store_true", help="replace an existing output (kept until the new one "
                   "is complete) or restart a different partial job")
    _gpu_flags(n)
    _common(n)


def _add_analyze(sub: Any) -> None:
    a = sub.add_parser("analyze", help="measure the noise's spatial correlation and recommend a method",
                       description="Estimates the noise's autocorrelation (from differences of neighbouring planes "
                       "when a stack repeats the same scene, else from residuals of single planes) and prints a "
                       "recommendation; its last line is 'recommended: atbsn k_a=K k_b=K [context=N]' or "
                       "'recommended: dbsn'.")
    a.add_argument("noisy", metavar="NOISY")
    _axes(a)
    _debug(a)


def _add_info(sub: Any) -> None:
    i = sub.add_parser("info", help="describe a model folder")
    i.add_argument("model")
    _debug(i)


def _add_export(sub: Any) -> None:
    x = sub.add_parser("export", help="export a model folder to TorchScript, ONNX or a BioImage Model Zoo package",
                       description="Export a teacher (its k_b fixed), a student or a D-BSN. TorchScript and ONNX "
                       "take one raw float32 (N, C, P, P) window, P the training patch, and return it denoised in "
                       "the same units (normalisation inside the graph); the window and halo to tile with are "
                       "stored in the file. --format bioimageio writes a validated BioImage Model Zoo zip.")
    x.add_argument("model", metavar="MODEL_DIR")
    x.add_argument("--format", required=True, choices=["torchscript", "onnx", "bioimageio"])
    x.add_argument("-o", "--output", required=True,
                   help="file to write (.pt, .onnx, or .zip for bioimageio); not inside the model folder")
    x.add_argument("--k-b", type=int, help="teachers: the blind spot fixed in the export (default: the model's)")
    x.add_argument("--sample", help="bioimageio: an image whose centre gives the test tensors and the cover "
                                    "(default: the generated sample in the model's data range)")
    x.add_argument("--sample-axes", help="axes of --sample (default: from metadata, else guessed)")
    x.add_argument("--author", action="append", help="bioimageio: an author of the weights (repeatable)")
    x.add_argument("--license", default="CC-BY-4.0", help="bioimageio: SPDX licence of the weights")
    x.add_argument("--name", help="bioimageio: the model's name")
    x.add_argument("--no-validate", action="store_true",
                   help="bioimageio: skip bioimageio.core's validation and test (on by default)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _debug(x)


def _add_demo(sub: Any) -> None:
    m = sub.add_parser("demo", help="the whole job on the built-in generated sample, with PSNR/SSIM")
    m.add_argument("-o", "--output", default="atbsn-demo", help="folder for models and results")
    m.add_argument("--iters", type=int, default=None, help="teacher training iterations")
    m.add_argument("--distill-iters", type=int, default=None, help="distillation iterations")
    m.add_argument("--planes", type=int, default=8, help="planes of the generated sample stack")
    m.add_argument("--size", type=int, default=256, help="side of the sample's planes in pixels (at least 64)")
    m.add_argument("--preset", default="small", choices=["paper", "small", "tiny"], help=TRAIN_HELP["preset"])
    m.add_argument("--device", default="auto", help=TRAIN_HELP["device"])
    m.add_argument("--overwrite", action="store_true", help="replace the demo's files in a folder that is not empty")
    _debug(m)


# -- commands ------------------------------------------------------------------
#: Ctrl-C, and what timeout, SLURM and most job schedulers send before they kill a job.
