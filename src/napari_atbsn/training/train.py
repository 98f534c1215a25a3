"""Stage 1: self-supervised AT-BSN training, ``L1(ATBSN(x, k_a), x)`` (method.md §1.6)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..analysis import check_plane_noise, plane_noise_correlation
from ..axes import check_context_length
from ..config import AUTO_CONTEXT, TrainConfig, resume_config
from ..events import CheckpointEvent, Preview, PreviewEvent, StepEvent, drain
from ..modelio import arch_dict
from ..models import ATBSN
from ..sampling import drop_context, sample_batch
from .harness import (
    TrainResult,
    checkpoint_config,
    iter_training_run,
    prepare_data,
    preview_runner,
    removes_empty_output,
)
from .loop import LoopSpec, gpu_options


@removes_empty_output
def iter_train(data: Any, axes: str | None = None, config: TrainConfig | None = None,
               out_dir: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
               should_stop: Callable[[], bool] | None = None, preview: Preview | None = None,
               ) -> Generator[StepEvent | CheckpointEvent | PreviewEvent, None, TrainResult]:
    """Train an AT-BSN on noisy ``data`` (any array-like with ``axes``).

    Yields a :class:`StepEvent` per step (and a :class:`CheckpointEvent` per
    checkpoint); returns a :class:`TrainResult`. With ``out_dir`` the model
    folder is written there; ``resume=True`` continues ``out_dir/checkpoint``.
    ``should_stop`` is polled after every step: when it returns True a
    checkpoint is saved and the run returns with ``stopped=True``. With a
    :class:`~napari_atbsn.events.Preview`, a :class:`PreviewEvent` with the
    crop denoised by the current weights follows every ``preview.every`` steps
    (and the last); it does not change the training.
    """
    saved = checkpoint_config(out_dir) if resume else None
    cfg = (resume_config(config or TrainConfig(), saved["train"]) if saved else config or TrainConfig()).resolved()
    source, device, out, norm, record = prepare_data(data, axes, cfg, out_dir, saved, resume=resume,
                                                     overwrite=overwrite)
    # stack context: the neighbouring planes must exist and must not share the plane's noise (a network given
    # shared noise learns to copy it: the blind spot would no longer hide anything)
    choice = (saved or {}).get("context_choice")  # a resumed "auto" run keeps what it chose, and why
    chosen = cfg.context == AUTO_CONTEXT
    if chosen:  # auto takes no context from planes that share noise: measured once, no second check
        measured = plane_noise_correlation(source.data, source.axes)
        cfg, choice = dataclasses.replace(cfg, context=measured.context), measured.reason
    check_context_length(source.axes, source.data.shape, cfg.context, training=True)
    if cfg.context and not resume and not chosen:
        check_plane_noise(source.data, source.axes, cfg.context)
    torch.manual_seed(cfg.seed)
    model = ATBSN(source.channels, cfg.preset, context=cfg.context)
    in_norm = norm.tiled(2 * cfg.context + 1)  # the neighbours' channels take the plane's constants
    c = source.channels

    def batch_fn(step: int) -> np.ndarray:
        x = in_norm.apply(sample_batch(source, step, seed=cfg.seed, batch=cfg.batch, patch=cfg.patch,
                                       context=cfg.context))
        # some samples without their neighbours: the same network learns to denoise a plane alone (2-D mode)
        return drop_context(x, c, model.context_dropout, seed=cfg.seed, step=step)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        # the target is the plane itself (its first C channels); the neighbours are input only
        return F.l1_loss(model(x, cfg.k_a).float(), x[:, :c].float())

    def config_fn(steps: int) -> dict[str, Any]:
        return {"kind": "atbsn", "arch": arch_dict(model), "patch": cfg.patch, "k_a": cfg.k_a, "k_b": cfg.k_b,
                "normalization": norm.to_dict(), "steps": steps, "train": dataclasses.asdict(cfg),
                "data": record, **({"context_choice": choice} if choice else {})}

    spec = LoopSpec("train", model, cfg.iters, cfg.lr, device, cfg.amp, batch_fn, loss_fn,
                    cfg.checkpoint_every, out, config_fn, should_stop,
                    **preview_runner(preview, model, config_fn, device, amp=cfg.amp, channels_last=cfg.channels_last),
                    **gpu_options(cfg, device))
    return (yield from iter_training_run(spec, out, config_fn, resume=resume))


def train(data: Any, axes: str | None = None, config: TrainConfig | None = None,
          out_dir: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
          callback: Callable[[Any], None] | None = None) -> TrainResult:
    """Blocking :func:`iter_train`; ``callback`` receives every event."""
    return drain(iter_train(data, axes, config, out_dir, resume=resume, overwrite=overwrite), callback)
