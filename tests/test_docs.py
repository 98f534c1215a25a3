"""The API reference names only things that exist."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_name_in_the_api_reference_exists() -> None:
    text = (DOCS / "api.md").read_text()
    dotted = set(re.findall(r"`(napari_atbsn(?:\.\w+)+)", text))
    assert len(dotted) >= 8
    for name in dotted:
        module, _, attr = name.rpartition(".")
        try:
            obj = importlib.import_module(name)
        except ImportError:
            obj = getattr(importlib.import_module(module), attr, None)
        assert obj is not None, f"docs/api.md names {name}, which does not exist"
    training = importlib.import_module("napari_atbsn.training")
    section = text.split("## Training")[1].split("## ")[0]
    for fn in re.findall(r"^\| `(\w+)\(", section, flags=re.M):
        assert hasattr(training, fn), f"docs/api.md lists napari_atbsn.training.{fn}, which does not exist"


def test_no_submodule_shadows_a_top_level_function() -> None:
    """``napari_atbsn.denoise`` must stay the function after every submodule has been imported (importing a
    submodule named like a function replaces the package attribute with the module)."""
    import pkgutil
    import types

    import napari_atbsn

    for info in pkgutil.walk_packages(napari_atbsn.__path__, "napari_atbsn."):
        if "._widgets" not in info.name and not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    for name in napari_atbsn.__all__:
        if name != "__version__":
            obj = getattr(napari_atbsn, name)
            assert callable(obj) and not isinstance(obj, types.ModuleType), f"napari_atbsn.{name} is a module"
