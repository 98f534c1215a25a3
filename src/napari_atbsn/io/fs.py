"""Durable, atomic file writing shared by model folders, image files, outputs and exports.

A file is written to a temporary name in its folder, fsynced, renamed over
its final name and the folder fsynced: a crash or an error never leaves a
file that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import WriteError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` via ``write(temporary_path)``, fsync, a rename and a fsync of the folder: a crash or
    an error never leaves a file at ``path`` that looks complete (the temporary file is removed)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        fsync_file(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))


def write_file_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """:func:`atomic_write`, with a failure to write reported as a :class:`WriteError`."""
    try:
        atomic_write(path, write)
    except OSError as e:
        raise WriteError(f"could not write {path}: {e.strerror or e}; check free space and permissions.") from None
    return path


def fsync_file(path: Path, *, strict: bool = True) -> None:
    """Flush a written file to the disk (``strict=False``: best effort, errors ignored)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a power loss after it keeps the new name); best effort."""
    with contextlib.suppress(OSError):
        fsync_file(folder, strict=False)


def check_writable(folder: Path) -> None:
    """Create and remove a file in ``folder``: the only test that also holds for root, read-only mounts and
    pseudo file systems (``os.access`` says yes to root everywhere)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".atbsn-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise WriteError(f"output folder {folder} is not writable ({e.strerror or e}); choose another output "
                         f"path.") from None


def new_file_target(out: str | os.PathLike, overwrite: bool) -> Path:
    """A file about to be written: refused if it exists (unless ``overwrite``) or its folder is missing or
    not writable, before any work is done."""
    p = Path(out)
    if p.exists() and not overwrite:
        raise WriteError(f"{p} already exists; choose another name or pass --overwrite.")
    if not p.parent.is_dir():
        raise WriteError(f"output folder {p.parent} does not exist; create it first.")
    check_writable(p.parent)
    return p


def overlap(a: str | os.PathLike, b: str | os.PathLike) -> str | None:
    """How two paths overlap once resolved (symlinks followed): ``"is"`` (the same), ``"contains"`` (``a``
    holds ``b``), ``"is inside"`` (``b`` holds ``a``), or None when they are apart."""
    pa, pb = Path(a).resolve(), Path(b).resolve()
    if pa == pb:
        return "is"
    if pa in pb.parents:
        return "contains"
    if pb in pa.parents:
        return "is inside"
    return None


def refuse_overlap(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse an output that is, contains or lies inside one of ``inputs`` ({what: path}): writing it, or
    replacing it with ``overwrite``, would destroy the input."""
    for what, path in inputs.items():
        how = overlap(out, path) if path is not None else None
        if how is not None:
            where = "" if how == "is" else f" {path}"
            raise WriteError(f"the output {out} {how} the {what}{where}; writing it would damage the {what}. "
                             f"Choose an output path outside it.")


def special_file(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it is neither a regular file nor a folder (symlinks followed): ``"a FIFO"``,
    ``"a device"`` or ``"a socket"``; None otherwise (or when it does not exist). Reading a FIFO blocks until
    someone writes to it and a device such as /dev/zero never ends, so such paths are refused, not read."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None
