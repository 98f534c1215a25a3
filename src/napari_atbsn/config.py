"""The typed, validated configuration tree: every default lives here.

Three kinds of settings:

* architecture presets (:data:`ATBSN_PRESETS`, :data:`STUDENT_PRESETS`),
* training settings (:class:`TrainConfig`) and distillation settings
  (:class:`DistillConfig`), whose ``None`` fields take the value of the
  preset in :data:`TRAIN_DEFAULTS` / :data:`DISTILL_DEFAULTS`,
* the normalisation stored with a model (:mod:`napari_atbsn.normalization`).

Field ``metadata["help"]`` strings feed the CLI help (and later the widget
tooltips), so they are written once, here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import BlindSpotError, ConfigError

# --------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class UNetArch:
    """Widths of the shifted-convolution UNet (method.md §1.3).

    ``width`` is the encoder width (48 in the paper), ``dec_width`` the
    decoder and head width (96), ``depth`` the number of pooling levels (5).
    The fusion head is 4*dec_width -> 4*dec_width -> dec_width -> C.
    """

    width: int
    dec_width: int
    depth: int

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (padding handles the rest)."""
        return 2**self.depth


ATBSN_PRESETS: dict[str, UNetArch] = {
    # The paper network: 1,268,547 parameters for RGB (method.md §1.5).
    "paper": UNetArch(width=48, dec_width=96, depth=5),
    # The 16-wide network of our CPU calibration (method.md Decision 8).
    "small": UNetArch(width=16, dec_width=32, depth=5),
    # For unit tests only: trains in seconds, depth 3 keeps 32x32 patches legal.
    "tiny": UNetArch(width=8, dec_width=16, depth=3),
}

STUDENT_PRESETS: tuple[str, ...] = ("A", "B", "C", "tiny")
#: Side multiple each student pools to (A/B: 2 levels, C: 5, tiny: 2).
STUDENT_MULTIPLE: dict[str, int] = {"A": 4, "B": 4, "C": 32, "tiny": 4}

#: What a student learns from: the teacher outputs blended with the input (default), or as they are (paper).
DISTILL_TARGETS: tuple[str, ...] = ("blended", "paper")
#: Blind-spot sizes of the paper's SIDD multi-teacher set (method.md §1.8).
DEFAULT_KS: tuple[int, ...] = (0, 1, 3, 5, 7, 9, 11)

# -- what a model can output -----------------------------------------------------------------------------------
#: An output of a model run: a blind-spot size k_b (AT-BSN teachers), None (the model's own image: its stored
#: k_b, a student's or D-BSN's fused image), or one of the named D-BSN outputs below.
OutputKey = int | str | None
#: The extra output of a D-BSN: its estimated noise standard deviation per pixel.
NOISE_MAP = "noise"
#: D-BSN's blind-spot estimate mu before the Bayes fusion (for comparisons).
BLIND_ESTIMATE = "mu"
#: k_b chosen from the data (teachers): the valid blind spot whose blend with the input has the lowest
#: estimated risk, blended (napari_atbsn.inference.quality).
AUTO_K_B = "auto"
#: The blind spot a teacher falls back on where one must be fixed without data to choose from (an export, an
#: output asked for as "the model's own" of a folder that stores "auto"): the paper's k_b.
FIXED_K_B = 3
#: Stack context chosen from the data: as many neighbouring planes as the stack allows (up to 2 on each side, 8
#: where the planes repeat one scene) where their noise is measured independent of the plane's, else 0
#: (napari_atbsn.analysis.plane_noise_correlation).
AUTO_CONTEXT = "auto"
#: Share of the training samples of a stack-context model (teacher and student) whose neighbouring planes are
#: replaced by zeros (in normalised units, the data's typical level). A network that always saw its neighbours has
#: never learnt to denoise a plane alone; this one-in-five teaches the same network the 2-D task, so it can denoise
#: a single image, a stack too short for its context or a crop without neighbours (given zeros there), while four
#: samples in five still learn to use the context. Its cost in the context's own mode is measured in
#: docs/benchmarks.md ("Stack context").
CONTEXT_DROPOUT = 0.2
#: D-BSN's weight of the noise term in the Bayes fusion when a model folder does not say (1: exact posterior).
DEFAULT_GAMMA = 1.0

@dataclass(frozen=True)
class DBSNArch:
    """Widths of D-BSN (method.md §5.1): ``width`` feature channels (96 in the paper), ``blocks``
    dilated inception blocks per branch (8), ``sigma_width`` channels of the variance networks (32)."""

    width: int
    blocks: int
    sigma_width: int


DBSN_PRESETS: dict[str, DBSNArch] = {
    # The paper network: 6,612,289 backbone parameters for one channel (method.md §5.1).
    "paper": DBSNArch(width=96, blocks=8, sigma_width=32),
    "small": DBSNArch(width=32, blocks=3, sigma_width=16),
    "tiny": DBSNArch(width=16, blocks=2, sigma_width=8),
}

#: D-BSN noise models (method.md §5.2): Gaussian (one variance per image, from the noisy image),
#: Poisson-Gaussian (a per-pixel variance that depends on the signal, from mu), multivariate Gaussian
#: (one channel covariance per image, for noise correlated across channels).
NOISE_MODELS: tuple[str, ...] = ("gaussian", "poisson-gaussian", "multivariate-gaussian")

#: ``range1`` maps robust percentiles to 0..1, the range D-BSN's noise networks are initialised for.
NORMALIZATION_MODES: tuple[str, ...] = ("range255", "zscore", "range1")


def check_k(k: Any, *, name: str = "k") -> int:
    """Validate a blind-spot size: 0 (no blind spot) or a positive odd integer.

    Even sizes are refused because the feature shift ``s = (k + 1) // 2``
    would silently make them equal to ``k - 1`` (method.md Decision 4).
    """
    if isinstance(k, bool) or not isinstance(k, int):
        try:
            if float(k) != int(k):
                raise ValueError
            k = int(k)
        except (TypeError, ValueError, OverflowError):
            raise BlindSpotError(
                f"{name}={k!r} is not an integer; use 0 or an odd number such as 1, 3, 5, 9."
            ) from None
    if k < 0:
        raise BlindSpotError(f"{name}={k} is negative; use 0 (no blind spot) or an odd number such as 3.")
    if k != 0 and k % 2 == 0:
        raise BlindSpotError(
            f"{name}={k} is even; blind spots are odd squares (k x k centred on the pixel). "
            f"Use {k - 1} or {k + 1}."
        )
    return k


def shift_for_k(k: int) -> int:
    """Feature shift that makes a k x k blind square: s = (k + 1) // 2 (method.md §1.4)."""
    return (check_k(k) + 1) // 2


def check_ks(ks: Any) -> tuple[int, ...]:
    """Validate a set of teacher blind-spot sizes (non-empty, no duplicates)."""
    ks = tuple(ks)
    if not ks:
        raise ConfigError("The list of teacher blind-spot sizes (--ks) is empty; the paper uses 0,1,3,5,7,9,11.")
    checked = tuple(check_k(k, name="ks entry") for k in ks)
    if len(set(checked)) != len(checked):
        dup = sorted({k for k in checked if checked.count(k) > 1})
        raise ConfigError(f"--ks lists {dup} more than once; give each blind-spot size once, e.g. 0,1,3,5,7,9,11.")
    return checked


# --------------------------------------------------------------------------
# Training and distillation
# --------------------------------------------------------------------------

#: Preset-dependent training defaults. ``paper`` keeps the paper's settings
#: (method.md §1.6); ``small`` those of our CPU calibration (Decision 8).
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": dict(iters=400_000, patch=256, batch=8, lr=3e-4, normalization="range255"),
    "small": dict(iters=1_000, patch=128, batch=4, lr=1e-3, normalization="zscore"),
    "tiny": dict(iters=200, patch=32, batch=4, lr=2e-3, normalization="zscore"),
}

#: Distillation defaults per teacher preset (method.md §1.8 for ``paper``).
DISTILL_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": dict(student="C", iters=100_000, batch=8, lr=3e-4),
    "small": dict(student="A", iters=600, batch=4, lr=1e-3),
    "tiny": dict(student="tiny", iters=150, batch=4, lr=2e-3),
}


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


# The GPU-path settings every training stage shares (device.py applies them).
def _channels_last() -> Any:
    return _help("channels-last memory layout (None: on CUDA only, where cuDNN's convolutions want it)",
                 default=None)


def _compile() -> Any:
    return _help("torch.compile the network: a slower first step, faster ones after (needs a C++ compiler)",
                 default=False)


@dataclass
class TrainConfig:
    """Settings of self-supervised AT-BSN training (stage 1)."""

    preset: str = _help("network size: paper (1.27 M params, GPU), small (CPU in minutes), tiny (tests)",
                        default="small")
    k_a: int = _help("blind-spot size used for training (odd; 9 in the paper)", default=9)
    k_b: int | str = _help("default blind spot for inference, stored with the model: 'auto' (chosen from the "
                           "data and blended with the input, never worse than it) or a size such as 3",
                           default=AUTO_K_B)
    context: int | str = _help("neighbouring planes on each side along Z (or T) given to the network beside the "
                               "blind-spot plane: 'auto' (chosen from the data: none for single images, stacks "
                               "too short or planes sharing noise; atbsn analyze measures it), 0 (a 2-D model, "
                               "plane by plane) or N. A context model also denoises single planes, without context",
                               default=AUTO_CONTEXT)
    iters: int | None = _help("training iterations (default: preset's)", default=None)
    patch: int | None = _help("square training patch side in pixels; inference windows use the same size",
                              default=None)
    batch: int | None = _help("patches per step", default=None)
    lr: float | None = _help("Adam learning rate, cosine-annealed to 0", default=None)
    normalization: str | None = _help("range255 (paper: robust percentiles to 0..255) or zscore", default=None)
    seed: int = _help("random seed (patch sampling and weight init)", default=0)
    device: str = _help("auto, cpu, cuda, cuda:N or mps", default="auto")
    amp: bool = _help("mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling)",
                      default=True)
    channels_last: bool | None = _channels_last()
    compile: bool = _compile()
    checkpoint_every: int = _help("save a resumable checkpoint every N steps (0: only at the end)",
                                  default=500)

    def resolved(self) -> TrainConfig:
        """Return a copy with preset defaults filled in, validated."""
        if self.preset not in ATBSN_PRESETS:
            raise ConfigError(f"Unknown preset {self.preset!r}; choose one of {', '.join(ATBSN_PRESETS)}.")
        filled = {k: v for k, v in TRAIN_DEFAULTS[self.preset].items() if getattr(self, k) is None}
        cfg = dataclasses.replace(self, **filled)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        check_k(self.k_a, name="k_a")
        if self.k_a == 0:
            raise BlindSpotError("k_a=0 trains without a blind spot: the network learns the identity. Use 9 (paper) "
                                 "or 1/3 for nearly pixel-independent noise.")
        if self.k_b != AUTO_K_B:
            check_k(self.k_b, name="k_b")
        if self.context != AUTO_CONTEXT:
            check_context(self.context)
        _positive("iters", self.iters)
        _positive("batch", self.batch)
        _check_seed(self.seed)
        _check_patch(self.patch, ATBSN_PRESETS[self.preset], self.k_a)
        if not (self.lr and self.lr > 0):
            raise ConfigError(f"lr={self.lr} must be a positive number such as 3e-4.")
        if self.normalization not in NORMALIZATION_MODES:
            raise ConfigError(f"normalization={self.normalization!r}; choose one of {', '.join(NORMALIZATION_MODES)}.")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every={self.checkpoint_every} must be 0 (off) or positive.")


@dataclass
class DistillConfig:
    """Settings of multi-teacher distillation (stage 2, method.md §1.8)."""

    student: str | None = _help("student preset: A (0.12 M), B (0.86 M), C (1.0 M) or tiny", default=None)
    ks: tuple[int, ...] = _help("teacher blind-spot sizes, one backbone pass for all", default=DEFAULT_KS)
    iters: int | None = _help("distillation iterations (default: teacher preset's)", default=None)
    patch: int | None = _help("square patch side (default: the teacher's training patch, the only size its "
                              "outputs are reliable at); inference windows use the same size", default=None)
    batch: int | None = _help("patches per step", default=None)
    lr: float | None = _help("Adam learning rate, cosine-annealed to 0", default=None)
    mean_teacher: bool = _help("ablation: L1 to the mean of the teachers instead of the sum of L1s",
                               default=False)
    targets: str = _help("blended: every teacher output blended with the input by the weight of the teacher's "
                         "default (auto) output, so the student inherits its never-worse blend; paper: the "
                         "teacher outputs as they are", default="blended")
    init_from_teacher: bool = _help("student C only: start from the teacher's UNet weights", default=True)
    seed: int = _help("random seed", default=0)
    device: str = _help("auto, cpu, cuda, cuda:N or mps", default="auto")
    amp: bool = _help("mixed precision on CUDA", default=True)
    channels_last: bool | None = _channels_last()
    compile: bool = _compile()
    checkpoint_every: int = _help("save a resumable checkpoint every N steps (0: only at the end)", default=500)

    def resolved(self, teacher_preset: str, teacher_patch: int) -> DistillConfig:
        """Fill defaults from the teacher's preset and patch, and validate."""
        defaults = {**DISTILL_DEFAULTS.get(teacher_preset, DISTILL_DEFAULTS["small"]), "patch": teacher_patch}
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        cfg = dataclasses.replace(self, **filled)
        cfg.ks = check_ks(cfg.ks)
        if cfg.targets not in DISTILL_TARGETS:
            raise ConfigError(f"targets={cfg.targets!r}; choose one of {', '.join(DISTILL_TARGETS)}.")
        if cfg.student not in STUDENT_PRESETS:
            raise ConfigError(f"Unknown student preset {cfg.student!r}; choose one of {', '.join(STUDENT_PRESETS)}.")
        _positive("iters", cfg.iters)
        _positive("batch", cfg.batch)
        _positive("patch", cfg.patch)
        _check_seed(cfg.seed)
        m = STUDENT_MULTIPLE[cfg.student]
        if cfg.patch % m:
            raise ConfigError(f"patch={cfg.patch} must be a multiple of {m} for student {cfg.student}; try "
                              f"{max(m, cfg.patch // m * m)}.")
        if cfg.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every={cfg.checkpoint_every} must be 0 (off) or positive.")
        if not (cfg.lr and cfg.lr > 0):
            raise ConfigError(f"lr={cfg.lr} must be a positive number such as 3e-4.")
        return cfg


def check_context(value: Any) -> int:
    """Validate a number of context planes on each side: 0 (a 2-D model) to MAX_CONTEXT."""
    from .axes import MAX_CONTEXT

    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CONTEXT:
        raise ConfigError(f"context={value!r} must be a whole number of neighbouring planes on each side, from 0 "
                          f"(plane by plane) to {MAX_CONTEXT}; 1 or 2 suit most stacks.")
    return value


def _check_seed(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ConfigError(f"seed={value!r} must be a whole number from 0 to 2**63 - 1, e.g. 0.")


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive integer.")


def _check_patch(patch: Any, arch: UNetArch, k_a: int) -> None:
    _positive("patch", patch)
    m = arch.multiple
    if patch % m:
        raise ConfigError(f"patch={patch} must be a multiple of {m} for this preset; try {max(m, patch // m * m)}.")
    if patch <= 2 * ((k_a + 1) // 2):
        # The shift s = (k_a + 1) // 2 must leave pixels in the patch: patch > 2 s.
        need = (2 * ((k_a + 1) // 2) // m + 1) * m
        raise BlindSpotError(f"k_a={k_a} is too large for patch={patch}: its blind spot would cover the whole "
                             f"patch. Use a smaller k_a (the paper trains with 9) or --patch {need} or more.")


SIGMA_FITS = ("measured", "likelihood")  # how D-BSN's noise network learns (DBSNConfig.sigma_fit)

#: D-BSN training defaults per preset. ``paper`` follows the reference scripts (patch 96, batch 8,
#: Adam 3e-4); the phases split ``iters`` into mu pretraining (MSE), sigma pretraining (mu frozen)
#: and joint training with the constrained likelihood (method.md §5.3). The sigma phase gets as many
#: steps as mu: a sigma step costs about a third of a mu step, and with fewer the noise estimator
#: stays flat instead of learning its signal dependence (seen on FMD, docs/benchmarks.md).
DBSN_TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": dict(iters=100_000, patch=96, batch=8, lr=3e-4),
    "small": dict(iters=1_500, patch=64, batch=4, lr=1e-3),
    "tiny": dict(iters=200, patch=32, batch=4, lr=2e-3),
}


@dataclass
class DBSNConfig:
    """Settings of D-BSN training (method.md §5)."""

    preset: str = _help("network size: paper (6.6 M params, GPU), small (CPU), tiny (tests)", default="small")
    noise_model: str = _help("gaussian (one level per image), poisson-gaussian (signal-dependent, per pixel) or "
                             "multivariate-gaussian (noise correlated across channels)", default="poisson-gaussian")
    iters: int | None = _help("training iterations over all three phases (default: preset's)", default=None)
    patch: int | None = _help("square training patch side; inference windows use the same size", default=None)
    batch: int | None = _help("patches per step", default=None)
    lr: float | None = _help("Adam learning rate, cosine-annealed to 0 within each phase", default=None)
    normalization: str = _help("range1 (robust percentiles to 0..1, D-BSN's range), range255 or zscore",
                               default="range1")
    phases: tuple[float, float, float] = _help("fractions of iters for mu pretraining, sigma pretraining and "
                                               "joint training", default=(0.4, 0.4, 0.2))
    gamma: float = _help("default weight of the noise term in the Bayes fusion (1: exact posterior; the "
                         "reference uses 0.9-1)", default=DEFAULT_GAMMA)
    seed: int = _help("random seed (patch sampling and weight init)", default=0)
    device: str = _help("auto, cpu, cuda, cuda:N or mps", default="auto")
    amp: bool = _help("mixed precision on CUDA for the backbone (the likelihood is always float32)", default=True)
    channels_last: bool | None = _channels_last()
    compile: bool = _compile()
    checkpoint_every: int = _help("save a resumable checkpoint every N steps (0: only at the end)", default=500)
    sigma_fit: str = _help("how the noise network sigma_n learns: measured (fitted to the noise level measured "
                           "from the data, then fixed; gaussian and poisson-gaussian models) or likelihood (the "
                           "paper's constrained likelihood)", default="measured")
    monitor: bool = _help("estimate mu's and the fusion's gain over the input on a sample of the data twice a "
                          "phase; the last estimate decides the default output (a failed run says so)", default=True)

    def resolved(self) -> DBSNConfig:
        if self.preset not in DBSN_PRESETS:
            raise ConfigError(f"Unknown D-BSN preset {self.preset!r}; choose one of {', '.join(DBSN_PRESETS)}.")
        filled = {k: v for k, v in DBSN_TRAIN_DEFAULTS[self.preset].items() if getattr(self, k) is None}
        cfg = dataclasses.replace(self, **filled)
        cfg.phases = tuple(float(f) for f in cfg.phases)  # type: ignore[assignment]
        if cfg.noise_model not in NOISE_MODELS:
            raise ConfigError(f"noise_model={cfg.noise_model!r}; choose one of {', '.join(NOISE_MODELS)}.")
        _positive("iters", cfg.iters)
        _positive("batch", cfg.batch)
        _positive("patch", cfg.patch)
        _check_seed(cfg.seed)
        if cfg.patch < 16:
            raise ConfigError(f"patch={cfg.patch} is too small for D-BSN; use at least 32.")
        if not (cfg.lr and cfg.lr > 0):
            raise ConfigError(f"lr={cfg.lr} must be a positive number such as 3e-4.")
        if cfg.normalization not in NORMALIZATION_MODES:
            raise ConfigError(f"normalization={cfg.normalization!r}; choose one of {', '.join(NORMALIZATION_MODES)}.")
        if len(cfg.phases) != 3 or min(cfg.phases) < 0 or abs(sum(cfg.phases) - 1) > 1e-6 or cfg.phases[2] == 0:
            raise ConfigError(f"phases={cfg.phases} must be three non-negative fractions summing to 1 (mu, sigma, "
                              f"joint), with a joint phase, e.g. 0.4,0.4,0.2.")
        if not 0 < cfg.gamma <= 2:
            raise ConfigError(f"gamma={cfg.gamma} must be in (0, 2]; 1 is the exact posterior.")
        if cfg.sigma_fit not in SIGMA_FITS:
            raise ConfigError(f"sigma_fit={cfg.sigma_fit!r}; choose one of {', '.join(SIGMA_FITS)}.")
        if cfg.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every={cfg.checkpoint_every} must be 0 (off) or positive.")
        return cfg

    def phase_iters(self) -> tuple[int, int, int]:
        """Steps of the mu, sigma and joint phases (rounding goes to the joint phase)."""
        assert self.iters is not None
        mu = int(self.iters * self.phases[0])
        sigma = int(self.iters * self.phases[1])
        return mu, sigma, self.iters - mu - sigma


@dataclass
class UnpairedConfig:
    """Settings of D-BSN's unpaired distillation (method.md §5.4) into one of our students."""

    student: str = _help("student preset: A, B, C or tiny", default="A")
    iters: int | None = _help("distillation iterations (default: teacher preset's)", default=None)
    batch: int | None = _help("patches per step; 1 in 8 is real noisy data, the rest synthetic from clean images "
                              "(at least 1 real)", default=None)
    lr: float | None = _help("Adam learning rate, cosine-annealed to 0", default=None)
    real_weight: float = _help("weight of the self-distillation term (student(noisy) vs D-BSN's output)",
                               default=0.1)
    seed: int = _help("random seed", default=0)
    device: str = _help("auto, cpu, cuda, cuda:N or mps", default="auto")
    amp: bool = _help("mixed precision on CUDA", default=True)
    channels_last: bool | None = _channels_last()
    compile: bool = _compile()
    checkpoint_every: int = _help("save a resumable checkpoint every N steps (0: only at the end)", default=500)

    def resolved(self, teacher_preset: str) -> UnpairedConfig:
        defaults = {"paper": dict(iters=50_000, batch=8, lr=3e-4), "small": dict(iters=800, batch=8, lr=1e-3),
                    "tiny": dict(iters=200, batch=8, lr=2e-3)}.get(teacher_preset, {})
        cfg = dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
        if cfg.student not in STUDENT_PRESETS:
            raise ConfigError(f"Unknown student preset {cfg.student!r}; choose one of {', '.join(STUDENT_PRESETS)}.")
        _positive("iters", cfg.iters)
        _positive("batch", cfg.batch)
        if not (cfg.lr and cfg.lr > 0):
            raise ConfigError(f"lr={cfg.lr} must be a positive number such as 3e-4.")
        _check_seed(cfg.seed)
        if cfg.real_weight < 0:
            raise ConfigError(f"real_weight={cfg.real_weight} must be >= 0.")
        return cfg


#: Settings a resumed run may change; everything else comes from the checkpoint.
RESUME_FREE = ("iters", "device", "amp", "channels_last", "compile", "checkpoint_every", "monitor")


def resume_config(current: Any, saved: dict[str, Any]) -> Any:
    """The settings of a resumed run: the checkpoint's, except :data:`RESUME_FREE`.

    A value the caller set explicitly (not ``None`` and not the field's
    default) that differs from the checkpoint is refused: silently changing
    the patch, for instance, would mislabel the model's inference window.
    """
    cls = type(current)
    defaults = cls()
    merged = {}
    if cls is TrainConfig and "context" not in saved:
        saved = {**saved, "context": 0}  # a checkpoint from before stack context trains a 2-D model
    for f in dataclasses.fields(cls):
        cur = getattr(current, f.name)
        if f.name not in saved:
            merged[f.name] = cur
            continue
        old = tuple(saved[f.name]) if isinstance(saved[f.name], list) else saved[f.name]
        if f.name in RESUME_FREE:
            merged[f.name] = old if cur is None else cur
        elif f.name == "context" and cur == AUTO_CONTEXT:
            merged[f.name] = old  # the checkpoint's context is what "auto" chose when the run began
        elif cur is not None and cur != getattr(defaults, f.name) and cur != old:
            flag = "--" + f.name.replace("_", "-")
            raise ConfigError(f"{flag} {cur} differs from the checkpoint's {old}; a resumed run keeps the "
                              f"checkpoint's settings (only {', '.join(RESUME_FREE)} may change). Drop {flag}.")
        else:
            merged[f.name] = old
    return cls(**merged)


def config_fields_help(cls: type) -> dict[str, str]:
    """Map field name -> help text, for CLI and widgets."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
