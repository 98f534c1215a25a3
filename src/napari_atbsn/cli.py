"""The ``atbsn`` command line: train, distill, denoise, info, demo.

Errors the user can fix are printed as one line and exit with status 2; no
traceback unless ``--debug``. Ctrl-C during training saves a checkpoint that
``--resume`` continues.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import DEFAULT_GAMMA, DBSNConfig, DistillConfig, TrainConfig, UnpairedConfig, config_fields_help
from .errors import ATBSNError, ConfigError, WriteError
from .progress import count_callback, progress_callback
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


def _typed(p: argparse.ArgumentParser, helps: dict[str, str], specs: Sequence[tuple[str, type]]) -> None:
    """Options whose help text comes from the config field of the same name."""
    for name, typ in specs:
        p.add_argument(f"--{name}", type=typ, help=helps[name.replace("-", "_")])


def _gpu_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA (run in float32)")
    p.add_argument("--compile", action="store_true", help=TRAIN_HELP["compile"])


def _gpu(args: argparse.Namespace) -> dict[str, bool]:
    return {"amp": not args.no_amp, "compile": args.compile}


def _run_control(p: argparse.ArgumentParser) -> None:
    _gpu_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in the output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model in the output folder")


def _debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _axes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--axes", help="axes of NOISY, letters from TZSCYX (default: from metadata, else guessed)")


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
    t.add_argument("--preset", default="small", choices=["paper", "small", "tiny"], help=TRAIN_HELP["preset"])
    t.add_argument("--noise-model", choices=["gaussian", "poisson-gaussian", "multivariate-gaussian"],
                   help="dbsn only: " + DBSN_HELP["noise_model"] + " (default poisson-gaussian)")
    t.add_argument("--gamma", type=float, help="dbsn only: " + DBSN_HELP["gamma"])
    t.add_argument("--phases", type=_phases, help="dbsn only: " + DBSN_HELP["phases"])
    _typed(t, TRAIN_HELP, [("k-a", int), ("k-b", int), ("iters", int), ("patch", int), ("batch", int),
                           ("lr", float), ("seed", int), ("checkpoint-every", int)])
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
                   help="output .ome.zarr/.zarr (OME-NGFF, with a pyramid), .tif (BigTIFF, tiled) or .npy")
    n.add_argument("--k-b", type=int, nargs="+", metavar="K",
                   help="inference blind-spot size(s) (teachers only; default: the model's). Several values give "
                   "several outputs, OUT_kbK, from one network pass per window")
    n.add_argument("--chunk", type=int, help="output chunk side in pixels (default: from free memory)")
    n.add_argument("--window", type=int, help="expert: network window side (default: the training patch; "
                   "the networks are not size-invariant)")
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
                       "recommendation; its last line is 'recommended: atbsn k_a=K k_b=K' or 'recommended: dbsn'.")
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
    m.add_argument("--preset", default="small", choices=["paper", "small", "tiny"], help=TRAIN_HELP["preset"])
    m.add_argument("--device", default="auto", help=TRAIN_HELP["device"])
    _debug(m)


# -- commands ------------------------------------------------------------------
class StopFlag:
    """SIGINT handler that asks the training loop to checkpoint and stop."""

    def __init__(self, message: str = "stopping after this step and saving a checkpoint") -> None:
        self.requested = False
        self.message = message
        self._old: Any = None

    def __enter__(self) -> StopFlag:
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_: Any) -> None:
        if self.requested:  # a second Ctrl-C aborts at once
            raise KeyboardInterrupt
        self.requested = True
        print(f"\natbsn: {self.message} (Ctrl-C again to abort)...", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGINT, self._old)

    def __call__(self) -> bool:
        return self.requested


def _overrides(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _open_image(path: str, axes: str | None) -> Any:
    """Open ``path`` lazily and say what was found (shape, axes, dtype) on stderr."""
    from .io.readers import open_image

    img = open_image(path, axes)
    print(f"atbsn: {path}: shape {img.shape}, axes {img.axes}, dtype {img.dtype}", file=sys.stderr)
    return img


def _open_training_data(path: str, axes: str | None) -> tuple[Any, str]:
    """Training data stays on disk: patches are read from the lazy array as they are drawn."""
    img = _open_image(path, axes)
    return img.data, img.axes


def _run_training(start: Callable[[StopFlag], Any], label: str, output: str) -> int:
    """Run the training generator ``start(stop)`` with a progress bar; Ctrl-C checkpoints and stops it."""
    from .events import drain

    with StopFlag() as stop:
        res = drain(start(stop), progress_callback(label))
    return _report_run(res, output)


def cmd_train(args: argparse.Namespace) -> int:
    from .training import iter_train, iter_train_dbsn

    _check_method_flags(args)
    data, axes = _open_training_data(args.noisy, args.axes)
    common = ["iters", "patch", "batch", "lr", "seed", "normalization", "checkpoint_every"]
    if args.method == "dbsn":
        dcfg = DBSNConfig(preset=args.preset, device=args.device, **_gpu(args),
                          **_overrides(args, [*common, "noise_model", "gamma", "phases"]))
        return _run_training(lambda stop: iter_train_dbsn(data, axes, dcfg, args.output, resume=args.resume,
                                                          overwrite=args.overwrite, should_stop=stop),
                             "train", args.output)
    cfg = TrainConfig(preset=args.preset, device=args.device, **_gpu(args), **_overrides(args, ["k_a", "k_b", *common]))
    return _run_training(lambda stop: iter_train(data, axes, cfg, args.output, resume=args.resume,
                                                 overwrite=args.overwrite, should_stop=stop), "train", args.output)


def _check_method_flags(args: argparse.Namespace) -> None:
    wrong = {"atbsn": ["noise_model", "gamma", "phases"], "dbsn": ["k_a", "k_b"]}[args.method]
    given = [f"--{n.replace('_', '-')}" for n in wrong if getattr(args, n, None) is not None]
    if given:
        other = "dbsn" if args.method == "atbsn" else "atbsn"
        raise ConfigError(f"{', '.join(given)} apply to --method {other}, not {args.method}; drop them or change "
                          f"--method.")


def cmd_distill(args: argparse.Namespace) -> int:
    from .modelio import read_config
    from .training import iter_distill

    if read_config(args.teacher)["kind"] == "dbsn":
        return _distill_dbsn(args)
    if args.clean or args.real_weight is not None:
        raise ConfigError("--clean and --real-weight are for D-BSN teachers (unpaired distillation); an AT-BSN "
                          "teacher distils from the noisy data alone.")
    data, axes = _open_training_data(args.noisy, args.axes)
    cfg = DistillConfig(device=args.device, **_gpu(args), mean_teacher=args.mean_teacher,
                        init_from_teacher=not args.no_init_from_teacher,
                        **_overrides(args, ["ks", "student", "iters", "patch", "batch", "lr", "seed",
                                            "checkpoint_every"]))
    return _run_training(lambda stop: iter_distill(data, args.teacher, axes, cfg, args.output, resume=args.resume,
                                                   overwrite=args.overwrite, should_stop=stop),
                         "distill", args.output)


def _distill_dbsn(args: argparse.Namespace) -> int:
    from .training import iter_distill_dbsn

    wrong = [f for f, v in (("--ks", args.ks), ("--patch", args.patch), ("--mean-teacher", args.mean_teacher or None),
                            ("--no-init-from-teacher", args.no_init_from_teacher or None)) if v is not None]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)} apply to AT-BSN teachers; a D-BSN teacher's student uses the "
                          f"teacher's patch and its Bayes output. Drop them.")
    data, axes = _open_training_data(args.noisy, args.axes)
    clean, clean_axes = _open_training_data(args.clean, args.clean_axes) if args.clean else (None, None)
    cfg = UnpairedConfig(device=args.device, **_gpu(args),
                         **_overrides(args, ["student", "iters", "batch", "lr", "seed", "checkpoint_every",
                                             "real_weight"]))
    return _run_training(lambda stop: iter_distill_dbsn(data, args.teacher, axes, clean=clean, clean_axes=clean_axes,
                                                        config=cfg, out_dir=args.output, resume=args.resume,
                                                        overwrite=args.overwrite, should_stop=stop),
                         "distill", args.output)


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze_noise

    print(analyze_noise(_open_image(args.noisy, args.axes)).report())
    return 0


def _report_run(res: Any, output: str) -> int:
    if res.stopped:
        print(f"atbsn: stopped at step {res.steps}; checkpoint in {res.path}. Run the same command with "
              f"--resume to continue.", file=sys.stderr)
        return 130
    print(f"atbsn: wrote {output} ({res.steps} steps, final loss {res.losses[-1]:.4f})" if res.losses else
          f"atbsn: wrote {output}", file=sys.stderr)
    return 0


def cmd_denoise(args: argparse.Namespace) -> int:
    from .events import drain
    from .inference.plan import plan_job
    from .inference.run import default_workers, iter_run, load_for_scheduler, worker_device_for
    from .inference.schedulers import check_scheduler
    from .io.readers import open_image

    check_scheduler(args.scheduler)
    _check_output_first(args.noisy, args.output)
    source = open_image(args.noisy, args.axes)
    print(f"atbsn: {args.noisy}: shape {source.shape}, axes {source.axes}, {source.dtype} "
          f"({source.nbytes / 2**30:.2f} GiB, {source.format})", file=sys.stderr)
    model = load_for_scheduler(args.model, args.scheduler, device=args.device, amp=not args.no_amp,
                               compile=args.compile)
    k_b = args.k_b[0] if args.k_b and len(args.k_b) == 1 else args.k_b
    workers = default_workers(args.scheduler, args.workers)
    job = plan_job(source, model, args.output, k_b=k_b, roi=args.roi, chunk=args.chunk, window=args.window,
                   halo=args.halo, batch_size=args.batch_size, dtype=args.dtype, overwrite=args.overwrite,
                   workers=workers, noise_map=args.save_noise_map,
                   worker_device=worker_device_for(args.scheduler, args.device))
    print(f"atbsn: {model.name}, window {job.window} (halo {job.halo}), chunk {job.chunk}, "
          f"{len(job.units())} chunks, scheduler {args.scheduler}", file=sys.stderr)
    cb = count_callback("denoise")
    with StopFlag("stopping after the chunks in progress; run the same command to resume") as stop:
        res = drain(iter_run(job, scheduler=args.scheduler, workers=workers, should_stop=stop,
                             log=lambda msg: print(f"atbsn: {msg}", file=sys.stderr)), cb)
    if not res.complete:
        return 130
    for p in res.paths:
        print(f"atbsn: wrote {p} ({res.units_computed} chunks computed, {res.units_resumed} resumed, "
              f"{res.seconds:.1f} s)", file=sys.stderr)
    return 0


def _check_output_first(src: str, dst: str) -> None:
    """Output mistakes are reported before the (slower) input and model loading."""
    from .io.outputs import output_kind

    output_kind(dst)
    if Path(dst).exists() and Path(src).exists() and Path(dst).resolve() == Path(src).resolve():
        raise WriteError(f"the output {dst} is the input file; choose another output path.")
    if not Path(dst).resolve().parent.is_dir():
        raise WriteError(f"output folder {Path(dst).parent} does not exist; create it first.")


def cmd_info(args: argparse.Namespace) -> int:
    from .modelio import load_network
    from .tiling import default_halo

    net, cfg = load_network(args.model)
    n_params = sum(p.numel() for p in net.parameters())
    arch = cfg["arch"]
    kind = {"atbsn": "AT-BSN teacher", "student": "distilled student", "dbsn": "D-BSN"}[cfg["kind"]]
    lines = [f"model folder   {args.model}",
             f"kind           {kind}",
             f"preset         {arch['preset']}  ({n_params:,} parameters, {arch['in_channels']} channel(s))",
             f"window         {cfg['patch']} px (training patch), "
             f"halo {cfg.get('halo', default_halo(cfg['patch']))} px"]
    if cfg["kind"] == "atbsn":
        lines.append(f"blind spots    k_a={cfg.get('k_a')} (training), k_b={cfg.get('k_b')} (default inference)")
    elif cfg["kind"] == "dbsn":
        lines.append(f"noise model    {arch['noise_model']} (one-pixel blind spot, Bayes fusion gamma="
                     f"{cfg.get('gamma', DEFAULT_GAMMA)})")
    elif cfg.get("method") == "dbsn-unpaired":
        clean = "with clean images" if cfg.get("unpaired", {}).get("clean") else "self-distillation only"
        lines.append(f"teacher        D-BSN, unpaired distillation ({clean})")
    else:
        kind = "mean-teacher" if cfg.get("mean_teacher") else "multi-teacher"
        lines.append(f"teachers       Ks={cfg.get('ks')} ({kind})")
    norm = cfg["normalization"]
    lines += [f"normalization  {norm['mode']} offset={[round(v, 4) for v in norm['offset']]} "
              f"scale={[round(v, 4) for v in norm['scale']]}",
              f"steps          {cfg.get('steps')}",
              f"written by     napari-atbsn {cfg.get('package_version')} on {cfg.get('created')}"]
    if "state" in cfg:
        lines.append("state          resumable checkpoint")
    print("\n".join(lines))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .exports import export

    sample = None
    if args.sample:
        from .axes import to_planes
        from .io.readers import open_image

        img = open_image(args.sample, args.sample_axes)
        if set(img.axes) - set("CYX"):
            raise ConfigError(f"--sample {args.sample} has axes {img.axes}; give one plane (YX or CYX), e.g. a "
                              f"crop saved as TIFF.")
        plane = to_planes(img.data, img.axes)[0]  # (C, Y, X)
        sample = plane if "C" in img.axes else plane[0]  # a grey sample is repeated over a model's channels
    path = export(args.model, args.format, args.output, k_b=args.k_b, overwrite=args.overwrite, sample=sample,
                  authors=tuple(args.author or ()), license=args.license, name=args.name,
                  validate=not args.no_validate)
    print(f"atbsn: wrote {path}" + (" (validated by bioimageio.core)" if args.format == "bioimageio"
                                     and not args.no_validate else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.output, preset=args.preset, iters=args.iters, distill_iters=args.distill_iters, device=args.device)
    return 0


COMMANDS = {"train": cmd_train, "distill": cmd_distill, "denoise": cmd_denoise, "analyze": cmd_analyze,
            "info": cmd_info, "export": cmd_export, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ATBSNError as e:
        if args.debug:
            raise
        print(f"atbsn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\natbsn: interrupted.", file=sys.stderr)
        return 130
    except MemoryError:
        print("atbsn: error: out of memory; use a smaller --batch, --patch or --batch-size.", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if "out of memory" not in str(e).lower() or args.debug:
            return _internal(e, args)
        print("atbsn: error: the device ran out of memory; use a smaller --batch, --patch or --batch-size, "
              "or --device cpu.", file=sys.stderr)
        return 2
    except Exception as e:  # last resort: a bug, but still no wall of traceback for the user
        return _internal(e, args)


def _internal(e: Exception, args: argparse.Namespace) -> int:
    if args.debug:
        raise e
    print(f"atbsn: internal error: {type(e).__name__}: {e}\nPlease report it; re-run with --debug for details.",
          file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
