"""The atbsn command line: the whole job, and one clear line per user error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_atbsn.cli import main
from napari_atbsn.io.files import read_image, write_image
from napari_atbsn.io.readers import open_image


@pytest.fixture(scope="module")
def noisy_tif(tmp_path_factory, sample_stack) -> Path:
    return write_image(tmp_path_factory.mktemp("cli") / "noisy.tif", sample_stack[0][:2], "ZYX")


def _run(capsys, *args: str) -> tuple[int, str]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def test_train_info_distill_denoise(tmp_path: Path, noisy_tif: Path, capsys) -> None:
    code, out = _run(capsys, "train", noisy_tif, "-o", tmp_path / "t", "--preset", "tiny", "--iters", "4",
                     "--patch", "32", "--batch", "2", "--device", "cpu")
    assert code == 0, out
    assert "axes ZYX" in out
    code, out = _run(capsys, "info", tmp_path / "t")
    assert code == 0 and "AT-BSN teacher" in out and "k_a=9" in out and "window         32 px" in out
    code, out = _run(capsys, "distill", noisy_tif, "--teacher", tmp_path / "t", "-o", tmp_path / "s",
                     "--student", "tiny", "--iters", "3", "--ks", "0,1,3", "--batch", "2", "--device", "cpu")
    assert code == 0, out
    code, out = _run(capsys, "info", tmp_path / "s")
    assert "Ks=[0, 1, 3]" in out
    for model, extra in (("t", ["--k-b", "5"]), ("s", [])):
        dst = tmp_path / f"den_{model}.tif"
        code, out = _run(capsys, "denoise", noisy_tif, "-m", tmp_path / model, "-o", dst, "--dtype", "input", *extra)
        assert code == 0, out
        data, axes = read_image(dst)
        assert axes == "ZYX" and data.shape == (2, 128, 128) and data.dtype == np.uint16


@pytest.mark.parametrize("args, message", [
    (["train", "{tmp}/missing.tif", "-o", "{tmp}/m"], "no such file"),
    (["train", "{noisy}", "-o", "{tmp}/m", "--k-a", "4"], "even"),
    (["train", "{noisy}", "-o", "{tmp}/m", "--iters", "0"], "iters=0"),
    (["train", "{noisy}", "-o", "{tmp}/m", "--axes", "ZZX"], "repeats"),
    (["train", "{noisy}", "-o", "{tmp}/m", "--device", "cuda:7"], "cuda"),
    (["train", "{noisy}", "-o", "{tmp}/m", "--preset", "tiny", "--patch", "256"], "smaller than the training patch"),
    (["denoise", "{noisy}", "-m", "{tmp}/nomodel", "-o", "{tmp}/o.tif"], "does not exist"),
    (["denoise", "{noisy}", "-m", "{tmp}", "-o", "{noisy}"], "is the input"),
    (["info", "{noisy}"], "is a file"),
    (["denoise", "{noisy}", "-m", "{tmp}/nomodel", "-o", "{tmp}/o.png"], "unsupported output type"),
    (["denoise", "{noisy}", "-m", "{tmp}/nomodel", "-o", "{tmp}/nofolder/o.tif"], "does not exist"),
    (["train", "{noisy}", "-o", "{tmp}/m", "--resume"], "nothing to resume"),
    (["demo", "-o", "{tmp}/d", "--size", "32"], r"--size 32 must be a whole number of at least 64"),
    (["distill", "{noisy}", "--teacher", "{tmp}/nomodel", "-o", "{tmp}/s"], "does not exist"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path: Path, noisy_tif: Path, capsys, args, message) -> None:
    args = [a.format(tmp=tmp_path, noisy=noisy_tif) for a in args]
    code, out = _run(capsys, *args)
    assert code == 2
    assert message in out and "Traceback" not in out
    assert out.strip().startswith("atbsn") and out.strip().count("\n") <= 1
    assert not (tmp_path / "m" / "config.json").exists()


def test_denoise_refuses_existing_output_and_kb_for_student(tmp_path: Path, noisy_tif: Path, tiny_student: Path,
                                                             capsys) -> None:
    dst = tmp_path / "o.tif"
    dst.write_bytes(b"precious")
    code, out = _run(capsys, "denoise", noisy_tif, "-m", tiny_student, "-o", dst)
    assert code == 2 and "--overwrite" in out and dst.read_bytes() == b"precious"
    code, out = _run(capsys, "denoise", noisy_tif, "-m", tiny_student, "-o", tmp_path / "o2.tif", "--k-b", "3")
    assert code == 2 and "no blind spot" in out and not (tmp_path / "o2.tif").exists()


def test_demo_tiny(tmp_path: Path, capsys) -> None:
    code, out = _run(capsys, "demo", "-o", tmp_path / "demo", "--preset", "tiny", "--device", "cpu", "--planes", "4",
                     "--size", "128")
    assert code == 0, out
    for line in ("noisy input", "AT-BSN teacher, default", "student tiny", "gain dB: estimated / true"):
        assert line in out
    names = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {"noisy.tif", "clean.tif", "teacher", "student", "results.json", "denoised_atbsn_auto.tif",
            "denoised_student_tiny.tif"} <= names
    table = json.loads((tmp_path / "demo" / "results.json").read_text())["table"]
    # every output of the demo reports the gain the product estimates without the clean image
    assert table[0]["estimated_gain_db"] is None and all(r["estimated_gain_db"] is not None for r in table[1:])


def test_ctrl_c_saves_a_checkpoint_that_resume_continues(tmp_path: Path, noisy_tif: Path) -> None:
    import signal
    import subprocess
    import sys

    out = tmp_path / "t"
    cmd = [sys.executable, "-m", "napari_atbsn", "train", str(noisy_tif), "-o", str(out), "--preset", "tiny",
           "--patch", "32", "--batch", "2", "--device", "cpu", "--checkpoint-every", "0"]
    proc = subprocess.Popen([*cmd, "--iters", "100000"], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # the progress bar prints its first line after step 1
        if line.startswith("train"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert (out / "checkpoint" / "config.json").exists() and not (out / "config.json").exists()
    from napari_atbsn.modelio import read_config

    steps = read_config(out / "checkpoint")["state"]["steps"]
    done = subprocess.run([*cmd, "--iters", str(steps + 2), "--resume"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert read_config(out)["steps"] == steps + 2 and not (out / "checkpoint").exists()


def test_denoise_volume_options(tmp_path: Path, noisy_tif: Path, tiny_teacher: Path, capsys) -> None:
    out = tmp_path / "o.ome.zarr"
    code, text = _run(capsys, "denoise", noisy_tif, "-m", tiny_teacher, "-o", out, "--k-b", "1", "3", "--chunk", "48",
                      "--roi", "Z=1,Y=10:90", "--dtype", "input")
    assert code == 0, text
    assert "chunk 48" in text and "ETA" in text
    for k in (1, 3):
        img = open_image(tmp_path / f"o_kb{k}.ome.zarr")
        assert img.axes == "ZYX" and img.shape == (1, 80, 128) and img.dtype == np.uint16
    code, text = _run(capsys, "denoise", noisy_tif, "-m", tiny_teacher, "-o", out, "--k-b", "1", "3")
    assert code == 2 and "already exists" in text and "--overwrite" in text
    code, text = _run(capsys, "denoise", noisy_tif, "-m", tiny_teacher, "-o", tmp_path / "x.tif", "--scheduler", "mpi")
    assert code == 2 and "tcp://HOST:PORT" in text


def test_ctrl_c_during_denoise_leaves_a_partial_output_that_the_same_command_finishes(tmp_path: Path,
                                                                                       tiny_teacher: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    import tifffile

    src = tmp_path / "in.tif"
    tifffile.imwrite(src, np.random.default_rng(0).normal(107, 9, (8, 128, 128)).astype(np.float32),
                     metadata={"axes": "ZYX"})
    out = tmp_path / "o.tif"
    cmd = [sys.executable, "-m", "napari_atbsn", "denoise", str(src), "-m", str(tiny_teacher), "-o", str(out),
           "--chunk", "32", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    done = tmp_path / ".o.tif.partial" / ".atbsn-done"
    deadline = time.time() + 120
    while time.time() < deadline and (not done.exists() or len(list(done.iterdir())) < 5):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command to resume" in err and not out.exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr and read_image(out)[0].shape == (8, 128, 128)
