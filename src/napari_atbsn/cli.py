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

from .arguments import build_parser, gpu_settings
from .config import DEFAULT_GAMMA, DBSNConfig, DistillConfig, TrainConfig, UnpairedConfig
from .errors import ATBSNError, ConfigError, WriteError
from .progress import count_callback, progress_callback

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """SIGINT/SIGTERM handler that asks the training loop to checkpoint and stop (a denoise: to stop after the
    chunks in progress)."""

    def __init__(self, message: str = "stopping after this step and saving a checkpoint") -> None:
        self.requested = False
        self.message = message
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        self._old = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def _handle(self, signum: int, *_: Any) -> None:
        if self.requested:  # a second Ctrl-C (or SIGTERM) aborts at once
            raise KeyboardInterrupt
        self.requested = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\natbsn: {name}: {self.message} (Ctrl-C again to abort)...", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __call__(self) -> bool:
        return self.requested


class StopAtOnce(StopFlag):
    """SIGINT/SIGTERM while nothing is written yet (planning a denoise, its calibration): say so and stop now, with
    the exit status of a stopped job (130), not the bare 143 of an unhandled SIGTERM."""

    def _handle(self, signum: int, *_: Any) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\natbsn: {name}: {self.message}", file=sys.stderr)
        raise KeyboardInterrupt


def _overrides(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _open_image(path: str, axes: str | None, series: int = 0, allow_missing_chunks: bool = False) -> Any:
    """Open ``path`` lazily, refuse missing Zarr chunks (unless allowed) and say what was found (series, shape,
    axes, dtype) on stderr."""
    from .io.readers import check_chunks, open_image

    img = open_image(path, axes, series=series, allow_missing_chunks=allow_missing_chunks)
    check_chunks(img)
    print(f"atbsn: {path}:{_series_note(path, series)} shape {img.shape}, axes {img.axes}, dtype {img.dtype}",
          file=sys.stderr)
    return img


def _series_note(path: str, series: int) -> str:
    """' series 0 of 2 (...),' when the file holds several image series, else ''."""
    from .io.readers import series_count

    n = series_count(path)
    if n <= 1:
        return ""
    return f" series {series} of {n}{'' if series else ' (choose another with --series N)'},"


def _open_training_data(path: str, axes: str | None, series: int = 0, allow_missing_chunks: bool = False,
                        ) -> tuple[Any, str]:
    """Training data stays on disk: patches are read from the lazy image as they are drawn."""
    img = _open_image(path, axes, series, allow_missing_chunks)
    return img, img.axes


def _run_training(start: Callable[[StopFlag], Any], label: str, output: str) -> int:
    """Run the training generator ``start(stop)`` with a progress bar; Ctrl-C checkpoints and stops it."""
    from .events import drain

    with StopFlag() as stop:
        res = drain(start(stop), progress_callback(label))
    return _report_run(res, output)


def cmd_train(args: argparse.Namespace) -> int:
    from .training import iter_train, iter_train_dbsn

    _check_method_flags(args)
    _check_resumed_preset(args)
    data, axes = _open_training_data(args.noisy, args.axes, args.series, args.allow_missing_chunks)
    common = ["iters", "patch", "batch", "lr", "seed", "normalization", "checkpoint_every"]
    if args.method == "dbsn":
        dcfg = DBSNConfig(device=args.device, **gpu_settings(args), **_overrides(args, ["preset"]),
                          **_overrides(args, [*common, "noise_model", "gamma", "phases", "sigma_fit"]))
        return _run_training(lambda stop: iter_train_dbsn(data, axes, dcfg, args.output, resume=args.resume,
                                                          overwrite=args.overwrite, should_stop=stop),
                             "train", args.output)
    cfg = TrainConfig(device=args.device, **gpu_settings(args), **_overrides(args, ["preset"]),
                      **_overrides(args, ["k_a", "k_b", "context", *common]))
    return _run_training(lambda stop: iter_train(data, axes, cfg, args.output, resume=args.resume,
                                                 overwrite=args.overwrite, should_stop=stop), "train", args.output)


def _check_resumed_preset(args: argparse.Namespace) -> None:
    """A resumed run keeps its checkpoint's network: a --preset that names another is refused, not ignored."""
    from .training import checkpoint_config

    if not args.resume or args.preset is None:
        return
    saved = checkpoint_config(args.output)
    old = (saved.get("train") or {}).get("preset")
    if old is not None and old != args.preset:
        raise ConfigError(f"--preset {args.preset} differs from the checkpoint's {old}; a resumed run keeps the "
                          f"checkpoint's network. Drop --preset (or start a new run in another folder).")


def _check_method_flags(args: argparse.Namespace) -> None:
    wrong = {"atbsn": ["noise_model", "gamma", "phases", "sigma_fit"],
             "dbsn": ["k_a", "k_b", "context"]}[args.method]
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
    data, axes = _open_training_data(args.noisy, args.axes, args.series, args.allow_missing_chunks)
    cfg = DistillConfig(device=args.device, **gpu_settings(args), mean_teacher=args.mean_teacher,
                        init_from_teacher=not args.no_init_from_teacher,
                        **_overrides(args, ["ks", "student", "iters", "patch", "batch", "lr", "seed",
                                            "checkpoint_every", "targets"]))
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
    data, axes = _open_training_data(args.noisy, args.axes, args.series, args.allow_missing_chunks)
    clean, clean_axes = (_open_training_data(args.clean, args.clean_axes, 0, args.allow_missing_chunks)
                         if args.clean else (None, None))
    cfg = UnpairedConfig(device=args.device, **gpu_settings(args),
                         **_overrides(args, ["student", "iters", "batch", "lr", "seed", "checkpoint_every",
                                             "real_weight"]))
    return _run_training(lambda stop: iter_distill_dbsn(data, args.teacher, axes, clean=clean, clean_axes=clean_axes,
                                                        config=cfg, out_dir=args.output, resume=args.resume,
                                                        overwrite=args.overwrite, should_stop=stop),
                         "distill", args.output)


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze_noise

    print(analyze_noise(_open_image(args.noisy, args.axes, args.series, args.allow_missing_chunks)).report())
    return 0


def _report_run(res: Any, output: str) -> int:
    if res.stopped:
        print(f"atbsn: stopped at step {res.steps}; checkpoint in {res.path}. Run the same command with "
              f"--resume to continue.", file=sys.stderr)
        return 130
    print(f"atbsn: wrote {output} ({res.steps} steps, final loss {res.losses[-1]:.4f})" if res.losses else
          f"atbsn: wrote {output}", file=sys.stderr)
    # the run's own estimate: a distilled student's against the blended teacher on held-out rows, a D-BSN's
    # default output on a sample of the data
    choice = res.model.config.get("context_choice")
    if choice:  # --context auto: what the stack's planes allowed, and why
        print(f"atbsn: stack context {res.model.context}: {choice}", file=sys.stderr)
    quality = res.model.config.get("quality", {})
    if quality.get("line"):
        print(quality["line"])
    if quality.get("advice"):
        print(f"atbsn: WARNING: {quality['advice']}", file=sys.stderr)
    return 0


def cmd_denoise(args: argparse.Namespace) -> int:
    from .events import drain
    from .inference.plan import plan_job
    from .inference.run import default_workers, iter_run, load_for_scheduler, worker_device_for
    from .inference.schedulers import check_scheduler
    from .io.readers import open_image

    check_scheduler(args.scheduler)
    _check_output_first(args.noisy, args.output)
    source = open_image(args.noisy, args.axes, series=args.series, allow_missing_chunks=args.allow_missing_chunks)
    print(f"atbsn: {args.noisy}:{_series_note(args.noisy, args.series)} shape {source.shape}, axes {source.axes}, "
          f"{source.dtype} "
          f"({source.nbytes / 2**30:.2f} GiB, {source.format})", file=sys.stderr)
    model = load_for_scheduler(args.model, args.scheduler, device=args.device, amp=not args.no_amp,
                               compile=args.compile)
    k_b = args.k_b[0] if args.k_b and len(args.k_b) == 1 else args.k_b
    workers = default_workers(args.scheduler, args.workers)
    with StopAtOnce("stopping while the job is planned (nothing written yet); run the same command to start "
                    "again"):
        job = plan_job(source, model, args.output, k_b=k_b, roi=args.roi, chunk=args.chunk, window=args.window,
                       halo=args.halo, batch_size=args.batch_size, dtype=args.dtype, overwrite=args.overwrite,
                       workers=workers, noise_map=args.save_noise_map,
                       worker_device=worker_device_for(args.scheduler, args.device))
    print(f"atbsn: {model.kind} model, output(s) {_outputs_label(job.ks)}, window {job.window} (halo {job.halo}), "
          f"chunk {job.chunk}, "
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
    if job.calibration is not None:
        _report_quality(job.calibration)
    return 0


def _outputs_label(ks: list[Any]) -> str:
    """What a job computes, as the user asked for it: ``k_b=auto``, ``k_b=3``, ``default`` (a student's or a
    D-BSN's own output), ``mu`` (D-BSN's blind-spot estimate)."""
    return ", ".join("default" if k is None else f"k_b={k}" if isinstance(k, int) or k == "auto" else str(k)
                     for k in ks)


def _report_quality(cal: Any) -> None:
    """The estimated gain, on stdout (the one number a script wants); a negative estimate is a warning."""
    print(f"atbsn: {cal.line()} [estimated on {cal.sample}]", file=sys.stderr)
    print(cal.line())
    if cal.worse:
        print("atbsn: warning: the output is estimated to be WORSE than the input; keep the input, or train "
              "longer / with a larger k_a (see 'atbsn analyze').", file=sys.stderr)
    elif cal.gain_db is None:
        print("atbsn: warning: the output's gain over the input could not be estimated: " +
              ("the default output is the input unchanged (the line above names the flag for the plain output)."
               if cal.model_kind == "atbsn" else "it may be worse than the input; check it before use."),
              file=sys.stderr)


def _check_output_first(src: str, dst: str) -> None:
    """Output mistakes are reported before the (slower) input and model loading."""
    from .io.fs import refuse_overlap
    from .io.outputs import output_kind

    output_kind(dst)
    if Path(dst).exists() and Path(src).exists() and Path(dst).resolve() == Path(src).resolve():
        raise WriteError(f"the output {dst} is the input file; choose another output path.")
    if Path(src).exists():  # an output holding the input, or inside it, would replace or pollute it
        refuse_overlap(dst, {"input": src})
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
             f"halo {cfg.get('halo', default_halo(cfg['patch'], cfg['kind']))} px"]
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
    context = int(arch.get("context", 0))
    alone = ("single planes alone too (context dropout)" if arch.get("context_dropout") else
             "stacks only (trained before context dropout)")
    lines.append(f"stack context  {context} neighbouring plane(s) on each side along Z (else T); {alone}" if context
                 else "stack context  none (2-D: plane by plane)")
    norm = cfg["normalization"]
    lines += [f"normalization  {norm['mode']} offset={[round(v, 4) for v in norm['offset']]} "
              f"scale={[round(v, 4) for v in norm['scale']]}",
              f"steps          {cfg.get('steps')}",
              f"written by     napari-atbsn {cfg.get('package_version')} on {cfg.get('created')}"]
    if "state" in cfg:
        lines.append("state          resumable checkpoint")
    quality = cfg.get("quality") or {}
    if quality.get("line"):  # the run's own estimate (a student's report, a D-BSN's final estimate)
        lines.append(f"quality        {quality['line']}")
    if quality.get("advice"):
        lines.append(f"warning        {quality['advice']}")
    print("\n".join(lines))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .exports import export

    sample = None
    if args.sample:
        from .axes import context_axis, to_planes
        from .io.readers import open_image
        from .modelio import read_config

        img = open_image(args.sample, args.sample_axes)
        context = int(read_config(args.model)["arch"].get("context", 0))
        if context:  # a stack-context model's sample is a stack: its middle plane is read with its neighbours
            axis = context_axis(img.axes, img.shape)
            if axis is None or set(img.axes) - set(axis + "CYX"):
                raise ConfigError(f"--sample {args.sample} has axes {img.axes}; the model takes {context} "
                                  f"neighbouring plane(s) on each side, so give a stack of at least {2 * context + 1} "
                                  f"planes (ZYX or ZCYX), e.g. a crop saved as TIFF.")
            sample = to_planes(img.data, img.axes)  # (Z, C, Y, X)
        else:
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

    run_demo(args.output, preset=args.preset, iters=args.iters, distill_iters=args.distill_iters, device=args.device,
             planes=args.planes, size=args.size, overwrite=args.overwrite)
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
