"""Model folders: ``model.safetensors`` + ``config.json``, and the runnable :class:`Denoiser`.

A folder alone rebuilds and runs the model. Loading never unpickles: weights
are read with safetensors, settings with ``json``. Files are written
atomically (temporary file, fsync, rename) and ``config.json`` last, so a
folder with a config is complete. Checkpoints add ``optimizer.safetensors``
and a ``state`` entry in the config.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ATBSN_PRESETS, AUTO_K_B, STUDENT_PRESETS, UNetArch
from .errors import ConfigError, ModelFolderError
from .io.fs import atomic_write_bytes, special_file
from .version import __version__

FORMAT = "napari-atbsn"
FORMAT_VERSION = 1
WEIGHTS, CONFIG, OPTIMIZER = "model.safetensors", "config.json", "optimizer.safetensors"

_REQUIRED = {"format", "format_version", "kind", "arch", "patch", "normalization"}
_OPTIONAL = {"package_version", "created", "k_a", "k_b", "ks", "mean_teacher", "teacher", "steps",
             "train", "distill", "data", "state", "halo", "method", "gamma", "phase", "unpaired", "targets",
             "held_out_rows", "quality", "context_choice"}
KINDS = ("atbsn", "student", "dbsn")
#: A config.json is a few kB: more than this is not ours (and a link to /dev/zero would never end).
MAX_CONFIG_BYTES = 1 << 20


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


def save_folder(path: str | os.PathLike, model: nn.Module, config: dict[str, Any], *,
                optimizer_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a model (or checkpoint) folder; ``config.json`` goes last."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
               "created": datetime.now(UTC).isoformat(timespec="seconds"), **config}
        (p / CONFIG).unlink(missing_ok=True)  # incomplete until the new config lands
        atomic_write_bytes(p / WEIGHTS, _tensor_bytes(model.state_dict()))
        if optimizer_tensors is not None:
            atomic_write_bytes(p / OPTIMIZER, _tensor_bytes(optimizer_tensors))
        atomic_write_bytes(p / CONFIG, json.dumps(cfg, indent=2).encode())
    except OSError as e:
        raise ModelFolderError(f"could not write the model folder {p}: {e.strerror or e}; check free space and "
                               f"permissions.") from None
    return p


# -- reading -----------------------------------------------------------------
#: Suffixes of the pickle-based formats of torch, numpy, joblib and friends: loading one can run any code.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib", ".tar")


def is_pickle(path: Path) -> bool:
    """Whether ``path`` is a pickle (protocol 2+) or a ``torch.save`` zip archive rather than safetensors.

    A safetensors file starts with its JSON header's length (8 bytes, little-endian) and then ``{``; that
    length may well begin with byte 0x80, so the header is checked before the pickle opcode.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return False
    return (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or head[:2] == b"PK"


def refuse_pickles(folder: Path) -> None:
    """Refuse a model folder that carries a pickle: it did not come from napari-atbsn as it is.

    The files are never opened by an unpickler; only their names and first two bytes are looked at.
    """
    found = sorted(f.name for f in folder.iterdir() if f.is_file() and f.suffix.lower() in PICKLE_SUFFIXES)
    for name in (WEIGHTS, OPTIMIZER):
        if (folder / name).is_file() and is_pickle(folder / name):
            found.append(f"{name} (a pickle under a safetensors name)")
    if found:
        raise ModelFolderError(f"{folder} holds {', '.join(found)}: pickle files, which can run code when "
                               f"loaded. napari-atbsn never loads pickles and refuses such folders; ask the "
                               f"sender for the plain folder (model.safetensors + config.json) or re-train.")


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``config.json`` of a model folder."""
    p = Path(path)
    if not p.exists():
        raise ModelFolderError(f"model folder {p} does not exist; check the path (it is the -o folder of "
                               f"'atbsn train' or 'atbsn distill').")
    if not p.is_dir():
        raise ModelFolderError(f"{p} is a file, not a model folder; give the folder that holds {CONFIG} and "
                               f"{WEIGHTS}.")
    refuse_pickles(p)
    cfg_path = p / CONFIG
    cfg = _read_json(p, cfg_path)
    _check_entries(p, cfg_path, cfg)
    return cfg


def _read_json(folder: Path, cfg_path: Path) -> Any:
    if not cfg_path.exists():
        raise ModelFolderError(f"{folder} has no {CONFIG}: it is not a model folder, or its writing was "
                               f"interrupted.")
    special = special_file(cfg_path)
    if special:
        raise ModelFolderError(f"{cfg_path} is not a regular file ({special}); reading it could block or never "
                               f"end. Replace it with the folder's real {CONFIG}.")
    try:
        with open(cfg_path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ModelFolderError(f"cannot read {cfg_path}: {e.strerror or e}; check its permissions.") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelFolderError(f"{cfg_path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; a model's {CONFIG} is a "
                               f"few kB, so this one was not written by napari-atbsn. Replace it.")
    try:
        return json.loads(raw.decode())
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, a 5000-digit number, 100k-deep nesting
        raise ModelFolderError(f"{cfg_path} is not valid JSON ({e}); the folder is corrupted.") from None


def _check_entries(p: Path, cfg_path: Path, cfg: Any) -> None:
    """The keys, format version and kind of a parsed config.json."""
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ModelFolderError(f"{cfg_path} is not a napari-atbsn model configuration.")
    missing = sorted(_REQUIRED - set(cfg))
    if missing:
        raise ModelFolderError(f"{cfg_path} lacks {', '.join(missing)}; the folder is incomplete or corrupted.")
    unknown = sorted(set(cfg) - _REQUIRED - _OPTIONAL)
    if unknown:
        raise ModelFolderError(f"{cfg_path} has unknown key(s) {', '.join(unknown)}; it was written by another "
                               f"program or edited by hand.")
    version = cfg["format_version"]
    if not _is_int(version) or version < 1:
        raise ModelFolderError(f"{cfg_path}: format_version={version!r} must be a whole number such as "
                               f"{FORMAT_VERSION}; the file was edited by hand or damaged. Restore the original or "
                               f"re-train.")
    if version > FORMAT_VERSION:
        raise ModelFolderError(f"{p} uses model format version {version}, newer than this napari-atbsn "
                               f"({__version__}) reads ({FORMAT_VERSION}); upgrade napari-atbsn.")
    if cfg["kind"] not in KINDS:
        raise ModelFolderError(f"{cfg_path}: unknown model kind {cfg['kind']!r}.")
    _check_values(cfg_path, cfg)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_values(cfg_path: Path, cfg: dict[str, Any]) -> None:
    """The types and ranges of the numbers a model runs with: a hand-edited ``"patch": "32"``, ``32.5``, NaN
    or ``k_a: -1`` is refused here, not met as a traceback or a wrong image later."""
    patch = cfg["patch"]
    problems = []
    if not (_is_int(patch) and 1 <= patch <= MAX_PATCH):
        problems.append(f"patch={patch!r} must be a whole number of pixels from 1 to {MAX_PATCH}")
    else:
        arch = cfg["arch"] if isinstance(cfg["arch"], dict) else {}
        preset = arch.get("preset")
        # the network's own depth where the file stores it (presets can be overridden), else its preset's
        depth = arch.get("depth") if _is_int(arch.get("depth")) else \
            ATBSN_PRESETS[preset].depth if preset in ATBSN_PRESETS else 0
        multiple = 2 ** min(depth, 16) if cfg["kind"] == "atbsn" else 1
        if patch % multiple:
            problems.append(f"patch={patch} must be a multiple of {multiple} for a network of depth {depth}")
    problems += [m for key in ("k_a", "k_b") if key in cfg and (m := _blind_spot_problem(cfg, key, patch))]
    problems += _disagreements(cfg)
    for key in ("halo", "steps"):
        v = cfg.get(key)
        if v is not None and not (_is_int(v) and v >= 0):
            problems.append(f"{key}={v!r} must be a whole number >= 0")
    if problems:
        raise ModelFolderError(f"{cfg_path}: {problems[0]}; the file was edited by hand or damaged. Restore the "
                               f"original or re-train.")


#: No network is trained on patches larger than this (the paper's are 256): a larger stored patch, which a
#: teacher's denoise uses as its window, is an edited file.
MAX_PATCH = 8192


def _disagreements(cfg: dict[str, Any]) -> list[str]:
    """What the file's top-level values say against the training settings it recorded (``train``): the patch the
    windows use, the blind spot k_a and the architecture's preset name were all written from them, so a
    difference is a hand edit (a stored patch of 65,536 ran a teacher in 65,536-pixel windows)."""
    train = cfg.get("train")
    if not isinstance(train, dict):
        return []
    arch = cfg["arch"] if isinstance(cfg["arch"], dict) else {}
    pairs = [("patch", cfg.get("patch"), train.get("patch")), ("k_a", cfg.get("k_a"), train.get("k_a"))]
    if cfg["kind"] == "atbsn":
        pairs.append(("arch.preset", arch.get("preset"), train.get("preset")))
    return [f"{key}={mine!r} but the model was trained with train.{key.split('.')[-1]}={theirs!r}"
            for key, mine, theirs in pairs
            if type(mine) is type(theirs) and isinstance(mine, int | str) and mine != theirs]


def _blind_spot_problem(cfg: dict[str, Any], key: str, patch: Any) -> str | None:
    """What is wrong with the stored blind spot ``key`` (k_a or k_b), or None."""
    k = cfg[key]
    if k is None and key == "k_b" and cfg["kind"] != "atbsn":
        return None  # a student's or D-BSN's record of "no blind spot"
    if key == "k_b" and k == AUTO_K_B:
        return None
    if not (_is_int(k) and k >= 0 and (k == 0 or k % 2 == 1)):
        return f"{key}={k!r} must be 0 or a positive odd whole number{' or ' + repr(AUTO_K_B) if key == 'k_b' else ''}"
    if _is_int(patch) and cfg["kind"] == "atbsn" and (k + 1) // 2 >= patch:
        # the blind spot's shift must leave pixels of the window to predict from
        return (f"{key}={k} is a blind spot as wide as the training patch ({patch} px); it must be smaller than "
                f"{2 * patch - 1}")
    return None


def build_model(cfg: dict[str, Any]) -> nn.Module:
    """An untrained network of the architecture described by ``cfg["arch"]``."""
    from .models import ATBSN, DBSN, Student

    arch = cfg["arch"]
    try:
        # Bounds keep a hand-edited config from asking for a network that exhausts memory.
        for key, hi in (("in_channels", 64), ("width", 1024), ("dec_width", 1024), ("depth", 8)):
            if key in arch and not (isinstance(arch[key], int) and 1 <= arch[key] <= hi):
                raise ValueError(f"{key}={arch[key]!r} is outside 1..{hi}")
        if cfg["kind"] == "atbsn":
            if arch["preset"] not in ATBSN_PRESETS:
                raise ConfigError(f"unknown preset {arch['preset']!r}")
            return ATBSN(int(arch["in_channels"]), arch["preset"], width=int(arch["width"]),
                         dec_width=int(arch["dec_width"]), depth=int(arch["depth"]),
                         context=arch.get("context", 0), context_dropout=arch.get("context_dropout", 0.0))
        if cfg["kind"] == "dbsn":
            return DBSN(int(arch["in_channels"]), arch["preset"], noise_model=arch["noise_model"])
        if arch["preset"] not in STUDENT_PRESETS:
            raise ConfigError(f"unknown student preset {arch['preset']!r}")
        return Student(arch["preset"], int(arch["in_channels"]), blend=arch.get("blend"),
                       context=arch.get("context", 0), context_dropout=arch.get("context_dropout", 0.0))
    except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as e:
        raise ModelFolderError(f"invalid 'arch' entry {arch!r} in the model config ({e}).") from None


def arch_dict(model: nn.Module) -> dict[str, Any]:
    """The ``arch`` config entry describing ``model``."""
    from .models import ATBSN, DBSN

    # stack context is recorded only where there is some: 2-D folders keep their exact config (and fingerprint).
    # Its dropout too: a folder without it (trained before context dropout) cannot denoise a plane alone.
    context = ({"context": model.context, "context_dropout": model.context_dropout}
               if getattr(model, "context", 0) else {})
    if isinstance(model, DBSN):
        return {"preset": model.preset, "in_channels": model.in_channels, "noise_model": model.noise_model}
    if isinstance(model, ATBSN):
        a: UNetArch = model.arch
        return {"preset": model.preset, "in_channels": model.in_channels, "width": a.width,
                "dec_width": a.dec_width, "depth": a.depth, **context}
    blend = getattr(model, "blend_weights", None)
    return {"preset": model.preset, "in_channels": model.in_channels, **({"blend": list(blend)} if blend else {}),
            **context}


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (never a pickle), with a clear error if it is damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        raise ModelFolderError(f"{path} is missing; the model folder is incomplete.")
    special = special_file(path)
    if special:
        raise ModelFolderError(f"{path} is not a regular file ({special}); reading it could block or never end. "
                               f"Replace it with the model's real weights.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFolderError(f"{path} is not a valid safetensors file ({e}); it may be truncated, corrupted or "
                               f"a pickle (which napari-atbsn never loads). Re-export or re-train the model.") from None


def load_network(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of a model folder and load its weights."""
    p = Path(path)
    cfg = read_config(p)
    model = build_model(cfg)
    state = load_tensors(p / WEIGHTS)
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or extra or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                  else f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}")
        raise ModelFolderError(f"the weights in {p / WEIGHTS} do not match the architecture in {CONFIG} "
                               f"({detail}); the folder is mismatched or corrupted.")
    check_weight_values(p / WEIGHTS, state, own)
    model.load_state_dict(state)
    model.eval()
    return model, cfg


def check_weight_values(path: Path, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    """Refuse weights that load but cannot be right: an integer type where the network has floating-point
    parameters (cast weights give a constant image), or NaN/Inf (an all-NaN image)."""
    cast = [k for k, v in own.items() if v.is_floating_point() and not state[k].is_floating_point()]
    if cast:
        dtype = str(state[cast[0]].dtype).removeprefix("torch.")
        raise ModelFolderError(f"{path} holds {len(cast)} weights of dtype {dtype} (e.g. {cast[0]}); weights must be "
                               f"floating point. The file was converted by another program; use the original "
                               f"folder or re-train.")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelFolderError(f"{path} holds non-finite weights (NaN or Inf, in {', '.join(bad[:3])}); the model "
                               f"is damaged (a diverged training or a corrupted copy). Use an earlier copy or "
                               f"re-train.")
