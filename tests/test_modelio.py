"""Model folders: safetensors + JSON, loaded without ever unpickling."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_atbsn
from napari_atbsn.errors import ModelFolderError
from napari_atbsn.inference.denoiser import load_model
from napari_atbsn.modelio import read_config


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    return dst


def test_round_trip_gives_identical_outputs(tiny_teacher: Path, sample_stack) -> None:
    noisy, _ = sample_stack
    a = napari_atbsn.load_model(tiny_teacher).denoise(noisy[:1], "ZYX")
    b = load_model(tiny_teacher).denoise(noisy[:1], "ZYX")
    np.testing.assert_array_equal(a, b)
    cfg = read_config(tiny_teacher)
    assert cfg["kind"] == "atbsn" and cfg["patch"] == 32 and cfg["k_a"] == 9 and cfg["steps"] == 150
    assert cfg["normalization"]["mode"] == "zscore"
    assert sorted(p.name for p in tiny_teacher.iterdir()) == ["config.json", "model.safetensors"]


def test_window_call_returns_same_range(tiny_teacher: Path, sample_stack) -> None:
    noisy, _ = sample_stack
    m = napari_atbsn.load_model(tiny_teacher)
    win = noisy[:2, None, :32, :32].astype(np.float32)
    out = m(win)
    assert out.shape == win.shape and abs(out.mean() - win.mean()) < 0.2 * win.std() + 5
    t = m(torch.from_numpy(win))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), out, atol=1e-5)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_file_instead_of_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ModelFolderError, match="is a file"):
        load_model(tmp_path / "f")


def test_truncated_weights(tiny_teacher: Path, tmp_path: Path) -> None:
    m = _copy(tiny_teacher, tmp_path)
    w = m / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ModelFolderError, match="truncated"):
        load_model(m)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(learning_rte=1), "learning_rte"),
    (lambda c: c.update(format_version=99), "upgrade"),
    (lambda c: c["arch"].update(width=12), "do not match"),
    (lambda c: c.pop("patch"), "lacks patch"),
    (lambda c: c.update(kind="gan"), "unknown model kind"),
])
def test_edited_config_is_refused(tiny_teacher: Path, tmp_path: Path, edit, message: str) -> None:
    m = _copy(tiny_teacher, tmp_path)
    cfg = json.loads((m / "config.json").read_text())
    edit(cfg)
    (m / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match=message):
        load_model(m)


def test_config_that_is_not_json(tiny_teacher: Path, tmp_path: Path) -> None:
    m = _copy(tiny_teacher, tmp_path)
    (m / "config.json").write_text('{"format": "napari-atbsn", ')
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        load_model(m)


class _Evil:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt", "checkpoint/model.safetensors"])
def test_pickle_in_model_folder_never_runs(tiny_teacher: Path, tmp_path: Path, name: str) -> None:
    m = _copy(tiny_teacher, tmp_path)
    marker = tmp_path / "PWNED"
    target = m / name
    target.parent.mkdir(exist_ok=True)
    if name.startswith("checkpoint"):
        shutil.copy(m / "config.json", target.parent / "config.json")
    target.write_bytes(pickle.dumps(_Evil(str(marker))))
    # refused, even a pickle beside valid weights: the folder did not come from napari-atbsn as it is
    with pytest.raises(ModelFolderError, match="pickle"):
        load_model(target.parent)
    assert not marker.exists(), "loading a model folder must never unpickle"


def test_config_asking_for_a_huge_network_is_refused(tiny_teacher: Path, tmp_path: Path) -> None:
    m = _copy(tiny_teacher, tmp_path)
    cfg = json.loads((m / "config.json").read_text())
    cfg["arch"]["width"] = 10**6
    (m / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match="outside"):
        load_model(m)
