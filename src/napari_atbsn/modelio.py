"""Model folders: ``model.safetensors`` + ``config.json``, and the runnable :class:`Denoiser`.

A folder alone rebuilds and runs the model. Loading never unpickles: weights
are read with safetensors, settings with ``json``. Files are written
atomically (temporary file, fsync, rename) and ``config.json`` last, so a
folder with a config is complete. Checkpoints add ``optimizer.safetensors``
and a ``state`` entry in the config.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .config import ATBSN_PRESETS, STUDENT_PRESETS, UNetArch, check_k
from .errors import ConfigError, ModelFolderError
from .normalization import Normalization

FORMAT = "napari-atbsn"
FORMAT_VERSION = 1
WEIGHTS, CONFIG, OPTIMIZER = "model.safetensors", "config.json", "optimizer.safetensors"

_REQUIRED = {"format", "format_version", "kind", "arch", "patch", "normalization"}
_OPTIONAL = {"package_version", "created", "k_a", "k_b", "ks", "mean_teacher", "teacher", "steps",
             "train", "distill", "data", "state", "halo", "method", "gamma", "phase", "unpaired"}
KINDS = ("atbsn", "student", "dbsn")


# -- atomic writing -----------------------------------------------------------
def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` via ``write(temporary_path)``, fsync, a rename and a fsync of the folder: a crash or
    an error never leaves a file at ``path`` that looks complete (the temporary file is removed)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a power loss after it keeps the new name); best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    if not cfg_path.exists():
        raise ModelFolderError(f"{p} has no {CONFIG}: it is not a model folder, or its writing was interrupted.")
    try:
        cfg = json.loads(cfg_path.read_text())
    except OSError as e:
        raise ModelFolderError(f"cannot read {cfg_path}: {e.strerror or e}; check its permissions.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{cfg_path} is not valid JSON ({e}); the folder is corrupted.") from None
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
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFolderError(f"{p} uses model format version {version}, newer than this napari-atbsn "
                               f"({__version__}) reads ({FORMAT_VERSION}); upgrade napari-atbsn.")
    if cfg["kind"] not in KINDS:
        raise ModelFolderError(f"{cfg_path}: unknown model kind {cfg['kind']!r}.")
    return cfg


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
                         dec_width=int(arch["dec_width"]), depth=int(arch["depth"]))
        if cfg["kind"] == "dbsn":
            return DBSN(int(arch["in_channels"]), arch["preset"], noise_model=arch["noise_model"])
        if arch["preset"] not in STUDENT_PRESETS:
            raise ConfigError(f"unknown student preset {arch['preset']!r}")
        return Student(arch["preset"], int(arch["in_channels"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ModelFolderError(f"invalid 'arch' entry {arch!r} in the model config ({e}).") from None


def arch_dict(model: nn.Module) -> dict[str, Any]:
    """The ``arch`` config entry describing ``model``."""
    from .models import ATBSN, DBSN

    if isinstance(model, DBSN):
        return {"preset": model.preset, "in_channels": model.in_channels, "noise_model": model.noise_model}
    if isinstance(model, ATBSN):
        a: UNetArch = model.arch
        return {"preset": model.preset, "in_channels": model.in_channels, "width": a.width,
                "dec_width": a.dec_width, "depth": a.depth}
    return {"preset": model.preset, "in_channels": model.in_channels}


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (never a pickle), with a clear error if it is damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        raise ModelFolderError(f"{path} is missing; the model folder is incomplete.")
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
    model.load_state_dict(state)
    model.eval()
    return model, cfg


# -- the runnable model ----------------------------------------------------------
#: The extra output of a D-BSN: its estimated noise standard deviation per pixel.
NOISE_MAP = "noise"
#: D-BSN's blind-spot estimate mu before the Bayes fusion (for comparisons).
BLIND_ESTIMATE = "mu"


class Denoiser:
    """A loaded model with its normalisation and window size, ready to run.

    ``denoiser(window)`` takes raw (N, C, P, P) data (numpy or torch, P the
    training patch size) and returns it denoised in the same value range.
    :meth:`denoise` handles whole images of any size and axes, running the
    network in windows of P with a halo (method.md Decision 8).
    """

    def __init__(self, network: nn.Module, config: dict[str, Any], *, device: str | torch.device = "cpu",
                 path: Path | None = None, amp: bool = True, channels_last: bool | None = None,
                 compile: bool = False) -> None:
        from .device import place_network, resolve_device, use_channels_last

        self.config = config
        self.path = path
        self.kind: str = config["kind"]
        self.patch: int = int(config["patch"])
        self.halo: int = int(config.get("halo", self.patch // 4))
        self.k_b: int = int(config.get("k_b", 3))
        self.normalization = Normalization.from_dict(config["normalization"])
        self.device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
        # The GPU path (device.py): mixed precision and channels-last on CUDA, cuDNN autotuning for the fixed
        # window shape, optionally torch.compile. On the CPU the arithmetic is plain float32.
        self.amp = bool(amp)
        self.channels_last = use_channels_last(self.device, channels_last)
        self.network = place_network(network.eval(), self.device, channels_last=self.channels_last, compile=compile)
        self.in_channels: int = int(config["arch"]["in_channels"])

    @property
    def compiled(self) -> bool:
        """Whether the network runs through torch.compile (asked here, or compiled by the training run that
        made it): dask workers that load the folder again compile too."""
        return bool(getattr(self.network, "_atbsn_compiled", False))

    @property
    def name(self) -> str:
        """Short label for outputs: ``atbsn_kb3`` or ``student_C``."""
        if self.kind == "dbsn":
            return "dbsn"
        return f"student_{self.config['arch']['preset']}" if self.kind == "student" else f"atbsn_kb{self.k_b}"

    @property
    def gamma(self) -> float:
        """D-BSN: weight of the noise term in the Bayes fusion (stored with the model; 1 = exact posterior)."""
        return float(self.config.get("gamma", 1.0))

    @torch.no_grad()
    def run_normalized(self, x: np.ndarray, k_b: int | None = None) -> np.ndarray:
        """Network on already-normalised (N, C, h, w) float32 data."""
        return self.run_windows(x, [k_b])[0]

    @torch.no_grad()
    def run_windows(self, x: np.ndarray, ks: Sequence[int | None]) -> np.ndarray:
        """Normalised (B, C, w, w) windows -> (K, B, C, w, w), one output per k in ``ks``.

        A teacher computes the rotated UNet features once and applies the head
        for each k (None: the model's own k_b); a student has one output.
        """
        from .device import autocast, compile_errors_named, to_device

        t = to_device(x, self.device, channels_last=self.channels_last)
        # PyTorch's CPU kernels take another code path for a batch of one, whose rounding differs; pairing a
        # lone window with a copy keeps every window's result independent of how windows are batched.
        single = t.shape[0] == 1
        if single:
            t = torch.cat([t, t])
        with compile_errors_named(), autocast(self.device, self.amp):
            if self.kind == "atbsn":
                y = self.network.teachers(t, [self.k_b if k is None else check_k(k, name="k_b") for k in ks])
            elif self.kind == "dbsn":
                y = self._dbsn_outputs(t, ks)
            else:
                y = self.network(t)[None]
        return y[:, :1].float().cpu().numpy() if single else y.float().cpu().numpy()

    def _dbsn_outputs(self, t: torch.Tensor, ks: Sequence[int | str | None]) -> torch.Tensor:
        """D-BSN: None -> the Bayes-fused image; NOISE_MAP -> the noise standard deviation (normalised units);
        BLIND_ESTIMATE -> mu, the one-pixel blind-spot estimate before fusion."""
        from .models.dbsn import bayes_fusion

        mu, var_mu, var_n = self.network(t)
        outs = []
        for k in ks:
            if k == BLIND_ESTIMATE:
                outs.append(mu)
            elif k == NOISE_MAP:
                var = var_n if var_n.ndim == 4 else var_n.diagonal(dim1=1, dim2=2).permute(0, 3, 1, 2)
                outs.append(var.clamp_min(0).sqrt())
            else:
                outs.append(bayes_fusion(t, mu, var_mu, var_n, self.gamma))
        return torch.stack(outs)

    def undo_output(self, out: np.ndarray, k: int | str | None) -> np.ndarray:
        """A normalised network output back in the data's units (a noise std scales, an image also shifts)."""
        if k == NOISE_MAP:
            return out * np.asarray(self.normalization.scale, dtype=np.float32).reshape(-1, 1, 1)
        return self.normalization.undo(out)

    def fingerprint(self) -> str:
        """SHA-256 of what determines the output: kind, normalisation, window, k_b, gamma and weights."""
        h = hashlib.sha256(json.dumps({"kind": self.kind, "norm": self.normalization.to_dict(), "patch": self.patch,
                                       "halo": self.halo, "k_b": self.k_b, "gamma": self.gamma,
                                       "arch": self.config["arch"]}, sort_keys=True).encode())
        for key, tensor in sorted(self.network.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def __call__(self, window: Any, k_b: int | None = None) -> Any:
        is_torch = isinstance(window, torch.Tensor)
        x = window.detach().cpu().numpy() if is_torch else np.asarray(window, dtype=np.float32)
        y = self.normalization.undo(self.run_normalized(self.normalization.apply(x), k_b))
        return torch.from_numpy(y) if is_torch else y

    def iter_denoise(self, image: Any, axes: str | None = None, *, k_b: int | None = None,
                     batch_size: int = 4, dtype: str = "float32") -> Iterator[tuple[int, int]]:
        """Generator: denoise ``image``; yields (windows_done, total); returns the result.

        ``dtype`` is ``float32`` or ``input`` (the input's dtype, rounded and
        clipped to its range).
        """
        from .inmemory import iter_denoise

        return (yield from iter_denoise(self, image, axes, k_b=k_b, batch_size=batch_size, dtype=dtype))

    def denoise(self, image: Any, axes: str | None = None, *, k_b: int | None = None, batch_size: int = 4,
                dtype: str = "float32") -> np.ndarray:
        """Denoise a whole image (2-D, stack, channels) and return it in its own layout."""
        from .events import drain

        return drain(self.iter_denoise(image, axes, k_b=k_b, batch_size=batch_size, dtype=dtype))


def load_model(path: str | os.PathLike, *, device: str = "cpu", amp: bool = True, compile: bool = False,
               ) -> Denoiser:
    """Load a model folder as a :class:`Denoiser` (``amp``: mixed precision on CUDA; ``compile``:
    torch.compile the network)."""
    network, cfg = load_network(path)
    return Denoiser(network, cfg, device=device, path=Path(path), amp=amp, compile=compile)
