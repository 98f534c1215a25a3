"""Packaging: the Qt-free core, the npe2 manifest, the generated sample."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "napari_atbsn"
GUI_PACKAGE = "_widgets"  # the one place Qt/napari/magicgui code may live
FORBIDDEN = {"napari", "qtpy", "magicgui", "superqt", "PyQt5", "PyQt6", "PySide2", "PySide6"}


def _core_files() -> list[Path]:
    return [p for p in PKG.rglob("*.py") if GUI_PACKAGE not in p.relative_to(PKG).parts]


def test_core_source_imports_no_gui_toolkit() -> None:
    offenders = []
    for path in _core_files():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders


def test_importing_every_core_module_loads_no_gui_toolkit() -> None:
    mods = sorted("napari_atbsn." + ".".join(p.relative_to(PKG).with_suffix("").parts).replace(".__init__", "")
                  for p in _core_files())
    mods = [m.removesuffix(".__init__") for m in mods if not m.endswith("__main__")]  # __main__ runs the CLI
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods) +
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\nprint(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_top_level_manifest_is_the_packaged_one() -> None:
    top = ROOT / "napari.yaml"
    assert top.is_symlink() and top.resolve() == (PKG / "napari.yaml").resolve()


def test_manifest_validates_and_sample_command_resolves() -> None:
    npe2 = pytest.importorskip("npe2")
    mf = npe2.PluginManifest.from_file(PKG / "napari.yaml")
    assert mf.name == "napari-atbsn"
    (cmd,) = [c for c in mf.contributions.commands if c.id == "napari-atbsn.sample"]
    module, func = cmd.python_name.split(":")
    layers = getattr(importlib.import_module(module), func)()
    (sample,) = mf.contributions.sample_data
    assert sample.command == cmd.id
    names = [meta["name"] for _, meta, _ in layers]
    assert names == ["atbsn_sample_clean", "atbsn_sample_noisy"]


def test_entry_point_is_discoverable() -> None:
    eps = importlib.metadata.entry_points(group="napari.manifest")
    assert any(ep.value == "napari_atbsn:napari.yaml" for ep in eps)
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManager()
    pm.discover()
    assert "napari-atbsn" in pm._manifests


@pytest.mark.slow
def test_wheel_contains_manifest_and_entry_point(tmp_path: Path) -> None:
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True, env=env)
    (whl,) = tmp_path.glob("napari_atbsn-*.whl")
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        assert "napari_atbsn/napari.yaml" in names
        ep = next(n for n in names if n.endswith("entry_points.txt"))
        text = z.read(ep).decode()
    assert "[napari.manifest]" in text and "napari_atbsn:napari.yaml" in text
    assert "atbsn = napari_atbsn.cli:main" in text


def test_sample_is_correlated_and_deterministic() -> None:
    from napari_atbsn.sample_data import OFFSET, make_sample, neighbour_correlation

    noisy, clean = make_sample(planes=2, size=96, seed=5)
    again, _ = make_sample(planes=2, size=96, seed=5)
    np.testing.assert_array_equal(noisy, again)
    assert noisy.dtype == np.uint16 and clean.shape == noisy.shape and clean.min() >= OFFSET
    assert 0.5 < neighbour_correlation(noisy.astype(float) - clean) < 0.8
