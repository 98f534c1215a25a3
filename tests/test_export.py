"""Exports: TorchScript and ONNX graphs equal load_model()'s callable on raw windows, carry the tiling contract,
and BioImage Model Zoo packages pass bioimageio.core's own validation and test."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_atbsn import load_model
from napari_atbsn.cli import main
from napari_atbsn.config import DBSNConfig
from napari_atbsn.errors import ConfigError, WriteError
from napari_atbsn.exports import export
from napari_atbsn.exports.graph import META_KEY, example_window
from napari_atbsn.training import train_dbsn

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def dbsn_models(tmp_path_factory) -> dict[str, Path]:
    """Briefly trained D-BSNs: per-pixel noise (1 channel) and cross-channel noise (3 channels, matrix fusion)."""
    rng = np.random.default_rng(0)
    out = {}
    for name, shape, axes, noise in (("gray", (2, 48, 48), "ZYX", "poisson-gaussian"),
                                     ("rgb", (2, 48, 48, 3), "ZYXC", "multivariate-gaussian")):
        data = (rng.random(shape) * 100 + 50).astype(np.float32)
        out[name] = tmp_path_factory.mktemp("dbsn") / name
        train_dbsn(data, axes, DBSNConfig(preset="tiny", noise_model=noise, iters=6, patch=32, batch=2,
                                          device="cpu"), out[name])
    return out


def _models(tiny_teacher: Path, tiny_student: Path, dbsn_models: dict[str, Path],
            ) -> dict[str, tuple[Path, int | None]]:
    return {"teacher_kb3": (tiny_teacher, 3), "teacher_kb1": (tiny_teacher, 1), "student": (tiny_student, None),
            "dbsn": (dbsn_models["gray"], None), "dbsn_rgb": (dbsn_models["rgb"], None)}


def _close(got: np.ndarray, ref: np.ndarray) -> None:
    """Within 1e-4 of the data's range (float32 kernels of two runtimes differ in the last bits)."""
    span = float(ref.max() - ref.min()) or 1.0
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * span)


@pytest.mark.parametrize("which", ["teacher_kb3", "teacher_kb1", "student", "dbsn", "dbsn_rgb"])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_graph_equals_load_model_on_raw_windows(fmt, which, tiny_teacher, tiny_student, dbsn_models,
                                                         tmp_path) -> None:
    src, k_b = _models(tiny_teacher, tiny_student, dbsn_models)[which]
    model = load_model(src)
    path = export(src, fmt, tmp_path / f"m.{'pt' if fmt == 'torchscript' else 'onnx'}", k_b=k_b)
    for n, seed in ((1, 1), (3, 2)):  # the batch axis is free
        x = example_window(model, n, seed=seed).numpy()
        ref = model(x, k_b)
        if fmt == "torchscript":
            extra = {f"{META_KEY}.json": ""}
            graph = torch.jit.load(str(path), _extra_files=extra)
            got = graph(torch.from_numpy(x)).numpy()
            meta = json.loads(extra[f"{META_KEY}.json"])
        else:
            import onnx

            got = ort.InferenceSession(str(path)).run(None, {"raw": x})[0]
            meta = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[META_KEY])
        assert got.shape == x.shape
        _close(got, ref)
    # the tiling contract travels with the file
    assert meta["window"] == model.patch and meta["halo"] == model.halo and meta["channels"] == model.in_channels
    assert meta["k_b"] == ((k_b or model.k_b) if model.kind == "atbsn" else None)
    if which == "student":  # the default student carries its never-worse blend with the input, and so does its graph
        blend = model.config["arch"]["blend"]
        assert len(blend) == 1 and 0.0 < blend[0] < 1.0
        x = example_window(model, 1, seed=3).numpy()
        raw = model.normalization.undo(model.network.raw(torch.from_numpy(model.normalization.apply(x))).detach()
                                       .numpy())
        assert np.abs(raw - model(x)).max() > 1e-3  # the blend changes the output: the graph above includes it


def test_teacher_exports_differ_by_their_fixed_k_b(tiny_teacher, tmp_path) -> None:
    """k_b is baked in: two exports of one teacher give that teacher's two k_b outputs, not the same one."""
    model = load_model(tiny_teacher)
    x = example_window(model, 2).numpy()
    outs = {}
    for k in (1, 5):
        g = torch.jit.load(str(export(tiny_teacher, "torchscript", tmp_path / f"k{k}.pt", k_b=k)))
        outs[k] = g(torch.from_numpy(x)).numpy()
        _close(outs[k], model(x, k))
    assert np.abs(outs[1] - outs[5]).max() > 1e-3


@pytest.mark.parametrize("which", ["teacher_kb1", "student", "dbsn"])
def test_bioimageio_package_passes_the_zoos_own_test(which, tiny_teacher, tiny_student, dbsn_models,
                                                     tmp_path) -> None:
    import yaml
    from bioimageio.core import test_model

    src, k_b = _models(tiny_teacher, tiny_student, dbsn_models)[which]
    path = export(src, "bioimageio", tmp_path / "model.zip", k_b=k_b, authors=("A. Microscopist",), validate=False)
    summary = test_model(str(path))
    assert summary.status == "passed", [(d.name, d.status, [e.msg for e in d.errors]) for d in summary.details]
    ran = {d.name for d in summary.details}
    assert any("torchscript" in n for n in ran) and any("onnx" in n for n in ran)  # both weight formats tested
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        readme = z.read("README.md").decode()
        x = np.load(z.open("test_input.npy"))
        y = np.load(z.open("test_output.npy"))
    assert {"rdf.yaml", "weights.torchscript.pt", "weights.onnx", "cover.png", "README.md"} <= names
    model = load_model(src)
    _close(y, model(x, k_b))  # the test output is napari-atbsn's own result
    out_axes = {a["id"]: a for a in rdf["outputs"][0]["axes"] if a.get("type") == "space"}
    assert out_axes["y"]["halo"] == model.halo and rdf["inputs"][0]["axes"][-1]["size"] == model.patch
    assert "scale_linear" in [p["id"] for p in rdf["inputs"][0]["preprocessing"]]
    assert "scale_linear" in [p["id"] for p in rdf["outputs"][0]["postprocessing"]]
    assert rdf["authors"][0]["name"] == "A. Microscopist"
    assert "2303.16783" in readme if model.kind != "dbsn" else "2008.13711" in readme
    assert '"patch"' in readme  # the training settings


def test_spd_inverse_matches_lapack() -> None:
    from napari_atbsn.models.dbsn import spd_inverse

    a = torch.randn(50, 3, 3, dtype=torch.float64)
    m = a @ a.transpose(-1, -2) + 0.1 * torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(spd_inverse(m), torch.linalg.inv(m), rtol=1e-9, atol=1e-9)


def test_export_refusals(tiny_teacher, tiny_student, tmp_path, capsys) -> None:
    with pytest.raises(ConfigError, match="has no blind spot"):
        export(tiny_student, "onnx", tmp_path / "s.onnx", k_b=3)
    with pytest.raises(ConfigError, match="format 'keras' is not supported"):
        export(tiny_teacher, "keras", tmp_path / "t.h5")
    with pytest.raises(WriteError, match="outside the model folder"):
        export(tiny_teacher, "torchscript", tiny_teacher / "model.pt", k_b=3)
    # the teacher's default output (k_b=auto) is chosen from the data: no fixed graph, unless k_b is given
    with pytest.raises(ConfigError, match=r"chosen from the data and blended .*Export the distilled student"):
        export(tiny_teacher, "onnx", tmp_path / "t.onnx")
    assert not (tmp_path / "t.onnx").exists()
    (tmp_path / "exists.pt").write_bytes(b"keep")
    assert main(["export", str(tiny_teacher), "--format", "torchscript", "-o", str(tmp_path / "exists.pt"),
                 "--k-b", "3"]) == 2
    assert "already exists; choose another name or pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "exists.pt").read_bytes() == b"keep"
    assert main(["export", str(tiny_teacher), "--format", "torchscript", "-o", str(tmp_path / "t.pt"),
                 "--k-b", "1"]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "t.pt").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_bioimageio_takes_its_test_tensors_from_the_sample(tiny_student, tmp_path, capsys) -> None:
    import tifffile

    plane = (np.random.default_rng(3).random((80, 90)) * 200 + 20).astype(np.float32)
    tifffile.imwrite(tmp_path / "crop.tif", plane)
    code = main(["export", str(tiny_student), "--format", "bioimageio", "-o", str(tmp_path / "m.zip"),
                 "--sample", str(tmp_path / "crop.tif"), "--sample-axes", "YX", "--no-validate"])
    assert code == 0, capsys.readouterr().err
    p = load_model(tiny_student).patch
    with zipfile.ZipFile(tmp_path / "m.zip") as z:
        x = np.load(z.open("test_input.npy"))
    y0, x0 = (80 - p) // 2, (90 - p) // 2
    np.testing.assert_array_equal(x[0, 0], plane[y0:y0 + p, x0:x0 + p])
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([plane, plane]))
    assert main(["export", str(tiny_student), "--format", "bioimageio", "-o", str(tmp_path / "n.zip"),
                 "--sample", str(tmp_path / "stack.tif"), "--sample-axes", "ZYX", "--no-validate"]) == 2
    assert "give one plane (YX or CYX)" in capsys.readouterr().err


def test_missing_export_packages_are_named() -> None:
    from napari_atbsn.exports.graph import require

    require("onnx", "onnxscript")
    with pytest.raises(ConfigError, match=r"needs no_such_pkg_x, no_such\.sub; pip install \"napari-atbsn\[export\]\""):
        require("onnx", "no_such_pkg_x", "no_such.sub")
