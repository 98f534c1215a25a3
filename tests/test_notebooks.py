"""The notebooks run top to bottom with their tiny, test-only parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_with_tiny_settings(path: Path, tmp_path: Path, monkeypatch) -> None:
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs", []) == [], f"{path.name}: outputs must be stripped in git"
    code = [("".join(c["source"]), "parameters" in c["metadata"].get("tags", []))
            for c in nb["cells"] if c["cell_type"] == "code"]
    assert any(is_param and "TINY = True" in src for src, is_param in code), "a tagged parameters cell sets TINY"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for src, _ in code:
        exec(compile(src, path.name, "exec"), namespace)  # our own notebook, run like nbmake would
    assert namespace["TINY"] is True
