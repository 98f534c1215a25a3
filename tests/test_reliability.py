"""Bad input, crashes and untrusted model files (docs/reliability.md).

Every row of the table in docs/reliability.md is a case here, by its ID: the
command line gives one line naming the problem and the fix, exit code 2 and no
traceback; the Python API raises the specific exception type; and nothing is
left behind that looks like a finished output. The widget rows are in
test_widgets.py.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_atbsn import load_model
from napari_atbsn.cli import main
from napari_atbsn.config import DistillConfig, TrainConfig
from napari_atbsn.errors import (
    ATBSNError,
    AxesError,
    BlindSpotError,
    ConfigError,
    DeviceError,
    ImageError,
    ModelFolderError,
    ReadError,
    WriteError,
)
from napari_atbsn.modelio import CONFIG, OPTIMIZER, WEIGHTS
from napari_atbsn.training import distill, train

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
# --context 0: a 2-D model (stack context is tested apart); --device last (some cases replace it)
TINY = ["--preset", "tiny", "--patch", "32", "--batch", "2", "--iters", "2", "--context", "0", "--device", "cpu"]


# -- the inputs -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory, sample_stack, tiny_teacher, tiny_student) -> dict[str, Path]:
    """Good and bad inputs, made once; the tests work in their own folders and only read these."""
    d = tmp_path_factory.mktemp("inputs")
    noisy = sample_stack[0][:2, :64, :64]
    f = {"teacher": tiny_teacher, "student": tiny_student}
    tifffile.imwrite(d / "ok.tif", noisy)
    f["ok"] = d / "ok.tif"
    (d / "text.tif").write_text("not an image\n")
    f["text"] = d / "text.tif"
    raw = f["ok"].read_bytes()
    (d / "truncated.tif").write_bytes(raw[: len(raw) * 2 // 3])
    f["truncated"] = d / "truncated.tif"
    plane = noisy[0].astype(np.float32)
    arrays = {
        "1d": np.zeros(100, np.float32), "6d": np.zeros((2, 2, 2, 2, 32, 32), np.float32),
        "complex": plane.astype(np.complex64), "bool": plane > plane.mean(),
        "const": np.full((64, 64), 7.0, np.float32), "small": plane[:20, :20], "rgb": np.stack([plane] * 3, -1),
    }
    nan = plane.copy()
    nan[5, 5] = np.nan
    inf = plane.copy()
    inf[40, 40] = np.inf
    arrays.update(nan=nan, inf=inf)
    for name, a in arrays.items():
        np.save(d / f"{name}.npy", a)
        f[name] = d / f"{name}.npy"
    np.save(d / "object.npy", np.array([[None] * 8] * 8, dtype=object), allow_pickle=True)
    f["object"] = d / "object.npy"
    return f


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# -- the command line -------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    args: list[str]  # {name} is a path from ``files``, {tmp} the test's own folder
    message: str  # a regular expression the one line must match
    leaves: set[str] = field(default_factory=set)  # what may remain in {tmp} (hidden resumable work)
    setup: str = ""  # a name of a folder helper below


CLI_CASES = [
    Case("R01", ["train", "{tmp}/missing.tif", "-o", "{tmp}/m"],
         r"missing\.tif: no such file or folder; check the path"),
    Case("R02", ["train", "{text}", "-o", "{tmp}/m"], r"could not be read as a TIFF .*is the file complete\?"),
    Case("R03", ["train", "{truncated}", "-o", "{tmp}/m"], r"is truncated.*copy it again"),
    Case("R04", ["train", "{1d}", "-o", "{tmp}/m"], r"is 1-D; an image needs at least 2 dimensions"),
    Case("R05", ["train", "{6d}", "-o", "{tmp}/m"], r"the data is 6-D; at most 5 dimensions .* Split it"),
    Case("R06", ["train", "{ok}", "-o", "{tmp}/m", "--axes", "YX"],
         r"axes 'YX' has 2 letters but the data has 3 dimensions; give one letter per dimension"),
    Case("R07", ["train", "{ok}", "-o", "{tmp}/m", "--axes", "YYX"], r"axes 'YYX' repeats Y; name each dimension once"),
    Case("R08", ["train", "{complex}", "-o", "{tmp}/m"], r"dtype complex64; convert it to an integer or float type"),
    Case("R09", ["train", "{bool}", "-o", "{tmp}/m"], r"dtype bool; convert it to an integer or float type"),
    Case("R10", ["train", "{object}", "-o", "{tmp}/m"], r"holds Python objects .*save a numeric array"),
    Case("R11", ["train", "{nan}", "-o", "{tmp}/m", *TINY], r"NaN or Inf pixels; replace them"),
    Case("R12", ["denoise", "{inf}", "-m", "{teacher}", "-o", "{tmp}/out.tif"],
         r"NaN or Inf pixels near rows \d+\.\.\d+, columns \d+\.\.\d+; replace them"),
    Case("R13", ["train", "{const}", "-o", "{tmp}/m", *TINY], r"the image is constant .*nothing to denoise"),
    Case("R14", ["train", "{small}", "-o", "{tmp}/m", *TINY],
         r"planes \(20x20\) are smaller than the training patch \(32x32\); use a smaller --patch"),
    Case("R15", ["train", "{ok}", "-o", "{tmp}/m", "--k-a", "4"], r"k_a=4 is even; .* Use 3 or 5"),
    Case("R16", ["train", "{ok}", "-o", "{tmp}/m", "--k-a", "-3"], r"k_a=-3 is negative; use 0"),
    Case("R17", ["train", "{ok}", "-o", "{tmp}/m", *TINY, "--k-a", "41"],
         r"k_a=41 is too large for patch=32: its blind spot would cover the whole patch\. .* --patch 48 or more"),
    Case("R18", ["denoise", "{ok}", "-m", "{teacher}", "-o", "{tmp}/o.tif", "--k-b", "71"],
         r"k_b=71 is too large for 32-pixel windows: .* Use k_b <= 61"),
    Case("R19", ["distill", "{ok}", "--teacher", "{teacher}", "-o", "{tmp}/s", "--ks", ""],
         r"blind-spot sizes \(--ks\) is empty"),
    Case("R20", ["distill", "{ok}", "--teacher", "{teacher}", "-o", "{tmp}/s", "--ks", "1,1,3"],
         r"--ks lists \[1\] more than once"),
    Case("R21", ["train", "{ok}", "-o", "{tmp}/m", "--iters", "0"], r"iters=0 must be a positive integer"),
    Case("R22", ["train", "{ok}", "-o", "{tmp}/m", "--batch", "-1"], r"batch=-1 must be a positive integer"),
    Case("R23", ["train", "{ok}", "-o", "{tmp}/m", "--patch", "0"], r"patch=0 must be a positive integer"),
    Case("R24", ["train", "{ok}", "-o", "{tmp}/m", "--preset", "tiny", "--patch", "33"],
         r"patch=33 must be a multiple of \d+ for this preset; try \d+"),
    Case("R25", ["denoise", "{ok}", "-m", "{tmp}/nomodel", "-o", "{tmp}/o.tif"],
         r"model folder .*nomodel does not exist; check the path"),
    Case("R26", ["denoise", "{ok}", "-m", "{ok}", "-o", "{tmp}/o.tif"], r"is a file, not a model folder"),
    Case("R27", ["denoise", "{ok}", "-m", "{tmp}/model", "-o", "{tmp}/o.tif"],
         r"not a valid safetensors file .*truncated", setup="truncated_weights", leaves={"model"}),
    Case("R28", ["denoise", "{ok}", "-m", "{tmp}/model", "-o", "{tmp}/o.tif"],
         r"unknown key\(s\) favourite_colour; it was written by another program", setup="unknown_key",
         leaves={"model"}),
    Case("R29", ["denoise", "{rgb}", "-m", "{teacher}", "-o", "{tmp}/o.tif", "--axes", "YXC"],
         r"the image has 3 channel\(s\) .* but the model expects 1; check --axes"),
    Case("R30", ["denoise", "{ok}", "-m", "{tmp}/model", "-o", "{tmp}/o.tif"],
         r"model format version 99, newer than .*; upgrade napari-atbsn", setup="newer_format", leaves={"model"}),
    Case("R70", ["denoise", "{ok}", "-m", "{tmp}/model", "-o", "{tmp}/o.tif"],
         r"format_version='1' must be a whole number such as \d; the file was edited by hand", setup="string_format",
         leaves={"model"}),
    Case("R31", ["denoise", "{ok}", "-m", "{teacher}", "-o", "{ok}"],
         r"ok\.tif is the input file; choose another output path"),
    Case("R32", ["denoise", "{ok}", "-m", "{teacher}", "-o", "{tmp}/exists.tif"],
         r"exists\.tif already exists; choose another name or pass --overwrite", setup="existing_output",
         leaves={"exists.tif"}),
    Case("R33", ["train", "{ok}", "-o", "{tmp}/m", *TINY], r"already holds a model or checkpoint; use --resume",
         setup="existing_model", leaves={"m"}),
    Case("R34", ["denoise", "{ok}", "-m", "{teacher}", "-o", "{tmp}/ro/o.tif"],
         r"output folder .*ro is not writable \(Permission denied\); choose another output path",
         setup="unwritable", leaves={"ro"}),
    Case("R35", ["denoise", "{ok}", "-m", "{teacher}", "-o", "{tmp}/o.tif"],
         r"needs about .* MiB more in .* but only 0\.0 MiB is free; free space", setup="disk_full_before"),
    Case("R36", ["denoise", "{ok}", "-m", "{teacher}", "-o", "{tmp}/o.ome.zarr", "--chunk", "32"],
         r"could not store a chunk in .*No space left on device\. Free space .* run the same command again",
         setup="disk_full_during", leaves={".o.ome.zarr.partial"}),
    Case("R37", ["train", "{ok}", "-o", "{tmp}/m", *TINY], r"could not write the model folder .*No space left",
         setup="disk_full_model"),
    Case("R38", ["train", "{ok}", "-o", "{tmp}/m", *TINY[:-2], "--device", "cuda:7"],
         r"device 'cuda:7' requested but CUDA is not available|cuda:7 does not exist"),
    Case("R39", ["train", "{ok}", "-o", "{tmp}/m", *TINY[:-2], "--device", "cuda"],
         r"device 'cuda' requested but CUDA is not available"),
    Case("R40", ["train", "{ok}", "-o", "{tmp}/m", *TINY[:-2], "--device", "gpu"],
         r"unknown device 'gpu'; use auto, cpu, cuda, cuda:N or mps"),
    Case("R41", ["train", "{ok}", "-o", "{tmp}/m", "--resume"], r"nothing to resume: .* start without --resume"),
    Case("R42", ["denoise", "{ok}", "-m", "{student}", "-o", "{tmp}/o.tif", "--k-b", "3"],
         r"a distilled student has no blind spot\. Leave k_b unset"),
    Case("R43", ["denoise", "{ok}", "-m", "{tmp}/model", "-o", "{tmp}/o.tif"],
         r"holds model\.safetensors \(a pickle under a safetensors name\): pickle files, which can run code",
         setup="pickle_weights", leaves={"model"}),
    Case("R44", ["denoise", "{ok}", "-m", "{tmp}/model", "-o", "{tmp}/o.tif"],
         r"holds model\.pt: pickle files, which can run code .* never loads pickles", setup="pickle_beside",
         leaves={"model"}),
    Case("R45", ["train", "{ok}", "-o", "{tmp}/m", *TINY, "--resume"],
         r"optimizer\.safetensors \(a pickle under a safetensors name\)", setup="pickle_checkpoint", leaves={"m"}),
    Case("R46", ["train", "{ok}", "-o", "{tmp}/m", *TINY], r"ran out of memory during train with batch 2 of "
         r"32x32 patches; start again with a smaller --batch or --patch", setup="oom_training"),
    Case("R47", ["denoise", "{ok}", "-m", "{teacher}", "-o", "{tmp}/o.tif", "--batch-size", "1"],
         r"ran out of memory with one \d+-pixel window per call .* smaller --window", setup="oom_denoise"),
    Case("R48", ["denoise", "{ok}", "-m", "{teacher}", "-o", "{tmp}/o.tif", "--roi", "Y=0:500"],
         r"crop Y=0:500 is empty or outside the image; Y has 64 pixels, so give start < stop within 0:64"),
    Case("R49", ["train", "{ok}", "-o", "{tmp}/m", "--method", "dbsn", "--phases", "0.5,0.6"],
         r"phases=\(0\.5, 0\.6\) must be three non-negative fractions summing to 1 .* e\.g\. 0\.4,0\.4,0\.2"),
    Case("R50", ["train", "{ok}", "-o", "{tmp}/m", *TINY, "--lr", "-1"], r"lr=-1\.0 must be a positive number"),
    # issue 20: outputs that would destroy an input, damaged models and inputs that used to pass silently
    Case("R51", ["demo", "-o", "{tmp}/d", "--preset", "tiny", "--device", "cpu"],
         r"the demo folder .*d is not empty; pass --overwrite to replace the demo's files in it, or choose",
         setup="demo_folder", leaves={"d"}),
    Case("R52", ["demo", "-o", "{tmp}/f.txt", "--preset", "tiny"], r"f\.txt is a file, not a folder; give a folder",
         setup="demo_file", leaves={"f.txt"}),
    Case("R53", ["demo", "-o", "{tmp}/ro", "--preset", "tiny"],
         r"output folder .*ro is not writable \(Permission denied\); choose another output path",
         setup="unwritable", leaves={"ro"}),
    Case("R54", ["distill", "{ok}", "--teacher", "{tmp}/model", "-o", "{tmp}/model", "--overwrite", "--iters", "1"],
         r"the output .*model is the teacher; writing it would damage the teacher\. Choose an output path outside",
         setup="teacher_copy", leaves={"model"}),
    Case("R55", ["denoise", "{tmp}/res.ome.zarr/0", "-m", "{teacher}", "-o", "{tmp}/res.ome.zarr", "--overwrite"],
         r"the output .*res\.ome\.zarr contains the input .*res\.ome\.zarr/0; writing it would damage the input",
         setup="zarr_group", leaves={"res.ome.zarr"}),
    Case("R56", ["denoise", "{tmp}/in.zarr", "-m", "{teacher}", "-o", "{tmp}/o.tif"],
         r"1 of 8 chunks of .*in\.zarr are missing .* --allow-missing-chunks", setup="zarr_missing",
         leaves={"in.zarr"}),
    Case("R57", ["denoise", "{ok}", "-m", "{tmp}/model", "-o", "{tmp}/o.tif"],
         r"model\.safetensors holds non-finite weights \(NaN or Inf, in .*\); the model is damaged",
         setup="nan_weights", leaves={"model"}),
    Case("R58", ["denoise", "{ok}", "-m", "{tmp}/model", "-o", "{tmp}/o.tif"],
         r"model\.safetensors holds .* weights of dtype int32 .*; weights must be floating point",
         setup="int_weights", leaves={"model"}),
    Case("R59", ["denoise", "{ok}", "-m", "{tmp}/model", "-o", "{tmp}/o.tif"],
         r"the model produced NaN or Inf values in plane 0, rows \d+\.\.\d+, columns \d+\.\.\d+", setup="huge_weights",
         leaves={"model"}),
    Case("R60", ["train", "{tmp}/fifo.tif", "-o", "{tmp}/m"], r"fifo\.tif is not a regular file \(a FIFO",
         setup="fifo_input", leaves={"fifo.tif"}),
    Case("R61", ["denoise", "{ok}", "-m", "{tmp}/model", "-o", "{tmp}/o.tif"],
         r"config\.json is not a regular file \(a FIFO", setup="fifo_config", leaves={"model"}),
    Case("R62", ["denoise", "{ok}", "-m", "{tmp}/model", "-o", "{tmp}/o.tif"],
         r"config\.json is not a regular file \(a device", setup="devzero_config", leaves={"model"}),
    Case("R63", ["denoise", "{ok}", "-m", "{tmp}/model", "-o", "{tmp}/o.tif"],
         r"config\.json is larger than 1 MiB", setup="huge_config", leaves={"model"}),
    Case("R65", ["denoise", "{tmp}/lzw.tif", "-m", "{teacher}", "-o", "{tmp}/o.tif"],
         r"lzw\.tif is compressed with LZW, which needs the imagecodecs package .*pip install imagecodecs",
         setup="lzw_without_codecs", leaves={"lzw.tif"}),
    Case("R66", ["denoise", "{ok}", "-m", "{teacher}", "-o", "{tmp}/o.tif", "--scheduler", "processes",
                 "--workers", "-1"], r"workers=-1 must be a positive integer"),
    Case("R67", ["denoise", "{ok}", "-m", "{teacher}", "-o", "{tmp}/o.tif", "--scheduler", "tcp://127.0.0.1:1"],
         r"scheduler=tcp://\.\.\. needs dask\.distributed; pip install", setup="no_distributed"),
    Case("R68", ["train", "{ok}", "-o", "{tmp}/m", *TINY, "--seed", "-5"], r"seed=-5 must be a whole number from 0"),
    Case("R64", ["denoise", "{tmp}/two.tif", "-m", "{teacher}", "-o", "{tmp}/o.tif", "--series", "2"],
         r"two\.tif has 2 image series; use series 0 to 1", setup="two_series", leaves={"two.tif"}),
]

MARKER = "unpickled-and-ran.txt"


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return builtins.open, (self.path, "w")


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in (WEIGHTS, CONFIG):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _edit_weights(tmp: Path, files: dict[str, Path], edit) -> None:
    from safetensors.torch import load_file, save_file

    model = _copy_model(files["teacher"], tmp / "model")
    state = load_file(str(model / WEIGHTS))
    save_file(edit(state), str(model / WEIGHTS))


def _with_nan(state: dict) -> dict:
    first = next(iter(state))
    state[first] = state[first].clone()
    state[first].view(-1)[0] = float("nan")
    return state


def _zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...]) -> None:
    import zarr

    z = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    z[:] = data


def _round2_setups() -> dict:
    def demo_folder(tmp: Path, files, *_) -> None:
        (tmp / "d").mkdir()
        (tmp / "d" / "precious.txt").write_text("precious")

    def demo_file(tmp: Path, files, *_) -> None:
        (tmp / "f.txt").write_text("precious")

    def zarr_group(tmp: Path, files, *_) -> None:
        import zarr

        g = zarr.open_group(str(tmp / "res.ome.zarr"), mode="w")
        g.create_array("0", data=np.load(files["rgb"])[None, ..., 0].repeat(2, 0))

    def zarr_missing(tmp: Path, files, *_) -> None:
        _zarr(tmp / "in.zarr", np.load(files["rgb"])[None, ..., 0].repeat(2, 0), (1, 32, 32))
        chunk = sorted(p for p in (tmp / "in.zarr").rglob("*") if p.is_file() and "zarr.json" not in p.name)[0]
        chunk.unlink()

    def fifo_config(tmp: Path, files, *_) -> None:
        _copy_model(files["teacher"], tmp / "model")
        (tmp / "model" / CONFIG).unlink()
        os.mkfifo(tmp / "model" / CONFIG)

    def devzero_config(tmp: Path, files, *_) -> None:
        _copy_model(files["teacher"], tmp / "model")
        (tmp / "model" / CONFIG).unlink()
        (tmp / "model" / CONFIG).symlink_to("/dev/zero")

    def huge_config(tmp: Path, files, *_) -> None:
        _copy_model(files["teacher"], tmp / "model")
        cfg = json.loads((tmp / "model" / CONFIG).read_text())
        (tmp / "model" / CONFIG).write_text(json.dumps(cfg) + " " * (2 << 20))

    def two_series(tmp: Path, files, *_) -> None:
        noisy = tifffile.imread(files["ok"])
        with tifffile.TiffWriter(tmp / "two.tif") as w:
            w.write(noisy, metadata={"axes": "ZYX"})
            w.write(noisy[:, ::-1].copy(), metadata={"axes": "ZYX"})

    def lzw_without_codecs(tmp: Path, files, mp) -> None:
        tifffile.imwrite(tmp / "lzw.tif", tifffile.imread(files["ok"]), compression="lzw")
        codecs = type(tifffile.TIFF.DECOMPRESSORS)
        real = codecs.__getitem__

        def getitem(self, key):
            if key == 5:  # what tifffile says without imagecodecs
                raise KeyError(f"{key!r} requires the 'imagecodecs' package")
            return real(self, key)

        mp.setattr(codecs, "__getitem__", getitem)

    def no_distributed(tmp: Path, files, mp) -> None:
        mp.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError

    return {"lzw_without_codecs": lzw_without_codecs, "no_distributed": no_distributed,
            "demo_folder": demo_folder, "demo_file": demo_file, "zarr_group": zarr_group,
            "zarr_missing": zarr_missing, "fifo_config": fifo_config, "devzero_config": devzero_config,
            "huge_config": huge_config, "two_series": two_series,
            "teacher_copy": lambda tmp, files, *_: _copy_model(files["teacher"], tmp / "model"),
            "nan_weights": lambda tmp, files, *_: _edit_weights(tmp, files, _with_nan),
            "int_weights": lambda tmp, files, *_: _edit_weights(tmp, files, lambda st: {k: v.to(torch.int32)
                                                                                for k, v in st.items()}),
            "huge_weights": lambda tmp, files, *_: _edit_weights(tmp, files, lambda st: {k: v * 1e30
                                                                                 for k, v in st.items()}),
            "fifo_input": lambda tmp, files, *_: os.mkfifo(tmp / "fifo.tif")}


ROUND2_SETUPS = _round2_setups()


def _setup(name: str, tmp: Path, files: dict[str, Path], monkeypatch) -> None:
    model = tmp / "model"
    if name == "truncated_weights":
        _copy_model(files["teacher"], model)
        w = (model / WEIGHTS).read_bytes()
        (model / WEIGHTS).write_bytes(w[: len(w) // 2])
    elif name in ("unknown_key", "newer_format", "string_format"):
        _copy_model(files["teacher"], model)
        cfg = json.loads((model / CONFIG).read_text())
        cfg.update({"unknown_key": {"favourite_colour": "blue"}, "newer_format": {"format_version": 99},
                    "string_format": {"format_version": "1"}}[name])
        (model / CONFIG).write_text(json.dumps(cfg))
    elif name == "existing_output":
        (tmp / "exists.tif").write_bytes(b"precious")
    elif name == "existing_model":
        _copy_model(files["teacher"], tmp / "m")
    elif name == "unwritable":
        # Root may write anywhere, so the refusal the OS gives a user is simulated for this one folder.
        import tempfile

        (tmp / "ro").mkdir()
        real = tempfile.mkstemp

        def mkstemp(*a, **k):
            if Path(k.get("dir", "")).resolve() == (tmp / "ro").resolve():
                raise PermissionError(errno.EACCES, "Permission denied")
            return real(*a, **k)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    elif name == "disk_full_before":
        import shutil

        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    elif name == "disk_full_during":
        import zarr

        calls = {"n": 0}
        real = zarr.Array.__setitem__

        def setitem(self, key, value):
            calls["n"] += 1
            if calls["n"] > 1:  # the first chunk lands, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, key, value)

        monkeypatch.setattr(zarr.Array, "__setitem__", setitem)
    elif name == "disk_full_model":
        import napari_atbsn.modelio as mio

        def full(path, payload):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(mio, "atomic_write_bytes", full)
    elif name == "pickle_weights":
        _copy_model(files["teacher"], model)
        (model / WEIGHTS).write_bytes(pickle.dumps({"w": _Payload(tmp / MARKER)}))
    elif name == "pickle_beside":
        _copy_model(files["teacher"], model)
        torch.save({"w": _Payload(tmp / MARKER)}, model / "model.pt")
    elif name == "pickle_checkpoint":
        ck = tmp / "m" / "checkpoint"
        ck.parent.mkdir()
        _copy_model(files["teacher"], ck)
        torch.save({"w": _Payload(tmp / MARKER)}, ck / OPTIMIZER)
    elif name == "oom_training":
        import napari_atbsn.training.loop as loop

        def oom(*a, **k):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        monkeypatch.setattr(loop, "_step", oom)
    elif name == "oom_denoise":
        from napari_atbsn.inference.denoiser import Denoiser

        def oom(self, x, ks):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        monkeypatch.setattr(Denoiser, "run_windows", oom)


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli(case: Case, files, tmp_path: Path, capsys, monkeypatch) -> None:
    if case.setup in ROUND2_SETUPS:
        ROUND2_SETUPS[case.setup](tmp_path, files, monkeypatch)
    elif case.setup:
        _setup(case.setup, tmp_path, files, monkeypatch)
    before = _listing(tmp_path)
    args = [a.format(tmp=tmp_path, **files) for a in case.args]
    code = main(args)
    out = capsys.readouterr()
    text = (out.out + out.err).strip()
    last = text.splitlines()[-1] if text else ""
    assert code == 2, text
    assert "Traceback" not in text
    assert re.match(r"atbsn( \w+)?: error: ", last) and re.search(case.message, last), last
    # nothing new that looks finished: only what the case allows (hidden resumable work)
    new = {p.split(os.sep)[0] for p in _listing(tmp_path) - before}
    assert new <= case.leaves, new
    assert not (tmp_path / MARKER).exists(), "a pickle was loaded: its code ran"
    for name in ("m", "s"):
        assert not (tmp_path / name / CONFIG).exists() or case.setup == "existing_model"
    if case.setup == "existing_output":
        assert (tmp_path / "exists.tif").read_bytes() == b"precious"
    for p in tmp_path.rglob("precious.txt"):  # what a refused run found must be untouched
        assert p.read_text() == "precious"
    if case.setup in ("teacher_copy", "zarr_group"):
        assert (tmp_path / "model" / CONFIG).exists() or (tmp_path / "res.ome.zarr" / "0").is_dir()


def test_documented_cases_match_the_tests() -> None:
    """docs/reliability.md lists exactly the cases tested here and in test_widgets.py."""
    rows = re.findall(r"^\| (R\d\d|W\d\d|A\d\d) \|", DOC.read_text(), flags=re.M)
    widgets = re.findall(r'"(W\d\d)"', (Path(__file__).parent / "test_widgets.py").read_text())
    assert len(rows) == len(set(rows)) >= 30
    assert set(rows) == {c.id for c in CLI_CASES} | set(API_IDS) | set(widgets) | set(ROUND2_TESTS)


# -- the Python API -------------------------------------------------------------------------------
# rows of the second round tested by their own functions (named in the tests' docstrings and comments; R77 and
# R78, the TIFF metadata and the units of pixel sizes, in test_pipeline.py)
ROUND2_TESTS = ["R69", "R71", "R72", "R73", "R74", "R75", "R76", "R77", "R78"]
API_IDS = ["A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A09", "A10", "A11", "A12", "A13", "A14",
           "A15", "A16", "A17", "A18", "A19", "A20", "A21", "A22", "A23"]


def test_api_errors_are_specific_exception_types(files, tmp_path: Path) -> None:
    """A01-A04: each error is an ATBSNError subclass that also is the builtin a caller expects."""
    import napari_atbsn as nb

    with pytest.raises(ReadError, match="no such file") as e:  # A01
        nb.open_image(tmp_path / "missing.tif")
    assert isinstance(e.value, OSError)
    with pytest.raises(AxesError, match="repeats") as e:  # A02
        nb.open_image(files["ok"], "YYX")
    assert isinstance(e.value, ValueError)
    with pytest.raises(BlindSpotError, match="even"):  # A03
        TrainConfig(k_a=4).resolved()
    with pytest.raises(ImageError, match="NaN"):  # A04
        load_model(files["teacher"]).denoise(np.load(files["inf"]), "YX")
    plane = tifffile.imread(files["ok"]).astype(np.float32)
    stack = np.stack([plane.reshape(-1, *plane.shape[-2:])[0]] * 3)
    stack[2, 5, 7] = np.nan  # R69: the message names the plane too
    with pytest.raises(ImageError, match=r"NaN or Inf pixels in plane Z=2 near rows 0\.\.\d+, columns 0\.\.\d+"):
        load_model(files["teacher"]).denoise(stack, "ZYX", k_b=3)
    for exc in (ConfigError, ImageError, ModelFolderError, ReadError, WriteError, DeviceError):
        assert issubclass(exc, ATBSNError)


def test_api_nan_in_unsampled_pixels_stops_training_with_the_data_named(tmp_path: Path) -> None:
    """A05: NaN that the normalisation sample missed is caught in the first batch that holds it, not as a
    NaN loss blamed on the learning rate; the folder made for the run is removed again."""
    data = np.random.default_rng(0).normal(100, 10, size=(1, 64, 64)).astype(np.float32)
    data[0, 1:63, 1:63] = np.nan  # nearly every patch holds one
    import napari_atbsn.training.harness as tr

    real = tr.fit_normalization
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tr, "fit_normalization", lambda s, mode: real(np.nan_to_num(s, nan=100.0), mode))
        with pytest.raises(ImageError, match=r"training data contains NaN or Inf pixels \(in the patches of step 1"):
            train(data, "ZYX", TrainConfig(preset="tiny", iters=3, patch=32, batch=2, device="cpu"), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_api_pickles_never_run(files, tmp_path: Path) -> None:
    """A06: the payload does run when unpickled (so the test could fail), and no loader unpickles it."""
    proof = tmp_path / "proof.txt"
    pickle.loads(pickle.dumps(_Payload(proof))).close()
    assert proof.exists()
    marker = tmp_path / MARKER
    for where in (WEIGHTS, "model.pth", "checkpoint.ckpt"):
        m = tmp_path / f"m_{where}"
        _copy_model(files["teacher"], m)
        torch.save({"w": _Payload(marker)}, m / where)
        for load in (load_model, lambda p: distill(np.load(files["rgb"])[..., 0], p, "YX",
                                                   DistillConfig(student="tiny", iters=1, device="cpu"),
                                                   tmp_path / "s")):
            with pytest.raises(ModelFolderError, match="pickle"):
                load(m)
    assert not marker.exists()
    assert not (tmp_path / "s").exists()


def test_api_object_npy_is_never_unpickled(tmp_path: Path) -> None:
    """A07: an .npy holding pickled objects is refused by its header; the pickle inside never runs."""
    import napari_atbsn as nb

    marker = tmp_path / MARKER
    np.save(tmp_path / "evil.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ImageError, match="Python objects"):
        nb.open_image(tmp_path / "evil.npy")
    assert not marker.exists()


def test_api_model_save_is_atomic_when_the_disk_fills(tmp_path: Path, monkeypatch) -> None:
    """A08: a full disk while a model folder is replaced leaves the old model loadable or none, never a
    config.json beside half-written weights."""
    import napari_atbsn.io.fs as fs

    data = np.random.default_rng(1).normal(100, 10, size=(1, 48, 48)).astype(np.float32)
    cfg = TrainConfig(preset="tiny", iters=2, patch=32, batch=2, device="cpu")
    train(data, "ZYX", cfg, tmp_path / "m")
    real = fs.os.fsync
    calls = {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fs.os, "fsync", fsync)
    with pytest.raises(ModelFolderError, match="No space left on device; check free space"):
        train(data, "ZYX", cfg, tmp_path / "m", overwrite=True)
    monkeypatch.setattr(fs.os, "fsync", real)
    assert calls["n"] >= 1
    assert not (tmp_path / "m" / CONFIG).exists()  # incomplete: no config, so never loaded as a model
    assert [p.name for p in (tmp_path / "m").iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(ModelFolderError, match=r"has no config\.json"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("layout", [{}, {"compression": "zlib"}, {"tile": (32, 32)}, {"imagej": True},
                                    {"bigtiff": True}, {"metadata": None}])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_api_truncated_tiffs_of_every_layout_are_refused(tmp_path: Path, layout, keep: float) -> None:
    """A09: cut copies of stacks (plain, compressed, tiled, ImageJ, BigTIFF, no metadata) are refused when
    opened, never read as fewer planes or zeros; the complete file opens."""
    import napari_atbsn as nb

    data = (np.random.default_rng(0).random((12, 64, 64)) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "full.tif", data, **layout)
    assert nb.open_image(tmp_path / "full.tif").shape == data.shape
    raw = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(ReadError, match=r"cut\.tif is truncated.*copy it again"):
        nb.open_image(tmp_path / "cut.tif")


def test_api_safetensors_are_never_mistaken_for_pickles(tmp_path: Path) -> None:
    """A10: a safetensors header length can begin with byte 0x80, the pickle opcode; such files still load."""
    from safetensors.torch import save_file

    from napari_atbsn.modelio import is_pickle

    hits = 0
    for n in range(1, 300):
        save_file({"w" * n: torch.zeros(1)}, tmp_path / "t.safetensors")
        hits += (tmp_path / "t.safetensors").read_bytes()[:1] == b"\x80"
        assert not is_pickle(tmp_path / "t.safetensors")
    assert hits > 0  # the confusable case did occur
    (tmp_path / "p.pkl").write_bytes(pickle.dumps({"a": 1}))
    torch.save({"a": 1}, tmp_path / "p.pt")
    assert is_pickle(tmp_path / "p.pkl") and is_pickle(tmp_path / "p.pt")


# -- issue 20: data loss and silently wrong output ---------------------------------------------------
def _lazy_zarr(path: Path, data: np.ndarray, chunks=(1, 32, 32), **kw):
    import napari_atbsn as nb

    _zarr(path, data, chunks)
    return nb.open_image(path, **kw)


def test_api_training_outputs_that_overlap_an_input_are_refused(files, tmp_path: Path) -> None:
    """A11: a training or distillation output that is, holds or lies inside an input (the teacher folder, the
    data, the clean images) is refused before anything is touched, also with overwrite."""
    teacher = _copy_model(files["teacher"], tmp_path / "teacher")
    before = _listing(teacher), (teacher / WEIGHTS).read_bytes()
    noisy = np.load(files["rgb"])[..., 0]
    cfg = DistillConfig(student="tiny", iters=1, batch=2, device="cpu")
    for out, how in ((teacher, "is the teacher"), (teacher / "s", "is inside the teacher"),
                     (tmp_path, "contains the teacher")):
        with pytest.raises(WriteError, match=how):
            distill(noisy, teacher, "YX", cfg, out, overwrite=True)
    assert (_listing(teacher), (teacher / WEIGHTS).read_bytes()) == before
    lazy = _lazy_zarr(tmp_path / "in.zarr", noisy[None].repeat(2, 0))
    with pytest.raises(WriteError, match=r"in\.zarr is the training data"):
        train(lazy, None, TrainConfig(preset="tiny", iters=1, patch=32, batch=2, device="cpu"), tmp_path / "in.zarr",
              overwrite=True)
    assert not (tmp_path / "in.zarr" / CONFIG).exists()


def test_api_denoise_outputs_that_hold_or_lie_in_the_input_are_refused(files, tmp_path: Path) -> None:
    """A12: plan_job refuses an output that contains the input, lies inside it or reaches it through a
    symlink, also with overwrite; the input is untouched."""
    from napari_atbsn.inference.plan import plan_job

    model = load_model(files["teacher"])
    data = np.load(files["rgb"])[None, ..., 0].repeat(2, 0)
    ROUND2_SETUPS["zarr_group"](tmp_path, files)
    src = tmp_path / "res.ome.zarr" / "0"
    (tmp_path / "alias.ome.zarr").symlink_to(tmp_path / "res.ome.zarr")
    _zarr(tmp_path / "plain.zarr", data, (1, 32, 32))
    for source, out, how in ((src, tmp_path / "res.ome.zarr", "contains the input"),
                             (src, tmp_path / "alias.ome.zarr", "contains the input"),
                             (tmp_path / "plain.zarr", tmp_path / "plain.zarr" / "o.tif", "is inside the input")):
        with pytest.raises(WriteError, match=how):
            plan_job(source, model, out, overwrite=True)
    import zarr

    np.testing.assert_array_equal(zarr.open_array(str(src), mode="r")[:], data)


def _stop_after(units: int, then=None):
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        if calls["n"] == units + 1 and then is not None:
            then()
            return False
        return then is None and calls["n"] > units

    return stop


def test_api_a_zarr_input_changed_between_runs_is_not_resumed(files, tmp_path: Path) -> None:
    """A13: a Zarr input that changed after an interrupted run refuses the resume (its chunks' sizes and
    times are part of the job), instead of mixing chunks of the old and the new data."""
    import zarr

    from napari_atbsn.inference.run import denoise

    data = np.load(files["rgb"])[None, ..., 0].repeat(2, 0)
    _zarr(tmp_path / "in.zarr", data, (1, 32, 32))
    out = tmp_path / "o.ome.zarr"
    res = denoise(tmp_path / "in.zarr", files["teacher"], out, chunk=32, should_stop=_stop_after(2), device="cpu")
    assert not res.complete
    time.sleep(0.01)
    zarr.open_array(str(tmp_path / "in.zarr"), mode="r+")[0, :32, :32] = data[0, :32, :32] + 500
    with pytest.raises(WriteError, match=r"partial output of a different job \(its input(, quality)? differ"):
        denoise(tmp_path / "in.zarr", files["teacher"], out, chunk=32, device="cpu")
    assert not out.exists()


def test_api_a_tiff_rewritten_during_a_run_stops_it(files, tmp_path: Path) -> None:
    """A14: a TIFF rewritten in place while it is denoised stops the run (never a mix of old and new planes),
    and the partial output then resumes only for the input it was started with."""
    from napari_atbsn.inference.run import denoise

    data = np.load(files["rgb"])[None, ..., 0].repeat(4, 0)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, data, photometric="minisblack")

    def rewrite() -> None:
        time.sleep(0.01)
        tifffile.imwrite(src, data[::-1] + 100, photometric="minisblack")

    out = tmp_path / "o.tif"
    with pytest.raises(ReadError, match=r"in\.tif changed while it was being read .* run again"):
        denoise(src, files["teacher"], out, axes="ZYX", chunk=32, should_stop=_stop_after(2, rewrite), device="cpu")
    assert not out.exists()
    assert (tmp_path / ".o.tif.partial").exists()  # the chunks done before the change are kept
    with pytest.raises(WriteError, match=r"its input(, quality)? differ"):
        denoise(src, files["teacher"], out, axes="ZYX", chunk=32, device="cpu")


def test_api_missing_zarr_chunks_are_refused_unless_allowed(files, tmp_path: Path, capsys) -> None:
    """A15: Zarr chunks missing from the input (read as the fill value) stop training and denoising with
    the count; ``allow_missing_chunks=True`` (``--allow-missing-chunks``) accepts them; merely opening (a
    viewer) is not refused."""
    import napari_atbsn as nb

    ROUND2_SETUPS["zarr_missing"](tmp_path, files)
    lazy = nb.open_image(tmp_path / "in.zarr")  # opening for viewing still works
    cfg = TrainConfig(preset="tiny", iters=1, patch=32, batch=2, device="cpu")
    with pytest.raises(ReadError, match=r"1 of 8 chunks of .*in\.zarr are missing"):
        train(lazy, None, cfg, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    with pytest.raises(ReadError, match=r"1 of 8 chunks"):
        nb.denoise(tmp_path / "in.zarr", files["teacher"], tmp_path / "o.tif", device="cpu")
    allowed = nb.open_image(tmp_path / "in.zarr", allow_missing_chunks=True)
    assert train(allowed, None, cfg, tmp_path / "m").path is not None
    code = main(["denoise", str(tmp_path / "in.zarr"), "-m", str(files["teacher"]), "-o", str(tmp_path / "o.tif"),
                 "--allow-missing-chunks"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "o.tif").exists()


def test_api_multi_series_tiff_says_which_series_is_used(files, tmp_path: Path, capsys) -> None:
    """A16: a TIFF with several series: the CLI says which one it uses and --series picks another."""
    ROUND2_SETUPS["two_series"](tmp_path, files)
    two = tmp_path / "two.tif"
    for extra, used in (([], 0), (["--series", "1"], 1)):
        out = tmp_path / f"o{used}.tif"
        assert main(["denoise", str(two), "-m", str(files["teacher"]), "-o", str(out), *extra]) == 0
        err = capsys.readouterr().err
        assert f"series {used} of 2" in err, err
        assert "--series" in err or used == 1
    # the same axes as the series (without them the file reads as separate images, S, each blended on its own)
    tifffile.imwrite(tmp_path / "one.tif", tifffile.imread(two, series=1), metadata={"axes": "ZYX"})
    assert main(["denoise", str(tmp_path / "one.tif"), "-m", str(files["teacher"]), "-o", str(tmp_path / "r.tif")]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o1.tif"), tifffile.imread(tmp_path / "r.tif"))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
def test_api_sigterm_during_training_saves_a_checkpoint(files, tmp_path: Path) -> None:
    """A17: SIGTERM (timeout, SLURM) during training saves a checkpoint like Ctrl-C: exit 130, and --resume
    finishes it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = tmp_path / "m"
    cmd = _train_cmd(files["ok"], out)
    cmd[cmd.index("150")] = "100000"
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not out.exists() and time.monotonic() - t0 < 120 and p.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert (out / "checkpoint" / CONFIG).exists(), err
    assert "--resume" in err


@pytest.mark.parametrize(("edit", "message"), [
    ('"patch": NaN', r"patch=nan must be a whole number of pixels"),
    ('"patch": "32"', r"patch='32' must be a whole number"),
    ('"patch": 32.5', r"patch=32\.5 must be a whole number"),
    ('"patch": 36', r"patch=36 must be a multiple of 8 for a network of depth 3"),
    ('"patch": 4096', r"patch=4096 but the model was trained with train\.patch=32"),
    ('"patch": 65536', r"patch=65536 must be a whole number of pixels from 1 to 8192"),
    ('"preset": "small"', r"arch\.preset='small' but the model was trained with train\.preset='tiny'"),
    ('"patch": 1' + "0" * 5000, r"is not valid JSON .*digits"),
    ('"k_a": -1', r"k_a=-1 must be 0 or a positive odd whole number"),
    ('"k_b": 4', r"k_b=4 must be 0 or a positive odd"),
    ('"k_b": null', r"k_b=None must be 0 or a positive odd whole number or 'auto'"),
    ('"k_a": 1000001', r"k_a=1000001 is a blind spot as wide as the training patch \(32 px\)"),
    ('"k_b": 999', r"config\.json: k_b=999 is a blind spot as wide as the training patch"),
    ('"steps": -3', r"steps=-3 must be a whole number >= 0"),
    ("deep", r"is not valid JSON .*recursion"),
], ids=["nan", "string", "float", "not-multiple", "patch-edited", "patch-huge", "preset-edited",
        "5000-digits", "k_a", "k_b", "k_b-null", "k_a-huge", "k_b-huge",
        "steps", "deep"])
def test_api_hand_edited_config_values_are_refused(files, tmp_path: Path, edit: str, message: str) -> None:
    """A18, A22: config.json values of the wrong type or range, values that contradict the training settings the
    file recorded, a 5000-digit number and 100k-deep nesting give a ModelFolderError naming the value, not a
    traceback or a wrong image."""
    model = _copy_model(files["teacher"], tmp_path / "model")
    text = (model / CONFIG).read_text()
    if edit == "deep":
        text = text.rstrip().rstrip("}") + ', "train": ' + "[" * 100_000 + "]" * 100_000 + "}"
    else:
        key = edit.split(":")[0]
        assert key in text
        text = re.sub(key + r": [^,\n]+", edit, text, count=1)
    (model / CONFIG).write_text(text)
    with pytest.raises(ModelFolderError, match=message):
        load_model(model)
    code = main(["info", str(model)])
    assert code == 2


# -- crash safety: SIGKILL at random moments --------------------------------------------------------
def _train_cmd(src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "napari_atbsn", "train", str(src), "-o", str(out), "--preset", "tiny",
            "--patch", "32", "--batch", "2", "--iters", "150", "--checkpoint-every", "5", "--device", "cpu", *extra]


def _checkpoint_state(out: Path) -> dict[str, int]:
    state = {}
    for name in ("checkpoint", "checkpoint.old"):
        with contextlib.suppress(OSError):  # not there, or being swapped right now
            state[name] = (out / name / CONFIG).stat().st_mtime_ns
    return state


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(files, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(files["ok"], ref), check=True, env=env, capture_output=True, timeout=600)
    out = tmp_path / "killed"
    rng = np.random.default_rng(7)
    kills = 0
    for _ in range(3):
        # resume whatever checkpoint a kill left (checkpoint.old included: a kill mid-swap); else start over
        extra = ["--resume"] if _checkpoint_state(out) else ["--overwrite"]
        p = subprocess.Popen(_train_cmd(files["ok"], out, *extra), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        # wait until this run writes a checkpoint of its own, then kill it at a random moment
        seen, t0 = _checkpoint_state(out), time.monotonic()
        while p.poll() is None and time.monotonic() - t0 < 300:
            now = _checkpoint_state(out)
            if now and now != seen:
                break
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(60)
        assert p.returncode in (0, -signal.SIGKILL), p.stderr.read() if p.stderr else ""
        if p.returncode != 0:
            assert not (out / CONFIG).exists(), "a killed run must not look complete"
    assert kills >= 2, "the runs finished before they could be killed: make them longer"
    extra = ["--resume"] if _checkpoint_state(out) else ["--overwrite"]
    r = subprocess.run(_train_cmd(files["ok"], out, *extra), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    a, b = load_file(str(ref / WEIGHTS)), load_file(str(out / WEIGHTS))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert not (out / "checkpoint").exists() and not list(out.glob("checkpoint.*"))


@pytest.mark.parametrize("kind", ["deflate_tiff", "zarr_chunk"])
def test_a_corrupt_strip_or_chunk_is_a_clear_error_naming_the_block(files, tmp_path: Path, capsys, kind) -> None:
    """R74/R75: a decoder's error (zlib, zstd/blosc) is one line naming the block and the fix, exit 2; the chunks
    finished before it are kept in the work store, never looking complete."""
    import glob

    import zarr

    img = (np.random.default_rng(0).random((3, 96, 96)) * 1000).astype(np.uint16)
    if kind == "deflate_tiff":
        src = tmp_path / "z.tif"
        tifffile.imwrite(src, img, compression="zlib", metadata={"axes": "ZYX"}, photometric="minisblack")
        with tifffile.TiffFile(src) as tf:
            off, n = tf.pages[1].dataoffsets[0], tf.pages[1].databytecounts[0]
        b = bytearray(src.read_bytes())
        b[off + 20:off + n - 10] = bytes((v * 7 + 13) % 256 for v in b[off + 20:off + n - 10])
        src.write_bytes(bytes(b))
    else:
        src = tmp_path / "a.zarr"
        z = zarr.open_array(str(src), mode="w", shape=img.shape, chunks=(1, 96, 96), dtype=img.dtype)
        z[:] = img
        chunk = Path(sorted(p for p in glob.glob(f"{src}/c/**", recursive=True) if Path(p).is_file())[1])
        d = bytearray(chunk.read_bytes())
        d[16:] = bytes((v * 7 + 13) % 256 for v in d[16:])
        chunk.write_bytes(bytes(d))
    out = tmp_path / "o.ome.zarr"
    rc = main(["denoise", str(src), "-m", str(files["teacher"]), "-o", str(out), "--k-b", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and "internal error" not in err
    assert re.search(r"could not be decoded at \[1, 0:96, 0:96\] .*damaged there .*--roi can leave", err), err
    assert "once the input is repaired, run again with --overwrite" in err
    assert not out.exists()


def test_a_huge_compressed_strip_is_refused_before_it_is_decoded(files, tmp_path: Path, capsys, monkeypatch) -> None:
    """R76: one compressed strip decodes whole whatever region is asked for: a single-strip page larger than the
    limit (1 GiB; lowered here to keep the file small) is refused when opened, with the reason and the fix."""
    from napari_atbsn.io import filearrays

    monkeypatch.setattr(filearrays, "MAX_DECODE_UNIT", 1 << 20)
    data = np.zeros((1024, 1024), np.uint16)
    tifffile.imwrite(tmp_path / "strip.tif", data, compression="zlib", rowsperstrip=1024, photometric="minisblack")
    tifffile.imwrite(tmp_path / "tiled.tif", data, compression="zlib", tile=(256, 256), photometric="minisblack")
    rc = main(["denoise", str(tmp_path / "strip.tif"), "-m", str(files["teacher"]), "-o", str(tmp_path / "o.tif"),
               "--roi", "Y=0:64,X=0:64", "--k-b", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(r"compressed blocks of 1024x1024 \(0\.0 GiB each once decoded\), and reading any "
                                 r"pixel decodes a whole block; save it tiled", err), err
    from napari_atbsn.io.readers import open_image

    assert open_image(tmp_path / "tiled.tif").shape == (1024, 1024)  # tiles of 256x256: accepted


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
def test_api_sigterm_while_a_denoise_is_planned_says_so(files, tmp_path: Path, monkeypatch, capsys) -> None:
    """SIGTERM during the planning and calibration of a denoise (before any chunk) used to end with the bare exit
    status 143 and no word; it now says what stopped and exits 130, like a stop once chunks run."""
    import napari_atbsn.inference.plan as plan

    def killed(*_a: object, **_k: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM was not handled")

    monkeypatch.setattr(plan, "plan_job", killed)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "o.tif"
    assert main(["denoise", str(files["ok"]), "-m", str(files["teacher"]), "-o", str(out)]) == 130
    err = capsys.readouterr().err
    assert "SIGTERM: stopping while the job is planned (nothing written yet)" in err, err
    assert not out.exists()
    assert signal.getsignal(signal.SIGTERM) == before
