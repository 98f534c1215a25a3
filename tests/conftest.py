"""Shared fixtures: tiny data and a tiny trained model, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # several pytest workers share the cores: each takes its share of threads, and so do the processes its tests
    # start (torch's default, one thread per core in every worker, oversubscribes them)
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(_threads)
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(_threads))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def sample_stack() -> tuple[np.ndarray, np.ndarray]:
    from napari_atbsn.sample_data import make_sample

    return make_sample(planes=4, size=128, seed=3)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory, sample_stack) -> Path:
    """A tiny AT-BSN trained for a few seconds on the sample (model folder path)."""
    from napari_atbsn.config import TrainConfig
    from napari_atbsn.training import train

    out = tmp_path_factory.mktemp("models") / "teacher"
    noisy, _ = sample_stack
    # context=0: the shared teacher is a 2-D model (the default, auto, would take the stack's neighbours: slower,
    # and the tests that use it are about other things; tests/test_context.py trains the context models)
    train(noisy, "ZYX", TrainConfig(preset="tiny", iters=150, patch=32, batch=8, context=0, device="cpu"), out)
    return out


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory: pytest.TempPathFactory, sample_stack, tiny_teacher) -> Path:
    from napari_atbsn.config import DistillConfig
    from napari_atbsn.training import distill

    out = tmp_path_factory.mktemp("models") / "student"
    noisy, _ = sample_stack
    distill(noisy, tiny_teacher, "ZYX", DistillConfig(student="tiny", iters=60, batch=8, device="cpu"), out)
    return out
