"""The optimisation loop shared by training and distillation.

Written once as a generator: every step yields a :class:`StepEvent`, so a
progress bar advances and a stop request is honoured within one step. The
learning-rate schedule is cosine annealing to 0 over the full run, stepped
every iteration (method.md §1.6). Batches depend only on (seed, step), and
the optimizer and scheduler states are checkpointed, so a resumed run
continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..device import (
    autocast,
    compile_errors_named,
    is_oom,
    needs_grad_scaler,
    place_network,
    to_device,
    use_channels_last,
)
from ..errors import ATBSNError, DeviceError, ImageError, ModelFolderError
from ..events import CheckpointEvent, PreviewEvent, QualityEvent, StepEvent
from ..io.fs import fsync_dir
from ..modelio import CONFIG, OPTIMIZER, load_tensors, read_config, save_folder

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_PARTIAL, CHECKPOINT_OLD = "checkpoint.partial", "checkpoint.old"
#: Batches sampled ahead of the step being computed (:class:`BatchPrefetcher`).
PREFETCH_BATCHES = 2


@dataclass
class LoopSpec:
    """What the loop needs to know; the callers build the rest."""

    stage: str
    model: nn.Module
    iters: int
    lr: float
    device: torch.device
    amp: bool
    batch_fn: Callable[[int], np.ndarray]  # step -> (B, C, P, P) normalised batch
    loss_fn: Callable[[torch.Tensor], torch.Tensor | None]  # batch on device -> scalar loss (None: skip batch)
    checkpoint_every: int
    out_dir: Path | None
    config_fn: Callable[[int], dict[str, Any]]  # steps done -> config.json content
    should_stop: Callable[[], bool] | None = None
    preview: Callable[[int], np.ndarray] | None = None  # steps done -> the preview crop denoised now
    preview_every: int = 0
    monitor: Callable[[int], QualityEvent] | None = None  # steps done -> the network's estimated quality now
    monitor_every: int = 0
    channels_last: bool = False  # resolved by device.use_channels_last
    compile: bool = False
    #: batches sampled ahead by a helper thread while the device computes (None: PREFETCH_BATCHES; 0: in the
    #: loop's own thread, for a batch_fn whose calls must happen in step order with the loss, e.g. one that
    #: records the current step)
    prefetch: int | None = None


@dataclass
class LoopResult:
    steps: int
    stopped: bool
    losses: list[float]


def gpu_options(cfg: Any, device: torch.device) -> dict[str, Any]:
    """The LoopSpec fields of a config's GPU-path settings (channels-last resolved for the device)."""
    return {"channels_last": use_channels_last(device, cfg.channels_last), "compile": bool(cfg.compile)}


def make_optimizer(model: nn.Module, lr: float, iters: int) -> tuple[torch.optim.Adam, Any]:
    """Adam(lr, betas 0.9/0.999), cosine annealing to 0 over ``iters`` steps."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iters, eta_min=0.0)
    return opt, sched


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Adam's per-parameter state as flat named tensors (for safetensors)."""
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            out[f"{idx}.{name}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return out


def restore_optimizer(opt: torch.optim.Optimizer, sched: Any, tensors: dict[str, torch.Tensor],
                      state: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_tensors` plus the JSON part (param groups, schedule)."""
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    # The param groups carry the current (annealed) learning rate, which the
    # cosine schedule's recursive update starts from.
    opt.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    sched.load_state_dict(state["scheduler"])


def save_checkpoint(spec: LoopSpec, opt: Any, sched: Any, steps: int) -> Path:
    """Write the checkpoint beside the old one, then swap them by renames.

    The previous checkpoint stays intact until the new one is complete, so a
    crash or a second Ctrl-C while saving never loses the ability to resume.
    """
    assert spec.out_dir is not None
    cfg = spec.config_fn(steps)
    cfg["state"] = {"steps": steps, "scheduler": sched.state_dict(),
                    "param_groups": opt.state_dict()["param_groups"]}
    final, partial, old = (spec.out_dir / n for n in (CHECKPOINT_DIR, CHECKPOINT_PARTIAL, CHECKPOINT_OLD))
    shutil.rmtree(partial, ignore_errors=True)
    save_folder(partial, spec.model, cfg, optimizer_tensors=optimizer_tensors(opt))
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    partial.rename(final)
    fsync_dir(spec.out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final


def recover_checkpoint(out_dir: Path) -> None:
    """Finish a swap that a crash interrupted (only the old checkpoint is left)."""
    final, old = out_dir / CHECKPOINT_DIR, out_dir / CHECKPOINT_OLD
    if not final.exists() and old.exists():
        old.rename(final)
    shutil.rmtree(out_dir / CHECKPOINT_PARTIAL, ignore_errors=True)


def load_checkpoint(spec: LoopSpec, opt: Any, sched: Any) -> int:
    """Restore model, optimizer and schedule from ``out_dir/checkpoint``; return steps done."""
    assert spec.out_dir is not None
    ck = spec.out_dir / CHECKPOINT_DIR
    cfg = read_config(ck)
    state = cfg.get("state")
    if not state:
        raise ModelFolderError(f"{ck} is not a resumable checkpoint (no optimizer state).")
    weights = load_tensors(ck / "model.safetensors")
    try:
        spec.model.load_state_dict(weights)
    except RuntimeError as e:
        raise ModelFolderError(f"the checkpoint in {ck} does not match the requested network ({e}); resume "
                               f"with the same preset and channels, or train into a new folder.") from None
    restore_optimizer(opt, sched, load_tensors(ck / OPTIMIZER), state)
    # A resume with a different --iters anneals from the current rate to 0 at the new end.
    sched.T_max = spec.iters
    return int(state["steps"])


def _step(spec: LoopSpec, opt: Any, sched: Any, scaler: Any, x: torch.Tensor) -> float | None:
    """One optimisation step: the loss value, or None when the caller dropped the batch (no update)."""
    with autocast(spec.device, spec.amp):
        loss = spec.loss_fn(x)
    if loss is None:
        sched.step()
        return None
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    sched.step()
    return float(loss.detach())


def _start_step(spec: LoopSpec, opt: Any, sched: Any, *, resume: bool) -> int:
    """The step to start from: the checkpoint's when resuming (restoring it), else 0."""
    start = load_checkpoint(spec, opt, sched) if resume else 0
    if start > spec.iters:
        raise ATBSNError(f"the checkpoint has {start} steps, more than --iters {spec.iters}; use --iters >= {start}.")
    return start


def _check_batch(batch: np.ndarray, step: int) -> None:
    """Refuse NaN or Inf patches, naming the data: else the loss turns NaN and the message would blame the lr."""
    if not np.isfinite(batch).all():
        raise ImageError(f"the training data contains NaN or Inf pixels (in the patches of step {step + 1}); "
                         f"replace them (e.g. with the local median) and train again (--resume continues "
                         f"from the last checkpoint).")


class BatchPrefetcher:
    """``batch_fn(step)``, checked for NaN and Inf, computed ``ahead`` steps early in one helper thread.

    Why: on a GPU a step of the paper teacher takes 19 ms, and a batch read patch by patch from a TIFF takes
    14 ms of host time (docs/benchmarks.md, "Host side"): done in turn, the device waits for the reads.
    Batches depend only on the step (``sampling.sample_batch``), so one computed early is the same batch; a
    failure (damaged data, NaN pixels) is raised when its step is reached, as before. :meth:`close` waits for
    the batch in flight, so nothing is read after the loop returns.
    """

    def __init__(self, batch_fn: Callable[[int], np.ndarray], start: int, stop: int, ahead: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.batch_fn, self.stop, self.ahead = batch_fn, stop, max(0, int(ahead))
        self.next = start
        self.pending: dict[int, Any] = {}
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="atbsn-batches") if self.ahead else None

    def checked(self, step: int) -> np.ndarray:
        batch = self.batch_fn(step)
        _check_batch(batch, step)
        return batch

    def get(self, step: int) -> np.ndarray:
        if self.pool is None:
            return self.checked(step)
        while self.next < min(step + 1 + self.ahead, self.stop):
            self.pending[self.next] = self.pool.submit(self.checked, self.next)
            self.next += 1
        return self.pending.pop(step).result()

    def close(self) -> None:
        if self.pool is not None:  # batches not started are dropped; the one in flight is waited for
            self.pool.shutdown(wait=True, cancel_futures=True)


def _step_on_device(spec: LoopSpec, opt: Any, sched: Any, scaler: Any, batch: np.ndarray) -> float | None:
    """:func:`_step` on the batch moved to the device; running out of memory becomes a DeviceError that
    names the settings to change."""
    x = to_device(batch, spec.device, channels_last=spec.channels_last)
    try:
        with compile_errors_named():
            return _step(spec, opt, sched, scaler, x)
    except (RuntimeError, MemoryError) as e:
        if not is_oom(e):
            raise
        del x
        if spec.device.type == "cuda":
            torch.cuda.empty_cache()
        # No automatic back-off: a smaller batch or patch changes what the run learns, and a checkpoint
        # continues only with its own settings. Name the settings to change instead.
        kept = (f" The checkpoint in {spec.out_dir} is kept (--resume needs the same settings)."
                if spec.out_dir is not None and (spec.out_dir / CHECKPOINT_DIR / CONFIG).exists()
                else "")
        raise DeviceError(f"{spec.device} ran out of memory during {spec.stage} with batch {batch.shape[0]} "
                          f"of {batch.shape[-1]}x{batch.shape[-1]} patches; start again with a smaller "
                          f"--batch or --patch, a smaller preset, or another --device.{kept}") from None


def _record_loss(spec: LoopSpec, losses: list[float], value: float | None, step: int) -> float:
    """Append a step's loss (refusing a non-finite one); return the value to report for the step."""
    if value is None:  # the caller dropped this batch (D-BSN's blow-up guard): no update at all
        return losses[-1] if losses else 0.0
    if not np.isfinite(value):
        raise ATBSNError(f"the {spec.stage} loss became {value} at step {step + 1}; lower the learning "
                         f"rate (--lr) or check the data for extreme values.")
    losses.append(value)
    return value


def _in_eval(model: nn.Module, fn: Callable[[int], Any], done: int) -> Any:
    """``fn(done)`` with the network in eval mode and no gradient (neither touches random state, so a run that
    previews or estimates its quality ends with the same weights)."""
    model.eval()
    with torch.no_grad():
        out = fn(done)
    model.train()
    return out


def _preview(spec: LoopSpec, model: nn.Module, done: int) -> PreviewEvent:
    """The preview crop denoised by the weights after ``done`` steps."""
    assert spec.preview is not None
    return PreviewEvent(spec.stage, done, _in_eval(model, spec.preview, done))


def _checkpoint_due(spec: LoopSpec, done: int, stop: bool) -> bool:
    """Whether to checkpoint after ``done`` steps: every ``checkpoint_every`` steps and on a stop request,
    never after the last step (the model folder follows)."""
    return spec.out_dir is not None and done < spec.iters and bool(
        stop or (spec.checkpoint_every and done % spec.checkpoint_every == 0))


def iter_optimize(spec: LoopSpec, *, resume: bool,
                  ) -> Generator[StepEvent | CheckpointEvent | PreviewEvent | QualityEvent, None, LoopResult]:
    """Run ``spec``'s optimisation from step 0 (or the checkpoint's step when resuming) to ``spec.iters``,
    or until ``should_stop`` asks; yields the events of every step (and the previews and quality estimates
    asked for)."""
    model = place_network(spec.model, spec.device, channels_last=spec.channels_last, compile=spec.compile).train()
    opt, sched = make_optimizer(model, spec.lr, spec.iters)
    start = _start_step(spec, opt, sched, resume=resume)
    scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(spec.device, spec.amp) else None
    losses: list[float] = []
    t0 = time.perf_counter()
    ahead = PREFETCH_BATCHES if spec.prefetch is None else spec.prefetch
    batches = BatchPrefetcher(spec.batch_fn, start, spec.iters, ahead)
    try:
        return (yield from _steps(spec, model, opt, sched, scaler, batches, start, losses, t0))
    finally:
        batches.close()


def _steps(spec: LoopSpec, model: nn.Module, opt: Any, sched: Any, scaler: Any, batches: BatchPrefetcher, start: int,
           losses: list[float], t0: float,
           ) -> Generator[StepEvent | CheckpointEvent | PreviewEvent | QualityEvent, None, LoopResult]:
    for step in range(start, spec.iters):
        batch = batches.get(step)
        lr = opt.param_groups[0]["lr"]
        value = _record_loss(spec, losses, _step_on_device(spec, opt, sched, scaler, batch), step)
        done = step + 1
        yield StepEvent(spec.stage, done, spec.iters, value, lr, (done - start) / (time.perf_counter() - t0))
        # A stop request on the last step is moot: the run is complete.
        stop = done < spec.iters and spec.should_stop is not None and spec.should_stop()
        if spec.preview is not None and (stop or done == spec.iters or done % spec.preview_every == 0):
            yield _preview(spec, model, done)
        if spec.monitor is not None and (done == spec.iters or done % spec.monitor_every == 0):
            yield _in_eval(model, spec.monitor, done)
        if _checkpoint_due(spec, done, stop):
            path = save_checkpoint(spec, opt, sched, done)
            yield CheckpointEvent(done, str(path))
        if stop:
            return LoopResult(done, True, losses)
    return LoopResult(spec.iters, False, losses)
