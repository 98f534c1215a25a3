"""The package's shape: small modules, no private names across modules, imports that only point down.

The layering itself is an import-linter contract (pyproject.toml, run by scripts/test.sh); these tests check
what import-linter does not: private names and module sizes. Each check is first shown to catch a violation.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "napari_atbsn"
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(path: Path) -> str:
    name = _module_name(path)
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if node.level == 0:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(source: str, package: str) -> list[str]:
    """``from M import _x`` and ``M._x`` where M is another napari_atbsn module: what a module must not use."""
    found: list[str] = []
    modules: set[str] = set()  # local names bound to napari_atbsn modules
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = _absolute(node, package)
            if not mod.startswith("napari_atbsn"):
                continue
            for alias in node.names:
                if _private(alias.name) and not _is_submodule(f"{mod}.{alias.name}"):
                    found.append(f"from {mod} import {alias.name}")
                elif _is_submodule(f"{mod}.{alias.name}"):
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("napari_atbsn.") and alias.asname:
                    modules.add(alias.asname)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                and _private(node.attr):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def _is_submodule(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PKG / rel).with_suffix(".py").is_file() or (PKG / rel / "__init__.py").is_file()


def test_the_private_name_check_catches_both_forms() -> None:
    src = ("from .io.files import _read_pil, read_image\nfrom .io import readers\nx = readers._FileArray\n"
           "from .version import __version__\n")
    assert private_imports(src, "napari_atbsn") == ["from napari_atbsn.io.files import _read_pil",
                                                     "readers._FileArray"]


def test_no_module_uses_another_modules_private_names() -> None:
    offenders = {str(p.relative_to(PKG)): bad for p in sorted(PKG.rglob("*.py"))
                 if (bad := private_imports(p.read_text(), _package_of(p)))}
    assert offenders == {}


def test_no_module_is_over_500_lines() -> None:
    sizes = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py")
             if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert sizes == {}


@pytest.mark.parametrize("snippet, broken", [
    # a leaf module reaching up into the engine breaks the layers contract
    ("from napari_atbsn.inference import run as _run  # noqa\n", True),
    ("", False),
])
def test_the_layers_contract_rejects_an_upward_import(tmp_path: Path, snippet: str, broken: bool) -> None:
    """lint-imports on a copy of the package with one extra import in a leaf module (axes.py)."""
    import shutil

    copy = tmp_path / "src" / "napari_atbsn"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "axes.py").write_text((copy / "axes.py").read_text() + snippet)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    env = {"PYTHONPATH": str(tmp_path / "src"), "PATH": str(lint.parent)}
    out = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert (out.returncode != 0) is broken, out.stdout[-2000:]
    if broken:
        assert "napari_atbsn.axes is not allowed to import napari_atbsn.inference" in out.stdout
